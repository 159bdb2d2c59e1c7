"""SageMaker Clarify analysis configurations (Clarify's analysis_config.json format) for the bias
checks of the fraud model: label `fraud` with "not fraud" (0) as the favourable outcome for a
customer, facet `customer_gender_female` value 1, all pre-training or all post-training metrics."""

from __future__ import annotations

import json
from typing import Any

from include.jobs import schema

FAVOURABLE_LABEL = 0  # "not fraud" is the good outcome for the customer whose claim is judged
FACET_VALUE = 1
STAGES = ("pre", "post")


def analysis_config(
    stage: str,
    *,
    model_name: str | None = None,
    instance_type: str | None = None,
    instance_count: int = 1,
    probability_threshold: float | str = 0.5,
) -> dict[str, Any]:
    """The config of the "pre"-training check (dataset only) or the "post"-training check (the
    model `model_name` predicts the dataset; scores above the threshold are label 1)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    config: dict[str, Any] = {
        "version": "1.0",
        "dataset_type": "text/csv",
        # The datasets are headerless CSV, label first: the XGBoost contract.
        "headers": list(schema.DATASET_COLUMNS),
        "label": schema.LABEL,
        "label_values_or_threshold": [FAVOURABLE_LABEL],
        "facet": [{"name_or_index": schema.CLARIFY_FACET, "value_or_threshold": [FACET_VALUE]}],
    }
    if stage == "pre":
        config["methods"] = {"pre_training_bias": {"methods": "all"}}
        return config
    if not model_name or not instance_type:
        raise ValueError("the post-training config needs model_name and instance_type")
    config["methods"] = {"post_training_bias": {"methods": "all"}}
    config["predictor"] = {
        "model_name": model_name,
        "instance_type": instance_type,
        "initial_instance_count": instance_count,
        "content_type": "text/csv",
        "accept_type": "text/csv",
    }
    config["probability_threshold"] = probability_threshold
    return config


def analysis_config_json(config: dict[str, Any]) -> str:
    """The file's text. Indented, so a Jinja template inside never meets "{{" by accident."""
    return json.dumps(config, indent=2)


def bias_metrics(analysis: dict[str, Any], stage: str) -> dict[str, float]:
    """Metric name -> value of the facet customer_gender_female=1 from Clarify's analysis.json."""
    section = analysis[f"{stage}_training_bias_metrics"]
    groups = section["facets"][schema.CLARIFY_FACET]
    group = next(g for g in groups if str(g["value_or_threshold"]) == str(FACET_VALUE))
    return {metric["name"]: metric["value"] for metric in group["metrics"]}
