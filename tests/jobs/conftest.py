"""Job scripts run as a processing container runs them: `python3 <script>.py ...` with
SAGEMAKER_BASE_DIR set; tests also import them, as siblings of schema.py."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

JOBS_DIR = Path(__file__).resolve().parents[2] / "include" / "jobs"
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
sys.path.insert(0, str(JOBS_DIR))

import preprocess  # noqa: E402 (a sibling of the job scripts, importable once JOBS_DIR is on the path)
import schema  # noqa: E402


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


@pytest.fixture(scope="session")
def athena_result(tmp_path_factory) -> Path:
    """What the dataset query returns on the real data: one row per policy, header, schema columns."""
    folder = tmp_path_factory.mktemp("athena")
    frames = {
        dataset: pd.read_csv(*preprocess.preprocess(dataset, DATA_DIR, folder / "processed", 1.0))
        for dataset in ("claims", "customers")
    }
    joined = frames["claims"].merge(frames["customers"], on=schema.RECORD_IDENTIFIER, how="left")
    result = folder / "result" / "0f3c-query-id.csv"
    result.parent.mkdir()
    joined[list(schema.DATASET_COLUMNS)].to_csv(result, index=False)
    (folder / "result" / "0f3c-query-id.csv.metadata").write_bytes(b"\x00binary athena metadata")
    return result.parent
