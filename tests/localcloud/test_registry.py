"""The model registry through boto3 and through the Amazon provider's
SageMakerRegisterModelVersionOperator: groups, versions, approval, listing, deletion rules, the
lineage SageMaker records for a package, and restart durability."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from airflow.providers.amazon.aws.operators.sagemaker import (
    ApprovalStatus,
    SageMakerRegisterModelVersionOperator,
)
from botocore.exceptions import ClientError

from include.localcloud.server import LocalCloud
from tests.conftest import make_client

IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
ARN_PREFIX = "arn:aws:sagemaker:us-east-1:123456789012"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def inference(model_url: str = "s3://registry-models/model.tar.gz", image: str = IMAGE) -> dict[str, Any]:
    return {
        "Containers": [{"Image": image, "ModelDataUrl": model_url}],
        "SupportedContentTypes": ["text/csv"],
        "SupportedResponseMIMETypes": ["text/csv"],
    }


@pytest.fixture(scope="module")
def sm(aws) -> Any:
    return aws("sagemaker")  # one client per module: making a SageMaker client takes a while


def body(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def error_of(call: Any, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response["Error"]


def test_group_create_describe_list_delete(sm) -> None:
    prefix = unique("groups")
    names = [f"{prefix}-{letter}" for letter in "bca"]
    for name in names:
        arn = sm.create_model_package_group(
            ModelPackageGroupName=name,
            ModelPackageGroupDescription=f"about {name}",
            Tags=[{"Key": "team", "Value": "fraud"}],
        )["ModelPackageGroupArn"]
        assert arn == f"{ARN_PREFIX}:model-package-group/{name}"
    group = sm.describe_model_package_group(ModelPackageGroupName=names[0])
    assert group["ModelPackageGroupStatus"] == "Completed"
    assert group["ModelPackageGroupDescription"] == f"about {names[0]}"
    assert body(sm.describe_model_package_group(ModelPackageGroupName=group["ModelPackageGroupArn"])) == body(
        group
    )
    assert sm.list_tags(ResourceArn=group["ModelPackageGroupArn"])["Tags"] == [
        {"Key": "team", "Value": "fraud"}
    ]

    error = error_of(sm.create_model_package_group, ModelPackageGroupName=names[0])
    assert error["Code"] == "ValidationException"
    assert (
        error["Message"] == f"Model Package Group already exists: {ARN_PREFIX}:model-package-group/{names[0]}"
    )

    def listed(**kwargs: Any) -> list[str]:
        found = sm.list_model_package_groups(NameContains=prefix, **kwargs)["ModelPackageGroupSummaryList"]
        return [g["ModelPackageGroupName"][-1] for g in found]

    assert listed() == ["b", "c", "a"]  # CreationTime, Ascending by default
    assert listed(SortBy="Name") == ["a", "b", "c"]
    assert listed(SortBy="Name", SortOrder="Descending") == ["c", "b", "a"]
    first = sm.list_model_package_groups(NameContains=prefix, SortBy="Name", MaxResults=2)
    second = sm.list_model_package_groups(
        NameContains=prefix, SortBy="Name", MaxResults=2, NextToken=first["NextToken"]
    )
    assert [
        g["ModelPackageGroupName"][-1]
        for g in first["ModelPackageGroupSummaryList"] + second["ModelPackageGroupSummaryList"]
    ] == ["a", "b", "c"]
    assert "NextToken" not in second

    sm.delete_model_package_group(ModelPackageGroupName=names[0])
    error = error_of(sm.describe_model_package_group, ModelPackageGroupName=names[0])
    assert error["Code"] == "ValidationException" and "does not exist" in error["Message"]
    assert (
        error_of(sm.delete_model_package_group, ModelPackageGroupName=names[0])["Code"]
        == "ValidationException"
    )
    assert sm.list_tags(ResourceArn=group["ModelPackageGroupArn"])["Tags"] == []


def test_versions_are_numbered_and_described(sm) -> None:
    group = unique("versions")
    sm.create_model_package_group(ModelPackageGroupName=group)
    metrics = {
        "Bias": {"Report": {"ContentType": "application/json", "S3Uri": "s3://reports/bias/analysis.json"}},
        "ModelQuality": {
            "Statistics": {"ContentType": "application/json", "S3Uri": "s3://reports/quality.json"}
        },
    }
    arns = [
        sm.create_model_package(
            ModelPackageGroupName=group,
            ModelPackageDescription=f"version {n}",
            InferenceSpecification=inference(f"s3://registry-models/{n}/model.tar.gz"),
            ModelMetrics=metrics,
            CustomerMetadataProperties={"auc": "0.85"},
            MetadataProperties={"GeneratedBy": "airflow"},
            Domain="MACHINE_LEARNING",
            Task="CLASSIFICATION",
            SamplePayloadUrl="s3://registry-models/sample.csv",
        )["ModelPackageArn"]
        for n in (1, 2, 3)
    ]
    assert arns == [f"{ARN_PREFIX}:model-package/{group}/{n}" for n in (1, 2, 3)]
    package = sm.describe_model_package(ModelPackageName=arns[1])
    assert package["ModelPackageName"] == package["ModelPackageGroupName"] == group
    assert package["ModelPackageVersion"] == 2
    assert package["ModelPackageStatus"] == "Completed"
    assert package["ModelPackageStatusDetails"] == {"ValidationStatuses": [], "ImageScanStatuses": []}
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    assert package["InferenceSpecification"] == inference("s3://registry-models/2/model.tar.gz")
    assert package["ModelMetrics"] == metrics
    assert package["CustomerMetadataProperties"] == {"auc": "0.85"}
    assert (package["Domain"], package["Task"]) == ("MACHINE_LEARNING", "CLASSIFICATION")
    assert package["SamplePayloadUrl"] == "s3://registry-models/sample.csv"
    assert sm.describe_model_package(ModelPackageName=f"{group}/2")["ModelPackageArn"] == arns[1]
    missing = error_of(sm.describe_model_package, ModelPackageName=f"{group}/9")
    assert missing["Code"] == "ValidationException" and "does not exist" in missing["Message"]


def test_create_package_errors(sm) -> None:
    missing_group = error_of(
        sm.create_model_package, ModelPackageGroupName=unique("absent"), InferenceSpecification=inference()
    )
    assert missing_group["Code"] == "ValidationException" and "does not exist" in missing_group["Message"]
    group = unique("errors")
    sm.create_model_package_group(ModelPackageGroupName=group)
    both = error_of(
        sm.create_model_package,
        ModelPackageGroupName=group,
        ModelPackageName="named",
        InferenceSpecification=inference(),
    )
    assert "ModelPackageName does not apply" in both["Message"]
    neither = error_of(sm.create_model_package, InferenceSpecification=inference())
    assert "Either ModelPackageGroupName" in neither["Message"]
    assert sm.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"] == []


def test_list_packages_filters_sorts_and_pages(sm) -> None:
    group = unique("listed")
    sm.create_model_package_group(ModelPackageGroupName=group)
    arns = [
        sm.create_model_package(ModelPackageGroupName=group, InferenceSpecification=inference())[
            "ModelPackageArn"
        ]
        for _ in range(3)
    ]
    sm.update_model_package(ModelPackageArn=arns[1], ModelApprovalStatus="Approved")
    unversioned = unique("standalone")
    sm.create_model_package(ModelPackageName=unversioned, InferenceSpecification=inference())

    def versions(**kwargs: Any) -> list[int]:
        found = sm.list_model_packages(**kwargs)["ModelPackageSummaryList"]
        return [p["ModelPackageVersion"] for p in found]

    assert versions(ModelPackageGroupName=group) == [1, 2, 3]
    assert versions(ModelPackageGroupName=f"{ARN_PREFIX}:model-package-group/{group}") == [1, 2, 3]
    assert versions(ModelPackageGroupName=group, SortOrder="Descending") == [3, 2, 1]
    assert versions(ModelPackageGroupName=group, ModelApprovalStatus="Approved") == [2]
    assert versions(ModelPackageGroupName=group, ModelPackageType="Unversioned") == []
    page = sm.list_model_packages(ModelPackageGroupName=group, MaxResults=2)
    rest = sm.list_model_packages(ModelPackageGroupName=group, MaxResults=2, NextToken=page["NextToken"])
    assert [
        p["ModelPackageArn"] for p in page["ModelPackageSummaryList"] + rest["ModelPackageSummaryList"]
    ] == arns
    summary = page["ModelPackageSummaryList"][0]
    assert summary["ModelPackageStatus"] == "Completed" and summary["ModelPackageGroupName"] == group

    # Without a group, ListModelPackages lists unversioned packages unless told otherwise.
    standalone = sm.list_model_packages(NameContains=unversioned)["ModelPackageSummaryList"]
    assert [(p["ModelPackageName"], p["ModelPackageArn"]) for p in standalone] == [
        (unversioned, f"{ARN_PREFIX}:model-package/{unversioned}")
    ]
    assert "ModelPackageVersion" not in standalone[0] and "ModelApprovalStatus" not in standalone[0]
    assert sm.list_model_packages(NameContains=group)["ModelPackageSummaryList"] == []
    assert versions(NameContains=group, ModelPackageType="Versioned") == [1, 2, 3]


def test_update_approval_and_metadata(sm) -> None:
    group = unique("approval")
    sm.create_model_package_group(ModelPackageGroupName=group)
    arn = sm.create_model_package(
        ModelPackageGroupName=group,
        InferenceSpecification=inference(),
        CustomerMetadataProperties={"auc": "0.81", "stage": "dev"},
    )["ModelPackageArn"]
    created = sm.describe_model_package(ModelPackageName=arn)
    assert "LastModifiedTime" not in created
    assert (
        sm.update_model_package(
            ModelPackageArn=arn,
            ModelApprovalStatus="Approved",
            ApprovalDescription="bias report reviewed",
            CustomerMetadataProperties={"auc": "0.85", "owner": "fraud"},
            CustomerMetadataPropertiesToRemove=["stage"],
        )["ModelPackageArn"]
        == arn
    )
    updated = sm.describe_model_package(ModelPackageName=arn)
    assert updated["ModelApprovalStatus"] == "Approved"
    assert updated["ApprovalDescription"] == "bias report reviewed"
    assert updated["CustomerMetadataProperties"] == {"auc": "0.85", "owner": "fraud"}
    assert updated["LastModifiedTime"] >= created["CreationTime"]
    assert updated["InferenceSpecification"] == created["InferenceSpecification"]
    missing = error_of(
        sm.update_model_package,
        ModelPackageArn=f"{ARN_PREFIX}:model-package/{group}/7",
        ModelApprovalStatus="Rejected",
    )
    assert missing["Code"] == "ValidationException"


def test_group_with_versions_cannot_be_deleted(sm) -> None:
    group = unique("nonempty")
    sm.create_model_package_group(ModelPackageGroupName=group)
    arn = sm.create_model_package(ModelPackageGroupName=group, InferenceSpecification=inference())[
        "ModelPackageArn"
    ]
    error = error_of(sm.delete_model_package_group, ModelPackageGroupName=group)
    assert error["Code"] == "ConflictException"
    sm.delete_model_package(ModelPackageName=arn)
    assert error_of(sm.describe_model_package, ModelPackageName=arn)["Code"] == "ValidationException"
    sm.delete_model_package_group(ModelPackageGroupName=group)
    assert (
        error_of(sm.describe_model_package_group, ModelPackageGroupName=group)["Code"]
        == "ValidationException"
    )


def test_package_lineage_is_recorded(sm) -> None:
    group = unique("lineage")
    sm.create_model_package_group(ModelPackageGroupName=group)
    model_url = f"s3://registry-models/{group}/model.tar.gz"
    image = f"{IMAGE}-{group}"  # an image no other test registers
    spec = inference(model_url, image)
    arn = sm.create_model_package(ModelPackageGroupName=group, InferenceSpecification=spec)["ModelPackageArn"]
    artifacts = sm.list_artifacts(SourceUri=arn)["ArtifactSummaries"]
    assert [a["ArtifactType"] for a in artifacts] == ["Model"]
    package_artifact = artifacts[0]["ArtifactArn"]

    incoming = sm.list_associations(DestinationArn=package_artifact)["AssociationSummaries"]
    sources = {
        a["SourceType"]: sm.describe_artifact(ArtifactArn=a["SourceArn"])["Source"]["SourceUri"]
        for a in incoming
    }
    assert sources == {"Model": model_url, "Image": image}
    outgoing = sm.list_associations(SourceArn=package_artifact)["AssociationSummaries"]
    assert [(a["DestinationType"], a["AssociationType"]) for a in outgoing] == [
        ("ModelGroup", "ContributedTo")
    ]
    group_context = sm.describe_context(ContextName=outgoing[0]["DestinationArn"])
    assert group_context["Source"]["SourceUri"] == f"{ARN_PREFIX}:model-package-group/{group}"

    # A second version reuses the group's context and the (shared) image artifact.
    second = sm.create_model_package(ModelPackageGroupName=group, InferenceSpecification=spec)[
        "ModelPackageArn"
    ]
    second_artifact = sm.list_artifacts(SourceUri=second)["ArtifactSummaries"][0]["ArtifactArn"]
    assert (
        sm.list_associations(SourceArn=second_artifact)["AssociationSummaries"][0]["DestinationArn"]
        == group_context["ContextArn"]
    )
    assert len(sm.list_artifacts(SourceUri=image, ArtifactType="Image")["ArtifactSummaries"]) == 1


def test_provider_register_model_version_operator(sm, airflow_connection) -> None:
    group = unique("provider")

    def register(**kwargs: Any) -> str:
        register_model = SageMakerRegisterModelVersionOperator(
            task_id="register_model",
            image_uri=IMAGE,
            model_url="s3://registry-models/provider/model.tar.gz",
            package_group_name=group,
            package_desc="fraud model",
            **kwargs,
        )
        return register_model.execute({})

    first = register()
    bias = {"Report": {"ContentType": "application/json", "S3Uri": "s3://reports/analysis.json"}}
    second = register(model_approval=ApprovalStatus.APPROVED, extras={"ModelMetrics": {"Bias": bias}})
    assert (first, second) == (
        f"{ARN_PREFIX}:model-package/{group}/1",
        f"{ARN_PREFIX}:model-package/{group}/2",
    )
    package = sm.describe_model_package(ModelPackageName=second)
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["ModelMetrics"] == {"Bias": bias}
    assert package["InferenceSpecification"]["SupportedContentTypes"] == ["text/csv"]
    assert sm.describe_model_package(ModelPackageName=first)["ModelApprovalStatus"] == "PendingManualApproval"

    # A refused package rolls back the group the operator has just created.
    rolled_back = unique("rollback")
    with pytest.raises(ClientError):
        SageMakerRegisterModelVersionOperator(
            task_id="register_bad_model",
            image_uri=IMAGE,
            model_url="s3://registry-models/x/model.tar.gz",
            package_group_name=rolled_back,
            extras={"ModelPackageName": "not-for-versions"},
        ).execute({})
    assert (
        error_of(sm.describe_model_package_group, ModelPackageGroupName=rolled_back)["Code"]
        == "ValidationException"
    )


def test_a_retried_registration_finds_the_version_its_run_registered(sm, airflow_connection) -> None:
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from fraud_operators.registry import RegisterModelVersionOperator

    group = unique("retried")
    context = {"dag_run": SimpleNamespace(start_date=datetime.now(UTC) - timedelta(minutes=1))}

    def register(run_id: str) -> str:
        return RegisterModelVersionOperator(
            task_id="register", image_uri=IMAGE, model_url="s3://registry-models/retried/model.tar.gz",
            package_group_name=group, extras={"CustomerMetadataProperties": {"run_id": run_id}},
        ).execute(context)

    first_try, second_try, other_run = register("manual__1"), register("manual__1"), register("manual__2")
    assert first_try == second_try == f"{ARN_PREFIX}:model-package/{group}/1"
    assert other_run == f"{ARN_PREFIX}:model-package/{group}/2"
    listed = sm.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    assert len(listed) == 2


def test_registry_survives_restart(tmp_path) -> None:
    with LocalCloud(tmp_path, port=0) as first:
        sm = make_client(first, "sagemaker")
        sm.create_model_package_group(ModelPackageGroupName="kept")
        arn = sm.create_model_package(ModelPackageGroupName="kept", InferenceSpecification=inference())[
            "ModelPackageArn"
        ]
        sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
        before = sm.describe_model_package(ModelPackageName=arn)
    with LocalCloud(tmp_path, port=0) as second:
        sm = make_client(second, "sagemaker")
        after = sm.describe_model_package(ModelPackageName=arn)
        assert body(after) == body(before)
        next_version = sm.create_model_package(
            ModelPackageGroupName="kept", InferenceSpecification=inference()
        )
        assert next_version["ModelPackageArn"].endswith("/kept/2")
