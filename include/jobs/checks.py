"""Input checks shared by the job scripts.

A bad input ends a script with exit code 1 and ONE message naming the file, the column(s) and
the offending rows (1-based data row numbers), with no traceback: on stderr, and as the
processing job's exit message (/opt/ml/output/message, DescribeProcessingJob's ExitMessage),
"ClientError: <message>" as SageMaker marks a job's bad input, so that a retry is not tried.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

INTEGER_PATTERN = re.compile(r"[+-]?\d+")
# Decimal or scientific notation only: no blanks, "nan", "inf" or "1_000" (all of which float() takes).
NUMBER_PATTERN = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class InvalidInput(Exception):
    """Bad input data or arguments; its message is what the user sees."""


def listing(items: Iterable[object], limit: int = 5) -> str:
    """'12, 40, 41' or '12, 40, 41, 42, 43 and 7 more'."""
    items = list(items)
    shown = ", ".join(str(item) for item in items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def at_rows(rows: Sequence[int]) -> str:
    return f"at row {rows[0]}" if len(rows) == 1 else f"at rows {listing(rows)}"


def bad_values(column: str, problem: str, values: Sequence[str], rows: Sequence[int]) -> str:
    """'column x has <problem> 'a', 'b' at rows 3, 9' (distinct values, first few)."""
    distinct = list(dict.fromkeys(values))
    return f"column {column} has {problem} {listing(repr(value) for value in distinct)} {at_rows(rows)}"


def read_csv_rows(path: Path, header: bool = True) -> tuple[list[str], list[list[str]]]:
    """The header (empty if header=False) and the data rows of a CSV file, every row complete."""
    if not path.is_file():
        raise InvalidInput(f"{path.name}: file not found in {path.parent}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except UnicodeDecodeError as error:
        raise InvalidInput(f"{path.name}: not UTF-8 text (byte {error.start})") from None
    except csv.Error as error:
        raise InvalidInput(f"{path.name}: not a CSV file ({error})") from None
    if not rows:
        raise InvalidInput(f"{path.name}: the file is empty")
    names = rows.pop(0) if header else []
    if not rows:
        raise InvalidInput(f"{path.name}: no data rows")
    width = len(names) if header else len(rows[0])
    ragged = [number for number, row in enumerate(rows, 1) if len(row) != width]
    if ragged:
        expected = "the header has" if header else "the first row has"
        raise InvalidInput(f"{path.name}: wrong number of fields {at_rows(ragged)} ({expected} {width})")
    return names, rows


def check_header(file: str, header: Sequence[str], expected: Sequence[str]) -> None:
    """The header must hold exactly the expected columns, each once (in any order)."""
    problems = []
    duplicated = [name for name in dict.fromkeys(header) if header.count(name) > 1]
    missing = [name for name in expected if name not in header]
    unexpected = [name for name in header if name not in expected]
    if duplicated:
        problems.append(f"duplicate columns {listing(duplicated)}")
    if missing:
        problems.append(f"missing columns {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected columns {listing(unexpected)}")
    if problems:
        raise InvalidInput(f"{file}: " + "; ".join(problems))


def type_problems(column: str, values: Sequence[str], pattern: re.Pattern[str], kind: str) -> list[str]:
    """Messages for blank cells and cells that do not match pattern, in a column of values."""
    problems = []
    blank = [number for number, value in enumerate(values, 1) if not value.strip()]
    wrong = [
        (number, value)
        for number, value in enumerate(values, 1)
        if value.strip() and not pattern.fullmatch(value)
    ]
    if blank:
        problems.append(f"column {column} has blank values {at_rows(blank)}")
    if wrong:
        problems.append(
            bad_values(column, f"non-{kind} values", [value for _, value in wrong], [n for n, _ in wrong])
        )
    return problems


def single_csv(directory: Path, parameter: str) -> Path:
    """The one *.csv file of an input directory (more would mean mixing results up)."""
    if not directory.is_dir():
        raise InvalidInput(f"{parameter}: directory {directory} does not exist")
    files = sorted(directory.glob("*.csv"))
    if len(files) != 1:
        found = f"{len(files)}: {listing(file.name for file in files)}" if files else "none"
        raise InvalidInput(f"{parameter}: expected one .csv file in {directory}, found {found}")
    return files[0]


def write_exit_message(message: str) -> None:
    """The processing container's exit message, when it runs in one (/opt/ml, or the local
    cloud's sandbox standing in for it)."""
    base = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
    if base.is_dir():
        (base / "output").mkdir(exist_ok=True)
        (base / "output" / "message").write_text(message, encoding="utf-8")


def run(main: Callable[[list[str]], None]) -> None:
    """Run a script's main; an InvalidInput becomes its message (stderr, exit message) and exit code 1."""
    try:
        main(sys.argv[1:])
    except InvalidInput as error:
        print(f"error: {error}", file=sys.stderr)
        write_exit_message(f"ClientError: {error}")
        sys.exit(1)
