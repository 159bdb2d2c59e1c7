"""Bias mitigation as the reference does it: SMOTE on the facet. The training set gets synthetic
rows of the facet's smaller group (customer_gender_female = 1, or 0) until, within each label,
both groups hold as many rows. Class imbalance (CI) and the difference in label proportions (DPL)
of the result are then 0.

Synthetic rows follow SMOTE-NC (Chawla et al., 2002), the variant for mixed features: a row of
the smaller group and one of its k nearest neighbours within the group are blended at a random
point of the segment between them for the numeric features (rounded when integral); each
categorical feature takes the value most frequent among the k neighbours, so a one-hot group
never holds two levels. The label is never synthesized: each label is balanced on its own.

Written with scikit-learn's NearestNeighbors rather than imbalanced-learn, which SageMaker's
scikit-learn processing image does not hold; the script runs there unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import schema
from checks import InvalidInput
from sklearn.neighbors import NearestNeighbors

NEIGHBOURS = 5  # SMOTE's k, as in the paper and imbalanced-learn


def categorical_codes(rows: pd.DataFrame) -> np.ndarray:
    """One code per categorical feature and row: an ordinal's value, or the position of the level
    a one-hot group sets (-1: none, the flow's dropped levels)."""
    codes = []
    for group in schema.CATEGORICAL_FEATURE_GROUPS:
        values = rows[list(group)].to_numpy()
        if len(group) == 1:
            codes.append(values[:, 0])
        else:
            codes.append(np.where(values.any(axis=1), values.argmax(axis=1), -1))
    return np.column_stack(codes).astype(np.int64)


def categorical_columns(codes: np.ndarray) -> dict[str, np.ndarray]:
    """The dataset columns of categorical codes (the inverse of categorical_codes)."""
    columns: dict[str, np.ndarray] = {}
    for index, group in enumerate(schema.CATEGORICAL_FEATURE_GROUPS):
        if len(group) == 1:
            columns[group[0]] = codes[:, index]
        else:
            for level, name in enumerate(group):
                columns[name] = (codes[:, index] == level).astype(np.int64)
    return columns


def neighbour_space(numeric: np.ndarray, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rows as points for the neighbour search, as SMOTE-NC measures them: numeric features in units
    of their standard deviation in the training set; each categorical feature that differs adds
    the squared median of the group's numeric standard deviations to the squared distance."""
    standardized = numeric / scale
    median_std = np.median(standardized.std(axis=0))
    # A differing category sets two one-hot positions apart: each weighs median_std / sqrt(2).
    one_hot = [(codes[:, [i]] == np.unique(codes[:, i])) * (median_std / np.sqrt(2)) for i in range(codes.shape[1])]
    return np.hstack([standardized, *one_hot])


def synthesize(group: pd.DataFrame, count: int, scale: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """`count` SMOTE-NC rows from the rows of `group` (one label, one facet value)."""
    numeric_names = list(schema.NUMERIC_FEATURES)
    numeric = group[numeric_names].to_numpy(dtype=float)
    codes = categorical_codes(group)
    k = min(NEIGHBOURS, len(group) - 1)
    search = NearestNeighbors(n_neighbors=k).fit(neighbour_space(numeric, codes, scale))
    _, found = search.kneighbors()  # asked of the fitted rows, each row's neighbours but itself
    origins = rng.integers(len(group), size=count)
    partners = found[origins, rng.integers(k, size=count)]
    gaps = rng.random(size=(count, 1))
    blended = numeric[origins] + gaps * (numeric[partners] - numeric[origins])
    # Each categorical feature: the value most frequent among the origin's k neighbours.
    neighbour_codes = codes[found[origins]]  # count x k x features
    offset = neighbour_codes.min()
    most_frequent = np.apply_along_axis(lambda values: np.bincount(values - offset).argmax() + offset, 1,
                                        neighbour_codes)
    synthetic = pd.DataFrame(blended, columns=numeric_names)
    for name, kind in schema.NUMERIC_FEATURES.items():
        if kind == schema.INTEGRAL:
            synthetic[name] = synthetic[name].round().astype(np.int64)
    for name, values in categorical_columns(most_frequent).items():
        synthetic[name] = values
    synthetic[schema.LABEL] = group[schema.LABEL].iloc[0]
    return synthetic[list(group.columns)].astype(group.dtypes.to_dict())


def balance_facet(train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The training rows followed by synthetic rows that balance the facet within each label."""
    rng = np.random.default_rng(seed)
    scale = train[list(schema.NUMERIC_FEATURES)].to_numpy(dtype=float).std(axis=0)
    scale[scale == 0] = 1.0
    synthetic = []
    for label, rows in train.groupby(schema.LABEL, sort=True):
        by_facet = {value: rows[rows[schema.CLARIFY_FACET] == value] for value in (0, 1)}
        smaller_value = min(by_facet, key=lambda value: len(by_facet[value]))
        smaller, larger = by_facet[smaller_value], by_facet[1 - smaller_value]
        if len(smaller) == len(larger):
            continue
        if len(smaller) < 2:
            raise InvalidInput(
                f"--balance-facet: the training set holds {len(smaller)} row(s) with {schema.LABEL}={label} "
                f"and {schema.CLARIFY_FACET}={smaller_value}; SMOTE needs at least 2 to blend"
            )
        synthetic.append(synthesize(smaller, len(larger) - len(smaller), scale, rng))
    return pd.concat([train, *synthetic], ignore_index=True)
