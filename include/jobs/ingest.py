"""Feature Store ingestion of processed records (a processing job script).

    python3 ingest.py --feature-group-name NAME [--mode online_and_offline|offline_only]
                      [--input-dir DIR] [--output-dir DIR] [--workers N] [--processes N]
                      [--max-attempts N]

Streams the CSV files (header first, columns named as the group's features) of <input-dir>, this
host's shard of the records, in bounded memory. Records whose online record holds the same
feature values (event time aside) are skipped, so a re-run on unchanged data, or a retry after a
failure, puts only new or changed records. The others go, by mode:

- online_and_offline: PutRecord, `--workers` calls at once in each of `--processes` processes
  (each takes every Nth record), as the SageMaker SDK's ingestion manager can spread its calls
  over processes. The default is one: with this client's configuration boto3 spends about 0.7 ms
  of CPU a call, so one interpreter sends about 1,400 calls/s, and on 2 cores shared with the
  local cloud, 2 processes cost 30 % more client and 25 % more server CPU a record, and were
  slower; give more on an instance whose CPUs are the job's own (botocore's standard retry mode
  retries throttled and failed calls with exponential back-off, up to `--max-attempts` tries a record);
- offline_only: a batch write of the offline store, as the Feature Store Spark connector's
  OfflineStore target does: Parquet files in the group's offline-store S3 layout
  (<resolved uri>/year=/month=/day=/hour=/), with the columns Feature Store adds (write_time,
  api_invocation_time, is_deleted), under the Glue table the group registered.

Writes <output-dir>/<host>.json: {"Records", "Put", "Unchanged", "MinEventTime", ...}. Records
that still fail end the job Failed (exit 1, /opt/ml/output/failure) with their count and the
first identifiers. The AWS clients resolve their endpoint, region and credentials as boto3 does.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import math
import multiprocessing
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore
import checks
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from checks import InvalidInput

BASE_DIR = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
MODES = ("online_and_offline", "offline_only")
LOOKUP_BATCH = 100  # identifiers per BatchGetRecord call, its limit
ROW_GROUP_ROWS = 10_000  # offline-store rows held before they are written to their Parquet file
SHOWN_FAILURES = 5
ARROW_TYPES = {"Integral": pa.int64(), "Fractional": pa.float64(), "String": pa.string()}
MILLIS = pa.timestamp("ms")
USER_AGENT = f"Boto3/{boto3.__version__} Botocore/{botocore.__version__} fraud-ingest-job"
T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """What ingestion needs of a DescribeFeatureGroup answer."""

    name: str
    record_identifier: str
    event_time_feature: str
    features: dict[str, str]  # name -> FeatureType, in definition order
    online: bool
    offline_uri: str | None  # ResolvedOutputS3Uri

    @classmethod
    def describe(cls, sagemaker: Any, name: str) -> Group:
        body = sagemaker.describe_feature_group(FeatureGroupName=name)
        if body["FeatureGroupStatus"] != "Created":
            raise InvalidInput(f"--feature-group-name: feature group {name} is {body['FeatureGroupStatus']}")
        offline = (body.get("OfflineStoreConfig") or {}).get("S3StorageConfig", {}).get("ResolvedOutputS3Uri")
        return cls(
            name=name,
            record_identifier=body["RecordIdentifierFeatureName"],
            event_time_feature=body["EventTimeFeatureName"],
            features={d["FeatureName"]: d["FeatureType"] for d in body["FeatureDefinitions"]},
            online=bool((body.get("OnlineStoreConfig") or {}).get("EnableOnlineStore")),
            offline_uri=offline.rstrip("/") if offline else None,
        )

    def typed(self, name: str, text: str) -> int | float | str:
        """The value as its feature type holds it; ValueError when it is not one."""
        kind = self.features[name]
        if kind == "Integral" and checks.INTEGER_PATTERN.fullmatch(text):
            return int(text)
        if kind == "Fractional" and checks.NUMBER_PATTERN.fullmatch(text):
            return float(text)
        if kind == "String":
            return text
        raise ValueError(f"value {text[:100]!r} of feature {name} is not a valid {kind} value")

    def event_time(self, text: str) -> float:
        """Epoch seconds of an event time (Fractional seconds, or ISO-8601 with Z)."""
        if self.features[self.event_time_feature] == "String":
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        value = float(self.typed(self.event_time_feature, text))
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"event time {text!r} is not valid epoch seconds")
        return value

    def same_features(self, record: dict[str, str], stored: list[dict[str, str]]) -> bool:
        """Whether the online record holds the same values, the event time aside."""
        stored_values = {item["FeatureName"]: item.get("ValueAsString") for item in stored}
        names = (set(record) | set(stored_values)) - {self.event_time_feature}
        try:
            return all(
                name in record and name in stored_values
                and self.typed(name, record[name]) == self.typed(name, stored_values[name])
                for name in names
            )
        except (ValueError, KeyError):
            return False


@dataclass
class Outcome:
    records: int = 0
    put: int = 0
    unchanged: int = 0
    min_event_time: float | None = None
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (position in the input, identifier, why)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def succeeded(self, event_time: float, records: int = 1) -> None:
        """`records` put, the earliest with this event time."""
        with self.lock:
            self.put += records
            self.min_event_time = event_time if self.min_event_time is None else min(self.min_event_time, event_time)

    def fail(self, position: int, identifier: str, why: str) -> None:
        with self.lock:
            self.failed.append((position, identifier, why))

    def add(self, other: Outcome) -> None:
        """Another outcome (an ingesting process's) counted in this one."""
        with self.lock:
            self.records += other.records
            self.unchanged += other.unchanged
            self.failed += other.failed
        if other.min_event_time is not None:
            self.succeeded(other.min_event_time, other.put)

    def __getstate__(self) -> dict[str, Any]:  # an ingesting process's outcome, sent back: no lock
        return {name: value for name, value in vars(self).items() if name != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state, lock=threading.Lock())


def read_records(input_dir: Path, group: Group) -> Iterator[dict[str, str]]:
    """The rows of every CSV file under input_dir, one at a time, as {feature: value text}."""
    if not input_dir.is_dir():
        raise InvalidInput(f"--input-dir: directory {input_dir} does not exist")
    for path in sorted(input_dir.rglob("*.csv")):
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = csv.reader(handle)
            header = next(rows, None)
            if header is None:
                continue
            unknown = [name for name in header if name not in group.features]
            missing = [name for name in (group.record_identifier, group.event_time_feature) if name not in header]
            if unknown or missing:
                problems = ([f"columns {checks.listing(unknown)} are not features of {group.name}"] if unknown
                            else []) + ([f"missing columns {checks.listing(missing)}"] if missing else [])
                raise InvalidInput(f"{path.name}: " + "; ".join(problems))
            for number, row in enumerate(rows, 1):
                if not row:
                    continue
                if len(row) != len(header):
                    raise InvalidInput(f"{path.name}: wrong number of fields at row {number} "
                                       f"(the header has {len(header)})")
                yield dict(zip(header, row, strict=True))


def batches(items: Iterator[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def unchanged_records(runtime: Any, group: Group, batch: list[tuple[int, dict[str, str]]]) -> set[int]:
    """The positions of the records of a batch of (position, record) whose online record holds
    the same feature values."""
    if not group.online:
        return set()
    wanted = list(dict.fromkeys(record[group.record_identifier] for _, record in batch))
    stored: dict[str, list[dict[str, str]]] = {}
    while wanted:
        answer = runtime.batch_get_record(
            Identifiers=[{"FeatureGroupName": group.name, "RecordIdentifiersValueAsString": wanted}]
        )
        if answer.get("Errors"):
            error = answer["Errors"][0]
            raise RuntimeError(f"BatchGetRecord on {group.name} failed for record "
                               f"{error['RecordIdentifierValueAsString']}: {error['ErrorCode']}: {error['ErrorMessage']}")
        stored.update({found["RecordIdentifierValueAsString"]: found["Record"] for found in answer["Records"]})
        wanted = [value for unprocessed in answer.get("UnprocessedIdentifiers", [])
                  for value in unprocessed["RecordIdentifiersValueAsString"]]
    return {position for position, record in batch if record[group.record_identifier] in stored
            and group.same_features(record, stored[record[group.record_identifier]])}


class OnlineWriter:
    """PutRecord calls on a thread pool, at most `workers` running and a lookup batch and `workers`
    more waiting: memory stays bounded however many records stream in, and a batch's records are
    put while the next batch's BatchGetRecord is under way (with room for only `workers` waiting,
    the pool ran dry during each lookup)."""

    def __init__(self, runtime: Any, group: Group, workers: int, outcome: Outcome) -> None:
        self.runtime, self.group, self.outcome = runtime, group, outcome
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="put-record")
        self.room = threading.BoundedSemaphore(LOOKUP_BATCH + 2 * workers)

    def write(self, record: dict[str, str], position: int) -> None:
        self.room.acquire()
        self.pool.submit(self._put, record, position).add_done_callback(lambda _: self.room.release())

    def _put(self, record: dict[str, str], position: int) -> None:
        identifier = record[self.group.record_identifier]
        try:
            event_time = self.group.event_time(record[self.group.event_time_feature])
            self.runtime.put_record(
                FeatureGroupName=self.group.name,
                Record=[{"FeatureName": name, "ValueAsString": value} for name, value in record.items()],
            )
        except (ClientError, BotoCoreError, ValueError) as error:
            self.outcome.fail(position, identifier, str(error))
            return
        self.outcome.succeeded(event_time)

    def close(self, complete: bool) -> None:
        """Wait for the calls under way (a PutRecord made is made, complete or not)."""
        self.pool.shutdown(wait=True)


def partition_path(event_time: float) -> str:
    moment = dt.datetime.fromtimestamp(event_time, dt.UTC)
    return f"year={moment:%Y}/month={moment:%m}/day={moment:%d}/hour={moment:%H}"


class OfflineWriter:
    """Offline-store rows written as PutRecord's offline store writes them: one Parquet file per
    event-time hour partition, features in definition order with their types, then write_time,
    api_invocation_time and is_deleted. Files are written aside, in row groups, and uploaded when
    every record is in: a failed job uploads nothing."""

    def __init__(self, s3: Any, group: Group, outcome: Outcome, scratch: Path) -> None:
        if group.offline_uri is None:
            raise InvalidInput(f"--mode offline_only: feature group {group.name} has no offline store")
        self.s3, self.group, self.outcome, self.scratch = s3, group, outcome, scratch
        self.schema = pa.schema(
            [(name, ARROW_TYPES[kind]) for name, kind in group.features.items()]
            + [("write_time", MILLIS), ("api_invocation_time", MILLIS), ("is_deleted", pa.bool_())]
        )
        self.pending: dict[str, list[tuple[dict[str, Any], float]]] = {}
        self.writers: dict[str, tuple[Path, pq.ParquetWriter]] = {}
        self.written: list[tuple[int, float]] = []  # (rows, earliest event time) of each row group

    def write(self, record: dict[str, str], position: int) -> None:
        identifier = record[self.group.record_identifier]
        try:
            values = {name: self.group.typed(name, text) for name, text in record.items()}
            event_time = self.group.event_time(record[self.group.event_time_feature])
        except ValueError as error:
            self.outcome.fail(position, identifier, str(error))
            return
        rows = self.pending.setdefault(partition_path(event_time), [])
        rows.append((values, event_time))
        if len(rows) >= ROW_GROUP_ROWS:
            self._flush(partition_path(event_time))

    def _flush(self, partition: str) -> None:
        rows = self.pending.pop(partition, [])
        if not rows:
            return
        if partition not in self.writers:
            path = self.scratch / f"{len(self.writers)}.parquet"
            self.writers[partition] = (path, pq.ParquetWriter(path, self.schema))
        now_ms = int(time.time() * 1000)
        columns = [pa.array([values.get(name) for values, _ in rows], type=ARROW_TYPES[kind])
                   for name, kind in self.group.features.items()]
        columns += [pa.array([now_ms] * len(rows), type=pa.int64()).cast(MILLIS),
                    pa.array([now_ms] * len(rows), type=pa.int64()).cast(MILLIS),
                    pa.array([False] * len(rows), type=pa.bool_())]
        self.writers[partition][1].write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self.written.append((len(rows), min(event_time for _, event_time in rows)))

    def close(self, complete: bool) -> None:
        """Finish the files; upload them only when every record was read and none failed."""
        for partition in list(self.pending) if complete else ():
            self._flush(partition)
        for _, writer in self.writers.values():
            writer.close()
        if not complete or self.outcome.failed:
            return
        bucket, _, prefix = (self.group.offline_uri or "").removeprefix("s3://").partition("/")
        stamp = dt.datetime.now(dt.UTC)
        for partition, (path, _) in self.writers.items():
            key = f"{prefix}/{partition}/{stamp:%Y%m%dT%H%M%SZ}_{secrets.token_hex(8)}.parquet"
            self.s3.upload_file(str(path), bucket, key)
        for records, event_time in self.written:
            self.outcome.succeeded(event_time, records)


def current_host() -> str:
    """This instance's name, from the container contract's resource config."""
    config = BASE_DIR / "config" / "resourceconfig.json"
    return json.loads(config.read_text())["current_host"] if config.is_file() else "algo-1"


def ingest(group: Group, mode: str, input_dir: Path, runtime: Any, s3: Any, workers: int,
           stripe: tuple[int, int] = (0, 1)) -> Outcome:
    """Ingest the records of input_dir, or of `stripe` (index, count) every count-th from index."""
    outcome = Outcome()
    numbered = itertools.islice(enumerate(read_records(input_dir, group)), stripe[0], None, stripe[1])
    with tempfile.TemporaryDirectory() as scratch:
        writer = OnlineWriter(runtime, group, workers, outcome) if mode == "online_and_offline" \
            else OfflineWriter(s3, group, outcome, Path(scratch))
        try:
            for batch in batches(numbered, LOOKUP_BATCH):
                outcome.records += len(batch)
                unchanged = unchanged_records(runtime, group, batch)
                for position, record in batch:
                    if position in unchanged:
                        outcome.unchanged += 1
                    else:
                        writer.write(record, position)
        except BaseException:
            writer.close(complete=False)
            raise
        writer.close(complete=True)
    return outcome


def client_config(args: argparse.Namespace) -> Config:
    # No client-side parameter validation: the service validates every request against the same
    # model, and botocore's check of a record's features costs 0.15 ms of CPU a call. A fixed
    # User-Agent: botocore otherwise rebuilds and sanitizes its own, character by character,
    # twice a call (a tenth of the client's CPU a PutRecord).
    return Config(retries={"mode": "standard", "total_max_attempts": args.max_attempts},
                  max_pool_connections=args.workers, parameter_validation=False, user_agent=USER_AGENT)


def ingest_stripe(group: Group, args: argparse.Namespace, stripe: tuple[int, int]) -> Outcome:
    """One process's share of online_and_offline ingestion (in a process of its own)."""
    runtime = boto3.client("sagemaker-featurestore-runtime", config=client_config(args))
    return ingest(group, args.mode, args.input_dir, runtime, None, args.workers, stripe)


def ingest_in_processes(group: Group, args: argparse.Namespace) -> Outcome:
    """online_and_offline ingestion on args.processes processes, each its stripe of the records."""
    total = Outcome()
    context = multiprocessing.get_context("spawn")  # no fork of a process with boto3's threads
    with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        stripes = [pool.submit(ingest_stripe, group, args, (index, args.processes)) for index in range(args.processes)]
        for stripe in stripes:
            total.add(stripe.result())
    return total


def failure_message(group: Group, outcome: Outcome) -> str:
    failed = sorted(outcome.failed)  # in input order, whichever thread or process put them
    identifiers = [identifier for _, identifier, _ in failed]
    return (f"{len(failed)} of {outcome.records} records failed to ingest into {group.name} "
            f"(record identifiers {checks.listing(identifiers, SHOWN_FAILURES)}): {failed[0][2]}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feature-group-name", required=True)
    parser.add_argument("--mode", choices=MODES, default=MODES[0])
    parser.add_argument("--input-dir", type=Path, default=BASE_DIR / "processing" / "input" / "records")
    parser.add_argument("--output-dir", type=Path, default=BASE_DIR / "processing" / "output")
    parser.add_argument("--workers", type=int, default=8, help="concurrent PutRecord calls per process")
    parser.add_argument("--processes", type=int, default=1,
                        help="processes putting records (online_and_offline)")
    parser.add_argument("--max-attempts", type=int, default=5, help="tries of a record before it fails")
    args = parser.parse_args(argv)
    for name in ("workers", "processes", "max_attempts"):
        if getattr(args, name) < 1:
            raise InvalidInput(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    group = Group.describe(boto3.client("sagemaker"), args.feature_group_name)
    started = time.monotonic()
    if args.mode == "online_and_offline" and args.processes > 1:
        outcome = ingest_in_processes(group, args)
    else:
        runtime = boto3.client("sagemaker-featurestore-runtime", config=client_config(args))
        outcome = ingest(group, args.mode, args.input_dir, runtime, boto3.client("s3"), args.workers)
    seconds = time.monotonic() - started
    host = current_host()
    summary = {
        "FeatureGroupName": group.name, "Mode": args.mode, "Host": host, "Records": outcome.records,
        "Put": outcome.put, "Unchanged": outcome.unchanged, "Failed": len(outcome.failed),
        "MinEventTime": outcome.min_event_time, "Seconds": round(seconds, 3),
    }
    print(json.dumps(summary))
    if outcome.failed:
        message = failure_message(group, outcome)
        failure = BASE_DIR / "output" / "failure"
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_text(message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{host}.json").write_text(json.dumps(summary))
    print(f"ingested {outcome.put} records into {group.name} ({outcome.unchanged} unchanged) "
          f"at {outcome.records / max(seconds, 1e-9):.0f} records/s")


if __name__ == "__main__":
    checks.run(main)
