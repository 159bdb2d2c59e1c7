"""`make bench-stack`: the seconds each task of a fraud_detection run holds a worker slot under the
dev stack (`make up`), with FRAUD_DEFERRABLE off and on.

For each mode it starts a stack of its own (state in a temporary folder, free ports, so a running
`make up` is left alone), triggers the default run through the REST API, waits for it, and reads
the run's task instances: duration (start to end, deferral included), the time deferred (from the
log line "Pausing task as DEFERRED" to the task being queued again after its trigger fired), and
the worker-slot seconds, duration less the time deferred. Prints a table of the tasks that wait
for SageMaker, the run's totals and their ratio, then stops the stack."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from include.local_run import DEFAULT_CONF
from include.localcloud.server import free_port
from include.stack.config import PROJECT_DIR, load_config, login, read_env_file

DAG_ID = "fraud_detection"
RUN_TIMEOUT_SECONDS = 1800
DEFERRED_LOG_LINE = "Pausing task as DEFERRED"


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def deferred_at(api: httpx.Client, run_id: str, task: dict[str, Any]) -> datetime | None:
    """When the task deferred, from its log; None when it did not."""
    log = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task['task_id']}/logs/{task['try_number']}")
    for entry in log.json().get("content", []):
        if isinstance(entry, dict) and str(entry.get("event", "")).startswith(DEFERRED_LOG_LINE):
            return _time(entry["timestamp"])
    return None


def slot_seconds(api: httpx.Client, run_id: str) -> dict[str, tuple[float, float]]:
    """task id -> (duration, seconds deferred) of each task that ran."""
    answer = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 200}).json()
    measured = {}
    for task in answer["task_instances"]:
        if task["state"] != "success" or not task["start_date"]:
            continue
        duration = (_time(task["end_date"]) - _time(task["start_date"])).total_seconds()
        paused = deferred_at(api, run_id, task)
        deferred = (_time(task["queued_when"]) - paused).total_seconds() if paused and task["queued_when"] else 0.0
        measured[task["task_id"]] = (duration, max(0.0, deferred))
    return measured


def measure(deferrable: bool, root: Path) -> dict[str, tuple[float, float]]:
    env = {
        **os.environ, "FRAUD_DEFERRABLE": str(deferrable).lower(), "STACK_HOME": str(root / "airflow"),
        "LOCALCLOUD_STATE": str(root / "localcloud"), "STACK_ENV_FILE": str(root / ".env"),
        "STACK_API_PORT": str(free_port()), "LOCALCLOUD_PORT": str(free_port()),
    }

    def stack(command: str) -> None:
        done = subprocess.run([sys.executable, "-m", "include.stack", command], cwd=PROJECT_DIR, env=env,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"make {command} failed:\n{done.stdout}\n{done.stderr}")

    stack("up")
    try:
        config = load_config(env)
        username, password = login(read_env_file(config), config.env_file)
        token = httpx.post(f"{config.api_url}/auth/token", json={"username": username, "password": password},
                           timeout=120).json()["access_token"]
        with httpx.Client(base_url=f"{config.api_url}/api/v2", headers={"Authorization": f"Bearer {token}"},
                          timeout=120) as api:
            deadline = time.monotonic() + 300
            while api.get(f"/dags/{DAG_ID}").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{DAG_ID} was not parsed within 300 s")
                time.sleep(2)
            run_id = api.post(f"/dags/{DAG_ID}/dagRuns",
                              json={"logical_date": None, "conf": DEFAULT_CONF}).json()["dag_run_id"]
            deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
            while (state := api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"]) not in ("success", "failed"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {run_id} not finished after {RUN_TIMEOUT_SECONDS} s")
                time.sleep(3)
            if state != "success":
                raise RuntimeError(f"FRAUD_DEFERRABLE={deferrable}: run {run_id} ended {state}")
            return slot_seconds(api, run_id)
    finally:
        stack("down")


def main() -> int:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as folder:
        for deferrable in (False, True):
            root = Path(folder) / str(deferrable).lower()
            root.mkdir()
            print(f"FRAUD_DEFERRABLE={str(deferrable).lower()}: make up, the default run, make down ...", flush=True)
            results[deferrable] = measure(deferrable, root)
    off, on = results[False], results[True]
    waiting = sorted(task for task, (_, deferred) in on.items() if deferred > 0)
    width = max([len(task) for task in waiting] + [30])
    print(f"\nSeconds each task held a worker slot under make up, default run ({os.cpu_count()} cores)\n")
    print(f"| {'task':<{width}} | off: slot (s) | on: duration (s) | on: deferred (s) | on: slot (s) |")
    print(f"|{'-' * (width + 2)}|---------------|------------------|------------------|--------------|")
    for task in waiting:
        duration, deferred = on[task]
        print(f"| {task:<{width}} | {off.get(task, (0.0, 0.0))[0]:>13.1f} | {duration:>16.1f} | {deferred:>16.1f} | "
              f"{duration - deferred:>12.1f} |")
    total = {mode: (sum(d for d, _ in tasks.values()), sum(d - x for d, x in tasks.values()))
             for mode, tasks in (("off", off), ("on", on))}
    jobs_off = sum(off.get(task, (0.0, 0.0))[0] for task in waiting)
    jobs_on = sum(on[task][0] - on[task][1] for task in waiting)
    print(f"| {'the tasks above':<{width}} | {jobs_off:>13.1f} | {'':>16} | {'':>16} | {jobs_on:>12.1f} |")
    print(f"| {'every task of the run':<{width}} | {total['off'][1]:>13.1f} | {total['on'][0]:>16.1f} | "
          f"{total['on'][0] - total['on'][1]:>16.1f} | {total['on'][1]:>12.1f} |")
    print(f"\nWorker-slot seconds, on / off: {total['on'][1] / total['off'][1]:.2f} for the whole run, "
          f"{jobs_on / jobs_off:.2f} for the {len(waiting)} tasks that deferred.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
