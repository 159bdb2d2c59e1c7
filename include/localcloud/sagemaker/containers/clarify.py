"""The SageMaker Clarify processing container, run locally: bias analysis as Clarify does it.

Like the real container it reads <base>/processing/input/config/analysis_config.json (Clarify's
analysis configuration format) and the dataset under <base>/processing/input/data, computes the
requested pre-training and post-training bias metrics with smclarify (the open-source code of
Clarify's metrics) and writes <base>/processing/output/analysis.json in Clarify's output format,
plus a readable report (<name>.html and <name>.md) when the config asks for one.

Post-training metrics need the model's predictions. The real Clarify deploys the named model to
a shadow endpoint; here the model is looked up the same way (sagemaker DescribeModel through
boto3, with AWS_ENDPOINT_URL and the region from the job's environment), its model.tar.gz is
read from S3 and the built-in XGBoost model inside predicts locally.

Bad configuration or data ends the job with exit status 1 and one line on stderr naming the field.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import numpy as np
import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError
from sklearn.neighbors import KNeighborsClassifier
from smclarify.bias import metrics as bias_metrics
from smclarify.bias.metrics import common as metrics_common
from smclarify.bias.metrics import posttraining
from smclarify.bias.report import (
    FacetColumn,
    LabelColumn,
    StageType,
    bias_report,
    label_value_or_threshold,
)

if TYPE_CHECKING:
    import xgboost

log = logging.getLogger("clarify")

SUPPORTED_DATASET_TYPES = ("text/csv", "application/jsonlines", "application/x-parquet")
PRE_TRAINING_METRICS = tuple(metric.__name__ for metric in bias_metrics.PRETRAINING_METRICS)
POST_TRAINING_METRICS = tuple(metric.__name__ for metric in bias_metrics.POSTTRAINING_METRICS)
DEFAULT_PROBABILITY_THRESHOLD = 0.5
DEFAULT_REPORT_TITLE = "SageMaker Analysis Report"
XGBOOST_MODEL_FILE = "xgboost-model"
PREDICTED_LABEL = "predicted_label"  # the column of model predictions handed to smclarify

# Fields of Clarify's analysis configuration (schema version 1.0) that this local container
# does not implement: refused with a clear error rather than silently ignored.
UNSUPPORTED_FIELDS = (
    "dataset_uri",
    "segment_config",
    "facet_dataset_uri",
    "facet_headers",
    "predicted_label_dataset_uri",
    "predicted_label_headers",
    "time_series_data_config",
)
KNOWN_FIELDS = (
    "version",
    "dataset_type",
    "headers",
    "label",
    "predicted_label",
    "features",
    "label_values_or_threshold",
    "probability_threshold",
    "facet",
    "excluded_columns",
    "joinsource_name_or_index",
    "group_variable",
    "methods",
    "predictor",
    *UNSUPPORTED_FIELDS,
)
UNSUPPORTED_METHODS = ("shap", "pdp", "asymmetric_shapley_value")
# Predictor fields that would change how the model is called or read; the built-in XGBoost
# model answers one probability per row, which is all this container knows how to read.
UNSUPPORTED_PREDICTOR_FIELDS = (
    "endpoint_name",
    "target_model",
    "label",
    "label_headers",
    "content_template",
    "record_template",
    "time_series_predictor_config",
)
KNOWN_PREDICTOR_FIELDS = (
    "model_name",
    "endpoint_name_prefix",
    "instance_type",
    "initial_instance_count",
    "accelerator_type",
    "content_type",
    "accept_type",
    "probability",
    "custom_attributes",
    *UNSUPPORTED_PREDICTOR_FIELDS,
)


class AnalysisError(Exception):
    """Bad configuration, data or model: the message names the field or file at fault."""


@dataclass(frozen=True)
class Facet:
    column: str
    values: list[Any] | None  # None: one group per distinct value, each against all others


@dataclass(frozen=True)
class Paths:
    """The container contract's locations, under SAGEMAKER_BASE_DIR (standing in for /opt/ml)."""

    config: Path
    data: Path
    output: Path

    @classmethod
    def from_environment(cls) -> Paths:
        base = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
        return cls(
            config=base / "processing" / "input" / "config" / "analysis_config.json",
            data=base / "processing" / "input" / "data",
            output=base / "processing" / "output",
        )


# -- configuration ---------------------------------------------------------------------------
def load_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AnalysisError(f"{path}: analysis configuration not found (processing input 'analysis_config')")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnalysisError(f"{path}: not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise AnalysisError(f"{path}: must hold a JSON object")
    for field in config:
        if field not in KNOWN_FIELDS:
            raise AnalysisError(f"{field}: unknown field of the analysis configuration")
        if field in UNSUPPORTED_FIELDS:
            raise AnalysisError(f"{field}: not supported by the local Clarify container")
    if config.get("version", "1.0") != "1.0":
        raise AnalysisError(f"version: only \"1.0\" is supported, got {config['version']!r}")
    dataset_type = config.get("dataset_type")
    if dataset_type not in SUPPORTED_DATASET_TYPES:
        raise AnalysisError(f"dataset_type: must be one of {', '.join(SUPPORTED_DATASET_TYPES)}; got {dataset_type!r}")
    methods = config.get("methods")
    if not isinstance(methods, dict):
        raise AnalysisError("methods: required, an object with pre_training_bias and/or post_training_bias")
    for method in UNSUPPORTED_METHODS:
        if method in methods:
            raise AnalysisError(f"methods.{method}: not supported by the local Clarify container (bias only)")
    if "pre_training_bias" not in methods and "post_training_bias" not in methods:
        raise AnalysisError("methods: requests no bias analysis (pre_training_bias or post_training_bias)")
    return config


def requested_metrics(methods: dict[str, Any], stage: str, known: tuple[str, ...]) -> list[str] | None:
    """The metric names asked for at one stage, ["all"] for all of them, None if not asked."""
    if stage not in methods:
        return None
    field = f"methods.{stage}.methods"
    section = methods[stage]
    asked = section.get("methods") if isinstance(section, dict) else None
    if asked == "all":
        return ["all"]
    if not isinstance(asked, list) or not asked or not all(isinstance(name, str) for name in asked):
        raise AnalysisError(f"{field}: must be \"all\" or a non-empty list of metric names")
    unknown = [name for name in asked if name not in known]
    if unknown:
        raise AnalysisError(f"{field}: unknown metric(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return list(asked)


def column_name(df: pd.DataFrame, name_or_index: Any, field: str) -> str:
    """A column given by name or (as Clarify allows) by zero-based index."""
    if isinstance(name_or_index, bool) or not isinstance(name_or_index, (str, int)):
        raise AnalysisError(f"{field}: must be a column name or index, got {name_or_index!r}")
    if isinstance(name_or_index, int):
        if not 0 <= name_or_index < len(df.columns):
            raise AnalysisError(f"{field}: column index {name_or_index} out of range (dataset has {len(df.columns)})")
        return str(df.columns[name_or_index])
    if name_or_index not in df.columns:
        raise AnalysisError(f"{field}: column {name_or_index!r} not in dataset columns {list(df.columns)}")
    return name_or_index


def value_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise AnalysisError(f"{field}: must be a non-empty list of values or a threshold")
    if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        raise AnalysisError(f"{field}: values must be strings or numbers, got {value!r}")
    return value


def facets(df: pd.DataFrame, config: dict[str, Any]) -> list[Facet]:
    given = config.get("facet")
    if not isinstance(given, list) or not given:
        raise AnalysisError("facet: required for bias analysis, a list of {name_or_index, value_or_threshold}")
    result = []
    for i, facet in enumerate(given):
        if not isinstance(facet, dict) or "name_or_index" not in facet:
            raise AnalysisError(f"facet[{i}].name_or_index: required")
        column = column_name(df, facet["name_or_index"], f"facet[{i}].name_or_index")
        values = None
        if "value_or_threshold" in facet:
            values = value_list(facet["value_or_threshold"], f"facet[{i}].value_or_threshold")
            require_values_present(as_analysis_column(df[column]), values, f"facet[{i}].value_or_threshold")
        result.append(Facet(column, values))
    return result


def require_values_present(series: pd.Series, values: list[Any], field: str) -> None:
    """A categorical column must hold at least one of the values; else every metric is empty."""
    if metrics_common.series_datatype(series, list(values)) != metrics_common.DataType.CATEGORICAL:
        return  # a threshold on a continuous column
    present = {str(v) for v in series.dropna().unique()}
    if not present & {str(v) for v in values}:
        shown = ", ".join(sorted(present)[:10])
        raise AnalysisError(f"{field}: none of {values} occurs in column {series.name!r} (values: {shown})")


# -- dataset ---------------------------------------------------------------------------------
def dataset_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise AnalysisError(f"{path}: no dataset files (processing input 'dataset')")
    return files


def read_csv(files: list[Path], headers: list[str] | None) -> pd.DataFrame:
    # With headers in the config the CSV has no header row (the built-in algorithms' format);
    # without them the first row of each file names the columns.
    frames = []
    for file in files:
        try:
            frame = pd.read_csv(file, header=None if headers else 0)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise AnalysisError(f"{file}: not a readable CSV dataset: {exc}") from exc
        if headers:
            if len(frame.columns) != len(headers):
                raise AnalysisError(f"headers: {len(headers)} names for {len(frame.columns)} columns in {file}")
            if [str(v) for v in frame.iloc[0]] == headers:
                raise AnalysisError(f"{file}: first row repeats `headers`; with headers the CSV has no header row")
            frame.columns = headers
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def json_path(record: Any, path: str, field: str, where: str) -> Any:
    """A dotted path (Clarify accepts JSONPath; plain member paths are what we support)."""
    value = record
    for part in path.removeprefix("$.").split("."):
        if not isinstance(value, dict) or part not in value:
            raise AnalysisError(f"{field}: path {path!r} not found in {where}")
        value = value[part]
    return value


def read_jsonlines(files: list[Path], config: dict[str, Any], headers: list[str] | None) -> pd.DataFrame:
    features_path, label_path = config.get("features"), config.get("label")
    if not isinstance(features_path, str):
        raise AnalysisError("features: required for application/jsonlines, the path of the feature list")
    if not isinstance(label_path, str):
        raise AnalysisError("label: required for application/jsonlines, the path of the label")
    if not headers:
        raise AnalysisError("headers: required for application/jsonlines (feature names, then the label)")
    rows = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AnalysisError(f"{where}: not JSON: {exc}") from exc
            features = json_path(record, features_path, "features", where)
            if not isinstance(features, list) or len(features) + 1 != len(headers):
                raise AnalysisError(f"headers: {len(headers)} names, {where} has features {features!r} and a label")
            rows.append([*features, json_path(record, label_path, "label", where)])
    return pd.DataFrame(rows, columns=headers)


def read_parquet(files: list[Path], headers: list[str] | None) -> pd.DataFrame:
    frames = []
    for file in files:
        try:
            frame = pd.read_parquet(file)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise AnalysisError(f"{file}: not a readable Parquet dataset: {exc}") from exc
        if headers:
            if len(frame.columns) != len(headers):
                raise AnalysisError(f"headers: {len(headers)} names for {len(frame.columns)} columns in {file}")
            frame.columns = headers
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def read_dataset(path: Path, config: dict[str, Any]) -> pd.DataFrame:
    headers = config.get("headers")
    if headers is not None and (
        not isinstance(headers, list) or not headers or not all(isinstance(h, str) for h in headers)
    ):
        raise AnalysisError("headers: must be a non-empty list of column names")
    if not path.exists():
        raise AnalysisError(f"{path}: dataset not found (processing input 'dataset')")
    files = dataset_files(path)
    dataset_type = config["dataset_type"]
    if dataset_type == "text/csv":
        df = read_csv(files, headers)
    elif dataset_type == "application/jsonlines":
        df = read_jsonlines(files, config, headers)
    else:
        df = read_parquet(files, headers)
    if df.empty:
        raise AnalysisError(f"{path}: the dataset has no rows")
    df.columns = [str(c) for c in df.columns]
    return df


def as_analysis_column(series: pd.Series) -> pd.Series:
    """Label, facet and group columns as smclarify's type rules expect them.

    smclarify cannot read pandas 3's string dtype: text becomes object, numbers written as text
    become numbers. Whole numbers stored as floats (0.0/1.0, e.g. from Parquet) become integers,
    so a 0/1 column is categorical however it was stored.
    """
    if isinstance(series.dtype, pd.StringDtype) or series.dtype == object:
        numbers = pd.to_numeric(series, errors="coerce")
        if numbers.notna().all():
            series = numbers
        else:
            return series.astype(object)
    if pd.api.types.is_float_dtype(series) and series.notna().all() and (series == np.floor(series)).all():
        return series.astype("int64")
    return series


# -- model predictions -----------------------------------------------------------------------
def load_model(predictor: dict[str, Any]) -> xgboost.Booster:
    """The built-in XGBoost model of predictor.model_name: described, downloaded, loaded."""
    import xgboost  # post-training only: 0.4 s of imports that pre-training analyses do without

    model_name = predictor.get("model_name")
    if not isinstance(model_name, str) or not model_name:
        raise AnalysisError("predictor.model_name: required for post-training bias")
    try:
        model = boto3.client("sagemaker").describe_model(ModelName=model_name)
    except ClientError as exc:
        # SageMaker answers a missing model with ValidationException.
        problem = "not found" if exc.response["Error"]["Code"] == "ValidationException" else "not readable"
        raise AnalysisError(f"predictor.model_name: model {model_name!r} {problem}: {exc}") from exc
    except BotoCoreError as exc:
        raise AnalysisError(f"predictor.model_name: cannot describe model {model_name!r}: {exc}") from exc
    container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
    image, model_url = container.get("Image", ""), container.get("ModelDataUrl")
    if "sagemaker-xgboost" not in image:
        raise AnalysisError(
            f"predictor.model_name: model {model_name!r} runs image {image!r}; "
            "the local Clarify predicts with built-in XGBoost models only"
        )
    if not model_url or not model_url.startswith("s3://"):
        raise AnalysisError(f"predictor.model_name: model {model_name!r} has no S3 ModelDataUrl")
    bucket, _, key = model_url.removeprefix("s3://").partition("/")
    try:
        archive = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise AnalysisError(f"predictor.model_name: cannot read {model_url}: {exc}") from exc
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            member = tar.extractfile(XGBOOST_MODEL_FILE)
            model_bytes = member.read() if member else b""
    except (tarfile.TarError, KeyError) as exc:
        raise AnalysisError(f"{model_url}: not a model.tar.gz holding {XGBOOST_MODEL_FILE!r}: {exc}") from exc
    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(model_bytes))
    except xgboost.core.XGBoostError as exc:
        raise AnalysisError(f"{model_url}: {XGBOOST_MODEL_FILE} is not an XGBoost model: {exc}") from exc
    return booster


def predict_labels(booster: xgboost.Booster, features: pd.DataFrame, threshold: float) -> pd.Series:
    """1 where the model's score is over the threshold, else 0 (Clarify's binary rule)."""
    import xgboost

    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise AnalysisError(f"excluded_columns: the model needs numeric features; not numeric: {non_numeric}")
    if booster.num_features() != len(features.columns):
        raise AnalysisError(
            f"predictor.model_name: the model takes {booster.num_features()} features, the dataset "
            f"has {len(features.columns)} besides the label ({list(features.columns)})"
        )
    scores = booster.predict(xgboost.DMatrix(features.to_numpy(dtype=np.float32)))
    if scores.ndim != 1:
        raise AnalysisError("predictor.model_name: the model returns several scores per row; expected one")
    return pd.Series((scores > threshold).astype("int64"), index=features.index, name=PREDICTED_LABEL)


def probability_threshold(config: dict[str, Any]) -> float:
    # Clarify's field is top-level; the SDK's ModelPredictedLabelConfig writes it there.
    threshold = config.get("probability_threshold", DEFAULT_PROBABILITY_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise AnalysisError(f"probability_threshold: must be a number, got {threshold!r}")
    return float(threshold)


def predictions(df: pd.DataFrame, label: str, config: dict[str, Any]) -> pd.Series:
    """The predicted labels: the dataset's predicted_label column, or the model's predictions."""
    if "predicted_label" in config:
        column = column_name(df, config["predicted_label"], "predicted_label")
        return as_analysis_column(df[column]).rename(PREDICTED_LABEL)
    predictor = config.get("predictor")
    if not isinstance(predictor, dict):
        raise AnalysisError("predictor: required for post-training bias (or a predicted_label column)")
    for field in predictor:
        if field == "probability_threshold":
            raise AnalysisError("predictor.probability_threshold: Clarify reads it at the top level of the config")
        if field not in KNOWN_PREDICTOR_FIELDS:
            raise AnalysisError(f"predictor.{field}: unknown field of the predictor section")
        if field in UNSUPPORTED_PREDICTOR_FIELDS:
            raise AnalysisError(f"predictor.{field}: not supported by the local Clarify container")
    if predictor.get("probability", 0) != 0:
        raise AnalysisError("predictor.probability: the built-in XGBoost model answers one score (index 0)")
    excluded = [
        column_name(df, c, "excluded_columns") for c in config.get("excluded_columns") or []
    ]
    features = df.drop(columns=[label, *excluded])
    booster = load_model(predictor)
    return predict_labels(booster, features, probability_threshold(config))


# -- analysis --------------------------------------------------------------------------------
def tree_neighbours(**params: Any) -> KNeighborsClassifier:
    """The k-nearest-neighbour classifier smclarify's FT asks for, searching a k-d tree.

    FT asks for algorithm="auto", which scikit-learn makes a brute-force search above 15 features:
    every row of facet d measured against every row of facet a, time quadratic in the rows (95 s
    for FT alone at 200,000 rows). A k-d tree finds the same k nearest neighbours, in n log n time
    when a few wide columns set the distances, as the claim amounts and premium do here."""
    return KNeighborsClassifier(**{**params, "algorithm": "kd_tree"})


posttraining.KNeighborsClassifier = tree_neighbours  # what smclarify's FT calls


def stage_report(
    df: pd.DataFrame,
    label: str,
    label_values: list[Any],
    facet_list: list[Facet],
    stage: StageType,
    metrics: list[str],
    group: pd.Series | None,
    predicted: pd.Series | None = None,
) -> dict[str, Any]:
    """One stage's section of analysis.json: metrics per facet and facet value."""
    result: dict[str, Any] = {"label": label, "facets": {}}
    for facet in facet_list:
        try:
            result["facets"][facet.column] = bias_report(
                df,
                # smclarify converts threshold values in place: give it copies.
                FacetColumn(facet.column, list(facet.values) if facet.values else None),
                LabelColumn(label, df[label], list(label_values)),
                stage,
                LabelColumn(PREDICTED_LABEL, predicted, list(label_values)) if predicted is not None else None,
                metrics=list(metrics),
                group_variable=group,
            )
        except (ValueError, RuntimeError) as exc:
            raise AnalysisError(f"{stage.value} bias of facet {facet.column!r}: {exc}") from exc
        for entry in result["facets"][facet.column]:
            for metric in entry["metrics"]:
                if "error" in metric:
                    log.warning("%s for %s=%s: %s", metric["name"], facet.column, entry["value_or_threshold"],
                                metric["error"])
    result["label_value_or_threshold"] = label_value_or_threshold(df[label], list(label_values))
    return result


def analyze(config: dict[str, Any], df: pd.DataFrame) -> dict[str, Any]:
    """analysis.json for the configuration and dataset."""
    if "label" not in config:
        raise AnalysisError("label: required for bias analysis")
    if config["dataset_type"] == "application/jsonlines":
        label = str(df.columns[-1])  # the label's header is the last one
    else:
        label = column_name(df, config["label"], "label")
    label_values = value_list(config.get("label_values_or_threshold"), "label_values_or_threshold")
    df = df.assign(**{label: as_analysis_column(df[label])})
    require_values_present(df[label], label_values, "label_values_or_threshold")
    facet_list = facets(df, config)
    df = df.assign(**{f.column: as_analysis_column(df[f.column]) for f in facet_list})
    group = None
    if "group_variable" in config:
        group = as_analysis_column(df[column_name(df, config["group_variable"], "group_variable")])
    if "joinsource_name_or_index" in config:
        df = df.drop(columns=column_name(df, config["joinsource_name_or_index"], "joinsource_name_or_index"))

    methods = config["methods"]
    pre = requested_metrics(methods, "pre_training_bias", PRE_TRAINING_METRICS)
    post = requested_metrics(methods, "post_training_bias", POST_TRAINING_METRICS)
    analysis: dict[str, Any] = {"version": "1.0"}
    if pre is not None:
        log.info("pre-training bias: %s on %d rows", ", ".join(pre), len(df))
        analysis["pre_training_bias_metrics"] = stage_report(
            df, label, label_values, facet_list, StageType.PRE_TRAINING, pre, group
        )
    if post is not None:
        predicted = predictions(df, label, config)
        if "predicted_label" in config:
            df = df.drop(columns=column_name(df, config["predicted_label"], "predicted_label"))
        log.info("post-training bias: %s on %d rows", ", ".join(post), len(df))
        analysis["post_training_bias_metrics"] = stage_report(
            df, label, label_values, facet_list, StageType.POST_TRAINING, post, group, predicted
        )
    return analysis


# -- report ----------------------------------------------------------------------------------
STAGES = (("pre_training_bias_metrics", "Pre-training bias"), ("post_training_bias_metrics", "Post-training bias"))


def metric_rows(analysis: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(stage, facet, facet value, metric, description, value or error) for every metric."""
    rows = []
    for key, stage in STAGES:
        for facet, entries in analysis.get(key, {}).get("facets", {}).items():
            for entry in entries:
                for metric in entry["metrics"]:
                    value = metric["value"]
                    shown = f"{value:.6g}" if isinstance(value, float) else str(value)
                    if "error" in metric:
                        shown = f"error: {metric['error']}"
                    rows.append((stage, facet, entry["value_or_threshold"], metric["name"],
                                 metric["description"], shown))
    return rows


def report_markdown(title: str, analysis: dict[str, Any], summary: list[tuple[str, str]]) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{name}**: {value}" for name, value in summary]
    lines += ["", "| Stage | Facet | Facet value | Metric | Description | Value |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in metric_rows(analysis)]
    return "\n".join(lines) + "\n"


def report_html(title: str, analysis: dict[str, Any], summary: list[tuple[str, str]]) -> str:
    def cells(row: tuple[str, ...], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(cell)}</{tag}>" for cell in row) + "</tr>"

    header = ("Stage", "Facet", "Facet value", "Metric", "Description", "Value")
    items = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(v)}</li>" for n, v in summary)
    body = "\n".join(cells(row, "td") for row in metric_rows(analysis))
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n<ul>{items}</ul>\n"
        f"<table>\n{cells(header, 'th')}\n{body}\n</table></body></html>\n"
    )


def write_report(output: Path, config: dict[str, Any], analysis: dict[str, Any], rows: int) -> list[Path]:
    """<name>.html and <name>.md when the config has a methods.report section, as Clarify does."""
    report = config["methods"].get("report")
    if report is None:
        return []
    name = report.get("name", "report") if isinstance(report, dict) else None
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise AnalysisError(f"methods.report.name: must be a plain file name, got {name!r}")
    title = report.get("title", DEFAULT_REPORT_TITLE)
    some_stage = analysis.get("pre_training_bias_metrics") or analysis["post_training_bias_metrics"]
    summary = [
        ("Dataset", f"{rows} rows ({config['dataset_type']})"),
        ("Label", f"{some_stage['label']} (positive outcome: {some_stage['label_value_or_threshold']})"),
        ("Facets", ", ".join(some_stage["facets"])),
    ]
    if "group_variable" in config:
        summary.append(("Group variable", str(config["group_variable"])))
    if "post_training_bias_metrics" in analysis and "predicted_label" not in config:
        summary.append(("Model", f"{config['predictor']['model_name']} "
                                 f"(probability threshold {probability_threshold(config)})"))
    paths = [output / f"{name}.html", output / f"{name}.md"]
    paths[0].write_text(report_html(str(title), analysis, summary), encoding="utf-8")
    paths[1].write_text(report_markdown(str(title), analysis, summary), encoding="utf-8")
    return paths


# -- entry point -----------------------------------------------------------------------------
def run(paths: Paths) -> Path:
    config = load_config(paths.config)
    df = read_dataset(paths.data, config)
    log.info("dataset: %d rows, %d columns from %s", len(df), len(df.columns), paths.data)
    analysis = analyze(config, df)
    paths.output.mkdir(parents=True, exist_ok=True)
    result = paths.output / "analysis.json"
    result.write_text(json.dumps(analysis, indent=2), encoding="utf-8")
    for path in [result, *write_report(paths.output, config, analysis, len(df))]:
        log.info("wrote %s", path)
    return result


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    # smclarify logs a traceback for each metric it cannot compute; the error is in analysis.json.
    logging.getLogger("smclarify").setLevel(logging.CRITICAL)
    try:
        run(Paths.from_environment())
    except AnalysisError as exc:  # the job's configuration or data: its exit message says so
        print(f"ClientError: {exc}", file=sys.stderr)
        message = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")) / "output" / "message"
        message.parent.mkdir(parents=True, exist_ok=True)
        message.write_text(f"ClientError: {exc}", encoding="utf-8")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
