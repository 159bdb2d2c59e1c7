"""`python -m include.localcloud.bench`: how fast the local cloud serves what the fraud pipeline
asks of it, measured through boto3 against the local cloud run as a separate process
(`python -m include.localcloud` on a free port, state in a temporary folder).

Prints one table: Feature Store PutRecord throughput (8 client threads, 5,000 records of the
claims feature group) and GetRecord latency, the claims-customers Athena join over the two
offline stores, InvokeEndpoint latency and batch throughput, each beside its target; and a
baseline, sts.GetCallerIdentity (served by moto behind the same front server) from the same
client, with the ratios against it. Server and client CPU per call show where the time goes, and
the same PutRecord calls against a server that does no work at all (`null_server`) give the most
8 boto3 threads of one process can send: the ceiling any server is measured against."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from include.jobs import schema
from include.localcloud.server import free_port
from include.pipeline.settings import DEFAULT_ROLE_ARN, REPO_ROOT, XGBOOST_VERSION

REGION = "us-east-1"
BUCKET = "localcloud-bench"
RECORDS = 5000
CLIENT_THREADS = 8
REPETITIONS = 3
LATENCY_CALLS = 1000
INVOKE_CALLS = 500
BATCH_ROWS = 1000
BATCH_CALLS = 10
# Serving under concurrency: one-row InvokeEndpoint calls from this many threads, a boto3 client each.
CONCURRENT_THREADS = 32
CONCURRENT_CALLS = 10_000
JOIN_RUNS = 5
READY_TIMEOUT_SECONDS = 60
OFFLINE_TIMEOUT_SECONDS = 120
ENDPOINT_TIMEOUT_SECONDS = 300


@dataclass
class Row:
    metric: str
    value: float | None  # None: could not be measured (see note)
    unit: str
    target: str = ""
    met: bool | None = None
    ratio: str = ""
    note: str = ""


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the servers -------------------------------------------------------------------------------
class _NullHandler(BaseHTTPRequestHandler):
    """Reads the request and answers 200 with an empty body, as PutRecord does: no other work."""

    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextmanager
def null_server() -> Iterator[tuple[str, int]]:
    """A do-nothing HTTP server in a process of its own (so it has the other core): its URL and pid."""
    port = free_port()
    code = ("import sys; from http.server import ThreadingHTTPServer; from include.localcloud.bench import _NullHandler;"
            f" ThreadingHTTPServer(('127.0.0.1', {port}), _NullHandler).serve_forever()")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the null server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- the local cloud process -------------------------------------------------------------------
@contextmanager
def local_cloud(state_dir: Path, settings: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, "LOCALCLOUD_PORT": str(port), "LOCALCLOUD_STATE": str(state_dir),
           "PYTHONPATH": str(REPO_ROOT), **(settings or {})}
    log_path = state_dir.parent / f"localcloud-{state_dir.name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "include.localcloud"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        sts = client(url, "sts")
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the local cloud exited with {process.returncode}: {tail(log_path)}")
            try:
                sts.get_caller_identity()
                break
            except ClientError:
                break  # it answered (a local cloud enforcing IAM refuses the bench's key)
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the local cloud did not answer on {url}: {tail(log_path)}") from None
                time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()  # SIGTERM: a clean stop
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def client(url: str, service: str, credentials: tuple[str, str] = ("bench", "bench")) -> Any:
    return boto3.session.Session().client(
        service, region_name=REGION, endpoint_url=url, aws_access_key_id=credentials[0],
        aws_secret_access_key=credentials[1],
        config=Config(retries={"max_attempts": 1}, max_pool_connections=CLIENT_THREADS * 2),
    )


# -- measurements ------------------------------------------------------------------------------
@dataclass
class Throughput:
    per_second: float
    client_cpu_ms: float  # bench-process CPU per call
    server_cpu_ms: float  # local-cloud-process CPU per call


def throughput(calls: list[Callable[[], Any]], server_pid: int) -> Throughput:
    """Run the calls on CLIENT_THREADS threads; calls per second and CPU per call on each side."""
    server_before, client_before = cpu_seconds(server_pid), time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()
    elapsed = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_before, time.process_time() - client_before
    return Throughput(len(calls) / elapsed, client_cpu / len(calls) * 1000, server_cpu / len(calls) * 1000)


def timed_calls(call: Callable[[], Any], count: int) -> list[float]:
    """Milliseconds of each of `count` sequential calls."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def latencies(call: Callable[[], Any], count: int) -> list[float]:
    """Milliseconds of `count` sequential calls, after a few warm-up calls."""
    for _ in range(5):
        call()
    return timed_calls(call, count)


def median_latency(call: Callable[[], Any], count: int) -> tuple[float, float]:
    """Median over REPETITIONS runs of (p50, p99) in milliseconds."""
    runs = [latencies(call, count) for _ in range(REPETITIONS)]
    return (statistics.median(percentile(r, 0.50) for r in runs),
            statistics.median(percentile(r, 0.99) for r in runs))


@dataclass
class Concurrent:
    per_second: float
    p50_ms: float
    p99_ms: float


def concurrent_calls(make_call: Callable[[], Callable[[], Any]]) -> Concurrent:
    """CONCURRENT_CALLS calls from CONCURRENT_THREADS threads, each with a client of its own
    (`make_call` builds one and returns its call): requests/s and latency percentiles."""
    calls = [make_call() for _ in range(CONCURRENT_THREADS)]
    for call in calls:
        call()  # connect and warm up
    per_thread = CONCURRENT_CALLS // CONCURRENT_THREADS
    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENT_THREADS) as pool:
        runs = pool.map(lambda call: timed_calls(call, per_thread), calls)
        samples = [sample for run in runs for sample in run]
    elapsed = time.perf_counter() - started
    return Concurrent(len(samples) / elapsed, percentile(samples, 0.50), percentile(samples, 0.99))


def one_row_invocation(url: str, endpoint: str, body: str) -> Callable[[], Callable[[], Any]]:
    def make_call() -> Callable[[], Any]:
        runtime = client(url, "sagemaker-runtime")
        return lambda: runtime.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=body)["Body"].read()

    return make_call


def median_throughput(make_calls: Callable[[int], list[Callable[[], Any]]], server_pid: int) -> Throughput:
    runs = [throughput(make_calls(repetition), server_pid) for repetition in range(REPETITIONS)]
    return min(runs, key=lambda run: abs(run.per_second - statistics.median(r.per_second for r in runs)))


# -- fraud data --------------------------------------------------------------------------------
def processed_rows(work: Path, dataset: str) -> list[dict[str, str]]:
    """The raw CSV put through the pipeline's own processing script: feature group records."""
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "include" / "jobs" / "preprocess.py"), "--dataset", dataset,
         "--input-dir", str(REPO_ROOT / "data"), "--output-dir", str(work)],
        check=True, capture_output=True,
    )
    with (work / f"{dataset}-part-00000.csv").open(newline="") as handle:  # the one part: --parts 1
        return list(csv.DictReader(handle))


def create_feature_group(sagemaker: Any, dataset: str, name: str) -> dict[str, Any]:
    sagemaker.create_feature_group(
        FeatureGroupName=name,
        RecordIdentifierFeatureName=schema.RECORD_IDENTIFIER,
        EventTimeFeatureName=schema.EVENT_TIME,
        FeatureDefinitions=schema.feature_definitions(dataset),
        OnlineStoreConfig={"EnableOnlineStore": True},
        OfflineStoreConfig={"S3StorageConfig": {"S3Uri": f"s3://{BUCKET}/featurestore"}},
        RoleArn=DEFAULT_ROLE_ARN,
    )
    deadline = time.monotonic() + 60
    while (group := sagemaker.describe_feature_group(FeatureGroupName=name))["FeatureGroupStatus"] == "Creating":
        if time.monotonic() > deadline:
            raise RuntimeError(f"feature group {name} still Creating after 60 s")
        time.sleep(0.1)
    if group["FeatureGroupStatus"] != "Created":
        raise RuntimeError(f"feature group {name}: {group.get('FailureReason')}")
    return group


def put_calls(featurestore: Any, group: str, rows: list[dict[str, str]]) -> list[Callable[[], Any]]:
    def put(row: dict[str, str]) -> Callable[[], Any]:
        record = [{"FeatureName": k, "ValueAsString": v} for k, v in row.items()]
        return lambda: featurestore.put_record(FeatureGroupName=group, Record=record)

    return [put(row) for row in rows]


def athena_seconds(athena: Any, sql: str) -> tuple[float, str]:
    """Seconds from StartQueryExecution to SUCCEEDED, and the query id."""
    started = time.perf_counter()
    query_id = athena.start_query_execution(
        QueryString=sql, QueryExecutionContext={"Database": "sagemaker_featurestore"},
        ResultConfiguration={"OutputLocation": f"s3://{BUCKET}/athena/"},
    )["QueryExecutionId"]
    while True:
        status = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
        if status["State"] == "SUCCEEDED":
            return time.perf_counter() - started, query_id
        if status["State"] in ("FAILED", "CANCELLED"):
            raise RuntimeError(f"query {status['State']}: {status.get('StateChangeReason')}")
        time.sleep(0.005)


def count_rows(athena: Any, table: str) -> int:
    _, query_id = athena_seconds(athena, f'SELECT count(*) FROM "{table}"')
    rows = athena.get_query_results(QueryExecutionId=query_id)["ResultSet"]["Rows"]
    return int(rows[1]["Data"][0]["VarCharValue"])


def join_sql(claims_table: str, customers_table: str) -> str:
    """The dataset query of the pipeline: label and features, one row per policy."""
    claims = ", ".join(f'c."{name}"' for name in (schema.LABEL, *schema.CLAIMS_FEATURES))
    customers = ", ".join(f'cu."{name}"' for name in schema.CUSTOMERS_FEATURES)
    return (f'SELECT {claims}, {customers} FROM "{claims_table}" c '
            f'LEFT JOIN "{customers_table}" cu ON c.policy_id = cu.policy_id')


def deploy_endpoint(url: str, claims: list[dict[str, str]], customers: list[dict[str, str]]) -> tuple[str, list[str]]:
    """Train a tiny XGBoost model on the fraud features and serve it; returns the endpoint name
    and feature rows as CSV lines for invocations."""
    import xgboost  # imported here: only this measurement needs it
    from sagemaker.core import image_uris

    by_policy = {row[schema.RECORD_IDENTIFIER]: row for row in customers}
    joined = [{**row, **by_policy[row[schema.RECORD_IDENTIFIER]]} for row in claims]
    features = [[float(row[name]) for name in schema.FEATURE_COLUMNS] for row in joined]
    labels = [float(row[schema.LABEL]) for row in joined]
    booster = xgboost.train({"max_depth": 3, "eta": 0.2, "objective": "binary:logistic"},
                            xgboost.DMatrix(features, label=labels), num_boost_round=20)
    with tempfile.TemporaryDirectory() as work:
        model_file = Path(work) / "xgboost-model"
        booster.save_model(str(model_file.with_suffix(".ubj")))  # XGBoost's own (default) format
        model_file.with_suffix(".ubj").rename(model_file)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            tar.add(model_file, arcname="xgboost-model")
    client(url, "s3").put_object(Bucket=BUCKET, Key="model/model.tar.gz", Body=archive.getvalue())
    sagemaker = client(url, "sagemaker")
    name = f"bench-{uuid.uuid4().hex[:8]}"
    image = image_uris.retrieve(framework="xgboost", region=REGION, version=XGBOOST_VERSION)
    sagemaker.create_model(ModelName=name, ExecutionRoleArn=DEFAULT_ROLE_ARN,
                           PrimaryContainer={"Image": image, "ModelDataUrl": f"s3://{BUCKET}/model/model.tar.gz"})
    sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large",
    }])
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    deadline = time.monotonic() + ENDPOINT_TIMEOUT_SECONDS
    while (endpoint := sagemaker.describe_endpoint(EndpointName=name))["EndpointStatus"] != "InService":
        if endpoint["EndpointStatus"] == "Failed" or time.monotonic() > deadline:
            raise RuntimeError(f"endpoint {endpoint['EndpointStatus']}: {endpoint.get('FailureReason')}")
        time.sleep(0.2)
    lines = [",".join(repr(value) for value in row) for row in features]
    return name, lines


# -- the benchmark -----------------------------------------------------------------------------
def run(work: Path) -> list[Row]:
    claims, customers = processed_rows(work, "claims")[:RECORDS], processed_rows(work, "customers")[:RECORDS]
    rows: list[Row] = []
    with null_server() as (null_url, null_pid):
        null_featurestore = client(null_url, "sagemaker-featurestore-runtime")
        ceiling = median_throughput(lambda _: put_calls(null_featurestore, "bench-claims", claims), null_pid)
        invoke_ceiling = concurrent_calls(one_row_invocation(null_url, "bench", "0"))
    with local_cloud(work / "state") as (url, process):
        sts = client(url, "sts")
        sts_p50, sts_p99 = median_latency(sts.get_caller_identity, LATENCY_CALLS)
        sts_rate = median_throughput(lambda _: [sts.get_caller_identity] * RECORDS, process.pid)
        rows += [
            Row("baseline: sts GetCallerIdentity p50 / p99", sts_p50, "ms", note=f"p99 {sts_p99:.2f} ms"),
            Row(f"baseline: sts GetCallerIdentity calls/s ({CLIENT_THREADS} threads)", sts_rate.per_second, "/s",
                note=f"CPU/call: client {sts_rate.client_cpu_ms:.2f} ms, server {sts_rate.server_cpu_ms:.2f} ms"),
        ]

        client(url, "s3").create_bucket(Bucket=BUCKET)
        sagemaker, featurestore = client(url, "sagemaker"), client(url, "sagemaker-featurestore-runtime")
        groups = [create_feature_group(sagemaker, "claims", f"bench-claims-{r}") for r in range(REPETITIONS)]
        customers_group = create_feature_group(sagemaker, "customers", "bench-customers")
        put = median_throughput(lambda r: put_calls(featurestore, groups[r]["FeatureGroupName"], claims), process.pid)
        rows.append(Row(f"ceiling: PutRecord calls/s to a do-nothing server ({CLIENT_THREADS} threads)",
                        ceiling.per_second, "/s",
                        note=f"CPU/call: boto3 client {ceiling.client_cpu_ms:.2f} ms, server {ceiling.server_cpu_ms:.2f} ms"))
        rows.append(Row(f"PutRecord records/s ({CLIENT_THREADS} threads, {RECORDS} claims)", put.per_second, "/s",
                        ">= 2000", put.per_second >= 2000, f"{put.per_second / ceiling.per_second:.2f}x ceiling",
                        f"CPU/call: client {put.client_cpu_ms:.2f} ms, server {put.server_cpu_ms:.2f} ms"
                        f" (one core each: at most {1000 / put.client_cpu_ms:,.0f}/s and {1000 / put.server_cpu_ms:,.0f}/s)"))
        # The server's CPU per record against the do-nothing server's per call, measured alike:
        # the machine's load inflates both.
        server_ratio = put.server_cpu_ms / ceiling.server_cpu_ms
        rows.append(Row("PutRecord server CPU/record", put.server_cpu_ms, "ms", "", None,
                        f"{server_ratio:.1f}x ceiling", f"the do-nothing server's: {ceiling.server_cpu_ms:.3f} ms/call"))
        throughput(put_calls(featurestore, customers_group["FeatureGroupName"], customers), process.pid)

        # The join waits for the offline store to hold every record: GetRecord is then measured
        # without offline writes going on.
        join = measure_join(url, groups[0], customers_group)
        claims_name = groups[0]["FeatureGroupName"]
        policy_ids = [row[schema.RECORD_IDENTIFIER] for row in claims]
        get_p50, get_p99 = median_latency(lambda: featurestore.get_record(
            FeatureGroupName=claims_name, RecordIdentifierValueAsString=random.choice(policy_ids)), LATENCY_CALLS)
        rows.append(Row("GetRecord p99", get_p99, "ms", "< 5", get_p99 < 5, f"{get_p99 / sts_p99:.2f}x",
                        f"p50 {get_p50:.2f} ms ({get_p50 / sts_p50:.2f}x baseline)"))
        rows.append(join)
        rows += measure_endpoint(url, claims, customers, sts_p50, sts_p99, invoke_ceiling)
    rows += measure_enforcement(work, claims)
    return rows


def measure_join(url: str, claims_group: dict[str, Any], customers_group: dict[str, Any]) -> Row:
    athena = client(url, "athena")
    claims_table = claims_group["OfflineStoreConfig"]["DataCatalogConfig"]["TableName"]
    customers_table = customers_group["OfflineStoreConfig"]["DataCatalogConfig"]["TableName"]
    # The journal is flushed in order: once the last group ingested is complete, all are.
    deadline = time.monotonic() + OFFLINE_TIMEOUT_SECONDS
    while count_rows(athena, customers_table) < RECORDS:
        if time.monotonic() > deadline:
            return Row("Athena claims LEFT JOIN customers", None, "s", "< 1", False,
                       note="the offline store did not hold every record in time")
        time.sleep(0.5)
    sql = join_sql(claims_table, customers_table)
    first, query_id = athena_seconds(athena, sql)  # loads the claims table from S3
    result_rows = sum(len(p["ResultSet"]["Rows"]) for p in
                      athena.get_paginator("get_query_results").paginate(QueryExecutionId=query_id)) - 1
    warm = statistics.median(athena_seconds(athena, sql)[0] for _ in range(JOIN_RUNS))
    return Row(f"Athena claims LEFT JOIN customers ({RECORDS} + {RECORDS})", warm, "s", "< 1", warm < 1,
               note=f"{result_rows} rows; first run (tables loaded from S3) {first:.3f} s")


def measure_endpoint(url: str, claims: list[dict[str, str]], customers: list[dict[str, str]],
                     sts_p50: float, sts_p99: float, ceiling: Concurrent) -> list[Row]:
    names = ("InvokeEndpoint p99 (one row)", f"InvokeEndpoint rows/s ({BATCH_ROWS}-row batches)",
             f"InvokeEndpoint requests/s, {CONCURRENT_THREADS} threads (one row)",
             f"InvokeEndpoint p99, {CONCURRENT_THREADS} threads (one row)")
    try:
        endpoint, lines = deploy_endpoint(url, claims, customers)
        runtime = client(url, "sagemaker-runtime")

        def invoke(body: str) -> Callable[[], Any]:
            return lambda: runtime.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=body)["Body"].read()

        one_p50, one_p99 = median_latency(invoke(lines[0]), INVOKE_CALLS)
        batch = "\n".join(lines[:BATCH_ROWS])
        batch_ms = statistics.median(statistics.median(latencies(invoke(batch), BATCH_CALLS)) for _ in range(REPETITIONS))
        rate = BATCH_ROWS / (batch_ms / 1000)
        crowd = concurrent_calls(one_row_invocation(url, endpoint, lines[0]))
    except Exception as exc:  # hosting may not be there yet: say why, measure the rest
        note = f"n/a: {type(exc).__name__}: {exc}"[:200]
        return [Row(names[0], None, "ms", "< 10", False, note=note), Row(names[1], None, "/s", ">= 20000", False),
                Row(names[2], None, "/s", "", False), Row(names[3], None, "ms", "< 50", False)]
    ratio = crowd.per_second / ceiling.per_second
    return [
        Row(names[0], one_p99, "ms", "< 10", one_p99 < 10, f"{one_p99 / sts_p99:.2f}x",
            f"p50 {one_p50:.2f} ms ({one_p50 / sts_p50:.2f}x baseline)"),
        Row(names[1], rate, "/s", ">= 20000", rate >= 20000, note=f"{batch_ms:.1f} ms per {BATCH_ROWS}-row call"),
        Row(names[2], crowd.per_second, "/s", ">= 0.6x ceiling", ratio >= 0.6, f"{ratio:.2f}x ceiling",
            f"{CONCURRENT_CALLS} calls; ceiling (do-nothing server, same threads) {ceiling.per_second:,.0f}/s, "
            f"p50 {ceiling.p50_ms:.1f} ms, p99 {ceiling.p99_ms:.1f} ms"),
        Row(names[3], crowd.p99_ms, "ms", "< 50", crowd.p99_ms < 50, f"{crowd.p99_ms / ceiling.p99_ms:.2f}x ceiling",
            f"p50 {crowd.p50_ms:.1f} ms"),
    ]


# -- the cost of LOCALCLOUD_IAM=enforce --------------------------------------------------------
def enforcing_principal(url: str, state_dir: Path, group: str) -> tuple[str, str]:
    """In a local cloud enforcing IAM: the execution role, the bucket and feature group `group`
    made with the root user's key; returns the key of a user whose policy allows just
    PutRecord and GetRecord on that group, so that each call is really evaluated."""
    from include.localcloud.access.enforcer import ROOT_CREDENTIALS_FILE

    root_keys = json.loads((state_dir / ROOT_CREDENTIALS_FILE).read_text())
    root = (root_keys["AccessKeyId"], root_keys["SecretAccessKey"])
    iam = client(url, "iam", root)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                      "Principal": {"Service": "sagemaker.amazonaws.com"}}]}
    iam.create_role(RoleName=DEFAULT_ROLE_ARN.split("/")[-1], AssumeRolePolicyDocument=json.dumps(trust))
    offline = {"Version": "2012-10-17", "Statement": [{  # the feature group's offline store is written as it
        "Effect": "Allow", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{BUCKET}/featurestore/*"}]}
    iam.put_role_policy(RoleName=DEFAULT_ROLE_ARN.split("/")[-1], PolicyName="offline-store",
                        PolicyDocument=json.dumps(offline))
    client(url, "s3", root).create_bucket(Bucket=BUCKET)
    create_feature_group(client(url, "sagemaker", root), "claims", group)
    iam.create_user(UserName="bench")
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["sagemaker:PutRecord", "sagemaker:GetRecord"],
        "Resource": f"arn:aws:sagemaker:{REGION}:123456789012:feature-group/{group}"}]}
    iam.put_user_policy(UserName="bench", PolicyName="records", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="bench")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def measure_enforcement(work: Path, claims: list[dict[str, str]]) -> list[Row]:
    """PutRecord records/s and GetRecord p50/p99 of two local clouds up side by side, one with
    LOCALCLOUD_IAM=enforce, measured alternately (REPETITIONS runs each, medians)."""
    group = "bench-iam-claims"
    policy_ids = [row[schema.RECORD_IDENTIFIER] for row in claims]
    with local_cloud(work / "iam-off") as (plain_url, plain), \
            local_cloud(work / "iam-enforce", {"LOCALCLOUD_IAM": "enforce"}) as (enforcing_url, enforcing):
        client(plain_url, "s3").create_bucket(Bucket=BUCKET)
        create_feature_group(client(plain_url, "sagemaker"), "claims", group)
        clouds = {
            "off": (client(plain_url, "sagemaker-featurestore-runtime"), plain.pid),
            "enforce": (client(enforcing_url, "sagemaker-featurestore-runtime",
                               enforcing_principal(enforcing_url, work / "iam-enforce", group)), enforcing.pid),
        }
        puts: dict[str, list[Throughput]] = {"off": [], "enforce": []}
        gets: dict[str, list[tuple[float, float]]] = {"off": [], "enforce": []}
        for _ in range(REPETITIONS):
            for mode, (featurestore, pid) in clouds.items():
                puts[mode].append(throughput(put_calls(featurestore, group, claims), pid))
            for mode, (featurestore, _pid) in clouds.items():
                samples = latencies(lambda f=featurestore: f.get_record(
                    FeatureGroupName=group, RecordIdentifierValueAsString=random.choice(policy_ids)), LATENCY_CALLS)
                gets[mode].append((percentile(samples, 0.50), percentile(samples, 0.99)))
    put = {mode: statistics.median(run.per_second for run in runs) for mode, runs in puts.items()}
    server_ms = {mode: statistics.median(run.server_cpu_ms for run in runs) for mode, runs in puts.items()}
    p50 = {mode: statistics.median(run[0] for run in runs) for mode, runs in gets.items()}
    p99 = {mode: statistics.median(run[1] for run in runs) for mode, runs in gets.items()}
    put_ratio = put["enforce"] / put["off"]
    p50_ratio, p99_ratio = p50["enforce"] / p50["off"], p99["enforce"] / p99["off"]
    return [  # target: at most 10 % slower with enforcement
        Row("IAM enforced: PutRecord records/s", put["enforce"], "/s", "", put_ratio >= 1 / 1.10,
            f"{put_ratio:.2f}x without", f"without: {put['off']:,.0f} /s; target >= 0.91x; server CPU/record "
            f"{server_ms['enforce']:.2f} ms ({server_ms['off']:.2f} ms without)"),
        Row("IAM enforced: GetRecord p50", p50["enforce"], "ms", "", p50_ratio <= 1.10,
            f"{p50_ratio:.2f}x without", f"without: {p50['off']:.2f} ms; target <= 1.10x"),
        Row("IAM enforced: GetRecord p99", p99["enforce"], "ms", "", p99_ratio <= 1.10,
            f"{p99_ratio:.2f}x without", f"without: {p99['off']:.2f} ms; target <= 1.10x"),
    ]


def render(rows: list[Row]) -> str:
    header = ("metric", "measured", "target", "ok", "vs baseline", "notes")
    table = [header] + [
        (row.metric, "n/a" if row.value is None else f"{row.value:,.{0 if row.unit == '/s' else 3}f} {row.unit}",
         row.target and f"{row.target} {row.unit}", {True: "yes", False: "NO", None: ""}[row.met], row.ratio, row.note)
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1]
                     for line in table)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="localcloud-bench-") as work:
        rows = run(Path(work))
    print(f"Local cloud benchmark: {os.cpu_count()} cores, local cloud in its own process, "
          f"median of {REPETITIONS} runs where it applies")
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
