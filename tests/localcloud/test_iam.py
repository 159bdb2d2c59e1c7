"""IAM enforced by the local cloud (LOCALCLOUD_IAM=enforce): signatures, principals, identity
policies, iam:PassRole, and jobs running under their execution role. Users, roles and policies
are made through moto's IAM with the local cloud's own (internal) credentials."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.sts.models import sts_backends
from sagemaker.core import image_uris

from include.localcloud.access import enforcer
from include.localcloud.access.policy import Decision, evaluate
from include.localcloud.server import ACCOUNT_ID, ALLOWED_ACTIONS_PATH, LocalCloud
from tests.localcloud.test_featurestore import claim, create_group, offline_objects, wait_for

REGION = "us-east-1"
SKLEARN_IMAGE = image_uris.retrieve("sklearn", region=REGION, version="1.2-1")
TRUST_SAGEMAKER = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    with LocalCloud(tmp_path_factory.mktemp("iam"), port=0, iam="enforce") as running:
        yield running


def client(cloud: LocalCloud, service: str, key: str, secret: str, token: str | None = None) -> Any:
    return boto3.session.Session().client(
        service, region_name=REGION, endpoint_url=cloud.url, aws_access_key_id=key, aws_secret_access_key=secret,
        aws_session_token=token, config=Config(retries={"max_attempts": 1}))


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: str | list[str], resource: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


@pytest.fixture
def user(enforced: LocalCloud) -> Callable[..., Callable[[str], Any]]:
    """user(statement, ...) -> a factory of boto3 clients signed with a new IAM user's key."""

    def make(*statements: dict[str, Any]) -> Callable[[str], Any]:
        iam = enforced.client("iam")
        name = f"user-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=name)
        if statements:
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=policy(*statements))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return lambda service: client(enforced, service, key["AccessKeyId"], key["SecretAccessKey"])

    return make


def role(cloud: LocalCloud, trust: dict[str, Any], *statements: dict[str, Any]) -> str:
    iam = cloud.client("iam")
    name = f"role-{uuid.uuid4().hex[:8]}"
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    if statements:
        iam.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=policy(*statements))
    return arn


def error_of(call: Callable[[], Any]) -> dict[str, str]:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value.response["Error"]


def raw_request(cloud: LocalCloud, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(cloud.host, cloud.port, timeout=10)
    connection.request(method, path, body=body, headers=headers)
    answer = connection.getresponse()
    result = answer.status, answer.read()
    connection.close()
    return result


# -- bad credentials ----------------------------------------------------------------------------
def test_unknown_access_key_is_refused_as_aws_does(enforced: LocalCloud) -> None:
    sagemaker = client(enforced, "sagemaker", "AKIANOBODY0000000000", "secret")
    assert error_of(sagemaker.list_training_jobs)["Code"] == "UnrecognizedClientException"
    s3 = client(enforced, "s3", "AKIANOBODY0000000000", "secret")
    assert error_of(s3.list_buckets)["Code"] == "InvalidAccessKeyId"
    sts = client(enforced, "sts", "AKIANOBODY0000000000", "secret")
    assert error_of(sts.get_caller_identity)["Code"] == "InvalidClientTokenId"
    featurestore = client(enforced, "sagemaker-featurestore-runtime", "AKIANOBODY0000000000", "secret")
    error = error_of(lambda: featurestore.get_record(FeatureGroupName="g", RecordIdentifierValueAsString="1"))
    assert error["Code"] == "UnrecognizedClientException"


def test_wrong_secret_fails_the_signature(enforced: LocalCloud, user: Callable[..., Any]) -> None:
    iam = enforced.client("iam")
    name = f"user-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]
    assert error_of(client(enforced, "sagemaker", key, "wrong").list_models)["Code"] == "InvalidSignatureException"
    assert error_of(client(enforced, "s3", key, "wrong").list_buckets)["Code"] == "SignatureDoesNotMatch"


def test_malformed_authorization_header_is_refused_and_the_server_stays_up(
        enforced: LocalCloud, user: Callable[..., Any]) -> None:
    garbage = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIA/20250101/us-east-1/sagemaker/aws4_request",
               "X-Amz-Target": "SageMaker.ListModels", "Content-Type": "application/x-amz-json-1.1"}
    status, body = raw_request(enforced, "POST", "/", garbage, b"{}")
    assert status == 400 and json.loads(body)["__type"] == "InvalidSignatureException"
    assert "requires 'SignedHeaders' parameter" in json.loads(body)["message"]
    status, body = raw_request(enforced, "GET", "/some-bucket", {"Authorization": "Basic dXNlcjpwdw=="})
    assert status == 400 and b"<Code>AuthorizationHeaderMalformed</Code>" in body
    status, body = raw_request(enforced, "GET", "/some-bucket", {})
    assert status == 403 and b"<Code>AccessDenied</Code>" in body  # anonymous: no policy lets it in
    allowed = user(allow("sagemaker:ListModels", "*"))
    assert allowed("sagemaker").list_models()["Models"] == []  # still serving


def test_expired_session_token_is_refused(enforced: LocalCloud, user: Callable[..., Any]) -> None:
    arn = role(enforced, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"}, "Action": "sts:AssumeRole"}]},
        allow("s3:ListAllMyBuckets", "*"), allow("sagemaker:ListModels", "*"))
    caller = user(allow("sts:AssumeRole", arn))
    credentials = caller("sts").assume_role(RoleArn=arn, RoleSessionName="short")["Credentials"]
    session = (credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"])
    assert client(enforced, "sagemaker", *session).list_models()["Models"] == []
    for assumed in sts_backends[ACCOUNT_ID]["aws"].assumed_roles:
        if assumed.access_key_id == credentials["AccessKeyId"]:
            assumed.expiration = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=1)
    enforced.access.invalidate()  # the cached principal holds the old expiry
    assert error_of(client(enforced, "sagemaker", *session).list_models)["Code"] == "ExpiredTokenException"
    assert error_of(client(enforced, "s3", *session).list_buckets)["Code"] == "ExpiredToken"
    wrong_token = client(enforced, "sagemaker", session[0], session[1], "not-the-token")
    assert error_of(wrong_token.list_models)["Code"] == "UnrecognizedClientException"


# -- identity policies ---------------------------------------------------------------------------
def test_an_action_is_allowed_on_the_resources_its_policy_names(enforced: LocalCloud, user: Callable[..., Any]) -> None:
    groups = f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:feature-group"
    caller = user(allow(["sagemaker:DescribeEndpoint"], f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:endpoint/ok-*"),
                  allow("sagemaker:GetRecord", f"{groups}/readable"))
    sagemaker = caller("sagemaker")
    assert error_of(lambda: sagemaker.describe_endpoint(EndpointName="ok-missing"))["Code"] == "ValidationException"
    error = error_of(lambda: sagemaker.create_endpoint(EndpointName="Other", EndpointConfigName="c"))
    user_arn = caller("sts").get_caller_identity()["Arn"]
    assert error["Code"] == "AccessDeniedException"
    assert error["Message"] == (
        f"User: {user_arn} is not authorized to perform: sagemaker:CreateEndpoint on resource: "
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:endpoint/other because no identity-based policy allows the "
        "sagemaker:CreateEndpoint action")
    runtime = caller("sagemaker-featurestore-runtime")
    error = error_of(lambda: runtime.get_record(FeatureGroupName="readable", RecordIdentifierValueAsString="1"))
    assert error["Code"] != "AccessDeniedException"  # allowed; the group just doesn't exist
    error = error_of(lambda: runtime.get_record(FeatureGroupName="secret", RecordIdentifierValueAsString="1"))
    assert error["Code"] == "AccessDeniedException" and f"{groups}/secret" in error["Message"]


def test_tags_given_on_create_need_add_tags_of_the_new_resource(enforced: LocalCloud, user: Callable[..., Any]) -> None:
    groups = f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:model-package-group"
    caller = user(allow("sagemaker:CreateModelPackageGroup", f"{groups}/*"), allow("sagemaker:AddTags", f"{groups}/tags-ok"))
    sagemaker = caller("sagemaker")
    tags = [{"Key": "project", "Value": "fraud-detection"}]
    sagemaker.create_model_package_group(ModelPackageGroupName="untagged")
    sagemaker.create_model_package_group(ModelPackageGroupName="tags-ok", Tags=tags)
    error = error_of(lambda: sagemaker.create_model_package_group(ModelPackageGroupName="tags-refused", Tags=tags))
    assert error["Code"] == "AccessDeniedException"
    assert f"sagemaker:AddTags on resource: {groups}/tags-refused because" in error["Message"]


def test_explicit_deny_wins_and_says_so(enforced: LocalCloud, user: Callable[..., Any]) -> None:
    caller = user(allow("sagemaker:*", "*"), {"Effect": "Deny", "Action": "sagemaker:DeleteModel", "Resource": "*"})
    error = error_of(lambda: caller("sagemaker").delete_model(ModelName="m"))
    assert error["Code"] == "AccessDeniedException"
    assert error["Message"].endswith("with an explicit deny in an identity-based policy")


def test_s3_objects_are_checked_by_bucket_and_key(enforced: LocalCloud, user: Callable[..., Any]) -> None:
    bucket = f"iam-{uuid.uuid4().hex[:8]}"
    enforced.client("s3").create_bucket(Bucket=bucket)
    caller = user(allow(["s3:PutObject", "s3:GetObject"], f"arn:aws:s3:::{bucket}/mine/*"),
                  allow("s3:ListBucket", f"arn:aws:s3:::{bucket}"))
    s3 = caller("s3")
    s3.put_object(Bucket=bucket, Key="mine/a.txt", Body=b"hello")
    assert s3.get_object(Bucket=bucket, Key="mine/a.txt")["Body"].read() == b"hello"
    assert [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["mine/a.txt"]
    error = error_of(lambda: s3.put_object(Bucket=bucket, Key="theirs/b.txt", Body=b"x"))
    assert error["Code"] == "AccessDenied"
    assert (f'is not authorized to perform: s3:PutObject on resource: "arn:aws:s3:::{bucket}/theirs/b.txt" '
            "because no identity-based policy allows the s3:PutObject action") in error["Message"]
    assert error_of(lambda: s3.delete_object(Bucket=bucket, Key="mine/a.txt"))["Code"] == "AccessDenied"


def test_the_decisions_cached_stay_bounded(enforced: LocalCloud, user: Callable[..., Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each S3 object is a resource of its own, decided once: a cache kept of every one (the
    offline store puts a new object every second) would grow without end."""
    monkeypatch.setattr(enforcer, "KEPT_DECISIONS", 3)
    bucket = f"iam-{uuid.uuid4().hex[:8]}"
    enforced.client("s3").create_bucket(Bucket=bucket)
    s3 = user(allow("s3:PutObject", f"arn:aws:s3:::{bucket}/*"))("s3")
    for number in range(10):
        s3.put_object(Bucket=bucket, Key=f"object-{number}", Body=b"x")
    assert len(enforced.access._decisions) <= 3
    assert error_of(lambda: s3.delete_object(Bucket=bucket, Key="object-0"))["Code"] == "AccessDenied"


def test_assumed_role_is_the_principal_of_its_temporary_credentials(
        enforced: LocalCloud, user: Callable[..., Any]) -> None:
    arn = role(enforced, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"}, "Action": "sts:AssumeRole"}]},
        allow("sagemaker:ListModels", "*"))
    denied = user()("sts")
    error = error_of(lambda: denied.assume_role(RoleArn=arn, RoleSessionName="ss"))
    assert error["Code"] == "AccessDenied" and "sts:AssumeRole" in error["Message"]
    untrusted = role(enforced, TRUST_SAGEMAKER)
    caller = user(allow("sts:AssumeRole", "*"))
    error = error_of(lambda: caller("sts").assume_role(RoleArn=untrusted, RoleSessionName="ss"))
    assert error["Code"] == "AccessDenied"
    credentials = caller("sts").assume_role(RoleArn=arn, RoleSessionName="airflow")["Credentials"]
    sagemaker = client(enforced, "sagemaker", credentials["AccessKeyId"], credentials["SecretAccessKey"],
                       credentials["SessionToken"])
    assert sagemaker.list_models()["Models"] == []
    error = error_of(lambda: sagemaker.create_endpoint(EndpointName="e", EndpointConfigName="c"))
    role_name = arn.split("/")[-1]
    assert error["Message"].startswith(
        f"User: arn:aws:sts::{ACCOUNT_ID}:assumed-role/{role_name}/airflow is not authorized to perform: "
        f"sagemaker:CreateEndpoint on resource: arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:endpoint/e because")
    allowed = json.loads(raw_request(enforced, "GET", ALLOWED_ACTIONS_PATH, {})[1])
    assert "sagemaker:ListModels" in allowed[arn]


def script_job(name: str, bucket: str, role_arn: str) -> dict[str, Any]:
    return {
        "ProcessingJobName": name, "RoleArn": role_arn,
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                                  "VolumeSizeInGB": 5}},
        "AppSpecification": {"ImageUri": SKLEARN_IMAGE,
                             "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/whoami.py"]},
        "ProcessingInputs": [{"InputName": "code", "S3Input": {
            "S3Uri": f"s3://{bucket}/code/whoami.py", "LocalPath": "/opt/ml/processing/input/code",
            "S3DataType": "S3Prefix", "S3InputMode": "File"}}],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "out", "S3Output": {
            "S3Uri": f"s3://{bucket}/output/{name}", "LocalPath": "/opt/ml/processing/output",
            "S3UploadMode": "EndOfJob"}}]},
    }


WHOAMI = b"""
import boto3, json, pathlib
identity = boto3.client("sts").get_caller_identity()
pathlib.Path("/opt/ml/processing/output").mkdir(parents=True, exist_ok=True)
out = pathlib.Path(__import__("os").environ["SAGEMAKER_BASE_DIR"]) / "processing/output/identity.json"
out.write_text(json.dumps({"arn": identity["Arn"]}))
try:
    boto3.client("s3").list_buckets()
    print("list_buckets allowed")
except Exception as exc:
    print("list_buckets:", type(exc).__name__, str(exc)[:200])
"""


def wait_done(sagemaker: Any, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while (job := sagemaker.describe_processing_job(ProcessingJobName=name))["ProcessingJobStatus"] == "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return job


def test_create_job_checks_pass_role_and_the_job_runs_under_its_role(
        enforced: LocalCloud, user: Callable[..., Any]) -> None:
    bucket = f"iam-{uuid.uuid4().hex[:8]}"
    s3 = enforced.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="code/whoami.py", Body=WHOAMI)
    execution = role(enforced, TRUST_SAGEMAKER,
                     allow("s3:ListBucket", f"arn:aws:s3:::{bucket}"),
                     allow("s3:GetObject", f"arn:aws:s3:::{bucket}/code/*"),
                     allow("s3:PutObject", f"arn:aws:s3:::{bucket}/output/allowed-*"),
                     allow(["logs:CreateLogStream", "logs:PutLogEvents", "logs:CreateLogGroup"],
                           f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/aws/sagemaker/*"))
    jobs = f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:processing-job"
    no_pass = user(allow(["sagemaker:CreateProcessingJob", "sagemaker:DescribeProcessingJob"], f"{jobs}/*"))
    error = error_of(lambda: no_pass("sagemaker").create_processing_job(**script_job("allowed-1", bucket, execution)))
    assert error["Code"] == "AccessDeniedException"
    assert f"iam:PassRole on resource: {execution} because no identity-based policy allows" in error["Message"]

    wrong_service = user(allow("sagemaker:CreateProcessingJob", f"{jobs}/*"),
                         allow("iam:PassRole", execution,
                               Condition={"StringEquals": {"iam:PassedToService": "glue.amazonaws.com"}}))
    error = error_of(lambda: wrong_service("sagemaker").create_processing_job(
        **script_job("allowed-1", bucket, execution)))
    assert "iam:PassRole" in error["Message"]

    caller = user(allow(["sagemaker:CreateProcessingJob", "sagemaker:DescribeProcessingJob"], f"{jobs}/*"),
                  allow("iam:PassRole", execution,
                        Condition={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}))
    sagemaker = caller("sagemaker")
    sagemaker.create_processing_job(**script_job("allowed-1", bucket, execution))
    job = wait_done(sagemaker, "allowed-1")
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    identity = json.loads(s3.get_object(Bucket=bucket, Key="output/allowed-1/identity.json")["Body"].read())
    assert identity["arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{execution.split('/')[-1]}/SageMaker"
    role_used = enforced.access.allowed_actions()[execution]
    assert {"s3:GetObject", "s3:PutObject", "logs:PutLogEvents"} <= set(role_used)
    assert "s3:ListAllMyBuckets" not in role_used  # the job's own call was denied

    # the output prefix its role may not write: the job fails on the upload, naming the action
    sagemaker.create_processing_job(**script_job("denied-1", bucket, execution))
    job = wait_done(sagemaker, "denied-1")
    assert job["ProcessingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("ClientError: Uploading ")  # the job's input fault: not retried
    assert "AccessDenied" in job["FailureReason"] and "s3:PutObject" in job["FailureReason"]


def test_the_offline_store_is_written_as_the_feature_groups_role(enforced: LocalCloud) -> None:
    """As SageMaker writes a group's offline store with the group's RoleArn: files land where the
    role may put them; elsewhere the put is refused and the rows wait in the journal."""
    kept, refused = f"iam-{uuid.uuid4().hex[:8]}", f"iam-{uuid.uuid4().hex[:8]}"
    s3, sagemaker = enforced.client("s3"), enforced.client("sagemaker")
    writer = role(enforced, TRUST_SAGEMAKER, allow("s3:PutObject", f"arn:aws:s3:::{kept}/offline/*"))
    denied, allowed = (create_group(sagemaker, s3, bucket=bucket, role_arn=writer) for bucket in (refused, kept))
    records = enforced.client("sagemaker-featurestore-runtime")
    # The refused group's row first: the flush that writes the other's has tried it too.
    for group in (denied, allowed):
        records.put_record(FeatureGroupName=group["FeatureGroupName"], Record=claim(1, 5.0))
    [written] = wait_for(lambda: offline_objects(s3, allowed))
    assert offline_objects(s3, denied) == []
    assert enforced.access.allowed_actions()[writer]["s3:PutObject"] == [f"arn:aws:s3:::{written}"]
    for group in (denied, allowed):
        sagemaker.delete_feature_group(FeatureGroupName=group["FeatureGroupName"])


def test_sagemaker_must_be_able_to_assume_the_passed_role(enforced: LocalCloud, user: Callable[..., Any]) -> None:
    not_for_sagemaker = role(enforced, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "glue.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    caller = user(allow(["sagemaker:CreateProcessingJob", "iam:PassRole"], "*"))
    error = error_of(lambda: caller("sagemaker").create_processing_job(
        **script_job("untrusted", "any-bucket", not_for_sagemaker)))
    assert error["Code"] == "ValidationException" and "sagemaker.amazonaws.com" in error["Message"]


def test_iam_changes_take_effect_at_once(enforced: LocalCloud) -> None:
    iam = enforced.client("iam")
    name = f"user-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    sagemaker = client(enforced, "sagemaker", key["AccessKeyId"], key["SecretAccessKey"])
    assert error_of(sagemaker.list_models)["Code"] == "AccessDeniedException"
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=policy(allow("sagemaker:ListModels", "*")))
    assert sagemaker.list_models()["Models"] == []
    iam.delete_user_policy(UserName=name, PolicyName="p")
    assert error_of(sagemaker.list_models)["Code"] == "AccessDeniedException"


def test_without_the_setting_everything_is_allowed(aws: Callable[..., Any], cloud: LocalCloud) -> None:
    assert not cloud.access.enforcing
    assert "Models" in aws("sagemaker").list_models()  # "testing" is no IAM user's key
    assert cloud.access.allowed_actions() == {}


def test_an_unknown_setting_is_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="LOCALCLOUD_IAM"):
        LocalCloud(tmp_path, port=0, iam="yes")


# -- policy evaluation --------------------------------------------------------------------------
def test_policy_conditions_wildcards_and_not_resource() -> None:
    docs = [json.loads(policy(
        allow("iam:PassRole", "arn:aws:iam::1:role/exec-?",
              Condition={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}),
        {"Effect": "Allow", "Action": "S3:Get*", "NotResource": "arn:aws:s3:::private/*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "*",
         "Condition": {"StringNotEquals": {"aws:RequestedRegion": "us-east-1"}}},
    ))]
    to_sagemaker = {"iam:PassedToService": "sagemaker.amazonaws.com", "aws:RequestedRegion": "us-east-1"}
    assert evaluate(docs, "iam:PassRole", "arn:aws:iam::1:role/exec-a", to_sagemaker) is Decision.ALLOWED
    assert evaluate(docs, "iam:PassRole", "arn:aws:iam::1:role/exec-ab", to_sagemaker) is Decision.IMPLICIT_DENY
    # an Allow whose condition fails allows nothing, and denies nothing (moto would deny)
    assert evaluate(docs, "iam:PassRole", "arn:aws:iam::1:role/exec-a",
                    {"iam:PassedToService": "glue.amazonaws.com"}) is Decision.IMPLICIT_DENY
    here = {"aws:RequestedRegion": "us-east-1"}
    assert evaluate(docs, "s3:GetObject", "arn:aws:s3:::public/x", here) is Decision.ALLOWED
    assert evaluate(docs, "s3:GetObject", "arn:aws:s3:::private/x", here) is Decision.IMPLICIT_DENY
    assert evaluate(docs, "s3:GetObject", "arn:aws:s3:::public/x",
                    {"aws:RequestedRegion": "eu-west-1"}) is Decision.EXPLICIT_DENY
    dotted = [json.loads(policy(allow("s3:GetObject", "arn:aws:s3:::a.b/*")))]
    assert evaluate(dotted, "s3:GetObject", "arn:aws:s3:::aXb/k", here) is Decision.IMPLICIT_DENY


def test_the_root_user_may_do_anything(enforced: LocalCloud) -> None:
    keys = json.loads((enforced.state_dir / "root-credentials.json").read_text())
    assert (enforced.state_dir / "root-credentials.json").stat().st_mode & 0o077 == 0
    iam = client(enforced, "iam", keys["AccessKeyId"], keys["SecretAccessKey"])
    iam.create_user(UserName=f"made-by-root-{uuid.uuid4().hex[:6]}")
    assert error_of(client(enforced, "iam", keys["AccessKeyId"], "wrong").list_users)["Code"] == "SignatureDoesNotMatch"


def test_the_root_user_may_not_assume_a_role_as_aws_refuses_it(enforced: LocalCloud, user: Callable[..., Any]) -> None:
    """Even a role whose trust policy names the account root: STS refuses the root user itself."""
    keys = json.loads((enforced.state_dir / "root-credentials.json").read_text())
    arn = role(enforced, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"}, "Action": "sts:AssumeRole"}]})
    root = client(enforced, "sts", keys["AccessKeyId"], keys["SecretAccessKey"])
    with pytest.raises(ClientError) as raised:
        root.assume_role(RoleArn=arn, RoleSessionName="root")
    assert raised.value.response["Error"] == {
        "Type": "Sender", "Code": "AccessDenied", "Message": "Roles may not be assumed by root accounts."}
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert root.get_caller_identity()["Account"] == ACCOUNT_ID  # the root user's other STS calls go
    caller = user(allow("sts:AssumeRole", arn))("sts")  # a user of the account, trusted through the root
    assert caller.assume_role(RoleArn=arn, RoleSessionName="user")["AssumedRoleUser"]["Arn"].endswith("/user")


def test_presigned_urls_are_checked_like_signed_requests(enforced: LocalCloud, user: Callable[..., Any]) -> None:
    bucket = f"iam-{uuid.uuid4().hex[:8]}"
    enforced.client("s3").create_bucket(Bucket=bucket)
    enforced.client("s3").put_object(Bucket=bucket, Key="shared/a.txt", Body=b"shared")
    enforced.client("s3").put_object(Bucket=bucket, Key="private/b.txt", Body=b"private")
    signer = user(allow("s3:GetObject", f"arn:aws:s3:::{bucket}/shared/*"))("s3")
    s3 = boto3.session.Session().client(  # the same key, presigning with SigV4 (boto3's default is SigV2)
        "s3", region_name=REGION, endpoint_url=enforced.url, config=Config(signature_version="s3v4"),
        aws_access_key_id=signer._request_signer._credentials.access_key,
        aws_secret_access_key=signer._request_signer._credentials.secret_key)
    v2_url = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared/a.txt"})
    status, body = raw_request(enforced, "GET", v2_url[len(enforced.url):], {})
    assert status == 400 and b"<Code>InvalidRequest</Code>" in body and b"AWS4-HMAC-SHA256" in body

    def fetch(key: str, expires: int = 60) -> tuple[int, bytes]:
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)
        return raw_request(enforced, "GET", url[len(enforced.url):], {"Host": f"{enforced.host}:{enforced.port}"})

    assert fetch("shared/a.txt") == (200, b"shared")
    status, body = fetch("private/b.txt")
    assert status == 403 and b"s3:GetObject" in body
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared/a.txt"}, ExpiresIn=60)
    tampered = url.replace("shared%2Fa.txt", "private%2Fb.txt").replace("shared/a.txt", "private/b.txt")
    status, body = raw_request(enforced, "GET", tampered[len(enforced.url):], {"Host": f"{enforced.host}:{enforced.port}"})
    assert status == 403 and b"SignatureDoesNotMatch" in body


def test_glue_checks_catalog_database_and_table(enforced: LocalCloud, user: Callable[..., Any]) -> None:
    prefix = f"arn:aws:glue:{REGION}:{ACCOUNT_ID}"
    enforced.client("glue").create_database(DatabaseInput={"Name": "open_db"})
    glue = user(allow(["glue:GetTable", "glue:GetDatabase"],
                      [f"{prefix}:catalog", f"{prefix}:database/open_db", f"{prefix}:table/open_db/*"]))("glue")
    assert glue.get_database(Name="open_db")["Database"]["Name"] == "open_db"
    assert error_of(lambda: glue.get_table(DatabaseName="open_db", Name="t"))["Code"] == "EntityNotFoundException"
    error = error_of(lambda: glue.get_table(DatabaseName="closed_db", Name="t"))
    assert error["Code"] == "AccessDeniedException"
    assert f"glue:GetTable on resource: {prefix}:database/closed_db because" in error["Message"]
