"""Smoke test of a real-time endpoint through the SageMaker runtime API."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException

CSV = "text/csv"


class SageMakerRuntimeHook(AwsBaseHook):
    """The SageMaker runtime API: InvokeEndpoint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["client_type"] = "sagemaker-runtime"
        super().__init__(*args, **kwargs)


class SageMakerEndpointSmokeTestOperator(AwsBaseOperator[SageMakerRuntimeHook]):
    """Send the first rows of a labelled CSV (label first, no header: the training format) to an
    endpoint as text/csv without their label, and check it answers one probability per row.

    :param endpoint_name: the endpoint (templated)
    :param data_uri: s3:// URI of the CSV file (templated)
    :param rows: how many rows to send
    :return: the probabilities
    """

    aws_hook_class = SageMakerRuntimeHook
    template_fields: Sequence[str] = aws_template_fields("endpoint_name", "data_uri")

    def __init__(self, *, endpoint_name: str, data_uri: str, rows: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoint_name = endpoint_name
        self.data_uri = data_uri
        self.rows = rows

    def execute(self, context: Context) -> list[float]:
        payload = self._payload()
        response = self.hook.conn.invoke_endpoint(
            EndpointName=self.endpoint_name, ContentType=CSV, Accept=CSV, Body=payload.encode()
        )
        answer = response["Body"].read().decode()
        try:
            predictions = [float(value) for value in re.split(r"[,\s]+", answer.strip())]
        except ValueError:
            raise AirflowException(
                f"Endpoint {self.endpoint_name} answered no probabilities: {answer[:200]!r}"
            ) from None
        sent = payload.count("\n") + 1
        if len(predictions) != sent or not all(0.0 <= p <= 1.0 for p in predictions):
            raise AirflowException(
                f"Endpoint {self.endpoint_name} answered {answer[:200]!r} to {sent} rows: "
                "expected one probability per row"
            )
        self.log.info("Endpoint %s answered %s", self.endpoint_name, predictions)
        return predictions

    def _payload(self) -> str:
        """The first rows, read as the object streams in: the test set may be large."""
        bucket, key = S3Hook.parse_s3_url(self.data_uri)
        hook = S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify)
        body = hook.get_key(key, bucket_name=bucket).get()["Body"]
        lines: list[str] = []
        try:
            for line in body.iter_lines():
                if line.strip():
                    lines.append(line.decode())
                if len(lines) == self.rows:
                    break
        finally:
            body.close()
        if not lines:
            raise AirflowException(f"{self.data_uri} holds no rows to send")
        return "\n".join(line.split(",", 1)[1] for line in lines)
