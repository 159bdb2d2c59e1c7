"""Feature groups through boto3: creation with the offline store's Glue table, validation, listing,
update, deletion, the runtime's `describe_feature_group` helper and restart durability."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from include.localcloud.protocol import AwsError
from include.localcloud.sagemaker.feature_groups import FEATURE_GROUP, describe_feature_group
from include.localcloud.server import LocalCloud
from tests.conftest import make_client

ROLE = "arn:aws:iam::123456789012:role/feature-store"
DEFINITIONS = [
    {"FeatureName": "policy_id", "FeatureType": "Integral"},
    {"FeatureName": "event_time", "FeatureType": "Fractional"},
    {"FeatureName": "total_claim_amount", "FeatureType": "Fractional"},
    {"FeatureName": "incident_type", "FeatureType": "String"},
]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def sm(aws) -> Any:
    return aws("sagemaker")  # one client per module: making a SageMaker client takes a while


@pytest.fixture(scope="module")
def glue(aws) -> Any:
    return aws("glue")


@pytest.fixture(scope="module")
def bucket(aws) -> str:
    name = unique("feature-groups")
    aws("s3").create_bucket(Bucket=name)
    return name


def create(sm: Any, name: str, bucket: str | None = None, **overrides: Any) -> dict[str, Any]:
    request = {
        "FeatureGroupName": name,
        "RecordIdentifierFeatureName": "policy_id",
        "EventTimeFeatureName": "event_time",
        "FeatureDefinitions": DEFINITIONS,
        "OnlineStoreConfig": {"EnableOnlineStore": True},
        "RoleArn": ROLE,
    }
    if bucket:
        request["OfflineStoreConfig"] = {"S3StorageConfig": {"S3Uri": f"s3://{bucket}/offline"}}
    return sm.create_feature_group(**(request | overrides))


def settled(sm: Any, name: str) -> dict[str, Any]:
    """The description once the group has left Creating (SageMaker has no waiter for it)."""
    deadline = time.monotonic() + 30
    while (group := sm.describe_feature_group(FeatureGroupName=name))["FeatureGroupStatus"] == "Creating":
        if time.monotonic() > deadline:
            raise AssertionError(f"feature group {name} still Creating")
        time.sleep(0.05)
    return group


def error_of(call: Any, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response["Error"]


def test_create_resolves_offline_store_and_glue_table(sm, glue, bucket) -> None:
    name = unique("claims")
    arn = create(sm, name, bucket, Description="claims features")["FeatureGroupArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:feature-group/{name}"
    group = settled(sm, name)
    epoch = int(group["CreationTime"].timestamp())
    assert group["FeatureGroupStatus"] == "Created"
    assert group["OfflineStoreStatus"] == {"Status": "Active"}
    assert group["FeatureDefinitions"] == DEFINITIONS
    assert group["Description"] == "claims features"
    assert group["NextToken"] == ""
    storage = group["OfflineStoreConfig"]["S3StorageConfig"]
    location = f"s3://{bucket}/offline/123456789012/sagemaker/us-east-1/offline-store/{name}-{epoch}/data"
    assert storage["ResolvedOutputS3Uri"] == location
    catalog = group["OfflineStoreConfig"]["DataCatalogConfig"]
    assert catalog == {
        "TableName": f"{name}_{epoch}",
        "Catalog": "AwsDataCatalog",
        "Database": "sagemaker_featurestore",
    }

    table = glue.get_table(DatabaseName="sagemaker_featurestore", Name=catalog["TableName"])["Table"]
    descriptor = table["StorageDescriptor"]
    assert descriptor["Location"] == location
    assert [(c["Name"], c["Type"]) for c in descriptor["Columns"]] == [
        ("policy_id", "bigint"),
        ("event_time", "double"),
        ("total_claim_amount", "double"),
        ("incident_type", "string"),
        ("write_time", "timestamp"),
        ("api_invocation_time", "timestamp"),
        ("is_deleted", "boolean"),
    ]
    assert (
        descriptor["SerdeInfo"]["SerializationLibrary"]
        == "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    )
    assert descriptor["InputFormat"] == "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    assert table["TableType"] == "EXTERNAL_TABLE"


def test_catalog_config_and_disabled_glue_table_and_online_only(sm, glue, bucket) -> None:
    named = unique("named-table")
    catalog = {"TableName": "claims_offline", "Catalog": "AwsDataCatalog", "Database": "fraud_features"}
    create(
        sm,
        named,
        OfflineStoreConfig={"S3StorageConfig": {"S3Uri": f"s3://{bucket}"}, "DataCatalogConfig": catalog},
    )
    assert settled(sm, named)["OfflineStoreConfig"]["DataCatalogConfig"] == catalog
    assert glue.get_table(DatabaseName="fraud_features", Name="claims_offline")["Table"]["StorageDescriptor"][
        "Location"
    ].startswith(f"s3://{bucket}/123456789012/sagemaker/us-east-1/offline-store/{named}-")

    unlisted = unique("no-table")
    offline = {"S3StorageConfig": {"S3Uri": f"s3://{bucket}/x"}, "DisableGlueTableCreation": True}
    create(sm, unlisted, OfflineStoreConfig=offline)
    group = settled(sm, unlisted)
    assert group["FeatureGroupStatus"] == "Created"
    assert "DataCatalogConfig" not in group["OfflineStoreConfig"]

    online_only = unique("online-only")
    create(sm, online_only)
    group = settled(sm, online_only)
    assert group["FeatureGroupStatus"] == "Created"
    assert "OfflineStoreStatus" not in group and "OfflineStoreConfig" not in group


def test_missing_bucket_fails_creation_with_reason(sm) -> None:
    name = unique("no-bucket")
    create(sm, name, "bucket-that-does-not-exist")
    group = settled(sm, name)
    assert group["FeatureGroupStatus"] == "CreateFailed"
    assert "bucket-that-does-not-exist" in group["FailureReason"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"RecordIdentifierFeatureName": "claim_id"}, "RecordIdentifierFeatureName claim_id is not present"),
        ({"EventTimeFeatureName": "ts"}, "EventTimeFeatureName ts is not present"),
        ({"EventTimeFeatureName": "policy_id"}, "must be of FeatureType Fractional or String"),
        (
            {"FeatureDefinitions": [*DEFINITIONS, {"FeatureName": "write_time", "FeatureType": "String"}]},
            "write_time is reserved",
        ),
        (
            {"FeatureDefinitions": [*DEFINITIONS, {"FeatureName": "Policy_ID", "FeatureType": "String"}]},
            "defined more than once",
        ),
        ({"OnlineStoreConfig": {"EnableOnlineStore": False}}, "at least one of OnlineStoreConfig"),
        (
            {"OfflineStoreConfig": {"S3StorageConfig": {"S3Uri": "s3://b"}, "TableFormat": "Iceberg"}},
            "Iceberg",
        ),
    ],
)
def test_invalid_definitions_are_refused(sm, overrides, message) -> None:
    name = unique("invalid")
    error = error_of(create, sm=sm, name=name, **overrides)
    assert error["Code"] == "ValidationException"
    assert message in error["Message"]
    assert error_of(sm.describe_feature_group, FeatureGroupName=name)["Code"] == "ResourceNotFound"


def test_duplicate_and_missing_groups(sm) -> None:
    name = unique("dup")
    create(sm, name)
    error = error_of(create, sm=sm, name=name)
    assert error["Code"] == "ResourceInUse"
    assert f"FeatureGroup with name {name} already exists" in error["Message"]
    missing = unique("missing")
    for call, extra in (
        (sm.describe_feature_group, {}),
        (sm.delete_feature_group, {}),
        (sm.update_feature_group, {"FeatureAdditions": [{"FeatureName": "f", "FeatureType": "String"}]}),
    ):
        error = error_of(call, FeatureGroupName=missing, **extra)
        assert error == {
            "Code": "ResourceNotFound",
            "Message": f"Resource Not Found: Amazon SageMaker can't find a FeatureGroup with name {missing}",
        }


def test_list_filters_sorts_and_pages(sm, bucket) -> None:
    prefix = unique("listing")
    names = [f"{prefix}-{letter}" for letter in "cab"]
    for name in names:
        create(sm, name, bucket)
    create(sm, f"{prefix}-failed", "no-such-bucket-for-listing")
    for name in [*names, f"{prefix}-failed"]:
        settled(sm, name)

    def listed(**kwargs: Any) -> list[str]:
        found = sm.list_feature_groups(NameContains=prefix, **kwargs)["FeatureGroupSummaries"]
        return [g["FeatureGroupName"].removeprefix(f"{prefix}-") for g in found]

    assert listed(SortBy="Name", SortOrder="Ascending") == ["a", "b", "c", "failed"]
    assert listed(SortBy="CreationTime", SortOrder="Ascending") == ["c", "a", "b", "failed"]
    assert listed(SortBy="FeatureGroupStatus", SortOrder="Ascending")[0] == "failed"  # CreateFailed < Created
    assert listed(FeatureGroupStatusEquals="CreateFailed") == ["failed"]
    assert sorted(listed(OfflineStoreStatusEquals="Active")) == ["a", "b", "c"]

    first = sm.list_feature_groups(NameContains=prefix, SortBy="Name", SortOrder="Descending", MaxResults=3)
    assert [g["FeatureGroupName"] for g in first["FeatureGroupSummaries"]] == [
        f"{prefix}-failed",
        f"{prefix}-c",
        f"{prefix}-b",
    ]
    rest = sm.list_feature_groups(
        NameContains=prefix, SortBy="Name", SortOrder="Descending", MaxResults=3, NextToken=first["NextToken"]
    )
    assert [g["FeatureGroupName"] for g in rest["FeatureGroupSummaries"]] == [f"{prefix}-a"]
    assert "NextToken" not in rest
    summary = first["FeatureGroupSummaries"][1]
    assert set(summary) == {
        "FeatureGroupName",
        "FeatureGroupArn",
        "CreationTime",
        "FeatureGroupStatus",
        "OfflineStoreStatus",
    }


def test_update_adds_features_to_definitions_and_glue_table(sm, glue, bucket) -> None:
    name = unique("update")
    create(sm, name, bucket)
    catalog = settled(sm, name)["OfflineStoreConfig"]["DataCatalogConfig"]
    added = [{"FeatureName": "fraud", "FeatureType": "Integral"}]
    sm.update_feature_group(FeatureGroupName=name, FeatureAdditions=added)
    group = sm.describe_feature_group(FeatureGroupName=name)
    assert group["FeatureDefinitions"] == DEFINITIONS + added
    assert group["LastUpdateStatus"] == {"Status": "Successful"}
    assert group["LastModifiedTime"] >= group["CreationTime"]
    columns = glue.get_table(DatabaseName=catalog["Database"], Name=catalog["TableName"])["Table"][
        "StorageDescriptor"
    ]
    assert [c["Name"] for c in columns["Columns"]][-4:] == [
        "fraud",
        "write_time",
        "api_invocation_time",
        "is_deleted",
    ]

    error = error_of(
        sm.update_feature_group,
        FeatureGroupName=name,
        FeatureAdditions=[{"FeatureName": "is_deleted", "FeatureType": "String"}],
    )
    assert error["Code"] == "ValidationException"
    assert len(sm.describe_feature_group(FeatureGroupName=name)["FeatureDefinitions"]) == 5


def test_delete_keeps_offline_data_and_frees_the_name(sm, glue, bucket) -> None:
    name = unique("delete")
    create(sm, name, bucket, Tags=[{"Key": "team", "Value": "fraud"}])
    group = settled(sm, name)
    sm.delete_feature_group(FeatureGroupName=name)
    assert error_of(sm.describe_feature_group, FeatureGroupName=name)["Code"] == "ResourceNotFound"
    catalog = group["OfflineStoreConfig"]["DataCatalogConfig"]
    assert glue.get_table(DatabaseName=catalog["Database"], Name=catalog["TableName"])["Table"]["Name"]
    assert sm.list_tags(ResourceArn=group["FeatureGroupArn"])["Tags"] == []
    create(sm, name)
    assert settled(sm, name)["FeatureGroupStatus"] == "Created"


def test_describe_feature_group_helper_reads_the_store(cloud, sm) -> None:
    name = unique("helper")
    arn = create(sm, name)["FeatureGroupArn"]
    settled(sm, name)
    by_name = describe_feature_group(cloud.store, name)
    assert by_name == cloud.store.get(FEATURE_GROUP, name)
    assert by_name["RecordIdentifierFeatureName"] == "policy_id"
    assert describe_feature_group(cloud.store, arn) == by_name
    with pytest.raises(AwsError) as caught:
        describe_feature_group(cloud.store, "absent-group")
    assert caught.value.code == "ResourceNotFound"


def test_groups_survive_restart_and_interrupted_creation_resumes(tmp_path) -> None:
    with LocalCloud(tmp_path, port=0) as first:
        make_client(first, "s3").create_bucket(Bucket="restart-features")
        sm = make_client(first, "sagemaker")
        create(sm, "kept", "restart-features")
        before = settled(sm, "kept")
        # As if the cloud had stopped while provisioning: the Glue table exists, the status lags.
        first.store.update(FEATURE_GROUP, "kept", lambda g: g.update(FeatureGroupStatus="Creating"))
    with LocalCloud(tmp_path, port=0) as second:
        after = settled(make_client(second, "sagemaker"), "kept")
        assert after["FeatureGroupStatus"] == "Created"
        assert after["OfflineStoreConfig"] == before["OfflineStoreConfig"]
        assert after["CreationTime"] == before["CreationTime"]
