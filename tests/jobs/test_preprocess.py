"""preprocess.py: the reference Data Wrangler transforms and strict validation of raw CSVs."""

from __future__ import annotations

import csv
import math
import tracemalloc
from pathlib import Path

import preprocess
import pytest
import schema

from tests.jobs.conftest import DATA_DIR, read_csv, write_csv

EVENT_TIME = 1_700_000_000.25
CLAIMS_HEADER = [column.name for column in schema.RAW_CLAIMS_COLUMNS]
CUSTOMERS_HEADER = [column.name for column in schema.RAW_CUSTOMERS_COLUMNS]
CLAIM_ROWS = [
    # policy_id, driver_relationship, incident_type, collision_type, incident_severity, authorities_contacted,
    # vehicles, injuries, witnesses, police_report_available, injury_claim, vehicle_claim, total_claim_amount,
    # month, day, dow, hour, fraud
    ["7", "N/A", "Break-in", "N/A", "Totaled", "None", "1", "0", "2", "Yes", "1500", "20.25", "1520.25",
     "12", "31", "6", "23", "1"],
    ["8", "Self", "Collision", "Rear", "Minor", "Police", "3", "4", "0", "No", "71600", "8913.668763178823",
     "80513.66876317882", "1", "1", "0", "0", "0"],
]  # fmt: skip
CUSTOMER_ROWS = [
    # policy_id, age, months, claims past year, insurers, state, deductable, premium, liability, zip, gender,
    # education, auto_year
    [
        "7",
        "54",
        "94",
        "0",
        "1",
        "WA",
        "750",
        "3000",
        "100/200",
        "99207",
        "Unkown",
        "Below High School",
        "2006",
    ],
    ["8", "41", "165", "2", "3", "ID", "1000", "2950", "15/30", "83701", "Female", "Advanced Degree", "2012"],
]


def run_preprocess(run_job, tmp_path: Path, dataset: str, rows: list[list[object]]):
    write_csv(tmp_path / "raw" / f"{dataset}.csv", rows)
    process = run_job(
        "preprocess", "--dataset", dataset, "--input-dir", tmp_path / "raw", "--output-dir", tmp_path / "out",
        "--event-time", EVENT_TIME,
    )  # fmt: skip
    return process, tmp_path / "out" / f"{dataset}-part-00000.csv"


def records(path: Path) -> list[dict[str, str]]:
    header, *rows = read_csv(path)
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_claims_transforms_on_known_rows(run_job, tmp_path):
    process, output = run_preprocess(run_job, tmp_path, "claims", [CLAIMS_HEADER, *CLAIM_ROWS])
    assert process.returncode == 0, process.stderr
    assert read_csv(output)[0] == list(schema.CLAIMS_COLUMNS)
    first, second = records(output)
    assert first == {
        "policy_id": "7", "incident_severity": "2", "num_vehicles_involved": "1", "num_injuries": "0",
        "num_witnesses": "2", "police_report_available": "1", "injury_claim": "1500.0", "vehicle_claim": "20.25",
        "total_claim_amount": "1520.25", "incident_month": "12", "incident_day": "31", "incident_dow": "6",
        "incident_hour": "23", "fraud": "1",
        "driver_relationship_self": "0", "driver_relationship_na": "1", "driver_relationship_spouse": "0",
        "driver_relationship_child": "0", "driver_relationship_other": "0",
        "incident_type_collision": "0", "incident_type_breakin": "1", "incident_type_theft": "0",
        "collision_type_front": "0", "collision_type_rear": "0", "collision_type_side": "0",
        "collision_type_na": "1",
        "authorities_contacted_police": "0", "authorities_contacted_none": "1", "authorities_contacted_fire": "0",
        "authorities_contacted_ambulance": "0", "event_time": "1700000000.25",
    }  # fmt: skip
    assert second["vehicle_claim"] == "8913.668763178823"  # cents (and more) kept
    assert second["incident_severity"] == "0"
    assert second["police_report_available"] == "0"
    assert (second["driver_relationship_self"], second["collision_type_rear"]) == ("1", "1")
    assert second["authorities_contacted_police"] == "1"


def test_customers_transforms_on_known_rows(run_job, tmp_path):
    process, output = run_preprocess(run_job, tmp_path, "customers", [CUSTOMERS_HEADER, *CUSTOMER_ROWS])
    assert process.returncode == 0, process.stderr
    assert read_csv(output)[0] == list(schema.CUSTOMERS_COLUMNS)
    unknown_gender, female = records(output)
    assert unknown_gender == {
        "policy_id": "7", "customer_age": "54", "months_as_customer": "94", "num_claims_past_year": "0",
        "num_insurers_past_5_years": "1", "policy_deductable": "750", "policy_annual_premium": "3000",
        "policy_liability": "3", "customer_education": "0", "auto_year": "2006",
        "policy_state_ca": "0", "policy_state_wa": "1", "policy_state_az": "0", "policy_state_or": "0",
        "policy_state_nv": "0", "policy_state_id": "0",
        "customer_gender_male": "0", "customer_gender_female": "0", "event_time": "1700000000.25",
    }  # fmt: skip
    assert (female["customer_gender_female"], female["customer_gender_male"]) == ("1", "0")
    assert (female["policy_liability"], female["customer_education"], female["policy_state_id"]) == (
        "0",
        "4",
        "1",
    )


def test_text_is_lowercased_before_encoding(run_job, tmp_path):
    row = [
        "9",
        "SPOUSE",
        "theft",
        "n/a",
        "MAJOR",
        "fire",
        "1",
        "0",
        "0",
        "YES",
        "1",
        "2",
        "3",
        "1",
        "1",
        "1",
        "1",
        "0",
    ]
    process, output = run_preprocess(run_job, tmp_path, "claims", [CLAIMS_HEADER, row])
    assert process.returncode == 0, process.stderr
    (record,) = records(output)
    assert (record["driver_relationship_spouse"], record["incident_type_theft"], record["collision_type_na"]) == (
        "1", "1", "1",
    )  # fmt: skip
    assert (record["incident_severity"], record["authorities_contacted_fire"], record["police_report_available"]) == (
        "1", "1", "1",
    )  # fmt: skip


def test_every_one_hot_level_gets_a_column_even_when_absent(run_job, tmp_path):
    process, output = run_preprocess(run_job, tmp_path, "claims", [CLAIMS_HEADER, CLAIM_ROWS[0]])
    assert process.returncode == 0, process.stderr
    (record,) = records(output)
    assert list(record) == list(schema.CLAIMS_COLUMNS)
    assert record["incident_type_theft"] == "0"


@pytest.mark.parametrize(("dataset", "width"), [("claims", 31), ("customers", 19)])
def test_full_data_files(tmp_path, dataset, width):
    (output,) = preprocess.preprocess(dataset, DATA_DIR, tmp_path, EVENT_TIME)
    header, *rows = read_csv(output)
    assert len(header) == width
    assert len(rows) == 5000
    assert all(len(row) == width and all(cell != "" for cell in row) for row in rows)
    values = [dict(zip(header, map(float, row), strict=True)) for row in rows]
    assert not any(math.isnan(value) for record in values for value in record.values())
    assert {record["event_time"] for record in values} == {EVENT_TIME}
    if dataset == "claims":
        assert sum(record["fraud"] for record in values) == 164
        for source in ("driver_relationship", "incident_type", "collision_type", "authorities_contacted"):
            assert all(
                sum(v for k, v in record.items() if k.startswith(source + "_")) == 1 for record in values
            )
    else:
        genders = [record["customer_gender_male"] + record["customer_gender_female"] for record in values]
        assert set(genders) == {0, 1}  # unknown and other genders have neither column


def test_default_directories_follow_the_container_contract(run_job, tmp_path):
    write_csv(
        tmp_path / "opt-ml" / "processing" / "input" / "raw" / "customers.csv",
        [CUSTOMERS_HEADER, *CUSTOMER_ROWS],
    )
    process = run_job("preprocess", "--dataset", "customers")
    assert process.returncode == 0, process.stderr
    output = tmp_path / "opt-ml" / "processing" / "output" / "customers-part-00000.csv"
    assert len(read_csv(output)) == 3
    assert float(records(output)[0]["event_time"]) > 1_600_000_000  # now, by default


def replaced(row: list[str], column: str, value: str) -> list[str]:
    changed = list(row)
    changed[CLAIMS_HEADER.index(column)] = value
    return changed


BAD_CLAIMS = {
    "empty file": ([], ["claims.csv: the file is empty"]),
    "header only": ([CLAIMS_HEADER], ["claims.csv: no data rows"]),
    "missing column": (
        [CLAIMS_HEADER[:-1], *(row[:-1] for row in CLAIM_ROWS)],
        ["claims.csv: missing columns fraud"],
    ),
    "extra column": (
        [[*CLAIMS_HEADER, "notes"], *([*row, "x"] for row in CLAIM_ROWS)],
        ["claims.csv: unexpected columns notes"],
    ),
    "non-numeric integer": (
        [CLAIMS_HEADER, CLAIM_ROWS[0], replaced(CLAIM_ROWS[1], "num_injuries", "two")],
        ["claims.csv: column num_injuries has non-integer values 'two' at row 2"],
    ),
    "decimal in integer column": (
        [CLAIMS_HEADER, replaced(CLAIM_ROWS[0], "incident_hour", "1.5"), CLAIM_ROWS[1]],
        ["column incident_hour has non-integer values '1.5' at row 1"],
    ),
    "blank amount": (
        [CLAIMS_HEADER, replaced(CLAIM_ROWS[0], "vehicle_claim", ""), replaced(CLAIM_ROWS[1], "vehicle_claim", " ")],
        ["claims.csv: column vehicle_claim has blank values at rows 1, 2"],
    ),
    "nan amount": (
        [CLAIMS_HEADER, CLAIM_ROWS[0], replaced(CLAIM_ROWS[1], "injury_claim", "nan")],
        ["column injury_claim has non-numeric values 'nan' at row 2"],
    ),
    "unknown category": (
        [CLAIMS_HEADER, CLAIM_ROWS[0], replaced(CLAIM_ROWS[1], "incident_severity", "catastrophic")],
        ["claims.csv: column incident_severity has unknown values 'catastrophic' at row 2 (allowed: Minor, Major, Totaled)"],
    ),
    "label not 0/1": (
        [CLAIMS_HEADER, replaced(CLAIM_ROWS[0], "fraud", "2"), CLAIM_ROWS[1]],
        ["column fraud has unknown values '2' at row 1"],
    ),
    "duplicate policy_id": (
        [CLAIMS_HEADER, *CLAIM_ROWS, CLAIM_ROWS[0]],
        ["claims.csv: column policy_id has duplicate values 7 at rows 1, 3"],
    ),
    "short row": (
        [CLAIMS_HEADER, CLAIM_ROWS[0], CLAIM_ROWS[1][:-2]],
        ["claims.csv: wrong number of fields at row 2 (the header has 18)"],
    ),
    "several problems, many rows": (
        [CLAIMS_HEADER, *(replaced(replaced(CLAIM_ROWS[1], "policy_id", str(n)), "collision_type", "Top")
                          for n in range(1, 9)), replaced(CLAIM_ROWS[0], "num_witnesses", "x")],
        ["claims.csv: column collision_type has unknown values 'Top' at rows 1–8",
         "; column num_witnesses has non-integer values 'x' at row 9"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_CLAIMS, ids=list(BAD_CLAIMS))
def test_bad_input_is_refused_with_one_clear_message(run_job, tmp_path, case):
    rows, fragments = BAD_CLAIMS[case]
    process, output = run_preprocess(run_job, tmp_path, "claims", rows)
    assert process.returncode == 1
    assert process.stderr.startswith("error: claims.csv: ")
    assert process.stderr.count("\n") == 1, process.stderr  # one line, no traceback
    for fragment in fragments:
        assert fragment in process.stderr
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_binary_file_is_refused(run_job, tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "claims.csv").write_bytes(b"policy_id\xff\xfe,\x00\n")
    process = run_job("preprocess", "--dataset", "claims", "--input-dir", tmp_path / "raw")
    assert (process.returncode, process.stderr) == (
        1, "error: claims.csv: not UTF-8 text in the header, column 1 (byte 9)\n")
    body = ",".join(CLAIMS_HEADER) + "\n" + ",".join(CLAIM_ROWS[0]) + "\n\n"
    broken = ",".join(CLAIM_ROWS[1]).replace("Collision", "Coll\xe9sion").encode("latin-1")
    (tmp_path / "raw" / "claims.csv").write_bytes(body.encode() + broken + b"\n")
    process = run_job("preprocess", "--dataset", "claims", "--input-dir", tmp_path / "raw")
    offset = len(body.encode()) + broken.index(b"\xe9")
    assert process.stderr == f"error: claims.csv: not UTF-8 text at row 2, column incident_type (byte {offset})\n"


def test_many_blank_rows_are_summarised_and_the_message_fits(run_job, tmp_path):
    """A FailureReason keeps 1,024 characters: the message leads with the file and fits."""
    raw = read_csv(DATA_DIR / "claims.csv")
    process, _ = run_preprocess(run_job, tmp_path, "claims", [*raw, *([""] * len(CLAIMS_HEADER) for _ in range(20))])
    assert process.stderr == "error: claims.csv: 20 blank rows (5001–5020)\n"
    partly = [*raw[:3], *(["9999" + str(n)] + [""] * (len(CLAIMS_HEADER) - 1) for n in range(20))]
    process, _ = run_preprocess(run_job, tmp_path, "claims", partly)
    assert process.stderr.startswith(
        "error: claims.csv: blank values in 17 columns (driver_relationship, incident_type, collision_type, "
        "incident_severity, authorities_contacted and 12 more) at rows 3–22")
    wrong = [raw[0], *(["x"] * len(CLAIMS_HEADER) for _ in range(50))]  # every column wrong, in its own way
    process, _ = run_preprocess(run_job, tmp_path, "claims", wrong)
    assert process.stderr.startswith("error: claims.csv: column policy_id has non-integer values 'x' at rows 1–50")
    assert len(process.stderr) <= len("error: \n") + 960 and process.stderr.endswith("…\n")


def test_claims_without_customers_are_refused_naming_the_policies(run_job, tmp_path):
    write_csv(tmp_path / "customers" / "customers.csv", [CUSTOMERS_HEADER, CUSTOMER_ROWS[1]])
    rows = [CLAIMS_HEADER, *CLAIM_ROWS, *(replaced(CLAIM_ROWS[1], "policy_id", str(n)) for n in range(20, 30))]
    write_csv(tmp_path / "raw" / "claims.csv", rows)
    arguments = ["--dataset", "claims", "--input-dir", tmp_path / "raw", "--output-dir", tmp_path / "out",
                 "--customers-dir", tmp_path / "customers"]
    process = run_job("preprocess", *arguments)
    assert (process.returncode, process.stderr) == (1, (
        "error: claims.csv: column policy_id has 11 policies without a customer in customers.csv: "
        "7, 20, 21, 22, 23 and 6 more at rows 1, 3–12\n"))
    assert not (tmp_path / "out").exists()
    write_csv(tmp_path / "customers" / "customers.csv", [CUSTOMERS_HEADER, *CUSTOMER_ROWS])
    write_csv(tmp_path / "raw" / "claims.csv", [CLAIMS_HEADER, *CLAIM_ROWS])
    assert run_job("preprocess", *arguments).returncode == 0


def test_missing_input_file_and_bad_event_time(run_job, tmp_path):
    process = run_job("preprocess", "--dataset", "customers", "--input-dir", tmp_path / "nowhere")
    assert (process.returncode, process.stderr) == (
        1,
        f"error: customers.csv: file not found in {tmp_path / 'nowhere'}\n",
    )
    process = run_job("preprocess", "--dataset", "customers", "--event-time", "-1")
    assert process.returncode == 1
    assert "--event-time" in process.stderr


def test_parts_deal_the_rows_in_turn(tmp_path):
    """Each part file has the header and every third row: the ingest job's ShardedByS3Key input
    gives each of its instances one part."""
    (whole,) = preprocess.preprocess("claims", DATA_DIR, tmp_path / "one", EVENT_TIME)
    parts = preprocess.preprocess("claims", DATA_DIR, tmp_path / "three", EVENT_TIME, parts=3)
    assert [path.name for path in parts] == [f"claims-part-0000{n}.csv" for n in range(3)]
    header, *rows = read_csv(whole)
    for number, path in enumerate(parts):
        assert read_csv(path) == [header, *rows[number::3]]
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == [p.name for p in parts]


def test_a_good_file_is_streamed_in_bounded_memory(tmp_path):
    """40,000 rows pass without being held: Python's peak allocation stays far below the ~40 MB
    that their cells alone take."""
    header, *rows = read_csv(DATA_DIR / "claims.csv")
    with (tmp_path / "claims.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([str(n + 1), *rows[n % len(rows)][1:]] for n in range(40_000))
    tracemalloc.start()
    try:
        (output,) = preprocess.preprocess("claims", tmp_path, tmp_path / "out", EVENT_TIME)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert sum(1 for _ in output.open()) == 40_001
