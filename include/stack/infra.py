"""infra/template.yaml deployed into the local cloud, as `make aws-infra` deploys it into an
account: the local stacks (make run, make up, compose's airflow-init) run with the bucket and the
roles it creates. Deploying is idempotent: the stack is created once, updated when the template
or its parameters change, left alone otherwise.

`python -m include.stack.infra --endpoint-url URL` deploys it and prints the settings, as .env lines
(compose's airflow-init writes them to a file its Airflow services read at start:
include/stack/with_infra_settings.sh). With `--credentials FILE` (a local cloud enforcing IAM: its
root-credentials.json) it deploys with that key, and the connection starts from it too."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from include.pipeline.settings import Settings
from include.stack.config import PROJECT_DIR

TEMPLATE = PROJECT_DIR / "infra" / "template.yaml"
STACK_NAME = "fraud-detection"
CAPABILITIES = ["CAPABILITY_NAMED_IAM"]
LOCAL_CREDENTIALS = {"aws_access_key_id": "localcloud", "aws_secret_access_key": "localcloud"}


class InfraError(Exception):
    """The stack could not be deployed: the message says why."""


@dataclass(frozen=True)
class Infra:
    """The stack's outputs: what Airflow needs."""

    bucket: str
    execution_role_arn: str
    airflow_role_arn: str
    prefix: str
    endpoint_name: str

    def environment(self) -> dict[str, str]:
        """The pipeline's settings (include/pipeline/settings.py) of this stack."""
        return {
            "FRAUD_BUCKET": self.bucket,
            "FRAUD_EXECUTION_ROLE_ARN": self.execution_role_arn,
            "FRAUD_PREFIX": self.prefix,
            "FRAUD_ENDPOINT_NAME": self.endpoint_name,
        }


def local_parameters(settings: Settings) -> dict[str, str]:
    """The template's parameters for the local stacks: the pipeline's settings (the bucket keeps
    its local name, as FRAUD_BUCKET says)."""
    return {
        "Prefix": settings.prefix,
        "BucketName": settings.bucket,
        "EndpointName": settings.endpoint_name,
        "AthenaWorkgroup": settings.athena_workgroup,
    }


def _stack(cloudformation: Any, name: str) -> dict[str, Any] | None:
    try:
        return cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as error:
        if "does not exist" in error.response["Error"]["Message"]:
            return None
        raise


def deploy(cloudformation: Any, parameters: dict[str, str], name: str = STACK_NAME,
           template: Path = TEMPLATE) -> Infra:
    """Create the stack, or update it when its template or parameters differ; its outputs."""
    body = template.read_text()
    request = {
        "StackName": name,
        "TemplateBody": body,
        "Parameters": [{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
        "Capabilities": CAPABILITIES,
    }
    stack = _stack(cloudformation, name)
    if stack is None:
        cloudformation.create_stack(**request)
        cloudformation.get_waiter("stack_create_complete").wait(StackName=name, WaiterConfig={"Delay": 1})
    else:
        deployed = {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])}
        if cloudformation.get_template(StackName=name)["TemplateBody"] != body or any(
            deployed.get(key) != value for key, value in parameters.items()
        ):
            cloudformation.update_stack(**request)
            cloudformation.get_waiter("stack_update_complete").wait(StackName=name, WaiterConfig={"Delay": 1})
    stack = _stack(cloudformation, name)
    if stack is None or not stack["StackStatus"].endswith("_COMPLETE") or "ROLLBACK" in stack["StackStatus"]:
        status = stack and (stack["StackStatus"], stack.get("StackStatusReason"))
        raise InfraError(f"stack {name} of {template}: {status}")
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
    try:
        return Infra(
            bucket=outputs["BucketName"],
            execution_role_arn=outputs["ExecutionRoleArn"],
            airflow_role_arn=outputs["AirflowRoleArn"],
            prefix=outputs["Prefix"],
            endpoint_name=outputs["EndpointName"],
        )
    except KeyError as missing:
        raise InfraError(f"stack {name} of {template} has no output {missing}: outputs {outputs}") from None


def root_credentials(path: Path) -> dict[str, str]:
    """The access key of an enforcing local cloud's account root, from its root-credentials.json."""
    try:
        keys = json.loads(path.read_text())
        return {"aws_access_key_id": keys["AccessKeyId"], "aws_secret_access_key": keys["SecretAccessKey"]}
    except (OSError, ValueError, KeyError) as error:
        raise InfraError(f"{path}: not the local cloud's root credentials ({error!r})") from None


def deploy_local(cloud_url: str, settings: Settings, credentials: dict[str, str] = LOCAL_CREDENTIALS) -> Infra:
    """The template deployed into the local cloud at cloud_url, with the pipeline's settings."""
    cloudformation = boto3.session.Session().client(
        "cloudformation", region_name=settings.region, endpoint_url=cloud_url, **credentials
    )
    try:
        return deploy(cloudformation, local_parameters(settings))
    except ClientError as error:
        raise InfraError(f"deploying {TEMPLATE} into the local cloud at {cloud_url}: {error}") from error


def local_connection(cloud_url: str, region: str, infra: Infra,
                     credentials: dict[str, str] = LOCAL_CREDENTIALS) -> str:
    """AIRFLOW_CONN_AWS_DEFAULT of a local stack: the local cloud, assuming the stack's Airflow
    role from `credentials` (STS is the local cloud's too: the provider never sends AssumeRole to
    endpoint_url)."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": credentials["aws_access_key_id"],
            "password": credentials["aws_secret_access_key"],
            "extra": {
                "endpoint_url": cloud_url,
                "region_name": region,
                "role_arn": infra.airflow_role_arn,
                "service_config": {"sts": {"endpoint_url": cloud_url}},
            },
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.stack.infra", description=__doc__)
    parser.add_argument("--endpoint-url", required=True, help="the local cloud, e.g. http://127.0.0.1:4566")
    parser.add_argument("--credentials", type=Path, help="root-credentials.json of a local cloud enforcing IAM")
    arguments = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        credentials = LOCAL_CREDENTIALS if arguments.credentials is None else root_credentials(arguments.credentials)
        infra = deploy_local(arguments.endpoint_url, settings, credentials)
    except InfraError as error:
        print(error, file=sys.stderr)
        return 1
    for key, value in infra.environment().items():
        print(f"{key}={value}")
    connection = local_connection(arguments.endpoint_url, settings.region, infra, credentials)
    print(f"AIRFLOW_CONN_AWS_DEFAULT='{connection}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
