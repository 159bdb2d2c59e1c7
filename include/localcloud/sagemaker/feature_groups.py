"""Feature groups (control plane): CreateFeatureGroup, Describe, List, Update, Delete.

Like SageMaker, a new group is Creating until its offline store is ready: the S3 location is
resolved and, unless disabled, a Glue table is made over it (in the background, resumed after a
restart). The Feature Store runtime reads the stored description through
`describe_feature_group`."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from include.localcloud.protocol import AwsError, RequestContext
from include.localcloud.sagemaker.models import Resource, list_page, now, pick, region_of, sagemaker_arn
from include.localcloud.sagemaker.tags import TAGS, save_tags
from include.localcloud.store import Store

if TYPE_CHECKING:
    from include.localcloud.server import LocalCloud

log = logging.getLogger(__name__)

FEATURE_GROUP = "feature-group"
# Columns Feature Store adds to every offline record; no feature may take these names.
OFFLINE_COLUMNS = {"write_time": "timestamp", "api_invocation_time": "timestamp", "is_deleted": "boolean"}
GLUE_TYPES = {"Integral": "bigint", "Fractional": "double", "String": "string"}
DEFAULT_DATABASE = "sagemaker_featurestore"
DEFAULT_CATALOG = "AwsDataCatalog"
PARQUET = {
    "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "SerdeInfo": {
        "SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
        "Parameters": {"serialization.format": "1"},
    },
}


def feature_group_not_found(name: str) -> AwsError:
    return AwsError(
        "ResourceNotFound", f"Resource Not Found: Amazon SageMaker can't find a FeatureGroup with name {name}"
    )


def describe_feature_group(store: Store, name: str) -> Resource:
    """The stored DescribeFeatureGroup response of a feature group, by name or ARN (the Feature
    Store runtime reads its definitions, identifiers and offline store location from it)."""
    group = store.get(FEATURE_GROUP, name)
    if group is None and name.startswith("arn:"):
        group = next((g for g in store.list(FEATURE_GROUP) if g["FeatureGroupArn"] == name), None)
    if group is None:
        raise feature_group_not_found(name)
    return group


def invalid(message: str) -> AwsError:
    return AwsError("ValidationException", message)


def check_feature_names(definitions: list[dict[str, Any]]) -> None:
    """Names must be unique (Glue folds case, so compare without it) and not reserved."""
    seen: set[str] = set()
    for definition in definitions:
        name = definition["FeatureName"]
        if name.lower() in OFFLINE_COLUMNS:
            raise invalid(
                f"Feature name {name} is reserved. FeatureNames cannot be any of the following: "
                + ", ".join(OFFLINE_COLUMNS)
            )
        if name.lower() in seen:
            raise invalid(f"Feature name {name} is defined more than once in FeatureDefinitions.")
        seen.add(name.lower())
        if "CollectionType" in definition:
            raise invalid(
                f"Feature {name}: CollectionType is only supported by the InMemory online store, "
                "which the local cloud does not provide."
            )


def check_create_request(params: dict[str, Any]) -> None:
    definitions = params["FeatureDefinitions"]
    check_feature_names(definitions)
    types = {d["FeatureName"]: d["FeatureType"] for d in definitions}
    record_id = params["RecordIdentifierFeatureName"]
    if record_id not in types:
        raise invalid(f"The RecordIdentifierFeatureName {record_id} is not present in FeatureDefinitions.")
    event_time = params["EventTimeFeatureName"]
    if event_time not in types:
        raise invalid(f"The EventTimeFeatureName {event_time} is not present in FeatureDefinitions.")
    if types[event_time] not in ("Fractional", "String"):
        raise invalid(
            f"The EventTimeFeatureName {event_time} must be of FeatureType Fractional or String, "
            f"not {types[event_time]}."
        )
    online = params.get("OnlineStoreConfig", {}).get("EnableOnlineStore", False)
    offline = params.get("OfflineStoreConfig")
    if not online and offline is None:
        raise invalid("You must include at least one of OnlineStoreConfig (enabled) and OfflineStoreConfig.")
    if offline and offline.get("TableFormat") == "Iceberg":
        raise invalid("OfflineStoreConfig.TableFormat Iceberg is not supported by the local cloud; use Glue.")


def offline_store(ctx: RequestContext, name: str, created: float, config: dict[str, Any]) -> dict[str, Any]:
    """The offline store configuration as SageMaker resolves it: where the data goes and which
    Glue table describes it."""
    resolved = dict(config)
    storage = dict(config["S3StorageConfig"])
    storage["ResolvedOutputS3Uri"] = (
        f"{storage['S3Uri'].rstrip('/')}/{ctx.account_id}/sagemaker/{ctx.region}"
        f"/offline-store/{name}-{int(created)}/data"
    )
    resolved["S3StorageConfig"] = storage
    resolved.setdefault("DisableGlueTableCreation", False)
    if "DataCatalogConfig" not in config and not resolved["DisableGlueTableCreation"]:
        resolved["DataCatalogConfig"] = {
            "TableName": f"{name}_{int(created)}".lower(),
            "Catalog": DEFAULT_CATALOG,
            "Database": DEFAULT_DATABASE,
        }
    return resolved


def glue_columns(definitions: list[dict[str, Any]]) -> list[dict[str, str]]:
    features = [{"Name": d["FeatureName"].lower(), "Type": GLUE_TYPES[d["FeatureType"]]} for d in definitions]
    return features + [{"Name": name, "Type": kind} for name, kind in OFFLINE_COLUMNS.items()]


class FeatureGroupOperations:
    cloud: LocalCloud

    def __init__(self, cloud: LocalCloud) -> None:
        super().__init__(cloud)
        self._feature_group_threads: list[threading.Thread] = []
        self._feature_group_threads_lock = threading.Lock()

    # -- operations ------------------------------------------------------------------------
    def create_feature_group(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        check_create_request(params)
        name = params["FeatureGroupName"]
        created = now()
        group: Resource = {
            "FeatureGroupArn": sagemaker_arn(ctx, "feature-group", name),
            "FeatureGroupName": name,
            "RecordIdentifierFeatureName": params["RecordIdentifierFeatureName"],
            "EventTimeFeatureName": params["EventTimeFeatureName"],
            "FeatureDefinitions": params["FeatureDefinitions"],
            "CreationTime": created,
            "FeatureGroupStatus": "Creating",
        }
        group.update(pick(params, "OnlineStoreConfig", "ThroughputConfig", "RoleArn", "Description"))
        if "OfflineStoreConfig" in params:
            group["OfflineStoreConfig"] = offline_store(ctx, name, created, params["OfflineStoreConfig"])
        if not self.cloud.store.insert(FEATURE_GROUP, name, group):
            raise AwsError(
                "ResourceInUse",
                f"Resource Already Exists: FeatureGroup with name {name} already exists. "
                "Choose a different name.",
            )
        save_tags(self.cloud.store, group["FeatureGroupArn"], params.get("Tags"))
        self._provision_feature_group_in_background(name)
        return {"FeatureGroupArn": group["FeatureGroupArn"]}

    def describe_feature_group(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        # Every feature is described in one page.
        return {**describe_feature_group(self.cloud.store, params["FeatureGroupName"]), "NextToken": ""}

    def list_feature_groups(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        groups = self.cloud.store.list(FEATURE_GROUP)
        if status := params.get("FeatureGroupStatusEquals"):
            groups = [g for g in groups if g["FeatureGroupStatus"] == status]
        if offline_status := params.get("OfflineStoreStatusEquals"):
            groups = [g for g in groups if g.get("OfflineStoreStatus", {}).get("Status") == offline_status]
        page, token = list_page(
            groups,
            params,
            name_key="FeatureGroupName",
            sort_keys={
                "FeatureGroupStatus": lambda g: g["FeatureGroupStatus"],
                "OfflineStoreStatus": lambda g: g.get("OfflineStoreStatus", {}).get("Status"),
            },
        )
        summaries = [
            pick(
                g,
                "FeatureGroupName",
                "FeatureGroupArn",
                "CreationTime",
                "FeatureGroupStatus",
                "OfflineStoreStatus",
            )
            for g in page
        ]
        return {"FeatureGroupSummaries": summaries, **({"NextToken": token} if token else {})}

    def update_feature_group(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        store = self.cloud.store
        with store.transaction():
            group = describe_feature_group(store, params["FeatureGroupName"])
            if group["FeatureGroupStatus"] != "Created":
                raise invalid(
                    f"FeatureGroup {group['FeatureGroupName']} is {group['FeatureGroupStatus']}; "
                    "only a Created feature group can be updated."
                )
            additions = params.get("FeatureAdditions", [])
            check_feature_names(group["FeatureDefinitions"] + additions)
            if additions:
                self._add_glue_columns(group, additions)
                group["FeatureDefinitions"] = group["FeatureDefinitions"] + additions
            for key in ("OnlineStoreConfig", "ThroughputConfig"):
                if key in params:
                    group[key] = {**group.get(key, {}), **params[key]}
            group["LastModifiedTime"] = now()
            group["LastUpdateStatus"] = {"Status": "Successful"}
            store.put(FEATURE_GROUP, group["FeatureGroupName"], group)
        return {"FeatureGroupArn": group["FeatureGroupArn"]}

    def delete_feature_group(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        # Like SageMaker, the offline store's S3 data and Glue table are left in place.
        group = describe_feature_group(self.cloud.store, params["FeatureGroupName"])
        with self.cloud.store.transaction():
            self.cloud.store.delete(FEATURE_GROUP, group["FeatureGroupName"])
            self.cloud.store.delete(TAGS, group["FeatureGroupArn"])
        return {}

    # -- lifecycle -------------------------------------------------------------------------
    def start_feature_groups(self) -> None:
        """Finish provisioning the groups a previous run left Creating."""
        for group in self.cloud.store.list(FEATURE_GROUP):
            if group["FeatureGroupStatus"] == "Creating":
                self._provision_feature_group_in_background(group["FeatureGroupName"])

    def stop_feature_groups(self) -> None:
        with self._feature_group_threads_lock:
            running, self._feature_group_threads = self._feature_group_threads, []
        for thread in running:
            thread.join()

    # -- offline store ---------------------------------------------------------------------
    def _provision_feature_group_in_background(self, name: str) -> None:
        thread = threading.Thread(
            target=self._provision_feature_group, args=(name,), name=f"feature-group-{name}", daemon=True
        )
        with self._feature_group_threads_lock:
            self._feature_group_threads = [t for t in self._feature_group_threads if t.is_alive()] + [thread]
        thread.start()

    def _provision_feature_group(self, name: str) -> None:
        """Make the offline store ready, then mark the group Created (or CreateFailed)."""
        group = self.cloud.store.get(FEATURE_GROUP, name)
        if group is None:  # deleted meanwhile
            return
        try:
            if "OfflineStoreConfig" in group:
                self._prepare_offline_store(group)
            failure = None
        except Exception as exc:  # whatever stops the offline store, the group must not stay Creating
            failure = str(exc)
            log.info("feature group %s failed: %s", name, failure)

        def finish(current: Resource) -> None:
            if current["CreationTime"] != group["CreationTime"]:  # deleted and created anew meanwhile
                return
            if failure is not None:
                current["FeatureGroupStatus"] = "CreateFailed"
                current["FailureReason"] = failure[:1024]
                return
            current["FeatureGroupStatus"] = "Created"
            if "OfflineStoreConfig" in current:
                current["OfflineStoreStatus"] = {"Status": "Active"}

        self.cloud.store.update(FEATURE_GROUP, name, finish)

    def _prepare_offline_store(self, group: Resource) -> None:
        config = group["OfflineStoreConfig"]
        region = region_of(group["FeatureGroupArn"])
        bucket = config["S3StorageConfig"]["S3Uri"].split("://", 1)[1].split("/", 1)[0]
        try:
            self.cloud.client("s3", region).head_bucket(Bucket=bucket)
        except ClientError as exc:
            raise invalid(f"The offline store S3 bucket {bucket} is not accessible: {exc}") from exc
        if config["DisableGlueTableCreation"]:
            return
        catalog = config["DataCatalogConfig"]
        location = config["S3StorageConfig"]["ResolvedOutputS3Uri"]
        glue = self.cloud.client("glue", region)
        try:
            glue.create_database(DatabaseInput={"Name": catalog["Database"]})
        except glue.exceptions.AlreadyExistsException:
            pass
        table = {
            "Name": catalog["TableName"],
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"EXTERNAL": "TRUE", "classification": "parquet"},
            "StorageDescriptor": {
                "Columns": glue_columns(group["FeatureDefinitions"]),
                "Location": location,
                **PARQUET,
            },
        }
        try:
            glue.create_table(DatabaseName=catalog["Database"], TableInput=table)
        except glue.exceptions.AlreadyExistsException:
            # Ours if it describes this very location (a restart during provisioning).
            existing = glue.get_table(DatabaseName=catalog["Database"], Name=catalog["TableName"])["Table"]
            if existing["StorageDescriptor"].get("Location") != location:
                raise invalid(
                    f"Glue table {catalog['Database']}.{catalog['TableName']} already exists."
                ) from None

    def _add_glue_columns(self, group: Resource, additions: list[dict[str, Any]]) -> None:
        config = group.get("OfflineStoreConfig")
        if not config or config["DisableGlueTableCreation"]:
            return
        catalog = config["DataCatalogConfig"]
        glue = self.cloud.client("glue", region_of(group["FeatureGroupArn"]))
        try:
            table = glue.get_table(DatabaseName=catalog["Database"], Name=catalog["TableName"])["Table"]
        except glue.exceptions.EntityNotFoundException as exc:
            raise invalid(
                f"The offline store Glue table of {group['FeatureGroupName']} is gone: {exc}"
            ) from exc
        descriptor = table["StorageDescriptor"]
        features = [c for c in descriptor["Columns"] if c["Name"] not in OFFLINE_COLUMNS]
        descriptor["Columns"] = features + glue_columns(additions)
        table_input = pick(table, "Name", "TableType", "Parameters", "PartitionKeys")
        glue.update_table(
            DatabaseName=catalog["Database"], TableInput={**table_input, "StorageDescriptor": descriptor}
        )
