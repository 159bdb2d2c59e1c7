"""The process stack (`make up`) of a test: its own state directories, ports and .env under a
temporary folder, started and stopped through `python -m include.stack` like make does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from dotenv import dotenv_values

from include.localcloud.server import free_port
from include.stack.infra import local_credentials

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "fraud_detection"
# The test stack's FRAUD_PREFIX and FRAUD_ENDPOINT_NAME, so the template's parameters: its local
# cloud enforces IAM, and the template's roles allow only that prefix and endpoint.
PREFIX = "stack-test"
ENDPOINT = "stack-test"
API_TIMEOUT = 120  # seconds: one API server worker on a busy 2-core machine can be slow to answer
RUN_TIMEOUT_SECONDS = 1800


@dataclass
class ProcessStack:
    root: Path  # holds the stack's home, the local cloud's state and its .env
    env: dict[str, str]

    @classmethod
    def in_folder(cls, root: Path) -> ProcessStack:
        env = {
            **os.environ,
            "STACK_HOME": str(root / "airflow"),
            "LOCALCLOUD_STATE": str(root / "localcloud"),
            "STACK_ENV_FILE": str(root / ".env"),
            "STACK_API_PORT": str(free_port()),
            "LOCALCLOUD_PORT": str(free_port()),
            "FRAUD_PREFIX": PREFIX,
            "FRAUD_ENDPOINT_NAME": ENDPOINT,
        }
        return cls(root, env)

    @property
    def home(self) -> Path:
        return Path(self.env["STACK_HOME"])

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['STACK_API_PORT']}"

    @property
    def cloud_url(self) -> str:
        return f"http://127.0.0.1:{self.env['LOCALCLOUD_PORT']}"

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """python -m include.stack <command>, as make runs it."""
        return subprocess.run(
            [sys.executable, "-m", "include.stack", command],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout,
        )

    def client(self, service: str) -> Any:
        """A boto3 client of the stack's local cloud, with its root key (when it enforces IAM)."""
        return boto3.session.Session().client(
            service, region_name="us-east-1", endpoint_url=self.cloud_url,
            **local_credentials(Path(self.env["LOCALCLOUD_STATE"])),
        )

    def login(self) -> tuple[str, str]:
        values = dotenv_values(self.root / ".env")
        return values["_AIRFLOW_WWW_USER_USERNAME"] or "", values["_AIRFLOW_WWW_USER_PASSWORD"] or ""

    def api(self) -> httpx.Client:
        """A client of the REST API (/api/v2) holding a JWT from /auth/token."""
        username, password = self.login()
        answer = httpx.post(
            f"{self.api_url}/auth/token", json={"username": username, "password": password}, timeout=API_TIMEOUT
        )
        answer.raise_for_status()
        token = answer.json()["access_token"]
        return httpx.Client(
            base_url=f"{self.api_url}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=API_TIMEOUT
        )


def wait_for_dag(api: httpx.Client, dag_id: str, timeout: float = 180) -> dict[str, Any]:
    """The DAG as the API serves it once the DAG processor has parsed it; fails on import errors."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        errors = api.get("/importErrors").json()["import_errors"]
        assert not errors, f"DAG import errors: {errors}"
        answer = api.get(f"/dags/{dag_id}")
        if answer.status_code == 200:
            return answer.json()
        time.sleep(2)
    raise AssertionError(f"{dag_id} not parsed within {timeout} s")


def log_text(entries: list[Any]) -> str:
    """Airflow's structured task log as text: each event, and the exceptions it carries."""
    lines = []
    for entry in entries:
        if not isinstance(entry, dict):
            lines.append(str(entry))
            continue
        lines.append(str(entry.get("event", "")))
        for error in entry.get("error_detail") or []:
            lines.append(f"{error.get('exc_type')}: {error.get('exc_value')}")
    return "\n".join(lines)


def task_log(api: httpx.Client, run_id: str, task_id: str, try_number: int) -> str:
    """The log of one try of a task, as text."""
    answer = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}")
    assert answer.status_code == 200, f"log of {task_id} try {try_number}: {answer.status_code} {answer.text}"
    return log_text(answer.json()["content"])


def failed_task_logs(api: httpx.Client, run_id: str) -> str:
    """The end of the log of each failed task of a run, to say why it failed."""
    failed = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"state": ["failed"]}).json()
    reports = []
    for instance in failed["task_instances"]:
        log = task_log(api, run_id, instance["task_id"], instance["try_number"])
        reports.append(f"--- {instance['task_id']}:\n" + "\n".join(log.splitlines()[-40:]))
    return "\n".join(reports) or "no failed task"


def wait_for_run(api: httpx.Client, run_id: str, timeout: float = RUN_TIMEOUT_SECONDS) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(5)
    raise AssertionError(f"run {run_id} not finished after {timeout} s")


def task_instances(api: httpx.Client, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's task instances by task id, as the API serves them (state, try_number, ...)."""
    answer = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100}).json()
    return {instance["task_id"]: instance for instance in answer["task_instances"]}


def task_states(api: httpx.Client, run_id: str) -> dict[str, str]:
    return {task_id: instance["state"] for task_id, instance in task_instances(api, run_id).items()}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    """One running process stack for the slow tests: up before, down after."""
    running = ProcessStack.in_folder(tmp_path_factory.mktemp("stack"))
    started = running.run("up")
    if started.returncode != 0:
        running.run("down")
        pytest.fail(f"make up failed:\n{started.stdout}\n{started.stderr}")
    yield running
    stopped = running.run("down")
    assert stopped.returncode == 0, stopped.stderr
