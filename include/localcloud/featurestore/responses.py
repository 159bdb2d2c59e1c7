"""The SageMaker Feature Store runtime (REST-JSON): PutRecord, GetRecord, BatchGetRecord and
DeleteRecord over the feature groups the SageMaker control plane describes."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from include.localcloud.featurestore.models import (
    FeatureGroup,
    OfflineWriter,
    OnlineRecord,
    RecordStore,
    offline_row,
    parse_event_time,
    parse_record,
    parse_value,
    ttl_seconds,
    validation_error,
)
from include.localcloud.protocol import AwsError, RequestContext, RestJsonService
from include.localcloud.sagemaker.feature_groups import FEATURE_GROUP, describe_feature_group
from include.localcloud.server import LocalCloud


class FeatureStoreRuntimeResponse(RestJsonService):
    service_name = "sagemaker-featurestore-runtime"
    validation_error = "ValidationError"

    def __init__(self, cloud: LocalCloud) -> None:
        super().__init__(cloud)
        self.records = RecordStore(cloud.state_dir / "featurestore" / "records.db")
        self.offline = OfflineWriter(self.records, self._find_group, lambda region, role_arn: cloud.client(
            "s3", region, role_arn))
        self._groups: dict[str, tuple[int, FeatureGroup]] = {}  # name -> (store version, group)

    def start(self) -> None:
        groups = self.cloud.store.list(FEATURE_GROUP)
        self.records.keep_groups({FeatureGroup.from_description(body).key for body in groups})
        self.offline.start()

    def stop(self) -> None:
        self.offline.stop()
        self.records.close()

    def _find_group(self, name: str) -> FeatureGroup | None:
        try:
            return self._group(name)
        except AwsError:
            return None

    def _group(self, name: str, missing: str = "ValidationError") -> FeatureGroup:
        # Every record names its group: parse the description once per change of the store.
        version = self.cloud.store.version
        cached = self._groups.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        # GetRecord answers a missing group with ResourceNotFound (404); PutRecord and DeleteRecord,
        # whose models have no such error, answer ValidationError like SageMaker does.
        try:
            group = FeatureGroup.from_description(describe_feature_group(self.cloud.store, name))
        except AwsError as error:
            raise AwsError(missing, error.message, 404 if missing == "ResourceNotFound" else 400) from None
        self._groups[name] = (version, group)
        return group

    def _online_group(self, name: str, feature_names: list[str] | None) -> FeatureGroup:
        group = self._group(name, missing="ResourceNotFound")
        if not group.online:
            raise validation_error(f"The OnlineStore is not enabled for FeatureGroup {group.name}.")
        if feature_names:
            group.check_feature_names(feature_names)
        return group

    @staticmethod
    def _visible(found: OnlineRecord | None, feature_names: list[str] | None, with_expiry: bool) -> dict[str, Any]:
        """The GetRecord answer for a stored record: nothing when absent, deleted or expired."""
        if found is None or found.record is None:
            return {}
        if found.expires_at is not None and found.expires_at <= time.time():
            return {}
        record = found.record
        if feature_names:
            record = [item for item in record if item["FeatureName"] in feature_names]
        result: dict[str, Any] = {"Record": record}
        if with_expiry and found.expires_at is not None:
            moment = dt.datetime.fromtimestamp(found.expires_at, dt.UTC)
            result["ExpiresAt"] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return result

    # -- operations ------------------------------------------------------------------------
    def put_record(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        invoked_at = time.time()
        group = self._group(params["FeatureGroupName"])
        stores = group.target_stores(params.get("TargetStores"))
        parsed = parse_record(group, params["Record"])
        ttl = ttl_seconds(params.get("TtlDuration"))  # a record's TTL supersedes the group's
        ttl = group.ttl_seconds if ttl is None else ttl
        expires_at = parsed.event_time + ttl if ttl is not None else None
        row = offline_row(parsed.values, parsed.event_time, invoked_at, deleted=False)
        self.records.put(group, parsed, params["Record"], stores, expires_at, row)
        return {}

    def get_record(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        names = params.get("FeatureNames")
        group = self._online_group(params["FeatureGroupName"], names)
        found = self.records.get(group, params["RecordIdentifierValueAsString"])
        return self._visible(found, names, params.get("ExpirationTimeResponse") == "Enabled")

    def batch_get_record(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        with_expiry = params.get("ExpirationTimeResponse") == "Enabled"
        records: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for identifier in params["Identifiers"]:
            name, names = identifier["FeatureGroupName"], identifier.get("FeatureNames")
            try:
                group = self._online_group(name, names)
            except AwsError as error:
                errors += [
                    {"FeatureGroupName": name, "RecordIdentifierValueAsString": value,
                     "ErrorCode": error.code, "ErrorMessage": error.message}
                    for value in identifier["RecordIdentifiersValueAsString"]
                ]
                continue
            for value in identifier["RecordIdentifiersValueAsString"]:
                found = self._visible(self.records.get(group, value), names, with_expiry)
                if found:
                    records.append({"FeatureGroupName": name, "RecordIdentifierValueAsString": value, **found})
        return {"Records": records, "Errors": errors, "UnprocessedIdentifiers": []}

    def delete_record(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        invoked_at = time.time()
        group = self._group(params["FeatureGroupName"])
        stores = group.target_stores(params.get("TargetStores"))
        identifier, event_text = params["RecordIdentifierValueAsString"], params["EventTime"]
        event_time = parse_event_time(group, event_text)
        # The offline marker: identifier and event time set, every other feature null.
        values = {
            group.record_identifier: parse_value(group, group.record_identifier, identifier),
            group.event_time_feature: parse_value(group, group.event_time_feature, event_text),
        }
        hard = params.get("DeletionMode") == "HardDelete"
        row = offline_row(values, event_time, invoked_at, deleted=True)
        self.records.delete(group, identifier, event_time, hard, stores, row)
        return {}
