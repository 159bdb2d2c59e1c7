"""`make run` (include/local_run.py) against the process stack's local cloud: the DAG runs to
success with `airflow dags test`, and the summary and report hold what the README promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack.conftest import ENDPOINT, PREFIX, REPO, ProcessStack

pytestmark = pytest.mark.stack  # make test-stack

CONF = {"prefix": PREFIX, "endpoint_name": ENDPOINT, "tuning": False, "balance_facet": True, "min_test_auc": 0.7}
SUMMARY_KEYS = {
    "dag_id", "run_id", "state", "task_seconds", "dataset_rows", "baseline_test_auc", "test_auc", "test_pr_auc",
    "best_hyperparameters", "pre_training_bias", "post_training_bias", "model_package_arn", "model_approval_status",
    "endpoint_name", "smoke_prediction", "lineage_edges", "deferred_tasks",
}


@pytest.mark.slow
def test_make_run_runs_the_dag_and_writes_the_summary_and_report(stack: ProcessStack, tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "include.local_run", json.dumps(CONF)], cwd=REPO,
        # Deferrable: the DAG's jobs and endpoint waited for by triggers, which dags test runs inline.
        env={**stack.env, "RUN_REPORT_DIR": str(tmp_path), "FRAUD_DEFERRABLE": "true"},
        capture_output=True, text=True, timeout=900,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert f"Local cloud: already running on {stack.cloud_url}." in finished.stdout
    assert "+ deploy.smoke_test" in finished.stdout  # each task shown as it ends

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    # Which waits defer depends on whether their job is still running at the operator's first check,
    # and make run sees a deferral only between two of its polls: some did, and only waiting tasks.
    # tests/stack/test_end_to_end.py checks named tasks through their logs.
    waits = ("preprocess_claims", "preprocess_customers", "ingest_claims", "ingest_customers", "split",
             "clarify_job", "train_baseline", "tune", "evaluate", "deploy_endpoint")
    assert summary["deferred_tasks"] and all(task.endswith(waits) for task in summary["deferred_tasks"])
    assert all(f"~ {task}" in finished.stdout for task in summary["deferred_tasks"])
    assert (summary["dag_id"], summary["state"], summary["model_approval_status"]) == (
        "fraud_detection", "success", "Approved")
    assert summary["test_auc"] == summary["baseline_test_auc"] >= CONF["min_test_auc"]  # tuning off
    assert summary["dataset_rows"]["train"]["synthetic_rows"] > 0  # the facet balanced
    assert (summary["pre_training_bias"]["CI"], summary["pre_training_bias"]["DPL"]) == (0, 0)
    assert {"DPPL", "DI"} <= set(summary["post_training_bias"])
    assert summary["endpoint_name"] == CONF["endpoint_name"] and len(summary["smoke_prediction"]) == 5
    assert len(summary["lineage_edges"]) > 10
    report = (tmp_path / "report.html").read_text()
    assert report.count("<img") >= 5  # curves, confusion matrix, importance, bias, lineage


@pytest.mark.slow
def test_a_failed_make_run_ends_with_each_failed_task_and_its_reason(stack: ProcessStack, tmp_path: Path) -> None:
    # A raw file the data prep refuses: the job's input check fails its task at once (no retry).
    rows = (REPO / "data" / "customers.csv").read_text().splitlines()
    fields = rows[7].split(",")
    fields[5] = "TX"  # policy_state of data row 7
    rows[7] = ",".join(fields)
    bad_customers = tmp_path / "customers.csv"
    bad_customers.write_text("\n".join(rows) + "\n")
    conf = {"prefix": PREFIX, "customers_file": str(bad_customers), "tuning": False}
    finished = subprocess.run(
        [sys.executable, "-m", "include.local_run", json.dumps(conf)], cwd=REPO,
        env={**stack.env, "RUN_REPORT_DIR": str(tmp_path / "report")}, capture_output=True, text=True, timeout=900,
    )
    assert finished.returncode == 1, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "data_prep.preprocess_customers                   failed" in finished.stdout
    assert "up_for_retry" not in finished.stdout
    assert finished.stderr.strip().splitlines()[-1].startswith(
        "  data_prep.preprocess_customers: customers.csv: column policy_state has unknown values 'TX' at row 7 ")
