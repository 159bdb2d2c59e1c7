"""Faults survived, on a process stack (`make up`) that waits for jobs in the worker: with
FRAUD_DEFERRABLE on, a task waiting for its job is deferred and has no process to kill. During one
run, the process of a task waiting for its job is SIGKILLed; later the local cloud is SIGKILLed
while another job runs, and started again. Each time the task's retry runs a new job under a new
name: the retry stops the job the killed task left running, and the job of the killed cloud ends
Failed as interrupted. The run completes, and the registry and the lineage hold nothing twice."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from include import datagen
from include.local_run import PIPELINE_SETTINGS
from include.localcloud.sagemaker.jobs import LOCAL_CLOUD_STOPPED
from include.stack.config import StackConfig, load_config
from include.stack.supervisor import local_cloud_answers, pid_file, start_local_cloud
from tests.stack.conftest import (
    DAG_ID,
    PREFIX,
    ProcessStack,
    failed_task_logs,
    task_log,
    wait_for_dag,
    wait_for_run,
)

pytestmark = pytest.mark.stack  # make test-stack

# The task whose process is killed while it waits for its job, and that job.
KILLED_TASK, KILLED_TASK_JOB = "dataset.split", re.compile(r"-split-")
# The job the local cloud is killed during: the evaluation, whose inputs (the test set, the
# model) were written more than a snapshot interval (2 s) before it starts, so the restarted cloud
# has them. It lasts about 2 s on a quiet machine at 50,000 policies (generated; ingested
# offline_only to keep the run short), so it is caught after MIN_AGE_SECONDS in progress.
CLOUD_KILLED_JOBS = re.compile(r"-eval-")
MIN_AGE_SECONDS = 0.5
POLICIES = 50_000
# make run's job checks (every second, no log tailing), waits in the worker, retries 5 s apart.
STACK_SETTINGS = {**PIPELINE_SETTINGS, "FRAUD_DEFERRABLE": "false", "FRAUD_RETRY_DELAY_SECONDS": "5"}
T = TypeVar("T")


def poll(what: str, found: Callable[[], T | None], timeout: float = 900, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while (result := found()) is None:
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(every)
    return result


def running_job(sagemaker: Any, names: re.Pattern[str], min_age: float) -> str | None:
    """A processing job whose name matches, in progress for min_age seconds, or None."""
    for job in sagemaker.list_processing_jobs(StatusEquals="InProgress")["ProcessingJobSummaries"]:
        if names.search(job["ProcessingJobName"]) and time.time() - job["CreationTime"].timestamp() >= min_age:
            return job["ProcessingJobName"]
    return None


def service_process(config: StackConfig, name: str) -> psutil.Process:
    return psutil.Process(json.loads(pid_file(config, name).read_text())["pid"])


def task_instance(api: httpx.Client, run_id: str, task_id: str) -> dict[str, Any]:
    return api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}").json()


def task_process(config: StackConfig, api: httpx.Client, run_id: str, task_id: str) -> psutil.Process | None:
    """The process running the task's current try: the task runner that a LocalExecutor worker (its
    supervisor) of the scheduler started, titled with the task instance's id."""
    title = f"airflow worker -- {task_instance(api, run_id, task_id)['id']}"
    for process in service_process(config, "scheduler").children(recursive=True):
        try:
            if " ".join(process.cmdline()).strip() == title:
                return process
        except psutil.NoSuchProcess:
            pass
    return None


def try_ended(api: httpx.Client, run_id: str, task_id: str) -> str | None:
    """The task's state once its first try is no longer running, else None."""
    instance = task_instance(api, run_id, task_id)
    return instance["state"] if instance["state"] != "running" or instance["try_number"] > 1 else None


def assert_retried_under_a_new_name(sagemaker: Any, killed: str) -> dict[str, Any]:
    """The one job the retry ran instead of the killed one, Completed, under a new name."""
    retried = [job for job in sagemaker.list_processing_jobs(NameContains=killed)["ProcessingJobSummaries"]
               if job["ProcessingJobName"] != killed]
    assert [job["ProcessingJobStatus"] for job in retried] == ["Completed"]
    assert re.fullmatch(rf"{killed}-\d+", retried[0]["ProcessingJobName"])
    return retried[0]


@pytest.mark.slow
def test_a_run_survives_its_task_process_and_the_local_cloud_killed_during_jobs(tmp_path: Path) -> None:
    raw = datagen.write(datagen.Model(datagen.read_seed()), POLICIES, 0, tmp_path / "data")
    conf = {"prefix": PREFIX, "tuning": False, "deploy": False, "ingest_mode": "offline_only",
            "claims_file": str(raw["claims"]), "customers_file": str(raw["customers"])}
    stack = ProcessStack.in_folder(tmp_path)
    stack.env.update(STACK_SETTINGS)
    config = load_config(stack.env)
    restarted_cloud = None
    try:
        started = stack.run("up")
        assert started.returncode == 0, f"{started.stdout}\n{started.stderr}"
        with stack.api() as api:
            wait_for_dag(api, DAG_ID)
            triggered = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
            assert triggered.status_code == 200, triggered.text
            run_id = triggered.json()["dag_run_id"]
            sagemaker = stack.client("sagemaker")

            orphaned = poll(f"{KILLED_TASK}'s job", lambda: running_job(sagemaker, KILLED_TASK_JOB, 0))
            poll(f"{KILLED_TASK}'s task process", lambda: task_process(config, api, run_id, KILLED_TASK)).kill()
            killed_at = time.monotonic()
            ended = poll(f"{KILLED_TASK}'s killed try ended", lambda: try_ended(api, run_id, KILLED_TASK), every=0.5)
            print(f"{KILLED_TASK}'s task process killed: {ended} {time.monotonic() - killed_at:.1f} s later")

            interrupted = poll("a job to kill the local cloud during",
                               lambda: running_job(sagemaker, CLOUD_KILLED_JOBS, MIN_AGE_SECONDS))
            cloud = service_process(config, "localcloud")
            cloud.kill()
            cloud.wait(timeout=60)
            restarted_cloud = start_local_cloud(config, stack.env)
            poll("the local cloud started again", lambda: local_cloud_answers(config) or None, timeout=120)

            assert wait_for_run(api, run_id) == "success", failed_task_logs(api, run_id)
            # The killed try's supervisor saw its task runner end by a signal.
            assert task_instance(api, run_id, KILLED_TASK)["try_number"] == 2
            assert "Process terminated by signal" in task_log(api, run_id, KILLED_TASK, 1)

        # The killed try's job did not run beside the retry's: the retry stopped it (or, on a quiet
        # machine, it may have completed before the retry started).
        retry = assert_retried_under_a_new_name(sagemaker, orphaned)
        orphan = sagemaker.describe_processing_job(ProcessingJobName=orphaned)
        assert orphan["ProcessingJobStatus"] in ("Stopped", "Completed")
        assert orphan["LastModifiedTime"] <= retry["CreationTime"]
        described = sagemaker.describe_processing_job(ProcessingJobName=interrupted)
        assert (described["ProcessingJobStatus"], described["FailureReason"]) == ("Failed", LOCAL_CLOUD_STOPPED)
        assert_retried_under_a_new_name(sagemaker, interrupted)

        packages = sagemaker.list_model_packages(ModelPackageGroupName=PREFIX)["ModelPackageSummaryList"]
        of_run = [p for p in packages if sagemaker.describe_model_package(ModelPackageName=p["ModelPackageArn"])
                  .get("CustomerMetadataProperties", {}).get("run_id") == run_id]
        assert len(of_run) == 1
        associations = [(a["SourceArn"], a["DestinationArn"], a.get("AssociationType"))
                        for page in sagemaker.get_paginator("list_associations").paginate()
                        for a in page["AssociationSummaries"]]
        artifacts = [(a["Source"]["SourceUri"], a["ArtifactType"])
                     for page in sagemaker.get_paginator("list_artifacts").paginate()
                     for a in page["ArtifactSummaries"]]
        actions = [a["ActionName"] for page in sagemaker.get_paginator("list_actions").paginate()
                   for a in page["ActionSummaries"]]
        for listed in (associations, artifacts, actions):
            assert listed and [item for item, count in Counter(listed).items() if count > 1] == []
    finally:
        stopped = stack.run("down")
        if restarted_cloud is not None:
            restarted_cloud.wait(timeout=60)
    assert stopped.returncode == 0, stopped.stderr
