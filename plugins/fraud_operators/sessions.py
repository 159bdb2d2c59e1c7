"""The AWS session factory of the pipeline's Airflow processes ([aws] session_factory): the
provider's own, with every boto3 session of a process sharing one botocore data loader.

Each AWS hook makes new sessions (two when its connection assumes a role: one for STS, one with
the role's credentials), and a new botocore session loads and parses the JSON models of the
services it makes clients of again: about 0.2 s of CPU for SageMaker's, several times a task.
The models are read-only, so one loader, which caches them, serves every session; the provider
does the same for its async sessions (the triggerer's)."""

from __future__ import annotations

import threading
from typing import Any

import boto3
import botocore.loaders
import botocore.session
from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory

_lock = threading.Lock()
_loader: botocore.loaders.Loader | None = None


def shared_loader(session: botocore.session.Session) -> botocore.loaders.Loader:
    """The process's data loader, made on first use with the first session's data path."""
    global _loader
    with _lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader(session.get_config_variable("data_path"))
        return _loader


def with_shared_loader(session: botocore.session.Session) -> botocore.session.Session:
    session.register_component("data_loader", shared_loader(session))
    return session


class SharedLoaderSessionFactory(BaseSessionFactory):
    """BaseSessionFactory whose boto3 sessions share the process's botocore data loader."""

    def _create_basic_session(self, session_kwargs: dict[str, Any]) -> boto3.session.Session:
        return boto3.session.Session(botocore_session=with_shared_loader(botocore.session.get_session()),
                                     **session_kwargs)

    def create_session(self, deferrable: bool = False) -> Any:
        session = super().create_session(deferrable=deferrable)
        if isinstance(session, boto3.session.Session):  # an async session shares the provider's loader
            with_shared_loader(session._session)
        return session
