"""State of the Feature Store runtime: the online store (the latest record per identifier, in SQLite
on disk), the offline journal (every accepted record, in the same SQLite file so it survives a crash)
and the writer that flushes the journal to S3 as Parquet in SageMaker's offline-store layout."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import re
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from include.localcloud.periodic import PeriodicWork
from include.localcloud.protocol import AwsError
from include.localcloud.store import connect, immediate_transaction

log = logging.getLogger(__name__)

ONLINE_STORE = "OnlineStore"
OFFLINE_STORE = "OfflineStore"
FLUSH_INTERVAL_SECONDS = 1.0
FLUSH_BATCH_ROWS = 50_000
# A group whose files S3 refuses (its role may not write them, its bucket is gone) is tried again
# after a wait that doubles from 2 ticks up to this: its rows, waiting in the journal, are not
# read and made into Parquet again every tick.
RETRY_MAX_SECONDS = 60.0
TTL_UNIT_SECONDS = {"Seconds": 1, "Minutes": 60, "Hours": 3600, "Days": 86400, "Weeks": 604800}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INTEGRAL = re.compile(r"[+-]?\d+")
_FRACTIONAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# The two event-time string formats Feature Store accepts: yyyy-MM-dd'T'HH:mm:ss[.SSS]Z
_ISO_EVENT_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z")
ARROW_TYPES = {"Integral": pa.int64(), "Fractional": pa.float64(), "String": pa.string()}
Value = int | float | str


def validation_error(message: str) -> AwsError:
    return AwsError("ValidationError", message)


@dataclass(frozen=True)
class FeatureGroup:
    """What the runtime needs from a DescribeFeatureGroup body."""

    name: str
    key: str  # name + creation time: a group deleted and created again starts empty
    region: str
    record_identifier: str
    event_time_feature: str
    features: dict[str, str]  # name -> FeatureType (Integral, Fractional, String)
    online: bool
    offline_uri: str | None  # ResolvedOutputS3Uri, None when the offline store is off
    ttl_seconds: float | None
    role_arn: str | None  # RoleArn: what the offline store's writes to S3 are made as

    @classmethod
    def from_description(cls, body: dict[str, Any]) -> FeatureGroup:
        online = body.get("OnlineStoreConfig") or {}
        offline_uri = (body.get("OfflineStoreConfig") or {}).get("S3StorageConfig", {}).get("ResolvedOutputS3Uri")
        return cls(
            name=body["FeatureGroupName"],
            key=f"{body['FeatureGroupName']}@{body['CreationTime']!r}",
            region=body["FeatureGroupArn"].split(":")[3],
            record_identifier=body["RecordIdentifierFeatureName"],
            event_time_feature=body["EventTimeFeatureName"],
            features={d["FeatureName"]: d["FeatureType"] for d in body["FeatureDefinitions"]},
            online=bool(online.get("EnableOnlineStore")),
            offline_uri=offline_uri.rstrip("/") if offline_uri else None,
            ttl_seconds=ttl_seconds(online.get("TtlDuration")),
            role_arn=body.get("RoleArn"),
        )

    def target_stores(self, requested: list[str] | None) -> set[str]:
        """The stores a write goes to: those asked for (each must be enabled), else all enabled."""
        enabled = {ONLINE_STORE} if self.online else set()
        if self.offline_uri:
            enabled.add(OFFLINE_STORE)
        if requested is None:
            return enabled
        for store in requested:
            if store not in enabled:
                raise validation_error(f"The {store} is not enabled for FeatureGroup {self.name}.")
        return set(requested)

    def check_feature_names(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.features]
        if unknown:
            raise validation_error(f"Feature names {unknown} are not defined in FeatureGroup {self.name}.")


def ttl_seconds(duration: dict[str, Any] | None) -> float | None:
    if not duration:
        return None
    return float(duration["Value"] * TTL_UNIT_SECONDS[duration["Unit"]])


def parse_value(group: FeatureGroup, name: str, text: str) -> Value:
    """The typed value of feature `name` given as a string, as its feature definition declares it."""
    kind = group.features[name]
    if kind == "String":
        return text
    if kind == "Integral" and _INTEGRAL.fullmatch(text):
        number = int(text)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    if kind == "Fractional" and _FRACTIONAL.fullmatch(text):
        return float(text)
    raise validation_error(f"Value '{text[:100]}' of feature {name} is not a valid {kind} value.")


def parse_event_time(group: FeatureGroup, text: str) -> float:
    """Epoch seconds of an event time: Fractional epoch seconds, or an ISO-8601 String."""
    name = group.event_time_feature
    if group.features[name] == "String":
        if not _ISO_EVENT_TIME.fullmatch(text):
            raise validation_error(
                f"EventTime '{text[:100]}' of feature {name} must be formatted as "
                "yyyy-MM-dd'T'HH:mm:ssZ or yyyy-MM-dd'T'HH:mm:ss.SSSZ."
            )
        return dt.datetime.fromisoformat(text).timestamp()
    value = parse_value(group, name, text)
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise validation_error(f"EventTime '{text[:100]}' of feature {name} is not valid epoch seconds.")
    return float(value)


@dataclass(frozen=True)
class ParsedRecord:
    identifier: str
    event_time: float
    values: dict[str, Value]  # typed, for the offline store


def parse_record(group: FeatureGroup, record: list[dict[str, Any]]) -> ParsedRecord:
    """Validate a PutRecord's Record against the group's feature definitions."""
    texts: dict[str, str] = {}
    for item in record:
        name = item["FeatureName"]
        if name in texts:
            raise validation_error(f"Feature {name} appears more than once in the record.")
        if name not in group.features:
            raise validation_error(f"Feature {name} is not defined in FeatureGroup {group.name}.")
        if "ValueAsString" not in item:
            # ValueAsStringList is for collection features, which the control plane does not create.
            raise validation_error(f"Feature {name} needs a ValueAsString.")
        texts[name] = item["ValueAsString"]
    for required in (group.record_identifier, group.event_time_feature):
        if required not in texts:
            raise validation_error(f"The record is missing the feature {required} (required by {group.name}).")
    values = {name: parse_value(group, name, text) for name, text in texts.items()}
    event_time = parse_event_time(group, texts[group.event_time_feature])
    return ParsedRecord(texts[group.record_identifier], event_time, values)


@dataclass(frozen=True)
class OnlineRecord:
    record: list[dict[str, Any]] | None  # None once soft-deleted
    expires_at: float | None


class RecordStore:
    """One SQLite file: `online` holds the latest record per (group, identifier), `journal` every
    row still to be written to the offline store. A write touches both in one transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS online (group_key TEXT NOT NULL, identifier TEXT NOT NULL,"
            " event_time REAL NOT NULL, expires_at REAL, record TEXT,"
            " PRIMARY KEY (group_key, identifier)) WITHOUT ROWID"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, group_key TEXT NOT NULL,"
            " group_name TEXT NOT NULL, row TEXT NOT NULL)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One atomic write: the online record and its offline journal row, or neither."""
        with self._lock, immediate_transaction(self._db):
            yield

    def _online_event_time(self, group: FeatureGroup, identifier: str) -> float | None:
        row = self._db.execute(
            "SELECT event_time FROM online WHERE group_key = ? AND identifier = ?", (group.key, identifier)
        ).fetchone()
        return row[0] if row else None

    def _journal(self, group: FeatureGroup, row: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO journal (group_key, group_name, row) VALUES (?, ?, ?)",
            (group.key, group.name, json.dumps(row)),
        )

    def put(
        self,
        group: FeatureGroup,
        parsed: ParsedRecord,
        record: list[dict[str, Any]],
        stores: set[str],
        expires_at: float | None,
        offline_row: dict[str, Any],
    ) -> None:
        """The online store takes the record only if its event time is later than the stored one's;
        the offline store takes every record."""
        with self._transaction():
            if ONLINE_STORE in stores:
                self._db.execute(
                    "INSERT INTO online VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_key, identifier) DO UPDATE"
                    " SET event_time = excluded.event_time, expires_at = excluded.expires_at,"
                    " record = excluded.record WHERE excluded.event_time > online.event_time",
                    (group.key, parsed.identifier, parsed.event_time, expires_at, json.dumps(record)),
                )
            if OFFLINE_STORE in stores:
                self._journal(group, offline_row)

    def get(self, group: FeatureGroup, identifier: str) -> OnlineRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT record, expires_at FROM online WHERE group_key = ? AND identifier = ?",
                (group.key, identifier),
            ).fetchone()
        if row is None:
            return None
        return OnlineRecord(json.loads(row[0]) if row[0] is not None else None, row[1])

    def delete(
        self,
        group: FeatureGroup,
        identifier: str,
        event_time: float,
        hard: bool,
        stores: set[str],
        offline_row: dict[str, Any],
    ) -> None:
        """Soft delete keeps a tombstone carrying the deletion's event time, hard delete removes the
        record; either only when the deletion is later than the stored record. A hard delete that is
        not later fails and writes nothing; a soft one still writes its offline marker."""
        with self._transaction():
            if ONLINE_STORE in stores:
                current = self._online_event_time(group, identifier)
                later = current is None or event_time > current
                if hard and not later:
                    raise validation_error(
                        f"EventTime of the HardDelete must be later than the EventTime of record "
                        f"{identifier} in the OnlineStore."
                    )
                if later and hard:
                    self._db.execute(
                        "DELETE FROM online WHERE group_key = ? AND identifier = ?", (group.key, identifier)
                    )
                elif later:
                    self._db.execute(
                        "INSERT OR REPLACE INTO online VALUES (?, ?, ?, NULL, NULL)",
                        (group.key, identifier, event_time),
                    )
            if OFFLINE_STORE in stores:
                self._journal(group, offline_row)

    def keep_groups(self, keys: set[str]) -> None:
        """Drop the online records of feature groups that no longer exist."""
        with self._lock:
            self._db.execute(
                "DELETE FROM online WHERE group_key NOT IN (SELECT value FROM json_each(?))", (json.dumps(sorted(keys)),)
            )

    def last_seq(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM journal").fetchone()[0]

    def pending(
        self, after: int, up_to: int, limit: int, skipped: Iterable[str] = ()
    ) -> list[tuple[int, str, str, dict[str, Any]]]:
        """The oldest journal rows in (after, up_to], but those of the `skipped` group keys:
        (seq, group key, group name, row)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, group_key, group_name, row FROM journal WHERE seq > ? AND seq <= ?"
                " AND group_key NOT IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT ?",
                (after, up_to, json.dumps(sorted(skipped)), limit),
            ).fetchall()
        return [(seq, key, name, json.loads(row)) for seq, key, name, row in rows]

    def forget(self, seqs: list[int]) -> None:
        with self._lock:
            self._db.execute("DELETE FROM journal WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(seqs),))


def offline_row(values: dict[str, Value], event_time: float, invoked_at: float, deleted: bool) -> dict[str, Any]:
    """A journal row: the typed feature values and what the offline writer adds to them."""
    return {
        "values": values,
        "event_time": event_time,
        "api_invocation_time": invoked_at,
        "is_deleted": deleted,
    }


def partition_path(event_time: float) -> str:
    return _hour_path(int(event_time // 3600))


@lru_cache(maxsize=1024)
def _hour_path(hour: int) -> str:
    """The partition of an hour since the epoch: made once, not for each of its rows."""
    moment = dt.datetime.fromtimestamp(hour * 3600, dt.UTC)
    return f"year={moment:%Y}/month={moment:%m}/day={moment:%d}/hour={moment:%H}"


def to_arrow(group: FeatureGroup, rows: list[dict[str, Any]], written_at: float) -> pa.Table:
    """Rows in the offline store's schema: the features in definition order with their types, then
    write_time, api_invocation_time and is_deleted."""
    columns: dict[str, pa.Array] = {}
    for name, kind in group.features.items():
        columns[name] = pa.array([row["values"].get(name) for row in rows], type=ARROW_TYPES[kind])
    millis = pa.timestamp("ms")
    columns["write_time"] = pa.array([int(written_at * 1000)] * len(rows), type=pa.int64()).cast(millis)
    invoked = [int(row["api_invocation_time"] * 1000) for row in rows]
    columns["api_invocation_time"] = pa.array(invoked, type=pa.int64()).cast(millis)
    columns["is_deleted"] = pa.array([row["is_deleted"] for row in rows], type=pa.bool_())
    return pa.table(columns)


class OfflineWriter:
    """Flushes the journal to S3 about every second, and once more on stop. Rows leave the journal
    only after their Parquet file is uploaded (at-least-once, as the real offline store). Each
    group's files are put as its RoleArn (when IAM is enforced, its policies must allow it); a
    group whose files could not be written is tried again after a wait (RETRY_MAX_SECONDS)."""

    def __init__(
        self,
        records: RecordStore,
        describe: Callable[[str], FeatureGroup | None],
        s3_client: Callable[[str, str | None], Any],
    ) -> None:
        self.records = records
        self.describe = describe
        self.s3_client = s3_client
        # A flush that fails is logged and tried again on the next tick.
        self._flushes = PeriodicWork(self.flush, FLUSH_INTERVAL_SECONDS, "featurestore-offline")
        self._flush_lock = threading.Lock()
        # group key -> (time.monotonic() of its next try, the wait before it), after a failed write
        self._retries: dict[str, tuple[float, float]] = {}

    def start(self) -> None:
        self._flushes.start()

    def stop(self) -> None:
        self._flushes.stop()
        self.flush()

    def flush(self) -> None:
        """Write the journal's rows to S3: those there when the flush starts, so that steady
        ingestion makes one file per partition and tick."""
        with self._flush_lock:
            now = time.monotonic()
            waiting = {key for key, (due, _) in self._retries.items() if due > now}
            after, up_to = 0, self.records.last_seq()
            while batch := self.records.pending(after, up_to, FLUSH_BATCH_ROWS, waiting):
                self.records.forget(self._flush_batch(batch, waiting))
                after = batch[-1][0]  # rows of a group that could not be written wait for its next try

    def _flush_batch(self, batch: list[tuple[int, str, str, dict[str, Any]]], waiting: set[str]) -> list[int]:
        """Write a batch's rows by group; a group that fails joins `waiting`, its rows left."""
        by_group: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        for seq, key, name, row in batch:
            by_group[(key, name)].append((seq, row))
        flushed: list[int] = []
        for (key, name), rows in by_group.items():
            group = self.describe(name)
            if group is None or group.key != key or group.offline_uri is None:
                flushed += [seq for seq, _ in rows]  # the group is gone: so is its offline data
                self._retries.pop(key, None)
                continue
            try:
                self._write_group(group, [row for _, row in rows])
            except Exception as exc:  # e.g. the bucket is gone: the rows stay in the journal
                wait = min(2 * self._retries.get(key, (0.0, FLUSH_INTERVAL_SECONDS))[1], RETRY_MAX_SECONDS)
                self._retries[key] = (time.monotonic() + wait, wait)
                waiting.add(key)  # its later rows too, in this flush
                log.warning("could not write offline records of feature group %s (will retry in %.0f s): %s",
                            name, wait, exc)
                continue
            self._retries.pop(key, None)
            flushed += [seq for seq, _ in rows]
        return flushed

    def _write_group(self, group: FeatureGroup, rows: list[dict[str, Any]]) -> None:
        written_at = dt.datetime.now(dt.UTC)
        by_partition: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_partition[partition_path(row["event_time"])].append(row)
        bucket, _, prefix = (group.offline_uri or "").removeprefix("s3://").partition("/")
        s3 = self.s3_client(group.region, group.role_arn)  # as SageMaker writes it: as the group's role
        for partition, partition_rows in by_partition.items():
            buffer = io.BytesIO()
            pq.write_table(to_arrow(group, partition_rows, written_at.timestamp()), buffer)
            name = f"{written_at:%Y%m%dT%H%M%SZ}_{secrets.token_hex(8)}.parquet"
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{partition}/{name}", Body=buffer.getvalue())
