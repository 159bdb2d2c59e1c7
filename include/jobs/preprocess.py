"""The reference Data Wrangler flow for the raw claims or customers CSV (a processing job script).

    python3 preprocess.py --dataset claims|customers [--input-dir DIR] [--output-dir DIR]
                          [--event-time EPOCH_SECONDS] [--customers-dir DIR]

Reads <input-dir>/<dataset>.csv, checks every cell against schema.py (and, with --customers-dir,
that every claim's policy has its customer in <customers-dir>/customers.csv), and writes
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


BLANKS_LISTED_BY_COLUMN = 3  # blanks in more columns than this are summarised by row


def blank_problems(raw_columns: tuple[schema.RawColumn, ...], values: dict[str, list[str]]) -> list[str]:
    """Blank cells, by column when few columns have them, else summarised: '20 blank rows
    (5001–5020)' when whole rows are blank, 'blank values in 17 columns (a, b, ...) at rows ...'."""
    blank_rows = {
        column.name: [n for n, cell in enumerate(values[column.name], 1) if not cell.strip()]
        for column in raw_columns
    }
    blank_rows = {name: rows for name, rows in blank_rows.items() if rows}
    if len(blank_rows) <= BLANKS_LISTED_BY_COLUMN:
        return [f"column {name} has blank values {checks.at_rows(rows)}" for name, rows in blank_rows.items()]
    rows = sorted({row for numbers in blank_rows.values() for row in numbers})
    whole = [row for row in rows if all(row in numbers for numbers in blank_rows.values())]
    if len(blank_rows) == len(raw_columns) and whole == rows:
        noun = "blank row" if len(rows) == 1 else "blank rows"
        return [f"{len(rows)} {noun} ({checks.row_ranges(rows)})"]
    return [
        f"blank values in {len(blank_rows)} columns ({checks.listing(blank_rows)}) {checks.at_rows(rows)}"
    ]


def validate(file: str, raw_columns: tuple[schema.RawColumn, ...], values: dict[str, list[str]]) -> None:
    """Every problem of the file in one InvalidInput: blanks, types, categories, duplicate ids."""
    problems = blank_problems(raw_columns, values)
    for column in raw_columns:
        cells = values[column.name]
        if column.kind == schema.CATEGORY:
            unknown = [
                (n, cell)
                for n, cell in enumerate(cells, 1)
                if cell.strip() and column.normalize(cell) not in column.levels
            ]
            if unknown:
                message = checks.bad_values(
                    column.name, "unknown values", [cell for _, cell in unknown], [n for n, _ in unknown]
                )
                problems.append(f"{message} (allowed: {', '.join(column.categories)})")
        else:
            problems += checks.wrong_type_problems(column.name, cells, *TYPE_PATTERNS[column.kind])
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


def orphan_problems(identifiers: list[str], customers_dir: Path) -> list[str]:
    """Claims whose policy has no customer in customers.csv: the join would give them no
    customer features. A customers file that cannot be read is its own job's to report."""
    try:
        header, rows = checks.read_csv_rows(customers_dir / "customers.csv")
    except InvalidInput:
        return []
    if schema.RECORD_IDENTIFIER not in header:
        return []
    index = header.index(schema.RECORD_IDENTIFIER)
    customers = {row[index].strip() for row in rows}
    orphans = [(n, identifier) for n, identifier in enumerate(identifiers, 1) if identifier.strip() not in customers]
    if not orphans:
        return []
    policies = checks.listing(identifier for _, identifier in orphans)
    noun = "policy" if len(orphans) == 1 else "policies"
    return [
        f"column {schema.RECORD_IDENTIFIER} has {len(orphans)} {noun} without a customer in customers.csv: "
        f"{policies} {checks.at_rows([n for n, _ in orphans])}"
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


def preprocess(
    dataset: str, input_dir: Path, output_dir: Path, event_time: float, customers_dir: Path | None = None
) -> Path:
    """Validate and transform <input_dir>/<dataset>.csv into <output_dir>/<dataset>.csv."""
    raw_columns = schema.RAW_COLUMNS[dataset]
    source = input_dir / f"{dataset}.csv"
    header, rows = checks.read_csv_rows(source)
    checks.check_header(source.name, header, [column.name for column in raw_columns])
    values = {name: [row[index] for row in rows] for index, name in enumerate(header)}
    validate(source.name, raw_columns, values)
    if customers_dir is not None:
        if problems := orphan_problems(values[schema.RECORD_IDENTIFIER], customers_dir):
            raise InvalidInput(f"{source.name}: " + "; ".join(problems))

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
    parser.add_argument(
        "--customers-dir", type=Path, default=None,
        help="the raw customers.csv's directory: every claim's policy must have its customer there",
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
    target = preprocess(args.dataset, args.input_dir, args.output_dir, args.event_time, args.customers_dir)
    print(f"wrote {target} ({len(schema.COLUMNS[args.dataset])} columns)")


if __name__ == "__main__":
    checks.run(main)
