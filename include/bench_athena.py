"""`make bench-athena [ATHENA_SIZES="200000 1000000"]`: the dataset stage's Athena query against a
local cloud holding the offline stores of that many generated policies.

For each size it makes the raw files when they are missing (`make data`, seed 0), puts them
through the pipeline's own preprocess and offline_only ingest scripts into a local cloud of its
own (state in generated/bench-athena-<POLICIES>/, kept: a later run starts from it), then runs the
DAG's queries: the offline record count that waits for ingestion (it loads the tables) and then
the dataset query, QUERY_RUNS times. Meanwhile a thread samples the server's resident memory.
Prints per size the seconds of the first (loading) and the median of the later dataset queries,
the server's RSS before them and its peak while they ran, and the SHA-256 of the result CSV (the
same data gives the same digest, whatever the engine's code)."""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from include.bench_scale import MIB, raw_files, resident_bytes
from include.localcloud.bench import BUCKET, REGION, client, create_feature_group, local_cloud
from include.pipeline import sql
from include.pipeline.settings import REPO_ROOT

SIZES = (200_000, 1_000_000)
QUERY_RUNS = 3
EVENT_TIME = "1704448800"
DATABASE = "sagemaker_featurestore"
SAMPLE_SECONDS = 0.1
POLL_SECONDS = 0.25  # as the DAG's FRAUD_CHECK_INTERVAL under make run
JOBS = REPO_ROOT / "include" / "jobs"


class PeakSampler:
    """The largest VmRSS of a process, sampled every SAMPLE_SECONDS while in the `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, resident_bytes(self.pid))
            if self._stop.wait(SAMPLE_SECONDS):
                return


def load(url: str, policies: int, work: Path) -> None:
    """The raw files preprocessed and ingested offline_only into two new feature groups."""
    files = raw_files(policies)
    env = {**os.environ, "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": REGION, "SAGEMAKER_BASE_DIR": str(work)}
    client(url, "s3").create_bucket(Bucket=BUCKET)
    sagemaker = client(url, "sagemaker")
    for dataset in ("customers", "claims"):
        processed = work / "processed" / dataset
        arguments = ["--dataset", dataset, "--input-dir", str(files[dataset].parent), "--output-dir", str(processed),
                     "--event-time", EVENT_TIME]
        if dataset == "claims":
            arguments += ["--customers-dir", str(files["customers"].parent)]
        subprocess.run([sys.executable, str(JOBS / "preprocess.py"), *arguments], check=True)
        create_feature_group(sagemaker, dataset, dataset)
        subprocess.run([sys.executable, str(JOBS / "ingest.py"), "--feature-group-name", dataset,
                        "--mode", "offline_only", "--input-dir", str(processed), "--output-dir", str(work / "ingested")],
                       check=True, env=env)


def athena_seconds(athena: Any, query: str) -> tuple[float, str]:
    """Seconds from StartQueryExecution to SUCCEEDED, polled as the DAG polls, and the query id."""
    started = time.perf_counter()
    query_id = athena.start_query_execution(
        QueryString=query, QueryExecutionContext={"Database": DATABASE},
        ResultConfiguration={"OutputLocation": f"s3://{BUCKET}/athena/"},
    )["QueryExecutionId"]
    while (status := athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"])["State"] in (
            "QUEUED", "RUNNING"):
        time.sleep(POLL_SECONDS)
    if status["State"] != "SUCCEEDED":
        raise RuntimeError(f"query {status['State']}: {status.get('StateChangeReason')}")
    return time.perf_counter() - started, query_id


def result_digest(s3: Any, athena: Any, query_id: str) -> str:
    """The SHA-256 of the query's result CSV, which is then deleted (with its .metadata)."""
    location = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["ResultConfiguration"]
    key = location["OutputLocation"].removeprefix(f"s3://{BUCKET}/")
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(2**20):
        digest.update(chunk)
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": key}, {"Key": f"{key}.metadata"}]})
    return digest.hexdigest()


def measure(policies: int) -> dict[str, Any]:
    state = REPO_ROOT / "generated" / f"bench-athena-{policies}"
    ready = state / "loaded"
    if not ready.exists():  # a load that did not finish starts again
        shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    with local_cloud(state / "localcloud", {"LOCALCLOUD_IAM": ""}) as (url, server):  # the bench's keys are no IAM user's
        if not ready.exists():
            load(url, policies, state)
            ready.touch()
        athena, s3, sagemaker = client(url, "athena"), client(url, "s3"), client(url, "sagemaker")
        claims, customers = (sagemaker.describe_feature_group(FeatureGroupName=name)["OfflineStoreConfig"]
                             ["DataCatalogConfig"]["TableName"] for name in ("claims", "customers"))
        sizes = [o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="featurestore/").get("Contents", [])]
        before = resident_bytes(server.pid)
        seconds, digests = [], set()
        with PeakSampler(server.pid) as sampler:
            count_seconds, _ = athena_seconds(athena, sql.offline_record_count_query(DATABASE, claims, 0))
            for _ in range(QUERY_RUNS):
                elapsed, query_id = athena_seconds(athena, sql.dataset_query(DATABASE, claims, customers))
                seconds.append(elapsed)
                digests.add(result_digest(s3, athena, query_id))
    return {"policies": policies, "objects": sizes, "count": count_seconds, "seconds": seconds,
            "before": before, "peak": sampler.peak, "digests": digests}


def main(argv: list[str]) -> int:
    sizes = [int(size) for size in argv] or list(SIZES)
    print("| policies | offline objects (MiB) | count query s (loads) | dataset query s (median) "
          "| server RSS before MiB | peak MiB | result SHA-256 |")
    print("|---|---|---|---|---|---|---|")
    for policies in sizes:
        m = measure(policies)
        objects = ", ".join(f"{size / MIB:.0f}" for size in m["objects"])
        print(f"| {policies:,} | {objects} | {m['count']:.1f} | {statistics.median(m['seconds']):.1f} "
              f"({', '.join(f'{s:.1f}' for s in m['seconds'])}) | {m['before'] / MIB:,.0f} | {m['peak'] / MIB:,.0f} "
              f"| {', '.join(sorted(d[:16] for d in m['digests']))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
