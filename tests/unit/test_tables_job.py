"""A table job from its manifest (tables/job.py, `open_job` over a folder as `batchdrop validate` reads
one): the data resolved, the templates checked against the columns, and each row rendered to a request
line the JSONL pipeline's own validation accepts."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchdrop import models as m
from batchdrop.config import DEFAULT_ROUTES
from batchdrop.planning import LocalBatches, offline_settings, plan_segment
from batchdrop.tables.job import EMBEDDINGS_URL, TableJob, TableJobError, open_job
from batchdrop.tables.sources import LocalObjects
from tests.lines import payload, validator

MANIFEST = "inputs/team/tickets.job.json"
TICKETS = b'id,title,body\nT-1,Login fails,"Cannot log in, error 500"\nT-2,Slow page,"Takes 10s\nto load"\n'


@pytest.fixture
def folder(tmp_path: Path) -> LocalObjects:
    return LocalObjects(str(tmp_path))


def put(folder: LocalObjects, key: str, data: bytes) -> None:
    path = Path(folder.root, *key.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def job(folder: LocalObjects, routes: tuple[tuple[str, str], ...] = DEFAULT_ROUTES, **manifest: Any) -> TableJob:
    fields = {"data": "data/tickets.csv", "model": "gpt-4o-mini", "user": "{{ title }}: {{ body }}", **manifest}
    return open_job(folder, MANIFEST, orjson.dumps({k: v for k, v in fields.items() if v is not None}), routes)


def refused(folder: LocalObjects, **manifest: Any) -> str:
    with pytest.raises(TableJobError) as caught:
        job(folder, **manifest)
    return str(caught.value)


def rendered(table: TableJob) -> tuple[list[bytes], list[m.Invalid]]:
    """The request lines as the scan sees them (a row that did not render is a blank line), and the reports."""
    reports: list[m.Invalid] = []
    data = b"".join(table.chunks(reports.append))
    assert data.endswith(b"\n") or not data
    return data.split(b"\n")[:-1], reports


def lines_of(table: TableJob) -> list[dict[str, Any]]:
    lines, reports = rendered(table)
    assert reports == []
    assert table.fatal is None
    return [orjson.loads(line) for line in lines]


# -- checked against the table before any row is rendered -------------------------------------------


def test_a_template_column_the_table_lacks_is_named_with_the_tables_columns(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    message = refused(folder, user="{{ title }} ({{ priority }})")
    assert MANIFEST in message
    assert "'priority'" in message
    assert "id, title, body" in message  # what it could have used
    assert "'user'" in message


def test_a_row_subscript_column_the_table_lacks_is_refused_too(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    assert "'unit price'" in refused(folder, user='{{ row["unit price"] }}')


def test_a_missing_id_column_is_refused(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    message = refused(folder, id_column="ticket_id")
    assert '"id_column"' in message
    assert "'ticket_id'" in message
    assert "id, title, body" in message


def test_a_column_named_like_an_added_column_is_refused_until_a_prefix_is_set(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", b"id,title,status\nT-1,a,open\n")
    message = refused(folder, user="{{ title }}")
    assert "status" in message
    assert '"columns_prefix"' in message
    # With a prefix the added columns are llm_status...: no clash
    table = job(folder, user="{{ title }} is {{ status }}", columns_prefix="llm_")
    assert lines_of(table)[0]["messages"][0]["content"] == "a is open"


def test_a_prefixed_added_column_clashes_too(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", b"id,title,llm_model\nT-1,a,x\n")
    assert "llm_model" in refused(folder, user="{{ title }}", columns_prefix="llm_")


def test_a_jsonl_record_key_named_like_an_added_column_is_refused(folder: LocalObjects) -> None:
    # Records have no header, but the first one's keys are known when the job opens: a "status" key
    # would be written twice into results.parquet (which then cannot be read)
    put(folder, "data/t.jsonl", b'{"id": "a", "title": "x", "status": "open"}\n')
    message = refused(folder, data="data/t.jsonl", user="{{ title }}")
    assert "status" in message
    assert '"columns_prefix"' in message


def test_missing_data_is_refused(folder: LocalObjects) -> None:
    assert "not in the bucket" in refused(folder, data="data/nowhere.csv")
    assert "no objects under it" in refused(folder, data="data/empty/")


def test_an_unknown_format_is_refused_with_the_fix(folder: LocalObjects) -> None:
    put(folder, "data/export.txt", b"title,body\na,b\n")
    assert '"format"' in refused(folder, data="data/export.txt")
    assert lines_of(job(folder, data="data/export.txt", format="csv"))[0]["messages"][0]["content"] == "a: b"


def test_a_template_object_in_the_bucket(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    put(folder, "templates/triage.json", orjson.dumps({"system": "Triage.", "user": "{{ title }}"}))
    lines = lines_of(job(folder, user=None, template="templates/triage.json"))
    assert lines[0]["system"] == "Triage."
    assert lines[0]["messages"] == [{"role": "user", "content": "Login fails"}]
    assert '"template"' in refused(folder, user=None, template="templates/missing.json")


# -- rows -------------------------------------------------------------------------------------------


def test_custom_id_from_the_id_column_else_the_row_number(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    assert [line["custom_id"] for line in lines_of(job(folder, id_column="id"))] == ["T-1", "T-2"]
    assert [line["custom_id"] for line in lines_of(job(folder))] == ["row-1", "row-2"]


def test_an_empty_id_is_a_template_error_row_and_a_blank_line(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", b"id,title,body\nT-1,a,b\n,c,d\nT-3,e,f\n")
    table = job(folder, id_column="id")
    lines, reports = rendered(table)
    assert lines[1] == b""  # row 2 stands as a blank line: line n is row n
    assert [orjson.loads(lines[0])["custom_id"], orjson.loads(lines[2])["custom_id"]] == ["T-1", "T-3"]
    assert len(reports) == 1
    assert reports[0].line == 2
    assert reports[0].code == m.TEMPLATE_ERROR
    assert "'id'" in reports[0].message
    assert (table.rows, table.failed, table.fatal) == (3, 1, None)


def test_a_missing_value_and_a_wrong_width_row_are_reported_by_row(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", b"id,title,body\nT-1,a,\nT-2,b,c,extra\nT-3,d,e\n")
    table = job(folder, id_column="id", user="{{ title }}{% if body %}: {{ body }}{% endif %}")
    lines, reports = rendered(table)
    # An empty CSV cell is an empty string (not missing): row 1 renders
    assert orjson.loads(lines[0])["messages"][0]["content"] == "a"
    assert lines[1] == b""
    assert [(r.line, r.code) for r in reports] == [(2, m.INVALID_ROW)]
    assert "line 3" in reports[0].message  # the file's line, the header being line 1
    assert orjson.loads(lines[2])["custom_id"] == "T-3"


def test_a_sandbox_escape_stops_the_job(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    table = job(folder, user="{{ title.__class__.__mro__ }}")
    rendered(table)
    assert table.fatal is not None
    assert "outside the row" in table.fatal


def test_include_refuses_the_job_when_it_opens(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    assert "include" in refused(folder, user='{% include "data/tickets.csv" %}')


def test_rows_are_numbered_continuously_across_the_objects_of_a_prefix(folder: LocalObjects) -> None:
    put(folder, "data/parts/part-0002.csv", b"id,title,body\nB-1,b1,x\n")
    put(folder, "data/parts/part-0001.csv", b"id,title,body\nA-1,a1,x\nA-2,a2,x\n")
    put(folder, "data/parts/part-0003.csv.gz", gzip.compress(b"id,title,body\nC-1,c1,x\nC-2,c2,x\n"))
    put(folder, "data/parts/_SUCCESS", b"")
    put(folder, "data/parts/.part-0001.csv.crc", b"junk")
    table = job(folder, data="data/parts/", user="{{ row_number }} {{ title }}")
    assert [o.key for o in table.objects] == [
        "data/parts/part-0001.csv",
        "data/parts/part-0002.csv",
        "data/parts/part-0003.csv.gz",
    ]
    lines = lines_of(table)
    assert [line["messages"][0]["content"] for line in lines] == ["1 a1", "2 a2", "3 b1", "4 c1", "5 c2"]
    assert [line["custom_id"] for line in lines] == [f"row-{n}" for n in range(1, 6)]
    assert table.rows == 5


def test_a_list_of_keys_is_read_in_the_order_given(folder: LocalObjects) -> None:
    put(folder, "data/a.csv", b"title,body\na,x\n")
    put(folder, "data/b.csv", b"title,body\nb,x\n")
    table = job(folder, data=["data/b.csv", "data/a.csv"], user="{{ title }}")
    assert [line["messages"][0]["content"] for line in lines_of(table)] == ["b", "a"]


def test_objects_of_a_prefix_with_different_headers_stop_the_job(folder: LocalObjects) -> None:
    put(folder, "data/parts/a.csv", b"id,title,body\n1,a,x\n")
    put(folder, "data/parts/b.csv", b"id,subject,body\n2,b,x\n")
    table = job(folder, data="data/parts/")
    rendered(table)
    assert table.fatal is not None
    assert "data/parts/b.csv" in table.fatal
    assert "same columns" in table.fatal


def test_objects_of_different_formats_are_refused(folder: LocalObjects) -> None:
    put(folder, "data/a.csv", b"title,body\na,x\n")
    put(folder, "data/b.jsonl", b'{"title": "b", "body": "x"}\n')
    assert "one format" in refused(folder, data=["data/a.csv", "data/b.jsonl"])


def test_a_parquet_table_renders_its_typed_values_and_nulls_are_missing(folder: LocalObjects) -> None:
    table_data = pa.table({"id": [1, 2, 3], "title": ["a", None, "c"], "score": [0.5, 1.5, None]})
    sink = pa.BufferOutputStream()
    pq.write_table(table_data, sink, row_group_size=2)
    put(folder, "data/t.parquet", sink.getvalue().to_pybytes())
    table = job(folder, data="data/t.parquet", id_column="id", user="{{ title }} {{ score | default('n/a') }}")
    lines, reports = rendered(table)
    assert orjson.loads(lines[0]) == {
        "custom_id": "1",
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "a 0.5"}],
    }
    assert lines[1] == b""
    assert [(r.line, r.custom_id, r.code) for r in reports] == [(2, "2", m.TEMPLATE_ERROR)]
    assert "'title'" in reports[0].message
    assert orjson.loads(lines[2])["messages"][0]["content"] == "c n/a"


def test_jsonl_records_note_every_keys_json_types(folder: LocalObjects) -> None:
    put(
        folder,
        "data/t.jsonl",
        b'{"id": "a", "text": "x", "n": 1}\n{"id": "b", "text": null, "n": 2.5, "tags": ["t"]}\n'
        b'{"id": "c", "n": 3, "ok": true, "text": "z"}\n',
    )
    table = job(folder, data="data/t.jsonl", id_column="id", user="{{ text | default('-') }}")
    lines = lines_of(table)
    assert [line["messages"][0]["content"] for line in lines] == ["x", "-", "z"]
    assert table.json_types == {
        "id": ["string"],
        "text": ["string", "null"],
        "n": ["integer", "number"],
        "tags": ["json"],
        "ok": ["boolean"],
    }
    assert table.to_json()["json_types"] == table.json_types


# -- the lines are what the JSONL pipeline takes ----------------------------------------------------


def test_chat_lines_carry_the_manifests_settings_and_pass_the_validator(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    table = job(folder, id_column="id", system="You triage tickets.", max_tokens=64, temperature=0.2, stop=["END"])
    lines, _ = rendered(table)
    v = validator()
    requests = [v.check(n, line) for n, line in enumerate(lines, start=1)]
    assert all(isinstance(r, m.Request) for r in requests), requests
    first = requests[0]
    assert isinstance(first, m.Request)
    assert (first.provider, first.custom_id, first.model) == ("openai", "T-1", "gpt-4o-mini")
    body = payload(first)["body"]
    assert body["max_completion_tokens"] == 64  # OpenAI's name for the neutral max_tokens
    assert body["temperature"] == 0.2
    assert body["stop"] == ["END"]
    assert body["messages"] == [
        {"role": "system", "content": "You triage tickets."},
        {"role": "user", "content": "Login fails: Cannot log in, error 500"},
    ]


def test_a_response_format_line_passes_the_validator(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string"}},
        "required": ["label"],
        "additionalProperties": False,  # OpenAI's strict mode requires it
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "triage", "schema": schema, "strict": True}}
    lines, _ = rendered(job(folder, id_column="id", response_format=response_format))
    assert orjson.loads(lines[0])["response_format"] == response_format
    request = validator().check(1, lines[0])
    assert isinstance(request, m.Request), request
    assert payload(request)["body"]["response_format"] == response_format


def test_anthropic_lines_carry_max_tokens(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    lines, _ = rendered(job(folder, model="claude-haiku-4-5", system="S", max_tokens=77))
    request = validator().check(1, lines[0])
    assert isinstance(request, m.Request)
    assert request.provider == "anthropic"
    params = payload(request)["params"]
    assert params["max_tokens"] == 77
    assert params["system"] == "S"


def test_messages_templates_render_each_content(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    messages = [
        {"role": "system", "content": "Ticket {{ id }}"},
        {"role": "user", "content": "{{ title }}"},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "{{ body }}"},
    ]
    table = job(folder, user=None, messages=messages)
    lines = lines_of(table)
    assert lines[0]["messages"] == [
        {"role": "system", "content": "Ticket T-1"},
        {"role": "user", "content": "Login fails"},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Cannot log in, error 500"},
    ]
    assert isinstance(validator().check(1, orjson.dumps(lines[0])), m.Request)


def test_an_embedding_manifest_renders_openai_embedding_lines(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    table = job(folder, user=None, model="text-embedding-3-small", input="{{ title }}", dimensions=256, id_column="id")
    assert table.embedding
    lines, _ = rendered(table)
    assert orjson.loads(lines[0]) == {
        "custom_id": "T-1",
        "method": "POST",
        "url": EMBEDDINGS_URL,
        "body": {"model": "text-embedding-3-small", "input": "Login fails", "dimensions": 256},
    }
    request = validator().check(1, lines[0])
    assert isinstance(request, m.Request)
    assert request.provider == "openai"
    assert request.inputs == 1


@pytest.mark.parametrize(("model", "provider"), [("claude-haiku-4-5", "anthropic"), ("gemini-2.5-flash", "gemini")])
def test_an_embedding_model_routed_to_a_provider_without_embedding_batches_is_refused(
    folder: LocalObjects, model: str, provider: str
) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    message = refused(folder, user=None, model=model, input="{{ title }}")
    assert provider in message
    assert "embedding" in message


def test_the_rendered_rows_plan_as_the_submit_function_plans_them(folder: LocalObjects, tmp_path: Path) -> None:
    # The stream goes through plan_segment (as `batchdrop validate` and submit do): row n is line n
    put(folder, "data/tickets.csv", b"id,title,body\nT-1,a,b\nT-2,c\nT-3,e,f\nT-4,g,h\n")
    table = job(folder, id_column="id", max_tokens=16)
    reports: list[m.Invalid] = []
    batches = LocalBatches()
    try:
        plan = plan_segment(
            table.chunks(reports.append),
            offline_settings(),
            key="inputs/team/file.jsonl",
            store_batch=batches.store,
            report=reports.append,
            key_prefix="a1-",
            tmpdir=str(tmp_path),
            dry=True,
        )
        planned = list(batches.planned.values())
    finally:
        batches.close()
    assert plan.result.valid == 3
    assert plan.result.invalid == 0
    assert plan.result.last_line == 4
    assert [(r.line, r.code) for r in reports] == [(2, m.INVALID_ROW)]
    assert [(b.provider, b.requests) for b in planned] == [("openai", 3)]


def test_to_json_is_what_completion_needs(folder: LocalObjects) -> None:
    put(folder, "data/tickets.csv", TICKETS)
    table = job(folder, id_column="id", output_format="csv")
    rendered(table)
    described = orjson.loads(orjson.dumps(table.to_json()))
    assert described["manifest_key"] == MANIFEST
    assert described["format"] == "csv"
    assert described["columns"] == ["id", "title", "body"]
    assert described["rows"] == 2
    assert described["manifest"]["output_format"] == "csv"
    assert [o["key"] for o in described["objects"]] == ["data/tickets.csv"]
    assert described["objects"][0]["size"] == len(TICKETS)
