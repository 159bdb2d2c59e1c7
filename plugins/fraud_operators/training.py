"""The best training job of a hyperparameter tuning job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from fraud_operators.common import jsonable


class SageMakerBestTrainingJobOperator(AwsBaseOperator[SageMakerHook]):
    """Describe the best training job of a finished tuning job.

    :param tuning_job_name: the tuning job (templated)
    :return: the DescribeTrainingJob response of its best training job
    """

    aws_hook_class = SageMakerHook
    template_fields: Sequence[str] = aws_template_fields("tuning_job_name")

    def __init__(self, *, tuning_job_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tuning_job_name = tuning_job_name

    def execute(self, context: Context) -> dict[str, Any]:
        tuning = self.hook.describe_tuning_job(self.tuning_job_name)
        best = tuning.get("BestTrainingJob")
        if not best:
            raise AirflowFailException(f"Tuning job {self.tuning_job_name} has no best training job")
        self.log.info(
            "Best training job of %s: %s, %s",
            self.tuning_job_name,
            best["TrainingJobName"],
            best.get("FinalHyperParameterTuningJobObjectiveMetric"),
        )
        return jsonable(self.hook.describe_training_job(best["TrainingJobName"]))
