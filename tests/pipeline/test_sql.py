"""The Athena SQL, run by DuckDB (the local cloud's engine) over offline-store tables holding
several versions of records, deleted records and claims without customers."""

from __future__ import annotations

import duckdb
import pytest

from include.jobs import schema
from include.localcloud.athena.dialect import to_duckdb
from include.pipeline import sql

DATABASE = "sagemaker_featurestore"
OFFLINE_COLUMNS = {"write_time": "TIMESTAMP", "api_invocation_time": "TIMESTAMP", "is_deleted": "BOOLEAN"}
DUCKDB_TYPES = {"Integral": "BIGINT", "Fractional": "DOUBLE", "String": "VARCHAR"}


@pytest.fixture
def offline_store() -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    db.execute(f'CREATE SCHEMA "{DATABASE}"')
    for dataset in ("claims", "customers"):
        columns = {name: DUCKDB_TYPES[kind] for name, kind in schema.COLUMNS[dataset].items()} | OFFLINE_COLUMNS
        db.execute(
            f'CREATE TABLE "{DATABASE}"."{dataset}-1" ('
            + ", ".join(f'"{name}" {kind}' for name, kind in columns.items()) + ")"
        )
    return db


def put(db: duckdb.DuckDBPyConnection, dataset: str, policy: int, event_time: float, invoked: str,
        marker: int, deleted: bool = False, written: str | None = None) -> None:
    """A record whose every feature is `marker` (so the test can tell versions apart)."""
    values = {name: marker for name in schema.COLUMNS[dataset]}
    values |= {schema.RECORD_IDENTIFIER: policy, schema.EVENT_TIME: event_time}
    values |= {"write_time": written or invoked, "api_invocation_time": invoked, "is_deleted": deleted}
    names = ", ".join(f'"{name}"' for name in values)
    db.execute(f'INSERT INTO "{DATABASE}"."{dataset}-1" ({names}) VALUES ({", ".join("?" * len(values))})',
               list(values.values()))


def test_one_row_per_policy_from_the_latest_records(offline_store: duckdb.DuckDBPyConnection) -> None:
    db = offline_store
    # Policy 1: an older and a newer claim; an older and a newer customer record.
    put(db, "claims", 1, 100.0, "2026-01-01 00:00:00", marker=0)
    put(db, "claims", 1, 200.0, "2026-01-02 00:00:00", marker=1)
    put(db, "customers", 1, 100.0, "2026-01-01 00:00:00", marker=0)
    put(db, "customers", 1, 300.0, "2026-01-03 00:00:00", marker=1)
    # Policy 2: the same event time ingested twice: the later write wins.
    put(db, "claims", 2, 100.0, "2026-01-01 00:00:00", marker=0)
    put(db, "claims", 2, 100.0, "2026-01-05 00:00:00", marker=1)
    put(db, "customers", 2, 100.0, "2026-01-01 00:00:00", marker=1)
    # Policy 3: its latest claim record is a deletion.
    put(db, "claims", 3, 100.0, "2026-01-01 00:00:00", marker=1)
    put(db, "claims", 3, 200.0, "2026-01-02 00:00:00", marker=1, deleted=True)
    put(db, "customers", 3, 100.0, "2026-01-01 00:00:00", marker=1)
    # Policy 4: a claim without customer record.
    put(db, "claims", 4, 100.0, "2026-01-01 00:00:00", marker=1)
    # Policy 5: the same event and API invocation time, written twice: the later write_time wins.
    put(db, "claims", 5, 100.0, "2026-01-01 00:00:00", marker=0, written="2026-01-01 00:05:00")
    put(db, "claims", 5, 100.0, "2026-01-01 00:00:00", marker=1, written="2026-01-01 00:09:00")
    put(db, "customers", 5, 100.0, "2026-01-01 00:00:00", marker=0, written="2026-01-01 00:05:00")
    put(db, "customers", 5, 100.0, "2026-01-01 00:00:00", marker=1, written="2026-01-01 00:09:00")

    # As the local cloud's Athena runs it: parsed as Trino SQL (which it is), transpiled to DuckDB's.
    [transpiled] = to_duckdb(sql.dataset_query(DATABASE, "claims-1", "customers-1"))
    result = db.execute(transpiled)
    assert tuple(column[0] for column in result.description) == schema.DATASET_COLUMNS
    rows = result.fetchall()
    claims_width = 1 + len(schema.CLAIMS_FEATURES)
    assert len(rows) == 4  # policies 1, 2, 4, 5 in policy order
    assert rows[0] == (1,) * len(schema.DATASET_COLUMNS)
    assert rows[1] == (1,) * len(schema.DATASET_COLUMNS)
    assert rows[2][:claims_width] == (1,) * claims_width
    assert rows[2][claims_width:] == (None,) * len(schema.CUSTOMERS_FEATURES)
    assert rows[3] == (1,) * len(schema.DATASET_COLUMNS)


def test_offline_record_count_counts_distinct_records_of_the_run(offline_store: duckdb.DuckDBPyConnection) -> None:
    db = offline_store
    put(db, "claims", 1, 100.0, "2026-01-01 00:00:00", marker=0)  # an earlier run
    put(db, "claims", 1, 200.5, "2026-01-02 00:00:00", marker=1)
    put(db, "claims", 1, 200.5, "2026-01-02 00:00:01", marker=1)  # ingested twice
    put(db, "claims", 2, 200.5, "2026-01-02 00:00:00", marker=1)
    [transpiled] = to_duckdb(sql.offline_record_count_query(DATABASE, "claims-1", 200.5))
    [(records,)] = db.execute(transpiled).fetchall()
    assert records == 2
