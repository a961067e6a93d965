"""Every job ends (docs/guarantees.md): whatever a provider answers at create and whatever races, a
job reaches a final status in bounded time, with its outputs and one terminal notification.

Each test here was written against a defect that left a job unfinished forever: a create the provider
refuses, retried without end; a create that keeps failing, which a cancel could not stop; a cancel
racing the hand-over of the last batch; a notification re-sent by every re-run; a job stuck at one
step, or a batch that never ends, with nothing to end it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from batchdrop import models as m
from batchdrop.adapters.store import JobStore, reserve, set_flag
from batchdrop.cancel import CancelError, carry_out, request_cancel
from batchdrop.config import Settings
from batchdrop.handlers import use_deps
from batchdrop.jobs import notify_once
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher, LambdaCrash
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.pipeline import Deps
from batchdrop.submit import submit_object
from tests.helpers import (
    all_jobs_final,
    all_notifications,
    assert_accounting,
    drive,
    jsonl,
    local_stack,
    neutral_line,
    outputs_of,
)

MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "azure": "my-deployment",
    "gemini": "gemini-2.5-flash",
    "bedrock": "amazon.nova-lite-v1:0",
}
KEYS = {p: "inputs/azure/f.jsonl" if p == "azure" else "inputs/f.jsonl" for p in MODELS}
MIN_RECORDS = 2


def make_stack(knobs: EmulatorKnobs | None = None, **options: Any) -> s.LocalStack:
    options.setdefault("bedrock_min_records", MIN_RECORDS)
    return local_stack(s.StackOptions(knobs=knobs or EmulatorKnobs(latency=0.0), **options))


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[s.LocalStack]:
    options: dict[str, Any] = dict(getattr(request, "param", {}))
    with make_stack(**options) as local:
        yield local
    use_deps(None)


def lines(provider: str, n: int = 3) -> list[dict[str, Any]]:
    return [neutral_line(MODELS[provider], f"hello {i}", custom_id=f"{provider}-{i}") for i in range(n)]


def run(
    stack: s.LocalStack, key: str, rows: list[dict[str, Any]], timeout: float = 60.0
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Drop a file, run until its job ends; the job, its outputs (every line accounted for once) and
    the notifications."""
    stack.put(key, jsonl(rows))
    store = JobStore(s.TABLE)
    dispatcher = Dispatcher(stack)
    drive(dispatcher, all_jobs_final(store, 1), timeout=timeout)
    (job,) = store.list_jobs()
    results, errors, summary = outputs_of(stack, job)
    assert_accounting(set(range(1, len(rows) + 1)), results, errors, summary)
    return job, results, errors, summary, all_notifications(dispatcher)


def terminal(notes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in notes if n["attributes"]["event"] != "submitted"]


def deps_with(checkpoint: Callable[[str], None] | None = None, clock: Callable[[], float] | None = None) -> Deps:
    """The handlers' own Deps, with a checkpoint or a clock of the test's (dependency injection)."""
    deps = Deps.from_settings(Settings.from_env())
    if checkpoint is not None:
        deps.checkpoint = checkpoint
    if clock is not None:
        deps.clock = clock
    use_deps(lambda: deps)
    return deps


# -- create errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(MODELS))
def test_a_batch_the_provider_refuses_at_create_ends_failed_and_is_not_sent_again(
    stack: s.LocalStack, provider: str
) -> None:
    # Given a provider that refuses the next create with a 400 (and would take a second one)
    stack.emulator.refused_creates = 1
    # When a file for it runs
    job, results, errors, summary, notes = run(stack, KEYS[provider], lines(provider))
    # Then its batch ends failed at once, its lines carry the provider's message, and nothing was sent
    assert job["status"] == m.JOB_FAILED
    assert not results
    assert {e["code"] for e in errors} == {m.BATCH_FAILED}
    assert all("refused the batch" in e["message"] and "emulated" in e["message"] for e in errors)
    assert stack.emulator.refused_creates == 0
    assert sum(stack.emulator.stats()["batches_created"].values()) == 0, "a refused batch is not tried again"
    (batch,) = summary["batches"]
    assert batch["status"] == m.FAILED
    assert batch["batch_id"] is None
    assert "refused" in batch["error"]
    assert [n["attributes"]["event"] for n in terminal(notes)] == [m.JOB_FAILED]


@pytest.mark.parametrize("stack", [{"extra_env": {"BATCHDROP_MAX_CREATE_ATTEMPTS": "3"}}], indirect=True)
@pytest.mark.parametrize("provider", list(MODELS))
def test_a_create_that_keeps_failing_ends_after_max_create_attempts(stack: s.LocalStack, provider: str) -> None:
    # Given a provider whose creates fail with a 500 for as long as anyone tries
    stack.emulator.failed_creates = 1000
    # When a file for it runs
    job, results, errors, _summary, _notes = run(stack, KEYS[provider], lines(provider))
    # Then the create was tried exactly three times (each of Bedrock's through boto3's own retries, safe
    # there: its create is idempotent by clientRequestToken), and the batch's lines end failed, saying so
    calls = 1000 - stack.emulator.failed_creates
    assert calls % 3 == 0 if provider == "bedrock" else calls == 3
    assert job["status"] == m.JOB_FAILED
    assert not results
    assert {e["code"] for e in errors} == {m.BATCH_FAILED}
    assert all("failed to create the batch 3 times" in e["message"] for e in errors)
    assert sum(stack.emulator.stats()["batches_created"].values()) == 0


@pytest.mark.parametrize("stack", [{"extra_env": {"BATCHDROP_MAX_CREATE_ATTEMPTS": "5"}}], indirect=True)
def test_a_create_that_fails_twice_then_succeeds_is_sent_once(stack: s.LocalStack) -> None:
    stack.emulator.failed_creates = 2
    job, results, _errors, _summary, _notes = run(stack, "inputs/f.jsonl", lines("anthropic"))
    assert job["status"] == m.JOB_COMPLETED
    assert len(results) == 3
    assert stack.emulator.stats()["batches_created"]["anthropic"] == 1


@pytest.mark.parametrize("stack", [{"extra_env": {"BATCHDROP_MAX_CREATE_ATTEMPTS": "100000"}}], indirect=True)
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_cancel_ends_a_job_whose_creates_keep_failing(stack: s.LocalStack, provider: str) -> None:
    # Given a job whose creates keep failing (and would for a very long time)
    stack.emulator.failed_creates = 10**6
    stack.put("inputs/f.jsonl", jsonl(lines(provider)))
    store = JobStore(s.TABLE)
    dispatcher = Dispatcher(stack)

    def failed_once() -> bool:
        jobs = store.list_jobs()
        return bool(jobs) and any(int(b.get("create_failures", 0)) >= 1 for b in store.get_batches(jobs[0]["job_id"]))

    drive(dispatcher, failed_once, tick=lambda d: None)
    (job,) = store.list_jobs()
    assert job["status"] == m.JOB_SUBMITTING
    # When the user cancels it
    request_cancel(store, job["job_id"], time.time())
    drive(dispatcher, all_jobs_final(store, 1))
    # Then it ends canceled, every line reported as canceled, no batch made
    (job,) = store.list_jobs()
    results, errors, summary = outputs_of(stack, job)
    assert_accounting({1, 2, 3}, results, errors, summary)
    assert job["status"] == m.JOB_CANCELED
    assert {e["code"] for e in errors} == {m.CANCELED}
    assert sum(stack.emulator.stats()["batches_created"].values()) == 0


# -- races ----------------------------------------------------------------------------------------------


def test_a_cancel_written_between_the_hand_overs_read_and_write_does_not_wedge_the_job(stack: s.LocalStack) -> None:
    # Given a checkpoint that, the first time a hand-over has read the job and before it writes,
    # carries out a cancel of that job (as the webhook path or an overlapping poll can)
    store = JobStore(s.TABLE)
    raced: list[str] = []

    def checkpoint(step: str) -> None:
        if step == "before_handover" and not raced:
            (job,) = store.list_jobs()
            raced.append(job["job_id"])
            request_cancel(store, job["job_id"], time.time())
            carry_out(deps, store.get_job(job["job_id"]) or {})

    deps = deps_with(checkpoint)
    # When the last batch ends and its job is handed over
    job, results, _errors, _summary, notes = run(stack, "inputs/f.jsonl", lines("openai"), timeout=30)
    # Then the hand-over saw the conflict, read the job again and handed it over: the job ended
    assert raced == [job["job_id"]]
    assert job["status"] in m.FINAL_JOB_STATES
    assert len(results) == 3, "every request had finished before the cancel"
    assert len(terminal(notes)) == 1


STEPS = [
    "after_plan",
    "after_create",
    "after_record",
    "after_batch_ended",
    "before_handover",
    "after_handover",
    "after_resubmit_planned",
    "after_results",
    "after_publish",
]


@pytest.mark.parametrize("stack", [{"knobs": EmulatorKnobs(latency=0.0, expire_rate=1.0, seed=3)}], indirect=True)
@pytest.mark.parametrize("step", STEPS)
def test_a_job_written_by_someone_else_at_any_step_still_ends(stack: s.LocalStack, step: str) -> None:
    # Given a checkpoint that, the first time the pipeline reaches `step`, writes the job as another
    # invocation would: a cancel requested (and carried out if the job is submitted), and the job's
    # version moved, so that whoever writes it next meets a conflict
    store = JobStore(s.TABLE)
    hit: list[str] = []

    def checkpoint(name: str) -> None:
        jobs = store.list_jobs()
        if name != step or hit or not jobs or jobs[0]["status"] in m.FINAL_JOB_STATES:
            return
        hit.append(name)
        job_id = jobs[0]["job_id"]
        with contextlib.suppress(CancelError):
            request_cancel(store, job_id, time.time())
        job = store.get_job(job_id) or {}
        if job.get("status") == m.JOB_SUBMITTED:
            carry_out(deps, job)
        else:
            store.update(job, {})

    deps = deps_with(checkpoint)
    # When a file runs whose batch expires, so that it is resubmitted once (every step is reached)
    job, _results, _errors, _summary, notes = run(stack, "inputs/f.jsonl", lines("openai"), timeout=60)
    # Then the conflict was met, read again and decided again: the job ended, each line accounted for
    # (run checks it), with one terminal notification
    assert hit == [step]
    assert job["status"] in m.FINAL_JOB_STATES
    assert len(terminal(notes)) == 1
    assert terminal(notes)[0]["attributes"]["event"] == job["status"]


@pytest.mark.parametrize(
    "stack",
    # The watchdog kept out of it: on a slow machine, three deaths can outlast eight 2 s graces.
    [{"lease_seconds": 2, "completion_grace_seconds": 2, "extra_env": {"BATCHDROP_MAX_STALLS": "100"}}],
    indirect=True,
)
def test_a_terminal_notification_is_sent_once_however_often_completion_dies_after_it(stack: s.LocalStack) -> None:
    # Given completion invocations that die right after publishing, three times in a row
    deaths: list[str] = []

    def checkpoint(step: str) -> None:
        if step == "after_publish" and len(deaths) < 3 and (store.list_jobs() or [{}])[0].get("status") == "completing":
            deaths.append(step)
            raise LambdaCrash(step)

    store = JobStore(s.TABLE)
    deps_with(checkpoint)
    job, _results, _errors, _summary, notes = run(stack, "inputs/f.jsonl", lines("openai"))
    # Then the job ends, and its terminal notification went out once (not once per death)
    assert len(deaths) == 3
    assert job["status"] == m.JOB_COMPLETED
    assert [n["attributes"]["event"] for n in terminal(notes)] == [m.JOB_COMPLETED]


def slow_first_create(monkeypatch: pytest.MonkeyPatch, provider: type[Any], meanwhile: Callable[[], object]) -> None:
    """The provider's first create takes 1.2 s before it reaches the provider, and `meanwhile` runs in that
    time (as another invocation would); then that first invocation dies once its create has returned,
    before it records the batch."""
    real_create = provider.create
    slow: list[str] = []
    during: list[str] = []

    def create(self: Any, batch: Any, path: str) -> str:
        if not slow:
            slow.append(batch.job_id)
            time.sleep(1.2)
            during.append("meanwhile")
            with contextlib.suppress(Exception):  # another invocation: its failure is its own
                meanwhile()
            during.clear()
        return real_create(self, batch, path)

    def checkpoint(step: str) -> None:
        if step == "after_create" and slow and not during and slow[0] != "died":
            slow[0] = "died"
            raise LambdaCrash(step)

    monkeypatch.setattr(provider, "create", create)
    deps_with(checkpoint)


def made_once_each(stack: s.LocalStack, store: JobStore, jobs: int) -> None:
    """Every provider batch made is the one batch a summary lists; every job completed."""
    made = stack.emulator.stats()["batches"]
    summaries = [outputs_of(stack, job)[2] for job in store.list_jobs()]
    recorded = sorted(b["batch_id"] for summary in summaries for b in summary["batches"])
    assert sorted(b["id"] for b in made) == recorded, f"{len(made)} batches made for {jobs} planned"
    assert [job["status"] for job in store.list_jobs()] == [m.JOB_COMPLETED] * jobs


@pytest.mark.parametrize("stack", [{"create_lock_seconds": 1}], indirect=True)
def test_a_create_that_outlives_the_create_lock_and_dies_before_its_record_is_not_sent_again(
    stack: s.LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two Anthropic files (of different sizes: adoption is never ambiguous), and a first create
    # that outlives the create lock (1 s): while it is on its way, the other file's submission takes
    # the lock that ran out, finds no batch for the intent left there (not made yet), puts its own
    # intent in its place and sends its batch; then the first invocation dies before its record
    from batchdrop.providers.anthropic.client import AnthropicProvider

    keys = ["inputs/x.jsonl", "inputs/y.jsonl"]
    stack.put(keys[0], jsonl(lines("anthropic", 3)))
    stack.put(keys[1], jsonl([{**row, "custom_id": f"y-{i}"} for i, row in enumerate(lines("anthropic", 2))]))
    deps = Deps.from_settings(Settings.from_env())  # the other invocation (its own lease holds the first off)

    def other_file() -> None:
        for key in keys:  # the first file's own submission is busy: its lease (30 s) is held
            submit_object(deps, key)

    slow_first_create(monkeypatch, AnthropicProvider, other_file)
    # When both files run to the end
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 2), timeout=60)
    # Then the provider made one batch per file: the dead create's batch was found and recorded when
    # its job's submission came back, not sent a second time
    made_once_each(stack, store, 2)


@pytest.mark.parametrize("stack", [{"lease_seconds": 1, "create_lock_seconds": 5}], indirect=True)
@pytest.mark.parametrize("canceled", [False, True], ids=["resubmitted", "canceled"])
def test_a_create_that_outlives_the_job_lease_is_not_sent_again_by_the_next_invocation(
    stack: s.LocalStack, monkeypatch: pytest.MonkeyPatch, canceled: bool
) -> None:
    # Given an OpenAI file whose first create outlives the job's lease (1 s): while it is on its way,
    # another invocation of the same upload takes the lease that ran out and reaches the same batch,
    # which the provider does not have yet (and the job may have been canceled meanwhile); then the
    # first invocation dies before its record
    from batchdrop.providers.openai.client import OpenAIProvider

    stack.put("inputs/x.jsonl", jsonl(lines("openai", 3)))
    store = JobStore(s.TABLE)
    deps = Deps.from_settings(Settings.from_env())

    def other_invocation() -> None:
        if canceled:
            request_cancel(store, store.list_jobs()[0]["job_id"], time.time())
        submit_object(deps, "inputs/x.jsonl")

    slow_first_create(monkeypatch, OpenAIProvider, other_invocation)
    # When the file runs to the end
    drive(Dispatcher(stack), all_jobs_final(store, 1), timeout=60)
    # Then the second invocation left the create under way alone (neither made another nor ended the
    # batch under it), and the batch it made was found and recorded: one batch made, in the summary
    made = stack.emulator.stats()["batches"]
    (job,) = store.list_jobs()
    summary = outputs_of(stack, job)[2]
    assert [b["id"] for b in made] == [b["batch_id"] for b in summary["batches"]], f"{len(made)} made for 1"
    assert job["status"] == (m.JOB_CANCELED if canceled else m.JOB_COMPLETED)


# -- the watchdog ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stack",
    [{"lease_seconds": 1, "extra_env": {"BATCHDROP_MAX_CREATE_ATTEMPTS": "100000", "BATCHDROP_MAX_STALLS": "2"}}],
    indirect=True,
)
def test_the_watchdog_ends_a_submission_that_keeps_stalling(stack: s.LocalStack) -> None:
    # Given a job whose submission never finishes (every create fails, and the bound on creates is high)
    stack.emulator.failed_creates = 10**6
    rows = [*lines("openai"), {"model": "gpt-4o-mini"}]  # and one invalid line, to be kept
    job, results, errors, summary, notes = run(stack, "inputs/f.jsonl", rows)
    # Then the watchdog ends it as failed, saying where it stuck, with every line reported
    assert job["status"] == m.JOB_FAILED
    assert job["timed_out"]
    assert job["stuck_at"] == "submit"
    assert "gave up on this job at its submit step" in summary["reason"]
    assert "Server error before the batch was created" in summary["reason"], "the last error is named"
    assert not results
    assert sorted(e["stage"] for e in errors) == ["provider"] * 3 + ["validation"]
    assert {e["code"] for e in errors if e["stage"] == "provider"} == {m.BATCH_FAILED}
    assert [n["attributes"]["event"] for n in terminal(notes)] == [m.JOB_FAILED]


def test_the_watchdog_ends_a_job_whose_batch_outlives_its_timeout() -> None:
    # Given a batch that runs for a day, and a watchdog that allows it a minute past Anthropic's window
    env = {"BATCHDROP_BATCH_TIMEOUT_SECONDS": "60", "BATCHDROP_ANTHROPIC_WINDOW_HOURS": "1"}
    with make_stack(EmulatorKnobs(latency=86_400.0), extra_env=env) as stack:
        offset = [0.0]
        deps_with(clock=lambda: time.time() + offset[0])
        store = JobStore(s.TABLE)
        dispatcher = Dispatcher(stack)
        stack.put("inputs/f.jsonl", jsonl(lines("anthropic")))
        drive(dispatcher, lambda: [j["status"] for j in store.list_jobs()] == [m.JOB_SUBMITTED])
        dispatcher.tick()
        assert store.list_jobs()[0]["status"] == m.JOB_SUBMITTED, "not ended before its timeout"
        # When the window and two minutes pass
        offset[0] = 3600 + 120.0
        drive(dispatcher, all_jobs_final(store, 1))
        # Then the job ends failed, its batch canceled at the provider, every line reported
        (job,) = store.list_jobs()
        results, errors, summary = outputs_of(stack, job)
        assert_accounting({1, 2, 3}, results, errors, summary)
        assert job["status"] == m.JOB_FAILED
        assert job["stuck_at"] == "provider"
        assert "had not ended" in summary["reason"]
        assert {e["code"] for e in errors} == {m.BATCH_FAILED}
        assert stack.emulator.stats()["batches_created"]["anthropic"] == 1
        assert [n["attributes"]["event"] for n in terminal(all_notifications(dispatcher))] == [m.JOB_FAILED]
    use_deps(None)


@pytest.mark.parametrize("stack", [{"extra_env": {"BATCHDROP_JOB_CHECK_SECONDS": "1"}}], indirect=True)
def test_a_submitted_job_whose_batches_all_ended_is_handed_over_by_its_own_periodic_look(
    stack: s.LocalStack,
) -> None:
    # Given a job whose last batch ended while nobody handed it over (its batch recorded as ended and
    # out of the due index, as a lost race once left it)
    store = JobStore(s.TABLE)
    dispatcher = Dispatcher(stack)
    stack.put("inputs/f.jsonl", jsonl(lines("openai")))
    drive(dispatcher, lambda: [j["status"] for j in store.list_jobs()] == [m.JOB_SUBMITTED], tick=lambda d: None)
    (job,) = store.list_jobs()
    for batch in store.get_batches(job["job_id"]):
        store.update(batch, {"status": m.COMPLETED}, remove=("due_pk", "due_at"))
    # When the poll runs
    time.sleep(1.1)
    drive(dispatcher, all_jobs_final(store, 1))
    # Then the job's own look handed it over, and it completed
    (job,) = store.list_jobs()
    assert job["status"] == m.JOB_COMPLETED


def test_two_invocations_reaching_one_notification_send_it_once(stack: s.LocalStack) -> None:
    # Given a job whose end another invocation is publishing right now (its reservation taken)
    store = JobStore(s.TABLE)
    store.create({"pk": "JOB#job-x", "sk": "JOB", "job_id": "job-x", "status": m.JOB_COMPLETING, "output_prefix": "o/"})
    job = store.get_job("job-x") or {}
    deps = deps_with()
    told = tuple(f"notified_{status}" for status in m.FINAL_JOB_STATES)
    assert reserve(store, job, "notifying_completed", ("notified_completed", *told), 60)
    body = {"job_id": "job-x", "status": m.JOB_COMPLETED, "counts": {}}
    # When this invocation reaches it too, it sends nothing and says so (it leaves the end to the other)
    assert notify_once(deps, job, m.JOB_COMPLETED, body) is False
    # And once the other has recorded it, neither that end nor a different one is told again
    set_flag(store, job, "notified_completed")
    assert notify_once(deps, job, m.JOB_COMPLETED, body) is True
    assert notify_once(deps, job, m.JOB_FAILED, {**body, "status": m.JOB_FAILED}) is True
    assert all_notifications(Dispatcher(stack)) == []
