"""Split the dataset query's result into train, validation and test sets (a processing job script).

    python3 create_dataset.py [--input-dir DIR] [--output-dir DIR] [--test-fraction 0.2]
                              [--validation-fraction 0.2] [--seed 0] [--balance-facet false]

Reads the one *.csv in <input-dir> (the Athena result: a header row naming
schema.DATASET_COLUMNS, one row per policy), splits it stratified on the label (first the test set, a test fraction of all
rows, then the validation set, a validation fraction of the rest) and writes, label first and
without header (the built-in XGBoost CSV contract):
<output-dir>/train/train.csv, validation/validation.csv, test/test.csv, and stats/stats.json
(rows and positives per split; synthetic_rows of the training set).

--balance-facet true mitigates bias as the reference does: SMOTE on the facet adds synthetic rows
to the training set only (see balance.py); validation and test stay as drawn.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import checks
import numpy as np
import pandas as pd
import schema
from checks import InvalidInput
from sklearn.model_selection import train_test_split

BASE_DIR = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))


def read_dataset(path: Path, header: bool) -> pd.DataFrame:
    """A dataset CSV (schema.DATASET_COLUMNS: label 0/1 first, then numeric features) as a frame.

    header=True: the file names its columns (any order); False: label first, schema order.
    Integer columns come back as int64, others as float64. pandas' parser reads it into numeric
    columns; a file it cannot read as clean numbers is read again with every cell checked, so the
    message names each problem (only then are its cells held as text).
    """
    if header:
        names, _ = checks.csv_rows(path)
        checks.check_header(path.name, names, schema.DATASET_COLUMNS)
    try:
        dataset = pd.read_csv(path, header=0 if header else None, encoding="utf-8-sig",
                              names=None if header else list(schema.DATASET_COLUMNS))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return read_checked_dataset(path, header)
    if not clean_numbers(dataset):
        return read_checked_dataset(path, header)
    if list(dataset.columns) != list(schema.DATASET_COLUMNS):
        dataset = dataset[list(schema.DATASET_COLUMNS)]
    dataset[schema.LABEL] = dataset[schema.LABEL].astype("int64")
    return dataset


def clean_numbers(dataset: pd.DataFrame) -> bool:
    """Whether every cell is a finite number and every label 0 or 1 (column by column: no copy
    of the whole frame)."""
    return len(dataset) > 0 and all(
        pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        and bool(np.isfinite(column.to_numpy()).all())
        for _, column in dataset.items()
    ) and bool(dataset[schema.LABEL].isin((0, 1)).all())


def read_checked_dataset(path: Path, header: bool) -> pd.DataFrame:
    """read_dataset with every cell checked as text: InvalidInput naming every problem."""
    names, rows = checks.read_csv_rows(path, header)
    if header:
        checks.check_header(path.name, names, schema.DATASET_COLUMNS)
        positions = [names.index(column) for column in schema.DATASET_COLUMNS]
        rows = [[row[position] for position in positions] for row in rows]
    elif len(rows[0]) != len(schema.DATASET_COLUMNS):
        raise InvalidInput(
            f"{path.name}: {len(rows[0])} columns, expected {len(schema.DATASET_COLUMNS)} "
            f"({schema.LABEL} first, then the features in schema order)"
        )
    problems = []
    for index, column in enumerate(schema.DATASET_COLUMNS):
        values = [row[index] for row in rows]
        problems += checks.type_problems(column, values, checks.NUMBER_PATTERN, "numeric")
    labels = [row[0] for row in rows]
    not_binary = [
        number
        for number, value in enumerate(labels, 1)
        if checks.NUMBER_PATTERN.fullmatch(value) and float(value) not in (0.0, 1.0)
    ]
    if not_binary:
        problems.append(
            checks.bad_values(
                schema.LABEL, "values other than 0 and 1", [labels[n - 1] for n in not_binary], not_binary
            )
        )
    if problems:
        raise InvalidInput(f"{path.name}: " + "; ".join(problems))
    dataset = pd.DataFrame(rows, columns=list(schema.DATASET_COLUMNS)).apply(pd.to_numeric)
    dataset[schema.LABEL] = dataset[schema.LABEL].astype("int64")
    return dataset


def split_off(
    dataset: pd.DataFrame, fraction: float, parameter: str, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, part): part is `fraction` of the rows, stratified on the label."""
    if not 0 < fraction < 1:
        raise InvalidInput(f"{parameter} must be between 0 and 1 (exclusive), got {fraction}")
    try:
        rest, part = train_test_split(
            dataset, test_size=fraction, stratify=dataset[schema.LABEL], random_state=seed
        )
    except ValueError as error:
        positives = int(dataset[schema.LABEL].sum())
        raise InvalidInput(
            f"{parameter} {fraction} cannot split {len(dataset)} rows ({positives} positives) "
            f"into two stratified parts: {error}"
        ) from None
    return rest, part


def split(
    dataset: pd.DataFrame, test_fraction: float, validation_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """The train, validation and test sets; each must hold both labels."""
    rest, test = split_off(dataset, test_fraction, "--test-fraction", seed)
    train, validation = split_off(rest, validation_fraction, "--validation-fraction", seed)
    splits = {"train": train, "validation": validation, "test": test}
    for name, part in splits.items():
        if part[schema.LABEL].nunique() < 2:
            raise InvalidInput(
                f"--test-fraction {test_fraction} and --validation-fraction {validation_fraction} leave the "
                f"{name} set ({len(part)} rows) without one of the labels: "
                f"{len(dataset)} rows with {int(dataset[schema.LABEL].sum())} positives are too few"
            )
    return splits


def write_splits(splits: dict[str, pd.DataFrame], output_dir: Path, synthetic_rows: int = 0) -> dict:
    """Write each split as <name>/<name>.csv plus stats/stats.json; return the stats."""
    stats = {
        name: {"rows": len(part), "positives": int(part[schema.LABEL].sum())} for name, part in splits.items()
    }
    stats["train"]["synthetic_rows"] = synthetic_rows
    for name, part in splits.items():
        folder = output_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        part.to_csv(folder / f"{name}.csv", header=False, index=False)
    (output_dir / "stats").mkdir(parents=True, exist_ok=True)
    (output_dir / "stats" / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input-dir", type=Path, default=BASE_DIR / "processing" / "input" / "dataset")
    parser.add_argument("--output-dir", type=Path, default=BASE_DIR / "processing" / "output")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--balance-facet", default="false")
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise InvalidInput(f"--seed must be >= 0, got {args.seed}")
    # A DAG param renders as Python's True / False.
    if args.balance_facet.lower() not in ("true", "false"):
        raise InvalidInput(f"--balance-facet must be true or false, got {args.balance_facet!r}")
    args.balance_facet = args.balance_facet.lower() == "true"
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    dataset = read_dataset(checks.single_csv(args.input_dir, "--input-dir"), header=True)
    splits = split(dataset, args.test_fraction, args.validation_fraction, args.seed)
    drawn = len(splits["train"])
    if args.balance_facet:
        import balance  # scikit-learn's nearest neighbours: 0.4 s of imports, only when asked

        splits["train"] = balance.balance_facet(splits["train"], args.seed)
    stats = write_splits(splits, args.output_dir, synthetic_rows=len(splits["train"]) - drawn)
    print(json.dumps(stats))


if __name__ == "__main__":
    checks.run(main)
