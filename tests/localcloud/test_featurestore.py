"""The Feature Store runtime through boto3: records in the online store (latest event time wins,
deletes, TTL), validation as AWS does it, and the offline store's Parquet files in S3."""

from __future__ import annotations

import io
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from include.localcloud.featurestore.models import FLUSH_INTERVAL_SECONDS
from include.localcloud.featurestore.responses import FeatureStoreRuntimeResponse
from include.localcloud.server import LocalCloud
from tests.conftest import make_client

BUCKET = "featurestore-tests"
FEATURES = [
    {"FeatureName": "policy_id", "FeatureType": "Integral"},
    {"FeatureName": "event_time", "FeatureType": "Fractional"},
    {"FeatureName": "total_claim_amount", "FeatureType": "Fractional"},
    {"FeatureName": "incident_type", "FeatureType": "String"},
    {"FeatureName": "num_injuries", "FeatureType": "Integral"},
]


def create_group(
    sagemaker: Any,
    s3: Any,
    prefix: str = "claims",
    features: list[dict[str, str]] | None = None,
    online: bool = True,
    offline: bool = True,
    name: str | None = None,
    bucket: str = BUCKET,
    role_arn: str = "arn:aws:iam::123456789012:role/featurestore",
) -> dict[str, Any]:
    """A feature group made through the control plane, once Created; returns its description."""
    name = name or f"{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    config: dict[str, Any] = {"OnlineStoreConfig": {"EnableOnlineStore": online}}
    if offline:
        config["OfflineStoreConfig"] = {"S3StorageConfig": {"S3Uri": f"s3://{bucket}/offline"}}
    sagemaker.create_feature_group(
        FeatureGroupName=name,
        RecordIdentifierFeatureName="policy_id",
        EventTimeFeatureName="event_time",
        FeatureDefinitions=features or FEATURES,
        RoleArn=role_arn,
        **config,
    )
    deadline = time.monotonic() + 20
    while (description := sagemaker.describe_feature_group(FeatureGroupName=name))["FeatureGroupStatus"] == "Creating":
        assert time.monotonic() < deadline, f"feature group {name} still Creating"
        time.sleep(0.05)
    assert description["FeatureGroupStatus"] == "Created", description.get("FailureReason")
    return description


def record(**values: Any) -> list[dict[str, str]]:
    return [{"FeatureName": name, "ValueAsString": str(value)} for name, value in values.items()]


def claim(policy_id: int, event_time: float, amount: float = 100.5, kind: str = "collision") -> list[dict[str, str]]:
    return record(policy_id=policy_id, event_time=event_time, total_claim_amount=amount, incident_type=kind,
                  num_injuries=policy_id % 3)


def as_dict(items: list[dict[str, str]]) -> dict[str, str]:
    return {item["FeatureName"]: item["ValueAsString"] for item in items}


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll until check() is truthy (the offline store is written about every second)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return result


def offline_objects(s3: Any, group: dict[str, Any]) -> list[str]:
    uri = group["OfflineStoreConfig"]["S3StorageConfig"]["ResolvedOutputS3Uri"]
    bucket, prefix = uri[len("s3://"):].split("/", 1)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return [f"{bucket}/{o['Key']}" for page in pages for o in page.get("Contents", [])]


def read_offline(s3: Any, group: dict[str, Any]) -> pa.Table:
    tables = []
    for path in offline_objects(s3, group):
        bucket, key = path.split("/", 1)
        tables.append(pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())))
    return pa.concat_tables(tables) if tables else pa.table({})


@pytest.fixture
def group(aws) -> dict[str, Any]:
    return create_group(aws("sagemaker"), aws("s3"))


def error_of(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response


def test_put_and_get_record_with_feature_filter(aws, group) -> None:
    fs = aws("sagemaker-featurestore-runtime")
    name = group["FeatureGroupName"]
    now = time.time()
    fs.put_record(FeatureGroupName=name, Record=claim(1, now, 250.75, "theft"))
    found = fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString="1")
    assert as_dict(found["Record"]) == as_dict(claim(1, now, 250.75, "theft"))
    some = fs.get_record(
        FeatureGroupName=name, RecordIdentifierValueAsString="1", FeatureNames=["incident_type", "policy_id"]
    )
    assert as_dict(some["Record"]) == {"policy_id": "1", "incident_type": "theft"}
    assert "Record" not in fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString="2")
    by_arn = fs.put_record(FeatureGroupName=group["FeatureGroupArn"], Record=claim(2, now))
    assert by_arn["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_online_store_keeps_the_latest_event_time(aws, group) -> None:
    fs = aws("sagemaker-featurestore-runtime")
    name = group["FeatureGroupName"]

    def amount() -> str:
        found = fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString="7")
        return as_dict(found["Record"])["total_claim_amount"]

    fs.put_record(FeatureGroupName=name, Record=claim(7, 2000.0, amount=1.0))
    fs.put_record(FeatureGroupName=name, Record=claim(7, 1000.0, amount=2.0))  # historic: offline only
    assert amount() == "1.0"
    fs.put_record(FeatureGroupName=name, Record=claim(7, 3000.0, amount=3.0))
    assert amount() == "3.0"
    fs.put_record(FeatureGroupName=name, Record=claim(7, 4000.0, amount=4.0), TargetStores=["OfflineStore"])
    assert amount() == "3.0"


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"policy_id": 1, "event_time": 1.0, "colour": "red"}, "colour"),
        ({"event_time": 1.0, "incident_type": "theft"}, "policy_id"),
        ({"policy_id": 1, "incident_type": "theft"}, "event_time"),
        ({"policy_id": "one", "event_time": 1.0}, "Integral"),
        ({"policy_id": 1, "event_time": 1.0, "num_injuries": 1.5}, "Integral"),
        ({"policy_id": 1, "event_time": 1.0, "total_claim_amount": "lots"}, "Fractional"),
        ({"policy_id": 1, "event_time": "yesterday"}, "event_time"),
    ],
)
def test_put_record_validation(aws, group, features, message) -> None:
    fs = aws("sagemaker-featurestore-runtime")
    response = error_of(lambda: fs.put_record(FeatureGroupName=group["FeatureGroupName"], Record=record(**features)))
    assert response["Error"]["Code"] == "ValidationError"
    assert message in response["Error"]["Message"]


def test_validation_of_duplicates_groups_and_stores(aws, group) -> None:
    fs = aws("sagemaker-featurestore-runtime")
    name = group["FeatureGroupName"]
    twice = claim(1, 1.0) + record(policy_id=2)
    assert "more than once" in error_of(lambda: fs.put_record(FeatureGroupName=name, Record=twice))["Error"]["Message"]
    missing = error_of(lambda: fs.put_record(FeatureGroupName="no-such-group", Record=claim(1, 1.0)))
    assert missing["Error"]["Code"] == "ValidationError"
    assert "can't find a FeatureGroup" in missing["Error"]["Message"]
    missing = error_of(lambda: fs.get_record(FeatureGroupName="no-such-group", RecordIdentifierValueAsString="1"))
    assert (missing["Error"]["Code"], missing["ResponseMetadata"]["HTTPStatusCode"]) == ("ResourceNotFound", 404)
    unknown = error_of(
        lambda: fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString="1", FeatureNames=["colour"])
    )
    assert "colour" in unknown["Error"]["Message"]
    # botocore's own model checks (here a name too long) answer the same way
    long_name = aws("sagemaker-featurestore-runtime", parameter_validation=False)
    too_long = error_of(lambda: long_name.put_record(FeatureGroupName="x" * 200, Record=claim(1, 1.0)))
    assert too_long["Error"]["Code"] == "ValidationError"

    offline_only = create_group(aws("sagemaker"), aws("s3"), online=False)["FeatureGroupName"]
    disabled = error_of(lambda: fs.get_record(FeatureGroupName=offline_only, RecordIdentifierValueAsString="1"))
    assert disabled["Error"]["Code"] == "ValidationError"
    assert "OnlineStore is not enabled" in disabled["Error"]["Message"]
    wrong_store = error_of(
        lambda: fs.put_record(FeatureGroupName=offline_only, Record=claim(1, 1.0), TargetStores=["OnlineStore"])
    )
    assert "OnlineStore is not enabled" in wrong_store["Error"]["Message"]


def test_iso_event_times(aws) -> None:
    features = [{"FeatureName": "policy_id", "FeatureType": "String"},
                {"FeatureName": "event_time", "FeatureType": "String"}]
    group = create_group(aws("sagemaker"), aws("s3"), "iso", features)
    fs = aws("sagemaker-featurestore-runtime")
    name = group["FeatureGroupName"]
    fs.put_record(FeatureGroupName=name, Record=record(policy_id="a", event_time="2024-01-05T10:00:00Z"))
    fs.put_record(FeatureGroupName=name, Record=record(policy_id="a", event_time="2024-01-05T09:59:59.999Z"))
    found = as_dict(fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString="a")["Record"])
    assert found["event_time"] == "2024-01-05T10:00:00Z"
    for bad in ("2024-01-05 10:00:00", "2024-01-05T10:00:00+01:00", "1704448800"):
        response = error_of(lambda bad=bad: fs.put_record(FeatureGroupName=name, Record=record(policy_id="a", event_time=bad)))
        assert "yyyy-MM-dd'T'HH:mm:ssZ" in response["Error"]["Message"]


def test_batch_get_record(aws, group) -> None:
    fs = aws("sagemaker-featurestore-runtime")
    other = create_group(aws("sagemaker"), aws("s3"), "customers")
    for policy_id in (1, 2):
        fs.put_record(FeatureGroupName=group["FeatureGroupName"], Record=claim(policy_id, 10.0))
    fs.put_record(FeatureGroupName=other["FeatureGroupName"], Record=claim(1, 10.0, kind="other"))
    answer = fs.batch_get_record(
        Identifiers=[
            {"FeatureGroupName": group["FeatureGroupName"], "RecordIdentifiersValueAsString": ["1", "2", "3"]},
            {"FeatureGroupName": other["FeatureGroupName"], "RecordIdentifiersValueAsString": ["1"],
             "FeatureNames": ["incident_type"]},
            {"FeatureGroupName": "no-such-group", "RecordIdentifiersValueAsString": ["1"]},
        ]
    )
    found = {(r["FeatureGroupName"], r["RecordIdentifierValueAsString"]): as_dict(r["Record"]) for r in answer["Records"]}
    assert set(found) == {(group["FeatureGroupName"], "1"), (group["FeatureGroupName"], "2"), (other["FeatureGroupName"], "1")}
    assert found[(other["FeatureGroupName"], "1")] == {"incident_type": "other"}
    assert [(e["FeatureGroupName"], e["ErrorCode"]) for e in answer["Errors"]] == [("no-such-group", "ResourceNotFound")]
    assert answer["UnprocessedIdentifiers"] == []


def test_soft_and_hard_delete(aws, group) -> None:
    fs = aws("sagemaker-featurestore-runtime")
    name = group["FeatureGroupName"]

    def present(policy_id: str) -> bool:
        return "Record" in fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString=policy_id)

    fs.put_record(FeatureGroupName=name, Record=claim(1, 100.0))
    fs.delete_record(FeatureGroupName=name, RecordIdentifierValueAsString="1", EventTime="50")  # not later: kept
    assert present("1")
    fs.delete_record(FeatureGroupName=name, RecordIdentifierValueAsString="1", EventTime="200")
    assert not present("1")
    fs.put_record(FeatureGroupName=name, Record=claim(1, 150.0))  # older than the deletion
    assert not present("1")
    fs.put_record(FeatureGroupName=name, Record=claim(1, 300.0))
    assert present("1")

    fs.put_record(FeatureGroupName=name, Record=claim(2, 100.0))
    too_early = error_of(lambda: fs.delete_record(
        FeatureGroupName=name, RecordIdentifierValueAsString="2", EventTime="100", DeletionMode="HardDelete"
    ))
    assert too_early["Error"]["Code"] == "ValidationError"
    assert present("2")
    fs.delete_record(FeatureGroupName=name, RecordIdentifierValueAsString="2", EventTime="101", DeletionMode="HardDelete")
    assert not present("2")
    fs.put_record(FeatureGroupName=name, Record=claim(2, 1.0))  # nothing left to be newer than
    assert present("2")

    bad_time = error_of(lambda: fs.delete_record(FeatureGroupName=name, RecordIdentifierValueAsString="2", EventTime="soon"))
    assert bad_time["Error"]["Code"] == "ValidationError"


def test_time_to_live(aws, group) -> None:
    fs = aws("sagemaker-featurestore-runtime")
    name = group["FeatureGroupName"]
    now = time.time()
    fs.put_record(FeatureGroupName=name, Record=claim(1, now - 60), TtlDuration={"Unit": "Seconds", "Value": 30})
    fs.put_record(FeatureGroupName=name, Record=claim(2, now), TtlDuration={"Unit": "Hours", "Value": 1})
    assert "Record" not in fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString="1")
    found = fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString="2", ExpirationTimeResponse="Enabled")
    expires = time.mktime(time.strptime(found["ExpiresAt"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(expires - (now + 3600)) < 2


def test_offline_store_layout_and_columns(aws, group) -> None:
    fs, s3 = aws("sagemaker-featurestore-runtime"), aws("s3")
    name = group["FeatureGroupName"]
    ten, one_pm = 1704448800.0, 1704459600.5  # 2024-01-05 10:00:00 and 13:00:00.5 UTC
    fs.put_record(FeatureGroupName=name, Record=claim(1, ten, 12.25, "theft"))
    fs.put_record(FeatureGroupName=name, Record=claim(2, one_pm))
    fs.delete_record(FeatureGroupName=name, RecordIdentifierValueAsString="2", EventTime=str(one_pm + 1))
    keys = wait_for(lambda: (found := offline_objects(s3, group)) and len(found) == 2 and found)
    resolved = group["OfflineStoreConfig"]["S3StorageConfig"]["ResolvedOutputS3Uri"][len("s3://"):]
    for key, hour in zip(sorted(keys), ("10", "13"), strict=True):
        layout = rf"{re.escape(resolved)}/year=2024/month=01/day=05/hour={hour}/\d{{8}}T\d{{6}}Z_[0-9a-f]{{16}}\.parquet"
        assert re.fullmatch(layout, key), key
    table = read_offline(s3, group)
    assert table.schema.names == [f["FeatureName"] for f in FEATURES] + ["write_time", "api_invocation_time", "is_deleted"]
    assert [str(t) for t in table.schema.types] == [
        "int64", "double", "double", "string", "int64", "timestamp[ms]", "timestamp[ms]", "bool"
    ]
    rows = sorted(table.to_pylist(), key=lambda r: (r["policy_id"], r["event_time"]))
    assert [(r["policy_id"], r["event_time"], r["is_deleted"]) for r in rows] == [
        (1, ten, False), (2, one_pm, False), (2, one_pm + 1, True)
    ]
    assert (rows[0]["total_claim_amount"], rows[0]["incident_type"]) == (12.25, "theft")
    assert rows[2]["incident_type"] is None and rows[2]["total_claim_amount"] is None
    assert all(r["write_time"] >= r["api_invocation_time"] for r in rows)


def test_concurrent_put_record(aws, group) -> None:
    name = group["FeatureGroupName"]
    errors: list[BaseException] = []

    def ingest(worker: int) -> None:
        fs = aws("sagemaker-featurestore-runtime")
        try:
            for i in range(50):
                fs.put_record(FeatureGroupName=name, Record=claim(worker * 1000 + i, 10.0 + i))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=ingest, args=(w,)) for w in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    fs = aws("sagemaker-featurestore-runtime")
    expected = {str(w * 1000 + i) for w in range(8) for i in range(50)}
    ids = sorted(expected)
    found = set()
    for start in range(0, len(ids), 100):
        answer = fs.batch_get_record(
            Identifiers=[{"FeatureGroupName": name, "RecordIdentifiersValueAsString": ids[start:start + 100]}]
        )
        found |= {r["RecordIdentifierValueAsString"] for r in answer["Records"]}
    assert found == expected
    offline = wait_for(lambda: (table := read_offline(aws("s3"), group)).num_rows == 400 and table)
    assert {str(p) for p in offline.column("policy_id").to_pylist()} == expected


def test_records_survive_restart(tmp_path) -> None:
    with LocalCloud(tmp_path, port=0) as first:
        group = create_group(make_client(first, "sagemaker"), make_client(first, "s3"))
        fs = make_client(first, "sagemaker-featurestore-runtime")
        for policy_id in range(20):
            fs.put_record(FeatureGroupName=group["FeatureGroupName"], Record=claim(policy_id, 5.0))
    # stop() flushed the offline rows still buffered
    with LocalCloud(tmp_path, port=0) as second:
        fs = make_client(second, "sagemaker-featurestore-runtime")
        found = fs.get_record(FeatureGroupName=group["FeatureGroupName"], RecordIdentifierValueAsString="19")
        assert as_dict(found["Record"]) == as_dict(claim(19, 5.0))
        assert read_offline(make_client(second, "s3"), group).num_rows == 20


def test_a_group_created_again_starts_empty(aws, group) -> None:
    fs, sagemaker = aws("sagemaker-featurestore-runtime"), aws("sagemaker")
    name = group["FeatureGroupName"]
    fs.put_record(FeatureGroupName=name, Record=claim(1, 5.0))
    sagemaker.delete_feature_group(FeatureGroupName=name)
    assert error_of(lambda: fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString="1"))
    create_group(sagemaker, aws("s3"), name=name)
    assert "Record" not in fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString="1")


def test_a_feature_added_to_the_group_is_accepted_at_once(aws, group) -> None:
    fs, sagemaker = aws("sagemaker-featurestore-runtime"), aws("sagemaker")
    name = group["FeatureGroupName"]
    fs.put_record(FeatureGroupName=name, Record=claim(1, 5.0))
    with_witness = claim(1, 6.0) + record(witness="yes")
    assert "witness is not defined" in error_of(lambda: fs.put_record(FeatureGroupName=name, Record=with_witness))[
        "Error"]["Message"]
    sagemaker.update_feature_group(FeatureGroupName=name,
                                   FeatureAdditions=[{"FeatureName": "witness", "FeatureType": "String"}])
    fs.put_record(FeatureGroupName=name, Record=with_witness)
    found = fs.get_record(FeatureGroupName=name, RecordIdentifierValueAsString="1")
    assert as_dict(found["Record"])["witness"] == "yes"


def test_offline_rows_wait_in_the_journal_until_s3_takes_them(tmp_path) -> None:
    bucket = f"journal-{uuid.uuid4().hex[:8]}"  # moto's state is shared by every cloud in a process
    with LocalCloud(tmp_path, port=0) as first:
        s3 = make_client(first, "s3")
        group = create_group(make_client(first, "sagemaker"), s3, bucket=bucket)
        s3.delete_bucket(Bucket=bucket)  # the offline store cannot be written now
        fs = make_client(first, "sagemaker-featurestore-runtime")
        for policy_id in range(5):
            fs.put_record(FeatureGroupName=group["FeatureGroupName"], Record=claim(policy_id, 5.0))
        time.sleep(1.5)  # a flush or two fail meanwhile
    with LocalCloud(tmp_path, port=0) as second:
        s3 = make_client(second, "s3")
        s3.create_bucket(Bucket=bucket)
        wait_for(lambda: read_offline(s3, group).num_rows == 5)


def test_a_group_s3_refuses_waits_before_its_rows_are_read_again(tmp_path, monkeypatch) -> None:
    """A group whose offline files cannot be written is tried again after a wait, not on every
    tick: its rows waiting in the journal are not read and made into Parquet each second, a cost
    that grew with them (and with it the server's CPU per record, run after run)."""
    bucket = f"refused-{uuid.uuid4().hex[:8]}"
    with LocalCloud(tmp_path, port=0) as cloud:
        s3 = make_client(cloud, "s3")
        group = create_group(make_client(cloud, "sagemaker"), s3, bucket=bucket)
        s3.delete_bucket(Bucket=bucket)  # the offline store cannot be written now
        writer = next(service.offline for service in cloud.services if isinstance(service, FeatureStoreRuntimeResponse))
        writer.stop()  # flushed by hand below
        tried: list[int] = []
        write = writer._write_group
        monkeypatch.setattr(writer, "_write_group", lambda group, rows: (tried.append(len(rows)), write(group, rows)))
        fs = make_client(cloud, "sagemaker-featurestore-runtime")
        for policy_id in range(5):
            fs.put_record(FeatureGroupName=group["FeatureGroupName"], Record=claim(policy_id, 5.0))
        for _ in range(3):
            writer.flush()
        assert tried == [5]  # the first flush tried; the next ones left its rows unread
        assert len(writer.records.pending(0, writer.records.last_seq(), 100)) == 5
        s3.create_bucket(Bucket=bucket)
        time.sleep(2 * FLUSH_INTERVAL_SECONDS + 0.5)  # past its first wait
        writer.flush()
        assert tried == [5, 5]
        assert read_offline(s3, group).num_rows == 5
        assert writer.records.pending(0, writer.records.last_seq(), 100) == []
