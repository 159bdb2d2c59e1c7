"""The compiled validity check agrees with the message-producing validator on every request shape
and value we can think of: valid requests pass both, and every mutation one rejects, so does the other."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from include.localcloud.protocol import is_valid, service_model, validate

RECORD = [{"FeatureName": "policy_id", "ValueAsString": "42"}, {"FeatureName": "event_time", "ValueAsString": "1.5"}]
REQUESTS = [
    ("sagemaker-featurestore-runtime", "PutRecord", {
        "FeatureGroupName": "claims", "Record": RECORD, "TargetStores": ["OnlineStore"],
        "TtlDuration": {"Unit": "Days", "Value": 3},
    }),
    ("sagemaker", "CreateTrainingJob", {
        "TrainingJobName": "fraud-train-1",
        "AlgorithmSpecification": {"TrainingImage": "683313688378.dkr.ecr.us-east-1.amazonaws.com/x:1",
                                   "TrainingInputMode": "File"},
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "HyperParameters": {"eta": "0.1", "max_depth": "3"},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": "s3://bucket/train/"}}}],
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/out/"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Tags": [{"Key": "project", "Value": "fraud"}],
    }),
    ("athena", "StartQueryExecution", {
        "QueryString": "SELECT 1", "QueryExecutionContext": {"Database": "sagemaker_featurestore"},
        "ResultConfiguration": {"OutputLocation": "s3://bucket/athena/"},
    }),
]
BAD_VALUES = ["", "x" * 5000, "not a valid/name!", -1, 0, 10**13, 1.5, True, [], [{}], {}, {"k": "v"}]


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON value, containers included."""
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from leaves(item, (*path, key))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    changed = copy.deepcopy(value)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return changed


@pytest.mark.parametrize(("service", "operation", "params"), REQUESTS, ids=[r[1] for r in REQUESTS])
def test_valid_requests_pass_both(service: str, operation: str, params: dict[str, Any]) -> None:
    shape = service_model(service).operation_model(operation).input_shape
    assert validate(shape, params) == []
    assert is_valid(shape)(params)


@pytest.mark.parametrize(("service", "operation", "params"), REQUESTS, ids=[r[1] for r in REQUESTS])
def test_every_mutation_is_judged_alike(service: str, operation: str, params: dict[str, Any]) -> None:
    shape = service_model(service).operation_model(operation).input_shape
    rejected = 0
    for path in leaves(params):
        if not path:
            continue
        for bad in BAD_VALUES:
            mutated = replaced(params, path, bad)
            errors = validate(shape, mutated)
            for _ in range(2):  # and again, with the values found valid the first time remembered
                assert is_valid(shape)(mutated) == (errors == []), f"{operation} {path} = {bad!r}: {errors}"
            rejected += bool(errors)
        dropped = replaced(params, path, None)
        assert is_valid(shape)(dropped) == (validate(shape, dropped) == []), f"{operation} without {path}"
    assert rejected > 20  # the mutations do reach the constraints
