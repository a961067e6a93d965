"""The results table of a table job (tables/join.py `write_table`): every input row once, in the input's
order, with its answer from results.jsonl or errors.jsonl (lines in the contract's shapes, built by
outputs.py as completion builds them), in Parquet, CSV or JSON Lines."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchdrop import models as m
from batchdrop.outputs import error_line, result_line, validation_error
from batchdrop.pricing import BATCH_DISCOUNT, price_table, realtime_price
from batchdrop.tables.job import open_job
from batchdrop.tables.join import TableOutput, write_table
from batchdrop.tables.schema import PARSED_COLUMN, RESULT_COLUMN_NAMES, RESULT_COLUMNS
from batchdrop.tables.sources import LocalObjects

MODEL = "gpt-4o-mini"
PRICES = price_table({})


@pytest.fixture
def folder(tmp_path: Path) -> LocalObjects:
    root = tmp_path / "bucket"
    root.mkdir()
    return LocalObjects(str(root))


def put(folder: LocalObjects, key: str, data: bytes) -> None:
    path = Path(folder.root, *key.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def resolved(folder: LocalObjects, **manifest: Any) -> dict[str, Any]:
    """What submission saves for completion (work/<job_id>/table.json), from the real job."""
    fields = {"data": "data/t.csv", "model": MODEL, "user": "{{ text }}", **manifest}
    job = open_job(folder, "inputs/t.job.json", orjson.dumps(fields))
    for _ in job.chunks(lambda invalid: None):
        pass
    assert job.fatal is None
    described: dict[str, Any] = orjson.loads(orjson.dumps(job.to_json()))
    return described


def ok(
    line: int,
    text: str | None = "answer",
    *,
    custom_id: str | None = None,
    model: str = MODEL,
    lane: str = "batch",
    tokens: tuple[int, int] = (100, 20),
    body: dict[str, Any] | None = None,
    parsed: Any = None,
) -> dict[str, Any]:
    if body is None:
        body = {
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "total_tokens": sum(tokens)},
        }
    record, _ = result_line(custom_id or f"row-{line}", line, "openai", model, "batch_1", body, lane=lane)
    if parsed is not None:
        record["parsed"] = parsed
    return record


def failed(line: int, code: str = "provider_error", message: str = "upstream said no") -> dict[str, Any]:
    return error_line(
        custom_id=f"row-{line}",
        line=line,
        stage="provider",
        code=code,
        message=message,
        provider="openai",
        batch_id="batch_1",
        attempts=3,
        lane="batch",
    )


def invalid(line: int, message: str = "row: column 'text' has no value") -> dict[str, Any]:
    return validation_error(m.Invalid(line, None, m.TEMPLATE_ERROR, message))


def jsonl(path: Path, records: Iterable[dict[str, Any]]) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


def write(
    tmp_path: Path,
    folder: LocalObjects,
    described: dict[str, Any],
    results: Iterable[dict[str, Any]],
    errors: Iterable[dict[str, Any]] = (),
    name: str = "results.parquet",
) -> tuple[TableOutput, str]:
    out = str(tmp_path / name)
    output = write_table(
        folder,
        described,
        jsonl(tmp_path / "results.jsonl", results),
        jsonl(tmp_path / "errors.jsonl", errors),
        out,
        PRICES,
        tmpdir=str(tmp_path),
    )
    return output, out


def csv_table(rows: int) -> bytes:
    return b"id,text\n" + b"".join(b"id-%d,question %d\n" % (n, n) for n in range(1, rows + 1))


def batch_cost(model: str, tokens_in: int, tokens_out: int, lane: str = "batch") -> float:
    price = realtime_price(model, PRICES)
    assert price is not None
    cost = (tokens_in * price[0] + tokens_out * price[1]) / 1_000_000
    return cost if lane == "realtime" else cost * BATCH_DISCOUNT


# -- every row once, in the input's order -----------------------------------------------------------


def test_rows_keep_the_inputs_order_when_results_come_out_of_order(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(6))
    described = resolved(folder, id_column="id")
    results = [ok(n, f"answer {n}", custom_id=f"id-{n}") for n in (5, 2, 6, 1)]
    errors = [failed(4), invalid(3)]
    output, out = write(tmp_path, folder, described, results, errors)
    assert (output.rows, output.missing) == (6, 0)
    rows = pq.read_table(out).to_pylist()
    assert [r["id"] for r in rows] == [f"id-{n}" for n in range(1, 7)]
    assert [r["text"] for r in rows] == [f"question {n}" for n in range(1, 7)]
    assert [r["row_number"] for r in rows] == list(range(1, 7))
    assert [r["response_text"] for r in rows] == ["answer 1", "answer 2", None, None, "answer 5", "answer 6"]
    assert [r["status"] for r in rows] == ["succeeded", "succeeded", "invalid", "failed", "succeeded", "succeeded"]
    assert rows[0]["custom_id"] == "id-1"


def test_every_row_exactly_once_across_objects_and_row_groups(
    tmp_path: Path, folder: LocalObjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchdrop.tables import join, sources

    # Small blocks and row groups, so the lookup by row range and the writer's flushes are exercised
    monkeypatch.setattr(sources, "BLOCK_ROWS", 7)
    monkeypatch.setattr(join, "ROW_GROUP_ROWS", 10)
    put(folder, "data/parts/a.csv", csv_table(23))
    put(folder, "data/parts/b.csv", b"id,text\n" + b"".join(b"b-%d,q\n" % n for n in range(1, 16)))
    described = resolved(folder, data="data/parts/")
    assert described["rows"] == 38
    results = [ok(n, f"a{n}") for n in range(38, 0, -1) if n % 5]
    errors = [failed(n) for n in range(1, 39) if n % 5 == 0]
    output, out = write(tmp_path, folder, described, results, errors)
    assert (output.rows, output.missing) == (38, 0)
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_row_groups > 1
    rows = parquet.read().to_pylist()
    assert [r["row_number"] for r in rows] == list(range(1, 39))
    assert [r["id"] for r in rows[21:25]] == ["id-22", "id-23", "b-1", "b-2"]
    assert all((r["status"] == "failed") == (r["row_number"] % 5 == 0) for r in rows)
    assert all(r["response_text"] == f"a{r['row_number']}" for r in rows if r["status"] == "succeeded")


def test_a_row_with_no_line_at_all_is_counted_missing_and_kept(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(3))
    output, out = write(tmp_path, folder, resolved(folder), [ok(1), ok(3)])
    assert (output.rows, output.missing) == (3, 1)
    rows = pq.read_table(out).to_pylist()
    assert rows[1]["row_number"] == 2
    assert rows[1]["status"] is None
    assert rows[1]["text"] == "question 2"


def test_a_retried_row_keeps_its_last_line(tmp_path: Path, folder: LocalObjects) -> None:
    # errors.jsonl is loaded after results.jsonl: a row in both is written once
    put(folder, "data/t.csv", csv_table(2))
    output, out = write(tmp_path, folder, resolved(folder), [ok(1), ok(2)], [failed(2)])
    assert output.rows == 2
    assert len(pq.read_table(out)) == 2


# -- the added columns ------------------------------------------------------------------------------


def test_status_error_tokens_and_lane_of_each_kind_of_row(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(3))
    errors = [failed(2, "request_error", "bad request"), invalid(3, "row 3: column 'text' has no value")]
    _, out = write(tmp_path, folder, resolved(folder), [ok(1, "fine", tokens=(1000, 500))], errors)
    succeeded, fail, inv = pq.read_table(out).to_pylist()
    assert succeeded["status"] == "succeeded"
    assert (succeeded["input_tokens"], succeeded["output_tokens"]) == (1000, 500)
    assert (succeeded["provider"], succeeded["model"], succeeded["lane"]) == ("openai", MODEL, "batch")
    assert succeeded["error_code"] is None
    assert succeeded["error_message"] is None
    assert fail["status"] == "failed"
    assert (fail["error_code"], fail["error_message"]) == ("request_error", "bad request")
    assert (fail["provider"], fail["lane"]) == ("openai", "batch")
    assert fail["response_text"] is None
    assert fail["cost_usd"] is None
    assert inv["status"] == "invalid"
    assert inv["error_code"] == m.TEMPLATE_ERROR
    assert "no value" in inv["error_message"]
    assert inv["lane"] is None
    assert inv["provider"] is None


def test_cost_at_the_batch_and_the_realtime_price(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(2))
    results = [ok(1, tokens=(1000, 500), lane="batch"), ok(2, tokens=(1000, 500), lane="realtime")]
    _, out = write(tmp_path, folder, resolved(folder), results)
    batch, realtime = pq.read_table(out).column("cost_usd").to_pylist()
    assert batch == pytest.approx(batch_cost(MODEL, 1000, 500))
    assert realtime == pytest.approx(batch_cost(MODEL, 1000, 500, "realtime"))
    assert realtime == pytest.approx(batch / BATCH_DISCOUNT)
    assert batch > 0


def test_a_rows_cost_prices_its_cached_tokens_at_the_cached_rate(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(1))
    body = {
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 600}},
    }
    _, out = write(tmp_path, folder, resolved(folder), [ok(1, model="gpt-4o-mini", body=body)])
    row = pq.read_table(out).to_pylist()[0]
    # gpt-4o-mini: $0.15 input, $0.075 cached, half in a batch
    assert row["cost_usd"] == pytest.approx((400 * 0.15 + 600 * 0.075) / 1e6 / 2)
    assert row["input_tokens"] == 1000


def test_an_unknown_models_cost_is_null(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(1))
    _, out = write(tmp_path, folder, resolved(folder), [ok(1, model="my-finetune-7b")])
    row = pq.read_table(out).to_pylist()[0]
    assert row["model"] == "my-finetune-7b"
    assert row["cost_usd"] is None
    assert row["input_tokens"] == 100


def test_an_embedding_is_a_list_column(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(2))
    described = resolved(folder, user=None, input="{{ text }}", model="text-embedding-3-small")
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    _, out = write(tmp_path, folder, described, [ok(1, model="text-embedding-3-small", body=body)], [failed(2)])
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    first, second = table.to_pylist()
    assert first["embedding"] == [0.25, -0.5, 1.0]
    assert first["response_text"] is None
    assert first["input_tokens"] == 4
    assert first["cost_usd"] == pytest.approx(batch_cost("text-embedding-3-small", 4, 0))
    assert second["embedding"] is None


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["bug", "question", "praise"]},
        "mood": {"enum": ["good", "bad"]},
        "confidence": {"type": "number"},
        "votes": {"type": ["integer", "null"]},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {
            "type": "object",
            "properties": {"team": {"type": "string"}, "size": {"type": "integer"}},
            "required": ["team", "size"],
        },
        "spans": {
            "type": "array",
            "items": {"type": "object", "properties": {"start": {"type": "integer"}, "end": {"type": "integer"}}},
        },
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        "mixed": {"type": ["string", "integer"]},
        "free": {"type": "object"},
    },
    "required": ["label"],
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "triage", "schema": SCHEMA, "strict": True}}


def test_a_response_format_schema_gives_a_typed_parsed_struct(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(3))
    described = resolved(folder)
    described["manifest"]["response_format"] = RESPONSE_FORMAT  # as a manifest with it is saved
    answer = {
        "label": "bug",
        "mood": "bad",
        "confidence": 0.9,
        "votes": 3,
        "urgent": True,
        "tags": ["login", "500"],
        "owner": {"team": "auth", "size": 4},
        "spans": [{"start": 0, "end": 5}],
        "either": 7,
        "mixed": "x",
        "free": {"anything": [1, {"b": None}]},
    }
    results = [ok(1, orjson.dumps(answer).decode(), parsed=answer), ok(3, "not json")]
    _, out = write(tmp_path, folder, described, results, [failed(2)])
    table = pq.read_table(out)
    parsed = table.schema.field(PARSED_COLUMN).type
    assert parsed == pa.struct(
        [
            ("label", pa.string()),
            ("mood", pa.string()),
            ("confidence", pa.float64()),
            ("votes", pa.int64()),
            ("urgent", pa.bool_()),
            ("tags", pa.list_(pa.string())),
            ("owner", pa.struct([("team", pa.string()), ("size", pa.int64())])),
            ("spans", pa.list_(pa.struct([("start", pa.int64()), ("end", pa.int64())]))),
            ("either", pa.string()),  # a union: JSON text
            ("mixed", pa.string()),
            ("free", pa.string()),  # an object without properties: JSON text
        ]
    )
    first, second, third = table.column(PARSED_COLUMN).to_pylist()
    assert first is not None
    assert {k: first[k] for k in ("label", "mood", "confidence", "votes", "urgent", "tags", "owner", "spans")} == {
        k: answer[k] for k in ("label", "mood", "confidence", "votes", "urgent", "tags", "owner", "spans")
    }
    assert orjson.loads(first["either"]) == 7
    assert orjson.loads(first["mixed"]) == "x"
    assert orjson.loads(first["free"]) == {"anything": [1, {"b": None}]}
    assert second is None
    assert third is None  # no parsed answer (it did not parse): null, the text kept
    assert table.column("response_text").to_pylist()[2] == "not json"


def test_no_response_format_no_parsed_column(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(1))
    _, out = write(tmp_path, folder, resolved(folder), [ok(1)])
    assert PARSED_COLUMN not in pq.read_table(out).schema.names


def test_columns_prefix_names_the_added_columns(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", b"id,text,status\n1,a,open\n")
    _, out = write(tmp_path, folder, resolved(folder, columns_prefix="llm_"), [ok(1, "x")])
    table = pq.read_table(out)
    assert table.schema.names == ["id", "text", "status", *(f"llm_{n}" for n in RESULT_COLUMN_NAMES)]
    row = table.to_pylist()[0]
    assert (row["status"], row["llm_status"], row["llm_response_text"]) == ("open", "succeeded", "x")


# -- the Glue table and the file agree --------------------------------------------------------------


def glue_to_arrow(glue: str) -> pa.DataType:
    """Athena's reading of a Glue type, spelled out here apart from join.py's own mapping."""
    if glue.startswith("array<") and glue.endswith(">"):
        return pa.list_(glue_to_arrow(glue[len("array<") : -1]))
    return {
        "string": pa.string(),
        "bigint": pa.int64(),
        "int": pa.int32(),
        "double": pa.float64(),
        "float": pa.float32(),  # Athena's float is a 32-bit REAL
        "boolean": pa.bool_(),
    }[glue]


@pytest.mark.parametrize("kind", ["chat", "embedding", "no rows"])
def test_results_parquet_added_columns_have_the_arrow_types_of_the_glue_tables_result_columns(
    tmp_path: Path, folder: LocalObjects, kind: str
) -> None:
    # The stack's Glue table declares RESULT_COLUMNS; completion writes results.parquet: a mismatch
    # would make Athena fail on (or misread) every job's table
    if kind == "no rows":
        put(folder, "data/t.csv", b"id,text\n")
        described, results = resolved(folder), []
    elif kind == "embedding":
        put(folder, "data/t.csv", csv_table(1))
        described = resolved(folder, user=None, input="{{ text }}", model="text-embedding-3-small")
        body = {"object": "list", "data": [{"embedding": [0.5]}], "usage": {"prompt_tokens": 1}}
        results = [ok(1, body=body, model="text-embedding-3-small")]
    else:
        put(folder, "data/t.csv", csv_table(2))
        described, results = resolved(folder), [ok(1)]
    _, out = write(tmp_path, folder, described, results, [failed(2)] if kind == "chat" else [])
    schema = pq.read_schema(out)
    added = schema.names[len(described["columns"]) :]
    assert added == list(RESULT_COLUMN_NAMES)
    for name, glue, _ in RESULT_COLUMNS:
        assert schema.field(name).type == glue_to_arrow(glue), (name, glue, schema.field(name).type)


# -- output formats ---------------------------------------------------------------------------------


def test_csv_output_writes_lists_and_structs_as_json_text(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", b'id,text\n1,"a, b"\n2,c\n')
    described = resolved(folder, output_format="csv")
    described["manifest"]["response_format"] = RESPONSE_FORMAT
    answer = {"label": "bug", "tags": ["x", "y"], "owner": {"team": "t", "size": 1}}
    results = [ok(1, "multi\nline, text", parsed=answer)]
    output, out = write(tmp_path, folder, described, results, [failed(2)], name="results.csv")
    assert output.format == "csv"
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "text", *RESULT_COLUMN_NAMES, PARSED_COLUMN]
    assert rows[0]["text"] == "a, b"
    assert rows[0]["response_text"] == "multi\nline, text"
    assert rows[0]["row_number"] == "1"
    parsed = orjson.loads(rows[0][PARSED_COLUMN])
    assert parsed["label"] == "bug"
    assert parsed["tags"] == ["x", "y"]
    assert parsed["owner"] == {"team": "t", "size": 1}
    assert rows[1]["status"] == "failed"
    assert rows[1][PARSED_COLUMN] == ""


def test_csv_output_writes_an_embedding_as_json_text(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(1))
    described = resolved(folder, user=None, input="{{ text }}", model="text-embedding-3-small", output_format="csv")
    body = {"object": "list", "data": [{"embedding": [0.5, -1.0]}], "usage": {"prompt_tokens": 2}}
    _, out = write(tmp_path, folder, described, [ok(1, body=body, model="text-embedding-3-small")], name="r.csv")
    with open(out, newline="", encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    assert orjson.loads(row["embedding"]) == [0.5, -1.0]


def test_jsonl_output_one_record_a_row(tmp_path: Path, folder: LocalObjects) -> None:
    put(folder, "data/t.csv", csv_table(2))
    described = resolved(folder, output_format="jsonl")
    _, out = write(tmp_path, folder, described, [ok(2, "two")], [failed(1)], name="results.jsonl")
    records = [orjson.loads(line) for line in Path(out).read_bytes().splitlines()]
    assert [r["row_number"] for r in records] == [1, 2]
    assert list(records[0]) == ["id", "text", *RESULT_COLUMN_NAMES]
    assert records[0]["status"] == "failed"
    assert records[1]["response_text"] == "two"


def test_a_jsonl_records_table_keeps_its_value_types(tmp_path: Path, folder: LocalObjects) -> None:
    put(
        folder,
        "data/t.jsonl",
        b'{"id": "a", "text": "x", "n": 1, "ok": true}\n'
        b'{"id": "b", "text": "y", "n": 2.5, "meta": {"k": [1]}}\n'
        b'{"id": "c", "text": "z", "n": null, "ok": false}\n',
    )
    described = resolved(folder, data="data/t.jsonl", id_column="id")
    _, out = write(tmp_path, folder, described, [ok(n, custom_id=c) for n, c in ((1, "a"), (2, "b"), (3, "c"))])
    table = pq.read_table(out)
    assert table.schema.names[:5] == ["id", "text", "n", "ok", "meta"]
    assert table.schema.field("n").type == pa.float64()  # integers and numbers: a double
    assert table.schema.field("ok").type == pa.bool_()
    assert table.schema.field("meta").type == pa.string()  # an object: JSON text
    rows = table.to_pylist()
    assert [r["n"] for r in rows] == [1.0, 2.5, None]
    assert [r["ok"] for r in rows] == [True, None, False]
    assert orjson.loads(rows[1]["meta"]) == {"k": [1]}
    assert [r["custom_id"] for r in rows] == ["a", "b", "c"]


def test_a_later_jsonl_key_named_like_an_added_column_stops_the_job_before_an_unreadable_table(
    folder: LocalObjects,
) -> None:
    put(folder, "data/t.jsonl", b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y", "model": "mine"}\n')
    job = open_job(
        folder, "inputs/t.job.json", orjson.dumps({"data": "data/t.jsonl", "model": MODEL, "user": "{{ text }}"})
    )
    for _ in job.chunks(lambda invalid: None):
        pass
    assert job.fatal is not None
    assert "row 2: a record has the key 'model'" in job.fatal
    assert "columns_prefix" in job.fatal


# -- no rows ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_a_table_of_no_rows_still_writes_a_file(tmp_path: Path, folder: LocalObjects, fmt: str) -> None:
    put(folder, "data/t.csv", b"id,text\n")
    described = resolved(folder, output_format=fmt)
    output, out = write(tmp_path, folder, described, [], name=f"results.{fmt}")
    assert output.rows == 0
    assert Path(out).exists(), "a reader expects the file, even of no rows"
    if fmt == "parquet":
        table = pq.read_table(out)
        assert len(table) == 0
        assert table.schema.names == ["id", "text", *RESULT_COLUMN_NAMES]
    elif fmt == "csv":
        with open(out, newline="", encoding="utf-8") as f:
            assert next(csv.reader(f)) == ["id", "text", *RESULT_COLUMN_NAMES]
    else:
        assert Path(out).read_bytes() == b""
