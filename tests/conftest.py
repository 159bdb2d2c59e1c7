"""Shared fixtures: an in-process local cloud on a free port, and boto3 clients of it. Airflow's
configuration (a throwaway AIRFLOW_HOME) is set first: Airflow reads it once, when imported."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.backends import get_backend

from include.localcloud.moto_services import PERSISTED_SERVICES
from include.localcloud.server import ACCOUNT_ID, LocalCloud
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


@pytest.fixture
def airflow_connection(cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's aws_default connection, which the provider's operators use, is the session cloud."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(
        {"conn_type": "aws", "extra": {"endpoint_url": cloud.url, "region_name": REGION}}))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@contextmanager
def moto_state_kept(start_empty: bool = False) -> Iterator[None]:
    """moto's backends are global to the process: a LocalCloud that a test starts again on its own
    state folder restores its snapshot over them. Give the session cloud its own back afterwards
    (the account's backend objects themselves, so nothing is copied); with start_empty, what runs
    inside starts from none of it."""
    saved = {}
    for name in PERSISTED_SERVICES:
        backends = get_backend(name)  # type: ignore[call-overload]
        backends[ACCOUNT_ID]  # noqa: B018 - made on first use; kept so the restore keeps it too
        saved[name] = dict(backends)
        if start_empty:
            backends.clear()
    try:
        yield
    finally:
        for name, accounts in saved.items():
            backends = get_backend(name)  # type: ignore[call-overload]
            backends.clear()
            backends.update(accounts)


@pytest.fixture(autouse=True)
def _keep_session_moto_state() -> Iterator[None]:
    with moto_state_kept():
        yield
