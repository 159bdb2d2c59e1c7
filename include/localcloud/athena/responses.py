"""Athena (JSON 1.1): StartQueryExecution, GetQueryExecution, GetQueryResults, StopQueryExecution,
ListQueryExecutions and BatchGetQueryExecution. Queries run in the background on a small thread
pool; each query's description is kept in the store (kind "athena-query") and its results, like
Athena's, in the output location as <id>.csv and <id>.csv.metadata, from which GetQueryResults
reads its pages (never the whole result: a dataset query's may be gigabytes)."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
from botocore.exceptions import ClientError

from include.localcloud.athena.dialect import NotTrinoSql, to_duckdb
from include.localcloud.athena.models import (
    DEFAULT_DATABASE,
    PAGE_ROWS,
    SYSTEM_ERROR,
    WRITE_KEYWORDS,
    GlueCatalog,
    QueryFailed,
    QueryResult,
    first_keyword,
    run_query,
    split_s3_uri,
    statement_type,
)
from include.localcloud.protocol import AwsError, JsonService, RequestContext
from include.localcloud.server import LocalCloud

log = logging.getLogger(__name__)

QUERY = "athena-query"
REQUEST_TOKEN = "athena-request-token"  # ClientRequestToken -> the query it started
WORKGROUP = "primary"  # the only workgroup; like a new account's, it has no output location
QUERY_THREADS = 2
UNFINISHED = ("QUEUED", "RUNNING")
ENGINE_VERSION = {"SelectedEngineVersion": "AUTO", "EffectiveEngineVersion": "Athena engine version 3"}
STOPPED_REASON = "The local cloud stopped before the query finished."


def invalid(message: str) -> AwsError:
    return AwsError("InvalidRequestException", message)


def millis(seconds: float) -> int:
    return int(seconds * 1000)


class AthenaResponse(JsonService):
    service_name = "athena"
    validation_error = "InvalidRequestException"

    def __init__(self, cloud: LocalCloud) -> None:
        super().__init__(cloud)
        self._pool: ThreadPoolExecutor | None = None
        self._catalogs: dict[str, GlueCatalog] = {}
        # Queries a worker has taken, with their DuckDB cursor once they have one (to interrupt).
        self._active: dict[str, duckdb.DuckDBPyConnection | None] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._fail_unfinished()  # what a crash left queued or running
        self._pool = ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="athena")

    def stop(self) -> None:
        self._fail_unfinished()
        self._interrupt(lambda query_id: True)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            for catalog in self._catalogs.values():
                catalog.close()
            self._catalogs.clear()

    # -- operations ------------------------------------------------------------------------
    def start_query_execution(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        sql = params["QueryString"]
        workgroup = params.get("WorkGroup", WORKGROUP)
        if workgroup != WORKGROUP:
            raise invalid(f"WorkGroup {workgroup} is not found.")
        result_configuration = dict(params.get("ResultConfiguration") or {})
        location = result_configuration.get("OutputLocation")
        if not location:
            raise invalid(
                "No output location provided. An output location is required either through the Workgroup "
                "result configuration setting or as an API input."
            )
        try:
            split_s3_uri(location)
        except ValueError as exc:
            raise invalid(f"outputLocation: {exc}") from None
        if statement_type(sql) == "DML" and first_keyword(sql) not in WRITE_KEYWORDS:
            try:
                to_duckdb(sql)
            except NotTrinoSql as exc:  # Athena parses a query before it takes it
                raise AwsError("InvalidRequestException", str(exc), fields={"AthenaErrorCode": "MALFORMED_QUERY"}) from None
        if self._pool is None:
            raise AwsError("InternalServerException", "Athena is not running.", 500)
        query_id = str(uuid.uuid4())
        result_configuration["OutputLocation"] = f"{location.rstrip('/')}/{query_id}.csv"
        context = params.get("QueryExecutionContext") or {}
        query = {
            "QueryExecutionId": query_id,
            "Query": sql,
            "StatementType": statement_type(sql),
            "ResultConfiguration": result_configuration,
            "QueryExecutionContext": context,
            "Status": {"State": "QUEUED", "SubmissionDateTime": time.time()},
            "Statistics": {"EngineExecutionTimeInMillis": 0, "DataScannedInBytes": 0, "TotalExecutionTimeInMillis": 0},
            "WorkGroup": workgroup,
            "EngineVersion": ENGINE_VERSION,
        }
        token = params.get("ClientRequestToken")
        store = self.cloud.store
        with store.transaction():
            if token and (earlier := store.get(REQUEST_TOKEN, token)):
                if earlier["QueryString"] != sql:
                    raise invalid("Idempotent parameters do not match: the ClientRequestToken was used for another query.")
                return {"QueryExecutionId": earlier["QueryExecutionId"]}
            store.put(QUERY, query_id, query)
            if token:
                store.put(REQUEST_TOKEN, token, {"QueryExecutionId": query_id, "QueryString": sql})
        database = (context.get("Database") or DEFAULT_DATABASE).lower()
        self._pool.submit(self._run, query_id, ctx.region, database, context.get("Catalog") or "AwsDataCatalog")
        return {"QueryExecutionId": query_id}

    def get_query_execution(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return {"QueryExecution": self._query(params["QueryExecutionId"])}

    def batch_get_query_execution(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        found, missing = [], []
        for query_id in params["QueryExecutionIds"]:
            query = self.cloud.store.get(QUERY, query_id)
            if query is None:
                missing.append({"QueryExecutionId": query_id, "ErrorCode": "INVALID_INPUT",
                                "ErrorMessage": f"QueryExecution {query_id} was not found"})
            else:
                found.append(query)
        return {"QueryExecutions": found, "UnprocessedQueryExecutionIds": missing}

    def list_query_executions(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        workgroup = params.get("WorkGroup", WORKGROUP)
        if workgroup != WORKGROUP:
            raise invalid(f"WorkGroup {workgroup} is not found.")
        newest_first = [q["QueryExecutionId"] for q in reversed(self.cloud.store.list(QUERY))]
        start = self._token(params.get("NextToken"), len(newest_first))
        size = params.get("MaxResults") or 50
        page: dict[str, Any] = {"QueryExecutionIds": newest_first[start:start + size]}
        if start + size < len(newest_first):
            page["NextToken"] = str(start + size)
        return page

    def get_query_results(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        query = self._query(params["QueryExecutionId"])
        state = query["Status"]["State"]
        if state in UNFINISHED:
            raise invalid(f"Query has not yet finished. Current state: {state}")
        if state != "SUCCEEDED":
            reason = query["Status"].get("StateChangeReason", "")
            raise invalid(f"Query did not finish successfully. Final query state: {state}. {reason}".strip())
        result, read = self._result(query)
        # Rows are the header (the column labels, like Athena's first row) and then the data.
        total = result.row_count + 1
        start = self._token(params.get("NextToken"), total)
        end = min(start + (params.get("MaxResults") or PAGE_ROWS), total)
        first_data_row = max(start, 1)
        rows = ([result.names] if start == 0 else []) + result.rows(first_data_row - 1, end - first_data_row, read)
        page: dict[str, Any] = {
            "UpdateCount": 0,
            "ResultSet": {
                "Rows": [{"Data": [{"VarCharValue": v} if v is not None else {} for v in row]} for row in rows],
                "ResultSetMetadata": {"ColumnInfo": result.column_info},
            },
        }
        if end < total:
            page["NextToken"] = str(end)
        return page

    def stop_query_execution(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        query_id = params["QueryExecutionId"]
        self._query(query_id)
        if self._finish(query_id, "CANCELLED"):
            threading.Thread(target=self._interrupt, args=(query_id.__eq__,), daemon=True).start()
        return {}

    # -- running ---------------------------------------------------------------------------
    def _run(self, query_id: str, region: str, database: str, catalog_name: str) -> None:
        started = time.time()
        with self._lock:
            self._active[query_id] = None
        try:
            if not self._transition(query_id, ("QUEUED",), lambda q: q["Status"].update(State="RUNNING")):
                return  # cancelled while queued
            query = self._query(query_id)
            self._execute(query_id, query, region, database, catalog_name, started)
        finally:
            with self._lock:
                self._active.pop(query_id, None)

    def _execute(
        self, query_id: str, query: dict[str, Any], region: str, database: str, catalog_name: str, started: float
    ) -> None:
        try:
            if catalog_name.lower() != "awsdatacatalog":
                raise QueryFailed(f"CATALOG_NOT_FOUND: Catalog '{catalog_name.lower()}' does not exist")
            with tempfile.TemporaryDirectory(prefix="athena-result-", dir=self.cloud.state_dir) as folder:
                path = Path(folder) / "result.csv"
                result = run_query(
                    self._catalog(region), query["Query"], database, lambda c: self._track(query_id, c), path
                )
                written = time.monotonic()
                self._write_results(region, query, result, path)
        except duckdb.InterruptException:
            return  # cancelled or stopping: the state is already final
        except QueryFailed as failure:
            self._finish(query_id, "FAILED", started, failure=failure)
        except Exception as exc:  # a bug: the query fails, the server stays up
            log.exception("Athena query %s failed", query_id)
            internal = QueryFailed(f"INTERNAL_ERROR: {exc}", 100, SYSTEM_ERROR)
            self._finish(query_id, "FAILED", started, failure=internal)
        else:
            self._finish(query_id, "SUCCEEDED", started, result=result, writing_ms=millis(time.monotonic() - written))

    def _interrupt(self, which: Callable[[str], bool]) -> None:
        """Interrupt the taken queries `which` selects until their workers let go: one may not
        have its cursor yet, and an interrupt that comes before DuckDB executes is lost, so it is
        repeated."""
        while True:
            with self._lock:
                selected = [cursor for query_id, cursor in self._active.items() if which(query_id)]
            if not selected:
                return
            for cursor in selected:
                if cursor is not None:
                    cursor.interrupt()
            time.sleep(0.05)

    def _track(self, query_id: str, cursor: duckdb.DuckDBPyConnection) -> None:
        with self._lock:
            self._active[query_id] = cursor

    def _catalog(self, region: str) -> GlueCatalog:
        with self._lock:
            if region not in self._catalogs:
                self._catalogs[region] = GlueCatalog(
                    self.cloud.client("glue", region), self.cloud.client("s3", region),
                    self.cloud.state_dir / "athena" / region,
                )
            return self._catalogs[region]

    def _write_results(self, region: str, query: dict[str, Any], result: QueryResult, path: Path) -> None:
        location = query["ResultConfiguration"]["OutputLocation"]
        bucket, key = split_s3_uri(location)
        s3 = self.cloud.client("s3", region)
        try:
            s3.upload_file(str(path), bucket, key)  # from the file, in parts: never one body in memory
            s3.put_object(Bucket=bucket, Key=f"{key}.metadata", Body=result.metadata())
        except ClientError as exc:
            raise QueryFailed(f"Unable to write query results to {location}: {exc}", 401) from None

    def _result(self, query: dict[str, Any]) -> tuple[QueryResult, Callable[[int, int], bytes]]:
        """A finished query's result as its .metadata describes it, and a reader of byte ranges of its CSV."""
        location = query["ResultConfiguration"]["OutputLocation"]
        bucket, key = split_s3_uri(location)
        s3 = self.cloud.client("s3")

        def unreadable(why: Exception) -> AwsError:
            return invalid(f"Unable to read the results of query {query['QueryExecutionId']} from {location}: {why}")

        def read(first: int, last: int) -> bytes:
            try:
                return s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={first}-{last}")["Body"].read()
            except ClientError as exc:
                raise unreadable(exc) from None

        try:
            metadata = s3.get_object(Bucket=bucket, Key=f"{key}.metadata")["Body"].read()
            return QueryResult.from_metadata(metadata), read
        except ClientError as exc:
            raise unreadable(exc) from None
        except (KeyError, ValueError) as exc:  # e.g. a .metadata of an earlier version
            raise unreadable(ValueError(f"its .metadata lacks {exc}")) from None

    # -- state -----------------------------------------------------------------------------
    def _query(self, query_id: str) -> dict[str, Any]:
        query = self.cloud.store.get(QUERY, query_id)
        if query is None:
            raise invalid(f"QueryExecution {query_id} was not found")
        return query

    @staticmethod
    def _token(token: str | None, total: int) -> int:
        if token is None:
            return 0
        if not token.isdigit() or int(token) > total:
            raise invalid("The NextToken is not valid.")
        return int(token)

    def _transition(self, query_id: str, states: tuple[str, ...], change: Callable[[dict[str, Any]], None]) -> bool:
        """Apply `change` if the query is in one of `states`; False when it is not (any more)."""
        store = self.cloud.store
        with store.transaction():
            query = store.get(QUERY, query_id)
            if query is None or query["Status"]["State"] not in states:
                return False
            change(query)
            store.put(QUERY, query_id, query)
            return True

    def _finish(
        self,
        query_id: str,
        state: str,
        started: float | None = None,
        failure: QueryFailed | None = None,
        result: QueryResult | None = None,
        writing_ms: int = 0,
    ) -> bool:
        """End a queued or running query (`started` when a worker took it); False when it had
        already ended."""
        ended = time.time()

        def change(query: dict[str, Any]) -> None:
            status = query["Status"]
            status.update(State=state, CompletionDateTime=ended)
            if failure is not None:
                status["StateChangeReason"] = failure.message
                status["AthenaError"] = {
                    "ErrorCategory": failure.category, "ErrorType": failure.error_type,
                    "Retryable": failure.category == SYSTEM_ERROR, "ErrorMessage": failure.message,
                }
            total = millis(ended - status["SubmissionDateTime"])
            queued = millis(started - status["SubmissionDateTime"]) if started else total
            query["Statistics"] = {
                "EngineExecutionTimeInMillis": result.engine_ms if result else 0,
                "DataScannedInBytes": result.scanned_bytes if result else 0,
                "TotalExecutionTimeInMillis": total,
                "QueryQueueTimeInMillis": queued,
                "ServicePreProcessingTimeInMillis": 0,
                "QueryPlanningTimeInMillis": result.planning_ms if result else 0,
                "ServiceProcessingTimeInMillis": writing_ms,
                "ResultReuseInformation": {"ReusedPreviousResult": False},
            }

        return self._transition(query_id, UNFINISHED, change)

    def _fail_unfinished(self) -> None:
        stopped = QueryFailed(STOPPED_REASON, 100, SYSTEM_ERROR)
        for query in self.cloud.store.list(QUERY):
            if query["Status"]["State"] in UNFINISHED:
                self._finish(query["QueryExecutionId"], "FAILED", failure=stopped)

