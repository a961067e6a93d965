"""The operator commands (submit, status, cancel, results) against the embedded stack, and
cancellation by dropping cancel/<job_id> into the bucket."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from batchdrop.adapters.store import JobStore
from batchdrop.cli import main
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from tests.helpers import (
    LATENCY,
    FakeClock,
    all_jobs_final,
    assert_accounting,
    drive,
    jsonl,
    local_stack,
    openai_line,
    outputs_of,
    read_jsonl,
)

STACK = ["--bucket", s.BUCKET, "--table", s.TABLE]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stack(clock: FakeClock) -> Iterator[s.LocalStack]:
    # The emulator's batches run on a clock the tests move, so a cancel lands while some requests
    # have finished and others have not, however busy the machine is.
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=LATENCY, seed=3), clock=clock)) as local:
        yield local


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_submit_status_and_results_work_against_a_stack(stack: s.LocalStack, clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "ops.jsonl"
    path.write_bytes(jsonl([openai_line(f"r{i}") for i in range(4)]))
    out = invoke("submit", str(path), *STACK)
    job_id = out.split("job ")[-1].split()[0]
    assert job_id.startswith("job-")
    dispatcher = Dispatcher(stack)
    dispatcher.deliver_uploads()
    listing = invoke("status", *STACK)
    assert job_id in listing
    assert "submitted" in listing
    assert "in_progress" in invoke("status", job_id, *STACK) or "validating" in invoke("status", job_id, *STACK)
    clock.advance(LATENCY)
    drive(dispatcher, all_jobs_final(JobStore(s.TABLE), 1))
    assert "completed" in invoke("status", job_id, *STACK)
    invoke("results", job_id, "--out", str(tmp_path / "res"), *STACK)
    assert len(read_jsonl((tmp_path / "res" / "results.jsonl").read_bytes())) == 4
    assert orjson.loads((tmp_path / "res" / "summary.json").read_bytes())["status"] == "completed"


def test_results_of_a_running_job_is_a_clear_error(stack: s.LocalStack, tmp_path: Path) -> None:
    stack.put("inputs/running.jsonl", jsonl([openai_line("a")]))
    Dispatcher(stack).deliver_uploads()
    job_id = JobStore(s.TABLE).list_jobs()[0]["job_id"]
    result = CliRunner().invoke(main, ["results", job_id, "--out", str(tmp_path), *STACK])
    assert result.exit_code != 0
    assert "outputs are written when it ends" in result.output


@pytest.mark.parametrize("how", ["cli", "file"])
def test_a_canceled_job_ends_canceled_with_its_partial_results(stack: s.LocalStack, clock: FakeClock, how: str) -> None:
    stack.put("inputs/cancel-me.jsonl", jsonl([openai_line(f"r{i}") for i in range(30)]))
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    dispatcher.deliver_uploads()
    job_id = store.list_jobs()[0]["job_id"]
    # Half the batch's time: requests finish between 10% and 90% of it, so some have and some have not
    clock.advance(LATENCY / 2)
    if how == "cli":
        assert "Cancel requested" in invoke("cancel", job_id, *STACK)
    else:
        stack.put(f"cancel/{job_id}", b"")
    drive(dispatcher, all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, store.get_job(job_id) or {})
    assert_accounting(set(range(1, 31)), results, errors, summary)
    assert summary["status"] == "canceled"
    assert errors, "the requests that had not run are reported"
    assert {e["code"] for e in errors} == {"canceled"}
    assert results, "the requests that had finished are kept"
    events = [n["attributes"]["event"] for n in dispatcher.notifications()]
    assert events[-1] == "canceled"


def test_canceling_an_ended_or_unknown_job_says_why(stack: s.LocalStack) -> None:
    result = CliRunner().invoke(main, ["cancel", "job-nope", *STACK])
    assert result.exit_code != 0
    assert "no job" in result.output


def test_every_operator_command_has_help() -> None:
    for command in ("submit", "status", "cancel", "results"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0
        assert "--stack" in result.output


def test_submit_uploads_a_table_jobs_data_before_its_manifest_and_results_fetches_its_table(
    stack: s.LocalStack, clock: FakeClock, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "q.csv").write_text("id,q\n1,why\n2,how\n3,when\n")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "ask.txt").write_text("Answer briefly: {{ q }}")
    manifest = tmp_path / "q.job.json"
    fields = {"data": "data/q.csv", "template": "templates/ask.txt", "model": "gpt-4o-mini", "lane": "batch"}
    manifest.write_bytes(orjson.dumps({**fields, "id_column": "id", "output_format": "csv"}))
    out = invoke("submit", str(manifest), *STACK)
    job_id = out.split("job ")[-1].split()[0]
    dispatcher = Dispatcher(stack)
    dispatcher.deliver_uploads()
    clock.advance(LATENCY)
    drive(dispatcher, all_jobs_final(JobStore(s.TABLE), 1))
    invoke("results", job_id, "--out", str(tmp_path / "res"), *STACK)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "res" / "table" / "results.csv").read_text())))
    assert list(rows[0])[:5] == ["id", "q", "custom_id", "row_number", "response_text"]
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert "Answer briefly: how" in rows[1]["response_text"]
    assert orjson.loads((tmp_path / "res" / "summary.json").read_bytes())["status"] == "completed"
