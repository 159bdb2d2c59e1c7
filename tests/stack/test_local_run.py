"""make run's bookkeeping that needs no DAG run (include/local_run.py): `airflow db migrate` runs
only when the metadata database may be behind this Airflow version."""

from __future__ import annotations

import io
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from include import local_run
from include.local_run import RunError, migrate_database


def test_migrate_runs_only_when_the_database_may_be_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "airflow.db"
    migrations: list[list[str]] = []
    exit_code = 0

    def migrate(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        migrations.append(argv)
        with sqlite3.connect(database) as db:  # what a migration leaves: the head revision
            db.execute("CREATE TABLE IF NOT EXISTS alembic_version (version_num TEXT)")
            db.execute("DELETE FROM alembic_version")
            db.execute("INSERT INTO alembic_version VALUES ('head')")
        return subprocess.CompletedProcess(argv, exit_code)

    def run_make_run_migration() -> None:
        migrate_database({}, tmp_path, io.BytesIO(), tmp_path / "airflow.log")

    monkeypatch.setattr(local_run.subprocess, "run", migrate)
    run_make_run_migration()  # no database yet
    run_make_run_migration()  # at the revision the migration left: nothing to do
    assert migrations == [[local_run.sys.executable, "-m", "airflow", "db", "migrate"]]

    with sqlite3.connect(database) as db:  # a database of another Airflow, put in its place
        db.execute("UPDATE alembic_version SET version_num = 'older'")
    run_make_run_migration()
    assert len(migrations) == 2

    monkeypatch.setattr(local_run.importlib.metadata, "version", lambda name: "9.9.9")  # Airflow upgraded
    exit_code = 1
    with pytest.raises(RunError, match="airflow db migrate failed"):
        run_make_run_migration()
    with pytest.raises(RunError):  # a failed migration is not recorded as done
        run_make_run_migration()
    assert len(migrations) == 4
