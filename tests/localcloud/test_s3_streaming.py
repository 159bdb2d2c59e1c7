"""S3 bodies stream through the local cloud: its process does not hold an object whole while the
object goes up (in one PutObject, or in parts, 4 at once) or down (ranged GETs, 10 at once, as
download_file makes them), with IAM enforced or not; a multipart upload completes into the same
bytes; an aws-chunked upload is decoded as it is stored."""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from include.localcloud.server import LocalCloud, free_port

OBJECT_BYTES = 96 * 1024 * 1024
PART_BYTES = 32 * 1024 * 1024  # 4 parts in flight: 128 MB of bodies, were they held
# Well under the object: what a few requests of 8 MB parts or ranges hold at once, with copies.
GROWTH_LIMIT_MB = 64
S3_ONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no VmRSS for {pid}")


def s3_client(port: int, key: str, secret: str, service: str = "s3") -> Any:
    return boto3.client(service, endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)


def user_allowed_s3(port: int, state: Path) -> tuple[str, str]:
    """An IAM user allowed s3:*, made with the root key the local cloud keeps in its state folder."""
    root = json.loads((state / "root-credentials.json").read_text())
    iam = s3_client(port, root["AccessKeyId"], root["SecretAccessKey"], "iam")
    iam.create_user(UserName="uploader")
    iam.put_user_policy(UserName="uploader", PolicyName="s3", PolicyDocument=json.dumps(S3_ONLY))
    key = iam.create_access_key(UserName="uploader")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="module", params=["", "enforce"], ids=["iam-off", "iam-enforced"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Any]]:
    """(pid, s3 client) of a local cloud in a process of its own, with LOCALCLOUD_IAM as the param."""
    state = tmp_path_factory.mktemp("state")
    port = free_port()
    code = f"from include.localcloud.server import LocalCloud; import time; LocalCloud({str(state)!r}, port={port}).start(); time.sleep(600)"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                               env={**os.environ, "LOCALCLOUD_IAM": request.param})
    for _ in range(100):
        try:
            credentials = user_allowed_s3(port, state) if request.param else ("local", "local")
            s3 = s3_client(port, *credentials)
            s3.create_bucket(Bucket="big")
            break
        except Exception:
            time.sleep(0.1)
    yield process.pid, s3
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("source") / "source.bin"
    path.write_bytes(os.urandom(OBJECT_BYTES))
    return path


def growth_while(pid: int, work: Callable[[], object]) -> int:
    """Peak RSS of the process while work runs, less its RSS before, in MB (sampled every 20 ms)."""
    before = rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return peak[0] - before


def test_a_large_object_streams_up_in_one_put(server, source: Path) -> None:
    pid, s3 = server
    one_put = TransferConfig(multipart_threshold=2 * OBJECT_BYTES)
    up = growth_while(pid, lambda: s3.upload_file(str(source), "big", "whole", Config=one_put))
    assert up < GROWTH_LIMIT_MB, f"RSS growth in MB while putting {OBJECT_BYTES >> 20} MB: {up}"
    assert s3.head_object(Bucket="big", Key="whole")["ETag"] == f'"{hashlib.md5(source.read_bytes()).hexdigest()}"'


def test_a_large_object_streams_up_in_parts_and_down_in_ranges(server, source: Path, tmp_path: Path) -> None:
    pid, s3 = server
    parts = TransferConfig(multipart_chunksize=PART_BYTES, max_concurrency=4)
    up = growth_while(pid, lambda: s3.upload_file(str(source), "big", "parts", Config=parts))
    target = tmp_path / "target.bin"
    down = growth_while(pid, lambda: s3.download_file("big", "parts", str(target)))
    assert target.read_bytes() == source.read_bytes()
    assert up < GROWTH_LIMIT_MB, f"RSS growth in MB while uploading {OBJECT_BYTES >> 20} MB in parts: {up}"
    assert down < GROWTH_LIMIT_MB, f"RSS growth in MB while downloading {OBJECT_BYTES >> 20} MB: {down}"


def aws_chunked_put(cloud: LocalCloud, key: str, payload: bytes, decoded_length: int) -> requests.Response:
    """A PutObject whose body is aws-chunked with a CRC32 trailer, as boto3 sends one over HTTPS."""
    return requests.put(f"{cloud.url}/chunked/{key}", data=payload, timeout=10, headers={
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, "
                         "SignedHeaders=host, Signature=" + "0" * 64,
        "X-Amz-Date": "20260101T000000Z", "Content-Encoding": "aws-chunked",
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "x-amz-sdk-checksum-algorithm": "CRC32",
        "x-amz-trailer": "x-amz-checksum-crc32", "x-amz-decoded-content-length": str(decoded_length)})


def test_an_aws_chunked_upload_is_decoded_in_chunks_with_its_trailing_checksum(cloud: LocalCloud, aws) -> None:
    s3 = aws("s3")
    s3.create_bucket(Bucket="chunked")
    body = os.urandom(3 * 1024 * 1024 + 5)
    crc32 = base64.b64encode(binascii.crc32(body).to_bytes(4, "big"))
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in (body[:2 * 1024 * 1024], body[2 * 1024 * 1024:]))
    answer = aws_chunked_put(cloud, "k", chunks + b"0\r\nx-amz-checksum-crc32:" + crc32 + b"\r\n\r\n", len(body))
    assert answer.status_code == 200, answer.text
    assert answer.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    stored = s3.get_object(Bucket="chunked", Key="k", ChecksumMode="ENABLED")
    assert stored["Body"].read() == body
    assert stored["ChecksumCRC32"] == crc32.decode()

    for key, payload, why in [
        ("bad-size", b"zz\r\nabc\r\n0\r\n\r\n", "an aws-chunked chunk starts with b'zz\\r\\n', not its size"),
        ("short", b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
         f"it decodes to 3 bytes, x-amz-decoded-content-length says {len(body)}"),
        ("no-checksum", chunks + b"0\r\n\r\n", "its trailer has no x-amz-checksum-crc32"),
    ]:
        answer = aws_chunked_put(cloud, key, payload, len(body))
        assert answer.status_code == 400
        assert "<Code>IncompleteBody</Code>" in answer.text and why in html.unescape(answer.text), answer.text
        with pytest.raises(ClientError):
            s3.head_object(Bucket="chunked", Key=key)
