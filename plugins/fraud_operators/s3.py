"""Upload a local folder's files to S3 (the provider uploads single files); read JSON from S3."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException


class LocalFolderToS3Operator(AwsBaseOperator[S3Hook]):
    """Upload the files of `folder` matching `pattern` (not recursive) under an s3:// prefix.

    :param folder: the local folder (templated)
    :param dest_uri: s3://bucket/prefix/ to upload into (templated)
    :param pattern: glob of the files to upload
    :return: the uploaded objects' URIs
    """

    aws_hook_class = S3Hook
    template_fields: Sequence[str] = aws_template_fields("folder", "dest_uri")

    def __init__(self, *, folder: str, dest_uri: str, pattern: str = "*", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = folder
        self.dest_uri = dest_uri
        self.pattern = pattern

    def execute(self, context: Context) -> list[str]:
        files = sorted(path for path in Path(self.folder).glob(self.pattern) if path.is_file())
        if not files:
            raise AirflowException(f"No files matching {self.pattern} in {self.folder}")
        bucket, prefix = S3Hook.parse_s3_url(self.dest_uri)
        prefix = prefix.rstrip("/")
        uploaded = []
        for path in files:
            key = f"{prefix}/{path.name}"
            self.hook.load_file(str(path), key, bucket_name=bucket, replace=True)
            uploaded.append(f"s3://{bucket}/{key}")
        self.log.info("Uploaded %d files of %s to %s", len(uploaded), self.folder, self.dest_uri)
        return uploaded


def read_s3_json(uri: str, aws_conn_id: str | None = "aws_default") -> Any:
    """The parsed JSON object at an s3:// URI, read through the Airflow AWS connection."""
    bucket, key = S3Hook.parse_s3_url(uri)
    return json.loads(S3Hook(aws_conn_id=aws_conn_id).read_key(key, bucket_name=bucket))
