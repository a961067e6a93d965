"""How long a 429 says to wait, read from each provider's headers; and the emulator's Go durations."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime

import pytest

from batchdrop.local.emulator.openai import go_duration
from batchdrop.providers.realtime_sdk import duration_seconds, retry_after


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.12, "120ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.876, "59.876s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_go_durations_read_back(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    assert duration_seconds(text) == pytest.approx(seconds)


def test_durations_that_are_not_are_none() -> None:
    assert duration_seconds("12") == 12.0  # Azure's whole seconds
    assert duration_seconds("soon") is None
    assert duration_seconds("1s later") is None


def test_retry_after_ms_wins_then_seconds_then_a_date() -> None:
    assert retry_after({"retry-after-ms": "1500", "retry-after": "2"}) == 1.5
    assert retry_after({"retry-after": "2"}) == 2.0
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after({"retry-after": date}) == pytest.approx(30, abs=2)


def test_without_retry_after_the_reset_of_the_limit_used_up() -> None:
    openai = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "9m0s",
    }
    assert retry_after(openai) == 360.0
    reset = datetime.fromtimestamp(time.time() + 20, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    anthropic = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset}
    assert retry_after(anthropic) == pytest.approx(20, abs=2)
    assert retry_after({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s"}) is None
    assert retry_after({}) is None
