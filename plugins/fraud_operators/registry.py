"""Model registry operators: register a version with templated extras, find the latest Approved."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.operators.sagemaker import SageMakerRegisterModelVersionOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from fraud_operators.common import jsonable


class RegisterModelVersionOperator(SageMakerRegisterModelVersionOperator):
    """The provider's operator with `extras` templated too, so a run can attach its own model
    metrics and decide the approval status (extras' ModelApprovalStatus overrides model_approval).

    A retry registers nothing twice: a version of the group created since the run started whose
    CustomerMetadataProperties give this run's run_id (an earlier try got that far) is the result.
    """

    template_fields: Sequence[str] = (*SageMakerRegisterModelVersionOperator.template_fields, "extras")
    template_fields_renderers = {"extras": "json"}

    def execute(self, context: Context) -> str:
        run_id = ((self.extras or {}).get("CustomerMetadataProperties") or {}).get("run_id")
        if run_id and (registered := self._registered_by_run(run_id, context["dag_run"].start_date)):
            self.log.info("Run %s registered %s already (an earlier try)", run_id, registered)
            return registered
        return super().execute(context)

    def _registered_by_run(self, run_id: str, run_start: datetime) -> str | None:
        listing: dict[str, Any] = {"ModelPackageGroupName": self.package_group_name, "CreationTimeAfter": run_start.timestamp()}
        while True:
            page = self.hook.conn.list_model_packages(**listing)
            for summary in page.get("ModelPackageSummaryList", []):
                package = self.hook.conn.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
                if package.get("CustomerMetadataProperties", {}).get("run_id") == run_id:
                    return summary["ModelPackageArn"]
            if not page.get("NextToken"):
                return None
            listing["NextToken"] = page["NextToken"]


class SageMakerLatestApprovedModelPackageOperator(AwsBaseOperator[SageMakerHook]):
    """Find the newest Approved model package of a group.

    :param package_group_name: the model package group (templated)
    :return: its DescribeModelPackage response
    """

    aws_hook_class = SageMakerHook
    template_fields: Sequence[str] = aws_template_fields("package_group_name")

    def __init__(self, *, package_group_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.package_group_name = package_group_name

    def execute(self, context: Context) -> dict[str, Any]:
        packages = self.hook.conn.list_model_packages(
            ModelPackageGroupName=self.package_group_name,
            ModelApprovalStatus="Approved",
            SortBy="CreationTime",
            SortOrder="Descending",
            MaxResults=1,
        )["ModelPackageSummaryList"]
        if not packages:
            raise AirflowFailException(f"Model package group {self.package_group_name} has no Approved package")
        arn = packages[0]["ModelPackageArn"]
        self.log.info("Latest Approved package of %s: %s", self.package_group_name, arn)
        return jsonable(self.hook.conn.describe_model_package(ModelPackageName=arn))
