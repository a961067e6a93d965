"""Budgets on the embedded stack (docs/budgets.md): a file over its budget is refused with nothing sent,
the truncate policy sends exactly the first requests that fit, a monthly cap stops a second job, the
counters are exact when many reserve at once, and a crash never counts a job's money twice."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from batchdrop import budget
from batchdrop import models as m
from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore, OverCap, job_pk, record_spend, reserve_spend, spend
from batchdrop.config import Settings
from batchdrop.estimate import request_tokens
from batchdrop.handlers import use_deps
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.pipeline import Deps
from batchdrop.pricing import BATCH_DISCOUNT, PRICES
from tests.helpers import all_jobs_final, assert_accounting, drive, jsonl, local_stack, openai_line, outputs_of
from tests.integration.test_pipeline import Crash

MAX_TOKENS = 1000
LINES = [openai_line(f"r{i:02d}", text=f"question {i:02d}", max_tokens=MAX_TOKENS) for i in range(10)]
BATCH_LANE = {"batchdrop-lane": "batch"}


def per_request_usd() -> float:
    """What one of LINES is estimated at in the batch lane: all alike (same lengths, same cap)."""
    from batchdrop.models import Request

    payload = jsonl([LINES[0]])
    (tokens_in,), (tokens_out,) = request_tokens("openai", [Request(1, "r00", "openai", "", "gpt-4o-mini", payload)])
    price_in, price_out = PRICES["gpt-4o-mini"].input, PRICES["gpt-4o-mini"].output
    return (tokens_in * price_in + tokens_out * price_out) / 1e6 * BATCH_DISCOUNT


def options(**env: str) -> s.StackOptions:
    return s.StackOptions(knobs=EmulatorKnobs(latency=0.0), extra_env=env)


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[s.LocalStack]:
    with local_stack(getattr(request, "param", None) or options()) as local:
        yield local
    use_deps(None)


def upload(key: str, data: bytes, metadata: dict[str, str]) -> None:
    aws.client("s3").put_object(Bucket=s.BUCKET, Key=key, Body=data, Metadata=metadata)


def run(stack: s.LocalStack, expected: int) -> tuple[JobStore, Dispatcher]:
    store = JobStore(s.TABLE)
    dispatcher = Dispatcher(stack)
    drive(dispatcher, all_jobs_final(store, expected), timeout=120)
    return store, dispatcher


def by_key(store: JobStore) -> dict[str, dict[str, Any]]:
    return {j["input"]["key"]: j for j in store.list_jobs()}


def test_a_file_over_its_budget_is_refused_and_nothing_is_sent(stack: s.LocalStack) -> None:
    upload("inputs/dear.jsonl", jsonl(LINES), {**BATCH_LANE, "batchdrop-budget-usd": "0.001"})
    store, _ = run(stack, 1)
    results, errors, summary = outputs_of(stack, store.list_jobs()[0])
    assert summary["status"] == m.JOB_REJECTED
    assert_accounting(set(range(1, 11)), results, errors, summary)
    assert {e["code"] for e in errors} == {m.FILE_REJECTED}
    reason = summary["reason"]
    assert f"up to ${10 * per_request_usd():.6f}" in reason
    assert "over its budget of $0.001000 (the object's metadata batchdrop-budget-usd)" in reason
    assert "batchdrop-budget-policy to truncate" in reason
    assert "split the file" in reason
    stats = stack.emulator.stats()
    assert not any(stats["batches_created"].values()), "the emulator received no batch"
    assert not stats["requests_submitted"], "the emulator received no request"
    assert not stats["realtime_calls"], "the emulator received no real-time call"
    assert summary["budget"]["cut"] == 0
    assert summary["budget"]["file_estimate_usd"] == pytest.approx(10 * per_request_usd(), abs=1e-6)


def test_truncate_sends_exactly_the_first_requests_that_fit(stack: s.LocalStack) -> None:
    fits = 4
    limit = f"{(fits + 0.5) * per_request_usd():.6f}"
    meta = {**BATCH_LANE, "batchdrop-budget-usd": limit, "batchdrop-budget-policy": "truncate"}
    upload("inputs/cut.jsonl", jsonl(LINES), meta)
    store, _ = run(stack, 1)
    results, errors, summary = outputs_of(stack, store.list_jobs()[0])
    assert_accounting(set(range(1, 11)), results, errors, summary)
    assert sorted(r["line"] for r in results) == list(range(1, fits + 1))
    assert sorted(e["line"] for e in errors) == list(range(fits + 1, 11))
    assert {(e["code"], e["stage"]) for e in errors} == {(m.OVER_BUDGET, "validation")}
    assert "the requests up to line 4" in errors[0]["message"]
    assert summary["counts"]["invalid"] == 6
    assert summary["counts"]["submitted"] == fits
    assert summary["status"] == m.JOB_PARTIAL
    sent = stack.emulator.stats()["requests_submitted"]
    assert sorted(sent) == [f"r{i:02d}" for i in range(fits)]
    assert set(sent.values()) == {1}
    assert summary["budget"]["cut"] == 6
    assert summary["budget"]["cut_after_line"] == fits
    assert summary["budget"]["estimate_usd"] <= float(limit)


@pytest.mark.parametrize(
    "stack", [options(BATCHDROP_MONTHLY_BUDGET_USD=f"{15 * per_request_usd():.6f}")], indirect=True
)
def test_a_monthly_cap_stops_the_second_of_two_jobs(stack: s.LocalStack) -> None:
    # Both planned before either ends: the first one's reservation holds the room.
    upload("inputs/one.jsonl", jsonl(LINES), BATCH_LANE)
    upload("inputs/two.jsonl", jsonl(LINES), BATCH_LANE)
    store, _ = run(stack, 2)
    jobs = sorted(store.list_jobs(), key=lambda j: j["status"])
    assert [j["status"] for j in jobs] in (["completed", "rejected"],)
    done, refused = jobs
    _, _, first = outputs_of(stack, done)
    _, _, second = outputs_of(stack, refused)
    assert "does not fit the stack's monthly cap (BATCHDROP_MONTHLY_BUDGET_USD)" in second["reason"]
    assert "reserved by jobs still running" in second["reason"]
    assert second["counts"]["submitted"] == 0
    (found,) = second["budget"]["monthly_caps"]
    assert found["reserved_usd"] == pytest.approx(first["budget"]["estimate_usd"]), "the first job's reservation"
    assert len(stack.emulator.stats()["requests_submitted"]) == 10, "only the first job's requests were sent"
    month = first["budget"]["monthly_caps"][0]["month"]
    counter = spend(store, "", month)
    spent = Decimal(str(first["cost_usd"]["total"]))
    assert counter == {"committed": spent, "reserved": Decimal(0), "spent": spent}
    (cap,) = first["budget"]["monthly_caps"]
    assert cap["prefix"] == ""
    assert cap["reserved_usd"] == 0
    assert cap["spent_usd"] == pytest.approx(float(spent))


def crash_once_at(step: str) -> list[str]:
    """The first invocation to pass `step` fails there; returns the steps it failed at."""
    crashed: list[str] = []

    def checkpoint(name: str) -> None:
        if name == step and not crashed:
            crashed.append(name)
            raise Crash(step)

    def factory() -> Deps:
        deps = Deps.from_settings(Settings.from_env())
        deps.checkpoint = checkpoint
        return deps

    use_deps(factory)
    return crashed


class Atomic:
    """The DynamoDB client with each request made atomic, as DynamoDB makes it: moto's server runs
    requests on threads and its backend takes no lock, so two conditional writes of one item can
    interleave there, which DynamoDB never lets happen. What the threads race is everything between
    requests: reading the counter, the conditions, the transactions."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call


def _jobs(store: JobStore, n: int) -> list[str]:
    ids = [f"job{i:03d}" for i in range(n)]
    for job_id in ids:
        store.create({"pk": job_pk(job_id), "sk": "JOB", "job_id": job_id, "status": "submitting"})
    return ids


def test_many_jobs_reserving_at_once_never_pass_the_cap_and_the_counter_is_exact(stack: s.LocalStack) -> None:
    store = JobStore(s.TABLE, Atomic(aws.client("dynamodb")))
    ids = _jobs(store, 24)
    cap, amount = Decimal("10.000000"), Decimal("0.700001")
    taken: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(ids))

    def reserve(job_id: str) -> None:
        barrier.wait()
        try:
            reserve_spend(store, job_id, {"month": "2026-12", "usd": amount}, "2026-12", [("", cap)], amount)
        except OverCap:
            return
        with lock:
            taken.append(job_id)

    threads = [threading.Thread(target=reserve, args=(job_id,)) for job_id in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == int(cap / amount) == 14
    assert spend(store, "", "2026-12") == {
        "committed": amount * len(taken),
        "reserved": amount * len(taken),
        "spent": Decimal(0),
    }
    # Each reports what it spent, at once and twice over: counted once each, exactly.
    spent = Decimal("0.123457")

    def report(job_id: str) -> None:
        record_spend(store, job_id, "2026-12", [""], amount, spent)

    threads = [threading.Thread(target=report, args=(job_id,)) for job_id in taken + taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert spend(store, "", "2026-12") == {
        "committed": spent * len(taken),
        "reserved": Decimal(0),
        "spent": spent * len(taken),
    }


@pytest.mark.parametrize("step", ["after_budget_reserved", "before_spend", "after_spend"])
@pytest.mark.parametrize("stack", [options(BATCHDROP_MONTHLY_BUDGET_USD="100")], indirect=True)
def test_a_crash_around_the_counters_counts_nothing_twice(stack: s.LocalStack, step: str) -> None:
    upload("inputs/crash.jsonl", jsonl(LINES), BATCH_LANE)
    crashed = crash_once_at(step)
    store, _ = run(stack, 1)
    assert crashed == [step]
    job = store.list_jobs()[0]
    results, errors, summary = outputs_of(stack, job)
    assert_accounting(set(range(1, 11)), results, errors, summary)
    assert summary["status"] == m.JOB_COMPLETED
    month = job["budget_reserved"]["month"]
    spent = Decimal(str(summary["cost_usd"]["total"]))
    assert spend(store, "", month) == {"committed": spent, "reserved": Decimal(0), "spent": spent}
    assert Decimal(str(job["budget_reserved"]["usd"])) == budget.usd(10 * per_request_usd())


@pytest.mark.parametrize("stack", [dataclasses.replace(options(), segment_bytes=1024)], indirect=True)
def test_a_file_planned_in_segments_is_cut_at_the_same_line(stack: s.LocalStack) -> None:
    lines = [openai_line(f"q{i:03d}", text=f"question {i:03d}", max_tokens=MAX_TOKENS) for i in range(60)]
    data = jsonl(lines)
    assert len(data) > 6 * 1024, "planned in several invocations"
    fits = 37
    limit = f"{(fits + 0.5) * per_request_usd():.6f}"
    meta = {**BATCH_LANE, "batchdrop-budget-usd": limit, "batchdrop-budget-policy": "truncate"}
    upload("inputs/long.jsonl", data, meta)
    store, _ = run(stack, 1)
    job = store.list_jobs()[0]
    assert job["segment"] >= 5
    results, errors, summary = outputs_of(stack, job)
    assert_accounting(set(range(1, 61)), results, errors, summary)
    assert sorted(r["line"] for r in results) == list(range(1, fits + 1))
    assert {e["code"] for e in errors} == {m.OVER_BUDGET}
    assert summary["budget"]["cut"] == 60 - fits


def test_a_model_without_a_price_cannot_be_checked_and_is_refused(stack: s.LocalStack) -> None:
    lines = [openai_line(f"r{i}", model="gpt-unpriced-1", max_tokens=10) for i in range(3)]
    upload("inputs/unpriced.jsonl", jsonl(lines), {**BATCH_LANE, "batchdrop-budget-usd": "100"})
    store, _ = run(stack, 1)
    _, errors, summary = outputs_of(stack, store.list_jobs()[0])
    assert summary["status"] == m.JOB_REJECTED
    assert "the cost of gpt-unpriced-1 is not known" in summary["reason"]
    assert "BATCHDROP_PRICES" in summary["reason"]
    assert len(errors) == 3
    assert not any(stack.emulator.stats()["batches_created"].values())


PREFIX_CAP = (
    '{"inputs/evals/": {"budget_policy": "truncate", "monthly_budget_usd": '
    + f'"{(3 + 0.5) * per_request_usd():.6f}"'
    + "}}"
)


@pytest.mark.parametrize("stack", [options(BATCHDROP_PREFIX_DEFAULTS=PREFIX_CAP)], indirect=True)
def test_truncate_fits_what_is_left_of_a_prefix_cap(stack: s.LocalStack) -> None:
    upload("inputs/evals/run.jsonl", jsonl(LINES), BATCH_LANE)
    upload("inputs/other.jsonl", jsonl(LINES), BATCH_LANE)  # not under the prefix: no cap
    store, _ = run(stack, 2)
    jobs = by_key(store)
    results, errors, summary = outputs_of(stack, jobs["inputs/evals/run.jsonl"])
    assert_accounting(set(range(1, 11)), results, errors, summary)
    assert len(results) == 3
    assert {e["code"] for e in errors} == {m.OVER_BUDGET}
    assert "the monthly cap of prefix inputs/evals/" in errors[0]["message"]
    (cap,) = summary["budget"]["monthly_caps"]
    assert cap["prefix"] == "inputs/evals/"
    assert cap["spent_usd"] == pytest.approx(summary["cost_usd"]["total"], abs=1e-6)
    _, _, other = outputs_of(stack, jobs["inputs/other.jsonl"])
    assert other["status"] == m.JOB_COMPLETED
    assert other["budget"] is None


@pytest.mark.parametrize("stack", [dataclasses.replace(options(), on_invalid="reject")], indirect=True)
def test_lines_cut_by_the_budget_do_not_reject_a_file_under_on_invalid_reject(stack: s.LocalStack) -> None:
    limit = f"{2.5 * per_request_usd():.6f}"
    meta = {**BATCH_LANE, "batchdrop-budget-usd": limit, "batchdrop-budget-policy": "truncate"}
    upload("inputs/strict.jsonl", jsonl(LINES), meta)
    store, _ = run(stack, 1)
    results, errors, summary = outputs_of(stack, store.list_jobs()[0])
    assert_accounting(set(range(1, 11)), results, errors, summary)
    assert summary["status"] == m.JOB_PARTIAL
    assert len(results) == 2
    assert {e["code"] for e in errors} == {m.OVER_BUDGET}


@pytest.mark.parametrize(
    "stack",
    [dataclasses.replace(options(BATCHDROP_MONTHLY_BUDGET_USD="100"), segment_bytes=1024)],
    indirect=True,
)
def test_a_crash_after_reserving_for_a_segmented_truncated_file_cuts_the_same_lines_once(stack: s.LocalStack) -> None:
    lines = [openai_line(f"q{i:03d}", text=f"question {i:03d}", max_tokens=MAX_TOKENS) for i in range(40)]
    fits = 23
    meta = {
        **BATCH_LANE,
        "batchdrop-budget-usd": f"{(fits + 0.5) * per_request_usd():.6f}",
        "batchdrop-budget-policy": "truncate",
    }
    upload("inputs/long-crash.jsonl", jsonl(lines), meta)
    crashed = crash_once_at("after_budget_reserved")
    store, _ = run(stack, 1)
    assert crashed == ["after_budget_reserved"]
    job = store.list_jobs()[0]
    results, errors, summary = outputs_of(stack, job)
    assert_accounting(set(range(1, 41)), results, errors, summary)
    assert sorted(r["line"] for r in results) == list(range(1, fits + 1))
    assert sorted(e["line"] for e in errors) == list(range(fits + 1, 41)), "each cut line reported once"
    assert set(stack.emulator.stats()["requests_submitted"].values()) == {1}
    spent = Decimal(str(summary["cost_usd"]["total"]))
    assert spend(store, "", job["budget_reserved"]["month"]) == {
        "committed": spent,
        "reserved": Decimal(0),
        "spent": spent,
    }
