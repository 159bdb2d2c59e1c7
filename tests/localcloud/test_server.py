"""The local cloud's front door: routing, moto delegation, validation, bad requests, durability."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.backends import get_backend
from moto.s3.models import FakeKey

from include.localcloud import server
from include.localcloud.moto_services import (
    PERSISTED_SERVICES,
    BodyStore,
    _SnapshotPickler,
    _SnapshotUnpickler,
)
from include.localcloud.server import LocalCloud
from tests.conftest import make_client


def test_moto_serves_s3_glue_sts_in_any_region(aws) -> None:
    s3 = aws("s3", region="eu-west-1")
    s3.create_bucket(Bucket="front-door", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="front-door", Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket="front-door", Key="a/b.txt")["Body"].read() == b"hello"
    aws("glue", region="eu-west-1").create_database(DatabaseInput={"Name": "front_door"})
    assert aws("sts").get_caller_identity()["Account"] == "123456789012"


def test_requests_are_validated_against_botocore_model(aws) -> None:
    sm = aws("sagemaker", parameter_validation=False)
    with pytest.raises(ClientError) as caught:
        sm.add_tags(ResourceArn="not-an-arn", Tags=[{"Key": "k"}])
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert "resourceArn" in error["Message"]
    assert "tags.1.member.value" in error["Message"]


def test_tags_round_trip(aws) -> None:
    sm = aws("sagemaker")
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model/tagged"
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "team", "Value": "fraud"}])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "fraud"}]
    sm.delete_tags(ResourceArn=arn, TagKeys=["team"])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == []


def test_malformed_and_oversized_bodies_get_4xx_and_server_stays_up(cloud, aws) -> None:
    headers = {
        "X-Amz-Target": "SageMaker.ListTags",
        "Content-Type": "application/x-amz-json-1.1",
        "Authorization": "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/sagemaker/aws4_request, "
        "SignedHeaders=host, Signature=0",
    }
    bad = requests.post(cloud.url, data=b"{not json", headers=headers, timeout=5)
    assert bad.status_code == 400
    assert bad.json()["__type"] == "SerializationException"
    huge = requests.post(cloud.url, data=b"x" * (9 * 1024 * 1024), headers=headers, timeout=10)
    assert huge.status_code == 413
    unknown = requests.post(cloud.url, data=b"{}", headers={**headers, "X-Amz-Target": "SageMaker.Nope"}, timeout=5)
    assert unknown.status_code == 400
    deep = b'{"ResourceArn": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # json's parser would recurse past the stack
    nested = requests.post(cloud.url, data=deep, headers=headers, timeout=10)
    assert (nested.status_code, nested.json()["__type"]) == (400, "SerializationException")
    rest_headers = {"Authorization": headers["Authorization"], "Content-Type": "application/json"}
    nested = requests.put(f"{cloud.url}/FeatureGroup/claims", data=b'{"Record": ' + deep[16:], headers=rest_headers,
                          timeout=10)
    assert nested.status_code == 400 and "nested too deeply" in nested.json()["message"]
    assert aws("sts").get_caller_identity()["Account"] == "123456789012"


def test_state_survives_restart(tmp_path) -> None:
    with LocalCloud(tmp_path, port=0) as first:
        s3 = make_client(first, "s3")
        s3.create_bucket(Bucket="durable")
        s3.put_object(Bucket="durable", Key="k", Body=b"kept")
        make_client(first, "sagemaker").add_tags(
            ResourceArn="arn:aws:sagemaker:us-east-1:123456789012:model/m", Tags=[{"Key": "a", "Value": "b"}]
        )
    with LocalCloud(tmp_path, port=0) as second:
        assert make_client(second, "s3").get_object(Bucket="durable", Key="k")["Body"].read() == b"kept"
        tags = make_client(second, "sagemaker").list_tags(
            ResourceArn="arn:aws:sagemaker:us-east-1:123456789012:model/m"
        )["Tags"]
        assert tags == [{"Key": "a", "Value": "b"}]


def test_snapshots_write_each_s3_body_once(tmp_path) -> None:
    """The snapshot holds S3's metadata; each body is a file of its own, written when it is new and
    removed when no object holds it any more."""
    body = os.urandom(2 * 1024 * 1024)
    stored = tmp_path / "s3-bodies" / hashlib.sha256(body).hexdigest()
    with LocalCloud(tmp_path, port=0) as cloud:
        s3 = make_client(cloud, "s3")
        s3.create_bucket(Bucket="bodies")
        s3.put_object(Bucket="bodies", Key="big", Body=body)
        s3.put_object(Bucket="bodies", Key="same-again", Body=body)
        cloud.moto.save()
        assert stored.read_bytes() == body  # one file for both objects, named by its content
        written = stored.stat().st_ino
        s3.put_object(Bucket="bodies", Key="small", Body=b"new")
        cloud.moto.save()
        assert stored.stat().st_ino == written  # not written again
        assert body[:4096] not in (tmp_path / "moto.pickle").read_bytes()
        s3.delete_object(Bucket="bodies", Key="big")
        s3.delete_object(Bucket="bodies", Key="same-again")
        cloud.moto.save()
        assert not stored.exists()
        s3.put_object(Bucket="bodies", Key="back", Body=body)
    with LocalCloud(tmp_path, port=0) as cloud:
        s3 = make_client(cloud, "s3")
        assert s3.get_object(Bucket="bodies", Key="back")["Body"].read() == body
        assert s3.get_object(Bucket="bodies", Key="small")["Body"].read() == b"new"
        assert [item["Key"] for item in s3.list_objects_v2(Bucket="bodies")["Contents"]] == ["back", "small"]


def test_an_object_deleted_during_a_snapshot_does_not_fail_it(tmp_path) -> None:
    """moto closes a deleted object's body; a snapshot meeting it (the delete raced the snapshot)
    pickles it as moto does, empty, and goes on."""
    kept, deleted, deleting = (FakeKey(name, name.encode(), account_id="123456789012", region_name="us-east-1")
                               for name in ("kept", "deleted", "deleting"))
    deleted.dispose()
    deleting._value_buffer.close()  # dispose() half done: the body closed, the flag not yet set
    bodies = BodyStore(tmp_path)
    snapshot = io.BytesIO()
    _SnapshotPickler(snapshot, bodies).dump([kept, deleted, deleting])
    bodies.write_new()
    restored = _SnapshotUnpickler(io.BytesIO(snapshot.getvalue()), bodies).load()
    assert [key.value for key in restored] == [b"kept", b"", b""]


def test_snapshots_taken_while_parts_are_uploaded_succeed(tmp_path) -> None:
    """A snapshot pickles moto's state while requests change it: it must see the state between
    requests (an upload's dict of parts that a request adds to while pickling walks it failed the
    snapshot: "dictionary changed size during iteration"), and restore to the parts uploaded before
    it began, at least."""
    with LocalCloud(tmp_path, port=0) as cloud:
        s3 = make_client(cloud, "s3", max_pool_connections=4)
        s3.create_bucket(Bucket="busy")
        upload = s3.create_multipart_upload(Bucket="busy", Key="big")["UploadId"]
        uploaded: list[int] = []
        stop = threading.Event()

        def upload_parts(worker: int) -> None:
            for number in range(1 + worker, 10_001, 4):
                if stop.is_set():
                    return
                s3.upload_part(Bucket="busy", Key="big", UploadId=upload, PartNumber=number, Body=b"%d" % number)
                uploaded.append(number)

        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(upload_parts, worker) for worker in range(4)]
            try:
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    before = list(uploaded)
                    cloud.moto.save()
                    taken_while_uploading = (tmp_path / "moto.pickle").read_bytes()
            finally:
                stop.set()
            for worker in workers:
                worker.result()
    (tmp_path / "moto.pickle").write_bytes(taken_while_uploading)
    with LocalCloud(tmp_path, port=0) as cloud:
        s3 = make_client(cloud, "s3")
        pages = s3.get_paginator("list_parts").paginate(Bucket="busy", Key="big", UploadId=upload)
        restored = {part["PartNumber"]: part["ETag"] for page in pages for part in page.get("Parts", [])}
        assert set(before) <= set(restored)
        assert restored[before[-1]].strip('"') == hashlib.md5(b"%d" % before[-1]).hexdigest()


def test_a_snapshot_with_bodies_inside_still_restores(tmp_path) -> None:
    """Snapshots written before bodies were stored apart: a plain pickle of moto's backends."""
    with LocalCloud(tmp_path, port=0) as cloud:
        s3 = make_client(cloud, "s3")
        s3.create_bucket(Bucket="older")
        s3.put_object(Bucket="older", Key="k", Body=b"from an older snapshot")
        state = {name: dict(get_backend(name)) for name in PERSISTED_SERVICES}  # type: ignore[call-overload]
    (tmp_path / "moto.pickle").write_bytes(pickle.dumps(state))
    shutil.rmtree(tmp_path / "s3-bodies")
    with LocalCloud(tmp_path, port=0) as cloud:
        assert make_client(cloud, "s3").get_object(Bucket="older", Key="k")["Body"].read() == b"from an older snapshot"
    assert (tmp_path / "s3-bodies").exists()  # written the new way at stop


def test_empty_upload_does_not_hang(aws, tmp_path) -> None:
    # botocore sends "Expect: 100-continue" even for an empty body; the server must not wait for one.
    s3 = aws("s3", read_timeout=5)
    s3.create_bucket(Bucket="empty-uploads")
    empty = tmp_path / "__init__.py"
    empty.write_bytes(b"")
    s3.upload_file(str(empty), "empty-uploads", "code/__init__.py")
    s3.put_object(Bucket="empty-uploads", Key="code/empty", Body=b"")
    assert s3.head_object(Bucket="empty-uploads", Key="code/__init__.py")["ContentLength"] == 0


def aws_cli(cloud, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The AWS CLI (awscli, installed in the venv beside this interpreter) against the local cloud."""
    environment = {**os.environ, "AWS_ACCESS_KEY_ID": "cli", "AWS_SECRET_ACCESS_KEY": "cli",
                   "AWS_DEFAULT_REGION": "eu-central-1"}
    command = [str(Path(sys.executable).parent / "aws"), "--endpoint-url", cloud.url, "--output", "json", *arguments]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)


def test_the_aws_cli_works_unchanged(cloud, tmp_path) -> None:
    data = tmp_path / "claims.csv"
    data.write_text("policy_id,fraud\n1,0\n")
    assert aws_cli(cloud, "s3", "mb", "s3://cli-bucket").returncode == 0
    assert aws_cli(cloud, "s3", "cp", str(data), "s3://cli-bucket/raw/claims.csv").returncode == 0
    listed = aws_cli(cloud, "s3", "ls", "s3://cli-bucket/raw/")
    assert "claims.csv" in listed.stdout
    endpoints = aws_cli(cloud, "sagemaker", "list-endpoints")
    assert endpoints.returncode == 0 and "Endpoints" in json.loads(endpoints.stdout)
    missing = aws_cli(cloud, "sagemaker", "describe-training-job", "--training-job-name", "no-such-job")
    assert missing.returncode != 0
    assert "ValidationException" in missing.stderr and "Requested resource not found" in missing.stderr


def test_the_sagemaker_sdk_works_unchanged(cloud, monkeypatch) -> None:
    # The SDK builds its own boto3 clients; botocore's AWS_ENDPOINT_URL points every one of them here.
    for name, value in {"AWS_ENDPOINT_URL": cloud.url, "AWS_ACCESS_KEY_ID": "sdk", "AWS_SECRET_ACCESS_KEY": "sdk",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    from sagemaker.core.resources import ModelPackageGroup

    created = ModelPackageGroup.create(model_package_group_name="sdk-group", model_package_group_description="SDK")
    assert created.model_package_group_arn.endswith(":model-package-group/sdk-group")
    assert ModelPackageGroup.get("sdk-group").model_package_group_description == "SDK"


def half_requests(cloud: LocalCloud, count: int) -> list[socket.socket]:
    """Connections that each send the start of a request's header and then nothing."""
    opened = []
    for _ in range(count):
        connection = socket.create_connection((cloud.host, cloud.port), timeout=5)
        connection.sendall(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-amz-json-1.1\r\n")
        opened.append(connection)
    return opened


def test_half_requests_and_many_clients_leave_the_server_available(cloud) -> None:
    """waitress takes 100 connections by default and keeps a silent one 300 s: 100 half requests
    (or 100 idle keep-alive clients) shut everyone else out."""
    held = half_requests(cloud, 120)
    try:
        quick = make_client(cloud, "sts", connect_timeout=3, read_timeout=3)
        assert quick.get_caller_identity()["Account"] == "123456789012"
    finally:
        for connection in held:
            connection.close()
    session = boto3.session.Session()
    clients = [session.client("sts", region_name="us-east-1", endpoint_url=cloud.url, aws_access_key_id="x",
                              aws_secret_access_key="x",
                              config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=3))
               for _ in range(150)]
    with ThreadPoolExecutor(16) as pool:  # each client keeps its connection open afterwards
        accounts = list(pool.map(lambda client: client.get_caller_identity()["Account"], clients))
    assert accounts == ["123456789012"] * 150
    for client in clients:
        client.close()


def closed_by_server(connection: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within `within` seconds (what it still sends is read)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        connection.settimeout(left)
        try:
            if connection.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
    return False


def test_header_and_idle_timeouts_free_connections(tmp_path, monkeypatch) -> None:
    """More half requests than the server takes: each is closed after the header timeout, even
    one that trickles a byte now and then, and the server answers again; an idle keep-alive
    connection is closed after the idle timeout."""
    monkeypatch.setattr(server, "CONNECTION_LIMIT", 20)
    monkeypatch.setattr(server, "HEADER_TIMEOUT", 1)
    monkeypatch.setattr(server, "IDLE_TIMEOUT", 1)
    with LocalCloud(tmp_path, port=0) as local:
        held = half_requests(local, 25)
        trickling = held[0]
        try:
            for _ in range(4):  # a slow header: a byte every 0.4 s is activity, not a header
                trickling.sendall(b"X")
                time.sleep(0.4)
            assert closed_by_server(trickling, within=3)
            assert all(closed_by_server(connection, within=3) for connection in held[1:])
            answer = make_client(local, "sts", connect_timeout=3, read_timeout=3).get_caller_identity()
            assert answer["Account"] == "123456789012"
        finally:
            for connection in held:
                connection.close()
        with socket.create_connection((local.host, local.port), timeout=5) as idle:
            idle.sendall(b"GET /ping-nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert idle.recv(65536).startswith(b"HTTP/1.1 ")
            assert closed_by_server(idle, within=4)


def signed_for(service: str, method: str, path: str) -> bytes:
    """A request whose SigV4 scope names `service` (the local cloud routes by it; without IAM
    enforced it does not check the signature)."""
    scope = f"Credential=test/20261202/us-east-1/{service}/aws4_request"
    return (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
            f"Authorization: AWS4-HMAC-SHA256 {scope}, SignedHeaders=host, Signature=0\r\n\r\n").encode()


def test_records_are_served_by_the_serving_loop_and_pipelined_requests_all_answered(cloud, monkeypatch) -> None:
    """GetRecord, read by the serving loop, is served on its thread; S3 goes to a worker, and a
    GetRecord the worker finds queued behind it stays with the workers (the loop would not come
    back to it). All three answers come back, in order."""
    runtime = next(s for s in cloud.services if s.service_name == "sagemaker-featurestore-runtime")
    served_on: list[str] = []
    handle = runtime.handle

    def recording_handle(*args: Any) -> Any:
        served_on.append(threading.current_thread().name)
        return handle(*args)

    monkeypatch.setattr(runtime, "handle", recording_handle)
    get_record = signed_for("sagemaker", "GET", "/FeatureGroup/missing?RecordIdentifierValueAsString=1")
    with socket.create_connection((cloud.host, cloud.port), timeout=10) as connection:
        connection.sendall(get_record)
        first = connection.recv(65536)
        connection.sendall(signed_for("s3", "GET", "/") + get_record)
        answers = first
        while answers.count(b"HTTP/1.1 ") < 3:
            chunk = connection.recv(65536)
            assert chunk, f"the connection closed after {answers.count(b'HTTP/1.1 ')} answers"
            answers += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
    assert statuses == [b"404", b"200", b"404"], answers[:2000]  # no such group; ListBuckets; no such group
    assert served_on[0] == "localcloud" and served_on[1].startswith("waitress-"), served_on
