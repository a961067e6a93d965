"""The results table of a table job: every input row, in the input's order, with its answer joined on.

Completion has just written results.jsonl and errors.jsonl (to /tmp, then S3), in the order the
batches ended, not the rows'. Their lines go into an SQLite file on /tmp keyed by line (= row)
number; then the input is read again, a block of rows at a time from the very object versions that
were rendered, each block's answers are looked up by its row range, and the block is written out
(Parquet with `ParquetWriter`, a row group at a time; CSV; or JSON Lines). Memory holds a block and
a row group being filled, whatever the table's size; the index is on disk.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from batchdrop.pricing import Price, Usage, cost, realtime_price
from batchdrop.tables.schema import PARSED_COLUMN, RESULT_COLUMNS, TABLE_FOLDER
from batchdrop.tables.sources import Bounds, DataObject, JsonRows, Objects, arrow_pool, open_rows

if TYPE_CHECKING:
    import pyarrow as pa

# A row group of the results is written once it holds this many rows or bytes (Athena and pandas
# read large row groups best; memory holds one).
ROW_GROUP_ROWS = 128 * 1024
ROW_GROUP_BYTES = 16 << 20  # 64 MB held 340 MB at peak on a 1 GB table, 16 MB 268 MB (docs/performance.md)
STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"
STATUS_INVALID = "invalid"
CONTENT_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv", "jsonl": "application/x-ndjson"}


def table_key(output_prefix: str, output_format: str) -> str:
    return f"{output_prefix}{TABLE_FOLDER}/results.{output_format}"


def arrow_type(glue: str) -> pa.DataType:
    import pyarrow as pa

    return {
        "string": pa.string(),
        "bigint": pa.int64(),
        "double": pa.float64(),
        "boolean": pa.bool_(),
        "array<float>": pa.list_(pa.float32()),
    }[glue]


def response_schema(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON Schema inside a response_format (OpenAI's {"type": "json_schema", "json_schema":
    {"schema": ...}} shape)."""
    if not response_format:
        return None
    inner = response_format.get("json_schema")
    schema = inner.get("schema") if isinstance(inner, dict) else response_format.get("schema")
    return schema if isinstance(schema, dict) else None


def parsed_type(schema: Mapping[str, Any]) -> pa.DataType:
    """The Arrow type of values valid under `schema`: objects with properties are structs, arrays
    lists, scalars their type; anything else (unions, free-form objects) a JSON string."""
    import pyarrow as pa

    kind = _kind(schema)
    if kind == "object" and isinstance(schema.get("properties"), dict) and schema["properties"]:
        return pa.struct([pa.field(name, parsed_type(sub)) for name, sub in schema["properties"].items()])
    if kind == "array" and isinstance(schema.get("items"), dict):
        return pa.list_(parsed_type(schema["items"]))
    return {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}.get(
        kind, pa.string()
    )


def _kind(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        real = [k for k in kind if k != "null"]
        kind = real[0] if len(real) == 1 else None
    if kind is None and "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return "string"
    if kind is None and "properties" in schema:
        return "object"
    return str(kind) if kind else "json"


def _coerce(value: Any, schema: Mapping[str, Any]) -> Any:
    """A parsed value shaped for parsed_type(schema): what maps to a JSON string is encoded."""
    if value is None:
        return None
    kind = _kind(schema)
    if kind == "object" and isinstance(schema.get("properties"), dict) and schema["properties"]:
        if not isinstance(value, dict):
            return None
        return {name: _coerce(value.get(name), sub) for name, sub in schema["properties"].items()}
    if kind == "array" and isinstance(schema.get("items"), dict):
        return [_coerce(v, schema["items"]) for v in value] if isinstance(value, list) else None
    if kind in ("string", "integer", "number", "boolean"):
        return value
    return orjson.dumps(value).decode()


@dataclass
class TableOutput:
    format: str
    rows: int
    missing: int  # rows with neither a result nor an error line (never expected: logged and counted)


class _Index:
    """Each output line's fields for the table, by line number, in an SQLite file on /tmp."""

    def __init__(self, tmpdir: str | None) -> None:
        fd, self.path = tempfile.mkstemp(dir=tmpdir, suffix=".sqlite")
        os.close(fd)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE r (line INTEGER PRIMARY KEY, data BLOB)")

    def load(self, path: str, prices: Mapping[str, Price]) -> None:
        rows: list[tuple[int, bytes]] = []
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    record = orjson.loads(raw)
                    rows.append((int(record["line"]), orjson.dumps(_fields(record, prices))))
                    if len(rows) >= 10_000:
                        self._put(rows)
                        rows = []
        self._put(rows)

    def _put(self, rows: list[tuple[int, bytes]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO r VALUES (?, ?)", rows)

    def between(self, first: int, last: int) -> dict[int, dict[str, Any]]:
        query = "SELECT line, data FROM r WHERE line BETWEEN ? AND ?"
        return {line: orjson.loads(data) for line, data in self.db.execute(query, (first, last))}

    def close(self) -> None:
        self.db.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _cost(model: str, lane: str | None, usage: Usage, prices: Mapping[str, Price]) -> float | None:
    price = realtime_price(model, prices) if model else None
    if price is None:
        return None
    return round(cost(price, usage, "realtime" if lane == "realtime" else "batch"), 9)


def _fields(record: dict[str, Any], prices: Mapping[str, Price]) -> dict[str, Any]:
    """A results.jsonl or errors.jsonl line as the table's columns."""
    if record.get("status") == STATUS_SUCCEEDED:
        usage = Usage.of_line(record.get("usage"))
        model = str(record.get("model") or "")
        return {
            "custom_id": record.get("custom_id"),
            "response_text": record.get("text"),
            "embedding": _embedding(record.get("response")),
            "status": STATUS_SUCCEEDED,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cost_usd": _cost(model, record.get("lane"), usage, prices),
            "provider": record.get("provider"),
            "model": model,
            "lane": record.get("lane"),
            PARSED_COLUMN: record.get("parsed"),
        }
    stage = record.get("stage")
    return {
        "custom_id": record.get("custom_id"),
        "status": STATUS_INVALID if stage == "validation" else STATUS_FAILED,
        "error_code": record.get("code"),
        "error_message": record.get("message"),
        "provider": record.get("provider"),
        "lane": record.get("lane"),
    }


def _embedding(response: Any) -> list[float] | None:
    # OpenAI's (and Azure's) embeddings answer: {"object": "list", "data": [{"embedding": [...]}]}.
    if isinstance(response, dict) and response.get("object") == "list":
        data = response.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict):
            vector = data[0].get("embedding")
            if isinstance(vector, list):
                return vector
    return None


def write_table(
    source: Objects,
    resolved: Mapping[str, Any],
    results_path: str,
    errors_path: str,
    out_path: str,
    prices: Mapping[str, Price],
    tmpdir: str | None = None,
) -> TableOutput:
    """Write the results table of the job `resolved` describes (tables.job.TableJob.to_json) to
    `out_path`, from the job's results.jsonl and errors.jsonl on disk."""
    import pyarrow as pa

    arrow_pool()
    manifest = resolved["manifest"]
    fmt = str(manifest.get("output_format") or "parquet")
    prefix = str(manifest.get("columns_prefix") or "")
    schema_json = response_schema(manifest.get("response_format"))
    index = _Index(tmpdir)
    try:
        index.load(results_path, prices)
        index.load(errors_path, prices)
        added = [(name, arrow_type(glue)) for name, glue, _ in RESULT_COLUMNS]
        if schema_json is not None:
            added.append((PARSED_COLUMN, parsed_type(schema_json)))
        writer = _Writer(fmt, out_path)
        number = 0
        missing = 0
        try:
            for batch in _input_batches(source, resolved):
                first = number + 1
                number += batch.num_rows
                found = index.between(first, number)
                columns: dict[str, list[Any]] = {name: [] for name, _ in added}
                for line in range(first, number + 1):
                    fields = found.get(line)
                    if fields is None:
                        missing += 1
                        fields = {}
                    fields["row_number"] = line
                    if schema_json is not None and fields.get(PARSED_COLUMN) is not None:
                        fields[PARSED_COLUMN] = _coerce(fields[PARSED_COLUMN], schema_json)
                    for name, values in columns.items():
                        values.append(fields.get(name))
                arrays = [pa.array(columns[name], type=kind) for name, kind in added]
                names = [*batch.schema.names, *(prefix + name for name, _ in added)]
                writer.write(pa.RecordBatch.from_arrays([*batch.columns, *arrays], names=names))
            if number == 0:
                # No rows: still a file, with the columns a reader expects.
                names = [*resolved.get("columns", []), *(prefix + name for name, _ in added)]
                kinds = [*(pa.string() for _ in resolved.get("columns", [])), *(kind for _, kind in added)]
                writer.write(pa.RecordBatch.from_arrays([pa.array([], type=k) for k in kinds], names=names))
        finally:
            writer.close()
        return TableOutput(fmt, number, missing)
    finally:
        index.close()


def _input_batches(source: Objects, resolved: Mapping[str, Any]) -> Iterator[pa.RecordBatch]:
    fmt = str(resolved["format"])
    delimiter = resolved["manifest"].get("delimiter")
    bounds = Bounds(*(resolved.get("bounds") or (None, None)))
    for raw in resolved["objects"]:
        rows = open_rows(source, DataObject.from_json(raw), fmt, delimiter, bounds)
        if isinstance(rows, JsonRows):
            yield from _json_batches(rows, resolved.get("json_types") or {})
        else:
            yield from rows.batches()


def _json_batches(rows: JsonRows, types: Mapping[str, list[str]]) -> Iterator[pa.RecordBatch]:
    """JSON records as Arrow batches of one schema for the whole table: a key's values keep their type
    when it is one scalar type throughout (nulls aside), else they are written as JSON text."""
    import pyarrow as pa

    kinds = {key: [k for k in seen if k != "null"] for key, seen in types.items()}
    scalar = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
    fields: list[tuple[str, pa.DataType]] = []
    as_text: set[str] = set()
    for key, seen in kinds.items():
        if seen == ["integer", "number"] or seen == ["number", "integer"]:
            fields.append((key, pa.float64()))
        elif len(seen) == 1 and seen[0] in scalar:
            fields.append((key, scalar[seen[0]]))
        else:
            fields.append((key, pa.string()))
            as_text.add(key)
    schema = pa.schema(fields)
    for block in rows.blocks():
        if as_text:
            block = [
                {
                    k: (v if k not in as_text or v is None or isinstance(v, str) else orjson.dumps(v).decode())
                    for k, v in r.items()
                }
                for r in block
            ]
        yield pa.RecordBatch.from_pylist(block, schema=schema)


def _text_cell(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else orjson.dumps(value).decode()


class _Writer:
    def __init__(self, fmt: str, path: str) -> None:
        self.fmt, self.path = fmt, path
        self._parquet: Any = None
        self._csv: Any = None
        self._jsonl: Any = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self.fmt == "parquet":
            self._pending.append(batch)  # an empty batch too: it carries the schema of a table of no rows
            self._pending_rows += batch.num_rows
            self._pending_bytes += batch.nbytes
            if self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
                self._flush()
        elif self.fmt == "csv":
            self._write_csv(batch)
        else:
            if self._jsonl is None:
                self._jsonl = open(self.path, "wb")  # noqa: SIM115 -- closed in close()
            self._jsonl.write(b"".join(orjson.dumps(row) + b"\n" for row in batch.to_pylist()))

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, table.schema)
        self._parquet.write_table(table, row_group_size=max(table.num_rows, 1))  # pyarrow refuses 0
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def _write_csv(self, batch: pa.RecordBatch) -> None:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        # CSV has no lists or structs: the embedding and the parsed fields are written as JSON text.
        arrays, names = [], []
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            if pa.types.is_list(column.type) or pa.types.is_struct(column.type):
                column = pa.array(
                    [None if v is None else orjson.dumps(v).decode() for v in column.to_pylist()], type=pa.string()
                )
            arrays.append(column)
            names.append(name)
        flat = pa.RecordBatch.from_arrays(arrays, names=names)
        if self._csv is None:
            self._csv = pcsv.CSVWriter(self.path, flat.schema)
        self._csv.write_batch(flat)

    def close(self) -> None:
        if self.fmt == "parquet":
            self._flush()
            if self._parquet is None:
                # No rows at all: still a valid (empty) file with the columns.
                return
            self._parquet.close()
        elif self._csv is not None:
            self._csv.close()
        elif self._jsonl is not None:
            self._jsonl.close()
