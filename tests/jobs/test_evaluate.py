"""evaluate.py: Model Monitor-format metrics of the trained (and baseline) model on the test set."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import evaluate
import numpy as np
import pytest
import schema
import xgboost
from checks import InvalidInput
from sklearn import metrics

from tests.jobs.conftest import write_csv

FEATURES = len(schema.FEATURE_COLUMNS)


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features where the first column drives the label, with noise (about 20 % positives)."""
    generator = np.random.default_rng(seed)
    features = generator.normal(size=(rows, FEATURES))
    labels = (features[:, 0] + generator.normal(scale=0.8, size=rows) > 1.0).astype(int)
    return features, labels


def save_model(booster: xgboost.Booster, folder: Path) -> Path:
    """As the built-in algorithm does: Booster.save_model to `xgboost-model`, inside model.tar.gz."""
    folder.mkdir(parents=True)
    booster.save_model(folder / "xgboost-model.json")
    with tarfile.open(folder / "model.tar.gz", "w:gz") as archive:
        archive.add(folder / "xgboost-model.json", arcname="xgboost-model")
    (folder / "xgboost-model.json").unlink()
    return folder


def train(features: np.ndarray, labels: np.ndarray, max_depth: int, rounds: int) -> xgboost.Booster:
    parameters = {"objective": "binary:logistic", "max_depth": max_depth, "eta": 0.3, "nthread": 1}
    return xgboost.train(parameters, xgboost.DMatrix(features, label=labels), num_boost_round=rounds)


def write_test_set(folder: Path, features: np.ndarray, labels: np.ndarray) -> Path:
    """Label first, no header, floats written exactly (repr)."""
    write_csv(
        folder / "test.csv",
        [[label, *map(repr, row.tolist())] for label, row in zip(labels, features, strict=True)],
    )
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    features, labels = synthetic(400, seed=1)
    tuned = train(features, labels, max_depth=2, rounds=20)
    baseline = train(features, labels, max_depth=1, rounds=3)
    return {
        "tuned": (tuned, save_model(tuned, folder / "tuned")),
        "baseline": (baseline, save_model(baseline, folder / "baseline")),
    }


def test_metrics_match_scikit_learn_on_the_same_predictions(run_job, models, tmp_path):
    features, labels = synthetic(300, seed=2)
    test_dir = write_test_set(tmp_path / "test", features, labels)
    process = run_job(
        "evaluate", "--model-dir", models["tuned"][1], "--baseline-model-dir", models["baseline"][1],
        "--test-dir", test_dir, "--output-dir", tmp_path / "out", "--threshold", 0.4,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr

    def refuse(constant):
        raise AssertionError(f"not valid JSON: {constant}")

    evaluation = json.loads((tmp_path / "out" / "evaluation.json").read_text(), parse_constant=refuse)
    scores = models["tuned"][0].predict(xgboost.DMatrix(features))
    predicted = scores > 0.4
    found = evaluation["binary_classification_metrics"]
    value = {
        name: entry["value"] for name, entry in found.items() if isinstance(entry, dict) and "value" in entry
    }

    assert value["auc"] == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert value["pr_auc"] == pytest.approx(metrics.average_precision_score(labels, scores), abs=1e-12)
    assert value["precision"] == pytest.approx(metrics.precision_score(labels, predicted))
    assert value["recall"] == pytest.approx(metrics.recall_score(labels, predicted))
    assert value["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predicted))
    assert value["f1"] == pytest.approx(metrics.f1_score(labels, predicted))
    assert value["f0_5"] == pytest.approx(metrics.fbeta_score(labels, predicted, beta=0.5))
    assert value["f2"] == pytest.approx(metrics.fbeta_score(labels, predicted, beta=2))
    assert value["precision_best_constant_classifier"] == pytest.approx(labels.mean())
    (tn, fp), (fn, tp) = metrics.confusion_matrix(labels, predicted)
    assert found["confusion_matrix"] == {"0": {"0": tn, "1": fp}, "1": {"0": fn, "1": tp}}
    assert value["false_positive_rate"] == pytest.approx(fp / (fp + tn))
    assert evaluation["dataset"]["item_count"] == 300
    assert evaluation["dataset"]["positive_count"] == labels.sum()
    assert evaluation["probability_threshold"] == 0.4
    # 300 samples: Model Monitor's standard deviation over 80 % samples is given.
    assert 0 < found["auc"]["standard_deviation"] < 0.1

    roc = found["receiver_operating_characteristic_curve"]
    assert roc["false_positive_rates"][0] == 0 and roc["true_positive_rates"][-1] == 1
    assert roc["thresholds"][0] == "Infinity"
    assert len(roc["false_positive_rates"]) == len(roc["true_positive_rates"]) == len(roc["thresholds"])
    pr = found["precision_recall_curve"]
    assert pr["recalls"] == sorted(pr["recalls"]) and (pr["recalls"][0], pr["recalls"][-1]) == (0, 1)
    assert len(pr["precisions"]) == len(pr["recalls"]) == len(pr["thresholds"])

    gain = evaluation["feature_importance"]["gain"]
    assert set(gain) == set(schema.FEATURE_COLUMNS)
    assert next(iter(gain)) == schema.FEATURE_COLUMNS[0]  # the column that drives the label leads

    baseline_scores = models["baseline"][0].predict(xgboost.DMatrix(features))
    baseline_auc = evaluation["baseline"]["binary_classification_metrics"]["auc"]["value"]
    assert baseline_auc == pytest.approx(metrics.roc_auc_score(labels, baseline_scores), abs=1e-12)
    assert baseline_auc != value["auc"]
    assert json.loads(process.stdout) == {"auc": value["auc"], "baseline_auc": baseline_auc}


def test_small_test_set_has_no_standard_deviation_and_no_baseline(models, tmp_path):
    features, labels = synthetic(60, seed=3)
    test_dir = write_test_set(tmp_path / "test", features, labels)
    evaluation = evaluate.evaluate(models["tuned"][1], None, test_dir, tmp_path / "out", 0.5)
    assert evaluation["binary_classification_metrics"]["auc"]["standard_deviation"] == "NaN"
    assert "baseline" not in evaluation
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text()) == evaluation


def test_bad_input_exits_1_and_writes_nothing(run_job, models, tmp_path):
    features, labels = synthetic(50, seed=4)
    test_dir = write_test_set(tmp_path / "test", features[:, 1:], labels)
    process = run_job(
        "evaluate",
        "--model-dir",
        models["tuned"][1],
        "--test-dir",
        test_dir,
        "--output-dir",
        tmp_path / "out",
    )
    assert (process.returncode, process.stderr) == (
        1,
        "error: test.csv: 45 columns, expected 46 (fraud first, then the features in schema order)\n",
    )
    assert not (tmp_path / "out").exists()


def bad_case(tmp_path: Path, models: dict, case: str) -> dict:
    features, labels = synthetic(50, seed=5)
    arguments = {
        "model_dir": models["tuned"][1],
        "baseline_model_dir": None,
        "test_dir": write_test_set(tmp_path / "test", features, labels),
        "output_dir": tmp_path / "out",
        "threshold": 0.5,
    }
    if case == "no model archive":
        arguments["model_dir"] = tmp_path
    elif case == "model of another dataset":
        narrow = train(features[:, :10], labels, max_depth=1, rounds=2)
        arguments["baseline_model_dir"] = save_model(narrow, tmp_path / "narrow")
    elif case == "threshold out of range":
        arguments["threshold"] = 1.5
    elif case == "one label only":
        arguments["test_dir"] = write_test_set(tmp_path / "zeros", features, np.zeros(50, dtype=int))
    return arguments


BAD = {
    "no model archive": "--model-dir: no model.tar.gz in ",
    "model of another dataset": "--baseline-model-dir: the model takes 10 features, the dataset has 45",
    "threshold out of range": "--threshold must be between 0 and 1 (exclusive), got 1.5",
    "one label only": "--test-dir: the test set in ",
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_refused(models, tmp_path, case):
    with pytest.raises(InvalidInput, match=re.escape(BAD[case])):
        evaluate.evaluate(**bad_case(tmp_path, models, case))
    assert not (tmp_path / "out").exists()
