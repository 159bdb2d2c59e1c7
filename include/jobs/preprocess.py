"""The reference Data Wrangler flow for the raw claims or customers CSV (a processing job script).

    python3 preprocess.py --dataset claims|customers [--input-dir DIR] [--output-dir DIR]
                          [--event-time EPOCH_SECONDS] [--customers-dir DIR] [--parts N]

Reads <input-dir>/<dataset>.csv, checks every cell against schema.py (and, with --customers-dir,
that every claim's policy has its customer in <customers-dir>/customers.csv), and writes
<output-dir>/<dataset>-part-00000.csv ... (N files, the rows dealt in turn, so that the ingest
job's instances each get one): header, then the processed columns in schema order (one-hot and
ordinal codes as integers, claim amounts as floats, event_time as epoch seconds). It streams:
memory does not grow with the file. Bad input writes nothing and exits 1 with one message naming
the file, the column(s) and the rows.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from contextlib import ExitStack
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


class RowTransform:
    """One raw row -> its processed row (the flow's transforms, in schema.COLUMNS order), or None
    when a cell fails its check (blank, wrong type, unknown category)."""

    def __init__(self, raw_columns: tuple[schema.RawColumn, ...], header: list[str], event_time: float) -> None:
        self.columns = [(column, header.index(column.name), {level: code for code, level in enumerate(column.levels)})
                        for column in raw_columns]
        self.event_time = event_time

    def __call__(self, row: list[str]) -> list | None:
        kept: list = []
        one_hot: list[int] = []
        for column, index, codes in self.columns:
            cell = row[index]
            if column.kind == schema.CATEGORY:
                level = column.normalize(cell)
                if level not in codes:
                    return None
                if column.encoding == schema.KEEP:
                    kept.append(level)
                elif column.encoding == schema.ORDINAL:
                    kept.append(codes[level])
                elif column.encoding == schema.ONE_HOT:
                    one_hot += [int(level == wanted) for wanted in column.one_hot_columns.values()]
            elif not TYPE_PATTERNS[column.kind][0].fullmatch(cell):
                return None
            elif column.encoding == schema.KEEP:
                kept.append(int(cell) if column.kind == schema.INTEGER else float(cell))
        return [*kept, *one_hot, self.event_time]


def part_files(output_dir: Path, dataset: str, parts: int) -> list[Path]:
    """The processed files of a dataset: as many as the ingest job has instances, so that its
    ShardedByS3Key input gives each instance one (keys sort in part order)."""
    return [output_dir / f"{dataset}-part-{part:05d}.csv" for part in range(parts)]


def customer_ids(customers_dir: Path) -> set[str] | None:
    """The policies of the raw customers.csv; None when it cannot be read (its own job reports it)."""
    try:
        header, rows = checks.csv_rows(customers_dir / "customers.csv")
        if schema.RECORD_IDENTIFIER not in header:
            return None
        index = header.index(schema.RECORD_IDENTIFIER)
        return {row[index].strip() for _, row in rows}
    except InvalidInput:
        return None


def preprocess(
    dataset: str, input_dir: Path, output_dir: Path, event_time: float, customers_dir: Path | None = None,
    parts: int = 1,
) -> list[Path]:
    """Validate and transform <input_dir>/<dataset>.csv into `parts` files (rows dealt in turn),
    streamed: a file that passes every check is never held whole. At the first bad row the file is
    read again whole, to name all its problems in one message; nothing is left written."""
    raw_columns = schema.RAW_COLUMNS[dataset]
    source = input_dir / f"{dataset}.csv"
    header, rows = checks.csv_rows(source)
    checks.check_header(source.name, header, [column.name for column in raw_columns])
    customers = customer_ids(customers_dir) if customers_dir is not None else None
    identifier_index = header.index(schema.RECORD_IDENTIFIER)
    transform = RowTransform(raw_columns, header, event_time)
    targets = part_files(output_dir, dataset, parts)
    # Written aside then renamed, so a failure never leaves a partial file behind.
    partials = [target.with_name(f".{target.name}.partial") for target in targets]
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    try:
        with ExitStack() as files:
            writers = [csv.writer(files.enter_context(path.open("w", newline=""))) for path in partials]
            for writer in writers:
                writer.writerow(schema.COLUMNS[dataset])
            for number, row in rows:
                processed = transform(row)
                identifier = int(row[identifier_index]) if processed else None
                if identifier is None or identifier in seen or (
                        customers is not None and row[identifier_index].strip() not in customers):
                    raise_problems(source, raw_columns, customers_dir)
                seen.add(identifier)
                writers[(number - 1) % parts].writerow(processed)
    except BaseException:
        for path in partials:
            path.unlink(missing_ok=True)
        if created:
            output_dir.rmdir()
        raise
    for partial, target in zip(partials, targets, strict=True):
        partial.replace(target)
    return targets


def raise_problems(source: Path, raw_columns: tuple[schema.RawColumn, ...], customers_dir: Path | None) -> None:
    """Every problem of a file that failed a check, in one InvalidInput (the file read whole)."""
    header, rows = checks.read_csv_rows(source)
    values = {name: [row[index] for row in rows] for index, name in enumerate(header)}
    validate(source.name, raw_columns, values)
    if customers_dir is not None:
        if problems := orphan_problems(values[schema.RECORD_IDENTIFIER], customers_dir):
            raise InvalidInput(f"{source.name}: " + "; ".join(problems))
    raise RuntimeError(f"{source.name}: a row failed the streamed checks, yet the whole file passes them")


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
    parser.add_argument("--parts", type=int, default=1, help="processed files to write (rows dealt in turn)")
    parser.add_argument(
        "--customers-dir", type=Path, default=None,
        help="the raw customers.csv's directory: every claim's policy must have its customer there",
    )
    args = parser.parse_args(argv)
    if args.event_time is None:
        args.event_time = time.time()
    if args.parts < 1:
        raise InvalidInput(f"--parts must be at least 1, got {args.parts}")
    if not math.isfinite(args.event_time) or args.event_time < 0:
        raise InvalidInput(
            f"--event-time must be epoch seconds (a finite number >= 0), got {args.event_time}"
        )
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    targets = preprocess(args.dataset, args.input_dir, args.output_dir, args.event_time, args.customers_dir,
                         args.parts)
    print(f"wrote {len(targets)} files to {args.output_dir} ({len(schema.COLUMNS[args.dataset])} columns)")


if __name__ == "__main__":
    checks.run(main)
