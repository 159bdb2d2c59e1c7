"""SageMaker Feature Store operators the Amazon provider lacks: create (or find) a feature group,
ingest CSV records with PutRecord in parallel, and wait until the offline store holds them."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow.providers.amazon.aws.hooks.athena import AthenaHook
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
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


class FeatureStoreRuntimeHook(AwsBaseHook):
    """The Feature Store runtime API: PutRecord, GetRecord, DeleteRecord."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["client_type"] = "sagemaker-featurestore-runtime"
        super().__init__(*args, **kwargs)


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
        self, *, config: dict[str, Any], check_interval: int = 5, max_wait_seconds: int = 900, **kwargs: Any
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


class SageMakerIngestFeaturesOperator(AwsBaseOperator[FeatureStoreRuntimeHook]):
    """Put every row of the CSV files (with header) under an S3 prefix into a feature group,
    one PutRecord per row, `max_workers` at a time.

    :param feature_group_name: the feature group (templated)
    :param source_uri: s3://bucket/prefix/ holding the CSV files (templated)
    :param event_time_feature: the group's event time feature, reported back as MinEventTime
    :param max_workers: concurrent PutRecord calls
    :return: {"FeatureGroupName", "Records": rows put, "MinEventTime": earliest event time put}
    """

    aws_hook_class = FeatureStoreRuntimeHook
    template_fields: Sequence[str] = aws_template_fields("feature_group_name", "source_uri")

    def __init__(
        self,
        *,
        feature_group_name: str,
        source_uri: str,
        event_time_feature: str,
        max_workers: int = 8,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("botocore_config", {"max_pool_connections": max_workers, "retries": {"mode": "standard"}})
        super().__init__(**kwargs)
        self.feature_group_name = feature_group_name
        self.source_uri = source_uri
        self.event_time_feature = event_time_feature
        self.max_workers = max_workers

    def execute(self, context: Context) -> dict[str, Any]:
        records = self._read_records()
        if not records:
            raise AirflowException(f"No records to ingest: no CSV rows under {self.source_uri}")
        client = self.hook.conn

        def put(record: list[dict[str, str]]) -> None:
            client.put_record(FeatureGroupName=self.feature_group_name, Record=record)

        self.log.info("Ingesting %d records into %s", len(records), self.feature_group_name)
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            # list() re-raises the first failed PutRecord, after the pool has finished.
            list(pool.map(put, records))
        event_times = [
            float(value["ValueAsString"])
            for record in records
            for value in record
            if value["FeatureName"] == self.event_time_feature
        ]
        return {
            "FeatureGroupName": self.feature_group_name,
            "Records": len(records),
            "MinEventTime": min(event_times),
        }

    def _read_records(self) -> list[list[dict[str, str]]]:
        s3 = S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify)
        bucket, prefix = S3Hook.parse_s3_url(self.source_uri)
        keys = sorted(key for key in s3.list_keys(bucket_name=bucket, prefix=prefix) if key.endswith(".csv"))
        records = []
        for key in keys:
            rows = csv.reader(io.StringIO(s3.read_key(key, bucket_name=bucket)))
            header = next(rows, None)
            if header is None:
                continue
            if self.event_time_feature not in header:
                raise AirflowException(f"s3://{bucket}/{key} has no {self.event_time_feature} column")
            for row in rows:
                if row:
                    records.append(
                        [{"FeatureName": name, "ValueAsString": value} for name, value in zip(header, row, strict=True)]
                    )
        return records


class FeatureStoreOfflineStoreSensor(AwsBaseSensor[AthenaHook]):
    """Wait until a feature group's offline store (through its Glue table, queried with Athena)
    holds `expected_records` distinct records with an event time of at least `min_event_time`.
    On AWS the offline store receives records minutes after PutRecord.

    :param database: Glue database of the offline store table (templated)
    :param table: Glue table of the offline store (templated)
    :param expected_records: records the ingestion put (templated)
    :param min_event_time: earliest event time the ingestion put (templated)
    :param output_location: s3:// folder for the Athena results (templated)
    :param workgroup: Athena workgroup (templated)
    """

    aws_hook_class = AthenaHook
    template_fields: Sequence[str] = aws_template_fields(
        "database", "table", "expected_records", "min_event_time", "output_location", "workgroup"
    )

    def __init__(
        self,
        *,
        database: str,
        table: str,
        expected_records: int | str,
        min_event_time: float | str,
        output_location: str,
        workgroup: str = "primary",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.database = database
        self.table = table
        self.expected_records = expected_records
        self.min_event_time = min_event_time
        self.output_location = output_location
        self.workgroup = workgroup

    def poke(self, context: Context) -> bool:
        query = offline_record_count_query(self.database, self.table, self.min_event_time)
        query_id = self.hook.run_query(
            query,
            query_context={"Database": self.database},
            result_configuration={"OutputLocation": self.output_location},
            workgroup=self.workgroup,
        )
        state = self.hook.poll_query_status(query_id, sleep_time=1)
        if state != "SUCCEEDED":
            reason = self.hook.get_state_change_reason(query_id)
            raise AirflowException(f"Athena query {query_id} on {self.database}.{self.table} {state}: {reason}")
        results = self.hook.get_query_results(query_id)
        found = int(results["ResultSet"]["Rows"][1]["Data"][0]["VarCharValue"])
        expected = int(self.expected_records)
        self.log.info("Offline store table %s holds %d of %d records", self.table, found, expected)
        return found >= expected

