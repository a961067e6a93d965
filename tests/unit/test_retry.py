"""The pieces of a retry that need no stack: which lines, where, with which options, and the merge."""

from __future__ import annotations

import gzip
import io

import orjson

from batchdrop import models as m
from batchdrop.dedup import DuplicateFinder
from batchdrop.retry import LineSet, keep_lines, merge, retry_fields, retry_key, retry_metadata, retryable
from batchdrop.scan import scan
from tests.lines import validator

JOB = "job-0123456789abcdef0123"
RETRY = "job-fedcba9876543210fedc"


def _kept(data: bytes, lines: set[int]) -> tuple[bytes, int]:
    wanted = LineSet()
    for line in lines:
        wanted.add(line)
    out = io.BytesIO()
    kept = keep_lines([data[i : i + 7] for i in range(0, len(data), 7)], wanted, out.write)
    return out.getvalue(), kept


def test_a_line_set_counts_each_line_once_in_any_order() -> None:
    lines = LineSet()
    for n in (900, 3, 3, 1, 64):
        lines.add(n)
    assert lines.count == 4
    assert [n for n in range(1000) if n in lines] == [1, 3, 64, 900]


def test_kept_lines_keep_their_physical_numbers_blank_lines_counted() -> None:
    data = b"\xef\xbb\xbf" + b'{"a":1}\r\n\n   \n{"b":2}\n{"c":3}'
    out, kept = _kept(data, {1, 5})
    assert kept == 2
    assert out.split(b"\n") == [b'{"a":1}\r', b"", b"", b"", b'{"c":3}', b""]


def test_kept_lines_read_a_gzip_file_as_the_scan_does() -> None:
    data = gzip.compress(b'{"a":1}\n{"b":2}\n')
    out, kept = _kept(data, {2})
    assert (out, kept) == (b'\n{"b":2}\n', 1)


def test_the_scan_of_a_retry_input_counts_only_the_kept_lines_and_numbers_them_as_before() -> None:
    lines = [
        orjson.dumps({"custom_id": f"r{i}", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        for i in range(1, 7)
    ]
    out, _ = _kept(b"\n".join(lines) + b"\n", {2, 5})
    seen: list[int] = []
    with DuplicateFinder() as finder:
        result = scan([out], validator(), lambda r: seen.append(r.line), lambda i: None, finder=finder)
    assert (result.lines, result.invalid, result.valid) == (2, 0, 2)
    assert seen == [2, 5]


def test_only_provider_stage_errors_are_retried() -> None:
    assert retryable({"stage": "provider", "code": "expired", "line": 3})
    assert retryable({"stage": "provider", "code": "schema_mismatch", "line": 3})
    assert not retryable({"stage": "validation", "code": "invalid_json", "line": 3})


def test_a_retry_is_named_next_to_the_original_and_numbered_along_the_chain() -> None:
    first = {"job_id": JOB, "input": {"key": "inputs/openai/run.jsonl.gz"}}
    assert retry_key(first) == f"inputs/openai/run.retry-1-{JOB}.jsonl.gz"
    table = {"job_id": JOB, "input": {"key": "inputs/t.job.json"}}
    assert retry_key(table) == f"inputs/t.retry-1-{JOB}.jsonl"
    second = {"job_id": RETRY, "input": {"key": f"inputs/openai/run.retry-1-{JOB}.jsonl.gz"}, "retry_of": JOB}
    assert retry_key(second) == f"inputs/openai/run.retry-2-{RETRY}.jsonl.gz"
    # A name that only looks like a retry's (no retry_of) is a name like any other.
    lookalike = {"job_id": RETRY, "input": {"key": f"inputs/run.retry-1-{JOB}.jsonl"}}
    assert retry_key(lookalike) == f"inputs/run.retry-1-{JOB}.retry-1-{RETRY}.jsonl"
    long = {"job_id": JOB, "input": {"key": "inputs/" + "x" * 1100 + ".jsonl"}}
    assert len(retry_key(long).encode()) <= 1024


def test_the_options_are_carried_but_a_passed_deadline_is_not() -> None:
    job = {"job_id": JOB, "lane_option": "batch", "cache": "read", "budget_usd": 2.5, "budget_policy": "refuse"}
    meta, notes = retry_metadata({**job, "deadline": 2_000_000_000.0}, now=1_900_000_000.0)
    assert meta == {
        "batchdrop-retry-of": JOB,
        "batchdrop-lane": "batch",
        "batchdrop-cache": "read",
        "batchdrop-budget-usd": "2.5",
        "batchdrop-budget-policy": "refuse",
        "batchdrop-deadline": "2033-05-18T03:33:20Z",
    }
    assert notes == ()
    meta, notes = retry_metadata({**job, "deadline": 1_800_000_000.0}, now=1_900_000_000.0)
    assert "batchdrop-deadline" not in meta
    assert "has passed" in notes[0]


def test_the_retry_of_a_file_is_kept_on_its_job_only_when_it_names_a_job() -> None:
    def obj(meta: dict[str, str]) -> m.InputObject:
        return m.InputObject("b", "inputs/x.jsonl", None, None, 1, metadata=meta)

    assert retry_fields(obj({"batchdrop-retry-of": JOB})) == {"retry_of": JOB}
    assert retry_fields(obj({"batchdrop-retry-of": "../../etc"})) == {}
    assert retry_fields(obj({})) == {}


def _line(cid: str | None, line: int, **more: object) -> bytes:
    return orjson.dumps({"custom_id": cid, "line": line, **more})


def test_the_merge_keeps_every_custom_id_once_the_latest_attempt_winning_sorted_by_line() -> None:
    first = (
        [_line("a", 1), _line("d", 4)],
        [_line("b", 2, code="expired"), _line("c", 3, code="server_error"), _line(None, 5, code="invalid_json")],
    )
    second = ([_line("b", 2, attempt=2)], [_line("c", 3, code="expired")])
    third: tuple[list[bytes], list[bytes]] = ([_line("c", 3, attempt=3)], [])
    results, errors = merge([first, second])
    assert [orjson.loads(r)["custom_id"] for r in results] == ["a", "b", "d"]
    assert orjson.loads(results[1])["attempt"] == 2
    assert [(orjson.loads(e)["custom_id"], orjson.loads(e)["code"]) for e in errors] == [
        ("c", "expired"),
        (None, "invalid_json"),
    ]
    results, errors = merge([first, second, third])
    assert [orjson.loads(r)["line"] for r in results] == [1, 2, 3, 4]
    assert [orjson.loads(e)["code"] for e in errors] == ["invalid_json"]


def test_the_merge_keeps_a_validation_error_that_names_an_id_with_its_own_outcome() -> None:
    first = (
        [_line("a", 1)],
        [_line("a", 2, stage="validation", code="duplicate_custom_id"), _line("b", 3, stage="provider")],
    )
    second: tuple[list[bytes], list[bytes]] = ([_line("b", 3)], [])
    results, errors = merge([first, second])
    assert [orjson.loads(r)["line"] for r in results] == [1, 3]
    assert [orjson.loads(e)["code"] for e in errors] == ["duplicate_custom_id"]
