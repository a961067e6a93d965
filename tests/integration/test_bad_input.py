"""Bad input, catalogued (issue 5, item 3): every kind of bad line and bad file in tests/bad_inputs.py
goes through the real pipeline (upload → S3 event → submit → poll → complete) on the embedded stack,
and gets its exact outcome: an error line with the right code at the right line number, or a rejected
job, with the counts adding up and a terminal notification. Never a crash, never a silent drop.

All cases share one stack and one run: every file is uploaded, the pipeline runs until every job has
ended, then each case is checked on its own.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from batchdrop import models as m
from batchdrop.adapters.store import JobStore
from batchdrop.config import ENV_ON_INVALID
from batchdrop.handlers import use_deps
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher, Invocation
from batchdrop.local.emulator import EmulatorKnobs
from tests.bad_inputs import CASES, OK, Case, Outcome, join, oa
from tests.helpers import all_notifications, assert_accounting, drive, ended, jobs_by_key, local_stack, outputs_of

STAGE_VALIDATION = {*m.VALIDATION_CODES, m.FILE_REJECTED}


@dataclass
class Corpus:
    outcomes: dict[str, Outcome]
    invocations: list[Invocation]


@pytest.fixture(scope="module")
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0))) as local:
        yield local
    use_deps(None)


def planned_requests(stack: s.LocalStack, job_id: str) -> list[dict[str, Any]]:
    """The request lines batchdrop planned for the provider (its batch files under work/)."""
    out: list[dict[str, Any]] = []
    for key in stack.keys(f"work/{job_id}/batches/"):
        if key.endswith(".jsonl"):
            # split on LF only: a passed-through line may hold a CR as JSON whitespace
            out.extend(orjson.loads(line) for line in stack.get(key).split(b"\n") if line.strip())
    return out


@pytest.fixture(scope="module")
def corpus(stack: s.LocalStack) -> Corpus:
    """Upload every case, run the pipeline until every job has ended, read every output once.

    The reject-policy cases run second, with BATCHDROP_ON_INVALID=reject in the functions' environment
    (what StackOptions(on_invalid="reject") sets; one process holds one moto, so one stack at a time).
    """
    store = JobStore(s.TABLE)
    dispatcher = Dispatcher(stack)
    notes: list[dict[str, Any]] = []
    for policy in ("skip", "reject"):
        cases = [c for c in CASES if c.policy == policy]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(ENV_ON_INVALID, policy)
            for case in cases:
                stack.put(case.key, case.content())
            drive(dispatcher, ended(store, {c.key for c in cases}), timeout=120)
        notes.extend(all_notifications(dispatcher))
    jobs = jobs_by_key(store)
    outcomes = {}
    for case in CASES:
        job = jobs[case.key]
        results, errors, summary = outputs_of(stack, job)
        outcomes[case.name] = Outcome(
            key=case.key,
            job=job,
            results=results,
            errors=errors,
            summary=summary,
            notifications=[n for n in notes if n["attributes"].get("job_id") == job["job_id"]],
            submitted=planned_requests(stack, job["job_id"]),
        )
    return Corpus(outcomes, list(dispatcher.invocations))


def test_the_corpus_covers_thirty_kinds_and_every_validation_code() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    codes = {code for c in CASES for code in c.lines.values()}
    assert set(m.VALIDATION_CODES) <= codes
    assert {"completed", "partial", "rejected"} <= {c.status for c in CASES}


def test_no_handler_invocation_failed(corpus: Corpus) -> None:
    failed = [(i.function, i.error) for i in corpus.invocations if not i.ok]
    assert failed == []
    assert {i.function for i in corpus.invocations} == {"submit", "poll", "complete"}


def _param(case: Case) -> Any:
    return pytest.param(case, id=case.name)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_each_bad_input_gets_its_exact_outcome(corpus: Corpus, case: Case) -> None:
    out = corpus.outcomes[case.name]
    results, errors, summary = out.results, out.errors, out.summary

    # The job ended as it must, for the exact object uploaded
    assert out.job["status"] == case.status
    assert summary["status"] == case.status
    assert summary["input"]["key"] == case.key

    # Each non-blank line has exactly one output line: a result, or an error with the right code
    got = sorted([(r["line"], OK) for r in results] + [(e["line"], e["code"]) for e in errors])
    assert got == sorted(case.lines.items())
    assert_accounting(set(case.lines), results, errors, summary)
    counts = summary["counts"]
    valid = sum(1 for code in case.lines.values() if code in (OK, m.FILE_REJECTED))
    if case.status == "rejected":
        assert counts["invalid"] == len(case.lines)
        assert counts["submitted"] == 0
    else:
        assert counts["invalid"] == len(case.lines) - valid
        assert counts["submitted"] == valid
    if case.reason is not None:
        assert case.reason in summary["reason"]

    # Validation errors say so, and point at the line
    for error in errors:
        assert error["code"] in STAGE_VALIDATION
        assert error["stage"] == "validation"
        assert error["attempts"] == 0
        assert error["batch_id"] is None
        assert error["message"]
    by_line = {e["line"]: e for e in errors} | {r["line"]: r for r in results}
    for line, words in case.messages.items():
        assert words in by_line[line]["message"], by_line[line]["message"]
    for line, custom_id in case.custom_ids.items():
        assert by_line[line]["custom_id"] == custom_id
    for result in results:
        assert result["status"] == "succeeded"
        assert result["text"].startswith("echo:")

    # A notification when the job was submitted (not for a rejected one) and one when it ended
    events = Counter(n["attributes"]["event"] for n in out.notifications)
    expected = Counter([case.status] if case.status == "rejected" else ["submitted", case.status])
    assert events == expected
    (terminal,) = [n for n in out.notifications if n["attributes"]["event"] == case.status]
    assert terminal["message"]["job_id"] == out.job["job_id"]
    assert terminal["message"]["counts"] == counts

    if case.check is not None:
        case.check(out)


# -- bugs found by this corpus, fixed: kept as regression tests -----------------------------------

DEEP = b"[" * 300 + b"]" * 300  # parses (orjson reads 1024 levels) but orjson.dumps refuses > 254
MSGS = b'[{"role":"user","content":"hi"}]'


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b'{"custom_id":' + DEEP + b',"model":"gpt-4o-mini","messages":' + MSGS + b"}", id="custom-id"),
        pytest.param(
            b'{"custom_id":"m","method":' + DEEP + b',"url":"/v1/chat/completions","body":{"model":"gpt-4o-mini"}}',
            id="openai-method",
        ),
        pytest.param(
            b'{"model":"gpt-4o-mini","messages":' + MSGS + b',"tools":[{"name":"t","parameters":{"x":' + DEEP + b"}}]}",
            id="neutral-tools",
        ),
        pytest.param(
            b'{"custom_id":"a","params":{"model":"claude-haiku-4-5","messages":'
            + MSGS
            + b',"metadata":'
            + DEEP
            + b"}}",
            id="anthropic-default-max-tokens",
        ),
    ],
)
def test_nesting_between_255_and_1024_levels_is_an_error_line_not_a_crash(
    stack: s.LocalStack, corpus: Corpus, line: bytes, request: pytest.FixtureRequest
) -> None:
    key = f"inputs/bad/crash/{request.node.callspec.id}.jsonl"
    stack.put(key, join(oa("fine"), line))
    dispatcher = Dispatcher(stack)
    dispatcher.deliver_uploads()
    assert [i.error for i in dispatcher.invocations if not i.ok] == []
    store = JobStore(s.TABLE)
    drive(dispatcher, ended(store, {key}), timeout=30)
    results, errors, summary = outputs_of(stack, jobs_by_key(store)[key])
    assert_accounting({1, 2}, results, errors, summary)
    assert 1 in {r["line"] for r in results}


def test_gzip_with_trailing_zero_padding_is_read_like_gunzip_reads_it(stack: s.LocalStack, corpus: Corpus) -> None:
    key = "inputs/bad/padded/zero-padded.jsonl.gz"
    content = join(oa("zp1"), oa("zp2"))
    padded = gzip.compress(content, mtime=0) + b"\x00" * 512
    assert gzip.decompress(padded) == content
    stack.put(key, padded)
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    drive(dispatcher, ended(store, {key}), timeout=30)
    job = jobs_by_key(store)[key]
    results, errors, summary = outputs_of(stack, job)
    assert [e["code"] for e in errors] == []
    assert summary["status"] == "completed"
    assert sorted(r["custom_id"] for r in results) == ["zp1", "zp2"]
