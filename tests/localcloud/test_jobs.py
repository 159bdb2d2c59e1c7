"""SageMaker processing and training jobs in the local cloud: really run, through boto3."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost
from botocore.exceptions import ClientError
from sagemaker.core import image_uris

from include.localcloud.sagemaker import jobs
from include.localcloud.sagemaker.containers import XGBOOST_ALGORITHM
from include.localcloud.sagemaker.hosting import extract_files
from include.localcloud.sagemaker.jobs import training_environment
from include.localcloud.sagemaker.sandbox import Sandbox
from include.localcloud.server import LocalCloud
from include.localcloud.store import Store
from tests.conftest import make_client

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
XGBOOST_IMAGE = image_uris.retrieve("xgboost", region=REGION, version="1.7-1")
SKLEARN_IMAGE = image_uris.retrieve("sklearn", region=REGION, version="1.2-1")
BUCKET = "jobs-tests"
CLUSTER = {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 5}}
RESOURCES = {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5}
LOCAL_CLOUD_STOPPED = ("InternalServerError: The job was interrupted: the local cloud stopped while it was running. "
                       "Please try again.")


def classification_csv(rows: int, seed: int) -> bytes:
    """Label first, no header: the built-in XGBoost algorithm's CSV."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, 4))
    labels = (features[:, 0] - features[:, 1] + rng.normal(scale=0.7, size=rows) > 0).astype(int)
    return "\n".join(",".join([str(label), *(f"{v:.5f}" for v in row)])
                     for label, row in zip(labels, features, strict=True)).encode()


def upload_training_data(s3: Any, bucket: str) -> None:
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="data/train/part-0.csv", Body=classification_csv(300, seed=1))
    s3.put_object(Bucket=bucket, Key="data/validation/part-0.csv", Body=classification_csv(150, seed=2))


def channels(bucket: str) -> list[dict[str, Any]]:
    return [{"ChannelName": name, "ContentType": "text/csv",
             "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/data/{name}"}}}
            for name in ("train", "validation")]


def wait_until_done(describe: Callable[..., dict[str, Any]], status_key: str, timeout: float = 120,
                    **name: str) -> dict[str, Any]:
    """Poll a Describe* call until the job leaves InProgress/Stopping (a safety net, not a timing check)."""
    deadline = time.monotonic() + timeout
    while (description := describe(**name))[status_key] in ("InProgress", "Stopping"):
        assert time.monotonic() < deadline, f"{name} still {description[status_key]}"
        time.sleep(0.2)
    return description


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def script_job(name: str, code_key: str, **extra: Any) -> dict[str, Any]:
    """A scikit-learn processing job running the script at s3://BUCKET/<code_key>."""
    return {
        "ProcessingJobName": name,
        "RoleArn": ROLE,
        "ProcessingResources": CLUSTER,
        "AppSpecification": {"ImageUri": SKLEARN_IMAGE,
                             "ContainerEntrypoint": ["python3", f"/opt/ml/processing/input/code/{code_key.split('/')[-1]}"]},
        "ProcessingInputs": [{"InputName": "code", "S3Input": {
            "S3Uri": f"s3://{BUCKET}/{code_key}", "LocalPath": "/opt/ml/processing/input/code",
            "S3DataType": "S3Prefix", "S3InputMode": "File"}}],
        **extra,
    }


def training_job(name: str, hyperparameters: dict[str, str], bucket: str = BUCKET, **extra: Any) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": XGBOOST_IMAGE, "TrainingInputMode": "File"},
        "HyperParameters": hyperparameters,
        "InputDataConfig": channels(bucket),
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/models/"},
        "ResourceConfig": RESOURCES,
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        **extra,
    }


def log_messages(logs: Any, group: str, job_name: str) -> list[str]:
    streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{job_name}/")["logStreams"]
    assert [s["logStreamName"] for s in streams] == [s["logStreamName"] for s in streams
                                                     if re.fullmatch(rf"{job_name}/algo-1-\d+", s["logStreamName"])]
    return [event["message"] for stream in streams for event in logs.get_log_events(
        logGroupName=group, logStreamName=stream["logStreamName"], startFromHead=True)["events"]]


@pytest.fixture(scope="module")
def s3(aws: Callable[..., Any]) -> Any:
    client = aws("s3")
    upload_training_data(client, BUCKET)
    return client


@pytest.fixture
def sm(aws: Callable[..., Any]) -> Any:
    return aws("sagemaker")


def put_script(s3: Any, key: str, code: str) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=code.encode())


# -- processing ----------------------------------------------------------------------------------
def test_processing_job_reads_inputs_writes_outputs_and_logs(s3: Any, sm: Any, aws: Callable[..., Any]) -> None:
    put_script(s3, "code/summarize/summarize.py", """
import csv, json, os, sys
import boto3
rows = list(csv.reader(open("/opt/ml/processing/input/data/part-0.csv".replace("/opt/ml", os.environ["SAGEMAKER_BASE_DIR"]))))
out = sys.argv[2]
os.makedirs(out + "/nested", exist_ok=True)
buckets = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
json.dump({"rows": len(rows), "positives": sum(int(r[0]) for r in rows), "mode": sys.argv[1], "buckets": buckets,
           "region": os.environ["AWS_REGION"]}, open(out + "/nested/summary.json", "w"))
print("summarized", len(rows), "rows")
""")
    sm.create_processing_job(**script_job(
        "summarize-claims", "code/summarize/summarize.py",
        AppSpecification={"ImageUri": SKLEARN_IMAGE,
                          "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/summarize.py"],
                          "ContainerArguments": ["--fast", "/opt/ml/processing/output"]},
        ProcessingInputs=[
            {"InputName": "code", "S3Input": {"S3Uri": f"s3://{BUCKET}/code/summarize/", "S3DataType": "S3Prefix",
                                              "LocalPath": "/opt/ml/processing/input/code", "S3InputMode": "File"}},
            {"InputName": "data", "S3Input": {"S3Uri": f"s3://{BUCKET}/data/train", "S3DataType": "S3Prefix",
                                              "LocalPath": "/opt/ml/processing/input/data", "S3InputMode": "File"}},
        ],
        ProcessingOutputConfig={"Outputs": [{"OutputName": "summary", "S3Output": {
            "S3Uri": f"s3://{BUCKET}/summaries/claims", "LocalPath": "/opt/ml/processing/output",
            "S3UploadMode": "EndOfJob"}}]},
        Environment={"STAGE": "test"},
        Tags=[{"Key": "team", "Value": "fraud"}],
    ))
    job = wait_until_done(sm.describe_processing_job, "ProcessingJobStatus", ProcessingJobName="summarize-claims")

    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["ProcessingJobArn"] == "arn:aws:sagemaker:us-east-1:123456789012:processing-job/summarize-claims"
    assert job["CreationTime"] <= job["ProcessingStartTime"] <= job["ProcessingEndTime"] <= job["LastModifiedTime"]
    assert job["Environment"] == {"STAGE": "test"}
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key="summaries/claims/nested/summary.json")["Body"].read())
    assert (summary["rows"], summary["mode"], summary["region"]) == (300, "--fast", REGION)
    assert 0 < summary["positives"] < 300 and BUCKET in summary["buckets"]  # boto3 in the job reached S3
    assert sm.list_tags(ResourceArn=job["ProcessingJobArn"])["Tags"] == [{"Key": "team", "Value": "fraud"}]
    assert "summarized 300 rows" in log_messages(aws("logs"), "/aws/sagemaker/ProcessingJobs", "summarize-claims")


def test_a_job_of_two_instances_runs_two_hosts_at_once_each_with_its_shard(
        s3: Any, sm: Any, aws: Callable[..., Any]) -> None:
    """InstanceCount 2: two containers at once (each waits to see the other's file), each with its
    resourceconfig.json, a disjoint share of the ShardedByS3Key input and all of the replicated one,
    its own log stream, and its outputs uploaded."""
    for number in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"shards/part-{number}.csv", Body=f"{number}\n".encode())
    put_script(s3, "code/hosts/hosts.py", """
import json, os, pathlib, time
base = pathlib.Path(os.environ["SAGEMAKER_BASE_DIR"])
config = json.loads((base / "config/resourceconfig.json").read_text())
(base.parent / config["current_host"]).with_suffix(".started").touch()
others = [base.parent / f"{host}.started" for host in config["hosts"] if host != config["current_host"]]
deadline = time.monotonic() + 30
while not all(other.exists() for other in others) and time.monotonic() < deadline:
    time.sleep(0.05)
shard = sorted(p.name for p in (base / "processing/input/shard").iterdir())
output = base / "processing/output"
(output / f"{config['current_host']}.json").write_text(json.dumps({
    "config": config, "shard": shard, "code": sorted(p.name for p in (base / "processing/input/code").iterdir()),
    "together": all(other.exists() for other in others)}))
print("host", config["current_host"], "shard", shard)
""")
    request = script_job("two-hosts", "code/hosts/hosts.py")
    request["ProcessingResources"] = {"ClusterConfig": {**CLUSTER["ClusterConfig"], "InstanceCount": 2}}
    request["ProcessingInputs"].append({"InputName": "shard", "S3Input": {
        "S3Uri": f"s3://{BUCKET}/shards/", "LocalPath": "/opt/ml/processing/input/shard", "S3DataType": "S3Prefix",
        "S3InputMode": "File", "S3DataDistributionType": "ShardedByS3Key"}})
    request["ProcessingOutputConfig"] = {"Outputs": [{"OutputName": "hosts", "S3Output": {
        "S3Uri": f"s3://{BUCKET}/two-hosts/", "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]}
    sm.create_processing_job(**request)
    job = wait_until_done(sm.describe_processing_job, "ProcessingJobStatus", ProcessingJobName="two-hosts")

    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    found = {host: json.loads(s3.get_object(Bucket=BUCKET, Key=f"two-hosts/{host}.json")["Body"].read())
             for host in ("algo-1", "algo-2")}
    for host, seen in found.items():
        assert seen["config"] == {"current_host": host, "hosts": ["algo-1", "algo-2"]}
        assert seen["code"] == ["hosts.py"] and seen["together"]
    assert found["algo-1"]["shard"] == ["part-0.csv", "part-2.csv", "part-4.csv"]
    assert found["algo-2"]["shard"] == ["part-1.csv", "part-3.csv"]
    logs = aws("logs")
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/ProcessingJobs",
                                        logStreamNamePrefix="two-hosts/")["logStreams"]
    assert sorted(s["logStreamName"].rsplit("-", 1)[0] for s in streams) == ["two-hosts/algo-1", "two-hosts/algo-2"]


def test_a_job_sizes_its_thread_pools_to_its_one_core(s3: Any, sm: Any, aws: Callable[..., Any]) -> None:
    """A job holds one slot, one core. Thread pools sized to the machine made two jobs at once spin
    against each other, each running 3 to 10 times slower."""
    put_script(s3, "code/threads/threads.py", """
import json
import numpy, sklearn.ensemble, xgboost  # their native libraries bring the OpenMP and BLAS pools
from threadpoolctl import threadpool_info
print("pools", json.dumps(sorted({(pool["internal_api"], pool["num_threads"]) for pool in threadpool_info()})))
""")
    sm.create_processing_job(**script_job("thread-pools", "code/threads/threads.py"))
    job = wait_until_done(sm.describe_processing_job, "ProcessingJobStatus", ProcessingJobName="thread-pools")

    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    [line] = [m for m in log_messages(aws("logs"), "/aws/sagemaker/ProcessingJobs", "thread-pools")
              if m.startswith("pools ")]
    pools = json.loads(line.removeprefix("pools "))
    assert {"openmp", "openblas"} <= {library for library, _ in pools}
    assert {threads for _, threads in pools} == {1}
    # The training toolkit's variable tells scripts the same.
    job = training_job("cpus", {"num_round": "3"})
    assert training_environment(job, Sandbox(Path("/tmp")), {"current_instance_type": "ml.m5.large"})["SM_NUM_CPUS"] == "1"


def test_only_the_newest_finished_sandboxes_are_kept(s3: Any, sm: Any, cloud: LocalCloud,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "KEPT_SANDBOXES", 2)
    put_script(s3, "code/quick/quick.py", "print('done')\n")
    names = [f"quick-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for name in names:
        sm.create_processing_job(**script_job(name, "code/quick/quick.py"))
        assert wait_until_done(sm.describe_processing_job, "ProcessingJobStatus",
                               ProcessingJobName=name)["ProcessingJobStatus"] == "Completed"
    folder = cloud.state_dir / "jobs" / "processing-job"
    wait_for(lambda: sorted(p.name for p in folder.iterdir()) == sorted(names[1:]))


def test_failing_job_carries_the_tail_of_its_error(s3: Any, sm: Any) -> None:
    put_script(s3, "code/broken/broken.py", "print('starting')\nraise ValueError('column fraud_flag is missing')\n")
    sm.create_processing_job(**script_job("broken-script", "code/broken/broken.py"))
    job = wait_until_done(sm.describe_processing_job, "ProcessingJobStatus", ProcessingJobName="broken-script")

    assert job["ProcessingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("AlgorithmError: ")
    assert job["FailureReason"].endswith("ValueError: column fraud_flag is missing")
    assert "ProcessingEndTime" in job


def test_a_processing_jobs_exit_message_is_described_and_names_its_failure(s3: Any, sm: Any) -> None:
    script = ("import os, pathlib\nout = pathlib.Path(os.environ['SAGEMAKER_BASE_DIR'], 'output')\n"
              "out.mkdir(exist_ok=True)\n(out / 'message').write_text({text!r})\nraise SystemExit({code})\n")
    put_script(s3, "code/told/bad.py", script.format(text="ClientError: rows.csv: no data rows", code=1))
    put_script(s3, "code/told/good.py", script.format(text="42 rows written", code=0))
    sm.create_processing_job(**script_job("told-bad", "code/told/bad.py"))
    sm.create_processing_job(**script_job("told-good", "code/told/good.py"))
    bad = wait_until_done(sm.describe_processing_job, "ProcessingJobStatus", ProcessingJobName="told-bad")
    good = wait_until_done(sm.describe_processing_job, "ProcessingJobStatus", ProcessingJobName="told-good")

    assert (bad["ProcessingJobStatus"], bad["FailureReason"], bad["ExitMessage"]) == (
        "Failed", "ClientError: rows.csv: no data rows", "ClientError: rows.csv: no data rows")
    assert (good["ProcessingJobStatus"], good["ExitMessage"]) == ("Completed", "42 rows written")


@pytest.mark.parametrize(("name", "image", "reason"), [
    ("unknown-image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-own:latest", "is not supported by the local cloud"),
    ("missing-input", SKLEARN_IMAGE, 'No S3 objects found under S3 URL "s3://jobs-tests/code/nothing-here/"'),
])
def test_jobs_that_cannot_run_fail_with_a_client_error(s3: Any, sm: Any, name: str, image: str, reason: str) -> None:
    request = script_job(name, "code/nothing-here/")
    request["AppSpecification"]["ImageUri"] = image
    sm.create_processing_job(**request)
    job = wait_until_done(sm.describe_processing_job, "ProcessingJobStatus", ProcessingJobName=name)
    assert job["ProcessingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("ClientError: ") and reason in job["FailureReason"]


def test_processing_max_runtime_and_stop(s3: Any, sm: Any) -> None:
    put_script(s3, "code/sleepy/sleepy.py", "import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n")
    sm.create_processing_job(**script_job("sleepy-timeout", "code/sleepy/sleepy.py",
                                          StoppingCondition={"MaxRuntimeInSeconds": 1}))
    sm.create_processing_job(**script_job("sleepy-stopped", "code/sleepy/sleepy.py"))
    wait_for(lambda: "ProcessingStartTime" in sm.describe_processing_job(ProcessingJobName="sleepy-stopped"))
    sm.stop_processing_job(ProcessingJobName="sleepy-stopped")
    assert sm.describe_processing_job(ProcessingJobName="sleepy-stopped")["ProcessingJobStatus"] in ("Stopping",
                                                                                                      "Stopped")

    for name in ("sleepy-timeout", "sleepy-stopped"):
        job = wait_until_done(sm.describe_processing_job, "ProcessingJobStatus", ProcessingJobName=name)
        assert job["ProcessingJobStatus"] == "Stopped"
        assert "FailureReason" not in job
    with pytest.raises(ClientError) as caught:
        sm.stop_processing_job(ProcessingJobName="sleepy-stopped")
    assert caught.value.response["Error"]["Message"] == (
        "The request was rejected because the processing job is in status Stopped.")


# -- training ------------------------------------------------------------------------------------
def test_builtin_xgboost_trains_reports_metrics_and_saves_a_loadable_model(
        s3: Any, sm: Any, aws: Callable[..., Any], cloud: LocalCloud, tmp_path: Any) -> None:
    hyperparameters = {"num_round": "15", "objective": "binary:logistic", "eval_metric": "auc,logloss",
                       "max_depth": "3", "eta": "0.3", "subsample": "0.9", "seed": "7"}
    arn = sm.create_training_job(**training_job("xgb-fraud", hyperparameters))["TrainingJobArn"]
    job = wait_until_done(sm.describe_training_job, "TrainingJobStatus", TrainingJobName="xgb-fraud")

    assert arn == "arn:aws:sagemaker:us-east-1:123456789012:training-job/xgb-fraud"
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["SecondaryStatus"] == "Completed"
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert all(t["StartTime"] <= t["EndTime"] for t in job["SecondaryStatusTransitions"])
    assert job["HyperParameters"] == hyperparameters
    assert job["CreationTime"] <= job["TrainingStartTime"] <= job["TrainingEndTime"]
    assert job["TrainingTimeInSeconds"] >= 1 and job["BillableTimeInSeconds"] == job["TrainingTimeInSeconds"]
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert set(metrics) == {"train:auc", "validation:auc", "train:logloss", "validation:logloss"}
    assert 0.7 < metrics["validation:auc"] <= metrics["train:auc"] <= 1

    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{BUCKET}/models/xgb-fraud/output/model.tar.gz"
    archive = s3.get_object(Bucket=BUCKET, Key="models/xgb-fraud/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames() == ["xgboost-model"]
        extract_files(tar, tmp_path)
    booster = xgboost.Booster()
    booster.load_model(str(tmp_path / "xgboost-model"))
    rows = np.loadtxt(io.StringIO(classification_csv(150, seed=2).decode()), delimiter=",")
    predictions = booster.predict(xgboost.DMatrix(rows[:, 1:]))
    assert predictions.shape == (150,) and ((predictions > 0) & (predictions < 1)).all()

    messages = log_messages(aws("logs"), "/aws/sagemaker/TrainingJobs", "xgb-fraud")
    rounds = [m for m in messages if re.match(r"\[\d+\]#011", m)]
    assert len(rounds) == 15
    assert re.fullmatch(r"\[14\]#011train-auc:[\d.]+#011train-logloss:[\d.]+#011validation-auc:([\d.]+)"
                        r"#011validation-logloss:[\d.]+", rounds[-1])
    assert float(rounds[-1].split("validation-auc:")[1].split("#011")[0]) == metrics["validation:auc"]
    summaries = sm.list_training_jobs(NameContains="xgb-fraud")["TrainingJobSummaries"]
    assert [(s["TrainingJobName"], s["TrainingJobStatus"], s["SecondaryStatus"]) for s in summaries] == [
        ("xgb-fraud", "Completed", "Completed")]

    # The container contract's files, in the job's sandbox (its /opt/ml).
    config = cloud.state_dir / "jobs" / "training-job" / "xgb-fraud" / "input" / "config"
    assert json.loads((config / "hyperparameters.json").read_text()) == hyperparameters
    assert json.loads((config / "inputdataconfig.json").read_text())["validation"] == {
        "ContentType": "text/csv", "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
        "RecordWrapperType": "None"}
    resource_config = json.loads((config / "resourceconfig.json").read_text())
    assert (resource_config["current_host"], resource_config["hosts"]) == ("algo-1", ["algo-1"])
    assert (config.parent / "data" / "train" / "part-0.csv").read_bytes() == classification_csv(300, seed=1)


def test_training_environment_follows_the_training_toolkit(tmp_path: Any) -> None:
    job = training_job("toolkit", {"num_round": "3", "eval_metric": "auc", "max_depth": "4"})
    sandbox = Sandbox(tmp_path)
    environment = training_environment(job, sandbox, {"current_instance_type": "ml.m5.large"})

    assert environment["SM_MODEL_DIR"] == str(tmp_path / "model")
    assert environment["SM_OUTPUT_DATA_DIR"] == str(tmp_path / "output" / "data")
    assert environment["SM_INPUT_CONFIG_DIR"] == str(tmp_path / "input" / "config")
    assert json.loads(environment["SM_CHANNELS"]) == ["train", "validation"]
    assert environment["SM_CHANNEL_TRAIN"] == str(tmp_path / "input" / "data" / "train")
    assert environment["SM_CHANNEL_VALIDATION"] == str(tmp_path / "input" / "data" / "validation")
    assert json.loads(environment["SM_HPS"]) == {"num_round": 3, "eval_metric": "auc", "max_depth": 4}
    assert environment["SM_HP_MAX_DEPTH"] == "4"
    assert (environment["SM_CURRENT_HOST"], json.loads(environment["SM_HOSTS"])) == ("algo-1", ["algo-1"])
    assert environment["SM_CURRENT_INSTANCE_TYPE"] == "ml.m5.large"


def test_builtin_xgboost_trains_without_loading_scikit_learn(tmp_path: Any) -> None:
    """xgboost imports scikit-learn when installed (with scipy.stats, 0.8 s of each job's start);
    the algorithm's process needs neither and must not load them."""
    sandbox = Sandbox(tmp_path)
    job = training_job("lean", {"num_round": "2", "objective": "binary:logistic"})
    job["InputDataConfig"] = job["InputDataConfig"][:1]
    sandbox.write_json("/opt/ml/input/config/hyperparameters.json", job["HyperParameters"])
    sandbox.write_json("/opt/ml/input/config/inputdataconfig.json", {"train": {"ContentType": "text/csv"}})
    sandbox.path("/opt/ml/input/data/train").mkdir(parents=True)
    sandbox.path("/opt/ml/input/data/train/part-0.csv").write_bytes(classification_csv(50, seed=3))
    environment = {**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path),
                   **training_environment(job, sandbox, {"current_instance_type": "ml.m5.large"})}
    # The script run as the job runs it, then a look at what its interpreter loaded.
    probe = (f"import runpy, sys\ntry:\n    runpy.run_path({str(XGBOOST_ALGORITHM)!r}, run_name='__main__')\n"
             "except SystemExit as exit:\n    print('exit', exit.code)\n"
             "print('loaded', sorted(name for name in ('sklearn', 'scipy.stats') if sys.modules.get(name)))")
    finished = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True,
                              timeout=120, check=False)
    assert finished.stdout.splitlines()[-2:] == ["exit 0", "loaded []"], finished.stderr
    assert (tmp_path / "model" / "xgboost-model").exists()


def test_builtin_xgboost_defaults_to_the_objectives_metric(s3: Any, sm: Any) -> None:
    sm.create_training_job(**training_job("xgb-default-metric", {"num_round": "3", "objective": "binary:logistic"}))
    job = wait_until_done(sm.describe_training_job, "TrainingJobStatus", TrainingJobName="xgb-default-metric")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert {m["MetricName"] for m in job["FinalMetricDataList"]} == {"train:logloss", "validation:logloss"}


@pytest.mark.parametrize(("name", "hyperparameters", "reason"), [
    ("xgb-extraneous", {"num_round": "3", "max_dept": "3"}, "ClientError: Extraneous hyperparameter found: max_dept"),
    ("xgb-eta-range", {"num_round": "3", "eta": "2"}, "ClientError: Hyperparameter eta: 2.0 is not in [0, 1]"),
    ("xgb-no-rounds", {"max_depth": "3"}, "ClientError: Missing required hyperparameter: num_round"),
])
def test_builtin_xgboost_rejects_bad_hyperparameters(s3: Any, sm: Any, name: str, hyperparameters: dict[str, str],
                                                      reason: str) -> None:
    sm.create_training_job(**training_job(name, hyperparameters))
    job = wait_until_done(sm.describe_training_job, "TrainingJobStatus", TrainingJobName=name)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"], job["FailureReason"]) == ("Failed", "Failed", reason)
    assert "ModelArtifacts" not in job


def test_builtin_xgboost_rejects_csv_with_a_header(s3: Any, sm: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="headed/train/part-0.csv",
                  Body=b"fraud,amount,age\n" + classification_csv(20, seed=3))
    request = training_job("xgb-headed", {"num_round": "3", "objective": "binary:logistic"})
    request["InputDataConfig"] = request["InputDataConfig"][:1]
    request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = f"s3://{BUCKET}/headed/train/"
    sm.create_training_job(**request)
    job = wait_until_done(sm.describe_training_job, "TrainingJobStatus", TrainingJobName="xgb-headed")
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("ClientError: Channel train: the CSV data must be numeric, without a header")


def test_training_max_runtime_and_stop(s3: Any, sm: Any) -> None:
    endless = {"num_round": "100000000", "objective": "binary:logistic"}
    sm.create_training_job(**training_job("xgb-too-long", endless, StoppingCondition={"MaxRuntimeInSeconds": 2}))
    sm.create_training_job(**training_job("xgb-stopped", endless))
    wait_for(lambda: sm.describe_training_job(TrainingJobName="xgb-stopped")["SecondaryStatus"] == "Training")
    sm.stop_training_job(TrainingJobName="xgb-stopped")
    stopping = sm.describe_training_job(TrainingJobName="xgb-stopped")
    assert stopping["TrainingJobStatus"] in ("Stopping", "Stopped")
    assert "Stopping" in [t["Status"] for t in stopping["SecondaryStatusTransitions"]]

    timed_out = wait_until_done(sm.describe_training_job, "TrainingJobStatus", TrainingJobName="xgb-too-long")
    assert (timed_out["TrainingJobStatus"], timed_out["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    stopped = wait_until_done(sm.describe_training_job, "TrainingJobStatus", TrainingJobName="xgb-stopped")
    assert (stopped["TrainingJobStatus"], stopped["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert [t["Status"] for t in stopped["SecondaryStatusTransitions"]][-2:] == ["Stopping", "Stopped"]
    assert stopped["ModelArtifacts"]["S3ModelArtifacts"].endswith("/xgb-stopped/output/model.tar.gz")


# -- the API -------------------------------------------------------------------------------------
def test_requests_are_checked(s3: Any, sm: Any, aws: Callable[..., Any]) -> None:
    def error_of(call: Callable[..., Any], **params: Any) -> tuple[str, str]:
        with pytest.raises(ClientError) as caught:
            call(**params)
        return caught.value.response["Error"]["Code"], caught.value.response["Error"]["Message"]

    put_script(s3, "code/quick/quick.py", "print('done')\n")
    sm.create_processing_job(**script_job("taken-name", "code/quick/quick.py"))
    code, message = error_of(sm.create_processing_job, **script_job("taken-name", "code/quick/quick.py"))
    assert code == "ResourceInUse" and "processing-job/taken-name" in message
    assert error_of(sm.describe_training_job, TrainingJobName="no-such-job") == (
        "ValidationException", "Requested resource not found.")
    assert error_of(sm.stop_processing_job, ProcessingJobName="no-such-job")[0] == "ValidationException"
    outside = script_job("outside-path", "code/quick/quick.py")
    outside["ProcessingInputs"][0]["S3Input"]["LocalPath"] = "/opt/ml/processing/../model"
    code, message = error_of(sm.create_processing_job, **outside)
    assert code == "ValidationException" and "/opt/ml/processing/" in message
    unchecked = aws("sagemaker", parameter_validation=False)
    request = training_job("no-role", {"num_round": "1"})
    del request["RoleArn"]
    code, message = error_of(unchecked.create_training_job, **request)
    assert code == "ValidationException" and "roleArn" in message
    assert error_of(sm.create_training_job, **training_job("no-instances", {"num_round": "1"}, ResourceConfig={
        "VolumeSizeInGB": 5}))[0] == "ValidationException"
    with pytest.raises(ClientError):
        sm.describe_training_job(TrainingJobName="no-instances")


def test_list_filters_sorts_and_pages(s3: Any, sm: Any) -> None:
    for name in ("listed-b", "listed-c", "listed-a"):  # an unsupported image fails at once
        request = script_job(name, "code/quick/quick.py")
        request["AppSpecification"]["ImageUri"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/other:1"
        sm.create_processing_job(**request)
    for name in ("listed-a", "listed-b", "listed-c"):
        wait_until_done(sm.describe_processing_job, "ProcessingJobStatus", ProcessingJobName=name)

    newest_first = sm.list_processing_jobs(NameContains="listed-")["ProcessingJobSummaries"]
    assert [s["ProcessingJobName"] for s in newest_first] == ["listed-a", "listed-c", "listed-b"]
    assert {s["ProcessingJobStatus"] for s in newest_first} == {"Failed"}
    assert all("is not supported" in s["FailureReason"] for s in newest_first)
    first = sm.list_processing_jobs(NameContains="LISTED", SortBy="Name", SortOrder="Ascending", MaxResults=2)
    assert [s["ProcessingJobName"] for s in first["ProcessingJobSummaries"]] == ["listed-a", "listed-b"]
    rest = sm.list_processing_jobs(NameContains="listed", SortBy="Name", SortOrder="Ascending", MaxResults=2,
                                   NextToken=first["NextToken"])
    assert [s["ProcessingJobName"] for s in rest["ProcessingJobSummaries"]] == ["listed-c"]
    assert "NextToken" not in rest
    assert sm.list_processing_jobs(NameContains="listed", StatusEquals="Completed")["ProcessingJobSummaries"] == []


def test_at_most_one_job_process_per_cpu_runs_at_once(tmp_path: Any) -> None:
    slots = os.cpu_count() or 1
    names = [f"queued-{i}" for i in range(slots + 1)]
    with LocalCloud(tmp_path, port=0) as cloud:
        s3, sm = make_client(cloud, "s3"), make_client(cloud, "sagemaker")
        s3.create_bucket(Bucket=BUCKET)
        put_script(s3, "code/sleepy/sleepy.py", "import time\ntime.sleep(300)\n")
        for name in names:
            sm.create_processing_job(**script_job(name, "code/sleepy/sleepy.py"))

        def started() -> list[str]:
            return [n for n in names if "ProcessingStartTime" in sm.describe_processing_job(ProcessingJobName=n)]

        wait_for(lambda: len(started()) == slots)
        time.sleep(1)  # the last job keeps waiting for a slot
        waiting = set(names) - set(started())
        assert len(waiting) == 1
        assert sm.describe_processing_job(ProcessingJobName=waiting.pop())["ProcessingJobStatus"] == "InProgress"
        for name in names:
            sm.stop_processing_job(ProcessingJobName=name)
        for name in names:
            assert wait_until_done(sm.describe_processing_job, "ProcessingJobStatus",
                                   ProcessingJobName=name)["ProcessingJobStatus"] == "Stopped"


def test_running_jobs_end_failed_when_the_cloud_stops_or_crashes(tmp_path: Any) -> None:
    with LocalCloud(tmp_path, port=0) as cloud:
        s3, sm = make_client(cloud, "s3"), make_client(cloud, "sagemaker")
        s3.create_bucket(Bucket=BUCKET)
        put_script(s3, "code/sleepy/sleepy.py", "import time\ntime.sleep(300)\n")
        sm.create_processing_job(**script_job("cut-short", "code/sleepy/sleepy.py"))
        wait_for(lambda: "ProcessingStartTime" in sm.describe_processing_job(ProcessingJobName="cut-short"))
    # A crash leaves a job InProgress in the store, with no process behind it.
    crashed = {"TrainingJobName": "crashed", "TrainingJobStatus": "InProgress", "SecondaryStatus": "Training",
               "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/crashed",
               "CreationTime": time.time(), "LastModifiedTime": time.time(), "TrainingStartTime": time.time(),
               "ResourceConfig": RESOURCES, "SecondaryStatusTransitions": []}
    store = Store(tmp_path / "state.db")
    store.put("training-job", "crashed", crashed)
    store.close()

    with LocalCloud(tmp_path, port=0) as cloud:
        sm = make_client(cloud, "sagemaker")
        stopped = sm.describe_processing_job(ProcessingJobName="cut-short")
        assert (stopped["ProcessingJobStatus"], stopped["FailureReason"]) == ("Failed", LOCAL_CLOUD_STOPPED)
        recovered = sm.describe_training_job(TrainingJobName="crashed")
        assert (recovered["TrainingJobStatus"], recovered["SecondaryStatus"]) == ("Failed", "Failed")
        assert recovered["FailureReason"] == LOCAL_CLOUD_STOPPED
        assert "TrainingEndTime" in recovered


# -- the Airflow provider's operators, unchanged -------------------------------------------------
def test_provider_processing_operator_runs_unchanged(s3: Any, airflow_connection: None) -> None:
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerProcessingOperator

    put_script(s3, "code/operator/hello.py", "print('hello from the operator')\n")
    process = SageMakerProcessingOperator(task_id="process", check_interval=1,
                                          config=script_job("operator-processing", "code/operator/hello.py"))
    first = process.execute({})["Processing"]
    process = SageMakerProcessingOperator(task_id="process", check_interval=1,
                                          config=script_job("operator-processing", "code/operator/hello.py"))
    again = process.execute({})["Processing"]
    assert first["ProcessingJobStatus"] == again["ProcessingJobStatus"] == "Completed"
    # The operator found the name taken (DescribeProcessingJob) and added a timestamp.
    assert re.fullmatch(r"operator-processing-\d{10}", again["ProcessingJobName"])


@pytest.mark.slow  # the provider reads the job's status every 30 s while it tails the logs
def test_provider_training_operator_runs_unchanged_and_prints_the_logs(
        s3: Any, airflow_connection: None, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator

    config = training_job("operator-training", {"num_round": "5", "objective": "binary:logistic",
                                                "eval_metric": "auc"})
    train = SageMakerTrainingOperator(task_id="train", config=config, print_log=True, check_interval=1)
    result = train.execute({})["Training"]

    assert result["TrainingJobStatus"] == "Completed"
    assert result["ModelArtifacts"]["S3ModelArtifacts"].endswith("/operator-training/output/model.tar.gz")
    printed = caplog.text + capsys.readouterr().out
    assert "[4]#011train-auc:" in printed
