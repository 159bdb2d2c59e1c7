"""include/datagen.py: raw claims and customers of any size, fitted to the seed in data/."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from include import datagen
from include.jobs import schema

ROOT = Path(__file__).resolve().parents[1]
POLICIES = 20_000


@pytest.fixture(scope="module")
def seed() -> pd.DataFrame:
    return datagen.read_seed()


@pytest.fixture(scope="module")
def model(seed: pd.DataFrame) -> datagen.Model:
    return datagen.Model(seed)


@pytest.fixture(scope="module")
def generated(model: datagen.Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Several chunks, the last one short.
    directory = tmp_path_factory.mktemp("generated")
    datagen.write(model, POLICIES, 7, directory, chunk_rows=6_000)
    return directory


def read_raw(directory: Path) -> pd.DataFrame:
    claims, customers = (
        pd.read_csv(directory / f"{dataset}.csv", keep_default_na=False, dtype=str) for dataset in schema.RAW_COLUMNS
    )
    return claims.merge(customers, on=schema.RECORD_IDENTIFIER)


def test_header_and_formats_are_the_seeds(generated: Path) -> None:
    for dataset in schema.RAW_COLUMNS:
        seed_lines = (ROOT / "data" / f"{dataset}.csv").read_text().splitlines()
        lines = (generated / f"{dataset}.csv").read_text().splitlines()
        assert lines[0] == seed_lines[0]
        assert len(lines) == POLICIES + 1
        # Each column written as the seed writes it: integers without ".0", reals in full.
        for index in range(len(lines[0].split(","))):
            seed_integral = all("." not in line.split(",")[index] for line in seed_lines[1:])
            integral = all("." not in line.split(",")[index] for line in lines[1:])
            assert integral == seed_integral, (dataset, lines[0].split(",")[index])


def test_category_sets_are_exactly_the_seeds(seed: pd.DataFrame, generated: Path) -> None:
    frame = read_raw(generated)
    for columns in schema.RAW_COLUMNS.values():
        for column in columns:
            if column.kind == schema.CATEGORY:
                assert set(frame[column.name]) == set(seed[column.name]), column.name
    assert "Unkown" in set(frame["customer_gender"])


def test_fraud_rate_and_marginals_match_the_seed(seed: pd.DataFrame, generated: Path) -> None:
    frame = read_raw(generated)
    rate = frame[schema.LABEL].astype(int).mean()
    seed_rate = seed[schema.LABEL].astype(int).mean()
    assert abs(rate - seed_rate) < 4 * np.sqrt(seed_rate * (1 - seed_rate) / POLICIES)
    for columns in schema.RAW_COLUMNS.values():
        for column in columns:
            if column.name in (schema.RECORD_IDENTIFIER, schema.LABEL):
                continue
            if column.kind == schema.CATEGORY:
                shares = frame[column.name].value_counts(normalize=True)
                seed_shares = seed[column.name].value_counts(normalize=True)
                assert (shares - seed_shares).abs().max() < 0.02, column.name
            else:
                values, seed_values = frame[column.name].astype(float), seed[column.name].astype(float)
                if column.name != datagen.TOTAL:  # a sum of parts drawn in their own ranges
                    assert values.min() >= seed_values.min() and values.max() <= seed_values.max(), column.name
                assert abs(values.mean() - seed_values.mean()) < 0.05 * seed_values.std(), column.name
                # Kolmogorov distance: the two distribution functions, at the seed's values.
                points = np.sort(seed_values.unique())
                cdf = np.searchsorted(np.sort(values), points, side="right") / len(values)
                seed_cdf = np.searchsorted(np.sort(seed_values), points, side="right") / len(seed_values)
                assert np.abs(cdf - seed_cdf).max() < 0.03, column.name


def test_facts_and_correlations_of_the_seed_hold(seed: pd.DataFrame, generated: Path) -> None:
    frame = read_raw(generated)
    numbers = frame.drop(columns=[c for c in frame if seed[c].dtype.kind not in "if"]).astype(float)
    assert np.allclose(numbers.injury_claim + numbers.vehicle_claim, numbers.total_claim_amount, rtol=1e-15)
    dates = pd.to_datetime({"year": datagen.seed_year(seed), "month": numbers.incident_month, "day": numbers.incident_day})
    assert (dates.dt.dayofweek == numbers.incident_dow).all()
    # The seed's structural zeros stay zero: no pair of levels the seed never shows together.
    for first, second in [("incident_type", "collision_type"), ("incident_type", "authorities_contacted"),
                          ("authorities_contacted", "police_report_available"), ("incident_type", "incident_severity")]:
        pairs = set(frame[[first, second]].itertuples(index=False, name=None))
        assert pairs <= set(seed[[first, second]].itertuples(index=False, name=None)), (first, second)
    for state, zips in seed.groupby("policy_state").customer_zip:
        assert frame[frame.policy_state == state].customer_zip.astype(int).between(zips.min(), zips.max()).all()
    seed_numbers = seed[numbers.columns].astype(float)
    difference = (numbers.drop(columns="policy_id").corr() - seed_numbers.drop(columns="policy_id").corr()).abs()
    assert difference.max().max() < 0.25
    assert abs(numbers.customer_age.corr(numbers.months_as_customer) - seed.customer_age.corr(seed.months_as_customer)) < 0.05


def test_every_policy_is_new(seed: pd.DataFrame, generated: Path) -> None:
    frame = read_raw(generated)
    ids = frame[schema.RECORD_IDENTIFIER].astype(int)
    assert ids.is_unique and ids.min() > seed[schema.RECORD_IDENTIFIER].max()
    others = [c for c in frame.columns if c != schema.RECORD_IDENTIFIER]
    seed_rows = set(seed[others].astype(str).itertuples(index=False, name=None))
    assert not seed_rows & set(frame[others].itertuples(index=False, name=None))


def features(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    frame = frame.drop(columns=[schema.RECORD_IDENTIFIER, "customer_zip"])
    label = frame.pop(schema.LABEL).astype(int).to_numpy()
    categories = [c.name for cs in schema.RAW_COLUMNS.values() for c in cs if c.kind == schema.CATEGORY and c.name in frame]
    return pd.get_dummies(frame, columns=categories, dtype=float).astype(float), label


def cross_validated_auc(frame: pd.DataFrame) -> float:
    x, y = features(frame)
    aucs = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        booster = xgboost.train(REFERENCE, xgboost.DMatrix(x.iloc[train], y[train]), 100)
        aucs.append(roc_auc_score(y[test], booster.predict(xgboost.DMatrix(x.iloc[test]))))
    return float(np.mean(aucs))


REFERENCE = {"max_depth": 3, "eta": 0.2, "objective": "binary:logistic", "nthread": 1}


def test_a_model_learns_fraud_from_it_as_from_the_seed(seed: pd.DataFrame, model: datagen.Model) -> None:
    """The reference XGBoost, 5-fold on 5,000 rows: as good on generated rows as on the seed's, and
    a model trained on generated rows ranks the seed's frauds as well."""
    frame = model.draw(len(seed), np.random.default_rng(0), model.first_id)[seed.columns].astype(seed.dtypes.to_dict())
    seed_auc = cross_validated_auc(seed)
    assert abs(cross_validated_auc(frame) - seed_auc) < 0.05
    x, y = features(frame)
    seed_x, seed_y = features(seed)
    booster = xgboost.train(REFERENCE, xgboost.DMatrix(x, y), 100)
    assert roc_auc_score(seed_y, booster.predict(xgboost.DMatrix(seed_x.reindex(columns=x.columns, fill_value=0.0)))) > seed_auc - 0.03


def test_generated_files_pass_the_data_prep_job(tmp_path: Path, model: datagen.Model) -> None:
    datagen.write(model, 2_000, 3, tmp_path / "raw")
    for dataset in schema.RAW_COLUMNS:
        job = subprocess.run(
            [sys.executable, str(ROOT / "include" / "jobs" / "preprocess.py"), "--dataset", dataset,
             "--input-dir", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "processed")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert job.returncode == 0, job.stderr
        assert len((tmp_path / "processed" / f"{dataset}-part-00000.csv").read_text().splitlines()) == 2_001


def test_memory_does_not_grow_with_the_number_of_policies(tmp_path: Path, model: datagen.Model) -> None:
    peaks = []
    for policies in (1_000, 8_000):
        tracemalloc.start()
        datagen.write(model, policies, 0, tmp_path / str(policies), chunk_rows=1_000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0]


def test_make_data_prints_the_run_conf(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "include.datagen", "--policies", "10", "--seed", "4", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"make run CONF='{{\"claims_file\": \"{tmp_path}/claims.csv\", \"customers_file\": \"{tmp_path}/customers.csv\"}}'" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "include.datagen", "--policies", "0"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--policies must be a positive integer, got 0" in bad.stderr
