"""The provider's SageMaker operators that wait (processing, training, tuning, endpoint), with the
end of the wait made right in both modes, in the worker and deferred to the triggerer.

The Amazon provider 9.39.0 gets three things wrong, fixed here with the least code:
- In the worker, its status loop (`SageMakerHook.check_status`) counts only Failed as a failure:
  a processing or tuning job (and a training job whose logs are not tailed) that ends Stopped,
  by a Stop call or at MaxRuntimeInSeconds, makes the task succeed. Here the task fails.
- Deferred, a Stopped job fails the task with the waiter's words only; here every failed wait
  names the job, its status and why it ended (FailureReason, else what SageMaker records).
- Deferred, processing and training jobs are watched for 60 checks only (`max_attempts`), and
  tuning and endpoints for 480: with checks every 2 s, a job longer than 2 min (16 min for tuning)
  failed with "max attempts reached" while the worker-side wait has no limit. Here the triggerer
  watches as long as the job may run: its own MaxRuntimeInSeconds, and an hour more.

And a retry first stops the job an earlier try of the task left running: when a try's process is
killed, its job runs on with nothing waiting for it, beside the retry's own job, writing the same
outputs (SageMaker bills both).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from airflow.providers.amazon.aws.operators import sagemaker as provider
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from botocore.exceptions import ClientError, WaiterError

# Beyond a job's own runtime limit: instances starting, data downloaded, the model uploaded.
STARTUP_ALLOWANCE_SECONDS = 3600
# SageMaker's largest MaxRuntimeInSeconds: the wait limit of a job that sets none.
LONGEST_JOB_SECONDS = 28 * 24 * 3600
ACTIVE_STATUSES = ("InProgress", "Stopping")
# How long a retry waits for the jobs of earlier tries to end once stopped: SageMaker gives a job
# 120 s between SIGTERM and SIGKILL, then uploads what it saved (a tuning job stops its trials so).
STOP_WAIT_SECONDS = 600


def job_runtime_limit(stopping_condition: dict[str, Any] | None) -> int:
    """Seconds a job may run by its StoppingCondition (MaxWaitTimeInSeconds includes the spot wait)."""
    condition = stopping_condition or {}
    limit = condition.get("MaxWaitTimeInSeconds") or condition.get("MaxRuntimeInSeconds") or LONGEST_JOB_SECONDS
    return int(limit)


def tuning_runtime_limit(config: dict[str, Any]) -> int:
    """Seconds a tuning job may run: its own limit, else its trials in rounds of the parallel ones."""
    tuning = config.get("HyperParameterTuningJobConfig", {})
    limits = tuning.get("ResourceLimits", {})
    if limits.get("MaxRuntimeInSeconds"):
        return int(limits["MaxRuntimeInSeconds"])
    rounds = math.ceil(limits.get("MaxNumberOfTrainingJobs", 1) / limits.get("MaxParallelTrainingJobs", 1))
    return rounds * job_runtime_limit(config.get("TrainingJobDefinition", {}).get("StoppingCondition"))


def why_it_ended(description: dict[str, Any], status_key: str) -> str:
    """The job's status and why: FailureReason, else what SageMaker recorded of the stop."""
    status = description.get(status_key)
    reason = description.get("FailureReason")
    if not reason:
        transitions = description.get("SecondaryStatusTransitions") or []
        if transitions and transitions[-1].get("StatusMessage"):
            reason = f"{description.get('SecondaryStatus')}: {transitions[-1]['StatusMessage']}"
        elif description.get("ExitMessage"):
            reason = description["ExitMessage"]
        elif status == "Stopped":
            limit = (description.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
            reason = "stopped by a Stop call" + (f" or at MaxRuntimeInSeconds ({limit} s)" if limit else "")
        else:
            reason = "(no reason given)"
    return f"{status}: {reason}"


class _CheckedWait:
    """Mixed into a provider operator: the task succeeds only when the job Completed (the
    endpoint is InService), and a deferred wait lasts as long as the job may run."""

    kind: str  # the key of the operator's result, and the job's name in messages
    status_key: str
    success_status = "Completed"
    hook: Any
    config: dict[str, Any]
    check_interval: float
    # The job kind's List and Stop operations (boto3 client methods) and the key of the list's items.
    list_operation: str | None = None  # None: nothing to stop (an endpoint)
    stop_operation = ""
    summaries_key = ""
    name_key = ""

    def describe(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def job_name(self) -> str:
        raise NotImplementedError

    def wait_limit(self) -> int:
        """Seconds a deferred wait may last: a processing or training job's, by its StoppingCondition."""
        return job_runtime_limit(self.config.get("StoppingCondition")) + STARTUP_ALLOWANCE_SECONDS

    def name_stem(self) -> str:
        """What the names of every try's job start with."""
        return self.job_name()

    def execute(self, context: Context) -> dict[str, Any]:
        self.stop_jobs_left_running()
        try:
            result = super().execute(context)  # type: ignore[misc]
        except TaskDeferred as deferral:
            deferral.trigger.attempts = math.ceil(self.wait_limit() / self.check_interval)
            raise
        except WaiterError as error:  # the endpoint's waiter, in the worker: it names no reason
            raise self.ended_badly(self.describe(self.job_name())) from error
        self.check_ended_well(result[self.kind])
        return result

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if event and event.get("status") != "success":
            name = event.get("job_name") or self.job_name()
            description = self.describe(name)
            if description.get(self.status_key) == self.success_status:  # it ended well after all
                event = {**event, "status": "success", "job_name": name}
            elif description.get(self.status_key) in ("Failed", "Stopped"):
                raise self.ended_badly(description)
            else:  # still running: the triggerer gave up waiting (max attempts), or lost the job
                raise AirflowException(
                    f"SageMaker {self.kind} {name} is {description.get(self.status_key)}: {event.get('message')}"
                )
        result = super().execute_complete(context, event)  # type: ignore[misc]
        self.check_ended_well(result[self.kind])
        return result

    def stop_jobs_left_running(self) -> None:
        """Stop this task's jobs still running from earlier tries, and wait until they have ended.
        Their names are the stem, or the stem and the provider's timestamp suffix (a job of that
        name existed), or for tuning jobs the stem and the try number. One still running
        STOP_WAIT_SECONDS after this began fails this try (a next try stops it again)."""
        if self.list_operation is None:
            return
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        client = self.hook.conn
        names = re.compile(rf"{re.escape(self.name_stem())}(-\d+)?")
        pages = client.get_paginator(self.list_operation).paginate(NameContains=self.name_stem())
        running = [job[self.name_key] for page in pages for job in page[self.summaries_key]
                   if names.fullmatch(job[self.name_key]) and job[self.status_key] in ACTIVE_STATUSES]
        for name in running:
            self.log.info("Stopping SageMaker %s %s, left running by an earlier try of this task", self.kind, name)
            try:
                getattr(client, self.stop_operation)(**{self.name_key: name})
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ValidationException":
                    raise
                # It ended after it was listed: there is nothing left to stop.
            while (status := self.describe(name).get(self.status_key)) in ACTIVE_STATUSES:
                if time.monotonic() > deadline:
                    raise AirflowException(f"SageMaker {self.kind} {name}, left running by an earlier try of this "
                                           f"task, is still {status} {STOP_WAIT_SECONDS} s after it was stopped")
                time.sleep(self.check_interval)

    def check_ended_well(self, description: dict[str, Any]) -> None:
        """Fail on an end other than success; a wait not asked for (wait_for_completion off) passes."""
        if description.get(self.status_key) in ("Failed", "Stopped"):
            raise self.ended_badly(description)

    def ended_badly(self, description: dict[str, Any]) -> AirflowException:
        return AirflowException(
            f"SageMaker {self.kind} {self.job_name()} ended {why_it_ended(description, self.status_key)}"
        )


class SageMakerProcessingOperator(_CheckedWait, provider.SageMakerProcessingOperator):
    """The provider's processing operator; the task fails unless the job Completed."""

    kind, status_key = "Processing", "ProcessingJobStatus"
    list_operation, stop_operation = "list_processing_jobs", "stop_processing_job"
    summaries_key, name_key = "ProcessingJobSummaries", "ProcessingJobName"

    def describe(self, name: str) -> dict[str, Any]:
        return self.hook.describe_processing_job(name)

    def job_name(self) -> str:
        return self.config["ProcessingJobName"]


class SageMakerTrainingOperator(_CheckedWait, provider.SageMakerTrainingOperator):
    """The provider's training operator; the task fails unless the job Completed."""

    kind, status_key = "Training", "TrainingJobStatus"
    list_operation, stop_operation = "list_training_jobs", "stop_training_job"
    summaries_key, name_key = "TrainingJobSummaries", "TrainingJobName"

    def describe(self, name: str) -> dict[str, Any]:
        return self.hook.describe_training_job(name)

    def job_name(self) -> str:
        return self.config["TrainingJobName"]


class SageMakerTuningOperator(_CheckedWait, provider.SageMakerTuningOperator):
    """The provider's tuning operator; the task fails unless the tuning job Completed. It casts
    HyperParameterTuningJobConfig.RandomSeed to an integer as it casts the config's other integers
    (a templated seed renders as a string)."""

    kind, status_key = "Tuning", "HyperParameterTuningJobStatus"
    list_operation, stop_operation = "list_hyper_parameter_tuning_jobs", "stop_hyper_parameter_tuning_job"
    summaries_key, name_key = "HyperParameterTuningJobSummaries", "HyperParameterTuningJobName"

    def _create_integer_fields(self) -> None:
        super()._create_integer_fields()
        self.integer_fields.append(["HyperParameterTuningJobConfig", "RandomSeed"])

    def describe(self, name: str) -> dict[str, Any]:
        return self.hook.describe_tuning_job(name)

    def job_name(self) -> str:
        return self.config["HyperParameterTuningJobName"]

    def name_stem(self) -> str:
        return self.job_name().rsplit("-", 1)[0]  # without the try number (configs.tuning_job_name)

    def wait_limit(self) -> int:
        return tuning_runtime_limit(self.config) + STARTUP_ALLOWANCE_SECONDS


class SageMakerEndpointOperator(_CheckedWait, provider.SageMakerEndpointOperator):
    """The provider's endpoint operator; the task fails unless the endpoint is InService."""

    kind, status_key, success_status = "Endpoint", "EndpointStatus", "InService"

    def describe(self, name: str) -> dict[str, Any]:
        return self.hook.describe_endpoint(name)

    def job_name(self) -> str:
        return self.config.get("Endpoint", self.config)["EndpointName"]

    def wait_limit(self) -> int:
        return self.max_ingestion_time  # the worker-side wait's limit (the provider's default: 10 h)
