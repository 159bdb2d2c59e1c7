"""The waiting operators (plugins/fraud_operators/waits.py) against the in-process local cloud, in
both modes: waiting in the worker, and deferred (the operator's execute, its trigger run through the
provider's async aiobotocore hook as the triggerer runs it, then execute_complete). A job that
fails, one that is stopped and one that exceeds MaxRuntimeInSeconds fail the task with why. A retry
stops the job an earlier try left running, and fails when that job will not end."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from airflow.sdk.module_loading import import_string
from fraud_operators import waits
from fraud_operators.waits import (
    SageMakerProcessingOperator,
    SageMakerTrainingOperator,
    SageMakerTuningOperator,
    tuning_runtime_limit,
)

from include.localcloud.server import LocalCloud
from tests.localcloud.test_jobs import (
    BUCKET,
    log_messages,
    put_script,
    script_job,
    training_job,
    upload_training_data,
)

REGION = "us-east-1"
ENDLESS_TRAINING = {"num_round": "100000000", "objective": "binary:logistic"}


@pytest.fixture(scope="module")
def s3(aws: Callable[..., Any]) -> Any:
    client = aws("s3")
    upload_training_data(client, BUCKET)
    put_script(client, "code/waits/fails.py", "raise ValueError('claims.csv: column fraud has blank values')\n")
    put_script(client, "code/waits/sleeps.py", "import time\ntime.sleep(300)\n")
    put_script(client, "code/waits/ends.py", "print('done')\n")
    put_script(client, "code/waits/ignores-stop.py", "import signal, time\n"
               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ignoring SIGTERM', flush=True)\ntime.sleep(300)\n")
    return client


@pytest.fixture
def connection(cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(
        {"conn_type": "aws", "login": "testing", "password": "testing",
         "extra": {"endpoint_url": cloud.url, "region_name": REGION}}))


def run(operator: Any) -> dict[str, Any]:
    """The operator as a worker runs it and, when it defers, as the triggerer then the worker do:
    the trigger rebuilt from what it serialized, its first event handed to the resume method."""
    try:
        return operator.execute({})
    except TaskDeferred as deferral:
        classpath, kwargs = deferral.trigger.serialize()
        trigger = import_string(classpath)(**json.loads(json.dumps(kwargs)))

        async def first_event() -> Any:
            return await anext(trigger.run())

        event = asyncio.run(first_event())
        return getattr(operator, deferral.method_name)({}, event=event.payload)


@pytest.fixture
def stopper(aws: Callable[..., Any]) -> Iterator[Callable[..., None]]:
    """stop(kind, name): stop the job as soon as it runs, from another thread, while the operator waits."""
    sagemaker, threads = aws("sagemaker"), []

    def stop(kind: str, name: str) -> None:
        describe, call, key = {
            "processing": (sagemaker.describe_processing_job, sagemaker.stop_processing_job, "ProcessingJobName"),
            "tuning": (sagemaker.describe_hyper_parameter_tuning_job, sagemaker.stop_hyper_parameter_tuning_job,
                       "HyperParameterTuningJobName"),
        }[kind]

        def when_running() -> None:
            for _ in range(600):
                try:
                    description = describe(**{key: name})
                except sagemaker.exceptions.ClientError:
                    description = {}
                if description.get("ProcessingStartTime") or description.get("TrainingJobStatusCounters", {}).get(
                        "InProgress"):
                    call(**{key: name})
                    return
                threading.Event().wait(0.1)

        thread = threading.Thread(target=when_running, daemon=True)
        thread.start()
        threads.append(thread)

    yield stop
    for thread in threads:
        thread.join(timeout=60)


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
@pytest.mark.parametrize(("case", "expected"), [
    ("fails", None),  # the provider's message in the worker, this module's deferred: both with the reason
    ("stopped", "ended Stopped: stopped by a Stop call or at MaxRuntimeInSeconds (600 s)"),
    ("too-long", "ended Stopped: stopped by a Stop call or at MaxRuntimeInSeconds (1 s)"),
])
def test_a_processing_job_that_does_not_complete_fails_its_task_with_why(
        s3: Any, aws: Callable[..., Any], connection: None, stopper: Callable[..., None], deferrable: bool, case: str,
        expected: str | None) -> None:
    name = f"waits-{case}-{'deferred' if deferrable else 'worker'}"
    script = "code/waits/fails.py" if case == "fails" else "code/waits/sleeps.py"
    limit = 1 if case == "too-long" else 600
    operator = SageMakerProcessingOperator(
        task_id="process", config=script_job(name, script, StoppingCondition={"MaxRuntimeInSeconds": limit}),
        check_interval=1, deferrable=deferrable,
    )
    if case == "stopped":
        stopper("processing", name)
    with pytest.raises(AirflowException) as failed:
        run(operator)
    if expected is None:
        reason = aws("sagemaker").describe_processing_job(ProcessingJobName=name)["FailureReason"]
        assert reason.endswith("ValueError: claims.csv: column fraud has blank values")
        assert reason in str(failed.value)
    else:
        assert str(failed.value) == f"SageMaker Processing {name} {expected}"


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
def test_a_training_job_over_its_max_runtime_fails_its_task(s3: Any, connection: None, deferrable: bool) -> None:
    name = f"waits-train-too-long-{'deferred' if deferrable else 'worker'}"
    operator = SageMakerTrainingOperator(
        task_id="train", config=training_job(name, ENDLESS_TRAINING, StoppingCondition={"MaxRuntimeInSeconds": 2}),
        check_interval=1, print_log=False, deferrable=deferrable,
    )
    with pytest.raises(AirflowException) as failed:
        run(operator)
    assert str(failed.value) == (f"SageMaker Training {name} ended Stopped: "
                                 "MaxRuntimeExceeded: Training job exceeded MaxRuntimeInSeconds provided")


def tuning_job(name: str) -> dict[str, Any]:
    definition = training_job("unused", ENDLESS_TRAINING)
    for key in ("TrainingJobName", "HyperParameters"):
        definition.pop(key)
    definition["StaticHyperParameters"] = ENDLESS_TRAINING
    definition["AlgorithmSpecification"]["MetricDefinitions"] = []
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": "Random",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:auc"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 1, "MaxParallelTrainingJobs": 1},
            "ParameterRanges": {"ContinuousParameterRanges": [{"Name": "eta", "MinValue": "0.1", "MaxValue": "0.5"}]},
        },
        "TrainingJobDefinition": definition,
    }


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
def test_a_stopped_tuning_job_fails_its_task(
        s3: Any, connection: None, stopper: Callable[..., None], deferrable: bool) -> None:
    # The provider's worker-side wait took a Stopped tuning job for a finished one: the task succeeded.
    name = f"waits-tune-{'deferred' if deferrable else 'worker'}"
    operator = SageMakerTuningOperator(task_id="tune", config=tuning_job(name), check_interval=1,
                                       deferrable=deferrable)
    stopper("tuning", name)
    with pytest.raises(AirflowException) as failed:
        run(operator)
    assert str(failed.value).startswith(f"SageMaker Tuning {name} ended Stopped: ")


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
def test_a_retry_stops_the_job_an_earlier_try_left_running(
        s3: Any, aws: Callable[..., Any], connection: None, deferrable: bool) -> None:
    # The earlier try's process was killed while its job ran: nothing waits for that job any more.
    name = f"waits-left-running-{'deferred' if deferrable else 'worker'}"
    sagemaker = aws("sagemaker")
    sagemaker.create_processing_job(**script_job(name, "code/waits/sleeps.py"))
    retry = SageMakerProcessingOperator(task_id="process", config=script_job(name, "code/waits/ends.py"),
                                        check_interval=1, deferrable=deferrable)
    result = run(retry)
    assert sagemaker.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == "Stopped"
    assert re.fullmatch(rf"{name}-\d+", result["Processing"]["ProcessingJobName"])
    assert result["Processing"]["ProcessingJobStatus"] == "Completed"


def test_a_retry_fails_when_the_job_left_running_does_not_end(
        s3: Any, aws: Callable[..., Any], connection: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # The job ignores SIGTERM: it stays Stopping until the local cloud's SIGKILL, 5 s after the stop.
    name = "waits-left-stopping"
    sagemaker, logs = aws("sagemaker"), aws("logs")
    sagemaker.create_processing_job(**script_job(name, "code/waits/ignores-stop.py"))
    deadline = time.monotonic() + 60
    while True:
        try:
            if "ignoring SIGTERM" in log_messages(logs, "/aws/sagemaker/ProcessingJobs", name):
                break
        except logs.exceptions.ResourceNotFoundException:
            pass  # no job has logged yet
        assert time.monotonic() < deadline, f"{name} did not start its script"
        time.sleep(0.25)
    monkeypatch.setattr(waits, "STOP_WAIT_SECONDS", 1)
    retry = SageMakerProcessingOperator(task_id="process", config=script_job(name, "code/waits/ends.py"),
                                        check_interval=0.25)
    with pytest.raises(AirflowException) as failed:
        retry.execute({})
    assert str(failed.value) == (f"SageMaker Processing {name}, left running by an earlier try of this task, "
                                 "is still Stopping 1 s after it was stopped")
    jobs = sagemaker.list_processing_jobs(NameContains=name)["ProcessingJobSummaries"]
    assert [job["ProcessingJobName"] for job in jobs] == [name]  # the retry started none of its own


@pytest.mark.parametrize("check_interval", [2, 0.25])  # the dev stack's, make run's
def test_a_deferred_wait_lasts_as_long_as_the_job_may_run(s3: Any, connection: None, check_interval: float) -> None:
    # The provider watches for 60 checks (2 minutes at one every 2 s); the job may run 600 s.
    name = f"waits-long-enough-{str(check_interval).replace('.', '-')}"
    operator = SageMakerProcessingOperator(
        task_id="process", config=script_job(name, "code/waits/sleeps.py"), check_interval=check_interval,
        deferrable=True,
        region_name=REGION, botocore_config={"user_agent_extra": "fraud-waits", "connect_timeout": 7},
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({})
    operator.hook.conn.stop_processing_job(ProcessingJobName=name)
    trigger = deferred.value.trigger
    assert trigger.attempts * trigger.waiter_delay >= 600 + 3600
    # What the triggerer rebuilds the trigger from keeps the region and botocore config.
    _, kwargs = trigger.serialize()
    assert (kwargs["region_name"], kwargs["botocore_config"]["user_agent_extra"]) == (REGION, "fraud-waits")
    tuning = tuning_job("limits")
    tuning["HyperParameterTuningJobConfig"]["ResourceLimits"] = {"MaxNumberOfTrainingJobs": 8,
                                                                  "MaxParallelTrainingJobs": 2}
    assert tuning_runtime_limit(tuning) == 4 * 600


def test_the_async_hook_honours_endpoint_region_and_botocore_config(
        cloud: LocalCloud, s3: Any, aws: Callable[..., Any], connection: None) -> None:
    """The triggerer's aiobotocore client: the connection's endpoint_url, the task's region_name
    (not the connection's) and botocore_config, and it reads the job where it was created."""
    sagemaker = aws("sagemaker", region="eu-west-1")
    name = "waits-in-eu-west-1"
    sagemaker.create_processing_job(**script_job(name, "code/waits/fails.py"))
    trigger = SageMakerTrigger(job_name=name, job_type="Processing", waiter_delay=1, waiter_max_attempts=60,
                               region_name="eu-west-1",
                               botocore_config={"user_agent_extra": "fraud-waits", "connect_timeout": 7})
    classpath, kwargs = trigger.serialize()
    rebuilt = import_string(classpath)(**kwargs)

    async def client_and_event() -> tuple[Any, Any]:
        async with await rebuilt.hook().get_async_conn() as client:
            meta = (client.meta.endpoint_url, client.meta.region_name, client.meta.config.user_agent_extra,
                    client.meta.config.connect_timeout)
        return meta, await anext(rebuilt.run())

    meta, event = asyncio.run(client_and_event())
    endpoint_url, region, user_agent, connect_timeout = meta
    assert (endpoint_url, region, connect_timeout) == (cloud.url, "eu-west-1", 7)
    assert user_agent.endswith(" fraud-waits")  # after the provider's own
    assert event.payload["status"] == "failed"
    assert "claims.csv: column fraud has blank values" in event.payload["message"]
