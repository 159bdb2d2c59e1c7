"""The pipeline's AWS session factory (plugins/fraud_operators/sessions.py): the sessions of a
connection, with or without a role to assume, share one botocore data loader and still call
with the connection's credentials."""

from __future__ import annotations

import json

import pytest
from airflow.models.connection import Connection
from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory
from fraud_operators.sessions import SharedLoaderSessionFactory

from include.localcloud.server import LocalCloud

REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/AirflowRole"


def connection(cloud: LocalCloud, role_arn: str | None) -> Connection:
    extra = {"endpoint_url": cloud.url, "region_name": REGION}
    if role_arn:  # as make run's connection: STS is the local cloud's too
        extra.update(role_arn=role_arn, service_config={"sts": {"endpoint_url": cloud.url}})
    return Connection(conn_id="aws_sessions", conn_type="aws", login="testing", password="testing",
                      extra=json.dumps(extra))


def sagemaker_client(factory: type[BaseSessionFactory], conn: Connection) -> object:
    session = factory(conn=conn, region_name=REGION).create_session()
    return session.client("sagemaker", endpoint_url=conn.extra_dejson["endpoint_url"])


@pytest.mark.parametrize("role_arn", [None, ROLE_ARN], ids=["keys", "assumed-role"])
def test_sessions_share_one_data_loader_and_keep_their_credentials(cloud: LocalCloud, role_arn: str | None) -> None:
    conn = connection(cloud, role_arn)
    first, second = (sagemaker_client(SharedLoaderSessionFactory, conn) for _ in range(2))
    assert first._loader is second._loader
    # The provider's factory loads the models again for each session: what this one saves.
    assert sagemaker_client(BaseSessionFactory, conn)._loader is not first._loader
    assert first.list_processing_jobs()["ProcessingJobSummaries"] is not None
    credentials = first._request_signer._credentials
    if role_arn:  # the role's temporary credentials, not the connection's keys
        assert credentials.token and credentials.access_key != "testing"
    else:
        assert credentials.access_key == "testing"
