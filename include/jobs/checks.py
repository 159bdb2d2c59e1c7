"""Input checks shared by the job scripts.

A bad input ends a script with exit code 1 and ONE message naming the file, the column(s) and
the offending rows (1-based data row numbers), with no traceback: on stderr, and as the
processing job's exit message (/opt/ml/output/message, DescribeProcessingJob's ExitMessage),
"ClientError: <message>" as SageMaker marks a job's bad input, so that a retry is not tried. The
message leads with the file and is at most MAX_MESSAGE characters, long lists summarised, so that
it fits whole in a job's FailureReason (1,024 characters).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

INTEGER_PATTERN = re.compile(r"[+-]?\d+")
# Decimal or scientific notation only: no blanks, "nan", "inf" or "1_000" (all of which float() takes).
NUMBER_PATTERN = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
MAX_MESSAGE = 960  # FailureReason's 1,024, less "ClientError: " and room to spare


class InvalidInput(Exception):
    """Bad input data or arguments; its message is what the user sees."""


def listing(items: Iterable[object], limit: int = 5) -> str:
    """'12, 40, 41' or '12, 40, 41, 42, 43 and 7 more'."""
    items = list(items)
    shown = ", ".join(str(item) for item in items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def row_ranges(rows: Sequence[int], limit: int = 5) -> str:
    """'3, 9, 5001–5020' (runs of three or more rows as ranges), or '3, 9, 12–15, 20, 31 and 40 more rows'."""
    runs: list[list[int]] = []
    for row in sorted(set(rows)):
        if runs and row == runs[-1][1] + 1:
            runs[-1][1] = row
        else:
            runs.append([row, row])
    runs = [part for first, last in runs for part in ([[first, first], [last, last]] if last == first + 1 else [[first, last]])]
    shown = ", ".join(str(first) if first == last else f"{first}–{last}" for first, last in runs[:limit])
    rest = sum(last - first + 1 for first, last in runs[limit:])
    return f"{shown} and {rest} more rows" if rest else shown


def at_rows(rows: Sequence[int]) -> str:
    return f"at row {rows[0]}" if len(set(rows)) == 1 else f"at rows {row_ranges(rows)}"


def bad_values(column: str, problem: str, values: Sequence[str], rows: Sequence[int]) -> str:
    """'column x has <problem> 'a', 'b' at rows 3, 9' (distinct values, first few)."""
    distinct = list(dict.fromkeys(values))
    return f"column {column} has {problem} {listing(repr(value) for value in distinct)} {at_rows(rows)}"


def csv_rows(path: Path, header: bool = True) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header (empty if header=False) and an iterator of (data row number, row), streamed in
    bounded memory. Empty lines are skipped; rows with another number of fields than the header
    (or the first row) are not yielded but named, all of them, in the InvalidInput raised when
    the iteration ends, as is a file without data rows. A byte that is not UTF-8 or a malformed
    CSV raises InvalidInput when it is reached."""
    if not path.is_file():
        raise InvalidInput(f"{path.name}: file not found in {path.parent}")
    records = _records(path, header)
    first = next(records, None)
    if first is None:
        raise InvalidInput(f"{path.name}: the file is empty")
    names = first if header else []
    data = records if header else itertools.chain([first], records)
    return names, _complete_rows(path.name, data, len(first), header)


def _complete_rows(name: str, rows: Iterator[list[str]], width: int,
                   header: bool) -> Iterator[tuple[int, list[str]]]:
    ragged: list[int] = []
    number = 0
    for number, row in enumerate(rows, 1):
        if len(row) == width:
            yield number, row
        else:
            ragged.append(number)
    if number == 0:
        raise InvalidInput(f"{name}: no data rows")
    if ragged:
        expected = "the header has" if header else "the first row has"
        raise InvalidInput(f"{name}: wrong number of fields {at_rows(ragged)} ({expected} {width})")


def _records(path: Path, header: bool) -> Iterator[list[str]]:
    """The non-empty CSV records of a file, its lines decoded one at a time (a UTF-8 file never
    has a newline byte inside a character)."""
    with path.open("rb") as handle:
        def lines() -> Iterator[str]:
            offset = 0
            for raw in handle:
                try:
                    yield raw.decode("utf-8-sig" if offset == 0 else "utf-8")
                except UnicodeDecodeError as error:
                    at = offset + error.start
                    handle.seek(0)
                    where = undecodable_cell(handle.read(at), at, header)
                    raise InvalidInput(f"{path.name}: not UTF-8 text {where}") from None
                offset += len(raw)

        try:
            yield from (row for row in csv.reader(lines()) if row)
        except csv.Error as error:
            raise InvalidInput(f"{path.name}: not a CSV file ({error})") from None


def read_csv_rows(path: Path, header: bool = True) -> tuple[list[str], list[list[str]]]:
    """The header (empty if header=False) and the data rows of a CSV file, every row complete."""
    names, rows = csv_rows(path, header)
    return names, [row for _, row in rows]


def undecodable_cell(data: bytes, offset: int, header: bool) -> str:
    """Where the byte at `offset` is: 'at row 17, column incident_type (byte 3138)'."""
    before = data[:offset].decode("utf-8-sig", errors="replace")
    # A mark where the byte is: the last record read is the one holding it.
    records = [row for row in csv.reader(io.StringIO(before + "\x00", newline=""))]
    earlier = [row for row in records[:-1] if row]
    field = len(records[-1]) - 1
    if header and not earlier:
        return f"in the header, column {field + 1} (byte {offset})"
    names = earlier[0] if header else []
    column = names[field] if field < len(names) else f"{field + 1}"
    row = len(earlier) if header else len(earlier) + 1
    return f"at row {row}, column {column} (byte {offset})"


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
    blank = [number for number, value in enumerate(values, 1) if not value.strip()]
    problems = [f"column {column} has blank values {at_rows(blank)}"] if blank else []
    return problems + wrong_type_problems(column, values, pattern, kind)


def wrong_type_problems(column: str, values: Sequence[str], pattern: re.Pattern[str], kind: str) -> list[str]:
    """The message for the non-blank cells of a column that do not match pattern, if any."""
    wrong = [
        (number, value)
        for number, value in enumerate(values, 1)
        if value.strip() and not pattern.fullmatch(value)
    ]
    if not wrong:
        return []
    return [bad_values(column, f"non-{kind} values", [value for _, value in wrong], [n for n, _ in wrong])]


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
        message = bounded(str(error))
        print(f"error: {message}", file=sys.stderr)
        write_exit_message(f"ClientError: {message}")
        sys.exit(1)


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """The message, its end cut if it is longer than `limit` (its start names the file)."""
    return message if len(message) <= limit else message[: limit - 1] + "…"
