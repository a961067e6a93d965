"""Re-running the failures (docs/contract.md, "Retries"): `batchdrop retry JOB` and `retry/<job_id>` make a
new job of an ended job's provider-stage failures, each line keeping its custom_id and line number, and
`batchdrop results JOB --merged` gives one file across the chain. On the embedded stack, the emulator
over HTTP expiring and failing requests."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from batchdrop import jobs, ops
from batchdrop import models as m
from batchdrop.adapters import aws
from batchdrop.adapters.objects import ObjectStore
from batchdrop.adapters.store import JobStore
from batchdrop.cli import main
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Chaos, Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.retry import RetryError, request_retry
from tests.helpers import (
    LATENCY,
    FakeClock,
    all_jobs_final,
    anthropic_line,
    assert_accounting,
    drive,
    jsonl,
    local_stack,
    openai_line,
    outputs_of,
    read_jsonl,
)

STACK = ["--bucket", s.BUCKET, "--table", s.TABLE]
# Every batch expires at its end (its later half of requests `expired`), and some requests fail
# (`request_error`, `server_error`); one attempt, so what failed stays failed until retried.
FAULTS = EmulatorKnobs(latency=LATENCY, failure_rate=0.3, expire_rate=1.0, seed=11)
HEALTHY = EmulatorKnobs(latency=LATENCY, seed=11)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stack(clock: FakeClock) -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=FAULTS, clock=clock, max_attempts=1)) as local:
        yield local


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def refused(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def the_file() -> bytes:
    """40 requests over two providers, a blank line and an invalid line among them."""
    lines: list[dict[str, Any] | bytes] = [openai_line(f"o{i}", text=f"q{i}") for i in range(1, 21)]
    lines += [b"", b"{not json"]
    lines += [anthropic_line(f"a{i}", text=f"q{i}") for i in range(1, 21)]
    return jsonl(lines)


def run_until_ended(stack: s.LocalStack, clock: FakeClock, dispatcher: Dispatcher, jobs: int) -> None:
    store = JobStore(s.TABLE)
    # A retry/ file's event writes the retry's input, whose own event follows: both before the clock
    # moves, so the retry's batches are created before it does.
    drive(dispatcher, lambda: len(store.list_jobs(1000)) >= jobs, tick=lambda d: None)
    clock.advance(LATENCY)
    drive(dispatcher, all_jobs_final(store, jobs))


def job_of(key: str) -> dict[str, Any]:
    return next(j for j in JobStore(s.TABLE).list_jobs(1000) if j["input"]["key"] == key)


def retry_job_of(job_id: str) -> dict[str, Any]:
    store = JobStore(s.TABLE)
    original = store.get_job(job_id) or {}
    assert original.get("retry_job"), f"{job_id} has no retry recorded"
    return store.get_job(str(original["retry_job"])) or {}


def versions(prefix: str) -> list[str]:
    found = aws.client("s3").list_object_versions(Bucket=s.BUCKET, Prefix=prefix).get("Versions", [])
    return [v["Key"] for v in found]


def merged(job_id: str, out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    invoke("results", job_id, "--merged", "--out", str(out), *STACK)
    return (
        read_jsonl((out / "results.jsonl").read_bytes()),
        read_jsonl((out / "errors.jsonl").read_bytes()),
        orjson.loads((out / "merged.json").read_bytes()),
    )


def test_a_retry_reruns_the_provider_failures_and_the_merge_has_every_line_once(
    stack: s.LocalStack, clock: FakeClock, tmp_path: Path
) -> None:
    data = the_file()
    stack.put("inputs/run.jsonl", data)
    dispatcher = Dispatcher(stack)
    run_until_ended(stack, clock, dispatcher, 1)
    first = job_of("inputs/run.jsonl")
    results, errors, _ = outputs_of(stack, first)
    provider = {e["line"]: e for e in errors if e["stage"] == "provider"}
    assert {e["code"] for e in provider.values()} >= {"expired"}
    assert {e["code"] for e in provider.values()} & {"server_error", "request_error"}
    assert [e["code"] for e in errors if e["stage"] == "validation"] == ["invalid_json"]
    assert results, "some requests succeeded the first time"

    stack.emulator.knobs = HEALTHY
    out = invoke("retry", first["job_id"], *STACK)
    retry_job_id = str((JobStore(s.TABLE).get_job(first["job_id"]) or {})["retry_job"])
    assert f"Retrying {len(provider)} line(s)" in out
    assert retry_job_id in out
    run_until_ended(stack, clock, dispatcher, 2)

    retry = JobStore(s.TABLE).get_job(retry_job_id) or {}
    assert retry["retry_of"] == first["job_id"]
    assert retry["input"]["key"] == f"inputs/run.retry-1-{first['job_id']}.jsonl"
    assert retry["lane_option"] == first["lane_option"]
    r_results, r_errors, r_summary = outputs_of(stack, retry)
    # Only the retried lines count: the blank lines standing for the others are no lines at all.
    assert r_summary["counts"]["lines"] == len(provider)
    assert r_summary["counts"]["invalid"] == 0
    assert r_summary["status"] == m.JOB_COMPLETED
    assert_accounting(set(provider), r_results, r_errors, r_summary)
    # Each retried line keeps its custom_id and its original line number.
    assert {(r["line"], r["custom_id"]) for r in r_results} == {(n, e["custom_id"]) for n, e in provider.items()}

    m_results, m_errors, chain = merged(first["job_id"], tmp_path / "merged")
    valid = {n for n in range(1, 43) if n not in (21, 22)}  # the blank line and the invalid one
    assert [r["line"] for r in m_results] == sorted(valid), "every succeeded line once, sorted by line"
    assert len({r["custom_id"] for r in m_results}) == len(valid)
    assert [(e["line"], e["code"]) for e in m_errors] == [(22, "invalid_json")]
    assert [j["job_id"] for j in chain["jobs"]] == [first["job_id"], retry_job_id]
    # The same from the retry's side: the chain is followed back to the original.
    assert merged(retry_job_id, tmp_path / "again")[0] == m_results


def test_validation_errors_are_not_retried(stack: s.LocalStack, clock: FakeClock) -> None:
    stack.emulator.knobs = HEALTHY
    stack.put("inputs/bad.jsonl", jsonl([openai_line("ok"), b"{not json", openai_line("ok")]))
    run_until_ended(stack, clock, Dispatcher(stack), 1)
    job = job_of("inputs/bad.jsonl")
    said = refused("retry", job["job_id"], *STACK)
    assert f"job {job['job_id']} has nothing to retry" in said
    assert "validation errors, which would fail again" in said
    assert not versions("inputs/bad.retry-")
    # A file with nothing valid is rejected: nothing was sent, so nothing can be retried.
    stack.put("inputs/none.jsonl", jsonl([b"{not json"]))
    run_until_ended(stack, clock, Dispatcher(stack), 2)
    job = job_of("inputs/none.jsonl")
    assert job["status"] == m.JOB_REJECTED
    said = refused("retry", job["job_id"], *STACK)
    assert f"job {job['job_id']} was rejected" in said
    assert "fix the file and upload it again" in said


def test_a_job_that_has_not_ended_cannot_be_retried_and_an_unknown_one_is_named(stack: s.LocalStack) -> None:
    stack.put("inputs/running.jsonl", jsonl([openai_line("a")]))
    Dispatcher(stack).deliver_uploads()
    job = job_of("inputs/running.jsonl")
    said = refused("retry", job["job_id"], *STACK)
    assert "only an ended job can be retried" in said
    assert f"batchdrop status {job['job_id']}" in said
    assert "no job 'job-nope'" in refused("retry", "job-nope", *STACK)


def test_retry_files_delivered_three_times_make_one_retry_job(stack: s.LocalStack, clock: FakeClock) -> None:
    stack.put("inputs/dup.jsonl", the_file())
    dispatcher = Dispatcher(stack, Chaos(duplicate_events=3))
    run_until_ended(stack, clock, dispatcher, 1)
    first = job_of("inputs/dup.jsonl")
    stack.emulator.knobs = HEALTHY
    # The S3 way, for users with only bucket access; S3 delivers at least once (here: three times,
    # the first two at once).
    stack.put(f"retry/{first['job_id']}", b"")
    run_until_ended(stack, clock, dispatcher, 2)
    assert versions("inputs/dup.retry-") == [f"inputs/dup.retry-1-{first['job_id']}.jsonl"]
    retries = [j for j in JobStore(s.TABLE).list_jobs(1000) if j.get("retry_of") == first["job_id"]]
    assert [j["job_id"] for j in retries] == [retry_job_of(first["job_id"])["job_id"]]
    assert retries[0]["status"] == m.JOB_COMPLETED


def test_two_retries_at_once_make_one_retry_job(stack: s.LocalStack, clock: FakeClock) -> None:
    stack.put("inputs/race.jsonl", the_file())
    dispatcher = Dispatcher(stack)
    run_until_ended(stack, clock, dispatcher, 1)
    job_id = job_of("inputs/race.jsonl")["job_id"]
    # What `batchdrop retry` runs, twice at the same moment (click's runner swaps sys.stdout for the
    # whole process, so two commands cannot run in threads).
    ref = ops.StackRef(s.BUCKET, s.TABLE)
    done: list[Any] = []
    start = threading.Barrier(2)

    def retry() -> None:
        start.wait()
        done.append(ops.retry(ref, job_id))

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    retry_id = str((JobStore(s.TABLE).get_job(job_id) or {})["retry_job"])
    assert [d.retry_job for d in done] == [retry_id, retry_id]
    assert sorted(d.existed for d in done) == [False, True]
    assert len(versions("inputs/race.retry-")) == 1
    # And asked again later: the same retry, named.
    out = invoke("retry", job_id, *STACK)
    assert "was retried already" in out
    assert retry_id in out
    assert len(versions("inputs/race.retry-")) == 1


def test_a_retry_of_a_retry_follows_the_chain_from_a_gzip_file(
    stack: s.LocalStack, clock: FakeClock, tmp_path: Path
) -> None:
    data = the_file()
    stack.put("inputs/deep/run.jsonl.gz", gzip.compress(data))
    dispatcher = Dispatcher(stack)
    run_until_ended(stack, clock, dispatcher, 1)
    first = job_of("inputs/deep/run.jsonl.gz")
    # The faults stay on: the retry's batches expire too, and some of its lines fail again.
    invoke("retry", first["job_id"], *STACK)
    run_until_ended(stack, clock, dispatcher, 2)
    second = retry_job_of(first["job_id"])
    assert second["input"]["key"] == f"inputs/deep/run.retry-1-{first['job_id']}.jsonl.gz"
    _, errors, _ = outputs_of(stack, second)
    again = {e["line"] for e in errors if e["stage"] == "provider"}
    assert again, "some lines failed in the retry too"
    stack.emulator.knobs = HEALTHY
    invoke("retry", second["job_id"], *STACK)
    run_until_ended(stack, clock, dispatcher, 3)
    third = retry_job_of(second["job_id"])
    assert third["input"]["key"] == f"inputs/deep/run.retry-2-{second['job_id']}.jsonl.gz"
    assert third["retry_of"] == second["job_id"]
    t_results, _, t_summary = outputs_of(stack, third)
    assert {r["line"] for r in t_results} == again
    assert t_summary["counts"]["lines"] == len(again)

    m_results, m_errors, chain = merged(second["job_id"], tmp_path / "m")
    assert [j["job_id"] for j in chain["jobs"]] == [first["job_id"], second["job_id"], third["job_id"]]
    assert [r["line"] for r in m_results] == [n for n in range(1, 43) if n not in (21, 22)]
    assert [e["code"] for e in m_errors] == ["invalid_json"]
    # The original was retried: asking again names its retry rather than writing another.
    assert "was retried already" in invoke("retry", first["job_id"], *STACK)


def test_a_table_jobs_failed_rows_are_retried_as_the_lines_they_were_sent_as(
    stack: s.LocalStack, clock: FakeClock, tmp_path: Path
) -> None:
    rows = "".join(f"{i},question {i}\n" for i in range(1, 31))
    # Row 31 has the wrong number of fields: `invalid_row`, a validation error, not retried.
    stack.put("data/q.csv", f"id,q\n{rows}31\n".encode())
    stack.put("templates/ask.txt", b"Answer briefly: {{ q }}")
    manifest = {"data": "data/q.csv", "template": "templates/ask.txt", "model": "gpt-4o-mini", "lane": "batch"}
    stack.put("inputs/t/q.job.json", orjson.dumps(manifest))
    dispatcher = Dispatcher(stack)
    run_until_ended(stack, clock, dispatcher, 1)
    first = job_of("inputs/t/q.job.json")
    _, errors, _ = outputs_of(stack, first)
    failed = {e["line"]: e["custom_id"] for e in errors if e["stage"] == "provider"}
    assert failed
    assert [e["code"] for e in errors if e["stage"] == "validation"] == ["invalid_row"]
    # A template changed since does not change what is retried: the rows are rendered as they were sent.
    stack.put("templates/ask.txt", b"Something else: {{ q }}")
    stack.emulator.knobs = HEALTHY
    invoke("retry", first["job_id"], *STACK)
    run_until_ended(stack, clock, dispatcher, 2)
    retry = retry_job_of(first["job_id"])
    assert retry["input"]["key"] == f"inputs/t/q.retry-1-{first['job_id']}.jsonl"
    results, errors, summary = outputs_of(stack, retry)
    assert errors == []
    assert summary["counts"]["lines"] == len(failed)
    assert {r["line"]: r["custom_id"] for r in results} == failed
    assert all(r["custom_id"] == f"row-{r['line']}" for r in results)
    assert all("Answer briefly: question" in r["text"] for r in results)
    m_results, m_errors, _ = merged(first["job_id"], tmp_path / "m")
    assert [r["line"] for r in m_results] == list(range(1, 31))
    assert [(e["line"], e["code"]) for e in m_errors] == [(31, "invalid_row")]


def test_retry_and_merged_results_have_help() -> None:
    assert "--stack" in invoke("retry", "--help")
    assert "--merged" in invoke("results", "--help")


def test_a_writer_that_died_is_adopted_or_waited_for_never_written_again(stack: s.LocalStack, clock: FakeClock) -> None:
    stack.put("inputs/dead.jsonl", the_file())
    run_until_ended(stack, clock, Dispatcher(stack), 1)
    store, objects = JobStore(s.TABLE), ObjectStore(s.BUCKET)
    job = job_of("inputs/dead.jsonl")
    # A writer holds the claim (and may still be writing, or may have died): a request does not write.
    assert jobs.claim_retry(store, job)
    with pytest.raises(RetryError, match="being retried by another request right now"):
        request_retry(objects, store, job["job_id"], clock(), wait=0)
    assert not versions("inputs/dead.retry-")
    # It had written the input and died before recording it: once its claim has gone, the next request
    # finds the input by its batchdrop-retry-of and records it.
    key = f"inputs/dead.retry-1-{job['job_id']}.jsonl"
    aws.client("s3").put_object(Bucket=s.BUCKET, Key=key, Body=b"\n", Metadata={"batchdrop-retry-of": job["job_id"]})
    jobs.give_up_retry(store, job)
    found = request_retry(objects, store, job["job_id"], clock())
    assert found.existed
    assert found.key == key
    assert versions("inputs/dead.retry-") == [key]
    assert (store.get_job(job["job_id"]) or {})["retry_job"] == found.retry_job
