"""The run's decisions and the Clarify analysis configuration."""

from __future__ import annotations

from typing import Any

import pytest

from include.jobs import schema
from include.pipeline import clarify, decisions
from include.pipeline.configs import TUNED_HYPERPARAMETERS

DEFAULT_PARAMS: dict[str, Any] = {
    "test_fraction": 0.2,
    "validation_fraction": 0.2,
    "tuning_max_jobs": 8,
    "tuning_parallel_jobs": 2,
    **{f"{h.name}_min": h.low for h in TUNED_HYPERPARAMETERS},
    **{f"{h.name}_max": h.high for h in TUNED_HYPERPARAMETERS},
}


def analysis(stage: str, metrics: dict[str, float]) -> dict[str, Any]:
    """An analysis.json as Clarify writes it."""
    return {
        f"{stage}_training_bias_metrics": {
            "label": schema.LABEL,
            "facets": {
                schema.CLARIFY_FACET: [
                    {"value_or_threshold": "1",
                     "metrics": [{"name": name, "description": name, "value": value} for name, value in metrics.items()]}
                ]
            },
            "label_value_or_threshold": "0",
        }
    }


def evaluation(auc: float) -> dict[str, Any]:
    return {"binary_classification_metrics": {"auc": {"value": auc, "standard_deviation": 0.01}}}


def test_default_params_pass_the_cross_checks() -> None:
    decisions.check_params(DEFAULT_PARAMS)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"test_fraction": 0.5, "validation_fraction": 0.45}, "validation_fraction"),
        ({"tuning_parallel_jobs": 9}, "tuning_parallel_jobs"),
        ({"max_depth_min": 7, "max_depth_max": 3}, "max_depth_min"),
        ({"eta_min": 0.0}, "eta_min"),
    ],
)
def test_contradicting_params_are_refused(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        decisions.check_params(DEFAULT_PARAMS | changes)


def test_runs_started_by_raw_data_updates_never_upload() -> None:
    assert decisions.should_upload_raw_data(True, "manual")
    assert decisions.should_upload_raw_data(True, "scheduled")
    assert not decisions.should_upload_raw_data(True, "asset_triggered")
    assert not decisions.should_upload_raw_data(False, "manual")


def training_job(name: str) -> dict[str, Any]:
    return {"TrainingJobName": name, "HyperParameters": {"eta": "0.1"},
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://b/{name}/output/model.tar.gz"}}


def test_the_tuned_model_goes_forward_when_tuning_ran() -> None:
    chosen = decisions.selected_model(training_job("baseline"), training_job("tuned"))
    assert chosen == {"TrainingJobName": "tuned", "ModelDataUrl": "s3://b/tuned/output/model.tar.gz",
                      "HyperParameters": {"eta": "0.1"}, "Tuned": True}
    assert decisions.selected_model(training_job("baseline"), None)["TrainingJobName"] == "baseline"


@pytest.mark.parametrize(
    ("requested", "auto", "auc", "dppl", "expected"),
    [
        ("PendingManualApproval", False, 0.9, 0.0, "PendingManualApproval"),
        ("Rejected", False, 0.9, 0.0, "Rejected"),
        ("PendingManualApproval", True, 0.85, -0.05, "Approved"),
        ("PendingManualApproval", True, 0.79, 0.0, "PendingManualApproval"),  # AUC gate
        ("PendingManualApproval", True, 0.85, -0.2, "PendingManualApproval"),  # |DPPL| gate
        ("Approved", False, 0.5, 0.5, "Approved"),  # asked for explicitly
    ],
)
def test_approval_status(requested: str, auto: bool, auc: float, dppl: float, expected: str) -> None:
    status, reason = decisions.approval_status(
        requested=requested, auto_approve=auto, min_test_auc=0.8, max_abs_dppl=0.1,
        evaluation=evaluation(auc), post_training_analysis=analysis("post", {"DPPL": dppl, "DI": 1.0}),
    )
    assert status == expected
    assert f"test AUC {auc:.4f}" in reason


def test_clarify_configs() -> None:
    pre = clarify.analysis_config("pre")
    assert pre["headers"] == list(schema.DATASET_COLUMNS)
    assert pre["label"] == "fraud" and pre["label_values_or_threshold"] == [0]
    assert pre["facet"] == [{"name_or_index": "customer_gender_female", "value_or_threshold": [1]}]
    assert pre["methods"] == {"pre_training_bias": {"methods": "all"}} and "predictor" not in pre
    post = clarify.analysis_config("post", model_name="m", instance_type="ml.m5.large", probability_threshold=0.4)
    assert post["methods"] == {"post_training_bias": {"methods": "all"}}
    assert post["predictor"]["model_name"] == "m" and post["predictor"]["content_type"] == "text/csv"
    assert post["probability_threshold"] == 0.4
    with pytest.raises(ValueError, match="model_name"):
        clarify.analysis_config("post")


def test_bias_metrics_of_the_facet() -> None:
    assert clarify.bias_metrics(analysis("pre", {"CI": 0.4, "DPL": -0.02}), "pre") == {"CI": 0.4, "DPL": -0.02}
