"""Lanes and deadlines on the embedded stack (docs/contract.md "Lanes and deadlines", docs/realtime.md):
the auto lane's decision, the real-time lane through the official SDKs against the emulator's real-time
endpoints, a file's options from its S3 metadata, and escalation of a batch late for its deadline."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.local.run import RunReport, run_files
from batchdrop.local.stack import StackOptions
from tests.helpers import read_jsonl, shared_moto_endpoint

MODEL = "gpt-4o-mini"


def chat_file(path: Path, n: int, model: str = MODEL, start: int = 0) -> Path:
    with path.open("wb") as f:
        for i in range(start, start + n):
            body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 16}
            line = {"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            f.write(orjson.dumps(line) + b"\n")
    return path


def bedrock_file(path: Path, n: int) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            record = {
                "recordId": f"r{i:04d}",
                "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
                "modelInput": {
                    "anthropic_version": "bedrock-2023-05-31",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"record {i}"}],
                },
            }
            f.write(orjson.dumps(record) + b"\n")
    return path


def options(**changes: Any) -> StackOptions:
    base = StackOptions(lane="auto", external_aws=shared_moto_endpoint(), knobs=EmulatorKnobs(latency=0.5))
    return dataclasses.replace(base, **changes)


def outputs(report: RunReport, out: Path) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]]:
    found = []
    for job in report.jobs:
        summary = job.summary or {}
        folder = out / Path(summary["results"].split("/", 3)[3]).parent
        found.append((read_jsonl((folder / "results.jsonl").read_bytes()),
                      read_jsonl((folder / "errors.jsonl").read_bytes()), summary))  # fmt: skip
    return found


def ok_realtime_calls(report: RunReport) -> int:
    return sum(1 for call in report.provider_stats["realtime_calls"] if call["status"] == 200)


def test_a_handful_of_requests_goes_real_time_by_itself_and_a_large_file_goes_batch(tmp_path: Path) -> None:
    small = chat_file(tmp_path / "small.jsonl", 12)
    large = chat_file(tmp_path / "large.jsonl", 150, start=100)
    out = tmp_path / "out"
    report = run_files([str(small), str(large)], str(out), options(), timeout=120)
    (small_results, small_errors, small_summary), (large_results, large_errors, large_summary) = outputs(report, out)

    assert small_summary["lanes"] == {"openai": "realtime"}
    assert small_summary["counts"]["by_lane"] == {"batch": 0, "realtime": 12}
    assert {r["lane"] for r in small_results} == {"realtime"}
    assert len(small_results) == 12
    assert not small_errors
    assert small_summary["status"] == "completed"
    # Priced at full price: nothing saved.
    cost = small_summary["cost_usd"]
    assert cost["realtime"] == cost["total"] == cost["realtime_equivalent"] > 0
    assert cost["batch"] == 0
    assert cost["saved"] == 0
    # The same body a batch result carries: the text is read from it.
    assert all(r["text"].startswith("echo: question") for r in small_results)

    assert large_summary["lanes"] == {"openai": "batch"}
    assert large_summary["counts"]["by_lane"] == {"batch": 150, "realtime": 0}
    assert {r["lane"] for r in large_results} == {"batch"}
    assert large_summary["cost_usd"]["saved"] == pytest.approx(large_summary["cost_usd"]["batch"])
    assert not large_errors

    # Each real-time request was called once, and no batch was made for the small file.
    assert ok_realtime_calls(report) == 12
    assert sum(b["request_count"] for b in report.provider_stats["batches"]) == 150


def test_the_files_metadata_chooses_the_lane(tmp_path: Path) -> None:
    large = chat_file(tmp_path / "large.jsonl", 120)
    out = tmp_path / "out"
    report = run_files([str(large)], str(out), options(), metadata={"batchdrop-lane": "realtime"}, timeout=120)
    [(results, errors, summary)] = outputs(report, out)
    assert summary["lanes"] == {"openai": "realtime"}
    assert summary["counts"]["by_lane"]["realtime"] == 120
    assert len(results) == 120
    assert not errors
    assert report.provider_stats["batches"] == []


def test_a_prefix_default_sends_everything_under_it_real_time(tmp_path: Path) -> None:
    large = chat_file(tmp_path / "large.jsonl", 120)
    out = tmp_path / "out"
    env = {"BATCHDROP_PREFIX_DEFAULTS": '{"inputs/urgent/": {"lane": "realtime"}}'}
    report = run_files([str(large)], str(out), options(extra_env=env), folder="urgent", timeout=120)
    [(_results, _errors, summary)] = outputs(report, out)
    assert summary["counts"]["by_lane"] == {"batch": 0, "realtime": 120}


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ({"batchdrop-deadline": "next tuesday"}, "expected an ISO 8601 time"),
        ({"batchdrop-deadline": "2020-01-01T00:00:00Z"}, "not after the upload"),
        ({"batchdrop-lane": "fast"}, "expected one of auto, batch, realtime"),
    ],
)
def test_a_bad_option_rejects_the_job_with_a_clear_reason_and_sends_nothing(
    tmp_path: Path, metadata: dict[str, str], says: str
) -> None:
    small = chat_file(tmp_path / "small.jsonl", 5)
    out = tmp_path / "out"
    report = run_files([str(small)], str(out), options(), metadata=metadata, timeout=120)
    [(results, errors, summary)] = outputs(report, out)
    assert summary["status"] == "rejected"
    assert says in summary["reason"]
    assert "batchdrop-" in summary["reason"]  # names the metadata it came from
    assert not results
    assert {e["code"] for e in errors} == {"file_rejected"}
    assert len(errors) == 5
    assert report.provider_stats["batches"] == []
    assert report.provider_stats["realtime_calls"] == []
    ends = [n for n in report.notifications if n["attributes"]["event"] == "rejected"]
    assert len(ends) == 1
    assert says in ends[0]["message"]["reason"]


def test_a_bedrock_file_under_the_minimum_goes_real_time_instead_of_being_refused(tmp_path: Path) -> None:
    records = bedrock_file(tmp_path / "few.jsonl", 7)
    out = tmp_path / "out"
    report = run_files([str(records)], str(out), options(), timeout=120)
    [(results, errors, summary)] = outputs(report, out)
    assert summary["lanes"] == {"bedrock": "realtime"}
    assert len(results) == 7
    assert not errors
    assert {r["lane"] for r in results} == {"realtime"}
    assert all(r["text"] for r in results)


def test_real_time_failures_are_reported_and_server_errors_sent_again(tmp_path: Path) -> None:
    small = chat_file(tmp_path / "small.jsonl", 60)
    out = tmp_path / "out"
    knobs = EmulatorKnobs(latency=0.5, failure_rate=0.3, seed=3)
    report = run_files([str(small)], str(out), options(knobs=knobs, max_attempts=3), timeout=180)
    [(results, errors, summary)] = outputs(report, out)
    lines = sorted([r["line"] for r in results] + [e["line"] for e in errors])
    assert lines == list(range(1, 61))
    codes = Counter(e["code"] for e in errors)
    assert codes["request_error"] > 0  # refused by the provider: its message kept, not sent again
    assert all(e["lane"] == "realtime" for e in errors)
    assert all(e["message"] for e in errors)
    # A server error is sent again in the job's next attempt, on the real-time lane.
    assert any(b["attempt"] > 1 and b["lane"] == "realtime" for b in summary["batches"])
    assert summary["counts"]["by_lane"]["realtime"] == 60


def test_a_batch_late_for_its_deadline_is_escalated_and_the_deadline_met(tmp_path: Path) -> None:
    """A batch provider slower than the deadline (its batches take 60 s, their requests finishing from
    6 s on; the deadline is 40 s away): the batch is canceled before the deadline, what it finished is
    kept, the rest answered real-time, each request once, and the job ends in time."""
    large = chat_file(tmp_path / "large.jsonl", 150)
    out = tmp_path / "out"
    stack = options(
        knobs=EmulatorKnobs(latency=60),
        min_batch_window="10s",
        escalation_margin="15s",
        rpm={"openai": 6000},
    )
    report = run_files([str(large)], str(out), stack, metadata={"batchdrop-deadline": "40s"}, timeout=180)
    [(results, errors, summary)] = outputs(report, out)

    assert summary["met_deadline"] is True
    assert summary["status"] == "completed"
    assert not errors
    by_lane = summary["counts"]["by_lane"]
    assert by_lane["batch"] + by_lane["realtime"] == 150
    assert by_lane["realtime"] > 0
    assert by_lane["batch"] > 0, "what the batch finished before the cancel is kept"
    assert sorted(r["line"] for r in results) == list(range(1, 151))
    escalated = [b for b in summary["batches"] if b.get("escalated")]
    assert escalated
    assert all(b["lane"] == "batch" for b in escalated)
    # Never answered twice: every real-time call that succeeded is a real-time result line.
    assert ok_realtime_calls(report) == by_lane["realtime"]
    events = [n["attributes"]["event"] for n in report.notifications]
    assert events.count("escalated") == 1
    assert events.count("completed") == 1
    note = next(n for n in report.notifications if n["attributes"]["event"] == "escalated")
    assert note["attributes"]["job_id"] == summary["job_id"]
    assert note["message"]["deadline"] == summary["deadline"]


def test_real_time_chunks_whose_messages_are_lost_are_sent_again_by_the_poll(tmp_path: Path) -> None:
    """The real-time queue loses every message (purged as soon as the batch is sent, as if they had all
    gone to the dead-letter queue): the poll finds the batch stalled and sends its unfinished chunks
    again, and the job ends with every line answered once."""
    from batchdrop.adapters import aws
    from batchdrop.local import stack as s
    from batchdrop.local.dispatcher import Dispatcher
    from tests.helpers import all_jobs_final, drive, local_stack

    small = chat_file(tmp_path / "small.jsonl", 30)
    with local_stack(options(lease_seconds=3)) as stack:
        dispatcher = Dispatcher(stack)
        try:
            stack.upload(str(small), "inputs/small.jsonl")
            dispatcher.deliver_uploads()
            sqs = aws.client("sqs")
            sqs.purge_queue(QueueUrl=stack.queue_urls[s.REALTIME_QUEUE])
            from batchdrop.adapters.store import JobStore

            store = JobStore(s.TABLE)
            drive(dispatcher, all_jobs_final(store, 1), timeout=120)
            [job] = store.list_jobs()
            results = read_jsonl(stack.get(f"{job['output_prefix']}results.jsonl"))
            assert sorted(r["line"] for r in results) == list(range(1, 31))
            [batch] = store.get_batches(job["job_id"])
            assert batch.get("redriven_at"), "the poll sent the chunks again"
        finally:
            dispatcher.close()
    calls = stack.emulator.realtime_calls()
    assert sum(1 for c in calls if c["status"] == 200) == 30
