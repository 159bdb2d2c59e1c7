"""deploy_approved_model: deploy the latest Approved model package of the fraud model group.

For a package approved by hand in the model registry after its fraud_detection run registered
it as PendingManualApproval. Creates a model from the package's container, an endpoint config,
and creates or updates the endpoint, then smoke-tests it with the package's test data.
"""

from __future__ import annotations

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerModelOperator
from airflow.sdk import DAG, Param
from fraud_operators.deployment import deploy_to_endpoint
from fraud_operators.registry import SageMakerLatestApprovedModelPackageOperator
from fraud_operators.retries import DeterministicFailuresFailAtOnce

from include.pipeline import configs
from include.pipeline.configs import resource_name
from include.pipeline.settings import Settings
from include.pipeline.templating import ATTEMPT, PREFIX, RUN_TOKEN, pulled

SETTINGS = Settings.from_env()
PACKAGE_CONTAINER = ("InferenceSpecification", "Containers", 0)

with DAG(
    dag_id="deploy_approved_model",
    description="Deploy the latest Approved fraud model package to the real-time endpoint",
    doc_md=__doc__,
    schedule=None,
    catchup=False,
    max_active_runs=1,
    params={
        "prefix": Param(
            SETTINGS.prefix, type="string", pattern=rf"^[a-z0-9](-*[a-z0-9]){{0,{configs.PREFIX_MAX_LENGTH - 1}}}$",
            title="Prefix", description="The model package group (the fraud_detection runs' prefix).",
        ),
        "endpoint_name": Param(
            SETTINGS.endpoint_name, type="string", pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$",
            title="Endpoint name", description="Real-time endpoint to create, or update when it exists.",
        ),
        "endpoint_instance_type": Param(
            SETTINGS.endpoint_instance_type, type="string",
            enum=list(configs.instance_types("ProductionVariantInstanceType")),
            title="Endpoint instance type", description="SageMaker instance type of the endpoint.",
        ),
        "endpoint_instance_count": Param(
            1, type="integer", minimum=1, maximum=10, title="Endpoint instances",
            description="Instances behind the endpoint.",
        ),
    },
    user_defined_filters={"short_hash": configs.short_hash},
    user_defined_macros={"sagemaker_image": SETTINGS.image_uri},
    default_args={**SETTINGS.retry_args, "retry_policy": DeterministicFailuresFailAtOnce()},
    tags=["fraud-detection", "sagemaker", "deployment"],
) as dag:
    latest_approved = SageMakerLatestApprovedModelPackageOperator(
        task_id="latest_approved", package_group_name=PREFIX
    )
    create_model = SageMakerModelOperator(
        task_id="create_model",
        config=configs.model(
            SETTINGS,
            name=resource_name(PREFIX, "model", RUN_TOKEN, ATTEMPT),
            model_data_url=pulled("latest_approved", *PACKAGE_CONTAINER, "ModelDataUrl"),
            image_uri=pulled("latest_approved", *PACKAGE_CONTAINER, "Image"),
        ),
    )
    deployment = deploy_to_endpoint(
        SETTINGS,
        model_name=pulled("create_model", "Model", "ModelName"),
        model_package_arn=pulled("latest_approved", "ModelPackageArn"),
        test_data_uri=pulled("latest_approved", "CustomerMetadataProperties", "test_data_uri"),
        context_name=resource_name(PREFIX, "deploy", RUN_TOKEN),
        context_type="DeploymentRun",
    )
    latest_approved >> create_model >> deployment
