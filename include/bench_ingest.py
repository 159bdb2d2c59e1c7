"""`python -m include.bench_ingest [POLICIES ...]`: records/s of Feature Store ingestion in the
local cloud (its own process), for processed claims records of POLICIES policies (default 5000;
the seed's rows repeated under new policy ids).

Baseline: what the Airflow worker did before ingestion became a processing job, every record in
memory and 8 PutRecord threads in this process. Then the ingest job (include/jobs/ingest.py, the
DAG's request from include/pipeline/configs.py): online_and_offline on 1 and 2 instances (the
records in 2 files), a re-run on unchanged data, and offline_only. Each figure is records over
the job's ProcessingStartTime-to-ProcessingEndTime, with the ratio against the baseline, and the
CPU milliseconds a record of the client (the baseline's threads, or the job's processes: the local
cloud's waited-for children) and of the local cloud server, which depend less on the machine's
other load than records/s does."""

from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from include.localcloud.bench import client, create_feature_group, local_cloud, processed_rows, put_calls
from include.pipeline import configs
from include.pipeline.configs import RunLayout
from include.pipeline.settings import JOBS_DIR, Settings

BUCKET = "localcloud-bench"
SETTINGS = Settings(bucket=BUCKET)
THREADS = 8


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of a process, and of its children it has waited for."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system, times.children_user + times.children_system


def records_of(seed: list[dict[str, str]], policies: int) -> list[dict[str, str]]:
    return [{**seed[i % len(seed)], "policy_id": str(i + 1)} for i in range(policies)]


def upload_parts(s3: Any, work: Path, uri: str, rows: list[dict[str, str]], parts: int) -> None:
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    for part in range(parts):
        path = work / f"part-{part}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows[part::parts])
        s3.upload_file(str(path), bucket, f"{prefix}part-{part}.csv")


def run_job(url: str, layout: RunLayout, name: str, group: str, mode: str, instances: int) -> tuple[float, int]:
    """Seconds the ingest job ran and records it put."""
    sagemaker, s3 = client(url, "sagemaker"), client(url, "s3")
    request = configs.ingest_job(SETTINGS, layout, name=name, dataset="claims", feature_group_name=group,
                                 mode=mode, instance_type="ml.m5.xlarge", instance_count=instances)
    request["AppSpecification"]["ImageUri"] = SETTINGS.image_uri("sklearn")
    sagemaker.create_processing_job(**request)
    while (job := sagemaker.describe_processing_job(ProcessingJobName=name))["ProcessingJobStatus"] == "InProgress":
        time.sleep(0.2)
    if job["ProcessingJobStatus"] != "Completed":
        raise RuntimeError(f"{name}: {job['ProcessingJobStatus']}: {job.get('FailureReason')}")
    bucket, prefix = layout.ingestion("claims").removeprefix("s3://").split("/", 1)
    put = sum(json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())["Put"]
              for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
    return (job["ProcessingEndTime"] - job["ProcessingStartTime"]).total_seconds(), put


Result = tuple[str, float, int, float, float]  # measure, seconds, records put, client and server CPU seconds


def measure(url: str, server: int, work: Path, seed: list[dict[str, str]], policies: int) -> list[Result]:
    rows = records_of(seed, policies)
    sagemaker, s3 = client(url, "sagemaker"), client(url, "s3")
    results = []
    group = f"baseline-{policies}"
    create_feature_group(sagemaker, "claims", group)
    calls = put_calls(client(url, "sagemaker-featurestore-runtime"), group, rows)
    started, client_started, (server_started, _) = time.monotonic(), time.process_time(), cpu_seconds(server)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda call: call(), calls))
    results.append(("baseline: 8 PutRecord threads in the Airflow worker", time.monotonic() - started, policies,
                    time.process_time() - client_started, cpu_seconds(server)[0] - server_started))

    for label, instances, mode, fresh in (
        ("ingest job, online_and_offline, 1 instance", 1, "online_and_offline", True),
        ("ingest job, online_and_offline, 2 instances", 2, "online_and_offline", True),
        ("ingest job re-run on unchanged data (puts nothing)", 1, "online_and_offline", False),
        ("ingest job, offline_only, 1 instance", 1, "offline_only", True),
    ):
        key = f"{policies}-{len(results)}"
        if fresh:
            group = f"ingest-{key}"
            create_feature_group(sagemaker, "claims", group)
        layout = RunLayout(f"s3://{BUCKET}/bench-{key}")
        for script in JOBS_DIR.glob("*.py"):
            s3.upload_file(str(script), BUCKET, f"bench-{key}/code/{script.name}")
        upload_parts(s3, work, layout.processed("claims"), rows, instances)
        server_started, jobs_started = cpu_seconds(server)
        seconds, put = run_job(url, layout, f"bench-ingest-{key}", group, mode, instances)
        server_ended, jobs_ended = cpu_seconds(server)
        results.append((label, seconds, put, jobs_ended - jobs_started, server_ended - server_started))
    return results


def main(argv: list[str]) -> int:
    sizes = [int(size) for size in argv] or [5000]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        seed = processed_rows(work, "claims")
        with local_cloud(work / "state") as (url, server):
            client(url, "s3").create_bucket(Bucket=BUCKET)
            for policies in sizes:
                results = measure(url, server.pid, work, seed, policies)
                baseline = policies / results[0][1]
                print(f"\n{policies:,} claims records")
                print(f"| {'measure':<52} | seconds | records put | records/s | vs baseline "
                      "| client CPU ms/record | server CPU ms/record |")
                print(f"|{'-' * 54}|---------|-------------|-----------|-------------|{'-' * 22}|{'-' * 22}|")
                for label, seconds, put, client_cpu, server_cpu in results:
                    rate = policies / seconds
                    print(f"| {label:<52} | {seconds:7.1f} | {put:11,} | {rate:9.0f} | {rate / baseline:10.2f}x "
                          f"| {1000 * client_cpu / policies:20.3f} | {1000 * server_cpu / policies:20.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
