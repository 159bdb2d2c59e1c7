"""schema.py: the processed and dataset columns everybody builds on."""

from __future__ import annotations

import csv

import pytest

from include.jobs import schema
from tests.jobs.conftest import DATA_DIR

CLAIMS_COLUMNS = [
    "policy_id", "incident_severity", "num_vehicles_involved", "num_injuries", "num_witnesses",
    "police_report_available", "injury_claim", "vehicle_claim", "total_claim_amount", "incident_month",
    "incident_day", "incident_dow", "incident_hour", "fraud",
    "driver_relationship_self", "driver_relationship_na", "driver_relationship_spouse",
    "driver_relationship_child", "driver_relationship_other",
    "incident_type_collision", "incident_type_breakin", "incident_type_theft",
    "collision_type_front", "collision_type_rear", "collision_type_side", "collision_type_na",
    "authorities_contacted_police", "authorities_contacted_none", "authorities_contacted_fire",
    "authorities_contacted_ambulance", "event_time",
]  # fmt: skip
CUSTOMERS_COLUMNS = [
    "policy_id", "customer_age", "months_as_customer", "num_claims_past_year", "num_insurers_past_5_years",
    "policy_deductable", "policy_annual_premium", "policy_liability", "customer_education", "auto_year",
    "policy_state_ca", "policy_state_wa", "policy_state_az", "policy_state_or", "policy_state_nv",
    "policy_state_id", "customer_gender_male", "customer_gender_female", "event_time",
]  # fmt: skip


def test_processed_columns_in_order():
    assert list(schema.CLAIMS_COLUMNS) == CLAIMS_COLUMNS
    assert list(schema.CUSTOMERS_COLUMNS) == CUSTOMERS_COLUMNS


def test_feature_store_types():
    fractional = {name for name, kind in schema.CLAIMS_COLUMNS.items() if kind == schema.FRACTIONAL}
    assert fractional == {"injury_claim", "vehicle_claim", "total_claim_amount", "event_time"}
    assert {name for name, kind in schema.CUSTOMERS_COLUMNS.items() if kind != schema.INTEGRAL} == {
        "event_time"
    }
    assert schema.feature_definitions("customers")[0] == {
        "FeatureName": "policy_id",
        "FeatureType": "Integral",
    }
    assert len(schema.feature_definitions("claims")) == 31


def test_feature_definitions_refuses_unknown_dataset():
    with pytest.raises(ValueError, match="'policies'"):
        schema.feature_definitions("policies")


def test_dataset_columns_label_first_then_claims_then_customers_features():
    expected = ["fraud"] + CLAIMS_COLUMNS[1:13] + CLAIMS_COLUMNS[14:30] + CUSTOMERS_COLUMNS[1:18]
    assert list(schema.DATASET_COLUMNS) == expected
    assert schema.FEATURE_COLUMNS == schema.DATASET_COLUMNS[1:]
    assert len(schema.DATASET_COLUMNS) == 46
    assert schema.CLARIFY_FACET in schema.FEATURE_COLUMNS


@pytest.mark.parametrize("dataset", ["claims", "customers"])
def test_raw_columns_match_the_data_files(dataset):
    with (DATA_DIR / f"{dataset}.csv").open(newline="") as handle:
        header = next(csv.reader(handle))
    assert [column.name for column in schema.RAW_COLUMNS[dataset]] == header


def test_normalize_lowercases_and_strips_symbols_where_configured():
    columns = {column.name: column for column in schema.RAW_CLAIMS_COLUMNS}
    assert columns["driver_relationship"].normalize("N/A") == "na"
    assert columns["incident_type"].normalize("Break-in") == "breakin"
    assert columns["incident_severity"].normalize("Totaled") == "totaled"
    liability = {column.name: column for column in schema.RAW_CUSTOMERS_COLUMNS}["policy_liability"]
    assert liability.normalize("15/30") == "15/30"  # no symbol stripping outside the three columns
