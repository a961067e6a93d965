"""The response cache on the embedded stack (docs/cache.md): moto's server over HTTP for the table and the
bucket, the official SDKs against the emulator, and the dispatcher's events; concurrency, crashes, a
failing table and poisoned entries."""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchdrop import models as m
from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.config import Settings
from batchdrop.handlers import use_deps
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Chaos, Dispatcher, LambdaCrash
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.local.run import RunReport, run_files
from batchdrop.options import META_CACHE
from batchdrop.pipeline import Deps
from tests.chaos_support import check_guarantees
from tests.checks import assert_accounting, read_outputs
from tests.helpers import all_jobs_final, drive, local_stack, shared_moto_endpoint
from tests.lines import jsonl, read_jsonl

MODEL = "gpt-4o-mini"
READ_WRITE = {META_CACHE: "read-write"}


def chat(i: int, text: str | None = None, **body: Any) -> dict[str, Any]:
    content = text if text is not None else f"question {i}"
    request = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 16, **body}
    return {"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions", "body": request}


def write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_bytes(jsonl(rows))
    return str(path)


def options(**changes: Any) -> s.StackOptions:
    base = s.StackOptions(external_aws=shared_moto_endpoint(), knobs=EmulatorKnobs(latency=0.2, seed=5))
    return dataclasses.replace(base, **changes)


def sent(stats: dict[str, Any]) -> Counter[str]:
    """How many times the emulator was sent each custom_id, in a batch or real-time (answered calls)."""
    count: Counter[str] = Counter()
    for batch in stats["batches"]:
        count.update(batch["custom_ids"])
    count.update(c["custom_id"] for c in stats["realtime_calls"] if c.get("status") == 200)
    return count


def _read_in(folder: Path, name: str) -> bytes:
    return (folder / name).read_bytes()


def outputs(report: RunReport, out: Path) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]]:
    found = []
    for job in report.jobs:
        folder = out / Path((job.summary or {})["results"].split("/", 3)[3]).parent
        found.append(read_outputs(functools.partial(_read_in, folder), ""))
    return found


# -- the "done when" ------------------------------------------------------------------------


def test_the_same_file_with_three_lines_changed_sends_exactly_those_three(tmp_path: Path) -> None:
    # Given a file of 150 requests run with the cache on, then the same file with 3 prompts changed
    rows = [chat(i) for i in range(150)]
    first = write(tmp_path / "evals.jsonl", rows)
    changed = {7, 70, 149}
    again = write(
        tmp_path / "evals-v2.jsonl", [chat(i, f"changed {i}") if i in changed else r for i, r in enumerate(rows)]
    )
    out = tmp_path / "out"
    report = run_files([first], str(out), options(), metadata=READ_WRITE, then=[again], timeout=120)

    # Then the second run sent exactly the 3 changed requests; the first sent all 150 once
    count = sent(report.provider_stats)
    assert sum(count.values()) == 153
    assert {cid for cid, n in count.items() if n == 2} == {f"q-{i}" for i in changed}
    (r1, e1, s1), (r2, e2, s2) = outputs(report, out)
    # And both jobs account for every line, each answered
    for results, errors, summary in ((r1, e1, s1), (r2, e2, s2)):
        assert_accounting(set(range(1, 151)), results, errors, summary)
        assert summary["counts"]["succeeded"] == 150
    assert (s1["counts"]["cached"], s2["counts"]["cached"]) == (0, 147)
    assert s1["cache"]["written"] == 150
    cached = {r["custom_id"]: r for r in r2 if r.get("cached")}
    assert set(cached) == {f"q-{i}" for i in range(150) if i not in changed}
    # The cached lines are the first run's answers, at their own line, in the lane that first answered
    by_id = {r["custom_id"]: r for r in r1}
    for cid, record in cached.items():
        assert record["line"] == by_id[cid]["line"]
        assert record["text"] == by_id[cid]["text"]
        assert record["lane"] == by_id[cid]["lane"]
        assert record["batch_id"] is None
    assert {r["custom_id"]: r["text"] for r in r2 if not r.get("cached")} == {
        f"q-{i}": next(r["text"] for r in r2 if r["custom_id"] == f"q-{i}") for i in changed
    }
    assert all("changed" in r["text"] for r in r2 if not r.get("cached"))
    # And the cached answers cost nothing; what they saved is what the first run paid for them
    assert s2["cost_usd"]["cache_saved"] > 0
    assert s2["cost_usd"]["total"] < s1["cost_usd"]["total"] / 10
    assert s2["counts"]["by_lane"]["batch"] + s2["counts"]["by_lane"]["realtime"] == 3


def test_without_the_cache_a_second_run_sends_everything_again(tmp_path: Path) -> None:
    rows = [chat(i) for i in range(20)]
    path = write(tmp_path / "f.jsonl", rows)
    report = run_files([path], str(tmp_path / "out"), options(), then=[path], timeout=120)
    assert sum(sent(report.provider_stats).values()) == 40
    assert [j.summary["counts"]["cached"] for j in report.jobs if j.summary] == [0, 0]


def test_read_only_reuses_answers_but_keeps_none_of_its_own(tmp_path: Path) -> None:
    rows = [chat(i) for i in range(10)]
    path = write(tmp_path / "f.jsonl", rows)
    # The first run reads only: nothing is written, so the second (read-write) finds nothing either
    report = run_files(
        [path], str(tmp_path / "out"), options(), metadata={META_CACHE: "read"}, then=[path], timeout=120
    )
    assert sum(sent(report.provider_stats).values()) == 20
    summaries = [j.summary or {} for j in report.jobs]
    assert [s["cache"]["mode"] for s in summaries] == ["read", "read"]
    assert "written" not in summaries[0]["cache"]


# -- concurrency and faults -------------------------------------------------------------------------


def test_two_jobs_with_the_same_requests_at_once_both_finish_whole(tmp_path: Path) -> None:
    rows = [chat(i) for i in range(120)]
    a, b = write(tmp_path / "a.jsonl", rows), write(tmp_path / "b.jsonl", rows)
    out = tmp_path / "out"
    # Uploaded together, with duplicated S3 events and overlapping polls
    report = run_files(
        [a, b], str(out), options(), metadata=READ_WRITE, timeout=120,
        chaos=Chaos(duplicate_events=2, overlapping_polls=2, seed=3),
    )  # fmt: skip
    for results, errors, summary in outputs(report, out):
        assert_accounting(set(range(1, 121)), results, errors, summary)
        assert summary["counts"]["succeeded"] == 120
        assert sorted(r["custom_id"] for r in results) == sorted(f"q-{i}" for i in range(120))
    # Each job sent its own requests or reused the other's: never both for one line
    count = sent(report.provider_stats)
    cached = sum(j.summary["counts"]["cached"] for j in report.jobs if j.summary)
    assert sum(count.values()) + cached == 240


def test_a_failing_cache_table_sends_every_request_and_fails_no_job(tmp_path: Path) -> None:
    rows = [chat(i) for i in range(30)]
    path = write(tmp_path / "f.jsonl", rows)
    out = tmp_path / "out"
    # The first run fills the cache; the second meets a table that fails every call
    warm = run_files([path], str(out), options(), metadata=READ_WRITE, timeout=120)
    assert warm.jobs[0].summary["cache"]["written"] == 30  # type: ignore[index]
    report = run_files(
        [path], str(out), options(), metadata=READ_WRITE, timeout=120, chaos=Chaos(cache_error_rate=1.0, seed=1)
    )
    ((results, errors, summary),) = outputs(report, out)[-1:]
    assert_accounting(set(range(1, 31)), results, errors, summary)
    assert summary["counts"]["succeeded"] == 30
    assert summary["counts"]["cached"] == 0
    assert summary["cache"]["errors"] == 30
    assert summary["cache"]["write_errors"] == 30
    assert sum(sent(report.provider_stats).values()) == 30


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0, seed=2))) as local:
        yield local
    use_deps(None)


def run_once(stack: s.LocalStack, key: str, rows: list[dict[str, Any]], expected_jobs: int) -> dict[str, Any]:
    """Drop a file with the cache on, run until its job ends; its summary, every line accounted for."""
    aws.client("s3").put_object(Bucket=s.BUCKET, Key=key, Body=jsonl(rows), Metadata=READ_WRITE)
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, expected_jobs), timeout=60)
    job = next(j for j in store.list_jobs() if j["input"]["key"] == key)
    results, errors, summary = read_outputs(stack.get, job["output_prefix"])
    assert_accounting(set(range(1, len(rows) + 1)), results, errors, summary)
    return summary


def with_checkpoint(checkpoint: Callable[[str], None]) -> Deps:
    deps = Deps.from_settings(Settings.from_env())
    deps.checkpoint = checkpoint
    use_deps(lambda: deps)
    return deps


def cache_items() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = aws.client("dynamodb").scan(TableName=s.CACHE_TABLE)["Items"]
    return items


def test_a_crash_between_the_results_and_the_cache_write_loses_nothing(stack: s.LocalStack) -> None:
    rows = [chat(i) for i in range(12)]
    crashed: list[str] = []

    def crash_once(step: str) -> None:
        if step == "before_cache_written" and not crashed:
            crashed.append(step)
            raise LambdaCrash(step)

    with_checkpoint(crash_once)
    first = run_once(stack, "inputs/a.jsonl", rows, 1)
    assert crashed == ["before_cache_written"]
    # The completion that ran again wrote the outputs and the cache both
    assert first["counts"]["succeeded"] == 12
    assert len(cache_items()) == 12
    use_deps(None)
    second = run_once(stack, "inputs/b.jsonl", rows, 2)
    assert second["counts"]["cached"] == 12


def test_a_crash_between_a_batches_cache_answers_and_the_batch_sends_nothing_twice(stack: s.LocalStack) -> None:
    rows = [chat(i) for i in range(40)]
    run_once(stack, "inputs/a.jsonl", rows[:20], 1)
    crashed: list[str] = []
    calls: list[str] = []

    def crash_after_planning(step: str) -> None:
        calls.append(step)
        if step == "after_plan" and not crashed:
            crashed.append(step)
            raise LambdaCrash(step)

    with_checkpoint(crash_after_planning)
    before = sent(stack.emulator.stats())
    summary = run_once(stack, "inputs/b.jsonl", rows, 2)
    assert crashed == ["after_plan"]
    after = sent(stack.emulator.stats())
    # Half answered by the cache, the other half sent once, though the planning ran twice
    assert summary["counts"]["cached"] == 20
    assert sum(after.values()) - sum(before.values()) == 20
    assert all(after[f"q-{i}"] == 1 for i in range(20, 40))


def test_a_poisoned_entry_is_sent_as_a_miss_and_counted(stack: s.LocalStack) -> None:
    rows = [chat(i) for i in range(8)]
    run_once(stack, "inputs/a.jsonl", rows, 1)
    ddb = aws.client("dynamodb")
    (victim, *_) = cache_items()
    # One entry's answer corrupted in the table (a bad write, a tampered item): its digest no longer holds
    ddb.update_item(
        TableName=s.CACHE_TABLE,
        Key={"h": victim["h"]},
        UpdateExpression="SET body = :b",
        ExpressionAttributeValues={":b": {"B": b"\x78\x9c" + b"garbage"}},
    )
    before = sum(sent(stack.emulator.stats()).values())
    summary = run_once(stack, "inputs/b.jsonl", rows, 2)
    assert summary["cache"]["poisoned"] == 1
    assert summary["counts"]["cached"] == 7
    assert summary["counts"]["succeeded"] == 8
    assert sum(sent(stack.emulator.stats()).values()) - before == 1
    # And the answer sent again replaced the poisoned entry
    fixed = ddb.get_item(TableName=s.CACHE_TABLE, Key={"h": victim["h"]})["Item"]
    assert fixed["body"]["B"] != b"\x78\x9c" + b"garbage"


def test_a_repeated_custom_id_answered_by_the_cache_is_reported_once(stack: s.LocalStack) -> None:
    rows = [chat(i) for i in range(5)]
    run_once(stack, "inputs/a.jsonl", rows, 1)
    # The same file with a line repeating an earlier custom_id (and its request, so it is a cache hit)
    repeated = [*rows, rows[2]]
    aws.client("s3").put_object(Bucket=s.BUCKET, Key="inputs/b.jsonl", Body=jsonl(repeated), Metadata=READ_WRITE)
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 2), timeout=60)
    job = next(j for j in store.list_jobs() if j["input"]["key"] == "inputs/b.jsonl")
    results, errors, summary = read_outputs(stack.get, job["output_prefix"])
    assert_accounting(set(range(1, 7)), results, errors, summary)
    assert [(e["line"], e["code"]) for e in errors] == [(6, m.DUPLICATE_CUSTOM_ID)]
    assert summary["counts"]["cached"] == 5


def test_an_answer_cut_short_by_its_token_limit_is_not_kept(stack: s.LocalStack) -> None:
    # The emulator echoes the prompt: a 1-token cap cuts a long prompt's answer short
    rows = [chat(0, "a long prompt of several words", max_tokens=1), chat(1, "short", max_tokens=64)]
    first = run_once(stack, "inputs/a.jsonl", rows, 1)
    assert first["cache"]["written"] == 1
    second = run_once(stack, "inputs/b.jsonl", rows, 2)
    assert second["counts"]["cached"] == 1


def test_a_cached_structured_answer_keeps_its_parsed_value(stack: s.LocalStack) -> None:
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "verdict",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"],
                "additionalProperties": False,
            },
        },
    }
    rows = [chat(i, response_format=schema, max_tokens=64) for i in range(3)]
    run_once(stack, "inputs/a.jsonl", rows, 1)
    aws.client("s3").put_object(Bucket=s.BUCKET, Key="inputs/b.jsonl", Body=jsonl(rows), Metadata=READ_WRITE)
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 2), timeout=60)
    job = next(j for j in store.list_jobs() if j["input"]["key"] == "inputs/b.jsonl")
    results = read_jsonl(stack.get(f"{job['output_prefix']}results.jsonl"))
    assert [r.get("cached") for r in results] == [True, True, True]
    assert all(isinstance(r["parsed"]["ok"], bool) for r in results)


def test_the_chaos_run_with_the_cache_pays_each_line_once(tmp_path: Path) -> None:
    # Given a file, then the same requests under other custom_ids (the key leaves them out), run with the
    # cache on through duplicated events, overlapping polls, crashes at every step and a failing table
    rows = [chat(i) for i in range(150)]
    first = write(tmp_path / "a.jsonl", rows)
    second = write(tmp_path / "b.jsonl", [{**r, "custom_id": f"b-{i}"} for i, r in enumerate(rows)])
    report = run_files(
        [first], str(tmp_path / "out"), options(lease_seconds=3, completion_grace_seconds=3, create_lock_seconds=3),
        metadata=READ_WRITE, then=[second], timeout=240,
        chaos=Chaos(duplicate_events=2, overlapping_polls=2, crash_rate=0.05, cache_error_rate=0.1, seed=11),
    )  # fmt: skip
    # Then every guarantee holds: each line once in the outputs, each request sent once per attempt
    totals = check_guarantees(report, max_attempts=2)
    summary = report.jobs[1].summary or {}
    assert totals["cached"] == summary["counts"]["cached"]
    # And what the cache answered in the second job was not sent in it
    sent_b = {cid for cid in sent(report.provider_stats) if cid.startswith("b-")}
    cached_b = {f"b-{i}" for i in range(150)} - sent_b
    assert len(cached_b) >= summary["counts"]["cached"]


def test_validate_says_how_many_requests_the_stacks_cache_would_answer(
    stack: s.LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from batchdrop.cli import main

    rows = [chat(i) for i in range(6)]
    run_once(stack, "inputs/a.jsonl", rows[:4], 1)
    path = write(tmp_path / "f.jsonl", rows)
    monkeypatch.setenv("BATCHDROP_CACHE_TABLE", s.CACHE_TABLE)
    answer = CliRunner().invoke(main, ["validate", "--cache", "read", path], terminal_width=200)
    assert answer.exit_code == 0, answer.output
    assert "4 of the 6 requests would be answered from the cache now" in " ".join(answer.output.split())
    # Nothing was sent for it, and it wrote nothing
    assert len(cache_items()) == 4
    # Without a way to the stack, validate says it could not check, and still validates
    monkeypatch.delenv("BATCHDROP_CACHE_TABLE")
    monkeypatch.setenv("BATCHDROP_STACK", "NoSuchStack")
    answer = CliRunner().invoke(main, ["validate", "--cache", "read", path], terminal_width=200)
    assert answer.exit_code == 0, answer.output
    assert "not checked: cannot reach the stack's cache table" in " ".join(answer.output.split())


def _batch_file(folder: Path, rows: list[dict[str, Any]], name: str) -> Any:
    from batchdrop.planner import PlannedBatch

    lines = [orjson.dumps(r) for r in rows]
    data, index = folder / f"{name}.jsonl", folder / f"{name}.idx"
    data.write_bytes(b"".join(line + b"\n" for line in lines))
    index.write_bytes(b"".join(f"{r['custom_id']}\t{i + 1}\n".encode() for i, r in enumerate(rows)))
    return PlannedBatch(
        "a1-openai-0", "openai", "", MODEL, len(rows), 64 + len(data.read_bytes()), str(data), str(index)
    )


def test_overlapping_plannings_of_a_batch_make_the_split_the_first_decided(stack: s.LocalStack, tmp_path: Path) -> None:
    from batchdrop.cache import open_cache, request_key
    from batchdrop.submit import _CacheAnswers

    deps = Deps.from_settings(Settings.from_env())
    rows = [chat(i) for i in range(10)]
    cache = open_cache(deps)
    assert cache is not None

    def fill(which: range) -> None:
        cache.put([
            cache.item(request_key("openai", MODEL, orjson.dumps(rows[i])), "openai", MODEL, "batch", {"id": f"a{i}"})
            for i in which
        ])  # fmt: skip

    # A planning that found nothing decides "send whole"; one after it, with the cache since filled, agrees
    first = _CacheAnswers(deps, "job-a").split(_batch_file(tmp_path, rows, "a1"))
    fill(range(10))
    second = _CacheAnswers(deps, "job-a").split(_batch_file(tmp_path, rows, "a2"))
    assert first[1] is None
    assert second[1] is None
    assert second[0] is not None
    assert second[0].requests == 10
    # A planning that found half decides that split; one after it, with the cache since emptied, agrees
    for item in cache_items():
        aws.client("dynamodb").delete_item(TableName=s.CACHE_TABLE, Key={"h": item["h"]})
    fill(range(0, 10, 2))
    sending, answered = _CacheAnswers(deps, "job-b").split(_batch_file(tmp_path, rows, "b1"))
    for item in cache_items():
        aws.client("dynamodb").delete_item(TableName=s.CACHE_TABLE, Key={"h": item["h"]})
    again_sending, again_answered = _CacheAnswers(deps, "job-b").split(_batch_file(tmp_path, rows, "b2"))
    assert sending is not None and answered is not None  # noqa: PT018
    assert again_sending is not None and again_answered is not None  # noqa: PT018
    assert Path(again_sending.index_path).read_bytes() == Path(sending.index_path).read_bytes()
    assert Path(again_answered.index_path).read_bytes() == Path(answered.index_path).read_bytes()
    assert again_answered.answers_path is not None and answered.answers_path is not None  # noqa: PT018
    assert Path(again_answered.answers_path).read_bytes() == Path(answered.answers_path).read_bytes()
    assert (again_sending.requests, again_answered.requests) == (5, 5)
