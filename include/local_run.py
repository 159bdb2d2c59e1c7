"""`make run`: the fraud_detection DAG end to end on this machine, against the local cloud.

Starts the local cloud when it is not running (it stays up afterwards, so the endpoint can be
called), runs the DAG with `airflow dags test` (Airflow metadata in SQLite under .airflow/make-run),
shows each task as it starts and ends, then prints a short summary and writes
reports/latest/summary.json and reports/latest/report.html ($RUN_REPORT_DIR if set). Params
are overridden with CONF, e.g. `make run CONF='{"tuning_max_jobs": 4}'`. Airflow runs as a
command, never imported here."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import boto3

from include.localcloud.access.enforcer import ROOT_CREDENTIALS_FILE
from include.report import Edge, bias_metrics, build_report
from include.stack.config import AWS_SESSION_FACTORY, PROJECT_DIR, StackConfig, StackError, load_config
from include.stack.infra import local_credentials
from include.stack.supervisor import (
    LOCAL_CLOUD_REGION,
    deploy_infra,
    local_cloud_answers,
    start_local_cloud,
)

DAG_ID = "fraud_detection"
DAG_FILE = PROJECT_DIR / "dags" / "fraud_detection.py"
DAGS_BUNDLE = "dags-folder"  # Airflow's default bundle: the dags folder
# make run deploys: the run registers its package as Approved when the quality gates pass.
DEFAULT_CONF = {"auto_approve": True}
# Job status is checked four times a second (a local call; a wait ends on average half an interval
# after its job) and job logs aren't tailed (the provider then polls only every 30 s); the run's
# jobs still log to CloudWatch Logs.
PIPELINE_SETTINGS = {"FRAUD_CHECK_INTERVAL": "0.25", "FRAUD_PRINT_JOB_LOGS": "false"}
# Where the run writes its summary, report and Airflow output (tests point it elsewhere).
REPORT_DIR = Path(os.environ.get("RUN_REPORT_DIR", PROJECT_DIR / "reports" / "latest"))
POLL_SECONDS = 0.5
# The Airflow version and database revision of the last `airflow db migrate`, in the Airflow home.
MIGRATED_FILE = "migrated.json"
CLOUD_START_TIMEOUT_SECONDS = 120


class RunError(Exception):
    """Something the user must fix; the message says what."""


def airflow_home(config: StackConfig) -> Path:
    # Not the dev stack's database: its scheduler would pick up this run's tasks too.
    return config.home / "make-run"


def airflow_environment(config: StackConfig) -> dict[str, str]:
    home = airflow_home(config)
    environment = dict(os.environ)
    environment.update(PIPELINE_SETTINGS)
    environment.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")])),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_DIR / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_DIR / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            **AWS_SESSION_FACTORY,
            "AWS_REGION": LOCAL_CLOUD_REGION,
            "AWS_DEFAULT_REGION": LOCAL_CLOUD_REGION,
            "LOCALCLOUD_PORT": str(config.cloud_port),
            "LOCALCLOUD_STATE": str(config.cloud_state),
        }
    )
    return environment


def ensure_local_cloud(config: StackConfig) -> None:
    """Use the local cloud on LOCALCLOUD_PORT, or start one that outlives this run (make down stops it)."""
    if local_cloud_answers(config):
        print(f"Local cloud: already running on {config.cloud_url}.", flush=True)
        return
    for folder in (config.run_dir, config.log_dir, config.cloud_state):
        folder.mkdir(parents=True, exist_ok=True)
    environment = airflow_environment(config)
    process = start_local_cloud(config, environment)
    deadline = time.monotonic() + CLOUD_START_TIMEOUT_SECONDS
    while not local_cloud_answers(config):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RunError(
                f"The local cloud did not start on {config.cloud_url}: see {config.log_dir / 'localcloud.log'}."
            )
        time.sleep(0.3)
    print(f"Local cloud: started on {config.cloud_url} (state in {config.cloud_state}; make down stops it).",
          flush=True)


# -- the metadata database, read while the run goes ------------------------------------------------
def _query(database: Path, sql: str, *args: Any) -> list[tuple]:
    """Read-only; Airflow writes the same file, so a busy database is read again next poll."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=2) as connection:
            return connection.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 2)


def latest_run_id(database: Path) -> tuple[int, str] | None:
    rows = _query(database, "SELECT id, run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", DAG_ID)
    return rows[0] if rows else None


def _task_rows(database: Path, run_id: str) -> list[tuple]:
    return _query(
        database,
        "SELECT task_id, state, start_date, end_date FROM task_instance WHERE dag_id = ? AND run_id = ?",
        DAG_ID, run_id,
    )


def task_states(database: Path, run_id: str) -> dict[str, tuple[str | None, float | None]]:
    return {task_id: (state, _seconds(start, end)) for task_id, state, start, end in _task_rows(database, run_id)}


def task_intervals(database: Path, run_id: str) -> dict[str, tuple[float, float]]:
    """(start, end) of each task that ran to an end, as epoch seconds (Airflow stores UTC)."""
    def epoch(text: str) -> float:
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

    return {task_id: (epoch(start), epoch(end)) for task_id, _, start, end in _task_rows(database, run_id)
            if start and end}


def xcom(database: Path, run_id: str, task_id: str) -> Any:
    rows = _query(
        database,
        "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = 'return_value'",
        DAG_ID, run_id, task_id,
    )
    if not rows or rows[0][0] is None:
        return None
    value = rows[0][0]
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def run_dag(config: StackConfig, conf: dict[str, Any], show_tasks: bool = True,
            deferred: set[str] | None = None) -> tuple[str, str, dict[str, float]]:
    """Run the DAG with the bucket and roles of infra/template.yaml (deployed into the local cloud
    when it is not, or differs), printing task starts, deferrals and ends; (run_id, state, task
    seconds). The tasks that deferred are added to `deferred` when given."""
    deferred = set() if deferred is None else deferred
    environment = airflow_environment(config)
    try:
        deploy_infra(config, environment)
    except StackError as error:
        raise RunError(str(error)) from error
    home = airflow_home(config)
    home.mkdir(parents=True, exist_ok=True)
    database = home / "airflow.db"
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    log_path = REPORT_DIR / "airflow.log"
    with log_path.open("wb") as log:
        migrate_database(environment, home, log, log_path)
        before = latest_run_id(database)
        print(f"Running {DAG_ID} with conf {json.dumps(conf)} (Airflow output: {log_path})", flush=True)
        # The DAG's own file and bundle: the CLI then parses only that file, and leaves writing the
        # bundle's DAGs to the database to `dag.test`, which does it anyway.
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, "--conf", json.dumps(conf),
             "--bundle-name", DAGS_BUNDLE, "--dagfile-path", str(DAG_FILE)],
            env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_DIR,
        )
        run_id, shown = None, {}
        while True:
            try:
                process.wait(timeout=POLL_SECONDS)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            latest = latest_run_id(database)
            if latest and latest != before:
                run_id = latest[1]
                for task_id, (state, seconds) in sorted(task_states(database, run_id).items()):
                    # airflow dags test runs a deferred task's trigger inline, the task queued meanwhile.
                    if shown.get(task_id) == "running" and state in ("deferred", "queued", "scheduled"):
                        state = "deferred"
                        deferred.add(task_id)
                    if shown.get(task_id) != state and state in ("running", "deferred", "success", "failed",
                                                                 "skipped", "upstream_failed", "up_for_retry"):
                        shown[task_id] = state
                        if not show_tasks:
                            continue
                        timing = f" {seconds:6.1f} s" if seconds is not None and state not in ("running",
                                                                                               "deferred") else ""
                        print(f"  {_mark(state)} {task_id:<48} {state}{timing}", flush=True)
            if finished:
                break
    if run_id is None:
        raise RunError(f"The DAG run did not start: see the end of {log_path}:\n{_tail(log_path)}")
    [(state,)] = _query(database, "SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)
    seconds = {task: s for task, (_, s) in task_states(database, run_id).items() if s is not None}
    if show_tasks and deferred:
        print(f"  Deferred (waited for by their triggers): {', '.join(sorted(deferred))}", flush=True)
    return run_id, state, seconds


def database_revision(database: Path) -> str | None:
    rows = _query(database, "SELECT version_num FROM alembic_version")
    return rows[0][0] if rows else None


def migrate_database(environment: dict[str, str], home: Path, log: IO[bytes], log_path: Path) -> None:
    """`airflow db migrate`, unless this Airflow version migrated the database last and it is still
    at the revision that left: a process that finds nothing to do costs seconds on 2 cores."""
    database, record = home / "airflow.db", home / MIGRATED_FILE
    version = importlib.metadata.version("apache-airflow")
    revision = database_revision(database)
    if revision and record.is_file() and json.loads(record.read_text()) == {"airflow": version, "revision": revision}:
        return
    migrated = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=environment,
                              stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_DIR)
    if migrated.returncode != 0:
        raise RunError(f"airflow db migrate failed: see {log_path}")
    record.write_text(json.dumps({"airflow": version, "revision": database_revision(database)}))


TASK_STARTS = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")  # a log record, not a traceback line
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: (.+)")  # "module.Error: message" ending a traceback
# The provider's words around a SageMaker job's FailureReason, and SageMaker's mark of bad input.
REASON_WRAPPERS = re.compile(r"^(SageMaker (?:job|resource) failed because |Error training \S+: Failed Reason: )?(ClientError: )?")


def failure_reasons(log_path: Path) -> dict[str, str]:
    """The one-line reason of each task's last failure in `airflow dags test`'s output: the
    message of the exception it failed with (a job's FailureReason without the provider's words)."""
    reasons: dict[str, str] = {}
    task, traceback = None, None
    with log_path.open(errors="replace") as log:
        for line in log:
            if LOG_LINE.match(line):
                if task and traceback:
                    messages = [match.group(1) for text in traceback if (match := EXCEPTION_LINE.match(text))]
                    if messages:
                        reasons[task] = REASON_WRAPPERS.sub("", messages[-1].strip(), count=1)
                traceback = [] if "Task failed with exception" in line else None
                if started := TASK_STARTS.search(line):
                    task = started.group(1)
            elif traceback is not None:
                traceback.append(line)
    return reasons


def print_failures(log_path: Path, states: dict[str, tuple[str | None, float | None]]) -> None:
    """Each failed task and why, last, so that the reason need not be dug out of the log."""
    reasons = failure_reasons(log_path)
    for task_id in sorted(task for task, (state, _) in states.items() if state == "failed"):
        print(f"  {task_id}: {reasons.get(task_id, 'see the log')}", file=sys.stderr)


def _mark(state: str) -> str:
    return {"running": ">", "deferred": "~", "success": "+", "skipped": "-"}.get(state, "!")


def _tail(path: Path, lines: int = 30) -> str:
    with path.open(errors="replace") as handle:
        return "".join(deque(handle, maxlen=lines))


# -- results, read back from the cloud the run used --------------------------------------------------
def aws_client(config: StackConfig, service: str) -> Any:
    return boto3.session.Session().client(
        service, region_name=LOCAL_CLOUD_REGION, endpoint_url=config.cloud_url, **local_credentials(config.cloud_state)
    )


def read_s3_json(s3: Any, uri: str) -> dict[str, Any]:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def lineage_edges(sagemaker: Any, endpoint_arn: str, run_context_arn: str) -> list[Edge]:
    """The associations upstream of the endpoint's lineage artifact, walked back to the raw data
    through this run's actions only (the endpoint and the feature groups outlive runs)."""
    run_actions = {
        association["SourceArn"]
        for page in sagemaker.get_paginator("list_associations").paginate(DestinationArn=run_context_arn)
        for association in page["AssociationSummaries"]
    }
    artifacts = sagemaker.list_artifacts(SourceUri=endpoint_arn)["ArtifactSummaries"]
    pending, seen, edges = [a["ArtifactArn"] for a in artifacts], set(), []
    while pending:
        arn = pending.pop()
        if arn in seen:
            continue
        seen.add(arn)
        for page in sagemaker.get_paginator("list_associations").paginate(DestinationArn=arn):
            for association in page["AssociationSummaries"]:
                source = association["SourceArn"]
                if ":action/" in source and source not in run_actions:
                    continue
                edges.append({key: association.get(key, "") for key in (
                    "SourceArn", "SourceName", "SourceType", "AssociationType",
                    "DestinationArn", "DestinationName", "DestinationType")})
                pending.append(source)
    return edges


def collect_results(config: StackConfig, run_id: str, state: str, seconds: dict[str, float]) -> tuple[dict, dict]:
    """(summary, evaluation) of a finished run."""
    database = airflow_home(config) / "airflow.db"
    sagemaker, s3 = aws_client(config, "sagemaker"), aws_client(config, "s3")
    summary: dict[str, Any] = {"dag_id": DAG_ID, "run_id": run_id, "state": state, "task_seconds": seconds}
    package_arn = xcom(database, run_id, "registry.register")
    evaluation: dict[str, Any] = {}
    if package_arn:
        package = sagemaker.describe_model_package(ModelPackageName=package_arn)
        metrics = package["ModelMetrics"]
        evaluation = read_s3_json(s3, metrics["ModelQuality"]["Statistics"]["S3Uri"])
        pre = read_s3_json(s3, metrics["Bias"]["PreTrainingReport"]["S3Uri"])
        post = read_s3_json(s3, metrics["Bias"]["PostTrainingReport"]["S3Uri"])
        selected = xcom(database, run_id, "train.select_model") or {}
        summary.update(
            {
                "baseline_test_auc": evaluation["baseline"]["binary_classification_metrics"]["auc"]["value"],
                "test_auc": evaluation["binary_classification_metrics"]["auc"]["value"],
                "test_pr_auc": evaluation["binary_classification_metrics"]["pr_auc"]["value"],
                "best_hyperparameters": {
                    k: v for k, v in selected.get("HyperParameters", {}).items() if not k.startswith("_")
                },
                "tuned": selected.get("Tuned"),
                "pre_training_bias": bias_metrics(pre, "pre_training_bias_metrics"),
                "post_training_bias": bias_metrics(post, "post_training_bias_metrics"),
                "model_package_arn": package_arn,
                "model_approval_status": package["ModelApprovalStatus"],
                "test_data_uri": package["CustomerMetadataProperties"]["test_data_uri"],
            }
        )
    split = xcom(database, run_id, "dataset.split")
    if split:
        # Rows and positives of each split; synthetic_rows: the training rows balance_facet added.
        [stats] = [output["S3Output"]["S3Uri"] for output in split["Processing"]["ProcessingOutputConfig"]["Outputs"]
                   if output["OutputName"] == "stats"]
        summary["dataset_rows"] = read_s3_json(s3, f"{stats.rstrip('/')}/stats.json")
    endpoint = (xcom(database, run_id, "deploy.deploy_endpoint") or {}).get("Endpoint")
    summary["endpoint_name"] = endpoint["EndpointName"] if endpoint else None
    summary["smoke_prediction"] = xcom(database, run_id, "deploy.smoke_test")
    deploy_lineage = xcom(database, run_id, "deploy.lineage_deploy")
    summary["lineage_edges"] = (
        lineage_edges(sagemaker, endpoint["EndpointArn"], deploy_lineage["ContextArn"])
        if endpoint and deploy_lineage else []
    )
    return summary, evaluation


def print_summary(summary: dict[str, Any]) -> None:
    total = sum(summary["task_seconds"].values())
    print(f"\n{summary['dag_id']} {summary['run_id']}: {summary['state']} ({total:.0f} s of task time)")
    for key in ("dataset_rows", "baseline_test_auc", "test_auc", "test_pr_auc", "best_hyperparameters", "pre_training_bias",
                "post_training_bias", "model_package_arn", "model_approval_status", "endpoint_name",
                "smoke_prediction"):
        if key in summary:
            value = summary[key]
            print(f"  {key:<22} {value:.4f}" if isinstance(value, float) else f"  {key:<22} {value}")
    print(f"  {'lineage_edges':<22} {len(summary['lineage_edges'])} associations")


def main(argv: list[str]) -> int:
    try:
        conf = {**DEFAULT_CONF, **json.loads(argv[0] if argv and argv[0].strip() else "{}")}
    except json.JSONDecodeError as error:
        print(f"CONF is not a JSON object: {error}", file=sys.stderr)
        return 2
    config = load_config()
    try:
        ensure_local_cloud(config)
        started = time.monotonic()
        deferred: set[str] = set()
        run_id, state, seconds = run_dag(config, conf, deferred=deferred)
        wall = round(time.monotonic() - started, 1)
        summary, evaluation = collect_results(config, run_id, state, seconds)
        summary["deferred_tasks"] = sorted(deferred)
    except RunError as error:
        print(error, file=sys.stderr)
        return 1
    summary["wall_seconds"] = wall
    (REPORT_DIR / "summary.json").write_text(json.dumps(summary, indent=2))
    if evaluation:
        report = build_report(summary, evaluation, summary["pre_training_bias"], summary["post_training_bias"],
                              summary["lineage_edges"])
        (REPORT_DIR / "report.html").write_text(report)
    print_summary(summary)
    print(f"\nWall time {wall} s. Written: {REPORT_DIR / 'summary.json'}"
          + (f", {REPORT_DIR / 'report.html'}" if evaluation else ""))
    if summary.get("endpoint_name"):
        print(f"The local cloud stays up on {config.cloud_url}: call the endpoint with the account root's key "
              f"(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) from {config.cloud_state / ROOT_CREDENTIALS_FILE}\n"
              f"  aws --endpoint-url {config.cloud_url} sagemaker-runtime invoke-endpoint --endpoint-name "
              f"{summary['endpoint_name']} --content-type text/csv --body fileb://<row.csv> /dev/stdout")
    if state != "success":
        print(f"The run ended {state} (Airflow output: {REPORT_DIR / 'airflow.log'}). Failed tasks:", file=sys.stderr)
        print_failures(REPORT_DIR / "airflow.log", task_states(airflow_home(config) / "airflow.db", run_id))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
