"""Raw claims.csv and customers.csv of any size, drawn from a model fitted to the seed data.

    python -m include.datagen --policies 1000000 [--seed 0] [--output-dir DIR]

The model is a k-dependence Bayesian network (KDB, k = 2) fitted at start to data/claims.csv and
data/customers.csv joined on policy_id: the label `fraud` is a parent of every column, and each
column has up to two more parents among the columns before it, those it shares the most
information with given the label. Numeric columns are cut into quantile bins; a drawn bin becomes
a value drawn from the seed's values of that bin among rows with the same first parent (integers
as seen, real numbers interpolated between them, so every vehicle_claim is new). The seed's facts
are kept as facts: total_claim_amount is injury_claim + vehicle_claim, and incident_month /
incident_day / incident_dow are one date of the year the seed's dates fall in. Structural zeros
of the seed (no collision type for a theft, a police report only when the police came) stay zero.

Every policy gets a new policy_id (after the seed's largest). Rows are drawn and written in chunks
of CHUNK_ROWS, so memory does not grow with the number of policies.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from include.jobs import schema

SEED_DIR = Path(__file__).resolve().parent.parent / "data"
GENERATED_DIR = Path(__file__).resolve().parent.parent / "generated"
CHUNK_ROWS = 100_000
# Numeric columns with more distinct values than this are cut into this many quantile bins.
MAX_LEVELS = 16
PARENTS = 3
# Pseudo-count pulling a label's sparse conditional table towards the label-free one.
SMOOTHING = 2.0

DATE_COLUMNS = ("incident_month", "incident_day", "incident_dow")
DATE = "incident_date"  # the model's column standing for the three: day of the seed's year, 0-based
TOTAL, PARTS = "total_claim_amount", ("injury_claim", "vehicle_claim")


class SeedError(ValueError):
    """The seed data breaks a fact the generator relies on; the message names file and column."""


@dataclass
class Column:
    """One column of the model: its levels, parents and conditional tables."""

    name: str
    codes: np.ndarray  # the seed's level code of each row
    levels: np.ndarray  # categorical: the labels; numeric: the bin edges' lower ends
    categorical: bool
    integral: bool = True
    seed_values: np.ndarray | None = None  # numeric: the seed's values, row by row
    parents: tuple[int, ...] = ()
    # cumulative P(level | fraud, parents' levels), shape (2, *parent levels, levels)
    cumulative: np.ndarray | None = None
    # numeric: the seed's values, grouped by (first parent's level, bin), sorted within a group
    values: np.ndarray | None = None
    starts: np.ndarray | None = None
    counts: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.levels)


def read_seed(seed_dir: Path = SEED_DIR) -> pd.DataFrame:
    """The seed's claims and customers joined on policy_id, strings kept as written ("N/A", "None")."""
    frames = []
    for dataset, raw_columns in schema.RAW_COLUMNS.items():
        path = seed_dir / f"{dataset}.csv"
        frame = pd.read_csv(path, keep_default_na=False, dtype=str)
        expected = [column.name for column in raw_columns]
        if list(frame.columns) != expected:
            raise SeedError(f"{path}: header must be {','.join(expected)}")
        for column in raw_columns:
            if column.kind != schema.CATEGORY:
                frame[column.name] = pd.to_numeric(frame[column.name])
        frames.append(frame)
    claims, customers = frames
    if not claims[schema.RECORD_IDENTIFIER].equals(customers[schema.RECORD_IDENTIFIER]):
        raise SeedError(f"{seed_dir}: claims.csv and customers.csv must list the same policy_ids in the same order")
    return claims.merge(customers, on=schema.RECORD_IDENTIFIER)


def seed_year(seed: pd.DataFrame) -> int:
    """The year whose calendar gives every seed row's weekday (incident_dow, Monday 0)."""
    dates = seed[list(DATE_COLUMNS)].drop_duplicates().to_numpy()
    for year in range(1990, 2040):
        try:
            if all(datetime.date(year, m, d).weekday() == w for m, d, w in dates):
                return year
        except ValueError:  # 29 February of a common year
            continue
    raise SeedError("claims.csv: incident_month, incident_day, incident_dow are not the dates of one year")


def _codes(name: str, values: np.ndarray, categorical: bool) -> Column:
    if categorical:
        levels, codes = np.unique(values, return_inverse=True)
        return Column(name, codes, levels, categorical=True)
    distinct = np.unique(values)
    integral = bool(np.all(values == np.round(values)))
    if len(distinct) <= MAX_LEVELS:
        levels = distinct
    else:
        levels = np.unique(np.quantile(values, np.linspace(0, 1, MAX_LEVELS + 1)[:-1], method="lower"))
    codes = np.searchsorted(levels, values, side="right") - 1
    return Column(name, codes, levels, categorical=False, integral=integral, seed_values=values)


def _information_gain(
    x: np.ndarray, y: np.ndarray, given: np.ndarray, x_size: int, y_size: int, given_size: int
) -> float:
    """I(X; Y | Z) in nats from the seed's codes, less an AIC penalty for the table it would add."""
    joint = np.bincount((given * x_size + x) * y_size + y, minlength=given_size * x_size * y_size)
    p = joint.reshape(given_size, x_size, y_size) / len(x)
    p_z = p.sum(axis=(1, 2), keepdims=True)
    p_xz = p.sum(axis=2, keepdims=True)
    p_yz = p.sum(axis=1, keepdims=True)
    nonzero = p > 0
    information = float(np.sum(p[nonzero] * np.log((p * p_z)[nonzero] / (p_xz * p_yz)[nonzero])))
    used_cells = int(np.count_nonzero(p_z))
    return information - (x_size - 1) * (y_size - 1) * used_cells / len(x)


def _distribution(counts: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rows of counts normalised; rows without counts take the fallback rows."""
    totals = counts.sum(axis=-1, keepdims=True)
    return np.where(totals > 0, counts / np.maximum(totals, 1), fallback)


class Model:
    """The fitted network; draw(n, rng) gives a frame of n new policies in the seed's raw schema."""

    def __init__(self, seed: pd.DataFrame) -> None:
        self.year = seed_year(seed)
        parts_sum = seed[PARTS[0]] + seed[PARTS[1]]
        if not np.allclose(parts_sum, seed[TOTAL], rtol=1e-12, atol=1e-6):
            raise SeedError(f"claims.csv: {TOTAL} is not {' + '.join(PARTS)}")
        self.first_id = int(seed[schema.RECORD_IDENTIFIER].max()) + 1
        self.label = seed[schema.LABEL].astype(int).to_numpy()
        self.fraud_rate = float(self.label.mean())
        start = np.datetime64(f"{self.year}-01-01")
        dates = pd.to_datetime(
            {"year": self.year, "month": seed.incident_month, "day": seed.incident_day}
        ).to_numpy().astype("datetime64[D]")
        days = (dates - start).astype(int)

        raw = [c for columns in schema.RAW_COLUMNS.values() for c in columns]
        modelled = [c for c in raw if c.name not in (schema.RECORD_IDENTIFIER, schema.LABEL, TOTAL, *DATE_COLUMNS)]
        categorical = [_codes(c.name, seed[c.name].to_numpy(), True) for c in modelled if c.kind == schema.CATEGORY]
        numeric = [_codes(c.name, seed[c.name].to_numpy(float), False) for c in modelled if c.kind != schema.CATEGORY]
        numeric.append(_codes(DATE, days.astype(float), False))
        # Discrete columns first, so a numeric column's values can be drawn given a discrete parent
        # (a zip code within its state); each group by its information about the label.
        self.columns: list[Column] = []
        nothing = np.zeros_like(self.label)
        for group in (categorical, numeric):
            scores = [_information_gain(c.codes, self.label, nothing, c.size, 2, 1) for c in group]
            self.columns += [group[i] for i in np.argsort(scores)[::-1]]
        for index, column in enumerate(self.columns):
            self._fit(index, column)

    def _fit(self, index: int, column: Column) -> None:
        # Greedily, the earlier column that tells most about this one given the label and the
        # parents already chosen, while that gain outweighs the table it costs.
        given, given_size, parents = self.label, 2, []
        while len(parents) < PARENTS:
            gains = {
                other: _information_gain(column.codes, self.columns[other].codes, given, column.size,
                                         self.columns[other].size, given_size)
                for other in range(index) if other not in parents
            }
            best = max(gains, key=gains.get, default=None)
            if best is None or gains[best] <= 0:
                break
            parents.append(best)
            given = given * self.columns[best].size + self.columns[best].codes
            given_size *= self.columns[best].size
        column.parents = tuple(parents)
        parent_sizes = [self.columns[p].size for p in column.parents]
        # P(x | parents) without the label, each parent combination the seed lacks backing off to
        # fewer parents: the seed's structural zeros stay zero.
        pooled = np.bincount(column.codes, minlength=column.size) / len(column.codes)
        for depth in range(1, len(column.parents) + 1):
            cell = self._cell(column.parents[:depth])
            counts = np.bincount(cell * column.size + column.codes, minlength=np.prod(parent_sizes[:depth]) * column.size)
            counts = counts.reshape(*parent_sizes[:depth], column.size)
            pooled = _distribution(counts, pooled[..., None, :] if depth > 1 else pooled)
        # The label's lift P(x | fraud) / P(x), smoothed, times the pooled table is the prior the
        # label's own (sparse) counts are pulled towards.
        marginal = np.bincount(column.codes, minlength=column.size) / len(column.codes)
        by_label = np.stack([np.bincount(column.codes[self.label == c], minlength=column.size) for c in (0, 1)])
        lift = (by_label + SMOOTHING * marginal) / (by_label.sum(axis=1, keepdims=True) + SMOOTHING)
        lift = lift / np.where(marginal > 0, marginal, 1)
        shape = (2, *([1] * len(parent_sizes)), column.size)
        prior = _distribution(pooled[None] * lift.reshape(shape), np.broadcast_to(pooled[None], (2, *pooled.shape)))
        cell = self.label * int(np.prod(parent_sizes)) + self._cell(column.parents)
        counts = np.bincount(cell * column.size + column.codes, minlength=2 * int(np.prod(parent_sizes)) * column.size)
        counts = counts.reshape(2, *parent_sizes, column.size)
        table = (counts + SMOOTHING * prior) / (counts.sum(axis=-1, keepdims=True) + SMOOTHING)
        cumulative = np.cumsum(table, axis=-1)
        # Exactly 1 at the end, so a uniform draw in [0, 1) never lands on a trailing level of
        # probability 0 through rounding.
        column.cumulative = cumulative / cumulative[..., -1:]
        if not column.categorical:
            self._fit_values(column)

    def _cell(self, parents: tuple[int, ...], codes: list[np.ndarray] | None = None) -> np.ndarray:
        """Row-major index of the parents' level combination of each row (the seed's or given codes)."""
        cell = np.zeros(len(self.label) if codes is None else len(codes[0]), dtype=np.int64)
        for position, parent in enumerate(parents):
            code = self.columns[parent].codes if codes is None else codes[position]
            cell = cell * self.columns[parent].size + code
        return cell

    def _fit_values(self, column: Column) -> None:
        seed_values = column.seed_values
        first = self.columns[column.parents[0]] if column.parents else None
        group = (first.codes if first else 0) * column.size + column.codes
        order = np.lexsort((seed_values, group))
        groups = (first.size if first else 1) * column.size
        column.values = seed_values[order]
        column.counts = np.bincount(group, minlength=groups)
        column.starts = np.concatenate([[0], np.cumsum(column.counts)[:-1]])

    def draw(self, n: int, rng: np.random.Generator, first_id: int) -> pd.DataFrame:
        label = (rng.random(n) < self.fraud_rate).astype(np.int64)
        codes: list[np.ndarray] = []
        values: dict[str, np.ndarray] = {}
        for column in self.columns:
            cumulative = column.cumulative[(label, *(codes[p] for p in column.parents))]
            code = np.minimum((rng.random(n)[:, None] >= cumulative).sum(axis=1), column.size - 1)
            codes.append(code)
            if column.categorical:
                values[column.name] = column.levels[code]
            else:
                first = codes[column.parents[0]] * column.size if column.parents else 0
                values[column.name] = self._draw_values(column, first + code, rng)
        day = np.datetime64(f"{self.year}-01-01") + values.pop(DATE).astype("timedelta64[D]")
        stamp = pd.DatetimeIndex(day)
        values.update(incident_month=stamp.month.to_numpy(), incident_day=stamp.day.to_numpy(),
                      incident_dow=stamp.day_of_week.to_numpy())
        values[TOTAL] = values[PARTS[0]] + values[PARTS[1]]
        values[schema.LABEL] = label
        values[schema.RECORD_IDENTIFIER] = np.arange(first_id, first_id + n)
        return pd.DataFrame(values)

    @staticmethod
    def _draw_values(column: Column, group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        count = column.counts[group]
        position = rng.random(len(group)) * count
        if column.integral:
            return column.values[column.starts[group] + position.astype(np.int64)].astype(np.int64)
        # Real numbers: uniform between consecutive seed values of the group, never a seed value.
        position = np.minimum(position / count * np.maximum(count - 1, 1), np.maximum(count - 1, 0) * (1 - 1e-12))
        low = column.starts[group] + position.astype(np.int64)
        high = np.minimum(low + 1, column.starts[group] + count - 1)
        fraction = position - np.floor(position)
        return column.values[low] + fraction * (column.values[high] - column.values[low])


def output_dir_of(policies: int, seed: int) -> Path:
    """Where `make data` writes the files of `policies` policies drawn with `seed`."""
    return GENERATED_DIR / f"policies-{policies}-seed-{seed}"


def raw_files(output_dir: Path) -> dict[str, Path]:
    """The raw CSV of each dataset in a folder of generated data."""
    return {dataset: output_dir / f"{dataset}.csv" for dataset in schema.RAW_COLUMNS}


def write(model: Model, policies: int, seed: int, output_dir: Path, chunk_rows: int = CHUNK_ROWS) -> dict[str, Path]:
    """claims.csv and customers.csv of `policies` new policies in output_dir, chunk by chunk.

    Written aside and renamed at the end, so an interrupted run leaves no half file behind.
    """
    if policies < 1:
        raise ValueError(f"policies must be a positive integer, got {policies}")
    output_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    targets = raw_files(output_dir)
    partials = {dataset: output_dir / f".{dataset}.csv.partial" for dataset in schema.RAW_COLUMNS}
    handles = {dataset: path.open("w", newline="") for dataset, path in partials.items()}
    try:
        for start in range(0, policies, chunk_rows):
            frame = model.draw(min(chunk_rows, policies - start), rng, model.first_id + start)
            for dataset, raw_columns in schema.RAW_COLUMNS.items():
                frame[[column.name for column in raw_columns]].to_csv(
                    handles[dataset], index=False, header=start == 0, lineterminator="\n"
                )
    finally:
        for handle in handles.values():
            handle.close()
    for dataset, path in partials.items():
        path.replace(targets[dataset])
    return targets


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=int, required=True, help="number of policies (rows of each file)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="default: generated/policies-<N>-seed-<S>/")
    args = parser.parse_args(argv)
    if args.policies < 1:
        parser.error(f"--policies must be a positive integer, got {args.policies}")
    if args.seed < 0:
        parser.error(f"--seed must be a non-negative integer, got {args.seed}")
    output_dir = args.output_dir or output_dir_of(args.policies, args.seed)
    targets = write(Model(read_seed()), args.policies, args.seed, output_dir.resolve())
    print(f"wrote {args.policies:,} policies to {output_dir}")
    conf = {"claims_file": str(targets["claims"]), "customers_file": str(targets["customers"])}
    print(f"make run CONF='{json.dumps(conf)}'")


if __name__ == "__main__":
    main(sys.argv[1:])
