"""Hosting in the local cloud: models, endpoint configs and endpoints served by real model server
processes, invoked through the sagemaker-runtime API; updates without failed requests, deletion,
errors as AWS words them, durability across restarts, and the provider's endpoint operator."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from botocore.exceptions import ClientError

from include.localcloud.sagemaker.hosting import MAX_SERVER_REPLACEMENTS, extract_files
from include.localcloud.server import ACCOUNT_ID, LocalCloud
from tests.conftest import make_client

IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
BUCKET = "hosting-models"
FEATURES = 5
WAIT_SECONDS = 90


def train_booster(seed: int) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    features = rng.random((200, FEATURES))
    labels = (features[:, 0] + 0.5 * rng.random(200) > 0.7).astype(int)
    return xgb.train(
        {"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(features, label=labels), 10
    )


def model_archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def booster_archive(booster: xgb.Booster, tmp_path: Path) -> bytes:
    path = tmp_path / "xgboost-model"
    booster.save_model(str(path))
    return model_archive({"xgboost-model": path.read_bytes()})


def upload(s3: Any, key: str, data: bytes) -> str:
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def create_model_and_config(sm: Any, name: str, model_url: str, image: str = IMAGE) -> None:
    sm.create_model(
        ModelName=name,
        PrimaryContainer={"Image": image, "ModelDataUrl": model_url},
        ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/sagemaker",
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    )


def wait_settled(sm: Any, name: str) -> dict[str, Any]:
    """DescribeEndpoint once the endpoint is no longer Creating or Updating."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        endpoint = sm.describe_endpoint(EndpointName=name)
        if endpoint["EndpointStatus"] not in ("Creating", "Updating") or time.monotonic() > deadline:
            return endpoint
        time.sleep(0.1)


def deploy(sm: Any, name: str, model_url: str) -> dict[str, Any]:
    create_model_and_config(sm, name, model_url)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    return wait_settled(sm, name)


def as_csv(rows: np.ndarray) -> str:
    return "\n".join(",".join(repr(float(value)) for value in row) for row in rows)


def csv_predictions(runtime: Any, name: str, rows: np.ndarray) -> np.ndarray:
    answer = runtime.invoke_endpoint(EndpointName=name, Body=as_csv(rows), ContentType="text/csv")
    assert answer["ContentType"] == "text/csv"
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    return np.array(answer["Body"].read().decode().splitlines(), dtype=np.float32)


def error_of(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response


def model_server_processes(endpoints_dir: Path) -> dict[int, int]:
    """Model server processes working in (a folder under) `endpoints_dir`, from /proc: pid -> its
    process group (a server leads its own group, with its forked workers in it)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes()
            group = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, IndexError, ValueError):
            continue
        if cwd.startswith(f"{endpoints_dir.resolve()}{os.sep}") and b"model_server.py" in cmdline:
            found[int(proc.name)] = group
    return found


def model_server_pids(endpoints_dir: Path) -> list[int]:
    """The model servers (not their forked workers) under `endpoints_dir`."""
    return [pid for pid, group in model_server_processes(endpoints_dir).items() if pid == group]


@pytest.fixture(scope="module")
def boosters() -> tuple[xgb.Booster, xgb.Booster]:
    return train_booster(1), train_booster(2)


@pytest.fixture(scope="module")
def model_urls(
    aws: Callable[..., Any], boosters: tuple[xgb.Booster, xgb.Booster], tmp_path_factory
) -> list[str]:
    tmp = tmp_path_factory.mktemp("models")
    return [
        upload(aws("s3"), f"model-{i}/model.tar.gz", booster_archive(b, tmp)) for i, b in enumerate(boosters)
    ]


@pytest.fixture(scope="module")
def served(aws: Callable[..., Any], model_urls: list[str]) -> str:
    """An InService endpoint serving the first booster."""
    sm = aws("sagemaker")
    sm.create_model(
        ModelName="hosting-main", PrimaryContainer={"Image": IMAGE, "ModelDataUrl": model_urls[0]}
    )
    sm.create_endpoint_config(
        EndpointConfigName="hosting-main",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "hosting-main"}],
    )
    sm.create_endpoint(EndpointName="hosting-main", EndpointConfigName="hosting-main")
    assert sm.describe_endpoint(EndpointName="hosting-main")["EndpointStatus"] == "Creating"
    endpoint = wait_settled(sm, "hosting-main")
    assert endpoint["EndpointStatus"] == "InService", endpoint.get("FailureReason")
    return "hosting-main"


def test_endpoint_predictions_equal_the_boosters(aws, boosters, served) -> None:
    runtime = aws("sagemaker-runtime")
    rows = np.random.default_rng(7).random((120, FEATURES))
    expected = boosters[0].predict(xgb.DMatrix(rows))
    # One row, a few rows (parsed by Python) and many rows (parsed by pandas).
    np.testing.assert_array_equal(csv_predictions(runtime, served, rows[:1]), expected[:1])
    np.testing.assert_array_equal(csv_predictions(runtime, served, rows[:10]), expected[:10])
    np.testing.assert_array_equal(csv_predictions(runtime, served, rows), expected)

    answer = runtime.invoke_endpoint(
        EndpointName=served,
        Body=json.dumps({"instances": rows[:3].tolist()}),
        ContentType="application/json",
        Accept="application/json",
    )
    assert answer["ContentType"] == "application/json"
    scores = [p["score"] for p in json.loads(answer["Body"].read())["predictions"]]
    np.testing.assert_array_equal(np.float32(scores), expected[:3])

    answer = runtime.invoke_endpoint(
        EndpointName=served,
        Body=json.dumps({"instances": [{"features": row} for row in rows[:2].tolist()]}),
        ContentType="application/json",
        Accept="application/jsonlines",
    )
    lines = answer["Body"].read().decode().splitlines()
    np.testing.assert_array_equal(np.float32([json.loads(line)["score"] for line in lines]), expected[:2])

    # Missing values are empty fields, as in the built-in container.
    with_missing = "," + as_csv(rows[:1]).split(",", 1)[1]
    answer = runtime.invoke_endpoint(EndpointName=served, Body=with_missing, ContentType="text/csv")
    missing = rows[:1].copy()
    missing[0, 0] = np.nan
    assert np.float32(answer["Body"].read().decode()) == boosters[0].predict(xgb.DMatrix(missing))[0]


def test_describe_and_list_hosting_resources(cloud, aws, model_urls, served) -> None:
    sm = aws("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName=served)
    assert endpoint["EndpointArn"] == f"arn:aws:sagemaker:us-east-1:{ACCOUNT_ID}:endpoint/{served}"
    assert endpoint["EndpointConfigName"] == served
    (variant,) = endpoint["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    assert variant["CurrentInstanceCount"] == variant["DesiredInstanceCount"] == 1
    assert variant["DeployedImages"][0]["SpecifiedImage"] == IMAGE

    model = sm.describe_model(ModelName=served)
    assert model["PrimaryContainer"]["ModelDataUrl"] == model_urls[0]
    assert model["ModelArn"].endswith(f":model/{served}")
    config = sm.describe_endpoint_config(EndpointConfigName=served)
    assert config["ProductionVariants"][0]["ModelName"] == served

    assert served in [m["ModelName"] for m in sm.list_models(NameContains="hosting-ma")["Models"]]
    assert served in [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]]
    listed = sm.list_endpoints(StatusEquals="InService", SortBy="Name", SortOrder="Ascending")["Endpoints"]
    assert served in [e["EndpointName"] for e in listed]
    assert served not in [e["EndpointName"] for e in sm.list_endpoints(StatusEquals="Failed")["Endpoints"]]

    # The model server's startup lines are in CloudWatch Logs, under SageMaker's group name.
    logs = aws("logs")
    group = f"/aws/sagemaker/Endpoints/{served}"
    (stream,) = logs.describe_log_streams(logGroupName=group)["logStreams"]
    assert stream["logStreamName"].startswith("AllTraffic/")
    events = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"])["events"]
    assert any("serving on 127.0.0.1" in e["message"] for e in events)


def test_model_errors_are_model_error_424(aws, served) -> None:
    runtime = aws("sagemaker-runtime")
    too_few = error_of(
        lambda: runtime.invoke_endpoint(EndpointName=served, Body="1,2", ContentType="text/csv")
    )
    assert too_few["Error"]["Code"] == "ModelError"
    assert too_few["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert "Received client error (400) from primary" in too_few["Error"]["Message"]
    assert "feature size of text/csv inference data 2" in too_few["Error"]["Message"]
    assert f"/aws/sagemaker/Endpoints/{served} in account {ACCOUNT_ID}" in too_few["Error"]["Message"]
    # ... where the model server's own account of the error already is.
    logs = aws("logs")
    group = f"/aws/sagemaker/Endpoints/{served}"
    (stream,) = logs.describe_log_streams(logGroupName=group)["logStreams"]
    events = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"])["events"]
    assert any("400 Unable to evaluate payload provided" in e["message"] for e in events)

    not_numbers = error_of(lambda: runtime.invoke_endpoint(EndpointName=served, Body="a,b,c,d,e"))
    assert "Received client error (415)" in not_numbers["Error"]["Message"]
    ragged = error_of(lambda: runtime.invoke_endpoint(EndpointName=served, Body="1,2,3,4,5\n1,2"))
    assert "different numbers of fields" in ragged["Error"]["Message"]
    wrong_type = error_of(
        lambda: runtime.invoke_endpoint(EndpointName=served, Body=b"\x00", ContentType="application/x-npy")
    )
    assert "Content-type application/x-npy not supported" in wrong_type["Error"]["Message"]
    wrong_accept = error_of(
        lambda: runtime.invoke_endpoint(EndpointName=served, Body="1,2,3,4,5", Accept="application/x-npy")
    )
    assert "Received client error (406)" in wrong_accept["Error"]["Message"]
    bad_json = error_of(
        lambda: runtime.invoke_endpoint(
            EndpointName=served, Body='{"rows": []}', ContentType="application/json"
        )
    )
    assert '{"instances": [[...], ...]}' in bad_json["Error"]["Message"]
    # The server is still up after all that.
    assert runtime.invoke_endpoint(EndpointName=served, Body="1,2,3,4,5")["Body"].read()


def test_missing_resources_are_errors_as_aws_words_them(aws, served) -> None:
    sm, runtime = aws("sagemaker"), aws("sagemaker-runtime")
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT_ID}"
    cases = [
        (lambda: sm.describe_model(ModelName="nope"), f'Could not find model "{arn}:model/nope".'),
        (lambda: sm.delete_model(ModelName="nope"), f'Could not find model "{arn}:model/nope".'),
        (
            lambda: sm.describe_endpoint_config(EndpointConfigName="nope"),
            'Could not find endpoint configuration "nope".',
        ),
        (
            lambda: sm.delete_endpoint_config(EndpointConfigName="nope"),
            'Could not find endpoint configuration "nope".',
        ),
        (lambda: sm.describe_endpoint(EndpointName="nope"), 'Could not find endpoint "nope".'),
        (lambda: sm.delete_endpoint(EndpointName="nope"), 'Could not find endpoint "nope".'),
        (
            lambda: sm.update_endpoint(EndpointName="nope", EndpointConfigName=served),
            'Could not find endpoint "nope".',
        ),
        (
            lambda: sm.create_endpoint(EndpointName="fresh", EndpointConfigName="nope"),
            'Could not find endpoint configuration "nope".',
        ),
        (
            lambda: sm.create_endpoint_config(
                EndpointConfigName="orphan",
                ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "nope"}],
            ),
            f'Could not find model "{arn}:model/nope".',
        ),
        (
            lambda: sm.create_endpoint(EndpointName=served, EndpointConfigName=served),
            f'Cannot create already existing endpoint "{arn}:endpoint/{served}".',
        ),
        (
            lambda: sm.create_endpoint_config(
                EndpointConfigName=served,
                ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": served}],
            ),
            f'Cannot create already existing endpoint configuration "{arn}:endpoint-config/{served}".',
        ),
    ]
    for call, message in cases:
        error = error_of(call)["Error"]
        assert (error["Code"], error["Message"]) == ("ValidationException", message)
    missing = error_of(lambda: runtime.invoke_endpoint(EndpointName="nope", Body="1"))
    assert missing["Error"]["Code"] == "ValidationError"
    assert missing["Error"]["Message"] == f"Endpoint nope of account {ACCOUNT_ID} not found."
    wrong_variant = error_of(
        lambda: runtime.invoke_endpoint(EndpointName=served, Body="1", TargetVariant="Blue")
    )
    assert wrong_variant["Error"]["Message"] == f"Variant Blue not found for endpoint {served}."


def test_requests_are_validated(aws, model_urls) -> None:
    sm = aws("sagemaker", parameter_validation=False)
    bad_name = error_of(lambda: sm.create_model(ModelName="m" * 64, PrimaryContainer={"Image": IMAGE}))[
        "Error"
    ]
    assert bad_name["Code"] == "ValidationException"
    assert (
        "at 'modelName' failed to satisfy constraint: Member must have length less than"
        in bad_name["Message"]
    )
    no_container = error_of(lambda: sm.create_model(ModelName="empty"))["Error"]["Message"]
    assert no_container == "Either PrimaryContainer or Containers must be specified."
    no_data = error_of(
        lambda: sm.create_model(
            ModelName="no-data",
            PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"s3://{BUCKET}/missing.tar.gz"},
        )
    )["Error"]["Message"]
    assert no_data == f"Could not find model data at s3://{BUCKET}/missing.tar.gz."
    no_variants = error_of(lambda: sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[]))
    assert "productionVariants" in no_variants["Error"]["Message"]

    sm.create_model(ModelName="twice", PrimaryContainer={"Image": IMAGE, "ModelDataUrl": model_urls[0]})
    again = error_of(lambda: sm.create_model(ModelName="twice", PrimaryContainer={"Image": IMAGE}))["Error"]
    assert (
        again["Message"]
        == f'Cannot create already existing model "arn:aws:sagemaker:us-east-1:{ACCOUNT_ID}:model/twice".'
    )
    two_variants = [{"VariantName": v, "ModelName": "twice"} for v in ("Blue", "Green")]
    sm.create_endpoint_config(EndpointConfigName="two-variants", ProductionVariants=two_variants)
    refused = error_of(
        lambda: sm.create_endpoint(EndpointName="two-variants", EndpointConfigName="two-variants")
    )
    assert "one production variant per endpoint" in refused["Error"]["Message"]
    assert (
        error_of(lambda: sm.describe_endpoint(EndpointName="two-variants"))["Error"]["Code"]
        == "ValidationException"
    )
    sm.delete_model(ModelName="twice")
    sm.delete_endpoint_config(EndpointConfigName="two-variants")
    assert "twice" not in [m["ModelName"] for m in sm.list_models()["Models"]]


def test_endpoint_fails_when_its_model_cannot_be_served(aws) -> None:
    sm = aws("sagemaker")
    url = upload(aws("s3"), "no-booster/model.tar.gz", model_archive({"readme.txt": b"not a model"}))
    endpoint = deploy(sm, "no-booster", url)
    assert endpoint["EndpointStatus"] == "Failed"
    assert "no 'xgboost-model' file" in endpoint["FailureReason"]
    assert "readme.txt" in endpoint["FailureReason"]

    # A model may name a model package: its container is the package's (here not an XGBoost one).
    sklearn = IMAGE.replace("sagemaker-xgboost", "sagemaker-scikit-learn")
    sm.create_model_package(
        ModelPackageName="sklearn-package",
        InferenceSpecification={
            "Containers": [{"Image": sklearn, "ModelDataUrl": url}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )
    missing = error_of(
        lambda: sm.create_model(ModelName="no-package", Containers=[{"ModelPackageName": "nope"}])
    )
    assert missing["Error"]["Message"] == "ModelPackage nope does not exist."
    sm.create_model(ModelName="sklearn-image", Containers=[{"ModelPackageName": "sklearn-package"}])
    sm.create_endpoint_config(
        EndpointConfigName="sklearn-image",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "sklearn-image"}],
    )
    sm.create_endpoint(EndpointName="sklearn-image", EndpointConfigName="sklearn-image")
    endpoint = wait_settled(sm, "sklearn-image")
    assert endpoint["EndpointStatus"] == "Failed"
    assert f"model sklearn-image uses image '{sklearn}'" in endpoint["FailureReason"]

    update = error_of(
        lambda: sm.update_endpoint(EndpointName="sklearn-image", EndpointConfigName="no-booster")
    )
    assert update["Error"]["Message"].startswith("Cannot update failed endpoint")
    error = error_of(lambda: aws("sagemaker-runtime").invoke_endpoint(EndpointName="no-booster", Body="1"))
    assert error["Error"]["Code"] == "ValidationError"
    for name in ("no-booster", "sklearn-image"):
        sm.delete_endpoint(EndpointName=name)


def test_update_switches_models_without_a_failed_request_then_delete_stops_the_server(
    cloud, aws, boosters, model_urls
) -> None:
    sm = aws("sagemaker")
    assert deploy(sm, "rolling", model_urls[0])["EndpointStatus"] == "InService"
    create_model_and_config(sm, "rolling-v2", model_urls[1])
    row = np.random.default_rng(3).random((1, FEATURES))
    old, new = (float(b.predict(xgb.DMatrix(row))[0]) for b in boosters)
    assert np.float32(old) != np.float32(new)

    seen: list[float] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def invoke_continuously() -> None:
        runtime = make_client(cloud, "sagemaker-runtime")
        while not stop.is_set():
            try:
                seen.append(
                    float(runtime.invoke_endpoint(EndpointName="rolling", Body=as_csv(row))["Body"].read())
                )
            except Exception as exc:  # any failure at all is what this test looks for
                failures.append(exc)

    client = threading.Thread(target=invoke_continuously)
    client.start()
    try:
        sm.update_endpoint(EndpointName="rolling", EndpointConfigName="rolling-v2")
        updating = sm.describe_endpoint(EndpointName="rolling")
        assert updating["EndpointStatus"] == "Updating"
        assert updating["PendingDeploymentSummary"]["EndpointConfigName"] == "rolling-v2"
        endpoint = wait_settled(sm, "rolling")
        answered = len(seen)
        deadline = time.monotonic() + WAIT_SECONDS
        while len(seen) < answered + 20 and time.monotonic() < deadline:  # some on the new model too
            time.sleep(0.01)
    finally:
        stop.set()
        client.join()
    assert failures == []
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == "rolling-v2"
    assert "PendingDeploymentSummary" not in endpoint
    served_models = [np.float32(value) for value in seen]
    assert served_models[0] == np.float32(old) and served_models[-1] == np.float32(new)
    switch = served_models.index(np.float32(new))
    assert all(value == np.float32(new) for value in served_models[switch:])  # switched once, atomically

    endpoint_dir = cloud.state_dir / "endpoints" / "rolling"
    # The old server is stopped once its requests in flight are answered, just after the switch.
    deadline = time.monotonic() + WAIT_SECONDS
    while len(model_server_pids(endpoint_dir)) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(model_server_pids(endpoint_dir)) == 1
    sm.delete_endpoint(EndpointName="rolling")
    assert error_of(lambda: sm.describe_endpoint(EndpointName="rolling"))["Error"]["Message"] == (
        'Could not find endpoint "rolling".'
    )
    gone = error_of(
        lambda: aws("sagemaker-runtime").invoke_endpoint(EndpointName="rolling", Body=as_csv(row))
    )
    assert gone["Error"]["Message"] == f"Endpoint rolling of account {ACCOUNT_ID} not found."
    assert model_server_pids(endpoint_dir) == []
    assert not endpoint_dir.exists()


def test_a_dead_model_server_is_replaced_until_it_keeps_dying(cloud, aws, model_urls) -> None:
    sm, runtime = aws("sagemaker"), aws("sagemaker-runtime")
    assert deploy(sm, "crashing", model_urls[0])["EndpointStatus"] == "InService"
    endpoint_dir = cloud.state_dir / "endpoints" / "crashing"
    rows = np.random.default_rng(5).random((3, FEATURES))
    expected = csv_predictions(runtime, "crashing", rows)
    for _ in range(MAX_SERVER_REPLACEMENTS):
        (pid,) = model_server_pids(endpoint_dir)
        os.kill(pid, 9)
        deadline = time.monotonic() + WAIT_SECONDS
        while model_server_pids(endpoint_dir) in ([], [pid]) and time.monotonic() < deadline:
            time.sleep(0.02)
        # Invocations wait for the new server to answer /ping; the endpoint stays InService.
        np.testing.assert_array_equal(csv_predictions(runtime, "crashing", rows), expected)
        assert sm.describe_endpoint(EndpointName="crashing")["EndpointStatus"] == "InService"
    (pid,) = model_server_pids(endpoint_dir)
    os.kill(pid, 9)
    endpoint = wait_until_status(sm, "crashing", "Failed")
    assert "exited unexpectedly with code -9" in endpoint["FailureReason"]
    assert f"died {MAX_SERVER_REPLACEMENTS + 1} times" in endpoint["FailureReason"]
    error = error_of(lambda: runtime.invoke_endpoint(EndpointName="crashing", Body="1"))
    assert error["Error"]["Code"] == "ValidationError"
    sm.delete_endpoint(EndpointName="crashing")


def wait_until_status(sm: Any, name: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while (endpoint := sm.describe_endpoint(EndpointName=name))["EndpointStatus"] != status:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return endpoint


def test_endpoints_serve_again_after_a_restart(tmp_path, boosters) -> None:
    rows = np.random.default_rng(11).random((4, FEATURES))
    old, new = (b.predict(xgb.DMatrix(rows)) for b in boosters)
    with LocalCloud(tmp_path / "state", port=0) as first:
        sm, s3 = make_client(first, "sagemaker"), make_client(first, "s3")
        urls = [
            upload(s3, f"durable-{i}/model.tar.gz", booster_archive(b, tmp_path))
            for i, b in enumerate(boosters)
        ]
        assert deploy(sm, "durable", urls[0])["EndpointStatus"] == "InService"
        create_model_and_config(sm, "durable-v2", urls[1])
        create_model_and_config(sm, "half-made", urls[0])
        # Stopped while these two are Updating and Creating.
        sm.update_endpoint(EndpointName="durable", EndpointConfigName="durable-v2")
        sm.create_endpoint(EndpointName="half-made", EndpointConfigName="half-made")
    assert model_server_pids(tmp_path / "state") == []
    with LocalCloud(tmp_path / "state", port=0) as second:
        sm, runtime = make_client(second, "sagemaker"), make_client(second, "sagemaker-runtime")
        assert sm.describe_endpoint(EndpointName="durable")["EndpointStatus"] == "Updating"
        # Invocations wait for the restarted server rather than fail; the update then completes.
        answered = csv_predictions(runtime, "durable", rows)
        assert np.array_equal(answered, old) or np.array_equal(answered, new)
        endpoint = wait_settled(sm, "durable")
        assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", "durable-v2")
        np.testing.assert_array_equal(csv_predictions(runtime, "durable", rows), new)
        assert wait_settled(sm, "half-made")["EndpointStatus"] == "InService"
        np.testing.assert_array_equal(csv_predictions(runtime, "half-made", rows), old)
    assert model_server_pids(tmp_path / "state") == []


def test_provider_endpoint_operator_creates_then_updates(aws, model_urls, airflow_connection) -> None:
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerEndpointOperator

    def config(version: int) -> dict[str, Any]:
        name = f"operated-v{version}"
        return {
            "Model": {
                "ModelName": name,
                "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": model_urls[version - 1]},
                "ExecutionRoleArn": f"arn:aws:iam::{ACCOUNT_ID}:role/sagemaker",
            },
            "EndpointConfig": {
                "EndpointConfigName": name,
                "ProductionVariants": [
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": name,
                        "InitialInstanceCount": "1",
                        "InstanceType": "ml.m5.large",
                    }
                ],
            },
            "Endpoint": {"EndpointName": "operated", "EndpointConfigName": name},
        }

    created = SageMakerEndpointOperator(
        task_id="created", config=config(1), operation="create", check_interval=1
    )
    assert created.execute(context={})["Endpoint"]["EndpointStatus"] == "InService"
    updated = SageMakerEndpointOperator(
        task_id="updated", config=config(2), operation="update", check_interval=1
    )
    result = updated.execute(context={})
    assert result["Endpoint"]["EndpointStatus"] == "InService"
    assert result["Endpoint"]["EndpointConfigName"] == "operated-v2"
    assert aws("sagemaker-runtime").invoke_endpoint(EndpointName="operated", Body="1,2,3,4,5")["Body"].read()
    aws("sagemaker").delete_endpoint(EndpointName="operated")


def test_the_smoke_test_reads_only_the_rows_it_sends(cloud, aws, monkeypatch) -> None:
    """The smoke test's CSV is a whole data set: the Airflow task reads its first rows, not the file
    (here the rest is not even text)."""
    from fraud_operators.hosting import SageMakerEndpointSmokeTestOperator

    connection = {"conn_type": "aws", "extra": {"endpoint_url": cloud.url, "region_name": "us-east-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = aws("s3")
    s3.create_bucket(Bucket="smoke-test")
    s3.put_object(Bucket="smoke-test", Key="test.csv", Body=b"0,1,2\r\n\n1,3,4\n0,5,6\n" + b"\xff" * 1_000_000)
    smoke_test = SageMakerEndpointSmokeTestOperator(
        task_id="smoke", endpoint_name="any", data_uri="s3://smoke-test/test.csv", rows=2)
    assert smoke_test._payload() == "1,2\n3,4"


@pytest.mark.parametrize("kind", ["path outside", "symlink"])
def test_model_archives_unpack_only_their_own_files(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("xgboost-model")
        tar.addfile(member, io.BytesIO(b""))
        if kind == "symlink":
            link = tarfile.TarInfo("escape")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        else:
            tar.addfile(tarfile.TarInfo("../outside"), io.BytesIO(b""))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with tarfile.open(archive) as tar, pytest.raises(tarfile.TarError):
        extract_files(tar, model_dir)
    assert not (tmp_path / "outside").exists() and not (model_dir / "escape").exists()


def test_model_archives_unpack_files_and_folders(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("code/inference.py"), io.BytesIO(b""))
        body = b"booster"
        member = tarfile.TarInfo("xgboost-model")
        member.size = len(body)
        tar.addfile(member, io.BytesIO(body))
    with tarfile.open(archive) as tar:
        extract_files(tar, tmp_path / "model")
    assert (tmp_path / "model" / "xgboost-model").read_bytes() == b"booster"
    assert (tmp_path / "model" / "code" / "inference.py").is_file()


def test_a_model_server_runs_the_workers_its_environment_asks_for(cloud, aws, model_urls) -> None:
    """SAGEMAKER_MODEL_SERVER_WORKERS of the model's Environment, as the inference toolkit reads it:
    that many worker processes serve at once; one that dies gets the whole server replaced."""
    sm, runtime = aws("sagemaker"), aws("sagemaker-runtime")
    sm.create_model(
        ModelName="workers", ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/sagemaker",
        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": model_urls[0],
                          "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "3"}},
    )
    sm.create_endpoint_config(
        EndpointConfigName="workers", ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "workers"}]
    )
    sm.create_endpoint(EndpointName="workers", EndpointConfigName="workers")
    assert wait_settled(sm, "workers")["EndpointStatus"] == "InService"
    endpoint_dir = cloud.state_dir / "endpoints" / "workers"
    (server,) = model_server_pids(endpoint_dir)
    workers = [pid for pid, group in model_server_processes(endpoint_dir).items() if group == server != pid]
    assert len(workers) == 3

    rows = np.random.default_rng(9).random((2, FEATURES))
    expected = csv_predictions(runtime, "workers", rows)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: csv_predictions(runtime, "workers", rows), range(64)))
    for answer in answers:
        np.testing.assert_array_equal(answer, expected)

    os.kill(workers[0], 9)
    deadline = time.monotonic() + WAIT_SECONDS
    while model_server_pids(endpoint_dir) in ([], [server]) and time.monotonic() < deadline:
        time.sleep(0.02)
    np.testing.assert_array_equal(csv_predictions(runtime, "workers", rows), expected)
    (replacement,) = model_server_pids(endpoint_dir)
    assert replacement != server
    assert not set(workers) & set(model_server_processes(endpoint_dir))  # the old workers are gone

    sm.delete_endpoint(EndpointName="workers")
    assert model_server_processes(endpoint_dir) == {}
