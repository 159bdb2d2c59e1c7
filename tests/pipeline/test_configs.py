"""Every AWS request the DAGs build, rendered as Airflow renders it when the task runs (params,
run id, try number, upstream XComs), is valid for the real API: botocore's validator plus the
local cloud's stricter one (patterns, lengths, ranges, enums)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.operators.athena import AthenaOperator
from airflow.providers.amazon.aws.operators.s3 import S3CreateBucketOperator, S3CreateObjectOperator
from airflow.providers.amazon.aws.operators.sagemaker import (
    SageMakerEndpointConfigOperator,
    SageMakerEndpointOperator,
    SageMakerModelOperator,
    SageMakerProcessingOperator,
    SageMakerTrainingOperator,
    SageMakerTuningOperator,
)
from airflow.providers.amazon.aws.transfers.local_to_s3 import LocalFilesystemToS3Operator
from botocore import xform_name
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters
from fraud_operators.feature_store import (
    FeatureStoreOfflineStoreSensor,
    SageMakerCreateFeatureGroupOperator,
)
from fraud_operators.hosting import SageMakerEndpointSmokeTestOperator
from fraud_operators.lineage import SageMakerLineageOperator
from fraud_operators.registry import RegisterModelVersionOperator, SageMakerLatestApprovedModelPackageOperator
from fraud_operators.s3 import LocalFolderToS3Operator
from fraud_operators.training import SageMakerBestTrainingJobOperator

from include.localcloud.protocol import is_valid, service_model, validate
from include.pipeline import clarify, configs, sql
from include.pipeline.settings import Settings
from tests.airflow_env import DAGS_FOLDER

ARN = "arn:aws:sagemaker:us-east-1:123456789012"
Request = tuple[str, str, dict[str, Any]]  # service, operation, parameters


def training_job(name: str) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "TrainingJobArn": f"{ARN}:training-job/{name}",
        "HyperParameters": {"max_depth": "3", "eta": "0.2", "num_round": "100"},
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://sagemaker-fraud-detection/x/models/{name}/output/model.tar.gz"},
    }


def feature_group(dataset: str) -> dict[str, Any]:
    return {
        "FeatureGroupName": f"fraud-detection-{dataset}",
        "FeatureGroupArn": f"{ARN}:feature-group/fraud-detection-{dataset}",
        "OfflineStoreConfig": {
            "DataCatalogConfig": {
                "Catalog": "AwsDataCatalog",
                "Database": "sagemaker_featurestore",
                "TableName": f"fraud_detection_{dataset}_1764212726",
            }
        },
    }


# What upstream tasks return, as the operators return it (XCom), with plausible values.
UPSTREAM_XCOM: dict[str, Any] = {
    **{
        f"data_prep.preprocess_{d}": {"Processing": {"ProcessingJobArn": f"{ARN}:processing-job/prep-{d}"}}
        for d in ("claims", "customers")
    },
    **{f"feature_store.create_{d}_group": feature_group(d) for d in ("claims", "customers")},
    **{
        f"feature_store.ingest_{d}": {"Processing": {"ProcessingJobArn": f"{ARN}:processing-job/ingest-{d}"}}
        for d in ("claims", "customers")
    },
    "dataset.query": "0c9f5b3e-6f5e-4c1e-9a45-2f3f3c1f2b7a",
    "dataset.split": {"Processing": {"ProcessingJobArn": f"{ARN}:processing-job/split"}},
    "train.train_baseline": {"Training": training_job("fraud-detection-train-1a2b3c4d")},
    "train.tune": {"Tuning": {"HyperParameterTuningJobName": "fraud-detection-1a2b3c4d-1"}},
    "train.select_model": {
        "TrainingJobName": "fraud-detection-1a2b3c4d-1-003-0f1e2d3c",
        "ModelDataUrl": "s3://sagemaker-fraud-detection/x/models/tuning/job/output/model.tar.gz",
        "HyperParameters": {"eta": "0.05"},
        "Tuned": True,
    },
    "model.create_model": {"Model": {"ModelName": "fraud-detection-model-1a2b3c4d-1"}},
    "bias_after_training.analysis_config": clarify.analysis_config_json(
        clarify.analysis_config("post", model_name="fraud-detection-model-1a2b3c4d-1", instance_type="ml.m5.large")
    ),
    "registry.decide_approval": {"status": "Approved", "reason": "quality gates passed: test AUC 0.85"},
    "registry.register": f"{ARN}:model-package/fraud-detection/1",
    "deploy.create_endpoint_config": {"EndpointConfig": {"EndpointConfigName": "fraud-detection-endpoint-config-1"}},
    "deploy.deploy_endpoint": {"Endpoint": {"EndpointArn": f"{ARN}:endpoint/fraud-detection"}},
    # deploy_approved_model
    "latest_approved": {
        "ModelPackageArn": f"{ARN}:model-package/fraud-detection/1",
        "InferenceSpecification": {
            "Containers": [
                {
                    "Image": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
                    "ModelDataUrl": "s3://sagemaker-fraud-detection/x/models/tuning/job/output/model.tar.gz",
                }
            ]
        },
        "CustomerMetadataProperties": {"test_data_uri": "s3://sagemaker-fraud-detection/x/dataset/test/test.csv"},
    },
    "create_model": {"Model": {"ModelName": "fraud-detection-model-1a2b3c4d-1"}},
    "create_endpoint_config": {"EndpointConfig": {"EndpointConfigName": "fraud-detection-endpoint-config-1"}},
    "deploy_endpoint": {"Endpoint": {"EndpointArn": f"{ARN}:endpoint/fraud-detection"}},
}


class FakeTaskInstance:
    def __init__(self, try_number: int) -> None:
        self.try_number = try_number
        self.dag_id, self.run_id, self.task_id = "fraud_detection", "manual__2026-01-01T00:00:00+00:00", "task"

    def xcom_pull(self, task_ids: str, **kwargs: Any) -> Any:
        return copy.deepcopy(UPSTREAM_XCOM[task_ids])

    def xcom_push(self, key: str, value: Any) -> None:
        pass


@pytest.fixture(scope="module")
def dags() -> dict[str, Any]:
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    return bag.dags


# The default params, and the longest names a run can make (prefix of 20 characters, later tries).
CASES = {
    "defaults": {},
    "longest names": {"prefix": "abcdefghij-klmnopqrs", "endpoint_name": "e" * 63},
    "balanced facet": {"balance_facet": True},
}


def render(task: Any, case: str, dag: Any) -> dict[str, Any]:
    params = {name: dag.params[name] for name in dag.params} | CASES[case]
    ti = FakeTaskInstance(try_number=1 if case == "defaults" else 12)
    context = {
        "params": params,
        "run_id": "scheduled__2026-11-27T03:05:26.031737+00:00",
        "ti": ti,
        "task_instance": ti,
        "dag_run": SimpleNamespace(run_after=datetime(2026, 11, 27, 3, 5, 26, tzinfo=UTC), run_type="manual",
                                   start_date=datetime(2026, 11, 27, 3, 5, 27, tzinfo=UTC)),
    }
    task.render_template_fields(context)
    return context


class ValidatingClient:
    """A boto3 client stand-in: checks each request against the service's API model and
    answers from `answers` (method -> response, or an exception to raise)."""

    def __init__(self, service: str, answers: dict[str, Any]) -> None:
        self.service = service
        self.model = service_model(service)
        self.operations = {xform_name(name): name for name in self.model.operation_names}
        self.answers = answers
        self.requests: list[Request] = []

    def __getattr__(self, method: str) -> Callable[..., Any]:
        operation = self.operations[method]

        def call(**params: Any) -> Any:
            self.requests.append((self.service, operation, params))
            answer = self.answers.get(method, {})
            if isinstance(answer, Exception):
                raise answer
            return copy.deepcopy(answer)

        return call


def not_found(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "ValidationException", "Message": "not found"}}, operation)


def executed(task: Any, context: dict[str, Any], service: str, answers: dict[str, Any]) -> list[Request]:
    """Run the operator against a validating stand-in client; return its requests."""
    client = ValidatingClient(service, answers)
    task.hook.__dict__["conn"] = client
    task.execute(context)
    return client.requests


def s3_put(uri_or_key: str, bucket: str | None = None) -> Request:
    bucket, key = S3Hook.parse_s3_url(uri_or_key) if bucket is None else (bucket, uri_or_key)
    return ("s3", "PutObject", {"Bucket": bucket, "Key": key, "Body": b"..."})


def requests_of(task: Any, context: dict[str, Any]) -> list[Request]:
    """The AWS requests `task` makes when it runs (after rendering)."""
    if isinstance(task, SageMakerProcessingOperator | SageMakerTrainingOperator | SageMakerTuningOperator |
                  SageMakerModelOperator | SageMakerEndpointConfigOperator | SageMakerEndpointOperator):
        # The provider casts the integer fields it knows, then sends the config as it is.
        task._create_integer_fields()
        task.parse_config_integers()
        operation = {
            SageMakerProcessingOperator: "CreateProcessingJob",
            SageMakerTrainingOperator: "CreateTrainingJob",
            SageMakerTuningOperator: "CreateHyperParameterTuningJob",
            SageMakerModelOperator: "CreateModel",
            SageMakerEndpointConfigOperator: "CreateEndpointConfig",
            SageMakerEndpointOperator: "CreateEndpoint",
        }[next(kind for kind in type(task).__mro__ if kind.__module__.startswith("airflow.providers."))]
        found = [("sagemaker", operation, task.config)]
        if isinstance(task, SageMakerEndpointOperator):  # an existing endpoint is updated instead
            update = {k: v for k, v in task.config.items() if k != "Tags"}
            found.append(("sagemaker", "UpdateEndpoint", update))
        return found
    if isinstance(task, AthenaOperator):
        return [("athena", "StartQueryExecution", {
            "QueryString": task.query,
            "QueryExecutionContext": {"Database": task.database, "Catalog": task.catalog},
            "ResultConfiguration": {"OutputLocation": task.output_location},
            "WorkGroup": task.workgroup,
        })]
    if isinstance(task, FeatureStoreOfflineStoreSensor):
        return [("athena", "StartQueryExecution", {
            "QueryString": sql.offline_record_count_query(task.database, task.table, 1764212726.031),
            "QueryExecutionContext": {"Database": task.database},
            "ResultConfiguration": {"OutputLocation": task.output_location},
            "WorkGroup": task.workgroup,
        })]
    if isinstance(task, SageMakerCreateFeatureGroupOperator):
        described = {**task.config, "FeatureGroupStatus": "Created"}
        return executed(task, context, "sagemaker", {"describe_feature_group": described})
    if isinstance(task, SageMakerLineageOperator):
        task._etag = lambda uri: "d41d8cd98f00b204e9800998ecf8427e" if not uri.endswith("/") else None
        return executed(task, context, "sagemaker", {
            "describe_context": not_found("DescribeContext"),
            "describe_action": not_found("DescribeAction"),
            "create_context": {"ContextArn": f"{ARN}:context/run"},
            "create_action": {"ActionArn": f"{ARN}:action/step"},
            "create_artifact": {"ArtifactArn": f"{ARN}:artifact/0123456789abcdef"},
            "list_artifacts": {"ArtifactSummaries": []},
            "list_associations": {"AssociationSummaries": []},
        })
    if isinstance(task, RegisterModelVersionOperator):
        return executed(task, context, "sagemaker", {
            "create_model_package_group": {"ModelPackageGroupArn": f"{ARN}:model-package-group/x"},
            "create_model_package": {"ModelPackageArn": f"{ARN}:model-package/x/1"},
        })
    if isinstance(task, SageMakerBestTrainingJobOperator):
        return executed(task, context, "sagemaker", {
            "describe_hyper_parameter_tuning_job": {"BestTrainingJob": {"TrainingJobName": "best"}},
            "describe_training_job": training_job("best"),
        })
    if isinstance(task, SageMakerLatestApprovedModelPackageOperator):
        return executed(task, context, "sagemaker", {
            "list_model_packages": {"ModelPackageSummaryList": [{"ModelPackageArn": f"{ARN}:model-package/x/1"}]},
        })
    if isinstance(task, SageMakerEndpointSmokeTestOperator):
        return [("sagemaker-runtime", "InvokeEndpoint", {
            "EndpointName": task.endpoint_name, "ContentType": "text/csv", "Accept": "text/csv", "Body": b"1,2",
        }), s3_put(task.data_uri)]
    if isinstance(task, S3CreateBucketOperator):
        return [("s3", "CreateBucket", {"Bucket": task.bucket_name})]
    if isinstance(task, LocalFilesystemToS3Operator):
        return [s3_put(task.dest_key)]
    if isinstance(task, S3CreateObjectOperator):
        return [s3_put(task.s3_key)]
    if isinstance(task, LocalFolderToS3Operator):
        return [s3_put(f"{task.dest_uri}preprocess.py")]
    raise AssertionError(f"{task.task_id}: {type(task).__name__} is not covered by this test")


def check(request: Request) -> None:
    service, operation, params = request
    shape = service_model(service).operation_model(operation).input_shape
    validate_parameters(params, shape)  # raises ParamValidationError
    assert validate(shape, params) == [], f"{operation}: {validate(shape, params)}"
    assert is_valid(shape)(params), operation
    text = json.dumps(params, default=str)
    assert "{{" not in text and "{%" not in text, f"{operation} has unrendered templates: {text[:300]}"


PYTHON_TASKS = {"_PythonDecoratedOperator", "_ShortCircuitDecoratedOperator"}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dag_id", ["fraud_detection", "deploy_approved_model"])
def test_every_request_is_valid_for_the_api(dags: dict[str, Any], dag_id: str, case: str) -> None:
    dag = copy.deepcopy(dags[dag_id])
    operations = set()
    for task in dag.tasks:
        if type(task).__name__ in PYTHON_TASKS:
            continue
        context = render(task, case, dag)
        requests = requests_of(task, context)
        assert requests, task.task_id
        for request in requests:
            check(request)
            operations.add(request[1])
    if dag_id == "fraud_detection":
        assert {
            "CreateProcessingJob", "CreateTrainingJob", "CreateHyperParameterTuningJob", "CreateModel",
            "CreateModelPackage", "CreateEndpointConfig", "CreateEndpoint", "CreateFeatureGroup",
            "StartQueryExecution", "CreateArtifact", "CreateAction", "CreateContext", "AddAssociation",
            "InvokeEndpoint",
        } <= operations


def test_jobs_use_the_sdk_images_of_the_region(dags: dict[str, Any]) -> None:
    dag = copy.deepcopy(dags["fraud_detection"])
    images = {}
    for task in dag.tasks:
        if isinstance(task, SageMakerProcessingOperator):
            render(task, "defaults", dag)
            images[task.task_id] = task.config["AppSpecification"]["ImageUri"]
    assert images["data_prep.preprocess_claims"] == (
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
    )
    assert images["evaluate.evaluate"] == "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
    assert images["bias_before_training.clarify_job"] == (
        "205585389593.dkr.ecr.us-east-1.amazonaws.com/sagemaker-clarify-processing:1.0"
    )


@pytest.mark.parametrize(("case", "balance_facet"), [("defaults", "False"), ("balanced facet", "True")])
def test_the_split_job_passes_the_dataset_params_to_its_script(
    dags: dict[str, Any], case: str, balance_facet: str
) -> None:
    dag = copy.deepcopy(dags["fraud_detection"])
    task = dag.get_task("dataset.split")
    render(task, case, dag)
    arguments = task.config["AppSpecification"]["ContainerArguments"]
    given = dict(zip(arguments[::2], arguments[1::2], strict=True))
    # create_dataset.py reads Python's True / False (tests/jobs/test_balance.py).
    assert {name: given[name] for name in ("--test-fraction", "--validation-fraction", "--seed", "--balance-facet")} \
        == {"--test-fraction": "0.2", "--validation-fraction": "0.2", "--seed": "0", "--balance-facet": balance_facet}


def test_the_tuning_job_is_seeded_by_the_tuning_seed_param(dags: dict[str, Any]) -> None:
    dag = copy.deepcopy(dags["fraud_detection"])
    task = dag.get_task("train.tune")
    dag.params["tuning_seed"] = 1234
    [(_, _, request)] = requests_of(task, render(task, "defaults", dag))
    assert request["HyperParameterTuningJobConfig"]["RandomSeed"] == 1234  # an integer, as the API wants


def test_register_attaches_reports_and_the_decided_status(dags: dict[str, Any]) -> None:
    dag = copy.deepcopy(dags["fraud_detection"])
    task = dag.get_task("registry.register")
    context = render(task, "defaults", dag)
    *_, (_, _, package) = requests_of(task, context)  # after its look for an earlier try's version
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["ModelPackageGroupName"] == "fraud-detection"
    metrics = package["ModelMetrics"]
    assert metrics["ModelQuality"]["Statistics"]["S3Uri"].endswith("/evaluation/evaluation.json")
    assert metrics["Bias"]["PreTrainingReport"]["S3Uri"].endswith("/clarify/pre/output/analysis.json")
    assert metrics["Bias"]["PostTrainingReport"]["S3Uri"].endswith("/clarify/post/output/analysis.json")
    [container] = package["InferenceSpecification"]["Containers"]
    assert container["ModelDataUrl"] == UPSTREAM_XCOM["train.select_model"]["ModelDataUrl"]


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("FRAUD_BUCKET", "my-bucket")
    monkeypatch.setenv("FRAUD_EXECUTION_ROLE_ARN", "arn:aws:iam::111122223333:role/fraud")
    monkeypatch.setenv("FRAUD_UPLOAD_RAW_DATA", "false")
    monkeypatch.setenv("FRAUD_TASK_RETRIES", "4")
    monkeypatch.setenv("FRAUD_CHECK_INTERVAL", "0.25")  # make run's: fractions of a second
    settings = Settings.from_env()
    assert (settings.region, settings.bucket, settings.upload_raw_data) == ("eu-west-1", "my-bucket", False)
    assert settings.check_interval == 0.25
    assert settings.retry_args["retries"] == 4
    image = settings.image_uri("xgboost")
    assert image == "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:1.7-1"
    request = configs.model(settings, name="m", model_data_url="s3://my-bucket/model.tar.gz", image_uri=image)
    assert request["ExecutionRoleArn"] == "arn:aws:iam::111122223333:role/fraud"
    check(("sagemaker", "CreateModel", request))


@pytest.mark.parametrize(("name", "value"), [("FRAUD_CHECK_INTERVAL", "soon"), ("FRAUD_CHECK_INTERVAL", "0"),
                                             ("FRAUD_CHECK_INTERVAL", "inf"), ("FRAUD_UPLOAD_RAW_DATA", "maybe")])
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        Settings.from_env()
