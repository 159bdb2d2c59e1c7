"""Athena SQL over the feature groups' offline-store tables, written for both Athena's Trino
dialect and the local cloud's DuckDB: quoted identifiers, window functions, plain comparisons."""

from __future__ import annotations

from include.jobs import schema

# Columns Feature Store adds to each offline record.
API_INVOCATION_TIME = "api_invocation_time"
WRITE_TIME = "write_time"
IS_DELETED = "is_deleted"
RANK = "record_rank"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(database: str, table: str) -> str:
    return f"{_quoted(database)}.{_quoted(table)}"


def _latest_records(database: str, table: str) -> str:
    """Every record of the table with its rank among the versions of its record identifier: 1
    is the latest as the Feature Store documentation orders them, by event time, then
    api_invocation_time, then write_time, all descending (earlier runs' rows and re-ingested rows
    stay in the offline store)."""
    record_id = _quoted(schema.RECORD_IDENTIFIER)
    latest_first = ", ".join(f"{_quoted(name)} DESC" for name in (schema.EVENT_TIME, API_INVOCATION_TIME, WRITE_TIME))
    return (
        f"SELECT *, row_number() OVER (PARTITION BY {record_id} ORDER BY {latest_first}) AS {RANK} "
        f"FROM {_table(database, table)}"
    )


def dataset_query(database: str, claims_table: str, customers_table: str) -> str:
    """One row per policy: its latest claim LEFT JOIN its latest customer record (neither
    deleted), the label first, then the feature columns in schema order."""
    claims = [f"claims.{_quoted(name)}" for name in (schema.LABEL, *schema.CLAIMS_FEATURES)]
    customers = [f"customers.{_quoted(name)}" for name in schema.CUSTOMERS_FEATURES]
    record_id = _quoted(schema.RECORD_IDENTIFIER)
    columns = ",\n  ".join(claims + customers)
    return (
        f"WITH claims AS ({_latest_records(database, claims_table)}),\n"
        f"customers AS ({_latest_records(database, customers_table)})\n"
        f"SELECT\n  {columns}\n"
        f"FROM claims LEFT JOIN customers\n"
        f"  ON customers.{record_id} = claims.{record_id} AND customers.{RANK} = 1 "
        f"AND NOT customers.{_quoted(IS_DELETED)}\n"
        f"WHERE claims.{RANK} = 1 AND NOT claims.{_quoted(IS_DELETED)}\n"
        f"ORDER BY claims.{record_id}"
    )


def offline_record_count_query(database: str, table: str, min_event_time: float | str) -> str:
    """How many distinct records with an event time of at least `min_event_time` the offline
    store holds: a run's ingestion has landed when this reaches the number it put."""
    return (
        f"SELECT count(DISTINCT {_quoted(schema.RECORD_IDENTIFIER)}) AS records "
        f"FROM {_table(database, table)} WHERE {_quoted(schema.EVENT_TIME)} >= {float(min_event_time)!r}"
    )
