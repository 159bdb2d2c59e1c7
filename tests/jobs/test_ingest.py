"""ingest.py against the local cloud: PutRecord and the offline-only batch write give the same
offline store through Athena, re-runs put only new or changed records, a failing record fails the
job with its identifier and a retry completes it; and the job as a processing job of 2 instances,
each ingesting its shard."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from include.localcloud.server import LocalCloud
from include.pipeline import configs, sql
from include.pipeline.configs import RunLayout
from include.pipeline.settings import Settings
from tests.jobs.conftest import DATA_DIR, JOBS_DIR, preprocess, schema
from tests.jobs.test_processing_job import IMAGE
from tests.localcloud.test_athena import finish, rows_of
from tests.localcloud.test_featurestore import offline_objects, wait_for

RECORDS = 120
EVENT_TIME = 1_700_000_000.0
SETTINGS = Settings(bucket="ingest-tests")
RESULTS = f"s3://{SETTINGS.bucket}/athena/"


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """The first RECORDS processed claims (the preprocess job's output), as CSV rows."""
    folder = raw_claims(tmp_path_factory.mktemp("processed"))
    (output,) = preprocess.preprocess("claims", folder, folder / "out", EVENT_TIME)
    with output.open(newline="") as handle:
        return list(csv.DictReader(handle))


def raw_claims(folder: Path) -> Path:
    """A folder holding claims.csv: the first RECORDS raw claims."""
    raw = (DATA_DIR / "claims.csv").read_text().splitlines()[: RECORDS + 1]
    (folder / "claims.csv").write_text("\n".join(raw) + "\n")
    return folder


def write_records(folder: Path, rows: list[dict[str, str]], name: str = "claims.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def make_group(aws: Callable[..., Any], name: str) -> dict[str, Any]:
    """A claims feature group as the DAG creates it, once Created."""
    sagemaker = aws("sagemaker")
    try:
        aws("s3").create_bucket(Bucket=SETTINGS.bucket)
    except aws("s3").exceptions.BucketAlreadyOwnedByYou:
        pass
    sagemaker.create_feature_group(**configs.feature_group(SETTINGS, name=name, dataset="claims", prefix=name))
    return wait_for(lambda: (found := sagemaker.describe_feature_group(FeatureGroupName=name))
                    ["FeatureGroupStatus"] == "Created" and found)


@pytest.fixture
def ingest(cloud: LocalCloud, tmp_path: Path) -> Callable[..., tuple[subprocess.CompletedProcess, dict | None]]:
    """ingest(group, mode, input_dir, *options) -> (finished process, its summary or None), run as a
    container runs it: its AWS calls reach the local cloud through boto3's default resolution."""

    def run(group: str, mode: str, input_dir: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict | None]:
        base = tmp_path / f"opt-ml-{time.monotonic_ns()}"
        env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "AWS_ENDPOINT_URL": cloud.url,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        done = subprocess.run(
            [sys.executable, str(JOBS_DIR / "ingest.py"), "--feature-group-name", group, "--mode", mode,
             "--input-dir", str(input_dir), "--output-dir", str(base / "out"), *options],
            env=env, capture_output=True, text=True, timeout=120,
        )
        summary = base / "out" / "algo-1.json"
        return done, json.loads(summary.read_text()) if summary.is_file() else None

    return run


def run_query(aws: Callable[..., Any], group: dict[str, Any], text: str) -> tuple[Any, str]:
    athena = aws("athena")
    query_id = athena.start_query_execution(
        QueryString=text,
        QueryExecutionContext={"Database": group["OfflineStoreConfig"]["DataCatalogConfig"]["Database"]},
        ResultConfiguration={"OutputLocation": RESULTS},
    )["QueryExecutionId"]
    done = finish(athena, query_id)
    assert done["Status"]["State"] == "SUCCEEDED", done["Status"].get("StateChangeReason")
    return athena, query_id


def athena_rows(aws: Callable[..., Any], group: dict[str, Any], query: str | None = None) -> list[list[Any]]:
    """The group's offline table through Athena, the header row first."""
    catalog = group["OfflineStoreConfig"]["DataCatalogConfig"]
    text = query or f'SELECT * FROM "{catalog["Database"]}"."{catalog["TableName"]}" ORDER BY policy_id'
    return rows_of(*run_query(aws, group, text))


def column_types(aws: Callable[..., Any], group: dict[str, Any]) -> list[tuple[str, str]]:
    catalog = group["OfflineStoreConfig"]["DataCatalogConfig"]
    athena, query_id = run_query(aws, group, f'SELECT * FROM "{catalog["Database"]}"."{catalog["TableName"]}" LIMIT 1')
    metadata = athena.get_query_results(QueryExecutionId=query_id)["ResultSet"]["ResultSetMetadata"]
    return [(column["Name"], column["Type"]) for column in metadata["ColumnInfo"]]


def without_times(rows: list[list[Any]]) -> list[list[Any]]:
    """Rows without write_time and api_invocation_time, which say when, not what."""
    header = rows[0]
    keep = [i for i, name in enumerate(header) if name not in ("write_time", "api_invocation_time")]
    return [[row[i] for i in keep] for row in rows]


def offline_schema(aws: Callable[..., Any], group: dict[str, Any]) -> Any:
    s3 = aws("s3")
    bucket, key = offline_objects(s3, group)[0].split("/", 1)
    return pq.read_schema(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def test_offline_only_gives_athena_what_put_record_gives(aws, ingest, processed, tmp_path) -> None:
    online, offline = make_group(aws, "ingest-online"), make_group(aws, "ingest-offline")
    records = write_records(tmp_path / "records", processed)

    for group, mode in ((online, "online_and_offline"), (offline, "offline_only")):
        done, summary = ingest(group["FeatureGroupName"], mode, records)
        assert done.returncode == 0, done.stderr
        assert (summary["Records"], summary["Put"], summary["Unchanged"]) == (RECORDS, RECORDS, 0)
        assert summary["MinEventTime"] == 1_700_000_000.0

    wait_for(lambda: len(athena_rows(aws, online)) == RECORDS + 1)  # PutRecord's offline store: within a second
    put_rows, batch_rows = athena_rows(aws, online), athena_rows(aws, offline)
    assert without_times(batch_rows) == without_times(put_rows)
    assert len(batch_rows) == RECORDS + 1 and batch_rows[0][-3:] == ["write_time", "api_invocation_time", "is_deleted"]
    assert column_types(aws, offline) == column_types(aws, online)
    assert offline_schema(aws, offline) == offline_schema(aws, online)
    # The same layout under each group's resolved URI: year=/month=/day=/hour= partitions of the event time.
    for group in (online, offline):
        resolved = group["OfflineStoreConfig"]["S3StorageConfig"]["ResolvedOutputS3Uri"].removeprefix("s3://")
        keys = offline_objects(aws("s3"), group)  # PutRecord's flushes may write more than one file
        assert keys and all(key.startswith(f"{resolved}/year=2023/month=11/day=14/hour=22/")
                            and key.endswith(".parquet") for key in keys)
    # The online store holds nothing of the offline-only ingestion.
    runtime = aws("sagemaker-featurestore-runtime")
    assert "Record" not in runtime.get_record(FeatureGroupName=offline["FeatureGroupName"],
                                              RecordIdentifierValueAsString=processed[0]["policy_id"])


def test_a_rerun_puts_only_new_or_changed_records(aws, ingest, processed, tmp_path) -> None:
    group = make_group(aws, "ingest-rerun")
    name = group["FeatureGroupName"]
    done, summary = ingest(name, "online_and_offline", write_records(tmp_path / "first", processed))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: len(athena_rows(aws, group)) == RECORDS + 1)

    # The next run: same features, a later event time (the DAG stamps a run's records with its time).
    later = [{**row, "event_time": "1700003600.0"} for row in processed]
    done, summary = ingest(name, "online_and_offline", write_records(tmp_path / "same", later))
    assert done.returncode == 0, done.stderr
    assert (summary["Put"], summary["Unchanged"], summary["MinEventTime"]) == (0, RECORDS, None)
    changed = [dict(row) for row in later]
    for mode, index, new_id in (("online_and_offline", 3, "999001"), ("offline_only", 5, "999002")):
        changed[index]["total_claim_amount"] = "99999.5"
        changed.append({**changed[0], "policy_id": new_id})
        done, summary = ingest(name, mode, write_records(tmp_path / f"changed-{mode}", changed))
        assert done.returncode == 0, done.stderr
        assert (summary["Put"], summary["Unchanged"]) == (2, len(changed) - 2), mode
        if mode == "online_and_offline":
            wait_for(lambda: len(athena_rows(aws, group)) == RECORDS + 3)
    # The offline store holds each version once; the dataset's latest record is the change.
    assert len(athena_rows(aws, group)) == RECORDS + 5
    stored = aws("sagemaker-featurestore-runtime").get_record(
        FeatureGroupName=name, RecordIdentifierValueAsString=processed[3]["policy_id"])["Record"]
    assert {i["FeatureName"]: i["ValueAsString"] for i in stored}["total_claim_amount"] == "99999.5"


def test_failed_records_fail_the_job_and_a_retry_completes_it(aws, ingest, processed, tmp_path) -> None:
    group = make_group(aws, "ingest-retry")
    name = group["FeatureGroupName"]
    broken = [dict(row) for row in processed]
    for index in (10, 20, 30, 40, 50, 61):  # 61: in the second process's stripe
        broken[index]["num_injuries"] = "many"
    for mode in ("online_and_offline", "offline_only"):
        # online_and_offline from 2 processes: their failures are gathered, in input order.
        done, summary = ingest(name, mode, write_records(tmp_path / f"broken-{mode}", broken), "--processes", "2")
        assert done.returncode == 1 and summary is None
        ids = ", ".join(processed[i]["policy_id"] for i in (10, 20, 30, 40, 50))
        assert f"6 of {RECORDS} records failed to ingest into {name} (record identifiers {ids} and 1 more)" in (
            done.stderr), done.stderr
        assert "num_injuries" in done.stderr
    wait_for(lambda: len(athena_rows(aws, group)) == RECORDS - 6 + 1)  # the good ones, put online

    done, summary = ingest(name, "online_and_offline", write_records(tmp_path / "fixed", processed), "--processes", "2")
    assert done.returncode == 0, done.stderr
    assert (summary["Put"], summary["Unchanged"]) == (6, RECORDS - 6)
    wait_for(lambda: len(athena_rows(aws, group)) == RECORDS + 1)
    # The dataset step's latest-record ranking gives one row per policy.
    catalog = group["OfflineStoreConfig"]["DataCatalogConfig"]
    latest = sql._latest_records(catalog["Database"], catalog["TableName"])
    counted = athena_rows(aws, group, f"SELECT count(*), count(DISTINCT policy_id) FROM ({latest}) WHERE {sql.RANK} = 1")
    assert counted[1] == [str(RECORDS), str(RECORDS)]


def test_bad_arguments_and_files_are_named(aws, ingest, processed, tmp_path) -> None:
    group = make_group(aws, "ingest-bad-input")
    done, _ = ingest(group["FeatureGroupName"], "offline_only", tmp_path / "nowhere")
    assert done.returncode == 1 and "--input-dir: directory" in done.stderr and "Traceback" not in done.stderr
    extra = [{**row, "colour": "red"} for row in processed[:3]]
    folder = write_records(tmp_path / "extra", processed[3:], "part-0.csv")
    write_records(folder, extra, "part-1.csv")
    for mode in ("offline_only", "online_and_offline"):
        done, _ = ingest(group["FeatureGroupName"], mode, folder)
        assert done.returncode == 1, mode
        assert f"part-1.csv: columns colour are not features of {group['FeatureGroupName']}" in done.stderr
        if mode == "offline_only":  # nothing of the good file read before the bad one: nothing half-done
            assert offline_objects(aws("s3"), group) == []


def test_the_job_of_two_instances_ingests_a_shard_on_each(aws, processed, tmp_path) -> None:
    """The DAG's ingest job request, 2 instances, on data prep's 2 part files: each host puts
    the records of its own file, half of them."""
    group = make_group(aws, "ingest-sharded")
    layout = RunLayout(f"s3://{SETTINGS.bucket}/sharded")
    s3, sagemaker = aws("s3"), aws("sagemaker")
    for script in JOBS_DIR.glob("*.py"):
        s3.upload_file(str(script), SETTINGS.bucket, f"sharded/code/{script.name}")
    bucket, prefix = layout.processed("claims").removeprefix("s3://").split("/", 1)
    for path in preprocess.preprocess("claims", raw_claims(tmp_path), tmp_path / "out", EVENT_TIME, parts=2):
        s3.upload_file(str(path), bucket, f"{prefix}{path.name}")
    request = configs.ingest_job(SETTINGS, layout, name="ingest-sharded-job", dataset="claims",
                                 feature_group_name=group["FeatureGroupName"], mode="online_and_offline",
                                 instance_type="ml.m5.large", instance_count=2)
    request["AppSpecification"]["ImageUri"] = IMAGE
    sagemaker.create_processing_job(**request)
    job = wait_for(lambda: (found := sagemaker.describe_processing_job(ProcessingJobName="ingest-sharded-job"))
                   ["ProcessingJobStatus"] not in ("InProgress", "Stopping") and found, timeout=120)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")

    bucket, prefix = layout.ingestion("claims").removeprefix("s3://").split("/", 1)
    summaries = {host: json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}{host}.json")["Body"].read())
                 for host in ("algo-1", "algo-2")}
    # ShardedByS3Key: algo-1 has part 0 (rows 1, 3, ...), algo-2 part 1.
    assert summaries["algo-1"]["Put"] == summaries["algo-2"]["Put"] == RECORDS // 2
    assert sum(s["Records"] for s in summaries.values()) == RECORDS
    runtime = aws("sagemaker-featurestore-runtime")
    for row in processed[:5]:
        stored = runtime.get_record(FeatureGroupName=group["FeatureGroupName"],
                                    RecordIdentifierValueAsString=row["policy_id"])["Record"]
        assert {i["FeatureName"]: i["ValueAsString"] for i in stored} == row
    assert set(processed[0]) == set(schema.COLUMNS["claims"])
