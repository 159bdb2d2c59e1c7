"""S3 bodies stream through the local cloud: its process does not hold an object whole while the
object goes down (ranged GETs, 10 at once, as download_file makes them); a multipart upload
completes into the same bytes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from include.localcloud.server import free_port

OBJECT_BYTES = 96 * 1024 * 1024
# Well under the object: what a few requests of 8 MB parts or ranges hold at once, with copies.
GROWTH_LIMIT_MB = 64


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, object, Path]]:
    state = tmp_path_factory.mktemp("state")
    port = free_port()
    code = f"from include.localcloud.server import LocalCloud; import time; LocalCloud({str(state)!r}, port={port}).start(); time.sleep(600)"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id="local", aws_secret_access_key="local")  # fmt: skip
    for _ in range(100):
        try:
            s3.create_bucket(Bucket="big")
            break
        except Exception:
            time.sleep(0.1)
    yield process, s3, state
    process.terminate()
    process.wait(timeout=30)


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


def test_a_large_object_streams_down_in_ranges(server, tmp_path: Path) -> None:
    process, s3, _ = server
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(OBJECT_BYTES))
    one_part_at_a_time = TransferConfig(max_concurrency=1)
    s3.upload_file(str(source), "big", "k", Config=one_part_at_a_time)

    target = tmp_path / "target.bin"
    down = growth_while(process.pid, lambda: s3.download_file("big", "k", str(target)))
    assert target.read_bytes() == source.read_bytes()
    assert down < GROWTH_LIMIT_MB, f"RSS growth in MB while downloading {OBJECT_BYTES >> 20} MB: {down}"
