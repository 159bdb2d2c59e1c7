"""fraud_detection end to end with `dag.test()` against the in-process local cloud: auto-approval
on, a small tuning budget. Checks the registered package and its metrics, the endpoint's answers,
the lineage from the endpoint back to the raw files, and Clarify's pre-training bias figures
against an independent pandas computation on the training split. Then deploy_approved_model
redeploys the package, and a run with a bad raw file stops before the feature store."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.utils import db

from include.jobs import schema
from include.localcloud.server import LocalCloud
from include.pipeline.clarify import bias_metrics
from include.pipeline.configs import RunLayout, short_hash
from include.pipeline.settings import Settings
from tests.airflow_env import DAGS_FOLDER

PREFIX = "fraud-e2e"
ENDPOINT = "fraud-e2e"
CONF = {
    "prefix": PREFIX,
    "endpoint_name": ENDPOINT,
    "auto_approve": True,
    "min_test_auc": 0.7,
    "max_abs_dppl": 0.2,
    "tuning_max_jobs": 2,
    "tuning_parallel_jobs": 2,
}


@pytest.fixture(scope="module")
def dags(cloud: LocalCloud, module_monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The DAGs, with the Airflow AWS connection pointing at the local cloud."""
    connection = {"conn_type": "aws", "extra": {"endpoint_url": cloud.url, "region_name": "us-east-1"}}
    module_monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    module_monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    module_monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    module_monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
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


@pytest.mark.slow
def test_deploy_approved_model_redeploys_the_latest_approved_package(
    dags: dict[str, Any], package: dict[str, Any], aws: Callable[..., Any]
) -> None:
    sagemaker = aws("sagemaker")
    before = sagemaker.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]
    run = dags["deploy_approved_model"].test(run_conf={"prefix": PREFIX, "endpoint_name": ENDPOINT})
    assert run.state == "success", f"run {run.state}: {states(run)}"
    endpoint = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] != before
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    [container] = package["InferenceSpecification"]["Containers"]
    assert model["PrimaryContainer"]["ModelDataUrl"] == container["ModelDataUrl"]


@pytest.mark.slow
def test_a_bad_raw_file_fails_data_prep_and_nothing_reaches_the_feature_store(
    dags: dict[str, Any], aws: Callable[..., Any], tmp_path: Path
) -> None:
    claims = pd.read_csv(Settings().claims_file, dtype=str)
    claims.loc[2, "incident_severity"] = "Tiny"
    bad_file = tmp_path / "claims.csv"
    claims.to_csv(bad_file, index=False)
    prefix = "fraud-bad-input"
    run = dags["fraud_detection"].test(run_conf={"prefix": prefix, "claims_file": str(bad_file), "tuning": False})
    found = states(run)
    assert run.state == "failed"
    assert found["data_prep.preprocess_claims"] == "failed"
    assert found["feature_store.ingest_claims"] == found["feature_store.ingest_customers"] == "upstream_failed"
    sagemaker = aws("sagemaker")
    jobs = sagemaker.list_processing_jobs(NameContains=f"{prefix}-prep-claims")["ProcessingJobSummaries"]
    assert len(jobs) == 1  # a data error fails its task at once: no retry, no second job
    for job in jobs:
        reason = sagemaker.describe_processing_job(ProcessingJobName=job["ProcessingJobName"])["FailureReason"]
        assert "claims.csv" in reason and "incident_severity" in reason and "Tiny" in reason
    for dataset in ("claims", "customers"):
        record = aws("sagemaker-featurestore-runtime").get_record(
            FeatureGroupName=f"{prefix}-{dataset}", RecordIdentifierValueAsString="1"
        )
        assert "Record" not in record


@pytest.mark.slow
def test_claims_without_customers_fail_data_prep_naming_the_policies(
    dags: dict[str, Any], aws: Callable[..., Any], tmp_path: Path
) -> None:
    """Before, both files reached the feature store and only the split failed, naming an Athena
    result file and its blank values."""
    customers = pd.read_csv(Settings().customers_file, dtype=str)
    customers = customers[~customers["policy_id"].isin(["3", "7"])]
    few_customers = tmp_path / "customers.csv"
    customers.to_csv(few_customers, index=False)
    prefix = "fraud-orphan-claims"
    run = dags["fraud_detection"].test(
        run_conf={"prefix": prefix, "claims_file": Settings().claims_file, "customers_file": str(few_customers),
                  "tuning": False}
    )
    found = states(run)
    assert run.state == "failed"
    assert (found["data_prep.preprocess_claims"], found["data_prep.preprocess_customers"]) == ("failed", "success")
    assert found["feature_store.ingest_claims"] == found["feature_store.ingest_customers"] == "upstream_failed"
    sagemaker = aws("sagemaker")
    job = sagemaker.list_processing_jobs(NameContains=f"{prefix}-prep-claims")["ProcessingJobSummaries"][0]
    reason = sagemaker.describe_processing_job(ProcessingJobName=job["ProcessingJobName"])["FailureReason"]
    assert reason == ("ClientError: claims.csv: column policy_id has 2 policies without a customer in "
                      "customers.csv: 3, 7 at rows 3, 7")
    record = aws("sagemaker-featurestore-runtime").get_record(
        FeatureGroupName=f"{prefix}-claims", RecordIdentifierValueAsString="1"
    )
    assert "Record" not in record


@pytest.mark.slow
def test_an_offline_only_run_builds_the_dataset_from_the_batch_written_offline_store(
    dags: dict[str, Any], aws: Callable[..., Any]
) -> None:
    """ingest_mode offline_only, 2 ingest instances: the ingest jobs write the offline store
    directly, the dataset step reads every policy from it, and the online store stays empty."""
    prefix = "fraud-offline-only"
    settings = Settings()
    conf = {"prefix": prefix, "ingest_mode": "offline_only", "ingest_instance_count": 2, "tuning": False,
            "claims_file": settings.claims_file, "customers_file": settings.customers_file}
    run = dags["fraud_detection"].test(run_conf=conf)
    assert run.state == "success", f"run {run.state}: {states(run)}"
    layout = RunLayout.of(Settings.from_env(), prefix, short_hash(run.run_id))
    rows = {name: len(read_s3(aws, layout.split_file(name)).splitlines()) for name in ("train", "validation", "test")}
    assert rows == {"train": 3200, "validation": 800, "test": 1000}
    sagemaker = aws("sagemaker")
    for dataset in ("claims", "customers"):
        [job] = sagemaker.list_processing_jobs(NameContains=f"{prefix}-ingest-{dataset}")["ProcessingJobSummaries"]
        described = sagemaker.describe_processing_job(ProcessingJobName=job["ProcessingJobName"])
        assert described["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 2
        summaries = [json.loads(read_s3(aws, f"{layout.ingestion(dataset)}{host}.json")) for host in ("algo-1", "algo-2")]
        assert sum(summary["Put"] for summary in summaries) == 5000
        assert all(summary["Put"] == 2500 for summary in summaries)  # data prep's 2 parts: one per host
        assert {summary["Mode"] for summary in summaries} == {"offline_only"}
        record = aws("sagemaker-featurestore-runtime").get_record(
            FeatureGroupName=f"{prefix}-{dataset}", RecordIdentifierValueAsString="1"
        )
        assert "Record" not in record
