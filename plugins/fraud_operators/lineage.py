"""SageMaker lineage of a pipeline step: the step is an action, what it read are artifacts that
ContributedTo it, what it made are artifacts it Produced, and it is AssociatedWith the run's
context. Entities are found before they are created, so retries and reruns add nothing twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context
from botocore.exceptions import ClientError

CONTRIBUTED_TO = "ContributedTo"
PRODUCED = "Produced"
ASSOCIATED_WITH = "AssociatedWith"


class SageMakerLineageHook(AwsBaseHook):
    """Find-or-create SageMaker lineage entities and associations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["client_type"] = "sagemaker"
        super().__init__(*args, **kwargs)

    def artifact(self, source_uri: str, artifact_type: str, etag: str | None = None) -> str:
        """The ARN of the artifact of `source_uri` (and of this S3 ETag: one artifact per
        version of an object's content), created when missing."""
        wanted = [{"SourceIdType": "S3ETag", "Value": etag}] if etag else []
        for summary in self._list("list_artifacts", "ArtifactSummaries", SourceUri=source_uri, ArtifactType=artifact_type):
            if summary["Source"].get("SourceTypes", []) == wanted:
                return summary["ArtifactArn"]
        source: dict[str, Any] = {"SourceUri": source_uri}
        if wanted:
            source["SourceTypes"] = wanted
        return self.conn.create_artifact(Source=source, ArtifactType=artifact_type)["ArtifactArn"]

    def action(self, name: str, action_type: str, source_uri: str, properties: dict[str, str]) -> str:
        try:
            return self.conn.describe_action(ActionName=name)["ActionArn"]
        except ClientError as error:
            if not _is_missing(error):
                raise
        return self.conn.create_action(
            ActionName=name,
            Source={"SourceUri": source_uri},
            ActionType=action_type,
            Status="Completed",
            Properties=properties,
        )["ActionArn"]

    def context(self, name: str, context_type: str, source_uri: str) -> str:
        try:
            return self.conn.describe_context(ContextName=name)["ContextArn"]
        except ClientError as error:
            if not _is_missing(error):
                raise
        try:
            return self.conn.create_context(
                ContextName=name, Source={"SourceUri": source_uri}, ContextType=context_type
            )["ContextArn"]
        except ClientError as error:
            if not _already_exists(error):
                raise
        # Tasks of one run running at once (the two data-prep lineage tasks) create its context
        # together: the one that loses finds it.
        return self.conn.describe_context(ContextName=name)["ContextArn"]

    def associate(self, source_arn: str, destination_arn: str, association_type: str) -> None:
        existing = self.conn.list_associations(SourceArn=source_arn, DestinationArn=destination_arn)
        if not existing["AssociationSummaries"]:
            self.conn.add_association(
                SourceArn=source_arn, DestinationArn=destination_arn, AssociationType=association_type
            )

    def _list(self, operation: str, key: str, **filters: str) -> list[dict[str, Any]]:
        items, token = [], None
        while True:
            page = getattr(self.conn, operation)(**filters, **({"NextToken": token} if token else {}))
            items += page[key]
            token = page.get("NextToken")
            if not token:
                return items


def _already_exists(error: ClientError) -> bool:
    return error.response["Error"]["Code"] == "ValidationException" and "already exists" in str(error)


def _is_missing(error: ClientError) -> bool:
    # SageMaker answers Describe* of a missing lineage entity with ResourceNotFound.
    return error.response["Error"]["Code"] in ("ResourceNotFound", "ValidationException")


class SageMakerLineageOperator(AwsBaseOperator[SageMakerLineageHook]):
    """Record one step of the run in SageMaker lineage.

    :param action_name: the step's action, unique per run (templated)
    :param action_type: e.g. "Processing", "Training", "Deployment"
    :param inputs: artifacts the step read: [{"uri": ..., "type": ...}] (templated)
    :param outputs: artifacts the step made, same form (templated)
    :param context_name: the run's context (templated)
    :param context_type: its type
    :param source_uri: what the action stands for, e.g. a job ARN (templated; default: this task)
    :return: {"ActionArn", "ContextArn", "Inputs": [arn], "Outputs": [arn]}
    """

    aws_hook_class = SageMakerLineageHook
    template_fields: Sequence[str] = aws_template_fields(
        "action_name", "inputs", "outputs", "context_name", "source_uri"
    )
    template_fields_renderers = {"inputs": "json", "outputs": "json"}

    def __init__(
        self,
        *,
        action_name: str,
        action_type: str,
        inputs: list[dict[str, str]],
        outputs: list[dict[str, str]],
        context_name: str,
        context_type: str = "PipelineRun",
        source_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.action_name = action_name
        self.action_type = action_type
        self.inputs = inputs
        self.outputs = outputs
        self.context_name = context_name
        self.context_type = context_type
        self.source_uri = source_uri

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        run = f"airflow://{ti.dag_id}/{ti.run_id}"
        hook = self.hook
        run_context = hook.context(self.context_name, self.context_type, run)
        action = hook.action(
            self.action_name,
            self.action_type,
            self.source_uri or f"{run}/{ti.task_id}",
            {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id},
        )
        hook.associate(action, run_context, ASSOCIATED_WITH)
        inputs = [self._artifact(spec) for spec in self.inputs]
        outputs = [self._artifact(spec) for spec in self.outputs]
        for artifact in inputs:
            hook.associate(artifact, action, CONTRIBUTED_TO)
        for artifact in outputs:
            hook.associate(action, artifact, PRODUCED)
        self.log.info("Lineage of %s: %d inputs, %d outputs", self.action_name, len(inputs), len(outputs))
        return {"ActionArn": action, "ContextArn": run_context, "Inputs": inputs, "Outputs": outputs}

    def _artifact(self, spec: dict[str, str]) -> str:
        uri = spec["uri"]
        return self.hook.artifact(uri, spec["type"], self._etag(uri))

    def _etag(self, uri: str) -> str | None:
        """The ETag of an S3 object (None for folders and other URIs)."""
        if not uri.startswith("s3://") or uri.endswith("/"):
            return None
        bucket, key = S3Hook.parse_s3_url(uri)
        s3 = S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify)
        head = s3.head_object(key, bucket)
        return head["ETag"].strip('"') if head else None
