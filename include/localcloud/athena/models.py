"""Athena's engine in the local cloud: Trino SQL (see dialect.py) run by DuckDB over the Glue Data Catalog's tables, whose
S3 objects (Parquet, CSV, delimited text) are streamed into a DuckDB database file per region
and reloaded only when the table's definition or its objects' ETags change. DuckDB's memory is
bounded (MEMORY_LIMIT; it spills to a folder beside the database), and results stream to their
CSV in record batches, rendered the way Athena renders them: every value a string, typed column
metadata, an all-quoted CSV. Pages of a result are read back from that CSV, by byte ranges the
.metadata file keeps for every PAGE_ROWS rows."""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from include.localcloud.athena.dialect import NotTrinoSql, to_duckdb

CATALOG = "awsdatacatalog"  # the DuckDB database holding the Glue tables; Athena's catalog name
DEFAULT_DATABASE = "default"
# DuckDB's memory for the loaded tables, the queries' joins, windows and sorts, beyond which it
# spills to disk: the server's peak stays under 1 GiB through the 1,000,000-policy dataset query
# (878 MiB; `python -m include.bench_athena`), which needs more than 256 MB that cannot spill.
MEMORY_LIMIT = "384MB"
PAGE_ROWS = 1000  # rows of a GetQueryResults page at most, Athena's limit
RESULT_BATCH_ROWS = 10 * PAGE_ROWS  # rows rendered and written at a time (100,000 cost 104 MiB more at 1M)
COPY_BYTES = 2**20
WRITE_KEYWORDS = {"insert", "update", "delete", "merge", "unload"}
DDL_KEYWORDS = {"create", "drop", "alter", "msck", "show", "describe", "desc", "use", "grant", "revoke"}
UTILITY_KEYWORDS = {"explain", "prepare", "execute", "deallocate"}
# Athena's error catalog: ErrorCategory 1 system, 2 user; ErrorType 1000 user error, 1001 data
# error, 401 results not written to S3, 100 internal service error.
USER_ERROR, SYSTEM_ERROR = 2, 1
PRIMITIVE_TYPES = {
    "string": "VARCHAR", "varchar": "VARCHAR", "char": "VARCHAR", "int": "INTEGER", "integer": "INTEGER",
    "bigint": "BIGINT", "smallint": "SMALLINT", "tinyint": "TINYINT", "double": "DOUBLE", "float": "FLOAT",
    "real": "FLOAT", "boolean": "BOOLEAN", "date": "DATE", "timestamp": "TIMESTAMP", "binary": "BLOB",
    "decimal": "DECIMAL(10,0)",
}
_TYPE_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_FIELD_NAME = re.compile(r"[^:<>,\s]+")
_LEADING_COMMENTS = re.compile(r"^(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)


class QueryFailed(Exception):
    """The query ends FAILED: `message` becomes its StateChangeReason and AthenaError message."""

    def __init__(self, message: str, error_type: int = 1000, category: int = USER_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.category = category


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- statements --------------------------------------------------------------------------------
def first_keyword(sql: str) -> str:
    body = _LEADING_COMMENTS.sub("", sql, count=1)
    if body.startswith("("):
        return "("
    found = re.match(r"[A-Za-z]+", body)
    return found.group(0).lower() if found else ""


def statement_type(sql: str) -> str:
    keyword = first_keyword(sql)
    if keyword in DDL_KEYWORDS:
        return "DDL"
    if keyword in UTILITY_KEYWORDS:
        return "UTILITY"
    return "DML"


@dataclass(frozen=True)
class TableRef:
    database: str
    table: str

    @property
    def display(self) -> str:
        return f"{CATALOG}.{self.database}.{self.table}"


@dataclass(frozen=True)
class ParsedQuery:
    tables: list[TableRef]  # the catalog tables it reads (CTE names excluded)
    unnamed: list[int]  # positions of select items without a name, which Athena calls _col<i>


def parse_query(cursor: duckdb.DuckDBPyConnection, sql: str, database: str) -> ParsedQuery:
    """What Athena needs to know of a SELECT before running it, from DuckDB's parse tree."""
    tree = json.loads(cursor.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    if tree.get("error"):
        kind = "SYNTAX_ERROR" if tree.get("error_type") == "parser" else "NOT_SUPPORTED"
        raise QueryFailed(f"{kind}: {tree.get('error_message')}")
    tables: list[tuple[str, str, str]] = []
    ctes: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE":
                tables.append((node["catalog_name"], node["schema_name"], node["table_name"]))
            for entry in (node.get("cte_map") or {}).get("map", []):
                ctes.add(entry["key"].lower())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    refs: list[TableRef] = []
    for catalog, schema, table in tables:
        if catalog and catalog.lower() != CATALOG:
            raise QueryFailed(f"CATALOG_NOT_FOUND: Catalog '{catalog.lower()}' does not exist")
        if not schema and table.lower() in ctes:
            continue
        ref = TableRef((schema or database).lower(), table.lower())
        if ref not in refs:
            refs.append(ref)
    items = tree["statements"][0]["node"].get("select_list", [])
    unnamed = []
    if not any(item["class"] == "STAR" for item in items):  # with a *, positions are not known yet
        unnamed = [i for i, item in enumerate(items) if not item["alias"] and item["class"] != "COLUMN_REF"]
    return ParsedQuery(refs, unnamed)


# -- Glue tables -------------------------------------------------------------------------------
def duckdb_type(glue_type: str) -> str:
    """The DuckDB type of a Glue (Hive) column type, e.g. array<struct<a:int>> -> STRUCT("a" INTEGER)[]."""
    parser = _TypeParser(glue_type.lower())
    try:
        parsed = parser.parse()
        complete = parser.peek() == ""
    except (KeyError, ValueError):
        complete = False
    if not complete:
        raise QueryFailed(f"NOT_SUPPORTED: Unsupported Glue column type '{glue_type}'")
    return parsed


class _TypeParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def peek(self) -> str:
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1
        return self.text[self.at] if self.at < len(self.text) else ""

    def take(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"expected {char} at {self.at} in {self.text}")
        self.at += 1

    def word(self, pattern: re.Pattern[str]) -> str:
        self.peek()
        found = pattern.match(self.text, self.at)
        if found is None:
            raise ValueError(f"expected a name at {self.at} in {self.text}")
        self.at = found.end()
        return found.group(0)

    def parse(self) -> str:
        name = self.word(_TYPE_NAME)
        if name == "array":
            self.take("<")
            inner = self.parse()
            self.take(">")
            return f"{inner}[]"
        if name == "map":
            self.take("<")
            key = self.parse()
            self.take(",")
            value = self.parse()
            self.take(">")
            return f"MAP({key}, {value})"
        if name == "struct":
            self.take("<")
            fields = []
            while True:
                field_name = self.word(_FIELD_NAME)
                self.take(":")
                fields.append(f"{quote(field_name)} {self.parse()}")
                if self.peek() != ",":
                    break
                self.take(",")
            self.take(">")
            return f"STRUCT({', '.join(fields)})"
        arguments = ""
        if self.peek() == "(":  # decimal(p,s), varchar(n), char(n)
            close = self.text.index(")", self.at)
            arguments, self.at = self.text[self.at + 1:close], close + 1
        if name == "decimal" and arguments:
            return f"DECIMAL({arguments})"
        return PRIMITIVE_TYPES[name]


@dataclass(frozen=True)
class S3Object:
    key: str
    etag: str
    size: int
    partition: tuple[str, ...]  # the partition's values, in PartitionKeys order


@dataclass(frozen=True)
class TableSource:
    """How to read a Glue table: its columns (partition keys last), format and S3 objects."""

    ref: TableRef
    columns: list[tuple[str, str]]  # (name, DuckDB type), data columns then partition keys
    partition_keys: int
    file_format: str  # parquet | csv (OpenCSVSerde) | text (LazySimpleSerDe)
    options: dict[str, str]
    skip_header: int
    objects: list[S3Object]
    definition: str  # what must not change for loaded data to stay valid

    @property
    def etags(self) -> dict[str, str]:
        return {o.key: o.etag for o in self.objects}


def table_format(table: dict[str, Any]) -> tuple[str, dict[str, str]]:
    descriptor = table.get("StorageDescriptor") or {}
    serde = descriptor.get("SerdeInfo") or {}
    library = (serde.get("SerializationLibrary") or "").lower()
    input_format = (descriptor.get("InputFormat") or "").lower()
    classification = ((table.get("Parameters") or {}).get("classification") or "").lower()
    options = serde.get("Parameters") or {}
    if "parquet" in library or "parquet" in input_format or classification == "parquet":
        return "parquet", options
    if "opencsvserde" in library:
        return "csv", options
    if "lazysimpleserde" in library or "textinputformat" in input_format or classification == "csv":
        return "text", options
    raise QueryFailed(
        f"NOT_SUPPORTED: Table format of {table.get('DatabaseName')}.{table.get('Name')} "
        f"({library or input_format or 'unknown'}) is not supported by the local cloud"
    )


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or not uri[len("s3://"):].split("/", 1)[0]:
        raise ValueError(f"'{uri}' is not an S3 location (s3://bucket/prefix)")
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


class GlueCatalog:
    """The Glue Data Catalog of one region, as DuckDB tables that queries run against, in a
    database file of `folder` (a cache, emptied when the catalog starts)."""

    def __init__(self, glue: Any, s3: Any, folder: Path) -> None:
        self.glue = glue
        self.s3 = s3
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.folder = folder
        self.db = duckdb.connect(
            config={"threads": 2, "memory_limit": MEMORY_LIMIT, "temp_directory": str(folder / "spill")}
        )
        # Queries may read only what we load: no files, no extensions, no settings changes.
        self.db.execute(
            f"ATTACH {literal(str(folder / 'catalog.duckdb'))} AS {CATALOG}; "
            "SET enable_external_access = false; SET lock_configuration = true"
        )
        self._loaded: dict[TableRef, TableSource] = {}
        self._lock = threading.Lock()
        self._schemas: set[str] = set()
        self._schemas_lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def cursor(self, database: str) -> duckdb.DuckDBPyConnection:
        self._create_schema(database)
        cursor = self.db.cursor()
        cursor.execute(f"USE {CATALOG}.{quote(database)}")
        return cursor

    def _create_schema(self, database: str) -> None:
        """Each database's schema once, one at a time: DuckDB fails a transaction that creates a
        schema another one is creating (a write-write conflict), as two first queries would."""
        with self._schemas_lock:
            if database not in self._schemas:
                with self.db.cursor() as cursor:
                    cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {CATALOG}.{quote(database)}")
                self._schemas.add(database)

    def prepare(self, refs: list[TableRef]) -> int:
        """Bring the tables up to date with Glue and S3; returns the bytes of data they hold."""
        scanned = 0
        with self._lock:
            for ref in refs:
                source = self._describe(ref)
                self._refresh(source)
                scanned += sum(o.size for o in source.objects)
        return scanned

    # -- Glue and S3 -----------------------------------------------------------------------
    def _describe(self, ref: TableRef) -> TableSource:
        try:
            table = self.glue.get_table(DatabaseName=ref.database, Name=ref.table)["Table"]
        except self.glue.exceptions.EntityNotFoundException:
            try:
                self.glue.get_database(Name=ref.database)
            except self.glue.exceptions.EntityNotFoundException:
                raise QueryFailed(f"SCHEMA_NOT_FOUND: Schema '{ref.database}' does not exist") from None
            raise QueryFailed(f"TABLE_NOT_FOUND: Table '{ref.display}' does not exist") from None
        descriptor = table.get("StorageDescriptor") or {}
        partition_keys = table.get("PartitionKeys") or []
        columns = [(c["Name"].lower(), duckdb_type(c["Type"])) for c in descriptor.get("Columns", []) + partition_keys]
        file_format, options = table_format(table)
        parameters = table.get("Parameters") or {}
        skip_header = int(parameters.get("skip.header.line.count") or options.get("skip.header.line.count") or 0)
        if partition_keys:
            locations = [(p["StorageDescriptor"]["Location"], tuple(p["Values"])) for p in self._partitions(ref)]
        else:
            locations = [(descriptor.get("Location") or "", ())]
        objects = [obj for location, values in locations for obj in self._objects(ref, location, values)]
        definition = json.dumps([columns, len(partition_keys), file_format, options, skip_header])
        return TableSource(ref, columns, len(partition_keys), file_format, options, skip_header, objects, definition)

    def _partitions(self, ref: TableRef) -> list[dict[str, Any]]:
        pages = self.glue.get_paginator("get_partitions").paginate(DatabaseName=ref.database, TableName=ref.table)
        return [p for page in pages for p in page["Partitions"]]

    def _objects(self, ref: TableRef, location: str, partition: tuple[str, ...]) -> list[S3Object]:
        """Every data file under a location, recursively; like Athena, names starting with _ or .
        (markers, metadata) are not data."""
        try:
            bucket, prefix = split_s3_uri(location)
        except ValueError as exc:
            raise QueryFailed(f"HIVE_METASTORE_ERROR: Table '{ref.display}': {exc}") from None
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        objects = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    name = item["Key"].rsplit("/", 1)[-1]
                    if not name or name[0] in "_." or name.endswith("$folder$"):
                        continue
                    objects.append(S3Object(f"{bucket}/{item['Key']}", item["ETag"], item["Size"], partition))
        except ClientError as exc:
            raise QueryFailed(f"HIVE_CANNOT_OPEN_SPLIT: Cannot list {location}: {exc}", 1001) from None
        return objects

    # -- loading ---------------------------------------------------------------------------
    def _refresh(self, source: TableSource) -> None:
        """Make DuckDB's copy of a table match its source, in one transaction: a query running
        meanwhile sees the old rows or the new ones, and a failed load changes nothing."""
        current = self._loaded.get(source.ref)
        if current is not None and current.definition == source.definition and current.etags == source.etags:
            return
        appending = (  # only new objects: the offline store, for one, only ever adds files
            current is not None
            and current.definition == source.definition
            and all(source.etags.get(key) == etag for key, etag in current.etags.items())
        )
        known = current.etags if appending and current is not None else {}
        name = f"{CATALOG}.{quote(source.ref.database)}.{quote(source.ref.table)}"
        self._create_schema(source.ref.database)
        cursor = self.db.cursor()
        try:
            cursor.begin()
            if not appending:
                columns = ", ".join(f"{quote(n)} {t}" for n, t in source.columns)
                cursor.execute(f"CREATE OR REPLACE TABLE {name} ({columns})")
            for obj in source.objects:
                if obj.key not in known:
                    self._insert(cursor, source, obj, name)
            cursor.commit()
        except duckdb.Error as exc:
            cursor.rollback()
            raise QueryFailed(f"HIVE_BAD_DATA: Table '{source.ref.display}': {first_line(exc)}", 1001) from None
        except BaseException:
            cursor.rollback()
            raise
        finally:
            cursor.close()
        self._loaded[source.ref] = source

    def _insert(self, cursor: duckdb.DuckDBPyConnection, source: TableSource, obj: S3Object, table: str) -> None:
        """Stream one object into the table, in record batches, from a copy in a file (Parquet
        needs its footer first)."""
        bucket, key = obj.key.split("/", 1)
        with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".object") as copy:
            try:
                body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
                shutil.copyfileobj(gzip.GzipFile(fileobj=body) if key.endswith(".gz") else body, copy, COPY_BYTES)
                copy.flush()
                if copy.tell() == 0:
                    return  # no rows (and an empty file is no Parquet or CSV to open)
                reader = open_object(source, Path(copy.name))
                cursor.register("s3_object", reader)
                try:
                    cursor.execute(f"INSERT INTO {table} SELECT {projection(source, reader.schema, obj.partition)} "
                                   "FROM s3_object")
                finally:
                    cursor.unregister("s3_object")
            except (ClientError, OSError, EOFError, pa.ArrowException, duckdb.Error) as exc:
                raise QueryFailed(
                    f"HIVE_BAD_DATA: Error reading s3://{obj.key} of table '{source.ref.display}': {first_line(exc)}",
                    1001,
                ) from None


def open_object(source: TableSource, path: Path) -> pa.RecordBatchReader:
    """An object's rows in record batches: Parquet as written, CSV and delimited text as string
    columns named after the table's data columns."""
    if source.file_format == "parquet":
        parquet = pq.ParquetFile(path)
        return pa.RecordBatchReader.from_batches(parquet.schema_arrow, parquet.iter_batches())
    return read_delimited(source, path)


def read_delimited(source: TableSource, path: Path) -> pa.RecordBatchReader:
    """A CSV or delimited-text file as string columns named after the table's data columns."""
    options = source.options
    names = [n for n, _ in source.columns[: len(source.columns) - source.partition_keys]]
    if source.file_format == "csv":  # OpenCSVSerde: quoted fields, no NULLs
        parse = pacsv.ParseOptions(
            delimiter=options.get("separatorChar", ","),
            quote_char=options.get("quoteChar", '"'),
            escape_char=options.get("escapeChar", "\\"),
            newlines_in_values=True,
        )
        convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False)
    else:  # LazySimpleSerDe: no quoting, \N is NULL
        parse = pacsv.ParseOptions(
            delimiter=options.get("field.delim", options.get("serialization.format", "\x01")),
            quote_char=False,
            escape_char=options.get("escape.delim", False),
        )
        convert = pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=True,
            null_values=[options.get("serialization.null.format", "\\N")],
        )
    read = pacsv.ReadOptions(column_names=names, skip_rows=source.skip_header)
    return pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)


def projection(source: TableSource, schema: pa.Schema, partition: tuple[str, ...]) -> str:
    """The SELECT list turning a partition's data into the table's columns: matched by name
    (case-insensitively, like Athena on Parquet), cast to the declared type; absent columns are
    NULL; partition columns take the partition's values. Text values that do not parse as their
    type become NULL, as with Hive's text SerDes."""
    present = {name.lower(): name for name in schema.names}
    data_columns = len(source.columns) - source.partition_keys
    cast = "CAST" if source.file_format == "parquet" else "TRY_CAST"
    items = []
    for index, (name, kind) in enumerate(source.columns):
        if index >= data_columns:
            value = literal(partition[index - data_columns])
        elif name in present:
            value = quote(present[name])
        else:
            value = "NULL"
        items.append(f"{cast}({value} AS {kind})")
    return ", ".join(items)


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# -- running -----------------------------------------------------------------------------------
@dataclass
class QueryResult:
    """A finished query's column metadata and where its CSV's pages are: `page_offsets[i]` is the
    byte at which data row i * PAGE_ROWS starts, the last one the CSV's size."""

    column_info: list[dict[str, Any]]
    row_count: int
    page_offsets: list[int]
    scanned_bytes: int = 0
    planning_ms: int = 0
    engine_ms: int = 0

    @property
    def names(self) -> list[str]:
        return [c["Name"] for c in self.column_info]

    def metadata(self) -> bytes:
        # Athena's own .metadata file is binary; ours carries the same facts as JSON, and the pages.
        return json.dumps(
            {"ColumnInfo": self.column_info, "RowCount": self.row_count, "PageOffsets": self.page_offsets}
        ).encode()

    @classmethod
    def from_metadata(cls, body: bytes) -> QueryResult:
        metadata = json.loads(body)
        return cls(metadata["ColumnInfo"], metadata["RowCount"], metadata["PageOffsets"])

    def rows(self, start: int, count: int, read: Callable[[int, int], bytes]) -> list[list[str | None]]:
        """Data rows [start, start + count), from the CSV bytes `read(first, last)` gives (an
        inclusive range, as S3's Range header)."""
        if count <= 0:
            return []
        first_page, last_page = start // PAGE_ROWS, (start + count - 1) // PAGE_ROWS
        body = read(self.page_offsets[first_page], self.page_offsets[last_page + 1] - 1)
        table = pacsv.read_csv(  # unquoted empty fields are NULLs
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(column_names=[f"c{i}" for i in range(len(self.column_info))]),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types={f"c{i}": pa.string() for i in range(len(self.column_info))},
                strings_can_be_null=True,
                null_values=[""],
                quoted_strings_can_be_null=False,
            ),
        )
        columns = [column.to_pylist() for column in table.slice(start - first_page * PAGE_ROWS, count).columns]
        return [list(row) for row in zip(*columns, strict=True)]


def write_result(reader: pa.RecordBatchReader, names: list[str], path: Path) -> tuple[int, list[int]]:
    """The rows as Athena's all-quoted CSV of strings, batch by batch; (rows, page offsets)."""
    schema = pa.schema([(name, pa.string()) for name in names])
    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pacsv.CSVWriter(
        sink, schema, write_options=pacsv.WriteOptions(quoting_style="all_valid")
    ) as writer:
        offsets = [sink.tell()]  # after the header
        for batch in reader:
            strings = pa.record_batch([athena_strings(column) for column in batch.columns], schema=schema)
            while strings.num_rows:  # in slices that end where pages end
                page = strings.slice(0, PAGE_ROWS - rows % PAGE_ROWS)
                writer.write_batch(page)
                rows += page.num_rows
                strings = strings.slice(page.num_rows)
                if rows % PAGE_ROWS == 0:
                    offsets.append(sink.tell())
        if rows % PAGE_ROWS:
            offsets.append(sink.tell())
    return rows, offsets


def query_failure(error: Exception) -> Exception:
    """The QueryFailed of a DuckDB error (an interrupt stays one). Errors while a result streams
    reach Python as Arrow's OSError with DuckDB's message, whose prefix names its kind."""
    message = first_line(error)
    if isinstance(error, duckdb.InterruptException) or message.startswith("INTERRUPT Error"):
        return duckdb.InterruptException(message)
    if isinstance(error, duckdb.ParserException):
        return QueryFailed(f"SYNTAX_ERROR: {message}")
    if isinstance(error, duckdb.ConversionException) or message.startswith("Conversion Error"):
        return QueryFailed(f"INVALID_CAST_ARGUMENT: {message}")
    return QueryFailed(f"GENERIC_USER_ERROR: {message}")


def run_query(
    catalog: GlueCatalog,
    sql: str,
    database: str,
    on_cursor: Callable[[duckdb.DuckDBPyConnection], None],
    csv_path: Path,
) -> QueryResult:
    """Run one SELECT, its result written to `csv_path`; `on_cursor` gets the cursor first so the
    query can be interrupted."""
    keyword = first_keyword(sql)
    if statement_type(sql) != "DML" or keyword in WRITE_KEYWORDS:
        raise QueryFailed(
            f"NOT_SUPPORTED: {keyword.upper()} statements are not supported by the local cloud's Athena, "
            "which runs queries over the tables of the Glue Data Catalog (create tables with Glue)"
        )
    started = time.monotonic()
    try:
        transpiled = to_duckdb(sql)  # Athena's StartQueryExecution refuses what does not parse first
    except NotTrinoSql as exc:
        raise QueryFailed(f"SYNTAX_ERROR: {exc}") from None
    if len(transpiled) != 1:
        raise QueryFailed(f"Only one sql statement is allowed. Got: {sql[:200]}")
    duckdb_sql = transpiled[0]
    cursor = catalog.cursor(database)
    on_cursor(cursor)
    try:
        try:
            statements = cursor.extract_statements(duckdb_sql)
        except duckdb.Error as exc:
            raise QueryFailed(f"SYNTAX_ERROR: {first_line(exc)}") from None
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise QueryFailed(f"NOT_SUPPORTED: {statements[0].type.name} statements are not supported")
        parsed = parse_query(cursor, duckdb_sql, database)
        scanned = catalog.prepare(parsed.tables)
        planned = time.monotonic()
        try:
            reader = cursor.sql(duckdb_sql).to_arrow_reader(RESULT_BATCH_ROWS)
            names = [f"_col{i}" if i in parsed.unnamed else name for i, name in enumerate(reader.schema.names)]
            row_count, page_offsets = write_result(reader, names, csv_path)
        except (duckdb.Error, OSError) as exc:
            raise query_failure(exc) from None
        finished = time.monotonic()
    finally:
        cursor.close()
    return QueryResult(
        column_info=[column_info(name, f.type) for name, f in zip(names, reader.schema, strict=True)],
        row_count=row_count,
        page_offsets=page_offsets,
        scanned_bytes=scanned,
        planning_ms=int((planned - started) * 1000),
        engine_ms=int((finished - started) * 1000),
    )


# -- rendering ---------------------------------------------------------------------------------
def athena_type(kind: pa.DataType) -> tuple[str, int, int]:
    """(Type, Precision, Scale) of a result column as Athena reports it."""
    if pa.types.is_decimal(kind):
        return "decimal", kind.precision, kind.scale
    if pa.types.is_timestamp(kind):
        return ("timestamp with time zone" if kind.tz else "timestamp"), 3, 0
    checks: list[tuple[Callable[[pa.DataType], bool], tuple[str, int, int]]] = [
        (pa.types.is_int8, ("tinyint", 3, 0)),
        (pa.types.is_int16, ("smallint", 5, 0)),
        (pa.types.is_int32, ("integer", 10, 0)),
        (pa.types.is_integer, ("bigint", 19, 0)),
        (pa.types.is_float32, ("float", 7, 0)),
        (pa.types.is_floating, ("double", 17, 0)),
        (pa.types.is_boolean, ("boolean", 0, 0)),
        (pa.types.is_string, ("varchar", 2147483647, 0)),
        (pa.types.is_large_string, ("varchar", 2147483647, 0)),
        (pa.types.is_date, ("date", 0, 0)),
        (pa.types.is_time, ("time", 3, 0)),
        (pa.types.is_binary, ("varbinary", 1073741824, 0)),
        (pa.types.is_list, ("array", 0, 0)),
        (pa.types.is_map, ("map", 0, 0)),
        (pa.types.is_struct, ("row", 0, 0)),
    ]
    return next((result for check, result in checks if check(kind)), ("unknown", 0, 0))


def column_info(name: str, kind: pa.DataType) -> dict[str, Any]:
    type_name, precision, scale = athena_type(kind)
    return {
        "CatalogName": "hive", "SchemaName": "", "TableName": "", "Name": name, "Label": name,
        "Type": type_name, "Precision": precision, "Scale": scale, "Nullable": "UNKNOWN",
        "CaseSensitive": type_name == "varchar",
    }


def java_double(value: float) -> str:
    """A double as Java (and so Athena) prints it: 0.5, 1.0, 1.0E7, 1.0E-4, NaN, Infinity."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    if 1e-3 <= abs(value) < 1e7:
        text = repr(value)
        return text if "." in text else text + ".0"
    shortest = Decimal(repr(abs(value)))  # the shortest digits that read back as this double
    digits = "".join(map(str, shortest.as_tuple().digits)).rstrip("0") or "0"
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{shortest.adjusted()}"


def render(value: Any) -> str:
    """Nested values (arrays, maps, rows) the way Athena prints them."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return java_double(value)
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):  # a map's entries
            return "{" + ", ".join(f"{render(k)}={render(v)}" for k, v in value) + "}"
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bytes):
        return " ".join(f"{b:02x}" for b in value)
    return str(value)


def athena_strings(column: pa.Array) -> pa.Array:
    """A result column as Athena's strings, NULLs kept."""
    kind = column.type
    if pa.types.is_floating(kind):
        plain = pc.cast(column, pa.string())
        magnitude = pc.abs(column)
        # Arrow prints 1e-3 <= |x| < 1e7 like Java but for a missing ".0"; Java prints the rest in
        # E notation, so those (rare) values are formatted one by one.
        positional = pc.and_(pc.greater_equal(magnitude, 1e-3), pc.less(magnitude, 1e7))
        with_point = pc.if_else(pc.match_substring(plain, "."), plain, pc.binary_join_element_wise(plain, ".0", ""))
        texts = pc.if_else(positional, with_point, pa.nulls(len(column), pa.string())).to_pylist()
        for index, number in enumerate(column.to_pylist()):
            if texts[index] is None and number is not None:
                texts[index] = java_double(number)
        return pa.array(texts, type=pa.string())
    if pa.types.is_timestamp(kind):
        utc = column.cast(pa.timestamp("ms", tz=kind.tz), safe=False)
        text = pc.strftime(utc, format="%Y-%m-%d %H:%M:%S")
        return pc.binary_join_element_wise(text, " UTC", "") if kind.tz else text
    if pa.types.is_null(kind):
        return pa.nulls(len(column), pa.string())
    if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_time(kind):
        return pa.array([None if v is None else render(v) for v in column.to_pylist()], pa.string())
    return pc.cast(column, pa.string())
