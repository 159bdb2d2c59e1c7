"""The SageMaker built-in XGBoost algorithm (training), as the local cloud runs it.

Like the sagemaker-xgboost container it follows the training container contract under
SAGEMAKER_BASE_DIR (default /opt/ml), finding its folders through the SM_* variables of the
SageMaker training toolkit: hyperparameters from input/config/hyperparameters.json, all strings,
checked as the real algorithm checks them (an unknown one is a ClientError); channels `train`
(required) and `validation` (SM_CHANNEL_TRAIN, SM_CHANNEL_VALIDATION), CSV with the label in the
first column and no header (ContentType text/csv); one log line per boosting round listing the
evaluation metrics the way the real container's lines read in CloudWatch Logs
("[99]#011train-auc:0.93000#011validation-auc:0.81000"); the model saved by Booster.save_model
as model/xgboost-model. A failure is written to output/failure ("ClientError: ..." for bad input,
"AlgorithmError: ..." otherwise) and the exit status is 1.

Without eval_metric XGBoost's default metric for the objective is evaluated (logloss for
binary:logistic), as in the real container; a tuning job's _tuning_objective_metric
("validation:auc") adds its metric to eval_metric."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

if __name__ == "__main__":
    # xgboost imports scikit-learn when installed, for its estimators: with scipy.stats, 0.8 s of
    # every start of this process, which needs neither. Run as a script, it marks it absent.
    sys.modules.setdefault("sklearn", None)  # type: ignore[arg-type]
import xgboost as xgb  # noqa: E402

BASE_DIR = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
MODEL_FILE = "xgboost-model"
CSV_CONTENT_TYPES = ("text/csv", "csv")
CHANNELS = ("train", "validation")
# The real container's evaluation metrics: XGBoost's own, and some it computes itself.
MAXIMIZE_METRICS = ("accuracy", "auc", "aucpr", "balanced_accuracy", "f1", "f1_binary", "f1_macro", "map", "ndcg",
                    "precision", "r2", "recall", "precision_macro", "precision_micro", "recall_macro", "recall_micro")
MINIMIZE_METRICS = ("aft-nloglik", "cox-nloglik", "error", "gamma-deviance", "gamma-nloglik",
                    "interval-regression-accuracy", "logloss", "mae", "mape", "merror", "mlogloss", "mphe", "mse",
                    "poisson-nloglik", "rmse", "rmsle", "tweedie-nloglik")
CONTAINER_METRICS = ("accuracy", "balanced_accuracy", "f1", "f1_binary", "f1_macro", "precision", "r2", "recall",
                     "precision_macro", "precision_micro", "recall_macro", "recall_micro", "mse")
THRESHOLD_METRICS = ("error", "ndcg", "map")  # take "@t", e.g. error@0.7
OBJECTIVES = ("binary:logistic", "binary:logitraw", "binary:hinge", "count:poisson", "multi:softmax",
              "multi:softprob", "rank:pairwise", "rank:ndcg", "rank:map", "reg:linear", "reg:squarederror",
              "reg:logistic", "reg:gamma", "reg:pseudohubererror", "reg:squaredlogerror", "reg:tweedie",
              "survival:aft", "survival:cox")
# XGBoost errors that the data or hyperparameters cause: ClientErrors, as in the real container.
CUSTOMER_ERRORS = ("label must be in [0,1]", "label must be in [0, num_class)", "base_score must be in (0,1)",
                   "feature_names mismatch", "label must be nonnegative", "Parameter reg_lambda should be greater")
ALIASES = {"learning_rate": "eta", "min_split_loss": "gamma", "reg_lambda": "lambda", "reg_alpha": "alpha"}
# Read by the algorithm itself, not passed to XGBoost as parameters.
ALGORITHM_SETTINGS = ("num_round", "early_stopping_rounds", "csv_weights", "eval_metric", "_tuning_objective_metric",
                      "save_model_on_termination")

log = logging.getLogger("xgboost_algorithm")


def folder(variable: str, default: str) -> Path:
    """A folder of the container contract: from its SM_* variable, else below the base dir."""
    return Path(os.environ.get(variable) or BASE_DIR / default)


def channel_dir(name: str) -> Path:
    return folder(f"SM_CHANNEL_{name.upper()}", f"input/data/{name}")


class UserError(Exception):
    """Bad input from the job's author: the job fails with a ClientError."""


@dataclass(frozen=True)
class Hyperparameter:
    parse: Callable[[str], Any]
    allowed: Callable[[Any], bool] = lambda value: True
    allowed_text: str = ""

    def read(self, name: str, text: str) -> Any:
        try:
            value = self.parse(text)
        except ValueError as exc:
            raise UserError(f"Hyperparameter {name}: could not parse value {text!r}") from exc
        if not self.allowed(value):
            raise UserError(f"Hyperparameter {name}: {value} is not in {self.allowed_text}")
        return value


def integer(low: int | None = None, high: int | None = None) -> Hyperparameter:
    return Hyperparameter(int, lambda v: (low is None or v >= low) and (high is None or v <= high),
                          f"[{'-inf' if low is None else low}, {'+inf' if high is None else high}]")


def number(low: float | None = None, high: float | None = None, *, open_low: bool = False,
           open_high: bool = False) -> Hyperparameter:
    def allowed(v: float) -> bool:
        above = low is None or (v > low if open_low else v >= low)
        below = high is None or (v < high if open_high else v <= high)
        return above and below

    text = f"{'(' if open_low or low is None else '['}{'-inf' if low is None else low}, " \
           f"{'+inf' if high is None else high}{')' if open_high or high is None else ']'}"
    return Hyperparameter(float, allowed, text)


def choice(*values: str) -> Hyperparameter:
    return Hyperparameter(str, lambda v: v in values, str(list(values)))


def metric_list(text: str) -> list[str]:
    return [metric.strip() for metric in text.split(",") if metric.strip()]


TEXT = Hyperparameter(str)
FLAG = choice("true", "false")
HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "num_round": integer(1),
    "csv_weights": integer(0, 1),
    "early_stopping_rounds": integer(1),
    "booster": choice("gbtree", "gblinear", "dart"),
    "verbosity": integer(0, 3),
    "nthread": integer(1),
    "eta": number(0, 1),
    "gamma": number(0),
    "max_depth": integer(0),
    "min_child_weight": number(0),
    "max_delta_step": number(0),
    "subsample": number(0, 1, open_low=True),
    "colsample_bytree": number(0, 1, open_low=True),
    "colsample_bylevel": number(0, 1, open_low=True),
    "colsample_bynode": number(0, 1, open_low=True),
    "lambda": number(0),
    "alpha": number(0),
    "tree_method": choice("auto", "exact", "approx", "hist", "gpu_hist"),
    "sketch_eps": number(0, 1, open_low=True, open_high=True),
    "scale_pos_weight": number(0, open_low=True),
    "updater": TEXT,
    "dsplit": choice("row", "col"),
    "refresh_leaf": integer(0, 1),
    "process_type": choice("default", "update"),
    "grow_policy": choice("depthwise", "lossguide"),
    "max_leaves": integer(0),
    "max_bin": integer(0),
    "predictor": choice("auto", "cpu_predictor", "gpu_predictor"),
    "monotone_constraints": TEXT,
    "interaction_constraints": TEXT,
    "sample_type": choice("uniform", "weighted"),
    "normalize_type": choice("tree", "forest"),
    "rate_drop": number(0, 1),
    "one_drop": integer(0, 1),
    "skip_drop": number(0, 1),
    "lambda_bias": number(0, 1),
    "tweedie_variance_power": number(1, 2, open_low=True, open_high=True),
    "objective": choice(*OBJECTIVES),
    "num_class": integer(2),
    "base_score": number(0),
    "_tuning_objective_metric": Hyperparameter(
        str, lambda v: v.partition(":")[0] == "validation" and v.partition(":")[2] in MAXIMIZE_METRICS + MINIMIZE_METRICS,
        "the validation metrics of the algorithm"),
    "eval_metric": Hyperparameter(metric_list),
    "seed": integer(-(2**31) + 1, 2**31 - 2),
    "num_parallel_tree": integer(1),
    "save_model_on_termination": FLAG,
    "aft_loss_distribution": choice("normal", "logistic", "extreme"),
    "aft_loss_distribution_scale": number(0),
    "deterministic_histogram": FLAG,
    "sampling_method": choice("uniform", "gradient_based"),
    "prob_buffer_row": number(1, open_low=True),
    "single_precision_histogram": FLAG,
}


def read_hyperparameters(given: dict[str, str]) -> dict[str, Any]:
    """Hyperparameters checked and converted as the real algorithm does."""
    values: dict[str, Any] = {}
    for name, text in given.items():
        name = ALIASES.get(name, name)
        if name not in HYPERPARAMETERS:
            raise UserError(f"Extraneous hyperparameter found: {name}")
        values[name] = HYPERPARAMETERS[name].read(name, str(text))
    if "num_round" not in values:
        raise UserError("Missing required hyperparameter: num_round")
    objective = values.get("objective", "reg:squarederror")
    if objective in ("multi:softmax", "multi:softprob") and "num_class" not in values:
        raise UserError("Require input for parameter 'num_class' for multi-classification")
    if "num_class" in values and not objective.startswith("multi:"):
        raise UserError("Do not need to setup parameter 'num_class' for learning task other than "
                        "multi-classification.")
    values["eval_metric"] = evaluation_metrics(values.get("eval_metric"), values.get("_tuning_objective_metric"),
                                               objective)
    return values


def evaluation_metrics(asked: list[str] | None, tuning_metric: str | None, objective: str) -> list[str] | None:
    """The metrics to evaluate: eval_metric, plus a tuning job's objective metric (the union is
    sorted, as in the real container); None leaves XGBoost's default for the objective."""
    metrics = asked
    if tuning_metric is not None:
        metrics = sorted(set(asked or []) | {tuning_metric.partition(":")[2]})
    for metric in metrics or []:
        name, at, threshold = metric.partition("@")
        if at:
            if name not in THRESHOLD_METRICS:
                raise UserError(f"Metric '{metric}' is not supported. Parameter 'eval_metric' with customized "
                                "threshold should be one of these options: 'error', 'ndcg', 'map'.")
            try:
                float(threshold)
            except ValueError as exc:
                raise UserError(f"Threshold value 't' in '{name}@t' expects float input.") from exc
        elif name not in MAXIMIZE_METRICS + MINIMIZE_METRICS:
            raise UserError(f"Hyperparameter eval_metric: value {metric} is not a supported metric")
        if name in CONTAINER_METRICS:
            raise UserError(f"Metric '{name}' is computed by the SageMaker XGBoost container itself, which the local "
                            "cloud does not do; use XGBoost's own metrics (auc, aucpr, logloss, error, rmse, ...).")
        if name == "auc" and not objective.startswith(("binary:", "rank:")):
            raise UserError("Metric 'auc' can only be applied for classification and ranking problems.")
    return metrics


def read_channel(name: str, settings: dict[str, Any], csv_weights: int) -> xgb.DMatrix | None:
    """A channel's CSV files as one DMatrix: label first, then (with csv_weights) the instance
    weight, then the features. None when the channel holds no data."""
    content_type = settings.get("ContentType")
    if content_type is None:
        raise UserError(f"Channel {name} has no ContentType, which means libsvm to the algorithm; the local cloud "
                        "reads text/csv only: set ContentType text/csv.")
    if content_type.split(";")[0].strip().lower() not in CSV_CONTENT_TYPES:
        raise UserError(f"Content type {content_type} of channel {name} is not supported by the local XGBoost "
                        "algorithm; use text/csv.")
    directory = channel_dir(name)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".") and p.stat().st_size)
    if not files:
        return None
    try:
        table = pd.concat([pd.read_csv(path, header=None) for path in files], ignore_index=True)
        values = table.to_numpy(dtype="float64")
    except (ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"Channel {name}: the CSV data must be numeric, without a header: {exc}") from exc
    first_feature = 2 if csv_weights else 1
    if values.shape[1] <= first_feature:
        raise UserError(f"Channel {name}: each CSV row needs a label and at least one feature.")
    return xgb.DMatrix(values[:, first_feature:], label=values[:, 0],
                       weight=values[:, 1] if csv_weights else None)


class PrintEvaluation(xgb.callback.TrainingCallback):
    """One line per round, as the real container's lines read in CloudWatch Logs (#011 is how the
    container's log transport writes its tab characters)."""

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict[str, Any]) -> bool:
        results = [f"{data}-{metric}:{values[-1]:.5f}"
                   for data, metrics in evals_log.items() for metric, values in metrics.items()]
        print(f"[{epoch}]#011" + "#011".join(results), flush=True)
        return False


def train() -> None:
    config = folder("SM_INPUT_CONFIG_DIR", "input/config")
    hyperparameters = read_hyperparameters(json.loads((config / "hyperparameters.json").read_text()))
    channels = json.loads((config / "inputdataconfig.json").read_text())
    if "train" not in channels:
        raise UserError("Missing required channel: train")
    for name in channels:
        if name not in CHANNELS:
            raise UserError(f"Extraneous channel found: {name}")
    csv_weights = hyperparameters.get("csv_weights", 0)
    train_data = read_channel("train", channels["train"], csv_weights)
    if train_data is None:
        raise UserError(f"No data in training channel path {channel_dir('train')}")
    evals = [(train_data, "train")]
    if "validation" in channels:
        validation_data = read_channel("validation", channels["validation"], 0)
        if validation_data is None:
            raise UserError(f"No data in validation channel path {channel_dir('validation')}")
        evals.append((validation_data, "validation"))
    if "early_stopping_rounds" in hyperparameters and len(evals) < 2:
        raise UserError("early_stopping_rounds needs a validation channel.")
    params = {k: v for k, v in hyperparameters.items() if k not in ALGORITHM_SETTINGS}
    if hyperparameters["eval_metric"]:
        params["eval_metric"] = hyperparameters["eval_metric"]
    log.info("Train matrix has %d rows", train_data.num_row())
    if len(evals) > 1:
        log.info("Validation matrix has %d rows", evals[1][0].num_row())
    try:
        booster = xgb.train(params, train_data, num_boost_round=hyperparameters["num_round"], evals=evals,
                            early_stopping_rounds=hyperparameters.get("early_stopping_rounds"),
                            callbacks=[PrintEvaluation()], verbose_eval=False)
    except xgb.core.XGBoostError as exc:
        message = str(exc).splitlines()[0]  # without XGBoost's native stack trace
        if any(error in message for error in CUSTOMER_ERRORS):
            raise UserError(message) from exc
        raise RuntimeError(f"XGB train call failed with exception: {message}") from exc
    model_dir = folder("SM_MODEL_DIR", "model")
    model_dir.mkdir(parents=True, exist_ok=True)
    # XGBoost picks its format from the extension: UBJSON, its own; the contract's name has none.
    saved = model_dir / f"{MODEL_FILE}.ubj"
    booster.save_model(str(saved))
    saved.replace(model_dir / MODEL_FILE)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s:%(levelname)s:%(name)s] %(message)s")
    try:
        train()
    except Exception as exc:
        kind = "ClientError" if isinstance(exc, UserError) else "AlgorithmError"
        traceback.print_exc()
        output = folder("SM_OUTPUT_DIR", "output")
        output.mkdir(parents=True, exist_ok=True)
        (output / "failure").write_text(f"{kind}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
