"""Table jobs on the embedded stack (docs/contract.md, "Table jobs"): a manifest and its table in the
bucket, rendered by the submit function, run by the emulated providers through the official SDKs, and
joined back by the completion function into the results table, every row once, in the input's order."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Chaos, Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.local.run import RunError, RunReport, run_files
from batchdrop.local.stack import StackOptions
from batchdrop.tables.schema import RESULT_COLUMN_NAMES
from tests.helpers import drive, jobs_by_key, local_stack, read_jsonl, shared_moto_endpoint


def options(**knobs: Any) -> StackOptions:
    return StackOptions(lane="auto", external_aws=shared_moto_endpoint(), knobs=EmulatorKnobs(latency=0.3, **knobs))


def write_manifest(folder: Path, name: str, **fields: Any) -> Path:
    path = folder / name
    path.write_bytes(orjson.dumps(fields))
    return path


def job_folder(report: RunReport, out: Path) -> tuple[Path, dict[str, Any]]:
    (job,) = report.jobs
    summary = job.summary or {}
    return out / Path(summary["results"].split("/", 3)[3]).parent, summary


def sent_ids(report: RunReport) -> list[str]:
    batches = [cid for b in report.provider_stats["batches"] for cid in b["custom_ids"]]
    calls = [c.get("custom_id") for c in report.provider_stats["realtime_calls"]]
    return batches + [c for c in calls if c]


def tickets_csv(path: Path, n: int) -> list[dict[str, str]]:
    rows = [
        {"ticket_id": f"T-{i:04d}", "subject": f"subject {i}", "body": f"body, with a comma, of {i}"}
        for i in range(1, n + 1)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["ticket_id", "subject", "body"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_a_csv_table_in_the_batch_lane_comes_back_joined_every_row_once_in_order(tmp_path: Path) -> None:
    rows = tickets_csv(tmp_path / "data" / "tickets.csv", 150)
    # One row of the wrong width, in the middle: its row stays in its place, with its error.
    text = (tmp_path / "data" / "tickets.csv").read_text().splitlines()
    text.insert(60, "T-bad,only two")
    (tmp_path / "data" / "tickets.csv").write_text("\n".join(text) + "\n")
    manifest = write_manifest(
        tmp_path, "tickets.job.json",
        data="data/tickets.csv", id_column="ticket_id", model="gpt-4o-mini", lane="batch",
        system="Triage.", user="{{ subject }}: {{ body }}", max_tokens=20,
    )  # fmt: skip
    out = tmp_path / "out"
    report = run_files([str(manifest)], str(out), options(failure_rate=0.1, seed=3), timeout=180)
    folder, summary = job_folder(report, out)

    table = pq.read_table(folder / "table" / "results.parquet")
    assert table.column_names == ["ticket_id", "subject", "body", *RESULT_COLUMN_NAMES]
    got = table.to_pylist()
    # Every row, once, in the input's order (the bad row at its place, numbered like the rest).
    assert [r["row_number"] for r in got] == list(range(1, 152))
    expected_ids = [r["ticket_id"] for r in rows[:59]] + [None] + [r["ticket_id"] for r in rows[59:]]
    assert [r["ticket_id"] for r in got] == expected_ids
    bad = got[59]
    assert (bad["status"], bad["error_code"]) == ("invalid", "invalid_row")
    assert "2 fields where the header has 3" in bad["error_message"]

    results = {r["custom_id"]: r for r in read_jsonl((folder / "results.jsonl").read_bytes())}
    errors = read_jsonl((folder / "errors.jsonl").read_bytes())
    ok = [r for r in got if r["status"] == "succeeded"]
    failed = [r for r in got if r["status"] == "failed"]
    assert ok
    assert failed, "the knob should have failed some rows"
    assert len(ok) == summary["counts"]["succeeded"] == len(results)
    assert len(failed) == summary["counts"]["failed"]
    assert summary["counts"]["lines"] == 151
    assert summary["counts"]["invalid"] == 1
    for row in ok:
        # The answer is the one results.jsonl has for that row (the emulator echoes the prompt).
        answer = results[row["custom_id"]]
        assert row["response_text"] == answer["text"]
        assert row["subject"] in row["response_text"]
        assert (row["input_tokens"], row["output_tokens"]) == tuple(answer["usage"].values())
        assert (row["provider"], row["lane"]) == ("openai", "batch")
        assert row["cost_usd"] is not None
        assert row["cost_usd"] > 0
    by_line = {e["line"]: e for e in errors}
    for row in failed:
        assert row["error_code"] == by_line[row["row_number"]]["code"]
        assert row["response_text"] is None
    # Each rendered row was sent under its own id; none twice within an attempt.
    assert set(sent_ids(report)) <= {r["ticket_id"] for r in rows}
    assert summary["table"]["rows"] == 151
    assert f"outputs/{summary['table']['job_path']}/table/results.parquet" in summary["table"]["uri"]
    assert summary["table"]["data"][0]["key"] == "data/tickets.csv"


def test_a_parquet_prefix_with_null_cells_writes_csv_and_names_the_missing_column(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "parts"
    folder.mkdir(parents=True)
    # Two objects under the prefix, each of two row groups; int ids; a null in the template's column.
    for part in range(2):
        ids = list(range(part * 40, part * 40 + 40))
        notes = [None if i % 13 == 5 else f"note {i}" for i in ids]
        table = pa.table({"id": pa.array(ids, pa.int64()), "note": notes, "unused": [1.5] * 40})
        pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=20)
    (folder / "_SUCCESS").write_bytes(b"")
    manifest = write_manifest(
        tmp_path, "notes.job.json",
        data="data/parts/", id_column="id", model="claude-3-5-haiku-latest",
        messages=[{"role": "user", "content": "Summarise: {{ note }} (row {{ row_number }})"}],
        max_tokens=30, output_format="csv",
    )  # fmt: skip
    out = tmp_path / "out"
    report = run_files([str(manifest)], str(out), options(), timeout=180)
    job_dir, summary = job_folder(report, out)
    got = list(csv.DictReader(io.StringIO((job_dir / "table" / "results.csv").read_text())))
    assert [int(r["id"]) for r in got] == list(range(80))
    assert [int(r["row_number"]) for r in got] == list(range(1, 81))
    missing = [r for r in got if r["status"] == "invalid"]
    assert [int(r["id"]) for r in missing] == [i for i in range(80) if i % 13 == 5]
    for r in missing:
        assert r["error_code"] == "template_error"
        assert "column 'note' has no value" in r["error_message"]
        assert f"row {int(r['id']) + 1}:" in r["error_message"]
    answered = [r for r in got if r["status"] == "succeeded"]
    assert len(answered) == 80 - len(missing) == summary["counts"]["succeeded"]
    for r in answered:
        assert f"note {r['id']}" in r["response_text"]
        assert f"(row {r['row_number']})" in r["response_text"]
        assert r["provider"] == "anthropic"
    assert summary["status"] == "partial"
    assert [o["key"] for o in summary["table"]["data"]] == ["data/parts/part-0.parquet", "data/parts/part-1.parquet"]


def test_an_embedding_table_writes_each_vector_as_a_list_column(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with (tmp_path / "data" / "docs.jsonl").open("wb") as f:
        for i in range(12):
            f.write(orjson.dumps({"doc": f"d{i}", "text": f"document number {i}", "meta": {"n": i}}) + b"\n")
    manifest = write_manifest(
        tmp_path, "embed.job.json", data="data/docs.jsonl", id_column="doc",
        model="text-embedding-3-small", input="{{ text }}", output_format="jsonl",
    )  # fmt: skip
    out = tmp_path / "out"
    report = run_files([str(manifest)], str(out), options(), timeout=120)
    job_dir, _summary = job_folder(report, out)
    got = read_jsonl((job_dir / "table" / "results.jsonl").read_bytes())
    assert [r["doc"] for r in got] == [f"d{i}" for i in range(12)]
    assert all(r["status"] == "succeeded" for r in got)
    for r in got:
        assert isinstance(r["embedding"], list)
        assert len(r["embedding"]) > 0
        assert all(isinstance(x, float) for x in r["embedding"])
        assert r["response_text"] is None
    # A nested value of the records is kept, as JSON text (one type for the column).
    assert orjson.loads(got[3]["meta"]) == {"n": 3}


def _upload(stack: s.LocalStack, key: str, data: bytes) -> None:
    aws.client("s3").put_object(Bucket=s.BUCKET, Key=key, Body=data)


def _run_manifest(
    stack: s.LocalStack, manifest: dict[str, Any], key: str = "inputs/t.job.json"
) -> tuple[dict[str, Any], Dispatcher]:
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    _upload(stack, key, orjson.dumps(manifest))
    drive(
        dispatcher,
        lambda: (
            any(j.get("status") == "rejected" for j in jobs_by_key(store).values())
            or bool([j for j in jobs_by_key(store).values() if j.get("status") in ("completed", "partial", "failed")])
        ),
        timeout=60,
    )
    (job,) = jobs_by_key(store).values()
    summary_key = f"{job['output_prefix']}summary.json"
    summary = orjson.loads(aws.client("s3").get_object(Bucket=s.BUCKET, Key=summary_key)["Body"].read())
    return summary, dispatcher


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ({"data": "data/late.csv", "model": "gpt-4o-mini", "user": "{{ a }}"}, "upload the data before the manifest"),
        ({"data": "data/t.csv", "model": "gpt-4o-mini", "user": "{{ nope }}"}, "has no column 'nope'"),
        ({"data": "data/t.csv", "model": "gpt-4o-mini", "user": "{% if a %}"}, "does not parse: line 1"),
        ({"data": "data/t.csv", "model": "gpt-4o-mini", "user": "{{ a.__class__.__mro__ }}"}, "outside the row"),
        (
            {"data": "data/t.csv", "model": "gpt-4o-mini", "user": "{{ a }}", "maxtokens": 5},
            "unknown field `maxtokens`",
        ),
    ],
    ids=["data-missing", "unknown-column", "syntax", "sandbox", "typo"],
)
def test_a_manifest_that_cannot_run_rejects_the_job_with_its_reason_and_sends_nothing(
    manifest: dict[str, Any], expected: str
) -> None:
    with local_stack(StackOptions(lane="auto")) as stack:
        _upload(stack, "data/t.csv", b"a,b\n1,2\n3,4\n")
        summary, dispatcher = _run_manifest(stack, manifest)
        try:
            assert summary["status"] == "rejected"
            assert expected in summary["reason"]
            stats = stack.emulator.stats()
            assert stats["batches"] == []
            assert stats["realtime_calls"] == []
            assert all(i.ok for i in dispatcher.invocations)
        finally:
            dispatcher.close()


def test_a_run_refuses_a_manifest_whose_data_is_not_next_to_it(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "x.job.json", data="data/none.csv", model="gpt-4o-mini", user="{{ a }}")
    with pytest.raises(RunError, match=r"data/none.csv.*read next to the manifest"):
        run_files([str(manifest)], str(tmp_path / "out"), dataclasses.replace(options()), timeout=30)


def test_a_table_job_under_duplicate_events_overlapping_polls_and_crashes_still_has_every_row_once(
    tmp_path: Path,
) -> None:
    rows = tickets_csv(tmp_path / "data" / "tickets.csv", 120)
    manifest = write_manifest(
        tmp_path, "chaos.job.json",
        data="data/tickets.csv", id_column="ticket_id", model="gpt-4o-mini", lane="batch", user="{{ subject }}",
    )  # fmt: skip
    out = tmp_path / "out"
    chaos = Chaos(duplicate_events=2, overlapping_polls=2, crash_rate=0.15, seed=11)
    report = run_files([str(manifest)], str(out), options(expire_rate=0.3, seed=5), chaos=chaos, timeout=300)
    folder, summary = job_folder(report, out)
    got = pq.read_table(folder / "table" / "results.parquet").to_pylist()
    assert [r["ticket_id"] for r in got] == [r["ticket_id"] for r in rows]
    assert summary["counts"]["lines"] == 120
    assert sum(r["status"] == "succeeded" for r in got) == summary["counts"]["succeeded"]
    assert sum(r["status"] == "failed" for r in got) == summary["counts"]["failed"]
    # Within an attempt no row was sent twice (resubmission of expired rows is a new attempt).
    per_batch = [b["custom_ids"] for b in report.provider_stats["batches"] if not b["quota_refused"]]
    for ids in per_batch:
        assert len(ids) == len(set(ids))


def test_validate_reports_rows_that_render_to_invalid_requests_by_row_and_sends_nothing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from batchdrop.cli import main

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.csv").write_text(
        "id,q\nT-1,fine\nbad id!,fine\nT-1,again\nT-4,\nT-5," + "x" * 40 + "\n", encoding="utf-8"
    )
    manifest = write_manifest(
        tmp_path, "t.job.json", data="data/t.csv", id_column="id", model="gpt-4o-mini",
        user="{{ q }}", max_tokens=10,
    )  # fmt: skip
    result = CliRunner().invoke(main, ["validate", "--json", str(manifest)], catch_exceptions=False)
    assert result.exit_code == 1
    errors = {e["line"]: e for e in map(orjson.loads, [x for x in result.output.splitlines() if x.startswith("{")])}
    assert errors[2]["code"] == "invalid_custom_id"
    assert errors[3]["code"] == "duplicate_custom_id"
    assert "line 1" in errors[3]["message"]  # the first row that used the id
    assert set(errors) == {2, 3}
    assert "5 lines, 3 valid, 2 invalid" in result.output

    # A manifest that cannot run is refused before any row: the field's path is named.
    bad = write_manifest(
        tmp_path, "e.job.json", data="data/t.csv", model="gpt-4o-mini",
        messages=[{"role": "user", "content": "{{ q }}"}, {"role": "tool", "content": "x"}],
    )  # fmt: skip
    refused = CliRunner().invoke(main, ["validate", str(bad)], catch_exceptions=False)
    assert refused.exit_code == 1
    assert "$.messages[1].role" in refused.output


def test_a_response_format_table_gets_a_parsed_struct_and_mismatches_are_rows_with_their_error(tmp_path: Path) -> None:
    rows = tickets_csv(tmp_path / "data" / "tickets.csv", 60)
    schema = {
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": ["billing", "account", "shipping", "other"]},
            "urgent": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["category", "urgent", "tags"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "triage", "schema": schema, "strict": True}}
    manifest = write_manifest(
        tmp_path, "triage.job.json",
        data="data/tickets.csv", id_column="ticket_id", model="claude-3-5-haiku-latest", user="{{ body }}",
        max_tokens=100, response_format=response_format,
    )  # fmt: skip
    out = tmp_path / "out"
    report = run_files([str(manifest)], str(out), options(schema_mismatch_rate=0.2, seed=4), timeout=180)
    folder, summary = job_folder(report, out)
    table = pq.read_table(folder / "table" / "results.parquet")
    parsed_type = table.schema.field("parsed").type
    assert pa.types.is_struct(parsed_type)
    assert {parsed_type.field(i).name: str(parsed_type.field(i).type) for i in range(parsed_type.num_fields)} == {
        "category": "string",
        "urgent": "bool",
        "tags": "list<element: string>",
    }
    got = table.to_pylist()
    assert [r["ticket_id"] for r in got] == [r["ticket_id"] for r in rows]
    ok = [r for r in got if r["status"] == "succeeded"]
    bad = [r for r in got if r["status"] == "failed"]
    assert ok
    assert bad, "the knob should have broken some answers"
    for r in ok:
        assert r["parsed"]["category"] in schema["properties"]["category"]["enum"]  # type: ignore[index]
        assert isinstance(r["parsed"]["urgent"], bool)
        assert orjson.loads(r["response_text"]) == r["parsed"]  # a forced tool's input, as JSON text
    for r in bad:
        assert r["error_code"] == "schema_mismatch"
        assert r["parsed"] is None
        assert r["error_message"]
    assert len(bad) == summary["counts"]["failed"]
