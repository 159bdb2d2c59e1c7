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
"""

from __future__ import annotations

import math
from typing import Any

from airflow.providers.amazon.aws.operators import sagemaker as provider
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from botocore.exceptions import WaiterError

# Beyond a job's own runtime limit: instances starting, data downloaded, the model uploaded.
STARTUP_ALLOWANCE_SECONDS = 3600
# SageMaker's largest MaxRuntimeInSeconds: the wait limit of a job that sets none.
LONGEST_JOB_SECONDS = 28 * 24 * 3600


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

    def describe(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def job_name(self) -> str:
        raise NotImplementedError

    def wait_limit(self) -> int:
        raise NotImplementedError

    def execute(self, context: Context) -> dict[str, Any]:
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

    def describe(self, name: str) -> dict[str, Any]:
        return self.hook.describe_processing_job(name)

    def job_name(self) -> str:
        return self.config["ProcessingJobName"]

    def wait_limit(self) -> int:
        return job_runtime_limit(self.config.get("StoppingCondition")) + STARTUP_ALLOWANCE_SECONDS


class SageMakerTrainingOperator(_CheckedWait, provider.SageMakerTrainingOperator):
    """The provider's training operator; the task fails unless the job Completed."""

    kind, status_key = "Training", "TrainingJobStatus"

    def describe(self, name: str) -> dict[str, Any]:
        return self.hook.describe_training_job(name)

    def job_name(self) -> str:
        return self.config["TrainingJobName"]

    def wait_limit(self) -> int:
        return job_runtime_limit(self.config.get("StoppingCondition")) + STARTUP_ALLOWANCE_SECONDS


class SageMakerTuningOperator(_CheckedWait, provider.SageMakerTuningOperator):
    """The provider's tuning operator; the task fails unless the tuning job Completed. It casts
    HyperParameterTuningJobConfig.RandomSeed to an integer as it casts the config's other integers
    (a templated seed renders as a string)."""

    kind, status_key = "Tuning", "HyperParameterTuningJobStatus"

    def _create_integer_fields(self) -> None:
        super()._create_integer_fields()
        self.integer_fields.append(["HyperParameterTuningJobConfig", "RandomSeed"])

    def describe(self, name: str) -> dict[str, Any]:
        return self.hook.describe_tuning_job(name)

    def job_name(self) -> str:
        return self.config["HyperParameterTuningJobName"]

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
