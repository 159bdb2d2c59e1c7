"""Airflow for the tests: a throwaway AIRFLOW_HOME (config and SQLite metadata database), the
repo's dags/ and plugins/ folders. Must run before the first `import airflow`: Airflow reads its
configuration once, when it is imported."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from include.stack.config import AWS_SESSION_FACTORY

REPO = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO / "dags"
PLUGINS_FOLDER = REPO / "plugins"
_MARKER = "FRAUD_TESTS_AIRFLOW_HOME"


def configure() -> None:
    """Idempotent: the first call of the test session picks the home."""
    if os.environ.get(_MARKER):
        return
    home = tempfile.mkdtemp(prefix="airflow-tests-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.update(
        {
            _MARKER: home,
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            **AWS_SESSION_FACTORY,
        }
    )
    # Airflow puts the plugins folder on sys.path when it starts; DAG files import from it.
    if str(PLUGINS_FOLDER) not in sys.path:
        sys.path.append(str(PLUGINS_FOLDER))
