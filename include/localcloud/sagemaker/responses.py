"""The SageMaker control plane: one JSON 1.1 service assembled from its areas (jobs, hosting,
registry, lineage, feature groups, tags), each area in its own module with its state."""

from __future__ import annotations

from include.localcloud.protocol import JsonService
from include.localcloud.sagemaker.tags import TagOperations


class SageMakerResponse(TagOperations, JsonService):
    service_name = "sagemaker"
