"""The process stack end to end: fraud_detection triggered through Airflow's REST API with
non-default params runs to success on the local cloud, and the endpoint it deploys answers."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sklearn.metrics import roc_auc_score

from include.jobs import schema
from include.pipeline.clarify import bias_metrics
from include.pipeline.configs import RunLayout, short_hash
from include.pipeline.settings import Settings
from tests.stack.conftest import (
    DAG_ID,
    ENDPOINT,
    PREFIX,
    ProcessStack,
    failed_task_logs,
    task_instances,
    task_log,
    task_states,
    wait_for_dag,
    wait_for_run,
)

pytestmark = pytest.mark.stack  # make test-stack

# Non-default params: the facet balanced (bias mitigation), no tuning, approval decided by the
# gates, which a working model passes.
PARAMS = {
    "prefix": PREFIX,
    "endpoint_name": ENDPOINT,
    "balance_facet": True,
    "tuning": False,
    "auto_approve": True,
    "min_test_auc": 0.7,
    "max_abs_dppl": 0.2,
}


@pytest.mark.slow
def test_rest_api_refuses_invalid_params_naming_them(stack: ProcessStack) -> None:
    with stack.api() as api:
        wait_for_dag(api, DAG_ID)
        runs_before = api.get(f"/dags/{DAG_ID}/dagRuns").json()["total_entries"]
        for conf, named in (
            ({"prefix": "Not_A_Prefix"}, "prefix"),
            ({"tuning_max_jobs": 0}, "tuning_max_jobs"),
            ({"approval_status": "Maybe"}, "approval_status"),
            ({"auto_approve": "yes"}, "auto_approve"),
        ):
            refused = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
            assert refused.status_code == 400, refused.text
            assert f"Invalid input for param {named}:" in refused.json()["detail"]
        assert api.get(f"/dags/{DAG_ID}/dagRuns").json()["total_entries"] == runs_before


@pytest.mark.slow
def test_triggered_run_deploys_an_endpoint_that_answers(stack: ProcessStack) -> None:
    with stack.api() as api:
        wait_for_dag(api, DAG_ID)
        triggered = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": PARAMS})
        assert triggered.status_code == 200, triggered.text
        run_id = triggered.json()["dag_run_id"]
        state = wait_for_run(api, run_id)
        assert state == "success", failed_task_logs(api, run_id)
        states = task_states(api, run_id)
        assert api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["conf"] == PARAMS
    # Tuning off: the tuning job was skipped and the baseline went forward; auto-approve: deployed.
    assert states["train.tune"] == "skipped" and states["train.train_baseline"] == "success"
    assert states["deploy.deploy_endpoint"] == states["deploy.smoke_test"] == "success"
    # make up runs deferrable: the jobs and the endpoint were waited for by the triggerer, in the
    # try that succeeded (a task may have retried on a busy machine: that is what retries are for).
    with stack.api() as api:
        instances = task_instances(api, run_id)
        for task_id in ("data_prep.preprocess_claims", "dataset.split", "deploy.deploy_endpoint"):
            tries = instances[task_id]["try_number"]
            retried = "" if tries == 1 else f"; try 1 of {tries}:\n" + task_log(api, run_id, task_id, 1)[-3000:]
            assert "Pausing task as DEFERRED" in task_log(api, run_id, task_id, tries), task_id + retried
    sagemaker = stack.client("sagemaker")
    assert not sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]
    # The stack's runs share the template's prefix: this run's package is the one naming its run.
    packages = [sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"]) for summary in
                sagemaker.list_model_packages(ModelPackageGroupName=PARAMS["prefix"])["ModelPackageSummaryList"]]
    packages = [package for package in packages if package["CustomerMetadataProperties"].get("run_id") == run_id]
    assert [package["ModelApprovalStatus"] for package in packages] == ["Approved"]
    assert sagemaker.describe_endpoint(EndpointName=PARAMS["endpoint_name"])["EndpointStatus"] == "InService"

    s3 = stack.client("s3")
    layout = RunLayout.of(Settings.from_env(stack.env), PARAMS["prefix"], short_hash(run_id))

    def split(name: str) -> list[list[str]]:
        bucket, key = layout.split_file(name).removeprefix("s3://").split("/", 1)
        return list(csv.reader(io.StringIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())))

    # The facet balanced: as many women as others within each label of the training set, so
    # Clarify measured no class imbalance and no difference in label proportions before training.
    facet = schema.DATASET_COLUMNS.index(schema.CLARIFY_FACET)
    counts: dict[tuple[str, str], int] = {}
    for row in split("train"):
        counts[(row[0], row[facet])] = counts.get((row[0], row[facet]), 0) + 1
    assert counts[("0", "0")] == counts[("0", "1")] and counts[("1", "0")] == counts[("1", "1")]
    [package] = packages
    bucket_and_key = package["ModelMetrics"]["Bias"]["PreTrainingReport"]["S3Uri"].removeprefix("s3://")
    report = s3.get_object(Bucket=bucket_and_key.split("/", 1)[0], Key=bucket_and_key.split("/", 1)[1])
    pre_training = bias_metrics(json.loads(report["Body"].read()), "pre")
    assert (pre_training["CI"], pre_training["DPL"]) == (0, 0)

    # The endpoint scores the run's test set (label first, then the features) like the model did.
    rows = split("test")
    labels = [int(float(row[0])) for row in rows]
    body = "\n".join(",".join(row[1:]) for row in rows)
    answer = stack.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=PARAMS["endpoint_name"], ContentType="text/csv", Body=body.encode()
    )
    text = answer["Body"].read().decode()
    probabilities = [float(value) for value in text.replace(",", "\n").split()]
    assert len(probabilities) == len(rows)
    assert all(0 <= probability <= 1 for probability in probabilities)
    assert roc_auc_score(labels, probabilities) >= PARAMS["min_test_auc"]
