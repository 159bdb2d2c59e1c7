"""The URIs of the pipeline's SageMaker images, read from the tables the SageMaker SDK bundles
(sagemaker/core/image_uri_config/<framework>.json) without importing the SDK: the import costs
an Airflow task process about 120 MB and over a second. For the three images the pipeline uses
(default scope, no instance type) the SDK's rule is: the version's registry account for the
region, ECR's hostname there, the repository, and the tag of the version, the only processor and
the only Python version the table lists. tests/pipeline/test_images.py checks every region of
each table against the SDK's image_uris.retrieve."""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path

import botocore.loaders
import botocore.regions

# The scope the SDK takes when none is given (training and inference images are the same).
SCOPES = {"sklearn": "training", "xgboost": "training", "clarify": "processing"}


def _table(framework: str) -> dict:
    # find_spec of the top-level package locates it without running its __init__.
    spec = importlib.util.find_spec("sagemaker")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the SageMaker SDK (package sagemaker) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "core" / "image_uri_config" / f"{framework}.json"
    return json.loads(path.read_text())[SCOPES[framework]]


@cache
def _ecr_hostname(region: str) -> str:
    resolver = botocore.regions.EndpointResolver(botocore.loaders.create_loader().load_data("endpoints"))
    endpoint = resolver.construct_endpoint("ecr", region)
    return endpoint["hostname"] if endpoint else f"ecr.{region}.amazonaws.com"


@cache
def image_uri(framework: str, region: str, version: str | None) -> str:
    """The URI of the "sklearn", "xgboost" or "clarify" image of `version` (None: the only one)."""
    if framework not in SCOPES:
        raise ValueError(f"framework must be one of {sorted(SCOPES)}, got {framework!r}")
    table = _table(framework)
    versions = table["versions"]
    version = table.get("version_aliases", {}).get(version, version) if version else next(iter(versions))
    if version not in versions:
        raise ValueError(f"{framework} has no image of version {version!r} (versions: {', '.join(versions)})")
    entry = versions[version]
    if region not in entry["registries"]:
        raise ValueError(f"{framework} {version} has no image in region {region!r}")
    tag = "-".join([version, *entry.get("processors", [])[:1], *entry.get("py_versions", [])[:1]])
    return f"{entry['registries'][region]}.dkr.{_ecr_hostname(region)}/{entry['repository']}:{tag}"
