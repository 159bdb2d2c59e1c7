"""create_dataset.py: stratified, deterministic train/validation/test split of the Athena result."""

from __future__ import annotations

import json
from pathlib import Path

import create_dataset
import pytest
import schema
from checks import InvalidInput
from sklearn.model_selection import train_test_split

from tests.jobs.conftest import read_csv, write_csv


def split_rows(output: Path) -> dict[str, list[list[str]]]:
    return {name: read_csv(output / name / f"{name}.csv") for name in ("train", "validation", "test")}


def test_split_sizes_stratification_and_format(run_job, athena_result, tmp_path):
    process = run_job("create_dataset", "--input-dir", athena_result, "--output-dir", tmp_path / "out")
    assert process.returncode == 0, process.stderr
    splits = split_rows(tmp_path / "out")
    assert {name: len(rows) for name, rows in splits.items()} == {
        "train": 3200,
        "validation": 800,
        "test": 1000,
    }
    positives = {name: sum(row[0] == "1" for row in rows) for name, rows in splits.items()}
    assert positives == {"train": 105, "validation": 26, "test": 33}  # 3.3 % in each: stratified
    assert all(
        len(row) == 46 and row[0] in ("0", "1") for rows in splits.values() for row in rows
    )  # no header
    stats = json.loads((tmp_path / "out" / "stats" / "stats.json").read_text())
    expected = {name: {"rows": len(rows), "positives": positives[name]} for name, rows in splits.items()}
    expected["train"]["synthetic_rows"] = 0
    assert stats == expected

    # Every row of the result lands in exactly one split, unchanged.
    source = read_csv(athena_result / "0f3c-query-id.csv")[1:]
    assert sorted(row for rows in splits.values() for row in rows) == sorted(source)


def test_test_set_is_the_reference_80_20_split(athena_result):
    dataset = create_dataset.read_dataset(athena_result / "0f3c-query-id.csv", header=True)
    splits = create_dataset.split(dataset, 0.2, 0.2, seed=0)
    _, reference_test = train_test_split(
        dataset, test_size=0.2, stratify=dataset[schema.LABEL], random_state=0
    )
    assert splits["test"].index.tolist() == reference_test.index.tolist()


def test_deterministic_for_a_seed(athena_result, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        create_dataset.main(
            ["--input-dir", str(athena_result), "--output-dir", str(tmp_path / name), "--seed", str(seed)]
        )
    assert split_rows(tmp_path / "a") == split_rows(tmp_path / "b")
    assert split_rows(tmp_path / "a")["test"] != split_rows(tmp_path / "c")["test"]


def test_athena_style_quoted_csv_with_columns_in_any_order(run_job, tmp_path):
    header = list(reversed(schema.DATASET_COLUMNS))
    rows = []
    for index in range(40):
        record = dict.fromkeys(schema.FEATURE_COLUMNS, "0.5")
        record[schema.LABEL] = "1" if index % 4 == 0 else "0"
        rows.append([record[column] for column in header])
    path = tmp_path / "in" / "result.csv"
    path.parent.mkdir()
    path.write_text("\n".join(",".join(f'"{cell}"' for cell in row) for row in [header, *rows]) + "\n")
    process = run_job(
        "create_dataset", "--input-dir", path.parent, "--output-dir", tmp_path / "out",
        "--test-fraction", 0.25, "--validation-fraction", 0.25,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    splits = split_rows(tmp_path / "out")
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 22, "validation": 8, "test": 10}
    assert splits["test"][0][1:] == ["0.5"] * 45  # label first, features in schema order


def small_dataset(rows: int = 20, positives: int = 5) -> list[list[object]]:
    return [list(schema.DATASET_COLUMNS)] + [
        [int(index < positives), *range(len(schema.FEATURE_COLUMNS))] for index in range(rows)
    ]


BAD = {
    "test fraction 0": (
        ["--test-fraction", 0],
        "--test-fraction must be between 0 and 1 (exclusive), got 0.0",
    ),
    "validation fraction 1": (
        ["--validation-fraction", 1],
        "--validation-fraction must be between 0 and 1 (exclusive), got 1.0",
    ),
    "empty train set": (["--test-fraction", 0.99], "--test-fraction 0.99 cannot split 20 rows (5 positives)"),
    "empty validation set": (
        ["--validation-fraction", 0.01],
        "--validation-fraction 0.01 cannot split 16 rows (4 positives)",
    ),
    "a split without positives": (
        ["--test-fraction", 0.1, "--validation-fraction", 0.1],
        "leave the test set (2 rows) without one of the labels",
    ),
    "negative seed": (["--seed", -1], "--seed must be >= 0, got -1"),
    "balance-facet not a boolean": (["--balance-facet", "yes"], "--balance-facet must be true or false, got 'yes'"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_parameters_are_refused_by_name(tmp_path, case):
    arguments, message = BAD[case]
    write_csv(tmp_path / "in" / "result.csv", small_dataset())
    with pytest.raises(InvalidInput) as refused:
        create_dataset.main(
            ["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), *map(str, arguments)]
        )
    assert message in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_bad_result_file_exits_1_with_one_message(run_job, tmp_path):
    rows = small_dataset()
    rows[3][schema.DATASET_COLUMNS.index("customer_age")] = ""  # a policy the LEFT JOIN found no customer for
    rows[5][0] = "2"
    write_csv(tmp_path / "in" / "result.csv", rows)
    process = run_job("create_dataset", "--input-dir", tmp_path / "in", "--output-dir", tmp_path / "out")
    assert (process.returncode, process.stderr) == (
        1,
        "error: result.csv: column customer_age has blank values at row 3; "
        "column fraud has values other than 0 and 1 '2' at row 5\n",
    )
    assert not (tmp_path / "out").exists()


def test_missing_columns_and_missing_input_dir(tmp_path):
    write_csv(tmp_path / "in" / "result.csv", [row[:-1] for row in small_dataset()])
    with pytest.raises(InvalidInput, match="^result.csv: missing columns customer_gender_female$"):
        create_dataset.main(["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out")])
    with pytest.raises(InvalidInput, match="^--input-dir: directory .*/empty does not exist$"):
        create_dataset.main(["--input-dir", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "out")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="^--input-dir: expected one .csv file in .*/empty, found none$"):
        create_dataset.main(["--input-dir", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "out")])
    write_csv(tmp_path / "in" / "earlier-run.csv", small_dataset())  # results must never be mixed
    with pytest.raises(InvalidInput, match="found 2: earlier-run.csv, result.csv$"):
        create_dataset.main(["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_clean_result_is_read_as_numbers_not_as_text(athena_result, monkeypatch):
    """pandas reads a clean file straight into numeric columns (the checked reading holds every
    cell as a Python string: gigabytes at a million rows), and gives the same frame."""
    (path,) = athena_result.glob("*.csv")
    checked = create_dataset.read_checked_dataset(path, header=True)
    monkeypatch.setattr(create_dataset, "read_checked_dataset", lambda *_: pytest.fail("read as text"))
    read = create_dataset.read_dataset(path, header=True)
    assert list(read.columns) == list(schema.DATASET_COLUMNS)
    assert (read.dtypes == checked.dtypes).all()
    assert read.equals(checked)
