"""Jinja snippets the DAGs put into request configs; Airflow renders them when a task runs.

Plain strings only (no Airflow import): the DAGs register `short_hash` as a filter and
`Settings.image_uri` as the `sagemaker_image` macro."""

from __future__ import annotations

PREFIX = "{{ params.prefix }}"
# A run's token: the same for every task and retry of the run, different for every run.
RUN_TOKEN = "{{ run_id | short_hash }}"
# The try of the task: for names the API cannot reuse when a failed try already created them.
ATTEMPT = "{{ ti.try_number }}"
# Epoch seconds of the run: the event time of the records it puts into the feature groups.
RUN_EPOCH = "{{ dag_run.run_after.timestamp() }}"


def param(name: str) -> str:
    return f"{{{{ params.{name} }}}}"


def pulled(task_id: str, *path: str | int) -> str:
    """The XCom return value of `task_id` (or an item inside it, by keys and indexes)."""
    keys = "".join(f"[{key!r}]" for key in path)
    return f"{{{{ ti.xcom_pull(task_ids={task_id!r}){keys} }}}}"


def sagemaker_image(framework: str) -> str:
    """The URI of a SageMaker image, looked up when the task runs (see Settings.image_uri)."""
    return f"{{{{ sagemaker_image({framework!r}) }}}}"
