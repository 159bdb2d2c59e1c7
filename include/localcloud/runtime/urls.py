"""Routes of the SageMaker runtime: REST-JSON `POST /endpoints/{EndpointName}/invocations`."""

from include.localcloud.runtime.responses import SageMakerRuntimeResponse


def services() -> list[type]:
    return [SageMakerRuntimeResponse]
