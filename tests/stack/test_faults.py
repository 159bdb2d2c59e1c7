"""Faults survived: the local cloud is killed (SIGKILL) while a job of a `make run` is in
progress and started again. The job ends Failed as interrupted, the task's retry runs a new job
under a new name, the run completes, and the registry and the lineage hold nothing twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest

from include import datagen
from include.localcloud.sagemaker.jobs import LOCAL_CLOUD_STOPPED
from tests.stack.conftest import REPO, ProcessStack

# Jobs whose inputs were written well before they start (the local cloud snapshots moto's state
# every 2 s): the split, the Clarify and the evaluation jobs. On the 5,000 policies of data/ they
# can end within MIN_AGE_SECONDS on a quiet machine, so the run has more policies (generated), and
# ingests them offline_only to keep the run short.
TARGETS = re.compile(r"-(split|bias-pre|eval|bias-post)-")
MIN_AGE_SECONDS = 2.5
POLICIES = 50_000


def start_cloud(stack: ProcessStack, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "include.localcloud"], cwd=REPO, env=stack.env,
                               stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            client(stack, "sts").get_caller_identity()
            return process
        except Exception:  # not up yet
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)


def client(stack: ProcessStack, service: str) -> Any:
    return boto3.client(service, endpoint_url=stack.cloud_url, region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local")


def running_target(sm: Any) -> str | None:
    """A target job in progress for MIN_AGE_SECONDS, or None."""
    for job in sm.list_processing_jobs(StatusEquals="InProgress")["ProcessingJobSummaries"]:
        age = time.time() - job["CreationTime"].timestamp()
        if TARGETS.search(job["ProcessingJobName"]) and age >= MIN_AGE_SECONDS:
            return job["ProcessingJobName"]
    return None


@pytest.mark.slow
def test_a_run_survives_the_local_cloud_killed_during_a_job(tmp_path: Path) -> None:
    stack = ProcessStack.in_folder(tmp_path)
    stack.env.update({"FRAUD_RETRY_DELAY_SECONDS": "5", "RUN_REPORT_DIR": str(tmp_path / "report")})
    cloud_log = tmp_path / "localcloud.log"
    cloud = start_cloud(stack, cloud_log)
    raw = datagen.write(datagen.Model(datagen.read_seed()), POLICIES, 0, tmp_path / "data")
    conf = {"prefix": "faults", "tuning": False, "deploy": False, "ingest_mode": "offline_only",
            "claims_file": str(raw["claims"]), "customers_file": str(raw["customers"])}
    run = subprocess.Popen([sys.executable, "-m", "include.local_run", json.dumps(conf)], cwd=REPO, env=stack.env,
                           stdout=(tmp_path / "run.out").open("wb"), stderr=subprocess.STDOUT)
    try:
        sm, killed = client(stack, "sagemaker"), None
        while killed is None:
            assert run.poll() is None, (tmp_path / "run.out").read_text()[-3000:]
            killed = running_target(sm)
            if killed is None:
                time.sleep(0.2)
        os.kill(cloud.pid, signal.SIGKILL)
        cloud.wait()
        cloud = start_cloud(stack, cloud_log)
        assert run.wait(timeout=900) == 0, (tmp_path / "run.out").read_text()[-3000:]
        output = (tmp_path / "run.out").read_text()
    finally:
        if run.poll() is None:
            run.kill()
        cloud.terminate()
        cloud.wait(timeout=60)
        cloud = start_cloud(stack, cloud_log)  # read what the run left, then stop for good

    try:
        sm = client(stack, "sagemaker")
        interrupted = sm.describe_processing_job(ProcessingJobName=killed)
        assert (interrupted["ProcessingJobStatus"], interrupted["FailureReason"]) == ("Failed", LOCAL_CLOUD_STOPPED)
        retried = [job for job in sm.list_processing_jobs(NameContains=killed)["ProcessingJobSummaries"]
                   if job["ProcessingJobName"] != killed]
        assert [job["ProcessingJobStatus"] for job in retried] == ["Completed"]
        assert re.fullmatch(rf"{killed}-\d+", retried[0]["ProcessingJobName"])  # a new name
        assert "up_for_retry" in output

        summary = json.loads((tmp_path / "report" / "summary.json").read_text())
        packages = sm.list_model_packages(ModelPackageGroupName="faults")["ModelPackageSummaryList"]
        of_run = [p for p in packages if sm.describe_model_package(ModelPackageName=p["ModelPackageArn"])
                  .get("CustomerMetadataProperties", {}).get("run_id") == summary["run_id"]]
        assert len(of_run) == 1

        associations = [(a["SourceArn"], a["DestinationArn"], a.get("AssociationType"))
                        for page in sm.get_paginator("list_associations").paginate()
                        for a in page["AssociationSummaries"]]
        artifacts = [(a["Source"]["SourceUri"], a["ArtifactType"])
                     for page in sm.get_paginator("list_artifacts").paginate() for a in page["ArtifactSummaries"]]
        actions = [a["ActionName"] for page in sm.get_paginator("list_actions").paginate()
                   for a in page["ActionSummaries"]]
        for listed in (associations, artifacts, actions):
            assert listed and [item for item, count in Counter(listed).items() if count > 1] == []
    finally:
        cloud.terminate()
        cloud.wait(timeout=60)
