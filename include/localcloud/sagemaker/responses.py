"""The SageMaker control plane: one JSON 1.1 service assembled from its areas (jobs, hosting,
registry, lineage, feature groups, tags), each area in its own module with its state."""

from __future__ import annotations

from include.localcloud.protocol import JsonService
from include.localcloud.sagemaker.feature_groups import FeatureGroupOperations
from include.localcloud.sagemaker.hosting import HostingOperations
from include.localcloud.sagemaker.jobs import JobOperations
from include.localcloud.sagemaker.lineage import LineageOperations
from include.localcloud.sagemaker.registry import RegistryOperations
from include.localcloud.sagemaker.tags import TagOperations
from include.localcloud.sagemaker.tuning import TuningOperations


class SageMakerResponse(
    JobOperations,
    TuningOperations,
    HostingOperations,
    RegistryOperations,
    LineageOperations,
    FeatureGroupOperations,
    TagOperations,
    JsonService,
):
    service_name = "sagemaker"

    def start(self) -> None:
        self.start_jobs()
        self.start_tuning()  # after start_jobs: it counts the trials that start_jobs ended
        self.start_hosting()
        self.start_feature_groups()

    def stop(self) -> None:
        self.stop_jobs()  # ends every job thread, tuning jobs' included
        self.stop_tuning()
        self.stop_hosting()
        self.stop_feature_groups()
