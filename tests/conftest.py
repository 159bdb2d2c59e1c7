"""Shared fixtures: an in-process local cloud on a free port, and boto3 clients of it. Airflow's
configuration (a throwaway AIRFLOW_HOME) is set first: Airflow reads it once, when imported."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from include.localcloud.server import LocalCloud
from tests.airflow_env import configure

REGION = "us-east-1"


def pytest_configure(config: pytest.Config) -> None:
    configure()  # before any test module imports Airflow


def make_client(cloud: LocalCloud, service: str, region: str = REGION, **config: Any) -> Any:
    return boto3.session.Session().client(
        service,
        region_name=region,
        endpoint_url=cloud.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, **config),
    )


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    with LocalCloud(tmp_path_factory.mktemp("localcloud"), port=0) as running:
        yield running


@pytest.fixture(scope="session")
def aws(cloud: LocalCloud) -> Callable[..., Any]:
    """aws("s3"), aws("sagemaker", region="eu-west-1", parameter_validation=False), ..."""
    return lambda service, region=REGION, **config: make_client(cloud, service, region, **config)
