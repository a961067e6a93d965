"""A file's lane and deadline (S3 metadata, prefix defaults, the stack's), the auto lane's decision, and
the real-time lane's pace: what docs/contract.md "Lanes and deadlines" promises."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import pytest

from batchdrop.config import ConfigError, Settings, parse_duration
from batchdrop.options import JobOptions, OptionError, choose_lanes, job_options, parse_deadline
from batchdrop.realtime.limiter import HEADROOM, Limiter, retry_after, seconds_of

UPLOAD = datetime(2026, 12, 2, 6, 0, tzinfo=UTC).timestamp()
BASE = {
    "BATCHDROP_BUCKET": "b",
    "BATCHDROP_TABLE": "t",
    "BATCHDROP_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:t",
    "BATCHDROP_COMPLETION_QUEUE_URL": "q",
}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("90s", 90), ("30m", 1800), ("8h", 28800), ("1.5h", 5400), ("2d", 172800), ("45", 45), ("6H", 21600)],
)
def test_durations(raw: str, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "h", "8x", "soon", "inf", "nanh"])
def test_not_durations(raw: str) -> None:
    assert parse_duration(raw) is None


def test_deadline_as_a_duration_counts_from_the_upload() -> None:
    assert parse_deadline("8h", UPLOAD) == UPLOAD + 8 * 3600


def test_deadline_as_a_time_with_or_without_a_zone() -> None:
    assert parse_deadline("2026-12-02T08:00:00Z", UPLOAD) == UPLOAD + 2 * 3600
    assert parse_deadline("2026-12-02T09:00:00+01:00", UPLOAD) == UPLOAD + 2 * 3600
    assert parse_deadline("2026-12-02T08:00:00", UPLOAD) == UPLOAD + 2 * 3600  # no zone: UTC


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("tomorrow", "expected an ISO 8601 time"),
        ("2026-12-02T05:00:00Z", "not after the upload"),
        ("0s", "must be more than 0"),
        ("2026-13-40T08:00:00Z", "expected an ISO 8601 time"),
    ],
)
def test_bad_deadlines_say_what_and_how_to_fix(raw: str, says: str) -> None:
    with pytest.raises(OptionError, match=says) as caught:
        parse_deadline(raw, UPLOAD, "the object's metadata batchdrop-deadline")
    assert raw in str(caught.value)
    assert "batchdrop-deadline" in str(caught.value)


def test_metadata_comes_before_the_prefix_which_comes_before_the_stack() -> None:
    config = settings(
        BATCHDROP_LANE="batch",
        BATCHDROP_DEADLINE="24h",
        BATCHDROP_PREFIX_DEFAULTS=(
            '{"inputs/urgent/": {"lane": "realtime", "deadline": "2h"}, "inputs/": {"lane": "auto"}}'
        ),
    )
    stack = job_options(config, "other/x.jsonl", {}, UPLOAD)
    assert (stack.lane, stack.deadline) == ("batch", UPLOAD + 24 * 3600)
    urgent = job_options(config, "inputs/urgent/x.jsonl", {}, UPLOAD)  # the longest prefix wins
    assert (urgent.lane, urgent.deadline) == ("realtime", UPLOAD + 2 * 3600)
    assert "inputs/urgent/" in urgent.lane_from
    plain = job_options(config, "inputs/x.jsonl", {}, UPLOAD)
    assert (plain.lane, plain.deadline) == ("auto", UPLOAD + 24 * 3600)
    own = job_options(config, "inputs/urgent/x.jsonl", {"batchdrop-lane": "batch", "batchdrop-deadline": "30m"}, UPLOAD)
    assert (own.lane, own.deadline) == ("batch", UPLOAD + 1800)
    assert "metadata" in own.lane_from


def test_an_unknown_lane_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="lane 'fast': expected one of auto, batch, realtime"):
        job_options(settings(), "inputs/x.jsonl", {"batchdrop-lane": "fast"}, UPLOAD)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"BATCHDROP_LANE": "fast"}, "BATCHDROP_LANE"),
        ({"BATCHDROP_DEADLINE": "2026-12-02T08:00:00Z"}, "a duration from the upload"),
        ({"BATCHDROP_PREFIX_DEFAULTS": "[1]"}, "an object of prefix"),
        ({"BATCHDROP_PREFIX_DEFAULTS": '{"inputs/a/": {"lane": "x"}}'}, "inputs/a/"),
        ({"BATCHDROP_PREFIX_DEFAULTS": '{"inputs/a/": {"budget": 1}}'}, "any of lane, deadline, cache"),
        ({"BATCHDROP_MIN_BATCH_WINDOW": "soon"}, "BATCHDROP_MIN_BATCH_WINDOW"),
    ],
)
def test_stack_settings_are_checked(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        settings(**env)


def test_auto_goes_realtime_for_a_handful_and_batch_for_many() -> None:
    chosen = choose_lanes(settings(), JobOptions(), {"openai": 99, "anthropic": 100}, UPLOAD)
    assert chosen["openai"].lane == "realtime"
    assert "fewer than 100" in chosen["openai"].why
    assert chosen["anthropic"].lane == "batch"


def test_auto_goes_realtime_for_all_when_the_deadline_is_near() -> None:
    near = JobOptions(deadline=UPLOAD + 50 * 60)
    chosen = choose_lanes(settings(), near, {"openai": 5000}, UPLOAD)
    assert chosen["openai"].lane == "realtime"
    assert "minimum batch window" in chosen["openai"].why
    far = JobOptions(deadline=UPLOAD + 61 * 60)
    assert choose_lanes(settings(), far, {"openai": 5000}, UPLOAD)["openai"].lane == "batch"
    tuned = settings(BATCHDROP_MIN_BATCH_WINDOW="30s", BATCHDROP_REALTIME_BELOW="10")
    assert choose_lanes(tuned, JobOptions(deadline=UPLOAD + 60), {"openai": 20}, UPLOAD)["openai"].lane == "batch"


def test_a_named_lane_is_obeyed_whatever_the_counts() -> None:
    assert choose_lanes(settings(), JobOptions(lane="batch"), {"openai": 1}, UPLOAD)["openai"].lane == "batch"
    assert choose_lanes(settings(), JobOptions(lane="realtime"), {"openai": 10**6}, UPLOAD)["openai"].lane == "realtime"


# -- the pace ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3s", 3723.0), ("2", 2.0), ("0.5", 0.5)],
)
def test_reset_headers_in_every_form(value: str, seconds: float) -> None:
    assert seconds_of(value, UPLOAD) == pytest.approx(seconds)


def test_an_rfc3339_reset_is_counted_from_now() -> None:
    assert seconds_of("2026-12-02T06:00:30Z", UPLOAD) == pytest.approx(30)


def test_retry_after_ms_comes_first() -> None:
    assert retry_after({"retry-after-ms": "250", "retry-after": "3"}, UPLOAD) == pytest.approx(0.25)
    assert retry_after({"retry-after": "3"}, UPLOAD) == 3


class Clock:
    def __init__(self) -> None:
        self.now = UPLOAD

    def __call__(self) -> float:
        return self.now


def test_the_limit_header_sets_the_pace_and_an_empty_window_holds_every_start() -> None:
    clock = Clock()
    limiter = Limiter(concurrency=4, clock=clock)
    limiter.observe(200, {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599"})
    assert limiter.rate == pytest.approx(10 * HEADROOM)
    limiter.observe(
        200,
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "2s",
        },
    )
    assert limiter._paused_until == pytest.approx(clock.now + 2)


def test_a_429_halves_the_pace_and_holds_for_its_retry_after_and_answers_win_it_back() -> None:
    clock = Clock()
    limiter = Limiter(concurrency=4, rpm=1200, clock=clock)
    assert limiter.rate == pytest.approx(20 * HEADROOM)
    limiter.observe(429, {"retry-after": "3"})
    assert limiter.rate == pytest.approx(10 * HEADROOM)
    assert limiter._paused_until == pytest.approx(clock.now + 3)
    assert limiter.throttled == 1
    for _ in range(200):
        limiter.observe(200, {})
    assert limiter.rate == pytest.approx(20 * HEADROOM)  # back up, never past the known limit


def test_starts_are_spaced_by_the_pace() -> None:
    limiter = Limiter(concurrency=50, rpm=600)  # 10 a second, less the headroom

    async def start_many() -> float:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for _ in range(11):
            async with limiter:
                pass
        return loop.time() - begin

    took = asyncio.run(start_many())
    assert 0.95 <= took <= 1.6  # ten gaps of ~0.103 s


def test_invocations_running_at_once_share_the_limit_and_the_last_takes_it_whole() -> None:
    peers = [4]
    limiter = Limiter(concurrency=4, rpm=1200, peers=lambda: peers[0])
    assert limiter.ceiling == pytest.approx(20 * HEADROOM / 4)
    peers[0] = 1
    assert limiter.ceiling == pytest.approx(20 * HEADROOM)


def test_cache_and_budget_options_come_from_metadata_then_prefix_then_stack() -> None:
    config = settings(
        BATCHDROP_CACHE="read",
        BATCHDROP_BUDGET_USD="10",
        BATCHDROP_MONTHLY_BUDGET_USD="500",
        BATCHDROP_PREFIX_DEFAULTS=(
            '{"inputs/evals/": {"cache": "read-write", "budget_policy": "truncate", "monthly_budget_usd": 50},'
            ' "inputs/evals/big/": {"budget_usd": "2.5"}}'
        ),
    )
    stack = job_options(config, "inputs/x.jsonl", {}, UPLOAD)
    assert (stack.cache, stack.budget_usd, stack.budget_policy) == ("read", 10.0, "refuse")
    assert stack.monthly_caps == (("", 500.0),)
    evals = job_options(config, "inputs/evals/big/x.jsonl", {}, UPLOAD)
    # The longest prefix gives the defaults it names; every prefix with a monthly cap caps the file.
    assert (evals.cache, evals.budget_usd, evals.budget_policy) == ("read", 2.5, "refuse")
    assert evals.monthly_caps == (("", 500.0), ("inputs/evals/", 50.0))
    small = job_options(config, "inputs/evals/x.jsonl", {}, UPLOAD)
    assert (small.cache, small.budget_policy, small.monthly_caps) == (
        "read-write",
        "truncate",
        (("", 500.0), ("inputs/evals/", 50.0)),
    )
    own = job_options(
        config,
        "inputs/evals/x.jsonl",
        {"batchdrop-cache": "OFF", "batchdrop-budget-usd": "$0.75", "batchdrop-budget-policy": "refuse"},
        UPLOAD,
    )
    assert (own.cache, own.budget_usd, own.budget_policy, own.budget_from) == (
        "off",
        0.75,
        "refuse",
        "the object's metadata batchdrop-budget-usd",
    )


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"batchdrop-cache": "sometimes"}, "batchdrop-cache says cache='sometimes': expected one of off, read"),
        ({"batchdrop-budget-usd": "ten"}, "batchdrop-budget-usd says budget='ten': expected an amount of US dollars"),
        ({"batchdrop-budget-usd": "-1"}, "of 0 or more"),
        ({"batchdrop-budget-policy": "maybe"}, "batchdrop-budget-policy says budget policy='maybe'"),
    ],
)
def test_bad_cache_and_budget_metadata_is_an_option_error_naming_the_metadata(
    metadata: dict[str, str], message: str
) -> None:
    with pytest.raises(OptionError, match=re.escape(message)):
        job_options(settings(), "inputs/x.jsonl", metadata, UPLOAD)
