"""GeminiProvider's reading of Gemini's answers: responses-file lines, batch states and counts."""

from __future__ import annotations

from typing import Any

import pytest

from batchdrop import models as m
from batchdrop.providers.gemini.client import STATES, _count, _job_state, _outcome


def test_a_response_line_is_a_success_with_the_response_as_written() -> None:
    response = {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}}], "usageMetadata": {}}
    outcome = _outcome({"key": "a", "response": response})
    assert outcome == m.Outcome("a", ok=True, response=response)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ({"code": 3, "message": "bad"}, m.REQUEST_ERROR),  # gRPC INVALID_ARGUMENT
        ({"code": 7, "message": "denied"}, m.REQUEST_ERROR),  # gRPC PERMISSION_DENIED
        ({"code": 13, "message": "internal"}, m.SERVER_ERROR),  # gRPC INTERNAL
        ({"code": 14, "message": "unavailable"}, m.SERVER_ERROR),
        ({"code": 8, "message": "quota"}, m.SERVER_ERROR),  # gRPC RESOURCE_EXHAUSTED
        ({"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}, m.REQUEST_ERROR),
        ({"code": 429, "message": "slow down"}, m.SERVER_ERROR),
        ({"code": 500, "message": "oops"}, m.SERVER_ERROR),
        ({"code": 503, "message": "busy"}, m.SERVER_ERROR),
        ({"status": "DEADLINE_EXCEEDED", "message": "late"}, m.SERVER_ERROR),
    ],
)
def test_an_error_line_is_a_failure_classified_by_its_code(error: dict[str, Any], code: str) -> None:
    line = {"key": "a", "error": error}
    outcome = _outcome(line)
    assert not outcome.ok
    assert outcome.code == code
    assert outcome.message == error["message"]
    assert outcome.detail == line


def test_a_line_with_neither_response_nor_error_is_a_request_error() -> None:
    outcome = _outcome({"key": "a"})
    assert not outcome.ok
    assert outcome.code == m.REQUEST_ERROR
    assert outcome.message == "the line holds no response"


def test_rest_states_are_named_as_the_sdk_names_them() -> None:
    assert _job_state("BATCH_STATE_SUCCEEDED") == "JOB_STATE_SUCCEEDED"
    assert _job_state("JOB_STATE_RUNNING") == "JOB_STATE_RUNNING"
    for rest, ours in [
        ("BATCH_STATE_PENDING", m.VALIDATING),
        ("BATCH_STATE_RUNNING", m.IN_PROGRESS),
        ("BATCH_STATE_SUCCEEDED", m.COMPLETED),
        ("BATCH_STATE_FAILED", m.FAILED),
        ("BATCH_STATE_CANCELLED", m.BATCH_CANCELED),
        ("BATCH_STATE_EXPIRED", m.BATCH_EXPIRED),
    ]:
        assert STATES[_job_state(rest)] == ours


def test_counts_are_int64_strings_and_zero_when_left_out() -> None:
    stats = {"requestCount": "10", "successfulRequestCount": "4"}
    assert _count(stats, "requestCount") == 10
    assert _count(stats, "successfulRequestCount") == 4
    assert _count(stats, "failedRequestCount") == 0
    assert _count({}, "requestCount") is None
