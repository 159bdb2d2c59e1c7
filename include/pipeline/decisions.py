"""The pipeline's decisions, as plain functions of the run's params and results: which params
combinations make sense, which model goes forward, and the approval status it is registered with."""

from __future__ import annotations

from typing import Any

from include.pipeline.clarify import bias_metrics
from include.pipeline.configs import TUNED_HYPERPARAMETERS

APPROVED = "Approved"
PENDING = "PendingManualApproval"
REJECTED = "Rejected"
APPROVAL_STATUSES = (PENDING, APPROVED, REJECTED)


class InvalidParams(ValueError):
    """Params that cannot make a run: the same params fail the same way every time."""


def check_params(params: dict[str, Any]) -> None:
    """What JSON schemas of single params cannot say: relations between params."""
    problems = []
    if params["test_fraction"] + params["validation_fraction"] >= 0.9:
        problems.append(
            f"test_fraction ({params['test_fraction']}) + validation_fraction "
            f"({params['validation_fraction']}) must leave at least 10% of the rows for training"
        )
    if params["tuning_parallel_jobs"] > params["tuning_max_jobs"]:
        problems.append(
            f"tuning_parallel_jobs ({params['tuning_parallel_jobs']}) must not exceed "
            f"tuning_max_jobs ({params['tuning_max_jobs']})"
        )
    for hyperparameter in TUNED_HYPERPARAMETERS:
        low, high = params[f"{hyperparameter.name}_min"], params[f"{hyperparameter.name}_max"]
        if low > high:
            problems.append(f"{hyperparameter.name}_min ({low}) must not exceed {hyperparameter.name}_max ({high})")
        if hyperparameter.scaling == "Logarithmic" and low <= 0:
            problems.append(f"{hyperparameter.name}_min ({low}) must be above 0 for a logarithmic range")
    if problems:
        raise InvalidParams("invalid params: " + "; ".join(problems))


def should_upload_raw_data(upload_requested: bool, run_type: str) -> bool:
    """A run started by an update of the raw-data assets reads the data that was updated."""
    return upload_requested and run_type != "asset_triggered"


def selected_model(baseline: dict[str, Any], best_tuned: dict[str, Any] | None) -> dict[str, Any]:
    """The training job that goes forward: the tuning job's best when tuning ran, else the
    baseline. Both arguments are DescribeTrainingJob responses."""
    chosen = best_tuned or baseline
    return {
        "TrainingJobName": chosen["TrainingJobName"],
        "ModelDataUrl": chosen["ModelArtifacts"]["S3ModelArtifacts"],
        "HyperParameters": chosen["HyperParameters"],
        "Tuned": best_tuned is not None,
    }


def test_auc(evaluation: dict[str, Any]) -> float:
    """ROC-AUC of the chosen model on the test set, from evaluate.py's evaluation.json."""
    return float(evaluation["binary_classification_metrics"]["auc"]["value"])


def approval_status(
    *,
    requested: str,
    auto_approve: bool,
    min_test_auc: float,
    max_abs_dppl: float,
    evaluation: dict[str, Any],
    post_training_analysis: dict[str, Any],
) -> tuple[str, str]:
    """(status, why): the requested status, or Approved when auto-approval is allowed and the
    model passes both gates (test AUC and |DPPL| of the facet)."""
    if requested not in APPROVAL_STATUSES:
        raise ValueError(f"approval_status must be one of {APPROVAL_STATUSES}, got {requested!r}")
    auc = test_auc(evaluation)
    dppl = float(bias_metrics(post_training_analysis, "post")["DPPL"])
    figures = f"test AUC {auc:.4f} (min {min_test_auc}), |DPPL| {abs(dppl):.4f} (max {max_abs_dppl})"
    if not auto_approve:
        return requested, f"auto-approval off; {figures}"
    if auc >= min_test_auc and abs(dppl) <= max_abs_dppl:
        return APPROVED, f"quality gates passed: {figures}"
    return requested, f"quality gates not passed: {figures}"
