"""Job scripts run as a processing container runs them: `python3 <script>.py ...` with
SAGEMAKER_BASE_DIR set; tests also import them, as siblings of schema.py."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

JOBS_DIR = Path(__file__).resolve().parents[2] / "include" / "jobs"
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
sys.path.insert(0, str(JOBS_DIR))


@pytest.fixture
def run_job(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """run_job("preprocess", "--dataset", "claims", ...) -> the finished process (text output)."""

    def run(script: str, *args: object) -> subprocess.CompletedProcess:
        env = {**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path / "opt-ml")}
        return subprocess.run(
            [sys.executable, str(JOBS_DIR / f"{script}.py"), *map(str, args)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def write_csv(path: Path, rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path
