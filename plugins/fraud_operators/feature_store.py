"""SageMaker Feature Store operators the Amazon provider lacks: create (or find) a feature group,
and wait until the offline store holds what an ingest job (a processing job) put."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.hooks.athena import AthenaHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.sensors.base_aws import AwsBaseSensor
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException
from botocore.exceptions import ClientError

from fraud_operators.common import jsonable
from include.pipeline.sql import offline_record_count_query


class SageMakerCreateFeatureGroupOperator(AwsBaseOperator[SageMakerHook]):
    """Create the feature group of `config` (a CreateFeatureGroup request), or find it when it
    exists with the same features, and wait until it is Created.

    :param config: the CreateFeatureGroup request (templated)
    :param check_interval: seconds between status checks
    :param max_wait_seconds: fail when the group is not Created by then
    :return: the DescribeFeatureGroup response (its OfflineStoreConfig names the Glue table)
    """

    aws_hook_class = SageMakerHook
    template_fields: Sequence[str] = aws_template_fields("config")
    template_fields_renderers = {"config": "json"}

    def __init__(
        self, *, config: dict[str, Any], check_interval: float = 5, max_wait_seconds: int = 900, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.check_interval = check_interval
        self.max_wait_seconds = max_wait_seconds

    def execute(self, context: Context) -> dict[str, Any]:
        name = self.config["FeatureGroupName"]
        if not self._create():
            found = self.hook.conn.describe_feature_group(FeatureGroupName=name)
            self._check_same_features(found)
            if found["FeatureGroupStatus"] == "CreateFailed":
                # A failed group (e.g. its bucket was missing) holds no data: make it again.
                self.log.info("Feature group %s failed before (%s): recreating it", name, found.get("FailureReason"))
                self._delete(name)
                self._create()
        return jsonable(self._wait_while(name, "Creating", "Created"))

    def _create(self) -> bool:
        """Create the group; False when it exists."""
        try:
            self.hook.conn.create_feature_group(**self.config)
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceInUse":
                raise
            self.log.info("Feature group %s exists", self.config["FeatureGroupName"])
            return False
        self.log.info("Creating feature group %s", self.config["FeatureGroupName"])
        return True

    def _delete(self, name: str) -> None:
        self.hook.conn.delete_feature_group(FeatureGroupName=name)
        try:
            self._wait_while(name, "Deleting", "Deleted")  # until it is not found
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceNotFound":
                raise

    def _check_same_features(self, description: dict[str, Any]) -> None:
        wanted = {(f["FeatureName"], f["FeatureType"]) for f in self.config["FeatureDefinitions"]}
        found = {(f["FeatureName"], f["FeatureType"]) for f in description["FeatureDefinitions"]}
        if wanted != found:
            raise AirflowException(
                f"Feature group {description['FeatureGroupName']} exists with other features: "
                f"missing {sorted(wanted - found)}, unexpected {sorted(found - wanted)}. "
                "Delete it or run with another prefix."
            )

    def _wait_while(self, name: str, transient: str, done: str) -> dict[str, Any]:
        """Describe the group until its status leaves `transient`; fail unless it is `done`."""
        deadline = time.monotonic() + self.max_wait_seconds
        while True:
            description = self.hook.conn.describe_feature_group(FeatureGroupName=name)
            status = description["FeatureGroupStatus"]
            if status == done:
                return description
            if status != transient:
                reason = description.get("FailureReason", "(no reason given)")
                raise AirflowException(f"Feature group {name} is {status}: {reason}")
            if time.monotonic() > deadline:
                raise AirflowException(f"Feature group {name} still {transient} after {self.max_wait_seconds} s")
            time.sleep(self.check_interval)


class FeatureStoreOfflineStoreSensor(AwsBaseSensor[AthenaHook]):
    """Wait until a feature group's offline store (through its Glue table, queried with Athena)
    holds every record an ingest job put: the job's hosts each wrote a summary JSON (records put,
    earliest event time) under `ingestion_summary_uri`; the offline store must hold that many
    distinct records with an event time of at least the earliest. On AWS the offline store
    receives records minutes after PutRecord.

    :param database: Glue database of the offline store table (templated)
    :param table: Glue table of the offline store (templated)
    :param ingestion_summary_uri: s3:// folder of the ingest job's summaries (templated)
    :param output_location: s3:// folder for the Athena results (templated)
    :param workgroup: Athena workgroup (templated)
    """

    aws_hook_class = AthenaHook
    template_fields: Sequence[str] = aws_template_fields(
        "database", "table", "ingestion_summary_uri", "output_location", "workgroup"
    )

    def __init__(
        self,
        *,
        database: str,
        table: str,
        ingestion_summary_uri: str,
        output_location: str,
        workgroup: str = "primary",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.database = database
        self.table = table
        self.ingestion_summary_uri = ingestion_summary_uri
        self.output_location = output_location
        self.workgroup = workgroup

    def ingested(self) -> tuple[int, float | None]:
        """Records the ingest job put, over its hosts, and the earliest event time among them."""
        s3 = S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify)
        bucket, prefix = S3Hook.parse_s3_url(self.ingestion_summary_uri)
        keys = [key for key in s3.list_keys(bucket_name=bucket, prefix=prefix) if key.endswith(".json")]
        if not keys:
            raise AirflowException(f"No ingestion summary under {self.ingestion_summary_uri}")
        summaries = [json.loads(s3.read_key(key, bucket_name=bucket)) for key in keys]
        times = [summary["MinEventTime"] for summary in summaries if summary["MinEventTime"] is not None]
        return sum(summary["Put"] for summary in summaries), min(times, default=None)

    def poke(self, context: Context) -> bool:
        expected, min_event_time = self.ingested()
        if expected == 0:
            self.log.info("The ingestion put no record (all unchanged): nothing to wait for")
            return True
        query = offline_record_count_query(self.database, self.table, min_event_time)
        query_id = self.hook.run_query(
            query,
            query_context={"Database": self.database},
            result_configuration={"OutputLocation": self.output_location},
            workgroup=self.workgroup,
        )
        state = self.hook.poll_query_status(query_id, sleep_time=self.poke_interval)
        if state != "SUCCEEDED":
            reason = self.hook.get_state_change_reason(query_id)
            raise AirflowException(f"Athena query {query_id} on {self.database}.{self.table} {state}: {reason}")
        results = self.hook.get_query_results(query_id)
        found = int(results["ResultSet"]["Rows"][1]["Data"][0]["VarCharValue"])
        self.log.info("Offline store table %s holds %d of %d records", self.table, found, expected)
        return found >= expected
