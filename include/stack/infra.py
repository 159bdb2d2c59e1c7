"""infra/template.yaml deployed into the local cloud, as `make aws-infra` deploys it into an
account: the local stacks (make run, make up, compose's airflow-init) run with the bucket and the
roles it creates. Deploying is idempotent: the stack is created once, updated when the template
or its parameters change, left alone otherwise.

make run and make up start the local cloud with IAM enforced (LOCALCLOUD_IAM=enforce): they
deploy with the account root's key, which the local cloud keeps in its state folder. Airflow starts
from the key of an IAM user made then, as an account's administrator gives Airflow a principal: the
template's AirflowPrincipal, whose own policy allows only sts:AssumeRole on the template's Airflow
role (AWS refuses AssumeRole signed by the root user, and so does the local cloud).

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
# In the state folder beside the root's key, in its format: the access key of the Airflow user.
AIRFLOW_CREDENTIALS_FILE = "airflow-credentials.json"
AIRFLOW_USER_POLICY = "assume-airflow-role"


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


@dataclass(frozen=True)
class AirflowUser:
    """The IAM user a local stack's Airflow starts from (the template's AirflowPrincipal)."""

    arn: str
    credentials: dict[str, str]  # boto3's aws_access_key_id and aws_secret_access_key


def _read_key(path: Path) -> dict[str, str]:
    """boto3's credentials of an access key file ({"AccessKeyId": ..., "SecretAccessKey": ...})."""
    keys = json.loads(path.read_text())
    return {"aws_access_key_id": keys["AccessKeyId"], "aws_secret_access_key": keys["SecretAccessKey"]}


def local_credentials(state_dir: Path) -> dict[str, str]:
    """boto3's credentials for the local cloud whose state is in `state_dir`: the account root's
    key, which the local cloud writes there when it first enforces IAM; else placeholders."""
    path = state_dir / ROOT_CREDENTIALS_FILE
    return _read_key(path) if path.exists() else PLACEHOLDER_CREDENTIALS


def airflow_user_policy(airflow_role_arn: str) -> dict[str, Any]:
    """The Airflow user's own policy: it may only assume the Airflow role."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "AssumeAirflowRole", "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": airflow_role_arn}]}


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


def _user_arn(iam: Any, name: str) -> str:
    """The ARN of IAM user `name`, made if missing."""
    try:
        return iam.create_user(UserName=name)["User"]["Arn"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "EntityAlreadyExists":
            raise
    return iam.get_user(UserName=name)["User"]["Arn"]


def _user_key(iam: Any, name: str, path: Path) -> dict[str, str]:
    """The access key of user `name` kept in `path`; when none is, or IAM no longer knows it (a
    local cloud started afresh), a new one, the user's others deleted (IAM allows two keys)."""
    known = [key["AccessKeyId"] for key in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]]
    if path.exists() and (kept := _read_key(path))["aws_access_key_id"] in known:
        return kept
    for key_id in known:
        iam.delete_access_key(UserName=name, AccessKeyId=key_id)
    made = iam.create_access_key(UserName=name)["AccessKey"]
    path.touch(mode=0o600)  # readable by its owner only, as the root's key
    path.write_text(json.dumps({"AccessKeyId": made["AccessKeyId"], "SecretAccessKey": made["SecretAccessKey"]}))
    return {"aws_access_key_id": made["AccessKeyId"], "aws_secret_access_key": made["SecretAccessKey"]}


def deploy_local(cloud_url: str, settings: Settings, state_dir: Path,
                 key_file: Path | None = None) -> tuple[Infra, AirflowUser]:
    """The template deployed into the local cloud at cloud_url with the pipeline's settings, by the
    account root (its key in `state_dir`, local_credentials), as an administrator sets an account
    up: the IAM user <prefix>-airflow that Airflow starts from, the stack with that user as its
    AirflowPrincipal, then the user's policy (airflow_user_policy). The user's key is kept in
    `key_file` (default: airflow-credentials.json in `state_dir`)."""
    session = boto3.session.Session()
    root = local_credentials(state_dir)
    iam = session.client("iam", region_name=settings.region, endpoint_url=cloud_url, **root)
    cloudformation = session.client("cloudformation", region_name=settings.region, endpoint_url=cloud_url, **root)
    name = f"{settings.prefix}-airflow"
    try:
        user_arn = _user_arn(iam, name)
        infra = deploy(cloudformation, {**local_parameters(settings), "AirflowPrincipal": user_arn})
        iam.put_user_policy(UserName=name, PolicyName=AIRFLOW_USER_POLICY,
                            PolicyDocument=json.dumps(airflow_user_policy(infra.airflow_role_arn)))
        credentials = _user_key(iam, name, key_file or state_dir / AIRFLOW_CREDENTIALS_FILE)
    except ClientError as error:
        raise InfraError(f"deploying {TEMPLATE} into the local cloud at {cloud_url}: {error}") from error
    return infra, AirflowUser(user_arn, credentials)


def local_connection(cloud_url: str, region: str, infra: Infra, credentials: dict[str, str]) -> str:
    """AIRFLOW_CONN_AWS_DEFAULT of a local stack: the local cloud, where the caller of
    `credentials` (the Airflow user's) assumes the stack's Airflow role (STS is the local cloud's
    too: the provider never sends AssumeRole to endpoint_url)."""
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
    parser.add_argument("--key-file", type=Path,
                        help=f"where the Airflow user's access key is kept (default: {AIRFLOW_CREDENTIALS_FILE} "
                             "in the state folder)")
    arguments = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        infra, user = deploy_local(arguments.endpoint_url, settings, arguments.state_dir, arguments.key_file)
    except InfraError as error:
        print(error, file=sys.stderr)
        return 1
    for key, value in infra.environment().items():
        print(f"{key}={value}")
    connection = local_connection(arguments.endpoint_url, settings.region, infra, user.credentials)
    print(f"AIRFLOW_CONN_AWS_DEFAULT='{connection}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
