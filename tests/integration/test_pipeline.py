"""The three handlers against moto's server and the provider emulator, over HTTP, driven as AWS would."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from batchdrop import models as m
from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.config import Settings
from batchdrop.handlers import use_deps
from batchdrop.handlers.poll import handler as poll_handler
from batchdrop.handlers.submit import handler as submit_handler
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher, LocalContext
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.pipeline import Deps, batch_data_key
from batchdrop.planner import ENVELOPE_BYTES
from tests.helpers import (
    FakeClock,
    all_jobs_final,
    anthropic_line,
    assert_accounting,
    drive,
    jsonl,
    local_stack,
    neutral_line,
    openai_line,
    outputs_of,
)


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[s.LocalStack]:
    options = getattr(request, "param", None) or s.StackOptions(knobs=EmulatorKnobs(latency=0.0))
    with local_stack(options) as local:
        yield local
    use_deps(None)


def only_job(store: JobStore) -> dict[str, Any]:
    jobs = store.list_jobs()
    assert len(jobs) == 1
    return jobs[0]


def s3_event_bodies(stack: s.LocalStack) -> list[dict[str, Any]]:
    """Take the S3 notifications moto queued (the real events), leaving the queue empty."""
    sqs = aws.client("sqs")
    url = stack.queue_urls[s.S3_EVENTS_QUEUE]
    events: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return events
        for message in messages:
            body = orjson.loads(message["Body"])
            if body.get("Event") != "s3:TestEvent":
                events.append(body)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_openai_file_goes_through_submit_poll_complete(stack: s.LocalStack) -> None:
    # Given a file of valid and invalid lines, with blank lines in between
    data = jsonl([openai_line("a"), "", openai_line("b"), "{not json", "   ", openai_line("c", model="gpt-4.1-mini")])
    stack.put("inputs/evals/run1.jsonl", data)
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)

    # When the pipeline runs until the job has ended
    drive(dispatcher, all_jobs_final(store, 1))

    # Then every non-blank line is in exactly one output file, and the counts add up
    job = only_job(store)
    results, errors, summary = outputs_of(stack, job)
    assert_accounting({1, 3, 4, 6}, results, errors, summary)
    assert job["output_prefix"] == f"outputs/evals/run1/{job['job_id']}/"
    assert {r["custom_id"]: r["line"] for r in results} == {"a": 1, "b": 3, "c": 6}
    assert errors == [
        {
            "custom_id": None,
            "line": 4,
            "stage": "validation",
            "code": "invalid_json",
            "message": errors[0]["message"],
            "provider": None,
            "batch_id": None,
            "attempts": 0,
            "detail": None,
        }
    ]
    assert summary["status"] == "partial"
    # one batch per model (OpenAI's rule), each recorded in the summary
    assert sorted(b["requests"] for b in summary["batches"]) == [1, 2]
    assert all(r["text"] and r["text"].startswith("echo:") for r in results)
    assert summary["usage"]["input_tokens"] == sum(r["usage"]["input_tokens"] for r in results)
    assert summary["cost_usd"]["saved"] is not None
    assert summary["cost_usd"]["saved"] > 0
    # and exactly two notifications: submitted, then the end, with filterable attributes
    notes = dispatcher.notifications()
    assert [n["attributes"]["event"] for n in notes] == ["submitted", "partial"]
    assert all(n["attributes"]["job_id"] == job["job_id"] for n in notes)
    assert orjson.loads(notes[0]["attributes"]["provider"]) == ["openai"]
    assert notes[1]["message"]["counts"] == summary["counts"]


def test_key_with_spaces_plus_unicode_and_percent(stack: s.LocalStack) -> None:
    # S3 URL-encodes keys in events (spaces as '+'); the job must see the real key
    key = "inputs/my evals/ünï+cödé 100%.jsonl"
    stack.put(key, jsonl([openai_line("x")]))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    job = only_job(store)
    assert job["input"]["key"] == key
    assert job["status"] == "completed"
    assert job["output_prefix"] == f"outputs/my evals/ünï+cödé 100%/{job['job_id']}/"
    results, _errors, _summary = outputs_of(stack, job)
    assert [r["custom_id"] for r in results] == ["x"]


def test_a_duplicated_s3_event_submits_once(stack: s.LocalStack) -> None:
    stack.put("inputs/dup.jsonl", jsonl([openai_line("a"), openai_line("b")]))
    (event,) = s3_event_bodies(stack)
    # When the same event is delivered three times, twice at the same moment
    threads = [threading.Thread(target=submit_handler, args=(event, LocalContext("submit"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submit_handler(event, LocalContext("submit"))
    # Then the provider saw one batch, and the job is submitted once
    stats = stack.emulator.stats()
    assert stats["batches_created"].get("openai") == 1
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    dispatcher = Dispatcher(stack)
    events = [n["attributes"]["event"] for n in dispatcher.notifications()]
    assert events.count("submitted") == 1
    assert events.count("completed") == 1


class Crash(Exception):
    pass


def crash_once_at(step: str, crash: type[BaseException] = Crash) -> None:
    """Wire the handlers (dependency injection) so that the first invocation to pass `step` dies
    there: with an error it can see (`Crash`), or killed outright (`LambdaCrash`, a timeout or OOM)."""
    crashed = {"done": False}

    def checkpoint(name: str) -> None:
        if name == step and not crashed["done"]:
            crashed["done"] = True
            raise crash(step)

    def factory() -> Deps:
        deps = Deps.from_settings(Settings.from_env())
        deps.checkpoint = checkpoint
        return deps

    use_deps(factory)


@pytest.mark.parametrize("line", [openai_line, anthropic_line], ids=["openai", "anthropic"])
def test_crash_after_the_provider_accepted_a_batch_is_adopted_not_resubmitted(stack: s.LocalStack, line: Any) -> None:
    stack.put("inputs/crash.jsonl", jsonl([line(f"r{i}") for i in range(5)]))
    (event,) = s3_event_bodies(stack)
    crash_once_at("after_create")
    with pytest.raises(Crash):
        submit_handler(event, LocalContext("submit"))
    store = JobStore(s.TABLE)
    assert only_job(store)["status"] == "submitting"
    # Lambda retries the event: the retry finds the intent and adopts the provider's batch
    submit_handler(event, LocalContext("submit"))
    stats = stack.emulator.stats()
    assert sum(stats["batches_created"].values()) == 1
    assert all(n == 1 for n in stats["requests_submitted"].values())
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting({1, 2, 3, 4, 5}, results, errors, summary)
    assert summary["status"] == "completed"


def test_overlapping_polls_hand_a_job_to_completion_once(stack: s.LocalStack) -> None:
    stack.put("inputs/race.jsonl", jsonl([openai_line(f"r{i}") for i in range(3)]))
    dispatcher = Dispatcher(stack)
    dispatcher.deliver_uploads()
    # When four polls run at the same moment over a job whose batch has ended
    barrier = threading.Barrier(4)

    def poll() -> None:
        barrier.wait()
        poll_handler({"detail-type": "Scheduled Event"}, LocalContext("poll"))

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then exactly one completion message was queued
    sqs = aws.client("sqs")
    attrs = sqs.get_queue_attributes(
        QueueUrl=stack.queue_urls[s.COMPLETION_QUEUE], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "1"
    store = JobStore(s.TABLE)
    drive(dispatcher, all_jobs_final(store, 1))
    events = [n["attributes"]["event"] for n in dispatcher.notifications()]
    assert events == ["submitted", "completed"]


def test_a_duplicated_completion_message_completes_once(stack: s.LocalStack) -> None:
    stack.put("inputs/twice.jsonl", jsonl([openai_line("a")]))
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    # Given a job handed to completion whose message is not yet consumed
    deadline = time.monotonic() + 30
    while (store.list_jobs() or [{}])[0].get("status") != "completing":
        assert time.monotonic() < deadline
        dispatcher.deliver_uploads()
        dispatcher.tick()
    job_id = only_job(store)["job_id"]
    # SQS delivers at least once: send the same message again
    aws.client("sqs").send_message(
        QueueUrl=stack.queue_urls[s.COMPLETION_QUEUE], MessageBody=orjson.dumps({"job_id": job_id}).decode()
    )
    drive(dispatcher, all_jobs_final(store, 1))
    dispatcher.deliver_completions()
    events = [n["attributes"]["event"] for n in dispatcher.notifications()]
    assert events.count("completed") == 1


@pytest.mark.parametrize(
    "stack", [s.StackOptions(knobs=EmulatorKnobs(latency=0.0), on_invalid="reject")], indirect=True
)
def test_reject_policy_refuses_the_whole_file_and_accounts_for_every_line(stack: s.LocalStack) -> None:
    stack.put("inputs/strict.jsonl", jsonl([openai_line("a"), "[1]", openai_line("b")]))
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    drive(dispatcher, all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting({1, 2, 3}, results, errors, summary)
    assert summary["status"] == "rejected"
    assert summary["counts"]["submitted"] == 0
    assert sorted(e["code"] for e in errors) == ["file_rejected", "file_rejected", "not_an_object"]
    assert "reject" in summary["reason"]
    assert sum(stack.emulator.stats()["batches_created"].values()) == 0
    assert [n["attributes"]["event"] for n in dispatcher.notifications()] == ["rejected"]


@pytest.mark.parametrize("content", [b"", b"\n\n   \n", b"\x1f\x8b\x08\x00garbage"], ids=["empty", "blank", "bad-gzip"])
def test_a_file_with_nothing_valid_is_rejected_with_a_notification(stack: s.LocalStack, content: bytes) -> None:
    stack.put("inputs/nothing.jsonl", content)
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    drive(dispatcher, all_jobs_final(store, 1))
    job = only_job(store)
    results, errors, summary = outputs_of(stack, job)
    assert summary["status"] == "rejected"
    assert results == []
    assert summary["counts"]["lines"] == len(errors)
    assert [n["attributes"]["event"] for n in dispatcher.notifications()] == ["rejected"]


def test_gzip_input_is_streamed_and_line_numbers_are_of_the_decompressed_file(stack: s.LocalStack) -> None:
    import gzip

    stack.put("inputs/packed.jsonl.gz", gzip.compress(jsonl([openai_line("a"), "", "oops", openai_line("b")])))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    job = only_job(store)
    results, errors, summary = outputs_of(stack, job)
    assert job["output_prefix"].startswith("outputs/packed/")
    assert_accounting({1, 3, 4}, results, errors, summary)


@pytest.mark.parametrize(
    "stack",
    [s.StackOptions(knobs=EmulatorKnobs(latency=0.0, expire_rate=1.0), max_attempts=2)],
    indirect=True,
)
def test_expired_requests_are_resubmitted_until_attempts_run_out(stack: s.LocalStack) -> None:
    stack.put("inputs/expiring.jsonl", jsonl([openai_line(f"r{i}") for i in range(8)]))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting(set(range(1, 9)), results, errors, summary)
    attempts = sorted({b["attempt"] for b in summary["batches"]})
    assert attempts == [1, 2]
    # every request that failed was tried twice; successes of attempt 1 were kept, not re-sent
    assert errors
    assert all(e["code"] == "expired" and e["attempts"] == 2 for e in errors)
    submitted = stack.emulator.stats()["requests_submitted"]
    retried = {cid for cid, n in submitted.items() if n == 2}
    assert {e["custom_id"] for e in errors} <= retried
    assert all(n <= 2 for n in submitted.values())


def test_a_mixed_neutral_file_is_one_job_with_batches_at_each_provider(stack: s.LocalStack) -> None:
    lines = [
        neutral_line("gpt-4o-mini", "one", system="be brief"),
        neutral_line("claude-haiku-4-5", "two", custom_id="c2"),
        neutral_line("mystery-model", "three"),
        neutral_line("claude-haiku-4-5", "four", max_tokens=10),
    ]
    stack.put("inputs/mixed.jsonl", jsonl(lines))
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    drive(dispatcher, all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting({1, 2, 3, 4}, results, errors, summary)
    assert {r["custom_id"]: r["provider"] for r in results} == {
        "line-1": "openai",
        "c2": "anthropic",
        "line-4": "anthropic",
    }
    assert [e["code"] for e in errors] == ["unknown_provider"]
    assert sorted(b["provider"] for b in summary["batches"]) == ["anthropic", "openai"]
    notes = dispatcher.notifications()
    assert all(orjson.loads(n["attributes"]["provider"]) == ["anthropic", "openai"] for n in notes)


def test_the_provider_folder_routes_neutral_lines(stack: s.LocalStack) -> None:
    stack.put("inputs/anthropic/folder.jsonl", jsonl([neutral_line("my-fine-tune", "hi")]))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, only_job(store))
    # Sent to Anthropic by its folder; Anthropic serves no such model, and says so in the request's
    # result (it validates params after the batch is accepted).
    assert results == []
    assert [(e["provider"], e["code"], e["message"]) for e in errors] == [
        ("anthropic", m.REQUEST_ERROR, "model: my-fine-tune")
    ]
    assert summary["cost_usd"] == {
        "batch": 0.0,
        "realtime": 0.0,
        "total": 0.0,
        "realtime_equivalent": 0.0,
        "saved": 0.0,
        "cache_saved": 0.0,
    }


@pytest.mark.parametrize(
    "stack",
    [s.StackOptions(knobs=EmulatorKnobs(latency=0.0), limits={"openai": (3, 10_000_000)})],
    indirect=True,
)
def test_requests_are_split_under_the_batch_limits(stack: s.LocalStack) -> None:
    stack.put("inputs/split.jsonl", jsonl([openai_line(f"r{i}") for i in range(10)]))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting(set(range(1, 11)), results, errors, summary)
    assert sorted(b["requests"] for b in summary["batches"]) == [1, 3, 3, 3]
    assert stack.emulator.stats()["batches_created"]["openai"] == 4


def test_an_object_outside_inputs_is_ignored(stack: s.LocalStack) -> None:
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": s.BUCKET}, "object": {"key": "outputs/x.jsonl", "size": 1}},
            }
        ]
    }
    out = submit_handler(event, LocalContext("submit"))
    assert out == {"jobs": [{"job_id": None, "outcome": "ignored"}]}
    assert JobStore(s.TABLE).list_jobs() == []


def test_the_idle_poll_finds_nothing_to_do(stack: s.LocalStack) -> None:
    out = poll_handler({"detail-type": "Scheduled Event"}, LocalContext("poll"))
    assert out["looked_at"] == 0
    assert sum(stack.emulator.stats()["batches_created"].values()) == 0


def test_job_states_are_final_after_the_run(stack: s.LocalStack) -> None:
    stack.put("inputs/a.jsonl", jsonl([openai_line("a")]))
    stack.put("inputs/b.jsonl", jsonl([anthropic_line("b")]))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 2))
    for job in store.list_jobs():
        assert job["status"] == m.JOB_COMPLETED
        # finished jobs leave the poll's index
        assert "due_pk" not in job
        assert all("due_pk" not in b for b in store.get_batches(job["job_id"]))


@pytest.mark.parametrize(
    "stack",
    [s.StackOptions(knobs=EmulatorKnobs(latency=0.0), limits={"openai": (2, 10_000_000)})],
    indirect=True,
)
def test_duplicates_found_after_planning_are_taken_out_of_their_batches(stack: s.LocalStack) -> None:
    # Given ids repeated across batches of two, one batch made only of repeats, one with one repeat
    ids = ["a", "b", "c", "d", "a", "b", "e", "a", "f"]
    stack.put("inputs/dups.jsonl", jsonl([openai_line(i) for i in ids]))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting(set(range(1, 10)), results, errors, summary)
    # Then the first use of an id wins and each later one is an error naming the first line
    assert sorted((r["custom_id"], r["line"]) for r in results) == [
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("d", 4),
        ("e", 7),
        ("f", 9),
    ]
    assert [(e["line"], e["code"]) for e in errors] == [(n, "duplicate_custom_id") for n in (5, 6, 8)]
    assert "line 1" in errors[0]["message"]
    # and nothing was sent twice: the batch of repeats is gone, the others hold what they report
    sent = stack.emulator.stats()["requests_submitted"]
    assert sent == {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1}
    assert sorted(b["requests"] for b in summary["batches"]) == [1, 1, 2, 2]
    assert sum(stack.emulator.stats()["batches_created"].values()) == 4
    # and each batch left records its size as the planner counts it: its file and the envelope
    job_id = only_job(store)["job_id"]
    for batch in store.get_batches(job_id):
        data = aws.client("s3").get_object(Bucket=s.BUCKET, Key=batch_data_key(job_id, batch["batch_key"]))
        assert batch["bytes"] == ENVELOPE_BYTES + len(data["Body"].read()), batch["batch_key"]


@pytest.mark.parametrize("stack", [s.StackOptions(knobs=EmulatorKnobs(latency=0.0), lease_seconds=1)], indirect=True)
def test_a_submit_killed_without_a_retry_is_finished_by_the_poll(stack: s.LocalStack) -> None:
    from batchdrop.local.dispatcher import LambdaCrash

    stack.put("inputs/orphan.jsonl", jsonl([openai_line(f"r{i}") for i in range(3)]))
    (event,) = s3_event_bodies(stack)  # consumed: Lambda will not retry this one

    crash_once_at("after_plan", LambdaCrash)
    with pytest.raises(LambdaCrash):
        submit_handler(event, LocalContext("submit"))
    use_deps(None)
    store = JobStore(s.TABLE)
    assert only_job(store)["status"] == "submitting"
    # When the lease runs out, the poll hands the job back to submit, which finishes it
    dispatcher = Dispatcher(stack)
    drive(dispatcher, all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting({1, 2, 3}, results, errors, summary)
    assert summary["status"] == "completed"
    assert sum(stack.emulator.stats()["batches_created"].values()) == 1


@pytest.mark.parametrize(
    ("knobs", "codes"),
    [
        (EmulatorKnobs(latency=0.0, failure_rate=1.0, seed=1), {"request_error", "server_error"}),
        (EmulatorKnobs(latency=0.0, expire_rate=1.0, seed=1), {"expired"}),
    ],
    ids=["errored", "expired"],
)
def test_anthropic_errored_and_expired_results_land_in_errors_with_their_codes(
    knobs: EmulatorKnobs, codes: set[str]
) -> None:
    with local_stack(s.StackOptions(knobs=knobs, max_attempts=1)) as stack:
        stack.put("inputs/claude.jsonl", jsonl([anthropic_line(f"c{i}") for i in range(12)]))
        store = JobStore(s.TABLE)
        drive(Dispatcher(stack), all_jobs_final(store, 1))
        results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting(set(range(1, 13)), results, errors, summary)
    assert errors
    assert {e["code"] for e in errors} == codes
    assert all(e["provider"] == "anthropic" and e["stage"] == "provider" for e in errors)
    assert all(e["message"] and e["detail"]["custom_id"] == e["custom_id"] for e in errors)


def test_a_canceled_anthropic_job_reports_canceled_requests() -> None:
    from batchdrop.cancel import request_cancel

    # The emulator's clock stands still: no request can finish before the cancel, however slow the run.
    clock = FakeClock(time.time())
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=30.0), clock=clock)) as stack:
        stack.put("inputs/claude-cancel.jsonl", jsonl([anthropic_line(f"c{i}") for i in range(6)]))
        dispatcher = Dispatcher(stack)
        dispatcher.deliver_uploads()
        store = JobStore(s.TABLE)
        request_cancel(store, only_job(store)["job_id"], time.time())
        drive(dispatcher, all_jobs_final(store, 1))
        results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting(set(range(1, 7)), results, errors, summary)
    assert summary["status"] == "canceled"
    assert {e["code"] for e in errors} == {"canceled"}


def test_a_poison_completion_ends_in_the_dead_letter_queue_with_its_reason_on_the_job(stack: s.LocalStack) -> None:
    stack.put("inputs/poison.jsonl", jsonl([openai_line("p")]))
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    deadline = time.monotonic() + 30
    while only_job_or_none(store) is None or only_job(store)["status"] != "completing":
        assert time.monotonic() < deadline
        dispatcher.deliver_uploads()
        dispatcher.tick()
    # Given a job whose completion cannot succeed (its batch's line index is gone from work/)
    job = only_job(store)
    for key in list(stack.keys(f"work/{job['job_id']}/batches/")):
        if key.endswith(".idx"):
            aws.client("s3").delete_object(Bucket=s.BUCKET, Key=key)
    # When SQS delivers the message until its redrive policy gives up
    sqs = aws.client("sqs")
    for _ in range(s.MAX_RECEIVE_COUNT + 1):
        dispatcher.deliver_completions()
        time.sleep(2.1)  # the visibility timeout the dispatcher sets
    # Then the message is parked in the DLQ, and the job says why
    dlq = sqs.receive_message(QueueUrl=stack.queue_urls[s.COMPLETION_DLQ], WaitTimeSeconds=1).get("Messages", [])
    assert [orjson.loads(m["Body"])["job_id"] for m in dlq] == [job["job_id"]]
    failed = only_job(store)
    assert failed["status"] == "completing"
    assert failed["completion_error"].startswith("ObjectMissing: work/")
    assert failed["completion_failures"] >= s.MAX_RECEIVE_COUNT


def only_job_or_none(store: JobStore) -> dict[str, Any] | None:
    jobs = store.list_jobs()
    return jobs[0] if jobs else None
