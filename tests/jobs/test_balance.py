"""balance.py and create_dataset.py --balance-facet: SMOTE on the facet, the reference's bias
mitigation, on the training set only."""

from __future__ import annotations

import json
from pathlib import Path

import balance
import create_dataset
import numpy as np
import pandas as pd
import pytest
import schema
from checks import InvalidInput

from tests.jobs.conftest import read_csv, write_csv

FACET = schema.CLARIFY_FACET


@pytest.fixture(scope="module")
def train(athena_result: Path) -> pd.DataFrame:
    """The training set the pipeline draws from the real data."""
    dataset = create_dataset.read_dataset(athena_result / "0f3c-query-id.csv", header=True)
    return create_dataset.split(dataset, 0.2, 0.2, seed=0)["train"]


def facet_counts(rows: pd.DataFrame) -> dict[tuple[int, int], int]:
    """(label, facet value) -> rows."""
    return {key: int(count) for key, count in rows.groupby([schema.LABEL, FACET]).size().items()}


def test_the_job_balances_the_training_set_only(run_job, athena_result, tmp_path):
    for name, balanced in (("drawn", "false"), ("balanced", "True")):  # True: how a DAG param renders
        process = run_job("create_dataset", "--input-dir", athena_result, "--output-dir", tmp_path / name,
                          "--balance-facet", balanced)
        assert process.returncode == 0, process.stderr
    drawn, balanced = (
        {split: read_csv(tmp_path / name / split / f"{split}.csv") for split in ("train", "validation", "test")}
        for name in ("drawn", "balanced")
    )
    assert balanced["validation"] == drawn["validation"] and balanced["test"] == drawn["test"]
    assert balanced["train"][: len(drawn["train"])] == drawn["train"]  # the drawn rows, unchanged, first

    rows = create_dataset.read_dataset(tmp_path / "balanced" / "train" / "train.csv", header=False)
    counts = facet_counts(rows)
    assert counts[(0, 0)] == counts[(0, 1)] and counts[(1, 0)] == counts[(1, 1)]
    # Clarify's pre-training metrics of the result: CI = (n_a - n_d) / n, DPL = q_a - q_d.
    n_a, n_d = (rows[FACET] == 0).sum(), (rows[FACET] == 1).sum()
    q_a, q_d = (rows[rows[FACET] == value][schema.LABEL].mean() for value in (0, 1))
    assert (n_a - n_d) / (n_a + n_d) == 0 and q_a - q_d == 0
    stats = json.loads((tmp_path / "balanced" / "stats" / "stats.json").read_text())
    assert stats["train"] == {"rows": len(rows), "positives": int(rows[schema.LABEL].sum()),
                              "synthetic_rows": len(rows) - len(drawn["train"])}


def test_synthetic_rows_blend_two_rows_of_the_smaller_group(train):
    before = facet_counts(train)
    assert before[(0, 1)] < before[(0, 0)] and before[(1, 1)] < before[(1, 0)]  # women: the smaller group
    synthetic = balance.balance_facet(train, seed=0).iloc[len(train):]

    assert len(synthetic) == before[(0, 0)] - before[(0, 1)] + before[(1, 0)] - before[(1, 1)]
    assert (synthetic[FACET] == 1).all() and (synthetic["customer_gender_male"] == 0).all()
    for label, rows in synthetic.groupby(schema.LABEL):
        source = train[(train[schema.LABEL] == label) & (train[FACET] == 1)]
        numeric = list(schema.NUMERIC_FEATURES)
        assert (rows[numeric] >= source[numeric].min()).all().all()
        assert (rows[numeric] <= source[numeric].max()).all().all()
        for group in schema.CATEGORICAL_FEATURE_GROUPS:
            # A category of the group's rows, never a blend: one level of a one-hot group at most.
            seen = {tuple(values) for values in source[list(group)].to_numpy()}
            assert {tuple(values) for values in rows[list(group)].to_numpy()} <= seen
    integral = [name for name, kind in schema.NUMERIC_FEATURES.items() if kind == schema.INTEGRAL]
    assert (synthetic[integral].dtypes == "int64").all()
    # One blend per row for all numeric features: the claim amounts still add up.
    total = synthetic["injury_claim"] + synthetic["vehicle_claim"]
    assert np.allclose(total, synthetic["total_claim_amount"])
    assert not synthetic.duplicated().all()


def test_balancing_is_deterministic_for_a_seed(train):
    first, again, other = (balance.balance_facet(train, seed) for seed in (0, 0, 1))
    assert first.equals(again)
    assert not first.equals(other)


def customer_rows(frauds_by_women: int, frauds_by_men: int, others: int) -> list[list[object]]:
    """Dataset rows with 1 in every feature but the gender columns; `others` non-fraud rows, half women."""
    header = list(schema.DATASET_COLUMNS)

    def row(label: int, woman: bool) -> list[object]:
        values: list[object] = [label, *([1] * len(schema.FEATURE_COLUMNS))]
        values[header.index(FACET)], values[header.index("customer_gender_male")] = int(woman), int(not woman)
        return values

    return ([row(1, True)] * frauds_by_women + [row(1, False)] * frauds_by_men
            + [row(0, index % 2 == 0) for index in range(others)])


def test_too_few_rows_to_blend_are_refused_by_name(tmp_path):
    train = pd.DataFrame(customer_rows(1, 5, 20), columns=list(schema.DATASET_COLUMNS))
    with pytest.raises(InvalidInput) as refused:
        balance.balance_facet(train, seed=0)
    assert str(refused.value) == (
        f"--balance-facet: the training set holds 1 row(s) with fraud=1 and {FACET}=1; SMOTE needs at least 2 to blend"
    )
    # The job writes nothing when it refuses.
    write_csv(tmp_path / "in" / "result.csv", [list(schema.DATASET_COLUMNS), *customer_rows(0, 10, 30)])
    with pytest.raises(InvalidInput, match="holds 0 row[(]s[)] with fraud=1"):
        create_dataset.main(["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"),
                             "--balance-facet", "true"])
    assert not (tmp_path / "out").exists()
