"""Routes of the Feature Store runtime: REST-JSON requests signed for "sagemaker" under /FeatureGroup."""

from include.localcloud.featurestore.responses import FeatureStoreRuntimeResponse


def services() -> list[type]:
    return [FeatureStoreRuntimeResponse]
