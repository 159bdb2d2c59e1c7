"""The reference Data Wrangler flow for the raw claims or customers CSV (a processing job script).

    python3 preprocess.py --dataset claims|customers [--input-dir DIR] [--output-dir DIR]
                          [--event-time EPOCH_SECONDS]

Reads <input-dir>/<dataset>.csv, checks every cell against schema.py, and writes
<output-dir>/<dataset>.csv: header, then the processed columns in schema order (one-hot and
ordinal codes as integers, claim amounts as floats, event_time as epoch seconds). Bad input
writes nothing and exits 1 with one message naming the file, the column(s) and the rows.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from pathlib import Path

import checks
import schema
from checks import InvalidInput

BASE_DIR = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
TYPE_PATTERNS = {
    schema.INTEGER: (checks.INTEGER_PATTERN, "integer"),
    schema.NUMBER: (checks.NUMBER_PATTERN, "numeric"),
}


def validate(file: str, raw_columns: tuple[schema.RawColumn, ...], values: dict[str, list[str]]) -> None:
    """Every problem of the file in one InvalidInput: types, blanks, categories, duplicate ids."""
    problems = []
    for column in raw_columns:
        cells = values[column.name]
        if column.kind == schema.CATEGORY:
            unknown = [
                (n, cell) for n, cell in enumerate(cells, 1) if column.normalize(cell) not in column.levels
            ]
            if unknown:
                message = checks.bad_values(
                    column.name, "unknown values", [cell for _, cell in unknown], [n for n, _ in unknown]
                )
                problems.append(f"{message} (allowed: {', '.join(column.categories)})")
        else:
            problems += checks.type_problems(column.name, cells, *TYPE_PATTERNS[column.kind])
    if not problems:
        problems += duplicate_problems(values[schema.RECORD_IDENTIFIER])
    if problems:
        raise InvalidInput(f"{file}: " + "; ".join(problems))


def duplicate_problems(identifiers: list[str]) -> list[str]:
    rows_by_id: dict[int, list[int]] = {}
    for number, identifier in enumerate(identifiers, 1):
        rows_by_id.setdefault(int(identifier), []).append(number)
    duplicates = {identifier: rows for identifier, rows in rows_by_id.items() if len(rows) > 1}
    if not duplicates:
        return []
    rows = sorted(number for numbers in duplicates.values() for number in numbers)
    return [
        f"column {schema.RECORD_IDENTIFIER} has duplicate values {checks.listing(duplicates)} "
        f"{checks.at_rows(rows)}"
    ]


def transform(
    raw_columns: tuple[schema.RawColumn, ...], values: dict[str, list[str]], event_time: float
) -> dict[str, list]:
    """Processed column name -> list of values: the flow's transforms over validated raw values."""
    processed: dict[str, list] = {}
    for column in raw_columns:
        cells = values[column.name]
        if column.encoding == schema.KEEP:
            convert = {schema.INTEGER: int, schema.NUMBER: float, schema.CATEGORY: column.normalize}[
                column.kind
            ]
            processed[column.name] = [convert(cell) for cell in cells]
        elif column.encoding == schema.ORDINAL:
            processed[column.name] = [column.levels.index(column.normalize(cell)) for cell in cells]
        elif column.encoding == schema.ONE_HOT:
            normalized = [column.normalize(cell) for cell in cells]
            for name, level in column.one_hot_columns.items():
                processed[name] = [int(value == level) for value in normalized]
    processed[schema.EVENT_TIME] = [event_time] * len(values[schema.RECORD_IDENTIFIER])
    return processed


def preprocess(dataset: str, input_dir: Path, output_dir: Path, event_time: float) -> Path:
    """Validate and transform <input_dir>/<dataset>.csv into <output_dir>/<dataset>.csv."""
    raw_columns = schema.RAW_COLUMNS[dataset]
    source = input_dir / f"{dataset}.csv"
    header, rows = checks.read_csv_rows(source)
    checks.check_header(source.name, header, [column.name for column in raw_columns])
    values = {name: [row[index] for row in rows] for index, name in enumerate(header)}
    validate(source.name, raw_columns, values)

    processed = transform(raw_columns, values, event_time)
    columns = list(schema.COLUMNS[dataset])
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{dataset}.csv"
    # Written aside then renamed, so a failure never leaves a partial file behind.
    partial = output_dir / f".{dataset}.csv.partial"
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*(processed[name] for name in columns), strict=True))
    partial.replace(target)
    return target


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, choices=sorted(schema.RAW_COLUMNS))
    parser.add_argument("--input-dir", type=Path, default=BASE_DIR / "processing" / "input" / "raw")
    parser.add_argument("--output-dir", type=Path, default=BASE_DIR / "processing" / "output")
    parser.add_argument(
        "--event-time", type=float, default=None, help="epoch seconds for every record (default: now)"
    )
    args = parser.parse_args(argv)
    if args.event_time is None:
        args.event_time = time.time()
    if not math.isfinite(args.event_time) or args.event_time < 0:
        raise InvalidInput(
            f"--event-time must be epoch seconds (a finite number >= 0), got {args.event_time}"
        )
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    target = preprocess(args.dataset, args.input_dir, args.output_dir, args.event_time)
    print(f"wrote {target} ({len(schema.COLUMNS[args.dataset])} columns)")


if __name__ == "__main__":
    checks.run(main)
