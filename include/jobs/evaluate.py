"""Score the test set with the trained model (and a baseline model) (a processing job script).

    python3 evaluate.py [--model-dir DIR] [--baseline-model-dir DIR] [--test-dir DIR]
                        [--output-dir DIR] [--threshold 0.5]

A model dir holds model.tar.gz with the built-in XGBoost algorithm's `xgboost-model`; the test
dir holds one CSV file, label first, no header. Writes <output-dir>/evaluation.json in SageMaker
Model Monitor's model-quality statistics format for binary classification (every metric as
{"value", "standard_deviation"}, the confusion matrix keyed actual -> predicted label, ROC and
precision-recall curves), with these additions: "pr_auc" (average precision), the curves'
"thresholds", "probability_threshold", "feature_importance" (gain per dataset column) and, given
a baseline model, the same figures for it under "baseline".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import checks
import numpy as np
import schema
import xgboost
from checks import InvalidInput
from create_dataset import read_dataset
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

BASE_DIR = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
MODEL_FILE = "xgboost-model"
# Model Monitor gives a standard deviation from 5 random 80% samples, for 200 samples or more.
STD_MIN_SAMPLES = 200
STD_REPEATS = 5
STD_SAMPLE_FRACTION = 0.8
F_SCORES = (("f0_5", 0.5), ("f1", 1.0), ("f2", 2.0))


def load_model(model_dir: Path, parameter: str) -> xgboost.Booster:
    """The booster inside <model_dir>/model.tar.gz."""
    archive = model_dir / "model.tar.gz"
    if not archive.is_file():
        raise InvalidInput(f"{parameter}: no model.tar.gz in {model_dir}")
    try:
        with tarfile.open(archive) as tar:
            # Read the one member we need; never extract paths from the archive.
            members = [m for m in tar.getmembers() if m.isfile() and m.name.removeprefix("./") == MODEL_FILE]
            if not members:
                raise InvalidInput(f"{parameter}: {archive} holds no {MODEL_FILE}")
            model_bytes = tar.extractfile(members[0]).read()
    except tarfile.TarError as error:
        raise InvalidInput(f"{parameter}: {archive} is not a tar.gz archive ({error})") from None
    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(model_bytes))  # XGBoost tells JSON from UBJSON by content
    except xgboost.core.XGBoostError as error:
        first_line = str(error).strip().splitlines()[0]
        raise InvalidInput(
            f"{parameter}: {MODEL_FILE} in {archive} is not an XGBoost model ({first_line})"
        ) from None
    if booster.num_features() != len(schema.FEATURE_COLUMNS):
        raise InvalidInput(
            f"{parameter}: the model takes {booster.num_features()} features, "
            f"the dataset has {len(schema.FEATURE_COLUMNS)}"
        )
    return booster


def predict(booster: xgboost.Booster, features: np.ndarray) -> np.ndarray:
    return booster.predict(xgboost.DMatrix(features, feature_names=booster.feature_names))


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0.0 when the denominator is 0 (scikit-learn's zero_division=0)."""
    return numerator / denominator if denominator else 0.0


def f_beta(precision: float, recall: float, beta: float) -> float:
    return ratio((1 + beta**2) * precision * recall, beta**2 * precision + recall)


def confusion(labels: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    return {
        "tp": int(np.sum((labels == 1) & predicted)),
        "fp": int(np.sum((labels == 0) & predicted)),
        "tn": int(np.sum((labels == 0) & ~predicted)),
        "fn": int(np.sum((labels == 1) & ~predicted)),
    }


def scalar_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Model Monitor's binary classification metrics (plus pr_auc), in its order.

    Predicted label: 1 when the score is above the threshold (as Clarify's probability_threshold). The "best constant classifier"
    predicts 1 for every row, as in Model Monitor's published example.
    """
    counts = confusion(labels, scores > threshold)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    prevalence = ratio(tp + fn, len(labels))
    metrics = {
        "recall": recall,
        "precision": precision,
        "accuracy": ratio(tp + tn, len(labels)),
        "recall_best_constant_classifier": 1.0,
        "precision_best_constant_classifier": prevalence,
        "accuracy_best_constant_classifier": prevalence,
        "true_positive_rate": recall,
        "true_negative_rate": ratio(tn, tn + fp),
        "false_positive_rate": ratio(fp, tn + fp),
        "false_negative_rate": ratio(fn, tp + fn),
        "auc": float(roc_auc_score(labels, scores)),
    }
    for name, beta in F_SCORES:
        metrics[name] = f_beta(precision, recall, beta)
    for name, beta in F_SCORES:
        metrics[f"{name}_best_constant_classifier"] = f_beta(prevalence, 1.0, beta)
    metrics["pr_auc"] = float(average_precision_score(labels, scores))
    return metrics


def standard_deviations(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Each metric's standard deviation over random 80% samples; none for small test sets."""
    if len(labels) < STD_MIN_SAMPLES:
        return {}
    generator = np.random.default_rng(0)
    size = int(len(labels) * STD_SAMPLE_FRACTION)
    samples = []
    for _ in range(STD_REPEATS):
        rows = generator.choice(len(labels), size=size, replace=False)
        if len(np.unique(labels[rows])) == 2:  # AUC needs both labels
            samples.append(scalar_metrics(labels[rows], scores[rows], threshold))
    if len(samples) < 2:
        return {}
    return {name: float(np.std([sample[name] for sample in samples])) for name in samples[0]}


def json_number(value: float) -> float | str:
    """Model Monitor writes non-finite numbers as strings ("NaN"); JSON has no Infinity."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def binary_classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    values = scalar_metrics(labels, scores, threshold)
    deviations = standard_deviations(labels, scores, threshold)
    counts = confusion(labels, scores > threshold)
    false_positive_rates, true_positive_rates, roc_thresholds = roc_curve(labels, scores)
    precisions, recalls, pr_thresholds = precision_recall_curve(labels, scores)
    # scikit-learn lists the precision-recall curve by falling recall, its last point (recall 0)
    # without a threshold; Model Monitor lists it by rising recall.
    pr_thresholds = [math.inf, *pr_thresholds[::-1]]
    result: dict = {
        # Actual label -> predicted label -> count, as Model Monitor keys it.
        "confusion_matrix": {
            "0": {"0": counts["tn"], "1": counts["fp"]},
            "1": {"0": counts["fn"], "1": counts["tp"]},
        }
    }
    for name, value in values.items():
        result[name] = {"value": value, "standard_deviation": deviations.get(name, "NaN")}
    result["receiver_operating_characteristic_curve"] = {
        "false_positive_rates": false_positive_rates.tolist(),
        "true_positive_rates": true_positive_rates.tolist(),
        "thresholds": [json_number(float(t)) for t in roc_thresholds],
    }
    result["precision_recall_curve"] = {
        "precisions": precisions[::-1].tolist(),
        "recalls": recalls[::-1].tolist(),
        "thresholds": [json_number(float(t)) for t in pr_thresholds],
    }
    return result


def feature_importance(booster: xgboost.Booster) -> dict[str, dict[str, float]]:
    """Average gain of each dataset feature column (0 for unused ones), highest first."""
    gains = booster.get_score(importance_type="gain")
    # A model trained on headerless CSV (the built-in algorithm) names its features f0, f1, ...
    model_names = booster.feature_names or [f"f{index}" for index in range(booster.num_features())]
    gain = {
        column: float(gains.get(name, 0.0))
        for column, name in zip(schema.FEATURE_COLUMNS, model_names, strict=True)
    }
    return {"gain": dict(sorted(gain.items(), key=lambda item: item[1], reverse=True))}


def model_figures(
    booster: xgboost.Booster, labels: np.ndarray, features: np.ndarray, threshold: float
) -> dict:
    scores = predict(booster, features)
    return {
        "binary_classification_metrics": binary_classification_metrics(labels, scores, threshold),
        "feature_importance": feature_importance(booster),
    }


def evaluate(
    model_dir: Path, baseline_model_dir: Path | None, test_dir: Path, output_dir: Path, threshold: float
) -> dict:
    """Write <output_dir>/evaluation.json and return its content."""
    if not 0 < threshold < 1:
        raise InvalidInput(f"--threshold must be between 0 and 1 (exclusive), got {threshold}")
    test = read_dataset(checks.single_csv(test_dir, "--test-dir"), header=False)
    if test[schema.LABEL].nunique() < 2:
        raise InvalidInput(f"--test-dir: the test set in {test_dir} needs both labels for AUC")
    booster = load_model(model_dir, "--model-dir")
    baseline = load_model(baseline_model_dir, "--baseline-model-dir") if baseline_model_dir else None

    labels = test[schema.LABEL].to_numpy()
    features = test[list(schema.FEATURE_COLUMNS)].to_numpy(dtype=float)
    evaluation = {
        "version": 0.0,
        "dataset": {
            "item_count": len(test),
            "positive_count": int(labels.sum()),
            "evaluation_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
        **model_figures(booster, labels, features, threshold),
        "probability_threshold": threshold,
    }
    if baseline:
        evaluation["baseline"] = model_figures(baseline, labels, features, threshold)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2, allow_nan=False))
    return evaluation


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=BASE_DIR / "processing" / "input" / "model")
    parser.add_argument("--baseline-model-dir", type=Path, default=None)
    parser.add_argument("--test-dir", type=Path, default=BASE_DIR / "processing" / "input" / "test")
    parser.add_argument("--output-dir", type=Path, default=BASE_DIR / "processing" / "output")
    parser.add_argument("--threshold", type=float, default=0.5)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    evaluation = evaluate(
        args.model_dir, args.baseline_model_dir, args.test_dir, args.output_dir, args.threshold
    )
    summary = {"auc": evaluation["binary_classification_metrics"]["auc"]["value"]}
    if "baseline" in evaluation:
        summary["baseline_auc"] = evaluation["baseline"]["binary_classification_metrics"]["auc"]["value"]
    print(json.dumps(summary))


if __name__ == "__main__":
    checks.run(main)
