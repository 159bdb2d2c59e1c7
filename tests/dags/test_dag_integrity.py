"""The DAG files import cleanly, make no AWS call while parsed, and refuse bad params at trigger
time the way the Airflow API server does (the serialized DAG's params validation)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import AssetOrTimeSchedule
from airflow.sdk.definitions.param import ParamValidationError
from airflow.serialization.serialized_objects import DagSerialization
from botocore.client import BaseClient

from tests.airflow_env import DAGS_FOLDER, REPO

DAG_IDS = ("fraud_detection", "deploy_approved_model")


def parse() -> DagBag:
    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="module")
def dagbag(module_monkeypatch: pytest.MonkeyPatch) -> DagBag:
    def no_aws_at_parse_time(self: BaseClient, operation: str, params: dict[str, Any]) -> None:
        raise AssertionError(f"AWS call {operation} while parsing the DAGs")

    module_monkeypatch.setattr(BaseClient, "_make_api_call", no_aws_at_parse_time)
    module_monkeypatch.delenv("FRAUD_DETECTION_SCHEDULE", raising=False)
    return parse()


@pytest.fixture(scope="module")
def module_monkeypatch() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def scheduler_dags(dagbag: DagBag) -> dict[str, Any]:
    """The DAGs as the API server sees them: serialized and deserialized."""
    return {
        dag_id: DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dagbag.dags[dag_id]))
        for dag_id in DAG_IDS
    }


def trigger(scheduler_dag: Any, conf: dict[str, Any]) -> dict[str, Any]:
    """Validate a run's conf as the API server does when a run is triggered."""
    return scheduler_dag.params.deep_merge(conf).validate()


def test_dags_import_without_errors_or_aws_calls(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(DAG_IDS) <= set(dagbag.dag_ids)


def test_parsing_does_not_import_the_sagemaker_sdk() -> None:
    """Every task process parses its DAG file: the SDK (over a second to import) is for task time."""
    code = (
        "import sys; from tests import airflow_env; airflow_env.configure();"
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(DAGS_FOLDER)!r}); assert not bag.import_errors, bag.import_errors;"
        "assert set(bag.dag_ids) >= set(sys.argv[1:]), bag.dag_ids;"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'sagemaker'))"
    )
    done = subprocess.run([sys.executable, "-c", code, *DAG_IDS], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_tags_retries_and_unique_names(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert "fraud-detection" in dag.tags
    assert dag.max_active_runs == 1
    for task in dag.tasks:
        assert task.retries >= 1, f"{task.task_id} has no retries"


def test_fraud_detection_steps_are_grouped_by_workflow(dagbag: DagBag) -> None:
    groups = {task.task_id.split(".")[0] for task in dagbag.dags["fraud_detection"].tasks if "." in task.task_id}
    assert groups == {
        "data_prep", "feature_store", "dataset", "bias_before_training", "train", "evaluate", "model",
        "bias_after_training", "registry", "deploy",
    }


def test_ingestion_waits_for_both_data_prep_jobs(dagbag: DagBag) -> None:
    dag = dagbag.dags["fraud_detection"]
    for dataset in ("claims", "customers"):
        upstream = dag.get_task(f"feature_store.ingest_{dataset}").upstream_task_ids
        assert {"data_prep.preprocess_claims", "data_prep.preprocess_customers"} <= upstream


def test_default_params_are_valid(scheduler_dags: dict[str, Any]) -> None:
    params = trigger(scheduler_dags["fraud_detection"], {})
    assert params["approval_status"] == "PendingManualApproval"
    assert params["tuning"] is True and params["tuning_max_jobs"] == 8 and params["tuning_parallel_jobs"] == 2
    assert trigger(scheduler_dags["deploy_approved_model"], {})["prefix"] == params["prefix"]


def test_every_param_is_described_for_the_trigger_form(dagbag: DagBag) -> None:
    for dag_id in DAG_IDS:
        for name, param in dagbag.dags[dag_id].params.items():
            assert param.schema.get("title"), f"{dag_id}.{name} has no title"
            assert param.description, f"{dag_id}.{name} has no description"
            assert param.schema.get("type"), f"{dag_id}.{name} has no type"


@pytest.mark.parametrize(
    "conf",
    [
        {"prefix": "Fraud_Detection"},
        {"prefix": "a-prefix-far-too-long-for-names"},
        {"test_fraction": 0.9},
        {"split_seed": -1},
        {"tuning_max_jobs": 0},
        {"tuning_parallel_jobs": "two"},
        {"eta_min": 0},
        {"max_depth_max": 50},
        {"approval_status": "Maybe"},
        {"auto_approve": "yes"},
        {"processing_instance_type": "ml.m99.huge"},
        {"endpoint_name": "-endpoint"},
        {"threshold": 1.0},
        {"min_test_auc": 1.5},
    ],
)
def test_bad_params_are_refused_at_trigger_time(scheduler_dags: dict[str, Any], conf: dict[str, Any]) -> None:
    with pytest.raises(ParamValidationError, match=next(iter(conf))):
        trigger(scheduler_dags["fraud_detection"], conf)


def test_deploy_dag_refuses_bad_params(scheduler_dags: dict[str, Any]) -> None:
    with pytest.raises(ParamValidationError, match="endpoint_instance_count"):
        trigger(scheduler_dags["deploy_approved_model"], {"endpoint_instance_count": 0})


def test_schedule_from_environment_and_raw_data_assets(monkeypatch: pytest.MonkeyPatch, dagbag: DagBag) -> None:
    uris = {asset.uri for asset in dagbag.dags["fraud_detection"].timetable.asset_condition.objects}
    assert uris == {
        "s3://sagemaker-fraud-detection/fraud-detection/raw/claims.csv",
        "s3://sagemaker-fraud-detection/fraud-detection/raw/customers.csv",
    }
    monkeypatch.setenv("FRAUD_DETECTION_SCHEDULE", "0 3 * * *")
    timetable = parse().dags["fraud_detection"].timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert timetable.timetable.expression == "0 3 * * *"
