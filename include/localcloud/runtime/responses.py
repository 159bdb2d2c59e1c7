"""The SageMaker runtime (REST-JSON): InvokeEndpoint, proxied to the endpoint's model server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.model import OperationModel

from include.localcloud.protocol import AwsError, RequestContext, RestJsonService
from include.localcloud.runtime.models import ModelUnreachable, endpoint_routes, log_group

if TYPE_CHECKING:
    from include.localcloud.server import LocalCloud

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # InvokeEndpoint's Body limit


class SageMakerRuntimeResponse(RestJsonService):
    service_name = "sagemaker-runtime"

    def __init__(self, cloud: LocalCloud) -> None:
        super().__init__(cloud)
        self.endpoints = endpoint_routes(cloud)

    def max_body(self, operation: OperationModel) -> int:
        return MAX_PAYLOAD_BYTES

    def invoke_endpoint(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        name = params["EndpointName"]
        with self.endpoints.use(name) as server:
            # Only InService endpoints (and Updating ones, still on their old config) have a route.
            if server is None:
                raise AwsError("ValidationError", f"Endpoint {name} of account {ctx.account_id} not found.")
            variant = params.get("TargetVariant")
            if variant is not None and variant != server.variant_name:
                raise AwsError("ValidationError", f"Variant {variant} not found for endpoint {name}.")
            try:
                status, content_type, body = server.invoke(
                    params["Body"], params.get("ContentType"), params.get("Accept")
                )
            except ModelUnreachable as exc:
                raise AwsError(
                    "ServiceUnavailable", f"The model server of endpoint {name} did not answer: {exc}", 503
                ) from exc
        if status >= 400:
            # The server logged why; SageMaker's message points to those logs.
            server.publish_logs(self.cloud.client("logs", ctx.region))
            side = "client" if status < 500 else "server"
            message = body.decode(errors="replace")
            logs = (
                f"https://{ctx.region}.console.aws.amazon.com/cloudwatch/home?region={ctx.region}"
                f"#logEventViewer:group={log_group(name)}"
            )
            raise AwsError(
                "ModelError",
                f'Received {side} error ({status}) from primary with message "{message}". '
                f"See {logs} in account {ctx.account_id} for more information.",
                424,
            )
        return {"Body": body, "ContentType": content_type, "InvokedProductionVariant": server.variant_name}
