"""docs/contract.md's promises about one job's outputs, checked the same way wherever the outputs live.

The local tests read them from the embedded stack's bucket or from a `batchdrop local run` tree, the
chaos runs from their out folder, the smoke test (tests/smoke/) from a deployed stack's bucket: each
hands this module a way to read a key, and the checks are one piece of code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from batchdrop import models as m
from tests.lines import read_jsonl

Outputs = tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]


def non_blank_lines(data: bytes) -> set[int]:
    """The 1-based line numbers the contract accounts for: every line that is not only whitespace."""
    return {i + 1 for i, line in enumerate(data.split(b"\n")) if line.strip()}


def read_outputs(read: Callable[[str], bytes], prefix: str) -> Outputs:
    """results.jsonl, errors.jsonl and summary.json under a job's output prefix (or folder, with a `/`)."""
    results = read_jsonl(read(f"{prefix}results.jsonl"))
    errors = read_jsonl(read(f"{prefix}errors.jsonl"))
    summary = orjson.loads(read(f"{prefix}summary.json"))
    return results, errors, summary


def assert_accounting(
    non_blank_lines: set[int], results: list[dict[str, Any]], errors: list[dict[str, Any]], summary: dict[str, Any]
) -> None:
    """docs/contract.md's guarantee: every non-blank line in exactly one output line, and the counts add up."""
    seen = [r["line"] for r in results] + [e["line"] for e in errors]
    assert sorted(seen) == sorted(non_blank_lines), "each non-blank line must appear exactly once"
    c = summary["counts"]
    assert c["lines"] == len(non_blank_lines)
    assert c["lines"] == c["invalid"] + c["submitted"]
    assert c["submitted"] == c["succeeded"] + c["failed"]
    assert c["succeeded"] == len(results)
    assert c["invalid"] + c["failed"] == len(errors)


def assert_ids_answered_once(results: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
    """A request (a custom_id that passed validation) has one outcome: one result line or one
    provider-stage error line. Validation errors may repeat an id: `duplicate_custom_id` names it."""
    outcomes = Counter([r["custom_id"] for r in results] + [e["custom_id"] for e in errors if e["stage"] == "provider"])
    twice = {cid: n for cid, n in outcomes.items() if n > 1}
    assert not twice, f"custom_ids with more than one outcome: {twice}"
    assert all(r["status"] == "succeeded" for r in results)
    assert all(e["stage"] in ("validation", "provider") for e in errors)


def check_job_outputs(
    non_blank_lines: set[int], results: list[dict[str, Any]], errors: list[dict[str, Any]], summary: dict[str, Any]
) -> None:
    """Every promise docs/contract.md ("Outputs", "Lanes and deadlines") makes about one ended job's files."""
    assert_accounting(non_blank_lines, results, errors, summary)
    assert_ids_answered_once(results, errors)
    assert summary["status"] in m.FINAL_JOB_STATES, summary["status"]
    c = summary["counts"]
    lanes = c.get("by_lane") or {}
    # What the response cache answered went in no lane (docs/cache.md).
    assert lanes.get("batch", 0) + lanes.get("realtime", 0) + c.get("cached", 0) == c["submitted"], c
    assert sum(1 for r in results if r.get("cached")) == c.get("cached", 0)
    if summary["status"] == m.JOB_COMPLETED:
        assert not errors, "`completed` means every line succeeded"
    if summary["status"] == m.JOB_REJECTED:
        assert c["submitted"] == 0, "a rejected file sends nothing"


def check_notifications(notes: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """docs/contract.md "Notifications" for one ended job, among `notes` ({"attributes", "message"} as a
    raw SQS subscription to the topic receives them): ids that say job and event, one `submitted` at most
    and one end, told once once duplicates are dropped by their id, and that end the summary's status."""
    job_id = summary["job_id"]
    mine = [n for n in notes if n["attributes"].get("job_id") == job_id]
    for note in mine:
        attrs = note["attributes"]
        assert note["message"]["notification_id"] == attrs["notification_id"] == f"{job_id}:{attrs['event']}"
    ends = {n["attributes"]["notification_id"]: n["attributes"]["event"] for n in mine}
    ends = {nid: event for nid, event in ends.items() if event not in ("submitted", "escalated")}
    assert list(ends.values()) == [summary["status"]], (job_id, ends, summary["status"])
    submitted = {n["attributes"]["notification_id"] for n in mine if n["attributes"]["event"] == "submitted"}
    assert len(submitted) <= 1
    gave_up_submitting = "at its submit step" in str(summary.get("reason", ""))
    if summary["status"] != m.JOB_REJECTED and not gave_up_submitting:
        assert submitted, f"{job_id}: no `submitted` notification"
