"""Builders of the SageMaker request configs of the fraud pipeline, each valid for real SageMaker.

Every builder takes plain strings: the DAG passes Jinja templates (run-specific names, params)
that Airflow renders when the task runs; tests pass concrete values. Integer fields may arrive as
rendered strings: the provider's operators cast the ones they know (instance counts, budgets).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from typing import Any

import botocore.model
import botocore.session

from include.jobs import schema
from include.pipeline.settings import Settings
from include.pipeline.templating import sagemaker_image

PROCESSING_ROOT = "/opt/ml/processing"
CODE_DIR = f"{PROCESSING_ROOT}/input/code"
OUTPUT_DIR = f"{PROCESSING_ROOT}/output"
CSV = "text/csv"
JSON = "application/json"
VARIANT_NAME = "AllTraffic"
# The built-in XGBoost algorithm's objective metric for tuning (it emits validation:auc).
OBJECTIVE_METRIC = "validation:auc"
STATIC_HYPERPARAMETERS = {"objective": "binary:logistic", "eval_metric": "auc"}
PROCESSING_VOLUME_GB = 30
TRAINING_VOLUME_GB = 10
MAX_RUNTIME_SECONDS = 3600
RUN_TOKEN_LENGTH = 8
PREFIX_MAX_LENGTH = 20


def short_hash(text: str) -> str:
    """A run's token in resource names: 8 hex digits of its run id."""
    return hashlib.sha1(text.encode()).hexdigest()[:RUN_TOKEN_LENGTH]


def resource_name(prefix: str, step: str, token: str, attempt: str | None = None) -> str:
    """<prefix>-<step>-<run token>[-<attempt>]: unique per run (and per try when the API cannot
    reuse a name), within SageMaker's 63 characters for prefixes of PREFIX_MAX_LENGTH."""
    parts = [prefix, step, token] + ([attempt] if attempt else [])
    return "-".join(parts)


def tuning_job_name(prefix: str, token: str, attempt: str) -> str:
    """Tuning job names have 32 characters at most: <prefix>-<run token>-<attempt>."""
    return f"{prefix}-{token}-{attempt}"


def feature_group_name(prefix: str, dataset: str) -> str:
    return f"{prefix}-{dataset}"


@cache
def _sagemaker_model() -> botocore.model.ServiceModel:
    return botocore.session.get_session().get_service_model("sagemaker")


def instance_types(shape_name: str) -> tuple[str, ...]:
    """The instance types SageMaker accepts where its API model uses `shape_name` (e.g.
    ProcessingInstanceType, TrainingInstanceType, ProductionVariantInstanceType)."""
    return tuple(_sagemaker_model().shape_for(shape_name).enum)


def tags(settings: Settings) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in settings.tags.items()]


@dataclass(frozen=True)
class RunLayout:
    """Where one run keeps its files: s3://<bucket>/<prefix>/runs/<run token>/..."""

    root: str

    @classmethod
    def of(cls, settings: Settings, prefix: str, token: str) -> RunLayout:
        return cls(f"s3://{settings.bucket}/{prefix}/runs/{token}")

    @property
    def code(self) -> str:
        return f"{self.root}/code/"

    def processed(self, dataset: str) -> str:
        return f"{self.root}/processed/{dataset}/"

    def ingestion(self, dataset: str) -> str:
        """Folder of the ingest job's summaries of "claims" or "customers", one <host>.json each."""
        return f"{self.root}/ingestion/{dataset}/"

    @property
    def athena_results(self) -> str:
        return f"{self.root}/athena/"

    def split(self, name: str) -> str:
        """Folder of the "train", "validation" or "test" split (one CSV, label first, no header)."""
        return f"{self.root}/dataset/{name}/"

    def split_file(self, name: str) -> str:
        return f"{self.split(name)}{name}.csv"

    @property
    def dataset_stats(self) -> str:
        return f"{self.root}/dataset/stats/"

    def models(self, kind: str) -> str:
        return f"{self.root}/models/{kind}/"

    @property
    def evaluation(self) -> str:
        return f"{self.root}/evaluation/"

    @property
    def evaluation_report(self) -> str:
        return f"{self.evaluation}evaluation.json"

    def clarify_config(self, stage: str) -> str:
        return f"{self.root}/clarify/{stage}/config/analysis_config.json"

    def clarify_output(self, stage: str) -> str:
        return f"{self.root}/clarify/{stage}/output/"

    def clarify_report(self, stage: str) -> str:
        return f"{self.clarify_output(stage)}analysis.json"


def offline_store_uri(settings: Settings, prefix: str) -> str:
    """The feature groups' offline store: per prefix, shared by runs."""
    return f"s3://{settings.bucket}/{prefix}/feature-store"


# -- processing ---------------------------------------------------------------------------------
def processing_input(
    name: str, s3_uri: str, local_path: str, distribution: str = "FullyReplicated"
) -> dict[str, Any]:
    """An S3 input; with distribution ShardedByS3Key, each instance gets its share of the objects."""
    return {
        "InputName": name,
        "S3Input": {
            "S3Uri": s3_uri,
            "LocalPath": local_path,
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3DataDistributionType": distribution,
        },
    }


def processing_output(name: str, s3_uri: str, local_path: str) -> dict[str, Any]:
    return {"OutputName": name, "S3Output": {"S3Uri": s3_uri, "LocalPath": local_path, "S3UploadMode": "EndOfJob"}}


def processing_job(
    settings: Settings,
    *,
    name: str,
    app: dict[str, Any],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    instance_type: str,
    instance_count: str | int,
) -> dict[str, Any]:
    """A CreateProcessingJob request; `app` is its AppSpecification."""
    return {
        "ProcessingJobName": name,
        "RoleArn": settings.role_arn,
        "AppSpecification": app,
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": {"Outputs": outputs},
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceType": instance_type,
                "InstanceCount": instance_count,
                "VolumeSizeInGB": PROCESSING_VOLUME_GB,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": MAX_RUNTIME_SECONDS},
        "Tags": tags(settings),
    }


def script_job(
    settings: Settings,
    layout: RunLayout,
    *,
    name: str,
    container: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    instance_type: str,
    instance_count: str | int,
    script: str,
    arguments: list[str],
) -> dict[str, Any]:
    """A processing job that runs include/jobs/<script> in SageMaker's `container` image (e.g.
    "sklearn"), from the run's code input: the whole job folder, so scripts can import their siblings."""
    app = {
        "ImageUri": sagemaker_image(container),
        "ContainerEntrypoint": ["python3", f"{CODE_DIR}/{script}"],
        "ContainerArguments": arguments,
    }
    return processing_job(
        settings,
        name=name,
        app=app,
        inputs=[processing_input("code", layout.code, CODE_DIR), *inputs],
        outputs=outputs,
        instance_type=instance_type,
        instance_count=instance_count,
    )


def preprocess_job(
    settings: Settings,
    layout: RunLayout,
    *,
    name: str,
    dataset: str,
    raw_uri: str,
    event_time: str,
    instance_type: str,
    instance_count: str | int,
    parts: str | int,
    customers_uri: str | None = None,
) -> dict[str, Any]:
    """The Data Wrangler transforms of one raw CSV, in the scikit-learn container, written as
    `parts` files (the ingest job's instance count: its ShardedByS3Key input then gives each
    instance one). With `customers_uri` (the raw customers CSV, for the claims), the job also
    checks that every claim's policy has its customer, before anything reaches the feature store."""
    raw_dir = f"{PROCESSING_ROOT}/input/raw"
    inputs = [processing_input("raw", raw_uri, raw_dir)]
    arguments = ["--dataset", dataset, "--input-dir", raw_dir, "--output-dir", OUTPUT_DIR, "--event-time", event_time,
                 "--parts", str(parts)]
    if customers_uri is not None:
        customers_dir = f"{PROCESSING_ROOT}/input/customers"
        inputs.append(processing_input("customers", customers_uri, customers_dir))
        arguments += ["--customers-dir", customers_dir]
    return script_job(
        settings,
        layout,
        name=name,
        container="sklearn",
        inputs=inputs,
        outputs=[processing_output("processed", layout.processed(dataset), OUTPUT_DIR)],
        instance_type=instance_type,
        instance_count=instance_count,
        script="preprocess.py",
        arguments=arguments,
    )


INGEST_MODES = ("online_and_offline", "offline_only")


def ingest_job(
    settings: Settings,
    layout: RunLayout,
    *,
    name: str,
    dataset: str,
    feature_group_name: str,
    mode: str,
    instance_type: str,
    instance_count: str | int,
) -> dict[str, Any]:
    """Feature Store ingestion of the processed records of one dataset, in the scikit-learn
    container: each instance ingests its shard of the files (ShardedByS3Key) and writes a
    summary (records put, earliest event time) to layout.ingestion(dataset)."""
    records_dir = f"{PROCESSING_ROOT}/input/records"
    return script_job(
        settings,
        layout,
        name=name,
        container="sklearn",
        inputs=[processing_input("records", layout.processed(dataset), records_dir, distribution="ShardedByS3Key")],
        outputs=[processing_output("summary", layout.ingestion(dataset), OUTPUT_DIR)],
        instance_type=instance_type,
        instance_count=instance_count,
        script="ingest.py",
        arguments=[
            "--feature-group-name", feature_group_name,
            "--mode", mode,
            "--input-dir", records_dir,
            "--output-dir", OUTPUT_DIR,
            "--workers", str(settings.ingest_workers),
        ],
    )


SPLITS = ("train", "validation", "test")


def split_job(
    settings: Settings,
    layout: RunLayout,
    *,
    name: str,
    query_result_uri: str,
    test_fraction: str,
    validation_fraction: str,
    seed: str,
    balance_facet: str,
    instance_type: str,
    instance_count: str | int,
) -> dict[str, Any]:
    """Split the Athena result into train/validation/test (stratified, seeded; label first), the
    training set balanced on the facet by SMOTE when `balance_facet` renders true."""
    dataset_dir = f"{PROCESSING_ROOT}/input/dataset"
    outputs = [processing_output(split, layout.split(split), f"{OUTPUT_DIR}/{split}") for split in SPLITS]
    outputs.append(processing_output("stats", layout.dataset_stats, f"{OUTPUT_DIR}/stats"))
    return script_job(
        settings,
        layout,
        name=name,
        container="sklearn",
        inputs=[processing_input("dataset", query_result_uri, dataset_dir)],
        outputs=outputs,
        instance_type=instance_type,
        instance_count=instance_count,
        script="create_dataset.py",
        arguments=[
            "--input-dir", dataset_dir,
            "--output-dir", OUTPUT_DIR,
            "--test-fraction", test_fraction,
            "--validation-fraction", validation_fraction,
            "--seed", seed,
            "--balance-facet", balance_facet,
        ],
    )


def evaluation_job(
    settings: Settings,
    layout: RunLayout,
    *,
    name: str,
    model_uri: str,
    baseline_model_uri: str,
    threshold: str,
    instance_type: str,
    instance_count: str | int,
) -> dict[str, Any]:
    """Score the chosen and the baseline model on the test set, in the XGBoost container."""
    model_dir = f"{PROCESSING_ROOT}/input/model"
    baseline_dir = f"{PROCESSING_ROOT}/input/baseline"
    test_dir = f"{PROCESSING_ROOT}/input/test"
    return script_job(
        settings,
        layout,
        name=name,
        container="xgboost",
        inputs=[
            processing_input("model", model_uri, model_dir),
            processing_input("baseline", baseline_model_uri, baseline_dir),
            processing_input("test", layout.split("test"), test_dir),
        ],
        outputs=[processing_output("evaluation", layout.evaluation, OUTPUT_DIR)],
        instance_type=instance_type,
        instance_count=instance_count,
        script="evaluate.py",
        arguments=[
            "--model-dir", model_dir,
            "--baseline-model-dir", baseline_dir,
            "--test-dir", test_dir,
            "--output-dir", OUTPUT_DIR,
            "--threshold", threshold,
        ],
    )


def clarify_job(
    settings: Settings,
    layout: RunLayout,
    *,
    name: str,
    stage: str,
    dataset_uri: str,
    instance_type: str,
    instance_count: str | int,
) -> dict[str, Any]:
    """A SageMaker Clarify bias job: its container reads the analysis config and the dataset
    from their conventional paths and writes analysis.json to its output."""
    return processing_job(
        settings,
        name=name,
        app={"ImageUri": sagemaker_image("clarify")},
        inputs=[
            processing_input("analysis_config", layout.clarify_config(stage), f"{PROCESSING_ROOT}/input/config"),
            processing_input("dataset", dataset_uri, f"{PROCESSING_ROOT}/input/data"),
        ],
        outputs=[processing_output("analysis_result", layout.clarify_output(stage), OUTPUT_DIR)],
        instance_type=instance_type,
        instance_count=instance_count,
    )


# -- training and tuning ------------------------------------------------------------------------
@dataclass(frozen=True)
class TunedHyperparameter:
    """A hyperparameter the tuning job searches, with its default range and allowed bounds."""

    name: str
    kind: str  # "Integer" or "Continuous"
    scaling: str
    low: float
    high: float
    lowest: float
    highest: float
    description: str


# Default ranges: on the reference split, random samples of these reach test ROC-AUC >= 0.83 two
# times in three (deeper trees and faster learning over-fit 3,200 rows with 105 frauds).
TUNED_HYPERPARAMETERS: tuple[TunedHyperparameter, ...] = (
    TunedHyperparameter("eta", "Continuous", "Logarithmic", 0.01, 0.1, 0.001, 1.0, "learning rate"),
    TunedHyperparameter("max_depth", "Integer", "Linear", 1, 3, 1, 10, "depth of each tree"),
    TunedHyperparameter(
        "min_child_weight", "Continuous", "Linear", 1.0, 10.0, 0.0, 100.0, "smallest hessian sum in a leaf"
    ),
    TunedHyperparameter("subsample", "Continuous", "Linear", 0.6, 1.0, 0.1, 1.0, "rows sampled per tree"),
    TunedHyperparameter(
        "colsample_bytree", "Continuous", "Linear", 0.6, 1.0, 0.1, 1.0, "columns sampled per tree"
    ),
    TunedHyperparameter("gamma", "Continuous", "Linear", 0.0, 5.0, 0.0, 100.0, "smallest loss reduction to split"),
    TunedHyperparameter("num_round", "Integer", "Linear", 100, 300, 10, 2000, "boosting rounds"),
)


def training_channel(name: str, s3_uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": s3_uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "ContentType": CSV,
        "CompressionType": "None",
    }


def _training_definition(
    settings: Settings, layout: RunLayout, output_kind: str, instance_type: str, instance_count: str | int
) -> dict[str, Any]:
    """What training jobs and tuning jobs' training definitions share."""
    return {
        "AlgorithmSpecification": {"TrainingImage": sagemaker_image("xgboost"), "TrainingInputMode": "File"},
        "RoleArn": settings.role_arn,
        "InputDataConfig": [
            training_channel("train", layout.split("train")),
            training_channel("validation", layout.split("validation")),
        ],
        "OutputDataConfig": {"S3OutputPath": layout.models(output_kind)},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": instance_count,
            "VolumeSizeInGB": TRAINING_VOLUME_GB,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": MAX_RUNTIME_SECONDS},
    }


def training_job(
    settings: Settings,
    layout: RunLayout,
    *,
    name: str,
    hyperparameters: dict[str, str],
    instance_type: str,
    instance_count: str | int,
) -> dict[str, Any]:
    """The built-in XGBoost algorithm on the train split, scored on the validation split."""
    return {
        "TrainingJobName": name,
        **_training_definition(settings, layout, "baseline", instance_type, instance_count),
        "HyperParameters": {**STATIC_HYPERPARAMETERS, **hyperparameters},
        "Tags": tags(settings),
    }


def tuning_job(
    settings: Settings,
    layout: RunLayout,
    *,
    name: str,
    ranges: dict[str, tuple[str, str]],
    max_jobs: str | int,
    parallel_jobs: str | int,
    random_seed: str | int,
    instance_type: str,
    instance_count: str | int,
) -> dict[str, Any]:
    """A Bayesian search maximizing validation:auc; `ranges` maps each of TUNED_HYPERPARAMETERS
    to its (min, max). The same `random_seed` on the same data gives the same trials."""
    unknown = set(ranges) - {h.name for h in TUNED_HYPERPARAMETERS}
    if unknown:
        raise ValueError(f"ranges: unknown hyperparameters {sorted(unknown)}")
    parameter_ranges: dict[str, list[dict[str, str]]] = {
        "IntegerParameterRanges": [],
        "ContinuousParameterRanges": [],
    }
    for hyperparameter in TUNED_HYPERPARAMETERS:
        low, high = ranges[hyperparameter.name]
        parameter_ranges[f"{hyperparameter.kind}ParameterRanges"].append(
            {"Name": hyperparameter.name, "MinValue": low, "MaxValue": high, "ScalingType": hyperparameter.scaling}
        )
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": OBJECTIVE_METRIC},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": parallel_jobs},
            "ParameterRanges": parameter_ranges,
            "TrainingJobEarlyStoppingType": "Off",
            "RandomSeed": random_seed,
        },
        "TrainingJobDefinition": {
            **_training_definition(settings, layout, "tuning", instance_type, instance_count),
            "StaticHyperParameters": dict(STATIC_HYPERPARAMETERS),
        },
        "Tags": tags(settings),
    }


# -- model, registry, hosting -------------------------------------------------------------------
def model(settings: Settings, *, name: str, model_data_url: str, image_uri: str | None = None) -> dict[str, Any]:
    """A model served by the built-in XGBoost container (text/csv in, probabilities out), or by
    `image_uri` (e.g. the one a model package names)."""
    return {
        "ModelName": name,
        "PrimaryContainer": {"Image": image_uri or sagemaker_image("xgboost"), "ModelDataUrl": model_data_url},
        "ExecutionRoleArn": settings.role_arn,
        "Tags": tags(settings),
    }


def model_package_extras(
    settings: Settings,
    layout: RunLayout,
    *,
    model_data_url: str,
    approval_status: str,
    endpoint_instance_type: str,
    properties: dict[str, str],
) -> dict[str, Any]:
    """CreateModelPackage members beyond the provider operator's defaults: the approval status,
    the instance types it is meant for, the quality and bias reports as model metrics, and
    `properties` (CustomerMetadataProperties: e.g. the run and where its test data is, for a
    smoke test by whoever deploys the package later)."""
    return {
        "ModelApprovalStatus": approval_status,
        "InferenceSpecification": {
            "Containers": [{"Image": sagemaker_image("xgboost"), "ModelDataUrl": model_data_url}],
            "SupportedContentTypes": [CSV],
            "SupportedResponseMIMETypes": [CSV],
            "SupportedRealtimeInferenceInstanceTypes": [endpoint_instance_type],
        },
        "ModelMetrics": {
            "ModelQuality": {"Statistics": {"ContentType": JSON, "S3Uri": layout.evaluation_report}},
            "Bias": {
                "PreTrainingReport": {"ContentType": JSON, "S3Uri": layout.clarify_report("pre")},
                "PostTrainingReport": {"ContentType": JSON, "S3Uri": layout.clarify_report("post")},
            },
        },
        "CustomerMetadataProperties": properties,
        "Tags": tags(settings),
    }


def endpoint_config(
    settings: Settings, *, name: str, model_name: str, instance_type: str, instance_count: str | int
) -> dict[str, Any]:
    return {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {
                "VariantName": VARIANT_NAME,
                "ModelName": model_name,
                "InitialInstanceCount": instance_count,
                "InstanceType": instance_type,
                "InitialVariantWeight": 1.0,
            }
        ],
        "Tags": tags(settings),
    }


def endpoint(settings: Settings, *, name: str, config_name: str) -> dict[str, Any]:
    return {"EndpointName": name, "EndpointConfigName": config_name, "Tags": tags(settings)}


# -- Feature Store ------------------------------------------------------------------------------
def feature_group(settings: Settings, *, name: str, dataset: str, prefix: str) -> dict[str, Any]:
    """A feature group of the processed "claims" or "customers" records, online and offline
    (Parquet in S3 with a Glue table SageMaker creates)."""
    return {
        "FeatureGroupName": name,
        "RecordIdentifierFeatureName": schema.RECORD_IDENTIFIER,
        "EventTimeFeatureName": schema.EVENT_TIME,
        "FeatureDefinitions": schema.feature_definitions(dataset),
        "OnlineStoreConfig": {"EnableOnlineStore": True},
        "OfflineStoreConfig": {
            "S3StorageConfig": {"S3Uri": offline_store_uri(settings, prefix)},
            "DisableGlueTableCreation": False,
        },
        "RoleArn": settings.role_arn,
        "Description": f"Processed {dataset} records of the fraud-detection pipeline",
        "Tags": tags(settings),
    }
