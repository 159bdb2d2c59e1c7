"""The one place for the fraud pipeline's column names, types, categories and order.

The processing scripts import it as their sibling module `schema`; the DAG imports it as
`include.jobs.schema`. Pure Python on purpose: it must load in any processing container.

Raw columns are declared with what the Data Wrangler flow of the reference does to them; the
processed columns (Feature Store feature groups) and the dataset columns are derived from that,
so the transforms in preprocess.py and every consumer agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_IDENTIFIER = "policy_id"
EVENT_TIME = "event_time"
LABEL = "fraud"
# Clarify's sensitive facet: customers whose gender is female (value 1 of this one-hot column).
CLARIFY_FACET = "customer_gender_female"

# Feature Store feature types.
INTEGRAL = "Integral"
FRACTIONAL = "Fractional"
STRING = "String"

# Raw value kinds: what a raw CSV cell must parse as.
INTEGER = "integer"
NUMBER = "number"
CATEGORY = "category"

# What the flow does with a raw column.
KEEP = "keep"
ONE_HOT = "one-hot"
ORDINAL = "ordinal"
DROP = "drop"

# Symbols the flow strips from some text columns ("N/A" -> "na", "Break-in" -> "breakin").
SYMBOLS = "!@#$%^&*()_+=-/\\`~{}|<>?"


@dataclass(frozen=True)
class RawColumn:
    """A column of a raw CSV and how the Data Wrangler flow encodes it.

    categories: the allowed raw spellings. For ordinal columns a category's position is its code;
    for one-hot columns the order is the order of the output columns.
    dropped_levels: one-hot levels (normalized) whose columns the flow drops afterwards.
    """

    name: str
    kind: str
    encoding: str = KEEP
    categories: tuple[str, ...] = ()
    strip_symbols: bool = False
    dropped_levels: tuple[str, ...] = ()

    def normalize(self, value: str) -> str:
        """The value as the flow sees it: lower-cased, and stripped of SYMBOLS where configured."""
        value = value.lower()
        if self.strip_symbols:
            value = value.translate({ord(symbol): None for symbol in SYMBOLS})
        return value

    @property
    def levels(self) -> tuple[str, ...]:
        """Normalized categories, in declared order."""
        return tuple(self.normalize(category) for category in self.categories)

    @property
    def one_hot_columns(self) -> dict[str, str]:
        """Output column name -> normalized level, for the levels the flow keeps."""
        return {f"{self.name}_{level}": level for level in self.levels if level not in self.dropped_levels}


def _category(name: str, categories: tuple[str, ...], encoding: str, **options: object) -> RawColumn:
    return RawColumn(name, CATEGORY, encoding, categories, **options)


RAW_CLAIMS_COLUMNS: tuple[RawColumn, ...] = (
    RawColumn("policy_id", INTEGER),
    _category(
        "driver_relationship", ("Self", "N/A", "Spouse", "Child", "Other"), ONE_HOT, strip_symbols=True
    ),
    _category("incident_type", ("Collision", "Break-in", "Theft"), ONE_HOT, strip_symbols=True),
    _category("collision_type", ("Front", "Rear", "Side", "N/A"), ONE_HOT, strip_symbols=True),
    _category("incident_severity", ("Minor", "Major", "Totaled"), ORDINAL),
    _category("authorities_contacted", ("Police", "None", "Fire", "Ambulance"), ONE_HOT),
    RawColumn("num_vehicles_involved", INTEGER),
    RawColumn("num_injuries", INTEGER),
    RawColumn("num_witnesses", INTEGER),
    _category("police_report_available", ("No", "Yes"), ORDINAL),
    RawColumn("injury_claim", NUMBER),
    RawColumn("vehicle_claim", NUMBER),
    RawColumn("total_claim_amount", NUMBER),
    RawColumn("incident_month", INTEGER),
    RawColumn("incident_day", INTEGER),
    RawColumn("incident_dow", INTEGER),
    RawColumn("incident_hour", INTEGER),
    # The label: 0/1, kept as is (ordinal over "0", "1" gives the same integers and validates them).
    _category(LABEL, ("0", "1"), ORDINAL),
)

RAW_CUSTOMERS_COLUMNS: tuple[RawColumn, ...] = (
    RawColumn("policy_id", INTEGER),
    RawColumn("customer_age", INTEGER),
    RawColumn("months_as_customer", INTEGER),
    RawColumn("num_claims_past_year", INTEGER),
    RawColumn("num_insurers_past_5_years", INTEGER),
    _category("policy_state", ("CA", "WA", "AZ", "OR", "NV", "ID"), ONE_HOT),
    RawColumn("policy_deductable", INTEGER),
    RawColumn("policy_annual_premium", INTEGER),
    _category("policy_liability", ("15/30", "25/50", "30/60", "100/200"), ORDINAL),
    RawColumn("customer_zip", INTEGER, DROP),
    # "Unkown" is spelled so in the data.
    _category(
        "customer_gender", ("Male", "Female", "Unkown", "Other"), ONE_HOT, dropped_levels=("unkown", "other")
    ),
    _category(
        "customer_education",
        ("Below High School", "High School", "Associate", "Bachelor", "Advanced Degree"),
        ORDINAL,
    ),
    RawColumn("auto_year", INTEGER),
)


def _processed_columns(raw_columns: tuple[RawColumn, ...]) -> dict[str, str]:
    """Processed column name -> Feature Store type, in output order.

    Kept and ordinal columns stay in raw order, one-hot columns follow (by source column, then
    level), then event_time: the order of the reference flow's output.
    """
    columns: dict[str, str] = {}
    for column in raw_columns:
        if column.encoding == KEEP:
            columns[column.name] = {INTEGER: INTEGRAL, NUMBER: FRACTIONAL, CATEGORY: STRING}[column.kind]
        elif column.encoding == ORDINAL:
            columns[column.name] = INTEGRAL
    for column in raw_columns:
        if column.encoding == ONE_HOT:
            columns.update(dict.fromkeys(column.one_hot_columns, INTEGRAL))
    columns[EVENT_TIME] = FRACTIONAL
    return columns


RAW_COLUMNS: dict[str, tuple[RawColumn, ...]] = {
    "claims": RAW_CLAIMS_COLUMNS,
    "customers": RAW_CUSTOMERS_COLUMNS,
}

# Processed columns (the feature groups): name -> Feature Store type, in order.
CLAIMS_COLUMNS: dict[str, str] = _processed_columns(RAW_CLAIMS_COLUMNS)
CUSTOMERS_COLUMNS: dict[str, str] = _processed_columns(RAW_CUSTOMERS_COLUMNS)
COLUMNS: dict[str, dict[str, str]] = {"claims": CLAIMS_COLUMNS, "customers": CUSTOMERS_COLUMNS}

_NOT_FEATURES = (RECORD_IDENTIFIER, EVENT_TIME, LABEL)
CLAIMS_FEATURES: tuple[str, ...] = tuple(name for name in CLAIMS_COLUMNS if name not in _NOT_FEATURES)
CUSTOMERS_FEATURES: tuple[str, ...] = tuple(name for name in CUSTOMERS_COLUMNS if name not in _NOT_FEATURES)

# The training dataset: label first, then claims features, then customers features (the
# built-in XGBoost CSV contract; also Clarify's headers).
FEATURE_COLUMNS: tuple[str, ...] = CLAIMS_FEATURES + CUSTOMERS_FEATURES
DATASET_COLUMNS: tuple[str, ...] = (LABEL, *FEATURE_COLUMNS)


def _categorical_groups(raw_columns: tuple[RawColumn, ...]) -> list[tuple[str, ...]]:
    groups: list[tuple[str, ...]] = []
    for column in raw_columns:
        if column.encoding == ORDINAL and column.name != LABEL:
            groups.append((column.name,))
        elif column.encoding == ONE_HOT:
            groups.append(tuple(column.one_hot_columns))
    return groups


# The dataset's categorical features, each as the columns that encode one raw column (an ordinal
# column alone, or the levels of a one-hot column): values a synthetic row must copy, never blend.
CATEGORICAL_FEATURE_GROUPS: tuple[tuple[str, ...], ...] = tuple(
    _categorical_groups(RAW_CLAIMS_COLUMNS) + _categorical_groups(RAW_CUSTOMERS_COLUMNS)
)
# The dataset's numeric features: blended by interpolation, rounded when integral.
_CATEGORICAL = {column for group in CATEGORICAL_FEATURE_GROUPS for column in group}
NUMERIC_FEATURES: dict[str, str] = {
    name: {**CLAIMS_COLUMNS, **CUSTOMERS_COLUMNS}[name] for name in FEATURE_COLUMNS if name not in _CATEGORICAL
}


def feature_definitions(dataset: str) -> list[dict[str, str]]:
    """FeatureDefinitions for CreateFeatureGroup of "claims" or "customers"."""
    if dataset not in COLUMNS:
        raise ValueError(f"dataset must be one of {sorted(COLUMNS)}, got {dataset!r}")
    return [{"FeatureName": name, "FeatureType": kind} for name, kind in COLUMNS[dataset].items()]
