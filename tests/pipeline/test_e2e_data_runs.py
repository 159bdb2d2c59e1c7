"""fraud_detection runs of other data, with `dag.test()` against the in-process local cloud
(IAM not enforced: each run has a prefix of its own, and the template's roles allow one): a bad
raw file, and claims without customers, stop the run at data prep before the feature store; an
offline_only run builds the dataset from the batch-written offline store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.utils import db

from include.localcloud.server import LocalCloud
from include.pipeline.configs import RunLayout, short_hash
from include.pipeline.settings import Settings
from tests.airflow_env import DAGS_FOLDER
from tests.pipeline.test_e2e import read_s3, states


@pytest.fixture(scope="module")
def module_monkeypatch() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


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
    module_monkeypatch.setenv("FRAUD_PRINT_JOB_LOGS", "false")
    db.initdb()
    return DagBag(dag_folder=str(DAGS_FOLDER)).dags


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
