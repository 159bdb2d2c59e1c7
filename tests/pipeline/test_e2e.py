"""fraud_detection end to end with `dag.test()` against an in-process local cloud that enforces
IAM, as make run runs it: infra/template.yaml deployed into it, Airflow's connection assuming the
template's Airflow role from the key of the Airflow user the deploy made, the jobs and the endpoint's model servers running as its execution role.
Auto-approval on, a small tuning budget. Checks the registered package and its metrics, the
endpoint's answers, the lineage from the endpoint back to the raw files, and Clarify's
pre-training bias figures against an independent pandas computation on the training split; then
deploy_approved_model redeploys the package. Then the proofs that the template's policies are
what the pipeline needs: every action they grant was used by these runs, and without one of
them the task that needs it fails, naming it. (tests/pipeline/test_e2e_data_runs.py: runs of
other data.)"""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pandas as pd
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.utils import db
from botocore.config import Config

from include.jobs import schema
from include.localcloud.access.policy import any_match, as_list
from include.localcloud.server import LocalCloud
from include.pipeline.clarify import bias_metrics
from include.pipeline.configs import RunLayout, short_hash
from include.pipeline.settings import Settings
from include.stack.infra import AirflowUser, Infra, deploy_local, local_connection, local_credentials
from tests.airflow_env import DAGS_FOLDER
from tests.conftest import moto_state_kept

REGION = "us-east-1"
PREFIX = "fraud-e2e"
ENDPOINT = "fraud-e2e"
BUCKET = "fraud-e2e-bucket"  # the template's bucket in this module's local cloud
CONF = {
    "prefix": PREFIX,
    "endpoint_name": ENDPOINT,
    "auto_approve": True,
    "min_test_auc": 0.7,
    "max_abs_dppl": 0.2,
    "tuning_max_jobs": 2,
    "tuning_parallel_jobs": 2,
    # dag.test() keeps an earlier run's params in the process: the files named.
    "claims_file": Settings().claims_file,
    "customers_file": Settings().customers_file,
}
DEPLOY_CONF = {"prefix": PREFIX, "endpoint_name": ENDPOINT}


@pytest.fixture(scope="module")
def enforcing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    # A cloud of its own: none of the session cloud's stacks, roles or buckets (moto's state is
    # global to the process), which earlier tests' deploys of the template leave there.
    with moto_state_kept(start_empty=True), \
            LocalCloud(tmp_path_factory.mktemp("enforcing"), port=0, iam="enforce") as running:
        yield running


@pytest.fixture(scope="module")
def root_key(enforcing: LocalCloud) -> dict[str, str]:
    """The account root's key: what deploys the template (and the tests' own calls)."""
    return local_credentials(enforcing.state_dir)


@pytest.fixture(scope="module")
def aws(enforcing: LocalCloud, root_key: dict[str, str]) -> Callable[..., Any]:
    """aws("s3"): the tests' own clients, with the root key (its calls are not in the record of
    what the roles were allowed)."""
    return lambda service: boto3.session.Session().client(
        service, region_name=REGION, endpoint_url=enforcing.url, config=Config(retries={"max_attempts": 1}),
        **root_key)


@pytest.fixture(scope="module")
def deployed(enforcing: LocalCloud) -> tuple[Infra, AirflowUser]:
    return deploy_local(enforcing.url, Settings(bucket=BUCKET, prefix=PREFIX, endpoint_name=ENDPOINT),
                        enforcing.state_dir)


@pytest.fixture(scope="module")
def infra(deployed: tuple[Infra, AirflowUser]) -> Infra:
    return deployed[0]


@pytest.fixture(scope="module")
def airflow_user(deployed: tuple[Infra, AirflowUser]) -> AirflowUser:
    return deployed[1]


@pytest.fixture(scope="module")
def dags(enforcing: LocalCloud, infra: Infra, airflow_user: AirflowUser,
         module_monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The DAGs with the template's settings, the Airflow AWS connection assuming its Airflow role
    with the Airflow user's key."""
    module_monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT",
                              local_connection(enforcing.url, REGION, infra, airflow_user.credentials))
    for name, value in infra.environment().items():
        module_monkeypatch.setenv(name, value)
    module_monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    module_monkeypatch.setenv("FRAUD_CHECK_INTERVAL", "1")
    module_monkeypatch.setenv("FRAUD_RETRY_DELAY_SECONDS", "1")
    # Log tailing makes the provider check training jobs only every 30 s.
    module_monkeypatch.setenv("FRAUD_PRINT_JOB_LOGS", "false")
    db.initdb()
    return DagBag(dag_folder=str(DAGS_FOLDER)).dags


def states(run: Any) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.fixture(scope="module")
def finished_run(dags: dict[str, Any]) -> Any:
    run = dags["fraud_detection"].test(run_conf=CONF)
    assert run.state == "success", f"run {run.state}: {states(run)}"
    return run


@pytest.fixture(scope="module")
def module_monkeypatch() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def read_s3(aws: Callable[..., Any], uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return aws("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.fixture(scope="module")
def package(finished_run: Any, aws: Callable[..., Any]) -> dict[str, Any]:
    sagemaker = aws("sagemaker")
    [summary] = sagemaker.list_model_packages(ModelPackageGroupName=PREFIX)["ModelPackageSummaryList"]
    return sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"])


@pytest.mark.slow
def test_the_run_registers_an_approved_package_with_metrics(
    package: dict[str, Any], aws: Callable[..., Any]
) -> None:
    assert package["ModelApprovalStatus"] == "Approved"
    metrics = package["ModelMetrics"]
    evaluation = json.loads(read_s3(aws, metrics["ModelQuality"]["Statistics"]["S3Uri"]))
    figures = evaluation["binary_classification_metrics"]
    assert 0.7 <= figures["auc"]["value"] <= 1.0
    assert "baseline" in evaluation
    post = json.loads(read_s3(aws, metrics["Bias"]["PostTrainingReport"]["S3Uri"]))
    assert {"DPPL", "DI"} <= set(bias_metrics(post, "post"))
    pre = json.loads(read_s3(aws, metrics["Bias"]["PreTrainingReport"]["S3Uri"]))
    assert {"CI", "DPL"} <= set(bias_metrics(pre, "pre"))


@pytest.mark.slow
def test_the_endpoint_answers(package: dict[str, Any], aws: Callable[..., Any]) -> None:
    assert aws("sagemaker").describe_endpoint(EndpointName=ENDPOINT)["EndpointStatus"] == "InService"
    test = pd.read_csv(io.BytesIO(read_s3(aws, package["CustomerMetadataProperties"]["test_data_uri"])), header=None)
    rows = test.iloc[:3, 1:].to_csv(header=False, index=False)
    answer = aws("sagemaker-runtime").invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv", Body=rows)
    probabilities = [float(value) for value in re.split(r"[,\s]+", answer["Body"].read().decode().strip())]
    assert len(probabilities) == 3 and all(0 <= p <= 1 for p in probabilities)


@pytest.mark.slow
def test_lineage_walks_from_the_endpoint_back_to_the_raw_files(
    finished_run: Any, aws: Callable[..., Any]
) -> None:
    sagemaker = aws("sagemaker")
    endpoint_arn = sagemaker.describe_endpoint(EndpointName=ENDPOINT)["EndpointArn"]
    [endpoint] = sagemaker.list_artifacts(SourceUri=endpoint_arn)["ArtifactSummaries"]
    # Walk the associations backwards: what produced or contributed to each entity.
    seen, frontier = {endpoint["ArtifactArn"]}, [endpoint["ArtifactArn"]]
    while frontier:
        upstream = [
            association["SourceArn"]
            for arn in frontier
            for association in sagemaker.list_associations(DestinationArn=arn)["AssociationSummaries"]
            if association["AssociationType"] in ("ContributedTo", "Produced")
        ]
        frontier = [arn for arn in upstream if arn not in seen]
        seen.update(frontier)
    sources = {
        sagemaker.describe_artifact(ArtifactArn=arn)["Source"]["SourceUri"] for arn in seen if ":artifact/" in arn
    }
    settings = Settings.from_env()
    assert {settings.raw_data_uri("claims", PREFIX), settings.raw_data_uri("customers", PREFIX)} <= sources


@pytest.mark.slow
def test_pre_training_bias_equals_an_independent_computation(
    finished_run: Any, package: dict[str, Any], aws: Callable[..., Any]
) -> None:
    pre = json.loads(read_s3(aws, package["ModelMetrics"]["Bias"]["PreTrainingReport"]["S3Uri"]))
    layout = RunLayout.of(Settings.from_env(), PREFIX, short_hash(finished_run.run_id))
    train = pd.read_csv(
        io.BytesIO(read_s3(aws, layout.split_file("train"))), header=None, names=list(schema.DATASET_COLUMNS)
    )
    female = train[schema.CLARIFY_FACET] == 1
    others, women = train[~female], train[female]
    class_imbalance = (len(others) - len(women)) / len(train)
    # Clarify's positive outcome is the favourable label: 0, "not fraud".
    dpl = (others[schema.LABEL] == 0).mean() - (women[schema.LABEL] == 0).mean()
    metrics = bias_metrics(pre, "pre")
    assert metrics["CI"] == pytest.approx(class_imbalance, abs=1e-9)
    assert metrics["DPL"] == pytest.approx(dpl, abs=1e-9)


@pytest.fixture(scope="module")
def redeployed(dags: dict[str, Any], package: dict[str, Any], aws: Callable[..., Any]) -> str:
    """deploy_approved_model run after fraud_detection; the endpoint config it replaced."""
    before = aws("sagemaker").describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]
    run = dags["deploy_approved_model"].test(run_conf=DEPLOY_CONF)
    assert run.state == "success", f"run {run.state}: {states(run)}"
    return before


@pytest.mark.slow
def test_deploy_approved_model_redeploys_the_latest_approved_package(
    redeployed: str, package: dict[str, Any], aws: Callable[..., Any]
) -> None:
    sagemaker = aws("sagemaker")
    endpoint = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] != redeployed
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    [container] = package["InferenceSpecification"]["Containers"]
    assert model["PrimaryContainer"]["ModelDataUrl"] == container["ModelDataUrl"]


# -- the template's policies: what the runs use, and what they need ------------------------------
# Statements (by Sid) of infra/template.yaml that these runs do not exercise, and why. Each is a
# fact of the template (its comments say so too); a Sid here that is gone from the template, or
# whose actions the runs did use, fails the test, so the list cannot go stale.
NOT_USED_BY_THE_RUNS = {
    # What SageMaker and Athena do with the roles on AWS that the local cloud does with its own
    # credentials, or not at all.
    "ServicePublishesTrainingMetrics": "SageMaker's training metrics to CloudWatch: the local cloud keeps them "
                                       "in the job",
    "ServicePullsImagesToken": "SageMaker pulls the images from ECR: the local cloud runs the code in-process",
    "ServicePullsImages": "SageMaker pulls the images from ECR: the local cloud runs the code in-process",
    "ServiceWritesOfflineStore": "the bucket-owner ACLs of Feature Store's offline-store writes: the local cloud "
                                 "puts the files as the group's role (ReadWritePipelineFiles), without ACLs",
    "ServiceClarifyShadowEndpoint": "Clarify's shadow endpoint: the local Clarify container scores the model "
                                    "itself",
    "ServiceOfflineStoreCatalog": "Feature Store's Glue table and Athena's reads of it",
    "ServiceWritesQueryResults": "Athena's check of its results' bucket",
}
# Actions of other statements that a run uses only on a path these runs do not take, or that
# SageMaker uses on AWS and the local cloud has no need of.
ACTIONS_NOT_USED_BY_THE_RUNS = {
    ("ServiceWritesJobLogs", "logs:DescribeLogStreams"): "SageMaker finds a job's log streams: the local cloud "
                                                         "knows them",
    ("OfflineStoreQueries", "athena:StopQueryExecution"): "a query task killed while its query runs",
    ("FeatureGroups", "sagemaker:DeleteFeatureGroup"): "a feature group left CreateFailed, made again",
    ("Jobs", "sagemaker:StopHyperParameterTuningJob"): "a retry stops the job its killed try left running",
    ("Jobs", "sagemaker:StopProcessingJob"): "a retry stops the job its killed try left running",
    ("Jobs", "sagemaker:StopTrainingJob"): "a retry stops the job its killed try left running",
    ("TrainingJobLogs", "logs:DescribeLogStreams"): "training logs tailed (FRAUD_PRINT_JOB_LOGS, off here)",
    ("TrainingJobLogs", "logs:GetLogEvents"): "training logs tailed (FRAUD_PRINT_JOB_LOGS, off here)",
}


def inline_statements(aws: Callable[..., Any], arn: str) -> list[dict[str, Any]]:
    """The statements of a role's or user's inline policies, as the local cloud enforces them."""
    iam, name = aws("iam"), arn.rsplit("/", 1)[1]
    if ":user/" in arn:
        return [statement for policy in iam.list_user_policies(UserName=name)["PolicyNames"]
                for statement in iam.get_user_policy(UserName=name, PolicyName=policy)["PolicyDocument"]["Statement"]]
    return [statement for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]
            for statement in iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]["Statement"]]


def statement_findings(sid: str, statement: dict[str, Any], used: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(what a statement grants that `used`, a role's allowed actions, never used; which of its
    exclusions `used` shows needless)."""
    actions, resources = as_list(statement["Action"]), as_list(statement["Resource"])
    uses = {(action, resource) for action in actions for name, seen in used.items()
            if any_match(action, name, ignore_case=True) for resource in seen if any_match(resources, resource)}
    used_actions = {action for action, _ in uses}
    if sid in NOT_USED_BY_THE_RUNS:
        return [], [f"{sid} is used: {sorted(uses)[:3]}"] if uses else []
    excluded = {action for action in actions if (sid, action) in ACTIONS_NOT_USED_BY_THE_RUNS}
    checked = [action for action in actions if action not in excluded]
    unused = [f"{sid}: {action} on {resources}" for action in checked if action not in used_actions]
    unused += [f"{sid}: resource {pattern}" for pattern in resources if checked and not any(
        any_match(pattern, resource) for action, resource in uses if action in checked)]
    return unused, [f"{sid} {action} is used" for action in sorted(excluded & used_actions)]


@pytest.mark.slow
def test_the_runs_use_every_action_the_template_grants_and_only_through_its_roles(
    enforcing: LocalCloud, infra: Infra, airflow_user: AirflowUser, finished_run: Any, redeployed: str,
    aws: Callable[..., Any]
) -> None:
    """Each action of each statement was allowed on one of the statement's resources, and each
    of its resources was used by one of its actions: a statement the pipeline no longer needs,
    or broader than it needs, fails here, named. The Airflow user's own policy too."""
    allowed = enforcing.access.allowed_actions()
    principals = {"execution role": infra.execution_role_arn, "Airflow role": infra.airflow_role_arn,
                  "Airflow user": airflow_user.arn}
    # Nothing but the template's roles, and the user that assumes the Airflow role, signed a request.
    assert set(allowed) == set(principals.values())
    assert allowed[airflow_user.arn] == {"sts:AssumeRole": [infra.airflow_role_arn]}
    unused, stale, sids = [], [], set()
    for principal, arn in principals.items():
        for statement in inline_statements(aws, arn):
            sids.add(statement["Sid"])
            never, needless = statement_findings(statement["Sid"], statement, allowed[arn])
            unused += [f"{principal} {finding}" for finding in never]
            stale += [f"{principal} {finding}" for finding in needless]
    excluded = {*NOT_USED_BY_THE_RUNS, *(sid for sid, _ in ACTIONS_NOT_USED_BY_THE_RUNS)}
    stale += [f"{sid} is not in the template" for sid in sorted(excluded - sids)]
    assert not unused, "granted, never used by the runs:\n" + "\n".join(unused)
    assert not stale, "exclusions to drop:\n" + "\n".join(stale)


@contextmanager
def without(aws: Callable[..., Any], role_arn: str, sid: str, action: str | None = None) -> Iterator[None]:
    """The role's policy with `action` taken out of statement `sid` (the whole statement when
    None), through IAM as an administrator would; put back afterwards."""
    iam, role = aws("iam"), role_arn.rsplit("/", 1)[1]
    [name] = iam.list_role_policies(RoleName=role)["PolicyNames"]
    original = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    changed = copy.deepcopy(original)
    [statement] = [s for s in changed["Statement"] if s["Sid"] == sid]
    if action is None:
        changed["Statement"].remove(statement)
    else:
        assert action in statement["Action"], statement
        statement["Action"] = [a for a in as_list(statement["Action"]) if a != action]
    iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(changed))
    try:
        yield
    finally:
        iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(original))


def task_logs(capfd: pytest.CaptureFixture[str]) -> str:
    """What the tasks of the test's dag.test() runs logged."""
    captured = capfd.readouterr()
    return captured.out + captured.err


def assumed(role_arn: str) -> str:
    """The ARN AWS names an assumed role's sessions by, up to the session name."""
    return role_arn.replace(":iam::", ":sts::").replace(":role/", ":assumed-role/") + "/"


@pytest.mark.slow
def test_without_put_object_on_the_run_prefix_the_first_job_fails_naming_it(
    dags: dict[str, Any], infra: Infra, finished_run: Any, aws: Callable[..., Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """The execution role's s3:PutObject on the pipeline's folder taken away: data prep's
    customers job cannot upload its output, and its task fails at once saying so."""
    task = "data_prep.preprocess_customers"
    with without(aws, infra.execution_role_arn, "ReadWritePipelineFiles", "s3:PutObject"):
        run = dags["fraud_detection"].partial_subset([task], include_upstream=True).test(run_conf=CONF)
    found = states(run)
    assert run.state == "failed" and found.pop(task) == "failed", found
    assert set(found.values()) == {"success"}  # the Airflow role's own uploads still went
    job = f"{PREFIX}-prep-customers-{short_hash(run.run_id)}"
    reason = aws("sagemaker").describe_processing_job(ProcessingJobName=job)["FailureReason"]
    output = f"arn:aws:s3:::{BUCKET}/{PREFIX}/runs/{short_hash(run.run_id)}/processed/customers/"
    assert reason.startswith(f"ClientError: Uploading output to s3://{BUCKET}/") and "AccessDenied" in reason
    assert re.search(re.escape(assumed(infra.execution_role_arn)) + r"\S+ is not authorized to perform: s3:PutObject "
                     rf'on resource: "{re.escape(output)}', reason), reason
    assert reason in task_logs(capfd)  # the task's log says why it failed


@pytest.mark.slow
def test_without_create_endpoint_the_deployment_fails_at_its_task_naming_it(
    dags: dict[str, Any], infra: Infra, redeployed: str, aws: Callable[..., Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """The Airflow role's sagemaker:CreateEndpoint taken away: deploy_endpoint fails, though the
    endpoint exists (the operator creates, and updates only when told the endpoint exists)."""
    with without(aws, infra.airflow_role_arn, "Hosting", "sagemaker:CreateEndpoint"):
        run = dags["deploy_approved_model"].test(run_conf=DEPLOY_CONF)
    found = states(run)
    assert run.state == "failed" and found["deploy_endpoint"] == "failed", found
    assert found["create_endpoint_config"] == "success"
    log = task_logs(capfd)
    endpoint = f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{ENDPOINT}"
    assert re.search(r"AccessDeniedException\) when calling the CreateEndpoint operation: User: "
                     + re.escape(assumed(infra.airflow_role_arn)) + r"\S+ is not authorized to perform: "
                     + re.escape(f"sagemaker:CreateEndpoint on resource: {endpoint}"), log), log[-3000:]


@pytest.mark.slow
def test_without_pass_role_creating_the_model_fails_naming_it(
    dags: dict[str, Any], infra: Infra, redeployed: str, aws: Callable[..., Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """The Airflow role's iam:PassRole of the execution role taken away: CreateModel, which hands
    SageMaker the role, is refused, and create_model fails."""
    with without(aws, infra.airflow_role_arn, "PassExecutionRole"):
        run = dags["deploy_approved_model"].test(run_conf=DEPLOY_CONF)
    found = states(run)
    assert run.state == "failed" and found["create_model"] == "failed", found
    assert found["latest_approved"] == "success"
    log = task_logs(capfd)
    assert re.search(r"AccessDeniedException\) when calling the CreateModel operation: User: "
                     + re.escape(assumed(infra.airflow_role_arn)) + r"\S+ is not authorized to perform: "
                     + re.escape(f"iam:PassRole on resource: {infra.execution_role_arn}"), log), log[-3000:]
