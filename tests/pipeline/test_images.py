"""The pipeline's image URIs, read from the SageMaker SDK's tables, are the SDK's own in every region."""

from __future__ import annotations

import pytest
from sagemaker.core import image_uris

from include.pipeline import images
from include.pipeline.settings import IMAGE_VERSIONS, Settings


def regions(framework: str) -> list[str]:
    table = images._table(framework)
    version = IMAGE_VERSIONS[framework] or next(iter(table["versions"]))
    return list(table["versions"][version]["registries"])


@pytest.mark.parametrize("framework", sorted(IMAGE_VERSIONS))
def test_every_region_gives_the_sdks_uri(framework):
    found = regions(framework)
    assert "us-east-1" in found and len(found) > 20
    for region in found:
        assert images.image_uri(framework, region, IMAGE_VERSIONS[framework]) == image_uris.retrieve(
            framework=framework, region=region, version=IMAGE_VERSIONS[framework]), region


def test_the_settings_use_them_and_bad_names_are_refused():
    assert Settings(region="eu-west-1").image_uri("sklearn") == (
        "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3")
    with pytest.raises(ValueError, match="no image in region 'mars-1'"):
        images.image_uri("xgboost", "mars-1", "1.7-1")
    with pytest.raises(ValueError, match="framework must be one of"):
        images.image_uri("pytorch", "us-east-1", "2.0")
