"""infra/template.yaml: cfn-lint passes on it; the AWS CLI (make aws-infra's script) deploys it
into the local cloud, whose moto then holds its bucket and roles as the template says; a changed
template updates the stack; the stack survives a restart of the local cloud; compose's airflow-init
deploys it into a local cloud enforcing IAM and its services' connection assumes the Airflow role."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from include.localcloud.server import LocalCloud
from include.pipeline.settings import Settings
from include.stack import infra
from include.stack.infra import TEMPLATE, deploy, deploy_local, local_credentials, local_parameters

BIN = Path(sys.executable).parent
SCRIPT = TEMPLATE.parent / "aws-infra.sh"
# What each Airflow service of docker-compose.yaml starts through.
WITH_INFRA_SETTINGS = infra.PROJECT_DIR / "include" / "stack" / "with_infra_settings.sh"
ACCOUNT = "123456789012"


def test_cfn_lint_passes() -> None:
    linted = subprocess.run([BIN / "cfn-lint", str(TEMPLATE)], capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def statements(document: dict) -> dict[str, dict]:
    return {statement["Sid"]: statement for statement in document["Statement"]}


def test_the_aws_cli_deploys_the_template_into_the_local_cloud(cloud, aws) -> None:
    environment = dict(
        os.environ, AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local", AWS_DEFAULT_REGION="eu-west-1",
        AWS_ENDPOINT_URL=cloud.url,
    )
    prefix = "cli-test"
    principal = f"arn:aws:iam::{ACCOUNT}:user/airflow"
    deployed = subprocess.run(
        [SCRIPT, BIN / "aws", "cli-test-stack", f"Prefix={prefix}", f"AirflowPrincipal={principal}"],
        env=environment, capture_output=True, text=True, timeout=120,
    )
    assert deployed.returncode == 0, deployed.stderr
    bucket = f"{prefix}-{ACCOUNT}-eu-west-1"
    execution_role = f"arn:aws:iam::{ACCOUNT}:role/{prefix}-sagemaker-eu-west-1"
    airflow_role = f"arn:aws:iam::{ACCOUNT}:role/{prefix}-airflow-eu-west-1"
    lines = dict(line.split("=", 1) for line in deployed.stdout.splitlines())
    assert lines["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert lines["FRAUD_BUCKET"] == bucket
    assert lines["FRAUD_EXECUTION_ROLE_ARN"] == execution_role
    assert lines["FRAUD_PREFIX"] == prefix
    assert json.loads(lines["AIRFLOW_CONN_AWS_DEFAULT"].strip("'")) == {
        "conn_type": "aws", "extra": {"region_name": "eu-west-1", "role_arn": airflow_role}
    }

    s3, iam = aws("s3", region="eu-west-1"), aws("iam")
    [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                                   "RestrictPublicBuckets"), True)
    [tls_only] = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert tls_only["Effect"] == "Deny" and tls_only["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert tls_only["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    # The local cloud's requests count as sent over TLS: the bucket still serves them.
    s3.put_object(Bucket=bucket, Key=f"{prefix}/k", Body=b"kept")
    assert s3.get_object(Bucket=bucket, Key=f"{prefix}/k")["Body"].read() == b"kept"

    execution = iam.get_role(RoleName=f"{prefix}-sagemaker-eu-west-1")["Role"]
    [trust] = execution["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    jobs = statements(iam.get_role_policy(RoleName=execution["RoleName"], PolicyName="sagemaker-jobs")["PolicyDocument"])
    assert jobs["ReadWritePipelineFiles"]["Resource"] == f"arn:aws:s3:::{bucket}/{prefix}/*"
    assert jobs["FeatureStoreRecords"]["Action"] == [
        "sagemaker:BatchGetRecord", "sagemaker:DescribeFeatureGroup", "sagemaker:PutRecord"
    ]

    airflow = iam.get_role(RoleName=f"{prefix}-airflow-eu-west-1")["Role"]
    [trust] = airflow["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": principal}
    pipeline = statements(iam.get_role_policy(RoleName=airflow["RoleName"], PolicyName="airflow-pipeline")["PolicyDocument"])
    assert pipeline["PassExecutionRole"] == {
        "Sid": "PassExecutionRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": execution_role,
        "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
    }
    assert f"arn:aws:glue:eu-west-1:{ACCOUNT}:table/sagemaker_featurestore/cli_test_*" in (
        pipeline["ServiceOfflineStoreCatalog"]["Resource"]
    )
    assert pipeline["Hosting"]["Resource"][-1] == f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:endpoint/fraud-detection"


def test_a_changed_template_updates_the_stack_and_an_unchanged_one_leaves_it(aws, tmp_path) -> None:
    cloudformation, iam = aws("cloudformation"), aws("iam")
    parameters = {**local_parameters(Settings()), "Prefix": "update-test", "BucketName": "update-test-bucket"}
    deploy(cloudformation, parameters, name="update-test")
    events = len(cloudformation.describe_stack_events(StackName="update-test")["StackEvents"])
    deploy(cloudformation, parameters, name="update-test")
    assert len(cloudformation.describe_stack_events(StackName="update-test")["StackEvents"]) == events

    narrower = tmp_path / "template.yaml"
    text = TEMPLATE.read_text()
    hosting_at = text.index("- Sid: Hosting")
    narrower.write_text(text[:hosting_at] + text[hosting_at:].replace("\n                  - sagemaker:CreateEndpoint\n", "\n", 1))
    infra = deploy(cloudformation, parameters, name="update-test", template=narrower)
    assert infra.execution_role_arn.endswith(":role/update-test-sagemaker-us-east-1")
    hosting = statements(
        iam.get_role_policy(RoleName="update-test-airflow-us-east-1", PolicyName="airflow-pipeline")["PolicyDocument"]
    )["Hosting"]
    assert "sagemaker:CreateEndpoint" not in hosting["Action"]
    assert "sagemaker:CreateEndpointConfig" in hosting["Action"]


def test_bucket_policy_statements_apply_only_when_their_conditions_hold(aws) -> None:
    s3 = aws("s3")
    s3.create_bucket(Bucket="policy-conditions")
    s3.put_object(Bucket="policy-conditions", Key="k", Body=b"x")

    def policy(condition: dict) -> str:
        return json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::policy-conditions/*", **condition,
        }]})

    s3.put_bucket_policy(Bucket="policy-conditions", Policy=policy({"Condition": {"Bool": {"aws:SecureTransport": "false"}}}))
    assert s3.get_object(Bucket="policy-conditions", Key="k")["Body"].read() == b"x"
    s3.put_bucket_policy(Bucket="policy-conditions", Policy=policy({"Condition": {"StringEquals": {"aws:SourceVpc": "v"}}}))
    assert s3.get_object(Bucket="policy-conditions", Key="k")["Body"].read() == b"x"
    s3.put_bucket_policy(Bucket="policy-conditions", Policy=policy({}))
    with pytest.raises(ClientError) as denied:
        s3.get_object(Bucket="policy-conditions", Key="k")
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_the_stack_survives_a_restart_deployed_with_the_root_key_of_an_enforcing_cloud(tmp_path) -> None:
    settings = Settings()
    with LocalCloud(tmp_path, port=0, iam="enforce") as first:
        deployed = deploy_local(first.url, settings, tmp_path)
    with LocalCloud(tmp_path, port=0, iam="enforce") as second:
        credentials = local_credentials(tmp_path)  # the same key: kept in the state folder
        # The same stack, and the same Airflow user and key (kept beside the root's, owner-only).
        assert deploy_local(second.url, settings, tmp_path) == deployed
        assert (tmp_path / infra.AIRFLOW_CREDENTIALS_FILE).stat().st_mode & 0o077 == 0

        def client(service: str) -> Any:
            return boto3.client(service, region_name="us-east-1", endpoint_url=second.url, **credentials)

        stack = client("cloudformation").describe_stacks(StackName="fraud-detection")["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        assert client("iam").get_role(RoleName="fraud-detection-sagemaker-us-east-1")


def test_compose_init_deploys_under_enforcement_and_the_services_assume_the_airflow_role(
    tmp_path, capsys, monkeypatch
) -> None:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    with LocalCloud(tmp_path / "cloud", port=0, iam="enforce") as cloud:
        # airflow-init's command: without the root key the enforcing cloud refuses, and says so.
        assert infra.main(["--endpoint-url", cloud.url, "--state-dir", str(tmp_path / "elsewhere")]) == 1
        assert "InvalidClientTokenId" in capsys.readouterr().err
        assert infra.main(["--endpoint-url", cloud.url, "--state-dir", str(cloud.state_dir)]) == 0
        settings_file = tmp_path / "infra-settings.env"
        settings_file.write_text(capsys.readouterr().out)

        # A service's environment: what .env sets is kept, what it leaves empty comes from the file.
        shown = subprocess.run(
            ["bash", WITH_INFRA_SETTINGS, sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
            env={"PATH": os.environ["PATH"], "INFRA_SETTINGS_FILE": str(settings_file),
                 "FRAUD_PREFIX": "from-dotenv", "AIRFLOW_CONN_AWS_DEFAULT": ""},
            capture_output=True, text=True, check=True,
        )
        environment = json.loads(shown.stdout)
        assert environment["FRAUD_PREFIX"] == "from-dotenv"
        assert environment["FRAUD_BUCKET"] == Settings().bucket
        assert environment["FRAUD_EXECUTION_ROLE_ARN"] == f"arn:aws:iam::{ACCOUNT}:role/fraud-detection-sagemaker-us-east-1"

        # The connection starts from the Airflow user's key (AWS refuses AssumeRole signed by the
        # root), the template's AirflowPrincipal, which may do nothing but assume the Airflow role.
        connection = json.loads(environment["AIRFLOW_CONN_AWS_DEFAULT"])
        user_key = json.loads((cloud.state_dir / infra.AIRFLOW_CREDENTIALS_FILE).read_text())
        assert connection["login"] == user_key["AccessKeyId"] != local_credentials(cloud.state_dir)["aws_access_key_id"]
        root_iam = boto3.client("iam", region_name="us-east-1", endpoint_url=cloud.url,
                                **local_credentials(cloud.state_dir))
        [trust] = root_iam.get_role(RoleName="fraud-detection-airflow-us-east-1")["Role"]["AssumeRolePolicyDocument"][
            "Statement"]
        assert trust["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:user/fraud-detection-airflow"}
        as_user = boto3.client("sagemaker", region_name="us-east-1", endpoint_url=cloud.url,
                               aws_access_key_id=connection["login"], aws_secret_access_key=connection["password"])
        with pytest.raises(ClientError) as refused:
            as_user.list_models()
        assert refused.value.response["Error"]["Code"] == "AccessDeniedException"

        # The provider's hook, with that connection, calls as the template's Airflow role.
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", environment["AIRFLOW_CONN_AWS_DEFAULT"])
        caller = AwsBaseHook(aws_conn_id="aws_default", client_type="sts").get_conn().get_caller_identity()
        assert caller["Arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/fraud-detection-airflow-us-east-1/")

        # A key file lost (or a local cloud that no longer knows it): the next deploy makes the user a new key.
        (cloud.state_dir / infra.AIRFLOW_CREDENTIALS_FILE).unlink()
        assert infra.main(["--endpoint-url", cloud.url, "--state-dir", str(cloud.state_dir)]) == 0
        renewed = json.loads((cloud.state_dir / infra.AIRFLOW_CREDENTIALS_FILE).read_text())["AccessKeyId"]
        keys = root_iam.list_access_keys(UserName="fraud-detection-airflow")["AccessKeyMetadata"]
        assert renewed != user_key["AccessKeyId"] and [key["AccessKeyId"] for key in keys] == [renewed]
