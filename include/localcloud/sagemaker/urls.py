"""Routes of the SageMaker control plane: JSON 1.1 requests with `X-Amz-Target: SageMaker.*`."""

from include.localcloud.sagemaker.responses import SageMakerResponse


def services() -> list[type]:
    return [SageMakerResponse]
