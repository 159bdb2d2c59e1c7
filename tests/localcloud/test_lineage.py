"""Lineage through boto3: contexts, artifacts, actions, associations (rules, filters, sorting,
paging), a walk from an endpoint back to the raw data, and restart durability."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from include.localcloud.server import LocalCloud
from tests.conftest import make_client

ARN_PREFIX = "arn:aws:sagemaker:us-east-1:123456789012"
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def sm(aws) -> Any:
    return aws("sagemaker")  # one client per module: making a SageMaker client takes a while


def error_of(call: Any, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response["Error"]


def artifact(sm: Any, uri: str, artifact_type: str = "DataSet", **extra: Any) -> str:
    return sm.create_artifact(Source={"SourceUri": uri}, ArtifactType=artifact_type, **extra)["ArtifactArn"]


def test_contexts(sm) -> None:
    name = unique("Run")
    source = {"SourceUri": f"airflow://fraud/{name}", "SourceType": "AirflowRun"}
    arn = sm.create_context(
        ContextName=name,
        Source=source,
        ContextType="PipelineRun",
        Description="a run",
        Properties={"dag": "fraud"},
        Tags=[{"Key": "team", "Value": "fraud"}],
    )["ContextArn"]
    assert arn == f"{ARN_PREFIX}:context/{name.lower()}"
    context = sm.describe_context(ContextName=name)
    assert (context["ContextName"], context["Source"], context["ContextType"]) == (
        name,
        source,
        "PipelineRun",
    )
    assert context["Properties"] == {"dag": "fraud"} and context["Description"] == "a run"
    assert sm.describe_context(ContextName=arn)["ContextArn"] == arn
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "fraud"}]

    duplicate = error_of(sm.create_context, ContextName=name, Source=source, ContextType="PipelineRun")
    assert duplicate["Code"] == "ValidationException" and "already exists" in duplicate["Message"]

    sm.update_context(
        ContextName=name, Description="the run", Properties={"run": "1"}, PropertiesToRemove=["dag"]
    )
    updated = sm.describe_context(ContextName=name)
    assert updated["Properties"] == {"run": "1"} and updated["Description"] == "the run"
    assert updated["LastModifiedTime"] >= context["LastModifiedTime"]

    listed = sm.list_contexts(SourceUri=source["SourceUri"])["ContextSummaries"]
    assert [c["ContextArn"] for c in listed] == [arn]
    assert set(listed[0]) == {
        "ContextArn",
        "ContextName",
        "Source",
        "ContextType",
        "CreationTime",
        "LastModifiedTime",
    }
    assert sm.list_contexts(SourceUri=source["SourceUri"], ContextType="Endpoint")["ContextSummaries"] == []

    assert sm.delete_context(ContextName=name)["ContextArn"] == arn
    for call in (sm.describe_context, sm.delete_context):
        assert error_of(call, ContextName=name)["Code"] == "ResourceNotFound"
    assert error_of(sm.update_context, ContextName=name, Description="x")["Code"] == "ResourceNotFound"


def test_artifacts_allow_duplicate_sources_but_unique_names(sm) -> None:
    uri = f"s3://lineage-data/{unique('claims')}.csv"
    first = artifact(sm, uri, Properties={"rows": "5000"})
    second = artifact(sm, uri)
    assert first != second
    assert re.fullmatch(rf"{ARN_PREFIX}:artifact/[0-9a-f]{{32}}", first)
    described = sm.describe_artifact(ArtifactArn=first)
    assert described["Source"] == {"SourceUri": uri} and described["ArtifactType"] == "DataSet"
    assert described["Properties"] == {"rows": "5000"}

    name = unique("raw-claims")
    named = artifact(sm, uri, ArtifactName=name)
    taken = error_of(sm.create_artifact, ArtifactName=name, Source={"SourceUri": uri}, ArtifactType="DataSet")
    assert taken["Code"] == "ValidationException" and "already exists" in taken["Message"]
    sm.update_artifact(ArtifactArn=named, Properties={"rows": "5000"})
    assert sm.describe_artifact(ArtifactArn=named)["ArtifactName"] == name

    # Deleting by source needs that source to name one artifact.
    ambiguous = error_of(sm.delete_artifact, Source={"SourceUri": uri})
    assert ambiguous["Code"] == "ValidationException"
    for arn in (first, second):
        assert sm.delete_artifact(ArtifactArn=arn)["ArtifactArn"] == arn
    assert sm.delete_artifact(Source={"SourceUri": uri})["ArtifactArn"] == named
    assert error_of(sm.describe_artifact, ArtifactArn=first)["Code"] == "ResourceNotFound"
    assert error_of(sm.delete_artifact, Source={"SourceUri": uri})["Code"] == "ResourceNotFound"


def test_list_artifacts_filters_sorts_and_pages_ten_at_a_time(sm) -> None:
    kind = unique("Batch")
    start = datetime.now(UTC) - timedelta(seconds=1)
    arns = [artifact(sm, f"s3://lineage-data/batch/{n}", kind) for n in range(12)]
    artifact(sm, "s3://lineage-data/batch/other", unique("Other"))

    page = sm.list_artifacts(ArtifactType=kind)
    assert len(page["ArtifactSummaries"]) == 10  # the lineage lists' default page size
    rest = sm.list_artifacts(ArtifactType=kind, NextToken=page["NextToken"])
    newest_first = [a["ArtifactArn"] for a in page["ArtifactSummaries"] + rest["ArtifactSummaries"]]
    assert newest_first == arns[::-1]  # CreationTime, Descending by default
    oldest_first = sm.list_artifacts(ArtifactType=kind, SortOrder="Ascending", MaxResults=3)[
        "ArtifactSummaries"
    ]
    assert [a["ArtifactArn"] for a in oldest_first] == arns[:3]
    assert (
        len(sm.list_artifacts(ArtifactType=kind, CreatedAfter=start, MaxResults=50)["ArtifactSummaries"])
        == 12
    )
    assert sm.list_artifacts(ArtifactType=kind, CreatedBefore=start)["ArtifactSummaries"] == []
    by_uri = sm.list_artifacts(SourceUri="s3://lineage-data/batch/3", ArtifactType=kind)["ArtifactSummaries"]
    assert [a["ArtifactArn"] for a in by_uri] == [arns[3]]


def test_actions(sm) -> None:
    name = unique("Preprocess-claims")
    source = {"SourceUri": f"{ARN_PREFIX}:processing-job/{name.lower()}", "SourceType": "ProcessingJob"}
    arn = sm.create_action(
        ActionName=name,
        Source=source,
        ActionType="Processing",
        Status="InProgress",
        Properties={"task": "preprocess"},
    )["ActionArn"]
    assert arn == f"{ARN_PREFIX}:action/{name.lower()}"
    assert sm.describe_action(ActionName=name)["Status"] == "InProgress"
    sm.update_action(ActionName=name, Status="Completed", Properties={"rows": "5000"})
    action = sm.describe_action(ActionName=arn)
    assert action["Status"] == "Completed" and action["Properties"] == {"task": "preprocess", "rows": "5000"}
    listed = sm.list_actions(SourceUri=source["SourceUri"], ActionType="Processing")["ActionSummaries"]
    assert [(a["ActionName"], a["Status"]) for a in listed] == [(name, "Completed")]
    duplicate = error_of(sm.create_action, ActionName=name, Source=source, ActionType="Processing")
    assert "already exists" in duplicate["Message"]
    sm.delete_action(ActionName=name)
    assert error_of(sm.describe_action, ActionName=name)["Code"] == "ResourceNotFound"


def test_association_rules(sm) -> None:
    data = artifact(sm, f"s3://lineage-data/{unique('rules')}.csv")
    step_name = unique("step")
    step = sm.create_action(
        ActionName=step_name, Source={"SourceUri": "airflow://fraud/step"}, ActionType="Processing"
    )["ActionArn"]
    added = sm.add_association(SourceArn=data, DestinationArn=step, AssociationType="ContributedTo")
    assert (added["SourceArn"], added["DestinationArn"]) == (data, step)
    again = error_of(sm.add_association, SourceArn=data, DestinationArn=step)
    assert again["Code"] == "ValidationException" and "already exists" in again["Message"]

    missing = f"{ARN_PREFIX}:artifact/{uuid.uuid4().hex}"
    error = error_of(sm.add_association, SourceArn=missing, DestinationArn=step)
    assert error["Code"] == "ResourceNotFound" and missing in error["Message"]
    # As on SageMaker, only lineage entities are association ends; a model package enters the
    # graph through the artifact SageMaker records for it.
    package = f"{ARN_PREFIX}:model-package/fraud/1"
    error = error_of(sm.add_association, SourceArn=step, DestinationArn=package)
    assert error["Code"] == "ValidationException" and "destinationArn" in error["Message"]

    # An entity with associations stays until they are gone.
    refused = error_of(sm.delete_artifact, ArtifactArn=data)
    assert refused["Code"] == "ValidationException" and "association" in refused["Message"]
    sm.delete_association(SourceArn=data, DestinationArn=step)
    assert error_of(sm.delete_association, SourceArn=data, DestinationArn=step)["Code"] == "ResourceNotFound"
    sm.delete_artifact(ArtifactArn=data)
    sm.delete_action(ActionName=step_name)  # DeleteAction takes the name only, not the ARN


def test_list_associations_filters_sorts_and_pages(sm) -> None:
    run = sm.create_context(
        ContextName=unique("run"), Source={"SourceUri": "airflow://fraud/run"}, ContextType="PipelineRun"
    )["ContextArn"]
    name = unique("train")
    step = sm.create_action(
        ActionName=name, Source={"SourceUri": "airflow://fraud/train"}, ActionType="Training"
    )["ActionArn"]
    train = artifact(sm, "s3://lineage-data/train.csv", "DataSet", ArtifactName=unique("train-data"))
    image = artifact(sm, IMAGE, "Image")
    model = artifact(sm, "s3://lineage-data/model.tar.gz", "Model")
    sm.add_association(SourceArn=train, DestinationArn=step, AssociationType="ContributedTo")
    sm.add_association(SourceArn=image, DestinationArn=step, AssociationType="ContributedTo")
    sm.add_association(SourceArn=step, DestinationArn=model, AssociationType="Produced")
    sm.add_association(SourceArn=step, DestinationArn=run, AssociationType="AssociatedWith")

    into_step = sm.list_associations(DestinationArn=step)["AssociationSummaries"]
    assert [a["SourceArn"] for a in into_step] == [image, train]  # newest first
    data_edge = into_step[1]
    assert (data_edge["SourceType"], data_edge["DestinationType"]) == ("DataSet", "Training")
    assert data_edge["DestinationName"] == name and data_edge["SourceName"].startswith("train-data-")
    assert "SourceName" not in into_step[0]  # an artifact without a name
    assert [
        a["SourceType"]
        for a in sm.list_associations(DestinationArn=step, SortBy="SourceType", SortOrder="Ascending")[
            "AssociationSummaries"
        ]
    ] == ["DataSet", "Image"]
    assert [
        a["SourceArn"]
        for a in sm.list_associations(DestinationArn=step, SourceType="Image")["AssociationSummaries"]
    ] == [image]
    out_of_step = sm.list_associations(SourceArn=step, SortBy="DestinationType", SortOrder="Ascending")
    assert [(a["DestinationType"], a["AssociationType"]) for a in out_of_step["AssociationSummaries"]] == [
        ("Model", "Produced"),
        ("PipelineRun", "AssociatedWith"),
    ]
    produced = sm.list_associations(SourceArn=step, AssociationType="Produced")["AssociationSummaries"]
    assert [a["DestinationArn"] for a in produced] == [model]
    assert [
        a["DestinationArn"]
        for a in sm.list_associations(DestinationType="PipelineRun", SourceArn=step)["AssociationSummaries"]
    ] == [run]
    first = sm.list_associations(SourceArn=step, MaxResults=1)
    second = sm.list_associations(SourceArn=step, MaxResults=1, NextToken=first["NextToken"])
    assert {
        first["AssociationSummaries"][0]["DestinationArn"],
        second["AssociationSummaries"][0]["DestinationArn"],
    } == {model, run}
    assert "NextToken" not in second


def test_walk_from_endpoint_back_to_raw_data(sm) -> None:
    """raw data -> preprocessing action -> dataset -> model package -> endpoint, linked the way
    the pipeline does, then followed backwards with ListAssociations only."""
    raw = artifact(sm, "s3://lineage-data/raw/claims.csv", "DataSet")
    preprocess = sm.create_action(
        ActionName=unique("preprocess"), Source={"SourceUri": "airflow://fraud/prep"}, ActionType="Processing"
    )["ActionArn"]
    dataset = artifact(sm, f"s3://lineage-data/{unique('dataset')}/train.csv", "DataSet")
    group = unique("walk")
    sm.create_model_package_group(ModelPackageGroupName=group)
    package_arn = sm.create_model_package(
        ModelPackageGroupName=group,
        InferenceSpecification={
            "Containers": [{"Image": IMAGE, "ModelDataUrl": "s3://lineage-data/m.tar.gz"}]
        },
    )["ModelPackageArn"]
    # The model package's own artifact, as SageMaker records it at registration.
    package = sm.list_artifacts(SourceUri=package_arn)["ArtifactSummaries"][0]["ArtifactArn"]
    endpoint_arn = f"{ARN_PREFIX}:endpoint/{group}"
    endpoint = sm.create_context(
        ContextName=f"{group}-endpoint", Source={"SourceUri": endpoint_arn}, ContextType="Endpoint"
    )["ContextArn"]
    for source, destination, kind in (
        (raw, preprocess, "ContributedTo"),
        (preprocess, dataset, "Produced"),
        (dataset, package, "ContributedTo"),
        (package, endpoint, "ContributedTo"),
    ):
        sm.add_association(SourceArn=source, DestinationArn=destination, AssociationType=kind)

    # Breadth-first upstream from the endpoint, remembering through which entity each was reached.
    start = sm.list_contexts(SourceUri=endpoint_arn)["ContextSummaries"][0]["ContextArn"]
    reached_from, frontier = {start: None}, [start]
    while frontier:
        current = frontier.pop(0)
        for edge in sm.list_associations(DestinationArn=current)["AssociationSummaries"]:
            if edge["SourceArn"] not in reached_from:
                reached_from[edge["SourceArn"]] = current
                frontier.append(edge["SourceArn"])
    path = [raw]
    while (downstream := reached_from[path[-1]]) is not None:
        path.append(downstream)
    assert path == [raw, preprocess, dataset, package, endpoint]
    # SageMaker's own records of the registration are there too: image and model data.
    upstream_types = {
        sm.describe_artifact(ArtifactArn=arn)["ArtifactType"] for arn in reached_from if ":artifact/" in arn
    }
    assert upstream_types == {"DataSet", "Model", "Image"}
    assert (
        sm.describe_artifact(ArtifactArn=path[0])["Source"]["SourceUri"] == "s3://lineage-data/raw/claims.csv"
    )


def test_lineage_survives_restart_and_links_job_trial_components(tmp_path) -> None:
    job = "Fraud-Train-1"
    with LocalCloud(tmp_path, port=0) as first:
        sm = make_client(first, "sagemaker")
        data = artifact(sm, "s3://lineage-data/train.csv")
        # A finished training job, as the jobs area stores it (running one takes a while).
        first.store.put(
            "training-job",
            job,
            {
                "TrainingJobName": job,
                "TrainingJobArn": f"{ARN_PREFIX}:training-job/{job.lower()}",
                "TrainingJobStatus": "Completed",
                "CreationTime": time.time(),
            },
        )
        component = f"{ARN_PREFIX}:experiment-trial-component/{job.lower()}-aws-training-job"
        sm.add_association(SourceArn=data, DestinationArn=component, AssociationType="ContributedTo")
        absent = f"{ARN_PREFIX}:experiment-trial-component/other-aws-training-job"
        assert (
            error_of(sm.add_association, SourceArn=data, DestinationArn=absent)["Code"] == "ResourceNotFound"
        )
        sm.create_context(
            ContextName="kept", Source={"SourceUri": "airflow://kept"}, ContextType="PipelineRun"
        )
    with LocalCloud(tmp_path, port=0) as second:
        sm = make_client(second, "sagemaker")
        edge = sm.list_associations(SourceArn=data)["AssociationSummaries"][0]
        assert (edge["DestinationArn"], edge["DestinationType"], edge["SourceType"]) == (
            component,
            "SageMakerTrainingJob",
            "DataSet",
        )
        assert edge["DestinationName"] == f"{job.lower()}-aws-training-job"
        assert sm.describe_artifact(ArtifactArn=data)["Source"]["SourceUri"] == "s3://lineage-data/train.csv"
        assert sm.describe_context(ContextName="kept")["ContextType"] == "PipelineRun"
