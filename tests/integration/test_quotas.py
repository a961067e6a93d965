"""Quotas and held batches (docs/guarantees.md, "Provider quotas"): a file larger than what a provider
lets one organisation enqueue goes out in waves, every line finishes, no batch is created twice, and a
quota refusal is never reported as a failed batch.

Our own cap (BATCHDROP_<NAME>_MAX_ENQUEUED) keeps the waves within the quota; the provider's "not now"
(OpenAI's token_limit_exceeded, Anthropic's 429, Azure's fail-fast 400) holds a batch that passed it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from batchdrop import models as m
from batchdrop.adapters.store import JobStore, quota_pk
from batchdrop.cancel import request_cancel
from batchdrop.config import BYTES_PER_TOKEN, Settings
from batchdrop.handlers import use_deps
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.pipeline import Deps
from batchdrop.poll import OVERDUE_GRACE_SECONDS
from tests.helpers import (
    FakeClock,
    all_jobs_final,
    all_notifications,
    assert_accounting,
    drive,
    jsonl,
    local_stack,
    neutral_line,
)
from tests.helpers import outputs_of as outputs
from tests.lines import validator

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
PER_BATCH = 4


def rows(provider: str, n: int) -> list[dict[str, Any]]:
    # Lines of one length, so that every batch counts the same against a token cap.
    return [neutral_line(MODELS[provider], f"question {i:04d}", custom_id=f"r-{i:04d}") for i in range(n)]


@pytest.fixture
def use_own_deps() -> Iterator[None]:
    yield
    use_deps(None)


def handlers_clock_offset() -> list[float]:
    """The handlers' own Deps with a clock `offset[0]` seconds ahead of the real one (the emulator keeps
    real time), for time to pass at batchdrop only."""
    offset = [0.0]
    deps = Deps.from_settings(Settings.from_env())
    deps.clock = lambda: time.time() + offset[0]
    use_deps(lambda: deps)
    return offset


def stack_with(provider: str, env: dict[str, str], latency: float = 1.5) -> s.LocalStack:
    return local_stack(
        s.StackOptions(
            knobs=EmulatorKnobs(latency=latency),
            providers=("openai", "anthropic"),
            limits={provider: (PER_BATCH, 10 * 1024 * 1024)},
            extra_env=env,
        )
    )


def most_in_flight(batches: list[dict[str, Any]], ended: dict[str, float]) -> int:
    """The most provider batches that were running at once (created, not yet seen ended)."""
    starts = sorted(b["created_at"] for b in batches)
    return max(sum(1 for b in batches if b["created_at"] <= t < ended.get(b["id"], float("inf"))) for t in starts)


def run_to_end(stack: s.LocalStack, provider: str, n: int, timeout: float = 90.0) -> dict[str, Any]:
    stack.put("inputs/f.jsonl", jsonl(rows(provider, n)))
    store = JobStore(s.TABLE)
    dispatcher = Dispatcher(stack)
    ended: dict[str, float] = {}

    def tick(d: Dispatcher) -> None:
        d.tick()
        for batch in stack.emulator.batches(provider):
            if batch.ended_at is not None:
                ended.setdefault(batch.id, time.time())

    drive(dispatcher, all_jobs_final(store, 1), timeout=timeout, tick=tick)
    (job,) = store.list_jobs()
    results, errors, summary = outputs(stack, job)
    assert_accounting(set(range(1, n + 1)), results, errors, summary)
    stats = stack.emulator.stats()
    return {
        "job": job,
        "results": results,
        "errors": errors,
        "summary": summary,
        "stats": stats,
        "store": store,
        "ended": ended,
        "notes": all_notifications(dispatcher),
    }


def batch_share(provider: str) -> int:
    """What one planned batch of PER_BATCH lines counts against a token cap: its provider-format bytes
    over BYTES_PER_TOKEN, as batchdrop counts it."""
    payloads = [validator().check(i + 1, orjson.dumps(row)) for i, row in enumerate(rows(provider, PER_BATCH))]
    assert all(isinstance(p, m.Request) for p in payloads)
    return -(-sum(len(p.payload) for p in payloads if isinstance(p, m.Request)) // BYTES_PER_TOKEN)


@pytest.mark.parametrize(
    ("provider", "unit"),
    [("openai", "tokens"), ("anthropic", "requests")],
)
def test_a_file_larger_than_our_cap_goes_out_in_waves_and_every_line_finishes(
    provider: str, unit: str, use_own_deps: None
) -> None:
    # Given a cap that fits two batches at a time (in the provider's quota unit), and a file of six
    # (tokens: room for two batches, not three)
    cap = 2 * PER_BATCH if unit == "requests" else batch_share(provider) * 5 // 2
    env = {f"BATCHDROP_{provider.upper()}_MAX_ENQUEUED": str(cap)}
    with stack_with(provider, env) as stack:
        out = run_to_end(stack, provider, 6 * PER_BATCH)
        store: JobStore = out["store"]
        batches = store.get_batches(out["job"]["job_id"])
        # Then every line succeeded, each batch was created once, and never more than two ran at once
        assert out["job"]["status"] == m.JOB_COMPLETED
        assert len(out["results"]) == 6 * PER_BATCH
        assert not out["errors"]
        assert out["stats"]["batches_created"][provider] == len(batches) == 6
        assert all(count == 1 for count in out["stats"]["requests_submitted"].values())
        assert most_in_flight(out["stats"]["batches"], out["ended"]) <= 2
        # And some batches waited (the waves), and the pool is empty again
        assert any(b.get("held_since") for b in batches), "some batches were held for room"
        assert store.quota(quota_pk(provider, ""))["total"] == 0
        submitted = [n for n in out["notes"] if n["attributes"]["event"] == "submitted"]
        assert sum(1 for b in submitted[0]["message"]["batches"] if b.get("held")) >= 4


def test_a_per_model_cap_applies_to_its_model_only(use_own_deps: None) -> None:
    # Given a cap of one batch's requests for another model, and none for this one
    env = {"BATCHDROP_ANTHROPIC_MAX_ENQUEUED": f"claude-opus-4-1={PER_BATCH}"}
    with stack_with("anthropic", env) as stack:
        out = run_to_end(stack, "anthropic", 3 * PER_BATCH)
        batches = out["store"].get_batches(out["job"]["job_id"])
        # Then nothing waited
        assert out["job"]["status"] == m.JOB_COMPLETED
        assert not any(b.get("held_since") for b in batches)


def test_a_canceled_job_ends_its_held_batches_without_sending_them(use_own_deps: None) -> None:
    # Given a job whose batches wait for room behind a long first wave (two batches at a time)
    env = {"BATCHDROP_ANTHROPIC_MAX_ENQUEUED": str(2 * PER_BATCH)}
    with stack_with("anthropic", env, latency=3600.0) as stack:
        stack.put("inputs/f.jsonl", jsonl(rows("anthropic", 3 * PER_BATCH)))
        store = JobStore(s.TABLE)
        dispatcher = Dispatcher(stack)
        drive(dispatcher, lambda: [j["status"] for j in store.list_jobs()] == [m.JOB_SUBMITTED])
        (job,) = store.list_jobs()
        states = sorted(b["status"] for b in store.get_batches(job["job_id"]))
        assert states.count(m.HELD) == 1, states
        # When the user cancels it
        request_cancel(store, job["job_id"], time.time())
        drive(dispatcher, all_jobs_final(store, 1))
        # Then it ends canceled, its held batches never reached the provider, and the pool is empty
        (job,) = store.list_jobs()
        assert job["status"] == m.JOB_CANCELED
        assert stack.emulator.stats()["batches_created"]["anthropic"] == 2
        assert {b["status"] for b in store.get_batches(job["job_id"])} == {m.BATCH_CANCELED}
        assert store.quota(quota_pk("anthropic", ""))["total"] == 0
        results, errors, summary = outputs(stack, job)
        assert_accounting(set(range(1, 3 * PER_BATCH + 1)), results, errors, summary)
        assert {e["code"] for e in errors} == {m.CANCELED}


def test_a_batch_past_its_providers_window_is_canceled_and_its_unfinished_requests_sent_again(
    use_own_deps: None,
) -> None:
    # Given a provider whose batch never ends (a Gemini job left PENDING for days), with a window of an hour
    env = {"BATCHDROP_OPENAI_WINDOW_HOURS": "1", "BATCHDROP_MAX_ATTEMPTS": "2"}
    with stack_with("openai", env, latency=10 * 86_400.0) as stack:
        offset = handlers_clock_offset()
        store = JobStore(s.TABLE)
        dispatcher = Dispatcher(stack)
        stack.put("inputs/f.jsonl", jsonl(rows("openai", PER_BATCH)))
        drive(dispatcher, lambda: [j["status"] for j in store.list_jobs()] == [m.JOB_SUBMITTED])
        dispatcher.tick()
        (first,) = stack.emulator.batches("openai")
        assert first.ended_at is None, "not canceled within its window"
        # When the window and its grace pass (and the provider would now run a batch promptly)
        offset[0] = 3600 + OVERDUE_GRACE_SECONDS + 60
        stack.emulator.knobs = EmulatorKnobs(latency=0.5)
        drive(dispatcher, all_jobs_final(store, 1))
        # Then batchdrop canceled it, and its requests ran in a second batch: every line succeeded
        (job,) = store.list_jobs()
        results, errors, summary = outputs(stack, job)
        assert_accounting(set(range(1, PER_BATCH + 1)), results, errors, summary)
        assert first.end_kind == "cancelled"
        assert job["status"] == m.JOB_COMPLETED
        assert len(results) == PER_BATCH
        assert not job.get("timed_out"), "the watchdog did not end it"
        assert stack.emulator.stats()["batches_created"]["openai"] == 2
        overdue = [b for b in store.get_batches(job["job_id"]) if b.get("overdue")]
        assert len(overdue) == 1
        assert "past openai's window" in overdue[0]["overdue"]


# -- the provider's own "not now" -----------------------------------------------------------------------

ALL_MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "azure": "my-deployment",
    "gemini": "gemini-2.5-flash",
    "bedrock": "amazon.nova-lite-v1:0",
}
# Room for two batches of PER_BATCH long prompts at a time, not three, in each provider's own unit: input
# tokens (about 110 a request, by the emulators' counts), requests, or jobs.
QUEUE_LIMITS = {"openai": 1100, "azure": 1100, "gemini": 1100, "anthropic": 2 * PER_BATCH, "bedrock": 2}


def long_rows(provider: str, n: int) -> list[dict[str, Any]]:
    return [neutral_line(ALL_MODELS[provider], f"{i:04d} " + "x" * 400, custom_id=f"r-{i:04d}") for i in range(n)]


def ran_once(stack: s.LocalStack, provider: str) -> None:
    """Nothing paid for twice: each request is in exactly one provider batch that ran (a batch the
    provider refused for its quota ran nothing)."""
    ran: dict[str, int] = {}
    for batch in stack.emulator.batches(provider):
        if any(e.get("code") == "token_limit_exceeded" for e in batch.errors):
            continue
        for custom_id in batch.custom_ids:
            ran[custom_id] = ran.get(custom_id, 0) + 1
    assert ran, "batches ran"
    assert set(ran.values()) == {1}, {k: v for k, v in ran.items() if v != 1}


@pytest.mark.parametrize("provider", list(ALL_MODELS))
def test_a_file_larger_than_the_providers_queue_quota_finishes_in_waves_with_no_batch_failed(
    provider: str, use_own_deps: None
) -> None:
    # Given a provider whose queue takes two batches at a time, no cap of ours, and a file of six batches
    n = 6 * PER_BATCH
    options = s.StackOptions(
        knobs=EmulatorKnobs(latency=1.0, queue_limits={provider: QUEUE_LIMITS[provider]}),
        providers=tuple(ALL_MODELS),
        limits={provider: (PER_BATCH, 10 * 1024 * 1024)},
        bedrock_min_records=2,
    )
    with local_stack(options) as stack:
        key = "inputs/azure/f.jsonl" if provider == "azure" else "inputs/f.jsonl"
        stack.put(key, jsonl(long_rows(provider, n)))
        store = JobStore(s.TABLE)
        drive(Dispatcher(stack), all_jobs_final(store, 1), timeout=120)
        (job,) = store.list_jobs()
        results, errors, summary = outputs(stack, job)
        assert_accounting(set(range(1, n + 1)), results, errors, summary)
        # Then every line succeeded (no batch_failed), each request ran once, and the provider said "not now"
        assert job["status"] == m.JOB_COMPLETED, [e["message"] for e in errors][:3]
        assert len(results) == n
        ran_once(stack, provider)
        batches = store.get_batches(job["job_id"])
        assert len(batches) == 6
        assert any(int(b.get("refusals", 0)) > 0 for b in batches), "the provider refused some batches for now"


def test_a_batch_the_provider_refuses_for_now_without_end_ends_expired_and_says_how_to_fix_it(
    use_own_deps: None,
) -> None:
    # Given a batch larger on its own than Anthropic's queue, no cap of ours, and one attempt per request
    env = {"BATCHDROP_ANTHROPIC_WINDOW_HOURS": "1", "BATCHDROP_BATCH_TIMEOUT_SECONDS": "60"}
    options = s.StackOptions(
        knobs=EmulatorKnobs(latency=1.0, queue_limits={"anthropic": PER_BATCH - 1}),
        providers=("openai", "anthropic"),
        limits={"anthropic": (PER_BATCH, 10 * 1024 * 1024)},
        max_attempts=1,
        extra_env=env,
    )
    with local_stack(options) as stack:
        offset = handlers_clock_offset()
        store = JobStore(s.TABLE)
        dispatcher = Dispatcher(stack)
        stack.put("inputs/f.jsonl", jsonl(rows("anthropic", PER_BATCH)))
        drive(dispatcher, lambda: any(int(b.get("refusals", 0)) >= 5 for j in store.list_jobs()
                                      for b in store.get_batches(j["job_id"])))  # fmt: skip
        (job,) = store.list_jobs()
        (batch,) = store.get_batches(job["job_id"])
        assert batch["status"] == m.HELD
        assert "set BATCHDROP_ANTHROPIC_MAX_ENQUEUED to that quota" in batch["hold_reason"]
        # When it has been refused for longer than the window and the timeout
        offset[0] = 3600 + 61
        drive(dispatcher, all_jobs_final(store, 1))
        # Then it ended, never sent: its requests expired, saying why, and the job ended
        (job,) = store.list_jobs()
        results, errors, summary = outputs(stack, job)
        assert_accounting(set(range(1, PER_BATCH + 1)), results, errors, summary)
        assert job["status"] == m.JOB_FAILED
        assert {e["code"] for e in errors} == {m.EXPIRED}
        assert "queue quota stayed full" in errors[0]["message"]
        assert stack.emulator.stats()["batches_created"]["anthropic"] == 0


def test_a_gemini_job_left_pending_past_48_hours_has_every_request_sent_again(use_own_deps: None) -> None:
    # Given a Gemini job that would take days, on an emulator clock the test moves
    clock = FakeClock(time.time())
    options = s.StackOptions(knobs=EmulatorKnobs(latency=100 * 3600.0), providers=("openai", "gemini"), clock=clock)
    with local_stack(options) as stack:
        store = JobStore(s.TABLE)
        dispatcher = Dispatcher(stack)
        stack.put("inputs/f.jsonl", jsonl([neutral_line("gemini-2.5-flash", f"q {i}", custom_id=f"g-{i}")
                                           for i in range(3)]))  # fmt: skip
        drive(dispatcher, lambda: [j["status"] for j in store.list_jobs()] == [m.JOB_SUBMITTED])
        # When 48 hours pass at Gemini (which now runs batches promptly)
        clock.advance(48 * 3600 + 1)
        stack.emulator.knobs = EmulatorKnobs(latency=0.0)
        drive(dispatcher, all_jobs_final(store, 1))
        # Then its batch expired with no responses file, and every request ran in the second attempt
        (job,) = store.list_jobs()
        results, errors, summary = outputs(stack, job)
        assert_accounting({1, 2, 3}, results, errors, summary)
        assert job["status"] == m.JOB_COMPLETED
        assert {r["custom_id"] for r in results} == {"g-0", "g-1", "g-2"}
        assert sorted(b["status"] for b in summary["batches"]) == [m.COMPLETED, m.BATCH_EXPIRED]
        assert stack.emulator.stats()["batches_created"]["gemini"] == 2


def test_a_share_left_behind_in_a_full_pool_is_given_back_and_the_waves_go_on(use_own_deps: None) -> None:
    # Given a pool that a crashed batch left full (its share never given back; the batch is gone)
    env = {"BATCHDROP_ANTHROPIC_MAX_ENQUEUED": str(2 * PER_BATCH)}
    with stack_with("anthropic", env) as stack:
        store = JobStore(s.TABLE)
        assert store.take_quota(quota_pk("anthropic", ""), "job-gone/a1-anthropic-0001", 2 * PER_BATCH, 2 * PER_BATCH)
        # When a file of three batches arrives
        out = run_to_end(stack, "anthropic", 3 * PER_BATCH)
        # Then the share left behind was given back, every batch ran once, and the pool is empty again
        assert out["job"]["status"] == m.JOB_COMPLETED
        assert out["stats"]["batches_created"]["anthropic"] == 3
        assert store.quota(quota_pk("anthropic", "")) == {"total": 0, "holders": {}}


def test_a_due_item_that_keeps_failing_does_not_stop_the_poll_for_the_others(use_own_deps: None) -> None:
    # Given a due batch the poll cannot look at (its provider is no longer enabled), and a job to finish
    with stack_with("anthropic", {}, latency=0.5) as stack:
        store = JobStore(s.TABLE)
        store.create(
            {
                "pk": "JOB#job-old",
                "sk": "BATCH#a1-mistral-0001",
                "job_id": "job-old",
                "batch_key": "a1-mistral-0001",
                "provider": "mistral",
                "provider_batch_id": "b-1",
                "status": m.IN_PROGRESS,
                "requests": 1,
                "due_pk": "DUE",
                "due_at": 0,
            }
        )
        # When the poll runs, again and again
        out = run_to_end(stack, "anthropic", PER_BATCH)
        # Then the job still ended, and the failing item was put back, not first in line every time
        assert out["job"]["status"] == m.JOB_COMPLETED
        stuck = store.get_batch("job-old", "a1-mistral-0001") or {}
        assert float(stuck["due_at"]) > time.time() + 30
