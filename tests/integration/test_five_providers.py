"""All five providers through the whole pipeline on the embedded stack: a file per provider and a
neutral file routed to all five; Bedrock's minimum records with and without a fallback; the
Bedrock state-change event; each provider's failures, expiry and cancellation mapped to our codes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from batchdrop import models as m
from batchdrop.adapters.store import JobStore
from batchdrop.cancel import request_cancel
from batchdrop.handlers import use_deps
from batchdrop.handlers.poll import handler as poll_handler
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher, LocalContext
from batchdrop.local.emulator import EmulatorKnobs
from tests.helpers import (
    all_jobs_final,
    assert_accounting,
    drive,
    ended,
    jobs_by_key,
    jsonl,
    local_stack,
    neutral_line,
    outputs_of,
)

MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "bedrock": "amazon.nova-lite-v1:0",
}
MIN_RECORDS = 5


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[s.LocalStack]:
    options: dict[str, Any] = dict(getattr(request, "param", {}))
    knobs = options.pop("knobs", EmulatorKnobs(latency=0.0))
    options.setdefault("bedrock_min_records", MIN_RECORDS)
    with local_stack(s.StackOptions(knobs=knobs, **options)) as local:
        yield local
    use_deps(None)


def lines_for(provider: str, n: int, prefix: str) -> list[dict[str, Any]]:
    return [neutral_line(MODELS[provider], f"hello {i}", custom_id=f"{prefix}-{i}") for i in range(n)]


def run_file(
    stack: s.LocalStack, key: str, lines: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Drop one file and run the pipeline until its job ends: the job, its results, errors and
    summary, every line accounted for exactly once."""
    stack.put(key, jsonl(lines))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    (job,) = store.list_jobs()
    results, errors, summary = outputs_of(stack, job)
    assert_accounting(set(range(1, len(lines) + 1)), results, errors, summary)
    return job, results, errors, summary


def test_a_file_per_provider_and_a_neutral_file_routed_to_all_five(stack: s.LocalStack) -> None:
    files = {
        "inputs/openai.jsonl": lines_for("openai", 3, "o"),
        "inputs/anthropic.jsonl": lines_for("anthropic", 3, "a"),
        "inputs/azure/deploy.jsonl": [neutral_line("my-deployment", "hi", custom_id=f"z-{i}") for i in range(3)],
        "inputs/gemini.jsonl": lines_for("gemini", 3, "g"),
        "inputs/bedrock.jsonl": lines_for("bedrock", MIN_RECORDS, "b"),
    }
    mixed = [
        *lines_for("openai", 2, "mo"),
        *lines_for("anthropic", 2, "ma"),
        *lines_for("gemini", 2, "mg"),
        *lines_for("bedrock", MIN_RECORDS, "mb"),
        *[neutral_line("my-deployment", "x", custom_id=f"mz-{i}") for i in range(2)],
    ]
    for key, lines in files.items():
        stack.put(key, jsonl(lines))
    # Azure takes neutral lines only from its folder; the rest of the mixed file routes by model.
    stack.put("inputs/mixed.jsonl", jsonl(mixed[:-2]))
    store = JobStore(s.TABLE)
    keys = {*files, "inputs/mixed.jsonl"}
    drive(Dispatcher(stack), ended(store, keys), timeout=120)
    jobs = jobs_by_key(store)
    expected = {
        "inputs/openai.jsonl": {"openai"},
        "inputs/anthropic.jsonl": {"anthropic"},
        "inputs/azure/deploy.jsonl": {"azure"},
        "inputs/gemini.jsonl": {"gemini"},
        "inputs/bedrock.jsonl": {"bedrock"},
        "inputs/mixed.jsonl": {"openai", "anthropic", "gemini", "bedrock"},
    }
    for key, providers in expected.items():
        job = jobs[key]
        assert job["status"] == m.JOB_COMPLETED, (key, job)
        results, errors, summary = outputs_of(stack, job)
        n = summary["counts"]["lines"]
        assert_accounting(set(range(1, n + 1)), results, errors, summary)
        assert {r["provider"] for r in results} == providers
        assert all(r["text"] and r["text"].startswith("echo") for r in results), key
        assert all(r["usage"]["input_tokens"] > 0 and r["usage"]["output_tokens"] > 0 for r in results)
        if key != "inputs/azure/deploy.jsonl":  # a deployment name has no list price
            cost = summary["cost_usd"]
            assert cost["batch"] > 0
            assert cost["saved"] == pytest.approx(cost["realtime_equivalent"] - cost["batch"], abs=1e-6)
    assert stack.emulator.stats()["batches_created"]["gemini"] == 2
    assert stack.emulator.stats()["batches_created"]["bedrock"] == 2


def test_a_bedrock_job_under_the_minimum_is_refused_line_by_line(stack: s.LocalStack) -> None:
    lines = [*lines_for("bedrock", MIN_RECORDS - 1, "b"), *lines_for("openai", 2, "o")]
    job, _results, errors, _summary = run_file(stack, "inputs/small.jsonl", lines)
    assert job["status"] == m.JOB_PARTIAL
    assert {e["code"] for e in errors} == {m.BATCH_TOO_SMALL}
    assert {e["line"] for e in errors} == set(range(1, MIN_RECORDS))
    assert "BATCHDROP_BEDROCK_FALLBACK" in errors[0]["message"]
    assert stack.emulator.stats()["batches_created"]["bedrock"] == 0


@pytest.mark.parametrize("stack", [{"bedrock_fallback": "anthropic"}], indirect=True)
def test_with_a_fallback_claude_requests_under_the_minimum_go_to_anthropic(stack: s.LocalStack) -> None:
    claude = [neutral_line("anthropic.claude-3-5-haiku-20241022-v1:0", f"hi {i}", custom_id=f"c-{i}") for i in range(2)]
    nova = lines_for("bedrock", 1, "n")
    _job, results, errors, _summary = run_file(stack, "inputs/fallback.jsonl", [*claude, *nova])
    assert {(r["custom_id"], r["provider"]) for r in results} == {("c-0", "anthropic"), ("c-1", "anthropic")}
    assert [(e["custom_id"], e["code"]) for e in errors] == [("n-0", m.BATCH_TOO_SMALL)]
    assert results[0]["model"].startswith("claude-3-5-haiku")


def test_a_bedrock_state_change_event_gets_the_job_looked_at_at_once(stack: s.LocalStack) -> None:
    stack.put("inputs/bedrock.jsonl", jsonl(lines_for("bedrock", MIN_RECORDS, "b")))
    store = JobStore(s.TABLE)
    dispatcher = Dispatcher(stack)
    dispatcher.deliver_uploads()
    (job,) = store.list_jobs()
    (batch,) = store.get_batches(job["job_id"])
    assert batch["status"] != m.COMPLETED
    event = {
        "version": "0",
        "source": "aws.bedrock",
        "detail-type": "Batch Inference Job State Change",
        "detail": {"batchJobArn": batch["provider_batch_id"], "status": "Completed"},
    }
    answer = poll_handler(event, LocalContext("poll"))
    assert answer == {"bedrock_event": "ok"}
    (batch,) = store.get_batches(job["job_id"])
    assert batch["status"] == m.COMPLETED
    # An event for a job that is not ours changes nothing.
    other = {**event, "detail": {"batchJobArn": "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/x"}}
    assert poll_handler(other, LocalContext("poll")) == {"bedrock_event": "ignored: unknown batch"}


@pytest.mark.parametrize(
    "stack",
    [{"knobs": EmulatorKnobs(latency=0.0, failure_rate=0.5, seed=3), "max_attempts": 1}],
    indirect=True,
)
@pytest.mark.parametrize("provider", ["gemini", "bedrock"])
def test_request_failures_map_to_request_and_server_errors(stack: s.LocalStack, provider: str) -> None:
    job, _results, errors, _summary = run_file(stack, f"inputs/{provider}.jsonl", lines_for(provider, 20, "f"))
    assert job["status"] == m.JOB_PARTIAL
    assert {e["code"] for e in errors} == {m.REQUEST_ERROR, m.SERVER_ERROR}
    assert all(e["stage"] == "provider" and e["provider"] == provider and e["message"] for e in errors)


@pytest.mark.parametrize(
    "stack",
    [{"knobs": EmulatorKnobs(latency=0.0, expire_rate=1.0, seed=1), "max_attempts": 1}],
    indirect=True,
)
@pytest.mark.parametrize("provider", ["gemini", "bedrock"])
def test_an_expired_batch_keeps_what_finished_and_reports_the_rest_expired(stack: s.LocalStack, provider: str) -> None:
    _job, results, errors, _summary = run_file(stack, f"inputs/{provider}.jsonl", lines_for(provider, 20, "e"))
    assert results, "requests that finished before the expiry are kept"
    assert errors
    assert {e["code"] for e in errors} == {m.EXPIRED}


@pytest.mark.parametrize("stack", [{"knobs": EmulatorKnobs(latency=3600.0)}], indirect=True)
@pytest.mark.parametrize("provider", ["gemini", "bedrock"])
def test_cancelling_a_job_cancels_its_batch_at_the_provider(stack: s.LocalStack, provider: str) -> None:
    stack.put(f"inputs/{provider}.jsonl", jsonl(lines_for(provider, MIN_RECORDS, "c")))
    store = JobStore(s.TABLE)
    dispatcher = Dispatcher(stack)
    dispatcher.deliver_uploads()
    (job,) = store.list_jobs()
    request_cancel(store, job["job_id"], time.time())
    drive(dispatcher, all_jobs_final(store, 1))
    (job,) = store.list_jobs()
    results, errors, summary = outputs_of(stack, job)
    assert job["status"] == m.JOB_CANCELED
    assert_accounting(set(range(1, MIN_RECORDS + 1)), results, errors, summary)
    assert {e["code"] for e in errors} == {m.CANCELED}


@pytest.mark.parametrize(
    "stack",
    [{"knobs": EmulatorKnobs(latency=0.0, expire_rate=1.0, seed=2), "max_attempts": 2}],
    indirect=True,
)
@pytest.mark.parametrize("provider", ["gemini", "bedrock"])
def test_expired_requests_are_resubmitted_in_a_new_batch(stack: s.LocalStack, provider: str) -> None:
    _job, results, errors, summary = run_file(stack, f"inputs/{provider}.jsonl", lines_for(provider, 20, "r"))
    # Every batch expires: what did not finish the first time was sent once more, and only that.
    assert stack.emulator.stats()["batches_created"][provider] == 2
    assert {b["attempt"] for b in summary["batches"]} == {1, 2}
    assert errors
    assert all(e["code"] == m.EXPIRED and e["attempts"] == 2 for e in errors)
    sent = stack.emulator.stats()["requests_submitted"]
    assert all(sent[r["custom_id"]] in (1, 2) for r in results)


@pytest.mark.parametrize(
    "stack",
    [{"knobs": EmulatorKnobs(latency=0.0, expire_rate=1.0, seed=2), "max_attempts": 2, "bedrock_min_records": 20}],
    indirect=True,
)
def test_a_retry_under_bedrocks_minimum_is_not_sent_and_keeps_its_error(stack: s.LocalStack) -> None:
    bedrock = next(e for e in stack.emulator.plugins if e.provider == "bedrock")
    bedrock.expire_before_start_rate = 0.0  # type: ignore[attr-defined]  # the job runs, then times out
    _job, results, errors, _summary = run_file(stack, "inputs/bedrock.jsonl", lines_for("bedrock", 20, "u"))
    assert results
    assert errors
    assert stack.emulator.stats()["batches_created"]["bedrock"] == 1
    assert all(e["code"] == m.EXPIRED and e["attempts"] == 1 for e in errors)


@pytest.mark.parametrize(
    ("provider", "key", "model"),
    [
        ("openai", "inputs/lost.jsonl", "gpt-4o-mini"),
        ("anthropic", "inputs/lost.jsonl", "claude-haiku-4-5"),
        ("azure", "inputs/azure/lost.jsonl", "my-deployment"),
        ("gemini", "inputs/lost.jsonl", "gemini-2.5-flash"),
    ],
)
def test_a_create_whose_answer_is_lost_makes_one_batch(
    stack: s.LocalStack, provider: str, key: str, model: str
) -> None:
    # Given a provider that creates the batch but whose answer never arrives (a 500 after the fact)
    stack.emulator.lost_create_responses = 1
    lines = [neutral_line(model, f"hi {i}", custom_id=f"l-{i}") for i in range(3)]
    # When the pipeline runs (the failed submit is retried, as Lambda retries it)
    job, results, _errors, _summary = run_file(stack, key, lines)
    # Then the batch the provider made is adopted, not made again, and every line is answered once
    assert job["status"] == m.JOB_COMPLETED
    assert stack.emulator.lost_create_responses == 0, "the lost answer happened"
    # (the emulator counts Azure's batches with OpenAI's: the same API)
    assert sum(stack.emulator.stats()["batches_created"].values()) == 1
    assert {r["provider"] for r in results} == {provider}
    assert all(n == 1 for n in stack.emulator.stats()["requests_submitted"].values())


def test_a_bedrock_batch_that_duplicates_take_under_the_minimum_is_refused_not_sent(stack: s.LocalStack) -> None:
    # Given MIN_RECORDS Bedrock lines of which the last repeats an id: the batch is full enough until
    # the duplicate is taken out
    nova = lines_for("bedrock", MIN_RECORDS - 1, "d")
    nova.append(neutral_line(MODELS["bedrock"], "again", custom_id="d-0"))
    job, results, errors, _summary = run_file(stack, "inputs/dup.jsonl", [*nova, *lines_for("openai", 1, "o")])
    # Then the job ends, the duplicate is reported as such, and the rest of the Bedrock lines as too few
    assert job["status"] == m.JOB_PARTIAL
    codes = {e["line"]: e["code"] for e in errors}
    assert codes == {MIN_RECORDS: m.DUPLICATE_CUSTOM_ID, **dict.fromkeys(range(1, MIN_RECORDS), m.BATCH_TOO_SMALL)}
    assert [r["provider"] for r in results] == ["openai"]
    assert stack.emulator.stats()["batches_created"]["bedrock"] == 0


@pytest.mark.parametrize("stack", [{"limits": {"bedrock": (8, 10_000_000)}}], indirect=True)
def test_a_batch_that_a_duplicate_takes_under_the_minimum_borrows_from_its_sibling(stack: s.LocalStack) -> None:
    # Given 12 Bedrock lines at 8 a batch (planned 7 + 5 around the minimum of 5) and a 13th that
    # repeats an id of the second batch: once the duplicate is out, that batch holds 4
    nova = lines_for("bedrock", 12, "b")
    nova.append(neutral_line(MODELS["bedrock"], "again", custom_id="b-11"))
    job, results, errors, _summary = run_file(stack, "inputs/borrow.jsonl", nova)
    # Then it borrows one request from its sibling, as if the duplicate had never been planned: only
    # the duplicate is refused, and every other request runs
    assert [(e["line"], e["code"]) for e in errors] == [(13, m.DUPLICATE_CUSTOM_ID)]
    assert len(results) == 12
    assert job["status"] == m.JOB_PARTIAL
    assert stack.emulator.stats()["batches_created"]["bedrock"] == 2


@pytest.mark.parametrize("stack", [{"segment_bytes": 1024}], indirect=True)
def test_a_line_refused_as_too_few_in_an_earlier_segment_is_not_also_a_duplicate(stack: s.LocalStack) -> None:
    # Given a file planned one line per segment: an OpenAI line "x", then a Bedrock line that repeats
    # the id "x" and is alone for its model (under the minimum), then another OpenAI line
    pad = "p" * 1100
    lines = [
        neutral_line(MODELS["openai"], pad, custom_id="x"),
        neutral_line(MODELS["bedrock"], pad, custom_id="x"),
        neutral_line(MODELS["openai"], pad, custom_id="y"),
    ]
    job, _results, errors, _summary = run_file(stack, "inputs/segmented.jsonl", lines)
    # Then the Bedrock line is reported once, as too few (not again as a duplicate of line 1)
    assert int(job["segment"]) >= 2, "the file was planned in segments"
    assert [(e["line"], e["code"]) for e in errors] == [(2, m.BATCH_TOO_SMALL)]
