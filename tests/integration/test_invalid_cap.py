"""A file with more invalid lines than BATCHDROP_MAX_INVALID_LINES, planned in segments: the cap counts
the invalid lines of every segment, the scan stops at the line past it, and the job is rejected with
each line read accounted for once (issue 13)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchdrop.adapters.store import JobStore
from batchdrop.config import ENV_MAX_INVALID_LINES
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from tests.helpers import all_jobs_final, assert_accounting, drive, jsonl, local_stack, openai_line, outputs_of

SEGMENT = 2048  # bytes: about 20 lines a segment


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    options = s.StackOptions(
        knobs=EmulatorKnobs(latency=0.0), segment_bytes=SEGMENT, extra_env={ENV_MAX_INVALID_LINES: "5"}
    )
    with local_stack(options) as local:
        yield local


def test_the_cap_counts_invalid_lines_across_segments_and_rejects_the_file_where_it_is_passed(
    stack: s.LocalStack,
) -> None:
    # Given 200 lines (about 10 segments), every 15th invalid: the 6th invalid line is line 90, in a
    # later segment than the first
    lines: list[object] = [
        "{broken" if i % 15 == 0 else "" if i % 11 == 0 else openai_line(f"o{i}", text="y" * 40) for i in range(1, 201)
    ]
    stack.put("inputs/capped.jsonl", jsonl(lines))  # type: ignore[arg-type]
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1), timeout=120)
    # Then the job was planned in several segments, and rejected at line 90 with the cap's message
    job = store.list_jobs()[0]
    assert job["segment"] >= 2
    results, errors, summary = outputs_of(stack, job)
    assert summary["status"] == "rejected"
    assert summary["reason"].startswith("more than 5 lines are invalid (")
    assert "then first: line " in summary["reason"]
    assert "read no further than line 90;" in summary["reason"]
    assert "BATCHDROP_MAX_INVALID_LINES" in summary["reason"]
    # and every non-blank line up to line 90 has one output line, none after it
    read = {n for n in range(1, 91) if n % 11}
    assert_accounting(read, results, errors, summary)
    codes = {e["line"]: e["code"] for e in errors}
    assert {n for n, code in codes.items() if code == "invalid_json"} == {15, 30, 45, 60, 75, 90}
    assert {code for n, code in codes.items() if n % 15} == {"file_rejected"}
