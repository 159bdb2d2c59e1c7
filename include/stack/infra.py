"""infra/template.yaml deployed into the local cloud, as `make aws-infra` deploys it into an
account: the local stacks (make run, make up, compose's airflow-init) run with the bucket and the
roles it creates. Deploying is idempotent: the stack is created once, updated when the template
or its parameters change, left alone otherwise.

make run and make up start the local cloud with IAM enforced (LOCALCLOUD_IAM=enforce): they
deploy with the account root's key, which the local cloud keeps in its state folder, and Airflow
starts from that key to assume the template's Airflow role.

`python -m include.stack.infra --endpoint-url URL` deploys it and prints the settings, as .env lines
(compose's airflow-init writes them to the file its Airflow services start with:
include/stack/with_infra_settings.sh)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from include.localcloud.access.enforcer import ROOT_CREDENTIALS_FILE
from include.pipeline.settings import Settings
from include.stack.config import PROJECT_DIR

TEMPLATE = PROJECT_DIR / "infra" / "template.yaml"
STACK_NAME = "fraud-detection"
CAPABILITIES = ["CAPABILITY_NAMED_IAM"]
# What a local cloud that does not enforce IAM takes: any key.
PLACEHOLDER_CREDENTIALS = {"aws_access_key_id": "localcloud", "aws_secret_access_key": "localcloud"}


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


def local_credentials(state_dir: Path) -> dict[str, str]:
    """boto3's credentials for the local cloud whose state is in `state_dir`: the account root's
    key, which the local cloud writes there when it first enforces IAM; else placeholders."""
    path = state_dir / ROOT_CREDENTIALS_FILE
    if not path.exists():
        return PLACEHOLDER_CREDENTIALS
    keys = json.loads(path.read_text())
    return {"aws_access_key_id": keys["AccessKeyId"], "aws_secret_access_key": keys["SecretAccessKey"]}


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


def deploy_local(cloud_url: str, settings: Settings, credentials: dict[str, str]) -> Infra:
    """The template deployed into the local cloud at cloud_url, with the pipeline's settings,
    by the caller of `credentials` (local_credentials)."""
    cloudformation = boto3.session.Session().client(
        "cloudformation", region_name=settings.region, endpoint_url=cloud_url, **credentials
    )
    try:
        return deploy(cloudformation, local_parameters(settings))
    except ClientError as error:
        raise InfraError(f"deploying {TEMPLATE} into the local cloud at {cloud_url}: {error}") from error


def local_connection(cloud_url: str, region: str, infra: Infra, credentials: dict[str, str]) -> str:
    """AIRFLOW_CONN_AWS_DEFAULT of a local stack: the local cloud, where the caller of
    `credentials` assumes the stack's Airflow role (STS is the local cloud's too: the provider
    never sends AssumeRole to endpoint_url)."""
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
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("LOCALCLOUD_STATE", ".localcloud")),
                        help="the local cloud's state folder, which holds its root key when it enforces IAM "
                             "(default: $LOCALCLOUD_STATE or .localcloud)")
    arguments = parser.parse_args(argv)
    settings = Settings.from_env()
    credentials = local_credentials(arguments.state_dir)
    try:
        infra = deploy_local(arguments.endpoint_url, settings, credentials)
    except InfraError as error:
        print(error, file=sys.stderr)
        return 1
    for key, value in infra.environment().items():
        print(f"{key}={value}")
    print(f"AIRFLOW_CONN_AWS_DEFAULT='{local_connection(arguments.endpoint_url, settings.region, infra, credentials)}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
