"""Athena through boto3: queries over Glue tables (the offline store's Parquet, CSV and delimited
text, partitions), results paged with typed columns and written as CSV, failures, cancellation,
idempotency and durability across a restart."""

from __future__ import annotations

import csv
import io
import threading
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from include.localcloud.athena import models as athena_models
from include.localcloud.server import LocalCloud
from tests.conftest import make_client
from tests.localcloud.test_featurestore import claim, create_group, record, wait_for

BUCKET = "athena-tests"
RESULTS = f"s3://{BUCKET}/results/"


@pytest.fixture(scope="module")
def bucket(aws) -> str:
    s3 = aws("s3")
    s3.create_bucket(Bucket=BUCKET)
    return BUCKET


def start(athena: Any, sql: str, database: str = "default", **extra: Any) -> str:
    return athena.start_query_execution(
        QueryString=sql,
        QueryExecutionContext={"Database": database},
        ResultConfiguration={"OutputLocation": RESULTS},
        **extra,
    )["QueryExecutionId"]


def finish(athena: Any, query_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        query = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]
        if query["Status"]["State"] not in ("QUEUED", "RUNNING"):
            return query
        assert time.monotonic() < deadline, f"query still {query['Status']['State']}"
        time.sleep(0.02)


def rows_of(athena: Any, query_id: str) -> list[list[str | None]]:
    """Every row of every page, the header first."""
    pages = athena.get_paginator("get_query_results").paginate(QueryExecutionId=query_id)
    return [[d.get("VarCharValue") for d in row["Data"]] for page in pages for row in page["ResultSet"]["Rows"]]


def query(athena: Any, sql: str, database: str = "default") -> list[list[str | None]]:
    done = finish(athena, start(athena, sql, database))
    assert done["Status"]["State"] == "SUCCEEDED", done["Status"].get("StateChangeReason")
    return rows_of(athena, done["QueryExecutionId"])


def csv_table(aws: Any, rows: list[str], columns: list[dict[str, str]], serde: str, database: str = "csvdata",
              **options: Any) -> str:
    """A Glue table over CSV objects written to S3, in `database`; returns its name."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    s3, glue = aws("s3"), aws("glue")
    s3.put_object(Bucket=BUCKET, Key=f"csv/{name}/part-0.csv", Body="\n".join(rows).encode() + b"\n")
    try:
        glue.create_database(DatabaseInput={"Name": database})
    except glue.exceptions.AlreadyExistsException:
        pass
    glue.create_table(DatabaseName=database, TableInput={
        "Name": name,
        "Parameters": options.pop("table_parameters", {}),
        "PartitionKeys": options.pop("partition_keys", []),
        "StorageDescriptor": {
            "Columns": columns,
            "Location": f"s3://{BUCKET}/csv/{name}/",
            "SerdeInfo": {"SerializationLibrary": serde, "Parameters": options},
        },
    })
    return name


# 10^12 rows, in Trino SQL: runs until stopped.
LONG_QUERY = "SELECT count(*) FROM " + " CROSS JOIN ".join(f"UNNEST(sequence(1, 10000)) AS {n}(x)" for n in "abc")
OPEN_CSV = "org.apache.hadoop.hive.serde2.OpenCSVSerde"
LAZY_SIMPLE = "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe"


def test_offline_store_is_queryable_within_seconds(aws, bucket) -> None:
    group = create_group(aws("sagemaker"), aws("s3"))
    table = group["OfflineStoreConfig"]["DataCatalogConfig"]["TableName"]
    fs, athena = aws("sagemaker-featurestore-runtime"), aws("athena")
    put_at = time.monotonic()
    for policy_id in range(1, 51):
        fs.put_record(FeatureGroupName=group["FeatureGroupName"], Record=claim(policy_id, 1704448800.0 + policy_id))
    sql = f'SELECT count(*) AS n, sum(policy_id) AS total FROM sagemaker_featurestore."{table}"'
    wait_for(lambda: query(athena, sql) == [["n", "total"], ["50", "1275"]], timeout=20)
    assert time.monotonic() - put_at < 20
    done = finish(athena, start(athena, f'SELECT * FROM "{table}" WHERE policy_id = 7', "sagemaker_featurestore"))
    page = athena.get_query_results(QueryExecutionId=done["QueryExecutionId"])
    types = {c["Name"]: c["Type"] for c in page["ResultSet"]["ResultSetMetadata"]["ColumnInfo"]}
    assert types == {
        "policy_id": "bigint", "event_time": "double", "total_claim_amount": "double", "incident_type": "varchar",
        "num_injuries": "bigint", "write_time": "timestamp", "api_invocation_time": "timestamp", "is_deleted": "boolean",
    }
    header, row = rows_of(athena, done["QueryExecutionId"])
    values = dict(zip(header, row, strict=True))
    assert (values["policy_id"], values["event_time"], values["incident_type"]) == ("7", "1.704448807E9", "collision")
    assert values["is_deleted"] == "false"
    assert done["Statistics"]["DataScannedInBytes"] > 0
    assert done["StatementType"] == "DML"


def test_join_of_claims_and_customers(aws, bucket) -> None:
    sagemaker, s3 = aws("sagemaker"), aws("s3")
    claims = create_group(sagemaker, s3, "claims")
    customers = create_group(
        sagemaker, s3, "customers",
        [{"FeatureName": "policy_id", "FeatureType": "Integral"}, {"FeatureName": "event_time", "FeatureType": "Fractional"},
         {"FeatureName": "customer_age", "FeatureType": "Integral"}],
    )
    fs, athena = aws("sagemaker-featurestore-runtime"), aws("athena")
    for policy_id in (1, 2, 3):
        fs.put_record(FeatureGroupName=claims["FeatureGroupName"], Record=claim(policy_id, 10.0, 100.0 * policy_id))
    for policy_id, age in ((1, 30), (2, 45)):
        fs.put_record(FeatureGroupName=customers["FeatureGroupName"],
                      Record=record(policy_id=policy_id, event_time=10.0, customer_age=age))
    claims_table = claims["OfflineStoreConfig"]["DataCatalogConfig"]["TableName"]
    customers_table = customers["OfflineStoreConfig"]["DataCatalogConfig"]["TableName"]
    sql = (
        f'SELECT c.policy_id, c.total_claim_amount, cu.customer_age FROM "{claims_table}" c '
        f'LEFT JOIN "sagemaker_featurestore"."{customers_table}" cu ON c.policy_id = cu.policy_id ORDER BY 1'
    )
    expected = [["policy_id", "total_claim_amount", "customer_age"],
                ["1", "100.0", "30"], ["2", "200.0", "45"], ["3", "300.0", None]]
    wait_for(lambda: query(athena, sql, "sagemaker_featurestore") == expected, timeout=20)


def test_sql_errors_end_failed_with_the_reason(aws, bucket) -> None:
    athena = aws("athena")
    name = csv_table(aws, ["1,a"], [{"Name": "id", "Type": "int"}, {"Name": "name", "Type": "string"}], OPEN_CSV)
    cases = {
        f"SELECT nope FROM {name}": "nope",
        "SELECT * FROM no_such_table": "TABLE_NOT_FOUND: Table 'awsdatacatalog.csvdata.no_such_table' does not exist",
        "SELECT * FROM no_such_db.t": "SCHEMA_NOT_FOUND: Schema 'no_such_db' does not exist",
        "SELECT 1; SELECT 2": "Only one sql statement is allowed",
        "CREATE EXTERNAL TABLE x (a int) LOCATION 's3://b/x/'": "NOT_SUPPORTED",
    }
    for sql, reason in cases.items():
        done = finish(athena, start(athena, sql, "csvdata"))
        status = done["Status"]
        assert status["State"] == "FAILED", sql
        assert reason in status["StateChangeReason"], (sql, status["StateChangeReason"])
        assert status["AthenaError"]["ErrorCategory"] == 2
        assert status["AthenaError"]["ErrorMessage"] == status["StateChangeReason"]
        with pytest.raises(ClientError) as caught:
            athena.get_query_results(QueryExecutionId=done["QueryExecutionId"])
        assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
    assert finish(athena, start(athena, "SELECT 1", "csvdata"))["StatementType"] == "DML"


def test_sql_trino_refuses_is_refused_as_athena_refuses_it(aws, bucket) -> None:
    """DuckDB runs these, Trino's parser refuses them: Athena answers StartQueryExecution with
    InvalidRequestException (MALFORMED_QUERY) and where; the local cloud names the construct too."""
    athena = aws("athena")
    name = csv_table(aws, ["1,a", "2,b", "3,c"], [{"Name": "id", "Type": "int"}, {"Name": "name", "Type": "string"}],
                     OPEN_CSV)
    refused = {
        f"SELECT * EXCLUDE (name) FROM {name}": "line 1:10: mismatched input 'EXCLUDE'. SELECT * EXCLUDE",
        f"FROM {name} SELECT id": "line 1:1: mismatched input 'FROM'. A query starting with FROM",
        "SELECT [1, 2] AS ids": "line 1:8: mismatched input '['. A list literal",
        f"SELECT id::varchar FROM {name}": "line 1:10: mismatched input '::'. The :: cast",
        f"SELECT id FROM {name} QUALIFY row_number() OVER (ORDER BY id) = 1": "mismatched input 'QUALIFY'",
        f"SELECT id FROM {name}\nLIMIT 1 OFFSET 1": "line 2:9: mismatched input 'OFFSET'. OFFSET after LIMIT",
        f"SELECT id FROM {name} WHERE name ILIKE 'A'": "mismatched input 'ILIKE'",
        "SELECT * FROM range(3)": "mismatched input 'range'. A table function called in FROM",
        "SELECT * FROM read_csv('/etc/passwd')": "mismatched input 'read_csv'",
        "SELECT {'a': 1} AS s": "mismatched input '{'. A struct literal",
        "SELEC 1": "line 1:1: mismatched input 'SELEC'",
        f"SELECT `id` FROM {name}": "line 1:8: backquoted identifiers are not supported",
    }
    for sql, reason in refused.items():
        with pytest.raises(ClientError) as caught:
            start(athena, sql, "csvdata")
        error = caught.value.response
        assert error["Error"]["Code"] == "InvalidRequestException", sql
        assert error["AthenaErrorCode"] == "MALFORMED_QUERY", sql
        assert reason in error["Error"]["Message"], (sql, error["Error"]["Message"])
    # What Trino writes instead runs, transpiled to DuckDB's SQL.
    assert query(athena, f"SELECT id, name FROM {name} ORDER BY id OFFSET 1 LIMIT 1", "csvdata") == [
        ["id", "name"], ["2", "b"]]
    assert query(athena, "SELECT ARRAY[1, 2] AS ids, CAST(7 AS varchar) AS seven, "
                         "transform(ARRAY[1, 2], x -> x * 10) AS tens") == [["ids", "seven", "tens"],
                                                                          ["[1, 2]", "7", "[10, 20]"]]
    assert query(athena, f"SELECT count(*) AS n FROM {name} WHERE lower(name) LIKE lower('A')", "csvdata") == [
        ["n"], ["1"]]


def test_paging_typed_columns_and_result_csv(aws, bucket) -> None:
    athena, s3 = aws("athena"), aws("s3")
    lines = ["id,name,score,day"] + [f'{i},"name {i}, ""quoted""",{i / 4 if i % 10 else ""},2024-01-0{1 + i % 9}'
                                      for i in range(2500)]
    columns = [{"Name": "id", "Type": "bigint"}, {"Name": "name", "Type": "string"},
               {"Name": "score", "Type": "double"}, {"Name": "day", "Type": "date"}]
    name = csv_table(aws, lines, columns, OPEN_CSV, table_parameters={"skip.header.line.count": "1"})
    query_id = start(athena, f"SELECT id, name, score, day, id * 2 FROM {name} ORDER BY id", "csvdata")
    done = finish(athena, query_id)
    assert done["Status"]["State"] == "SUCCEEDED", done["Status"].get("StateChangeReason")

    first = athena.get_query_results(QueryExecutionId=query_id, MaxResults=1000)
    info = first["ResultSet"]["ResultSetMetadata"]["ColumnInfo"]
    assert [(c["Name"], c["Type"], c["Precision"]) for c in info] == [
        ("id", "bigint", 19), ("name", "varchar", 2147483647), ("score", "double", 17),
        ("day", "date", 0), ("_col4", "bigint", 19)
    ]
    rows = first["ResultSet"]["Rows"]
    assert len(rows) == 1000 and "NextToken" in first
    assert [d["VarCharValue"] for d in rows[0]["Data"]] == ["id", "name", "score", "day", "_col4"]
    assert rows[1]["Data"][2] == {}  # NULL: no VarCharValue (an empty score does not parse as double)
    assert [d.get("VarCharValue") for d in rows[2]["Data"]] == ["1", 'name 1, "quoted"', "0.25", "2024-01-02", "2"]
    all_rows = rows_of(athena, query_id)
    assert len(all_rows) == 2501
    assert all_rows[-1][0] == "2499"
    with pytest.raises(ClientError):
        athena.get_query_results(QueryExecutionId=query_id, NextToken="not-a-token")

    location = done["ResultConfiguration"]["OutputLocation"]
    assert location == f"{RESULTS}{query_id}.csv"
    key = location[len(f"s3://{BUCKET}/"):]
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    lines_out = body.splitlines()
    assert lines_out[0] == '"id","name","score","day","_col4"'
    assert lines_out[1] == '"0","name 0, ""quoted""",,"2024-01-01","0"'  # NULL unquoted and empty
    assert list(csv.reader(io.StringIO(body)))[1:] == [[v or "" for v in row] for row in all_rows[1:]]
    assert s3.head_object(Bucket=BUCKET, Key=f"{key}.metadata")["ContentLength"] > 0


def test_pages_are_read_from_the_output_location(aws, bucket) -> None:
    """GetQueryResults reads its pages from the result's CSV, never keeping a result (a dataset
    query's may be gigabytes): deleting the CSV shows where the pages come from."""
    athena, s3 = aws("athena"), aws("s3")
    done = finish(athena, start(athena, "SELECT 'not kept' AS word"))
    assert rows_of(athena, done["QueryExecutionId"]) == [["word"], ["not kept"]]
    s3.delete_object(Bucket=BUCKET, Key=done["ResultConfiguration"]["OutputLocation"][len(f"s3://{BUCKET}/"):])
    with pytest.raises(ClientError, match="Unable to read the results"):
        athena.get_query_results(QueryExecutionId=done["QueryExecutionId"])


def test_pages_of_a_result_streamed_in_batches(aws, bucket, monkeypatch) -> None:
    """A result written in record batches (here of 300 rows) that do not end where pages (1,000
    rows) end reads the same rows whatever the page size: a one-column row's NULL (an empty CSV
    line), empty and multi-line strings included."""
    monkeypatch.setattr(athena_models, "RESULT_BATCH_ROWS", 300)
    athena = aws("athena")
    sql = ("SELECT x, CASE WHEN x % 7 = 0 THEN NULL WHEN x % 7 = 1 THEN '' "
           "WHEN x % 7 = 2 THEN 'line ' || CAST(x AS varchar) || chr(10) || 'next' ELSE CAST(x AS varchar) END AS v "
           "FROM UNNEST(sequence(1, 2345)) AS t(x) ORDER BY x")
    expected = [[str(x), None if x % 7 == 0 else "" if x % 7 == 1 else f"line {x}\nnext" if x % 7 == 2 else str(x)]
                for x in range(1, 2346)]
    done = finish(athena, start(athena, sql))
    assert done["Status"]["State"] == "SUCCEEDED", done["Status"].get("StateChangeReason")
    assert rows_of(athena, done["QueryExecutionId"]) == [["x", "v"], *expected]
    pages = athena.get_paginator("get_query_results").paginate(
        QueryExecutionId=done["QueryExecutionId"], PaginationConfig={"PageSize": 700})
    sizes, rows = [], []
    for page in pages:
        sizes.append(len(page["ResultSet"]["Rows"]))
        rows += [[d.get("VarCharValue") for d in row["Data"]] for row in page["ResultSet"]["Rows"]]
    assert sizes == [700, 700, 700, 246] and rows == [["x", "v"], *expected]
    one_column = query(athena, sql.replace("SELECT x, ", "SELECT "))
    assert one_column == [["v"], *[[v] for _, v in expected]]


def test_delimited_text_partitions_and_nested_names(aws, bucket) -> None:
    athena, glue, s3 = aws("athena"), aws("glue"), aws("s3")
    columns = [{"Name": "id", "Type": "int"}, {"Name": "tags", "Type": "string"},
               {"Name": "amount", "Type": "decimal(10,2)"}]
    name = csv_table(aws, [], columns, LAZY_SIMPLE, **{"field.delim": "|"},
                     partition_keys=[{"Name": "state", "Type": "string"}])
    for state, body in (("ca", b"1|a|1.50\n2|\\N|oops\n"), ("wa", b"3|c|3.25\n")):
        s3.put_object(Bucket=BUCKET, Key=f"csv/{name}/state={state}/data.txt", Body=body)
        glue.create_partition(DatabaseName="csvdata", TableName=name, PartitionInput={
            "Values": [state], "StorageDescriptor": {"Location": f"s3://{BUCKET}/csv/{name}/state={state}/"},
        })
    s3.put_object(Bucket=BUCKET, Key=f"csv/{name}/state=or/data.txt", Body=b"9|unregistered|9.99\n")
    rows = query(athena, f"SELECT * FROM awsdatacatalog.csvdata.{name} ORDER BY id")
    assert rows == [["id", "tags", "amount", "state"], ["1", "a", "1.50", "ca"], ["2", None, None, "ca"],
                    ["3", "c", "3.25", "wa"]]


def test_cache_follows_new_and_changed_objects(aws, bucket) -> None:
    athena, s3 = aws("athena"), aws("s3")
    name = csv_table(aws, ["1"], [{"Name": "id", "Type": "int"}], OPEN_CSV)
    sql = f"SELECT sum(id) FROM csvdata.{name}"
    assert query(athena, sql)[1] == ["1"]
    s3.put_object(Bucket=BUCKET, Key=f"csv/{name}/part-1.csv", Body=b"10\n")
    assert query(athena, sql)[1] == ["11"]
    s3.put_object(Bucket=BUCKET, Key=f"csv/{name}/part-0.csv", Body=b"100\n")
    assert query(athena, sql)[1] == ["110"]
    s3.delete_object(Bucket=BUCKET, Key=f"csv/{name}/part-1.csv")
    assert query(athena, sql)[1] == ["100"]


def test_first_queries_of_a_database_at_once_all_get_their_schema(tmp_path) -> None:
    """As the pipeline's two offline-store sensors do: the first queries of a database start at
    once. Before each schema was created once, about half of these rounds had a query fail with
    DuckDB's "Catalog write-write conflict on create"."""
    catalog = athena_models.GlueCatalog(glue=None, s3=None, folder=tmp_path / "catalog")

    def first_query(database: str, barrier: threading.Barrier, failures: list[Exception]) -> None:
        barrier.wait()
        try:
            catalog.cursor(database).close()
        except Exception as exc:  # any failure is the finding
            failures.append(exc)

    try:
        for round_number in range(20):
            barrier, failures = threading.Barrier(8), []
            threads = [threading.Thread(target=first_query, args=(f"new_{round_number}", barrier, failures))
                       for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not failures, f"round {round_number}: {failures[0]}"
    finally:
        catalog.close()


def test_request_validation_and_idempotency(aws, bucket) -> None:
    athena = aws("athena")
    with pytest.raises(ClientError) as caught:
        athena.start_query_execution(QueryString="SELECT 1")
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
    assert "output location" in caught.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as caught:
        athena.start_query_execution(QueryString="SELECT 1", WorkGroup="nope",
                                     ResultConfiguration={"OutputLocation": RESULTS})
    assert "WorkGroup nope" in caught.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as caught:
        athena.get_query_execution(QueryExecutionId="no-such-query")
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"

    token = uuid.uuid4().hex
    first = start(athena, "SELECT 1", ClientRequestToken=token)
    assert start(athena, "SELECT 1", ClientRequestToken=token) == first
    with pytest.raises(ClientError):
        start(athena, "SELECT 2", ClientRequestToken=token)

    finish(athena, first)
    listed = athena.list_query_executions(MaxResults=50)["QueryExecutionIds"]
    assert first in listed
    batch = athena.batch_get_query_execution(QueryExecutionIds=[first, "missing"])
    assert [q["QueryExecutionId"] for q in batch["QueryExecutions"]] == [first]
    assert [u["QueryExecutionId"] for u in batch["UnprocessedQueryExecutionIds"]] == ["missing"]


def test_stop_query_execution(aws, bucket) -> None:
    athena = aws("athena")
    query_id = start(athena, LONG_QUERY)
    wait_for(lambda: athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]["State"] == "RUNNING")
    athena.stop_query_execution(QueryExecutionId=query_id)
    assert finish(athena, query_id)["Status"]["State"] == "CANCELLED"
    assert query(athena, "SELECT 42 AS answer") == [["answer"], ["42"]]  # the worker is free again


def test_query_history_survives_restart(tmp_path) -> None:
    with LocalCloud(tmp_path, port=0) as first:
        make_client(first, "s3").create_bucket(Bucket=BUCKET)
        athena = make_client(first, "athena")
        done_id = start(athena, "SELECT 'kept' AS word, 2.5 AS x")
        assert finish(athena, done_id)["Status"]["State"] == "SUCCEEDED"
        running_id = start(athena, LONG_QUERY)
        wait_for(lambda: athena.get_query_execution(QueryExecutionId=running_id)["QueryExecution"]["Status"]["State"]
                 == "RUNNING")
    with LocalCloud(tmp_path, port=0) as second:
        athena = make_client(second, "athena")
        assert rows_of(athena, done_id) == [["word", "x"], ["kept", "2.5"]]  # read back from S3
        stopped = athena.get_query_execution(QueryExecutionId=running_id)["QueryExecution"]["Status"]
        assert stopped["State"] == "FAILED"
        assert "stopped" in stopped["StateChangeReason"]
        assert athena.list_query_executions()["QueryExecutionIds"] == [running_id, done_id]
