"""SageMaker hosting: models, endpoint configs and endpoints that really serve. Each endpoint runs
one model server process (containers/model_server.py) on a loopback port; the runtime's
InvokeEndpoint reaches it through the routing table in include/localcloud/runtime/models.py.

An endpoint's life: CreateEndpoint stores it Creating and starts a deployment in the background
(download and unpack the model, start its server, wait for /ping), which ends InService or Failed.
UpdateEndpoint deploys the new config next to the serving one and switches traffic once the new
server answers /ping, then drains and stops the old one; if the new one fails, the old one keeps
serving (InService with a FailureReason, as SageMaker does). A server that dies is replaced, as
SageMaker replaces an unhealthy instance. Servers stop with the local cloud and start again when it
restarts."""

from __future__ import annotations

import logging
import shutil
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from include.localcloud.protocol import AwsError, RequestContext, not_found
from include.localcloud.runtime.models import ModelServer, ModelServerError, endpoint_routes
from include.localcloud.sagemaker.models import (
    XGBOOST_IMAGE,
    already_exists,
    image_repository,
    list_page,
    now,
    pick,
    region_of,
    sagemaker_arn,
)
from include.localcloud.sagemaker.registry import MODEL_PACKAGE
from include.localcloud.sagemaker.tags import save_tags
from include.localcloud.server import ACCOUNT_ID, LocalCloud

log = logging.getLogger(__name__)

MODEL = "model"
ENDPOINT_CONFIG = "endpoint-config"
ENDPOINT = "endpoint"
DEFAULT_STARTUP_TIMEOUT_SECONDS = 600  # SageMaker's default container startup health check timeout
MAX_FAILURE_REASON = 1024
# A dead model server is replaced, unless the endpoint's servers died this often within the window.
MAX_SERVER_REPLACEMENTS = 3
SERVER_DEATH_WINDOW_SECONDS = 300

# What a deployment does to the endpoint when its server is up (or cannot start).
CREATE, UPDATE, RESUME = "create", "update", "resume"


class DeploymentError(Exception):
    """Why a deployment failed; becomes the endpoint's FailureReason."""


@dataclass
class Deployment:
    endpoint_name: str
    config_name: str
    region: str
    kind: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


def model_package_arn(package: str, region: str) -> str:
    """The ARN of a model package named by ARN, "<group>/<version>" or unversioned name."""
    if package.startswith("arn:"):
        return package
    return f"arn:aws:sagemaker:{region}:{ACCOUNT_ID}:model-package/{package.lower()}"


def split_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise AwsError("ValidationException", f"ModelDataUrl {url} must be an s3:// URL.")
    bucket, _, key = url[len("s3://") :].partition("/")
    return bucket, key


class HostingOperations:
    cloud: LocalCloud

    def __init__(self, cloud: LocalCloud) -> None:
        super().__init__(cloud)  # type: ignore[call-arg]
        self.endpoint_routes = endpoint_routes(cloud)
        self._deployments: dict[str, Deployment] = {}  # in progress, by endpoint name
        self._server_deaths: dict[str, list[float]] = {}  # endpoint name -> monotonic times
        self._hosting_stopped = False
        self._hosting_lock = threading.RLock()

    # -- models ----------------------------------------------------------------------------
    def create_model(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        name = params["ModelName"]
        arn = sagemaker_arn(ctx, "model", name)
        if params.get("PrimaryContainer") and params.get("Containers"):
            raise AwsError("ValidationException", "Specify either PrimaryContainer or Containers, not both.")
        containers = (
            [params["PrimaryContainer"]] if params.get("PrimaryContainer") else params.get("Containers")
        )
        if not containers:
            raise AwsError("ValidationException", "Either PrimaryContainer or Containers must be specified.")
        for container in containers:
            if url := container.get("ModelDataUrl"):
                self._check_model_data(url, ctx.region)
            if package := container.get("ModelPackageName"):
                self._check_model_package(package, ctx.region)
        model = {
            "ModelName": name,
            "ModelArn": arn,
            "CreationTime": now(),
            "EnableNetworkIsolation": params.get("EnableNetworkIsolation", False),
            **pick(params, "ExecutionRoleArn", "InferenceExecutionConfig", "VpcConfig"),
        }
        if params.get("PrimaryContainer"):
            model["PrimaryContainer"] = {
                "Mode": "SingleModel",
                "Environment": {},
                **params["PrimaryContainer"],
            }
        else:
            model["Containers"] = [{"Mode": "SingleModel", "Environment": {}, **c} for c in containers]
        if not self.cloud.store.insert(MODEL, name, model):
            raise already_exists("model", arn)
        save_tags(self.cloud.store, arn, params.get("Tags"))
        return {"ModelArn": arn}

    def _check_model_data(self, url: str, region: str) -> None:
        bucket, key = split_s3_url(url)
        try:
            self.cloud.client("s3", region).head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            raise AwsError("ValidationException", f"Could not find model data at {url}.") from exc

    def _check_model_package(self, package: str, region: str) -> None:
        if self.cloud.store.get(MODEL_PACKAGE, model_package_arn(package, region)) is None:
            raise AwsError("ValidationException", f"ModelPackage {package} does not exist.")

    def describe_model(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        model = self.cloud.store.get(MODEL, params["ModelName"])
        if model is None:
            raise not_found(f'Could not find model "{sagemaker_arn(ctx, "model", params["ModelName"])}".')
        return model

    def list_models(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        page, token = list_page(self.cloud.store.list(MODEL), params, name_key="ModelName")
        result: dict[str, Any] = {"Models": [pick(m, "ModelName", "ModelArn", "CreationTime") for m in page]}
        if token:
            result["NextToken"] = token
        return result

    def delete_model(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        if not self.cloud.store.delete(MODEL, params["ModelName"]):
            raise not_found(f'Could not find model "{sagemaker_arn(ctx, "model", params["ModelName"])}".')
        return {}

    # -- endpoint configs ------------------------------------------------------------------
    def create_endpoint_config(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        name = params["EndpointConfigName"]
        arn = sagemaker_arn(ctx, "endpoint-config", name)
        for variant in params["ProductionVariants"]:
            model_name = variant.get("ModelName")
            if not model_name:
                raise AwsError(
                    "ValidationException",
                    f"Production variant {variant['VariantName']} must name a model (ModelName).",
                )
            if self.cloud.store.get(MODEL, model_name) is None:
                raise not_found(f'Could not find model "{sagemaker_arn(ctx, "model", model_name)}".')
        config = {
            "EndpointConfigName": name,
            "EndpointConfigArn": arn,
            "ProductionVariants": params["ProductionVariants"],
            "CreationTime": now(),
            **pick(
                params,
                "DataCaptureConfig",
                "KmsKeyId",
                "AsyncInferenceConfig",
                "ExplainerConfig",
                "ShadowProductionVariants",
                "ExecutionRoleArn",
                "VpcConfig",
                "EnableNetworkIsolation",
                "MetricsConfig",
            ),
        }
        if not self.cloud.store.insert(ENDPOINT_CONFIG, name, config):
            raise already_exists("endpoint configuration", arn)
        save_tags(self.cloud.store, arn, params.get("Tags"))
        return {"EndpointConfigArn": arn}

    def describe_endpoint_config(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        config = self.cloud.store.get(ENDPOINT_CONFIG, params["EndpointConfigName"])
        if config is None:
            raise not_found(f'Could not find endpoint configuration "{params["EndpointConfigName"]}".')
        return config

    def list_endpoint_configs(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        page, token = list_page(self.cloud.store.list(ENDPOINT_CONFIG), params, name_key="EndpointConfigName")
        keys = ("EndpointConfigName", "EndpointConfigArn", "CreationTime")
        result: dict[str, Any] = {"EndpointConfigs": [pick(c, *keys) for c in page]}
        if token:
            result["NextToken"] = token
        return result

    def delete_endpoint_config(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        if not self.cloud.store.delete(ENDPOINT_CONFIG, params["EndpointConfigName"]):
            raise not_found(f'Could not find endpoint configuration "{params["EndpointConfigName"]}".')
        return {}

    # -- endpoints -------------------------------------------------------------------------
    def create_endpoint(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        arn = sagemaker_arn(ctx, "endpoint", name)
        self._servable_config(config_name)
        created = now()
        endpoint = {
            "EndpointName": name,
            "EndpointArn": arn,
            "EndpointConfigName": config_name,
            "EndpointStatus": "Creating",
            "CreationTime": created,
            "LastModifiedTime": created,
        }
        with self._hosting_lock:
            if not self.cloud.store.insert(ENDPOINT, name, endpoint):
                raise already_exists("endpoint", arn)
            save_tags(self.cloud.store, arn, params.get("Tags"))
            self._start_deployment(Deployment(name, config_name, ctx.region, CREATE))
        return {"EndpointArn": arn}

    def update_endpoint(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        with self._hosting_lock:
            endpoint = self.cloud.store.get(ENDPOINT, name)
            if endpoint is None:
                raise not_found(f'Could not find endpoint "{name}".')
            # An InService endpoint may still be starting its server again after a restart.
            if endpoint["EndpointStatus"] != "InService" or name in self._deployments:
                state = "failed" if endpoint["EndpointStatus"] == "Failed" else "in-progress"
                raise AwsError(
                    "ValidationException", f'Cannot update {state} endpoint "{endpoint["EndpointArn"]}".'
                )
            self._servable_config(config_name)

            def updating(body: dict[str, Any]) -> None:
                body["EndpointStatus"] = "Updating"
                body["LastModifiedTime"] = now()
                body["PendingDeploymentSummary"] = {"EndpointConfigName": config_name, "StartTime": now()}
                body.pop("FailureReason", None)

            self.cloud.store.update(ENDPOINT, name, updating)
            self._start_deployment(Deployment(name, config_name, region_of(endpoint["EndpointArn"]), UPDATE))
        return {"EndpointArn": endpoint["EndpointArn"]}

    def describe_endpoint(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        endpoint = self.cloud.store.get(ENDPOINT, params["EndpointName"])
        if endpoint is None:
            raise not_found(f'Could not find endpoint "{params["EndpointName"]}".')
        return endpoint

    def list_endpoints(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        endpoints = self.cloud.store.list(ENDPOINT)
        if (after := params.get("LastModifiedTimeAfter")) is not None:
            endpoints = [e for e in endpoints if e["LastModifiedTime"] > float(after)]
        if (before := params.get("LastModifiedTimeBefore")) is not None:
            endpoints = [e for e in endpoints if e["LastModifiedTime"] < float(before)]
        page, token = list_page(endpoints, params, name_key="EndpointName", status_key="EndpointStatus")
        keys = ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime", "EndpointStatus")
        result: dict[str, Any] = {"Endpoints": [pick(e, *keys) for e in page]}
        if token:
            result["NextToken"] = token
        return result

    def delete_endpoint(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        name = params["EndpointName"]
        with self._hosting_lock:
            if not self.cloud.store.delete(ENDPOINT, name):
                raise not_found(f'Could not find endpoint "{name}".')
            if (deployment := self._deployments.pop(name, None)) is not None:
                deployment.cancelled.set()
            server = self.endpoint_routes.remove(name)
        if server is not None:
            self._retire(server, ctx.region)
        shutil.rmtree(self._endpoint_dir(name), ignore_errors=True)
        return {}

    def _servable_config(self, config_name: str) -> dict[str, Any]:
        config = self.cloud.store.get(ENDPOINT_CONFIG, config_name)
        if config is None:
            raise not_found(f'Could not find endpoint configuration "{config_name}".')
        count = len(config["ProductionVariants"])
        if count != 1:
            raise AwsError(
                "ValidationException",
                f"The local cloud serves one production variant per endpoint; "
                f"endpoint configuration {config_name} has {count}.",
            )
        return config

    # -- deployments (background) ----------------------------------------------------------
    def start_hosting(self) -> None:
        """Start the servers of endpoints that were serving (or being created or updated)."""
        shutil.rmtree(self.cloud.state_dir / "endpoints", ignore_errors=True)  # leftovers of a crash
        with self._hosting_lock:
            self._hosting_stopped = False
            for endpoint in self.cloud.store.list(ENDPOINT):
                status, name = endpoint["EndpointStatus"], endpoint["EndpointName"]
                kind = {"Creating": CREATE, "InService": RESUME, "Updating": RESUME}.get(status)
                if kind is not None:
                    region = region_of(endpoint["EndpointArn"])
                    self._start_deployment(Deployment(name, endpoint["EndpointConfigName"], region, kind))

    def stop_hosting(self) -> None:
        """Stop every model server; endpoints keep their status in the store."""
        with self._hosting_lock:
            self._hosting_stopped = True  # servers exiting from now on are being stopped
            deployments, self._deployments = list(self._deployments.values()), {}
            for deployment in deployments:
                deployment.cancelled.set()
        for deployment in deployments:
            if deployment.thread is not None:
                deployment.thread.join()
        for server in self.endpoint_routes.remove_all():
            self.endpoint_routes.drain(server)
            server.stop()

    def _start_deployment(self, deployment: Deployment) -> None:
        """Run `deployment` in the background (caller holds the hosting lock)."""
        if (previous := self._deployments.get(deployment.endpoint_name)) is not None:
            previous.cancelled.set()
        self._deployments[deployment.endpoint_name] = deployment
        if deployment.kind == RESUME:  # invocations wait for the server instead of failing
            self.endpoint_routes.expect(deployment.endpoint_name)
        deployment.thread = threading.Thread(
            target=self._deploy, args=(deployment,), name=f"deploy-{deployment.endpoint_name}", daemon=True
        )
        deployment.thread.start()

    def _endpoint_dir(self, endpoint_name: str) -> Path:
        return self.cloud.state_dir / "endpoints" / endpoint_name

    def _deploy(self, deployment: Deployment) -> None:
        try:
            self._deploy_and_switch(deployment)
        finally:
            if deployment.kind == RESUME:
                self.endpoint_routes.forget(deployment.endpoint_name)

    def _deploy_and_switch(self, deployment: Deployment) -> None:
        name = deployment.endpoint_name
        server: ModelServer | None = None
        try:
            variant, container = self._serving_container(deployment.config_name, deployment.region)
            server = ModelServer(
                self._endpoint_dir(name) / uuid.uuid4().hex[:12], name, variant["VariantName"]
            )
            self._unpack_model(container, server.workdir / "model", deployment.region)
            server.start(
                on_exit=lambda exited, code: self._server_exited(name, exited, code, deployment.region)
            )
            timeout = variant.get(
                "ContainerStartupHealthCheckTimeoutInSeconds", DEFAULT_STARTUP_TIMEOUT_SECONDS
            )
            server.wait_ready(timeout, deployment.cancelled)
        except (DeploymentError, ModelServerError) as exc:
            if server is not None:
                server.publish_logs(self.cloud.client("logs", deployment.region))
                server.stop()
            self._deployment_failed(deployment, str(exc))
            return
        except Exception as exc:  # a bug must fail the endpoint, not leave it Creating forever
            if not deployment.cancelled.is_set():  # else its files were deleted under it: expected
                log.exception("deployment of endpoint %s failed", name)
            if server is not None:
                server.stop()
            self._deployment_failed(deployment, f"Internal error in the local cloud: {exc}")
            return
        server.publish_logs(self.cloud.client("logs", deployment.region))
        summary = self._variant_summary(variant, container)
        with self._hosting_lock:
            if deployment.cancelled.is_set():  # deleted, superseded or shutting down meanwhile
                server.stop()
                return
            del self._deployments[name]
            previous = self.endpoint_routes.switch(name, server)
            endpoint = self.cloud.store.update(
                ENDPOINT, name, lambda e: self._serving(e, deployment, summary)
            )
            if (
                endpoint is not None
                and deployment.kind == RESUME
                and endpoint["EndpointStatus"] == "Updating"
            ):
                pending = endpoint["PendingDeploymentSummary"]["EndpointConfigName"]
                self._start_deployment(Deployment(name, pending, deployment.region, UPDATE))
        if previous is not None:
            self._retire(previous, deployment.region)

    @staticmethod
    def _serving(endpoint: dict[str, Any], deployment: Deployment, summary: dict[str, Any]) -> None:
        endpoint["ProductionVariants"] = [summary]
        if deployment.kind == RESUME:
            return
        endpoint["EndpointStatus"] = "InService"
        endpoint["EndpointConfigName"] = deployment.config_name
        endpoint["LastModifiedTime"] = now()
        endpoint.pop("PendingDeploymentSummary", None)
        endpoint.pop("FailureReason", None)

    def _deployment_failed(self, deployment: Deployment, reason: str) -> None:
        def failed(endpoint: dict[str, Any]) -> None:
            if endpoint["EndpointStatus"] == "Updating" and deployment.kind == UPDATE:
                endpoint["EndpointStatus"] = "InService"  # the previous config keeps serving
                endpoint.pop("PendingDeploymentSummary", None)
            else:
                endpoint["EndpointStatus"] = "Failed"
            endpoint["FailureReason"] = reason[:MAX_FAILURE_REASON]
            endpoint["LastModifiedTime"] = now()

        with self._hosting_lock:
            if deployment.cancelled.is_set():
                return
            del self._deployments[deployment.endpoint_name]
            self.cloud.store.update(ENDPOINT, deployment.endpoint_name, failed)

    def _server_exited(self, name: str, server: ModelServer, code: int, region: str) -> None:
        """A serving model server died (a starting one is handled by _deploy). As SageMaker replaces
        an unhealthy instance, a new server starts on the endpoint's config and invocations wait
        for it; an endpoint whose servers keep dying fails."""
        with self._hosting_lock:
            if self._hosting_stopped or self.endpoint_routes.remove(name, only=server) is None:
                return
            reason = f"The model server exited unexpectedly with code {code}: {server.log_tail()}"
            died_at = time.monotonic()
            recent = [t for t in self._server_deaths.get(name, []) if died_at - t < SERVER_DEATH_WINDOW_SECONDS]
            self._server_deaths[name] = [*recent, died_at]
            endpoint = self.cloud.store.get(ENDPOINT, name)
            if endpoint is not None and len(recent) < MAX_SERVER_REPLACEMENTS:
                log.warning("endpoint %s: %s; starting a new one", name, reason)
                self._start_deployment(Deployment(name, endpoint["EndpointConfigName"], region, RESUME))
            else:
                def failed(endpoint: dict[str, Any]) -> None:
                    endpoint["EndpointStatus"] = "Failed"
                    endpoint["FailureReason"] = (
                        f"{reason[:MAX_FAILURE_REASON // 2]} (server died {len(recent) + 1} times "
                        f"in {SERVER_DEATH_WINDOW_SECONDS} s)"
                    )
                    endpoint["LastModifiedTime"] = now()

                self.cloud.store.update(ENDPOINT, name, failed)
        server.publish_logs(self.cloud.client("logs", region))
        server.stop()

    def _retire(self, server: ModelServer, region: str) -> None:
        """Stop a server that no longer gets traffic, once its requests in flight are answered."""
        self.endpoint_routes.drain(server)
        server.publish_logs(self.cloud.client("logs", region))
        server.stop()

    def _serving_container(self, config_name: str, region: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The variant to serve and its model's container (resolved through a model package)."""
        config = self.cloud.store.get(ENDPOINT_CONFIG, config_name)
        if config is None:
            raise DeploymentError(f"Endpoint configuration {config_name} does not exist.")
        variant = config["ProductionVariants"][0]
        model = self.cloud.store.get(MODEL, variant["ModelName"])
        if model is None:
            raise DeploymentError(
                f"Model {variant['ModelName']} of variant {variant['VariantName']} does not exist."
            )
        containers = [model["PrimaryContainer"]] if "PrimaryContainer" in model else model["Containers"]
        if len(containers) != 1:
            raise DeploymentError(
                f"The local cloud serves single-container models; {model['ModelName']} has "
                f"{len(containers)} containers."
            )
        container = containers[0]
        if package := container.get("ModelPackageName"):
            container = self._model_package_container(model_package_arn(package, region))
        image = container.get("Image", "")
        if image_repository(image) != XGBOOST_IMAGE:
            raise DeploymentError(
                f"The local cloud serves models of the built-in XGBoost image ({XGBOOST_IMAGE}); "
                f"model {model['ModelName']} uses image '{image}'."
            )
        if not container.get("ModelDataUrl"):
            raise DeploymentError(f"Model {model['ModelName']} has no ModelDataUrl to serve.")
        return variant, container

    def _model_package_container(self, arn: str) -> dict[str, Any]:
        package = self.cloud.store.get(MODEL_PACKAGE, arn)
        if package is None:
            raise DeploymentError(f"Model package {arn} does not exist.")
        containers = package.get("InferenceSpecification", {}).get("Containers") or []
        if not containers:
            raise DeploymentError(f"Model package {arn} has no inference containers.")
        return containers[0]

    def _unpack_model(self, container: dict[str, Any], model_dir: Path, region: str) -> None:
        url = container["ModelDataUrl"]
        bucket, key = split_s3_url(url)
        model_dir.mkdir(parents=True)
        archive = model_dir.parent / "model.tar.gz"
        try:
            self.cloud.client("s3", region).download_file(bucket, key, str(archive))
        except ClientError as exc:
            raise DeploymentError(f"Could not download model data from {url}: {exc}") from exc
        try:
            with tarfile.open(archive) as tar:
                _extract_safely(tar, model_dir)
        except tarfile.TarError as exc:
            raise DeploymentError(f"Model data at {url} is not a tar.gz archive: {exc}") from exc
        finally:
            archive.unlink()

    @staticmethod
    def _variant_summary(variant: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
        weight = variant.get("InitialVariantWeight", 1.0)
        image = container["Image"]
        summary: dict[str, Any] = {
            "VariantName": variant["VariantName"],
            # No registry to resolve a digest from: the image is served as specified.
            "DeployedImages": [{"SpecifiedImage": image, "ResolvedImage": image, "ResolutionTime": now()}],
            "CurrentWeight": weight,
            "DesiredWeight": weight,
        }
        if "ServerlessConfig" in variant:
            summary["CurrentServerlessConfig"] = summary["DesiredServerlessConfig"] = variant[
                "ServerlessConfig"
            ]
        else:
            count = variant.get("InitialInstanceCount", 1)
            summary["CurrentInstanceCount"] = summary["DesiredInstanceCount"] = count
        return summary


def _extract_safely(tar: tarfile.TarFile, target: Path) -> None:
    """Only files and folders, only inside target. Python 3.11.2 (Debian 12's) predates tarfile's
    extraction filters (3.11.4), so the data filter's checks are made here first where it is missing."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(target, filter="data")
        return
    root = target.resolve()
    for member in tar.getmembers():
        if not (member.isfile() or member.isdir()) or not (root / member.name).resolve().is_relative_to(root):
            raise tarfile.TarError(f"member {member.name!r} is not a file or folder inside the archive's root")
    tar.extractall(target)
