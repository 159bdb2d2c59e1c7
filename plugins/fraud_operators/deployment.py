"""The deploy steps both DAGs share: endpoint config, endpoint (created, or updated when it exists),
then a smoke test through sagemaker-runtime and the deployment's lineage, side by side."""

from __future__ import annotations

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerEndpointConfigOperator

from fraud_operators.hosting import SageMakerEndpointSmokeTestOperator
from fraud_operators.lineage import SageMakerLineageOperator
from fraud_operators.waits import SageMakerEndpointOperator
from include.pipeline import configs
from include.pipeline.configs import resource_name
from include.pipeline.settings import Settings
from include.pipeline.templating import ATTEMPT, PREFIX, RUN_TOKEN, param, pulled


def deploy_to_endpoint(
    settings: Settings,
    *,
    model_name: str,
    model_package_arn: str,
    test_data_uri: str,
    context_name: str,
    context_type: str = "PipelineRun",
) -> SageMakerEndpointConfigOperator:
    """Add the deploy tasks to the DAG (or task group) being defined; returns the first, for the
    caller to wire after. The endpoint name, instance type and count come from the run's params."""
    create_endpoint_config = SageMakerEndpointConfigOperator(
        task_id="create_endpoint_config",
        config=configs.endpoint_config(
            settings,
            name=resource_name(PREFIX, "endpoint-config", RUN_TOKEN, ATTEMPT),
            model_name=model_name,
            instance_type=param("endpoint_instance_type"),
            instance_count=param("endpoint_instance_count"),
        ),
    )
    deploy_endpoint = SageMakerEndpointOperator(
        task_id="deploy_endpoint",
        config=configs.endpoint(
            settings,
            name=param("endpoint_name"),
            config_name=pulled(create_endpoint_config.task_id, "EndpointConfig", "EndpointConfigName"),
        ),
        operation="create",  # the operator updates the endpoint when it exists
        wait_for_completion=True,
        check_interval=settings.check_interval,
        deferrable=settings.deferrable,
    )
    smoke_test = SageMakerEndpointSmokeTestOperator(
        task_id="smoke_test", endpoint_name=param("endpoint_name"), data_uri=test_data_uri
    )
    endpoint_arn = pulled(deploy_endpoint.task_id, "Endpoint", "EndpointArn")
    lineage_deploy = SageMakerLineageOperator(
        task_id="lineage_deploy",
        action_name=resource_name(PREFIX, "deploy", RUN_TOKEN),
        action_type="Deployment",
        inputs=[{"uri": model_package_arn, "type": "ModelPackage"}],
        outputs=[{"uri": endpoint_arn, "type": "Endpoint"}],
        context_name=context_name,
        context_type=context_type,
        source_uri=endpoint_arn,
    )
    create_endpoint_config >> deploy_endpoint >> [smoke_test, lineage_deploy]
    return create_endpoint_config
