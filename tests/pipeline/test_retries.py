"""The DAGs' retry policy on real failures: what fails the same way every time (invalid params, a
job's bad input, a refused request) fails its task at once; what may pass next time (throttling,
a lost connection, a job's own crash or interruption) keeps the task's retries."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from airflow.providers.amazon.aws.operators.sagemaker import SageMakerProcessingOperator
from airflow.sdk.definitions.retry_policy import RetryAction
from airflow.sdk.exceptions import AirflowException
from botocore.config import Config
from botocore.exceptions import ClientError
from fraud_operators.retries import DeterministicFailuresFailAtOnce

from include.localcloud.sagemaker.jobs import LOCAL_CLOUD_STOPPED
from include.pipeline import decisions
from tests.localcloud.test_jobs import put_script, s3, script_job  # noqa: F401 (fixtures)
from tests.pipeline.test_decisions import DEFAULT_PARAMS

POLICY = DeterministicFailuresFailAtOnce()


def action(exception: BaseException) -> RetryAction:
    return POLICY.evaluate(exception, try_number=1, max_tries=3).action


def raised(call: Any, *args: Any, **kwargs: Any) -> BaseException:
    with pytest.raises(Exception) as caught:
        call(*args, **kwargs)
    return caught.value


def test_invalid_params_fail_at_once() -> None:
    bad = {**DEFAULT_PARAMS, "test_fraction": 0.5, "validation_fraction": 0.45}
    assert action(raised(decisions.check_params, bad)) is RetryAction.FAIL


def test_a_job_failed_on_its_input_fails_at_once_and_one_that_crashed_is_retried(
        s3: Any, airflow_connection: None) -> None:  # noqa: F811 (fixtures)
    put_script(s3, "code/retries/bad-input.py", (
        "import os, pathlib\nout = pathlib.Path(os.environ['SAGEMAKER_BASE_DIR'], 'output')\nout.mkdir(exist_ok=True)\n"
        "(out / 'message').write_text('ClientError: claims.csv: column x has blank values at row 3')\n"
        "raise SystemExit(1)\n"))
    put_script(s3, "code/retries/crash.py", "raise MemoryError('out of memory')\n")
    failures = {
        name: raised(SageMakerProcessingOperator(task_id=name, check_interval=1,
                                                 config=script_job(f"retries-{name}", f"code/retries/{name}.py")).execute,
                     {})
        for name in ("bad-input", "crash")
    }
    assert "ClientError: claims.csv: column x has blank values at row 3" in str(failures["bad-input"])
    assert action(failures["bad-input"]) is RetryAction.FAIL
    assert "AlgorithmError: " in str(failures["crash"])
    assert action(failures["crash"]) is RetryAction.DEFAULT


def test_a_refused_request_fails_at_once_even_when_wrapped(aws: Any) -> None:
    refused = raised(aws("sagemaker").describe_training_job, TrainingJobName="not a valid name!")
    assert isinstance(refused, ClientError) and refused.response["Error"]["Code"] == "ValidationException"
    assert action(refused) is RetryAction.FAIL
    try:
        raise AirflowException("could not describe the job") from refused
    except AirflowException as wrapped:
        assert action(wrapped) is RetryAction.FAIL


def test_throttling_and_lost_connections_are_retried() -> None:
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "PutRecord")
    assert action(throttled) is RetryAction.DEFAULT
    nobody = boto3.client("sts", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    assert action(raised(nobody.get_caller_identity)) is RetryAction.DEFAULT
    interrupted = AirflowException(f"SageMaker job failed because {LOCAL_CLOUD_STOPPED}")
    assert action(interrupted) is RetryAction.DEFAULT


@pytest.mark.usefixtures("airflow_connection")
def test_a_run_context_two_tasks_create_at_once_is_found_by_the_one_that_loses() -> None:
    """Under the scheduler both data-prep lineage tasks find-or-create the run's context at once:
    the later CreateContext answers ValidationException "already exists", which must not fail a
    task now that ValidationException fails at once."""
    from fraud_operators.lineage import SageMakerLineageHook

    hook = SageMakerLineageHook(aws_conn_id="aws_default")
    winner = hook.conn.create_context(ContextName="raced-run", Source={"SourceUri": "run"}, ContextType="Run")
    describe = hook.conn.describe_context
    looks = []

    def describe_before_the_winner_created_it(**kwargs: Any) -> Any:
        looks.append(kwargs)
        if len(looks) == 1:  # the loser looked before the winner's CreateContext
            raise ClientError({"Error": {"Code": "ResourceNotFound", "Message": "not yet"}}, "DescribeContext")
        return describe(**kwargs)

    hook.conn.describe_context = describe_before_the_winner_created_it
    assert hook.context("raced-run", "Run", "run") == winner["ContextArn"]
    assert len(looks) == 2
