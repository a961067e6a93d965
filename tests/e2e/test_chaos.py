"""docs/contract.md's guarantees under injected faults: duplicate events, overlapping polls, crashes at every
step boundary, and provider errors, expiries and transient failures, all at once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchdrop.local.dispatcher import Chaos
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.local.run import run_files
from batchdrop.local.stack import StackOptions
from tests.chaos_support import check_guarantees, write_corpus

# The chaos profile, run at a CI-sized scale (`batchdrop local run` takes the same knobs for
# the full-size run recorded in docs/guarantees.md).
FULL_CHAOS = {"duplicate_events": 3, "overlapping_polls": 4, "crash_rate": 0.2}
PROVIDER_FAULTS = {"transient_error_rate": 0.2, "failure_rate": 0.1, "expire_rate": 0.05}


def chaos_run(
    tmp: Path,
    seed: int,
    files: int,
    max_lines: int,
    max_attempts: int = 2,
    chaos: dict[str, float] | None = None,
    faults: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
    limits: dict[str, tuple[int, int]] | None = None,
    queue_limits: dict[str, int] | None = None,
    latency: float = 0.3,
    lane: str | None = None,
    sizes: list[int] | None = None,
) -> dict[str, int]:
    inputs = tmp / "in"
    inputs.mkdir()
    paths = write_corpus(inputs, files=files, max_lines=max_lines, seed=seed, sizes=sizes)
    rates = PROVIDER_FAULTS if faults is None else faults
    knobs = EmulatorKnobs(
        latency=latency,
        seed=seed,
        queue_limits=queue_limits or {},
        failure_rate=rates.get("failure_rate", 0.0),
        expire_rate=rates.get("expire_rate", 0.0),
        transient_error_rate=rates.get("transient_error_rate", 0.0),
    )
    options = StackOptions(
        knobs=knobs,
        max_attempts=max_attempts,
        lease_seconds=3,
        completion_grace_seconds=2,
        create_lock_seconds=2,
        extra_env=env or {},
        limits=limits or {},
        lane=lane,
        realtime_timeout=15,
    )
    chaos_knobs = Chaos(seed=seed, **(FULL_CHAOS if chaos is None else chaos))  # type: ignore[arg-type]
    report = run_files(paths, str(tmp / "out"), options, chaos=chaos_knobs, tick_seconds=0.1, timeout=240)
    return check_guarantees(report, max_attempts)


@pytest.mark.parametrize("seed", [5, *random.sample(range(1_000_000), 2)])
def test_no_request_is_lost_or_paid_twice_under_chaos(tmp_path: Path, seed: int) -> None:
    totals = chaos_run(tmp_path, seed, files=6, max_lines=12)
    assert totals["jobs"] == 6
    assert totals["lines"] == totals["invalid"] + totals["succeeded"] + totals["failed"]


def test_no_request_is_lost_or_paid_twice_under_chaos_with_quotas_on(tmp_path: Path) -> None:
    # Batches of three, caps of ours that hold some of them, and the providers' own queues, smaller
    # still, that refuse some "for now" (OpenAI's fails them unrun, Anthropic's answers 429); with every
    # fault of the chaos profile at once.
    limits = {p: (3, 10 * 1024 * 1024) for p in ("openai", "anthropic")}
    # (the corpus holds OpenAI and Anthropic requests)
    env = {"BATCHDROP_OPENAI_MAX_ENQUEUED": "250", "BATCHDROP_ANTHROPIC_MAX_ENQUEUED": "6"}  # two batches each
    queues = {"openai": 3, "anthropic": 4}  # one batch each: tokens (a request here counts 1), requests
    # Batches that take a second, so that several are in flight at once
    totals = chaos_run(
        tmp_path, seed=23, files=6, max_lines=12, env=env, limits=limits, queue_limits=queues, latency=1.0
    )
    assert totals["jobs"] == 6
    assert totals["held"] > 0, "batches waited for room"
    assert totals["quota_refused"] > 0, "a provider failed batches unrun for its quota"
    assert totals["lines"] == totals["invalid"] + totals["succeeded"] + totals["failed"]


@pytest.mark.parametrize("seed", [random.randrange(1_000_000)])
def test_no_request_is_lost_or_answered_twice_across_lanes_under_chaos(tmp_path: Path, seed: int) -> None:
    # The auto lane with a threshold of 5: a provider's handful of requests goes real-time, more go batch;
    # duplicate events, overlapping polls, crashes at every step (the real-time worker's included) and
    # provider faults, at once. Each line ends once; each real-time request is answered once, or again
    # only for a chunk whose invocation died before writing its answers, within the bound.
    # Sizes fixed so both lanes are taken whatever the seed (a random corpus of small files had none
    # over the threshold): OpenAI 8 and 9 go batch, Anthropic's 2 and the mixed file's 3 go real-time.
    totals = chaos_run(
        tmp_path, seed, files=4, max_lines=10, lane="auto", env={"BATCHDROP_REALTIME_BELOW": "5"}, sizes=[8, 2, 3, 9]
    )
    assert totals["jobs"] == 4
    assert totals["realtime_results"] > 0, "some requests went real-time"
    assert totals["batches"] > 0, "some requests went batch"
    assert totals["lines"] == totals["invalid"] + totals["succeeded"] + totals["failed"]


def test_cancels_racing_hand_overs_leave_no_job_behind(tmp_path: Path) -> None:
    # Cancels issued at the same moment as overlapping polls, with crashes: every job still ends, its
    # lines accounted for, one terminal notification, nothing sent twice.
    chaos = {**FULL_CHAOS, "cancel_rate": 0.15}
    totals = chaos_run(tmp_path, seed=11, files=6, max_lines=12, chaos=chaos)
    assert totals["jobs"] == 6


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 10_000),
    crash_rate=st.sampled_from([0.0, 0.1, 0.3]),
    duplicate_events=st.integers(1, 3),
    overlapping_polls=st.integers(1, 3),
    failure_rate=st.sampled_from([0.0, 0.2, 0.5]),
    expire_rate=st.sampled_from([0.0, 0.3]),
    max_attempts=st.integers(1, 3),
)
def test_accounting_holds_for_random_files_faults_and_outcomes(
    tmp_path_factory: pytest.TempPathFactory, seed: int, crash_rate: float, duplicate_events: int,
    overlapping_polls: int, failure_rate: float, expire_rate: float, max_attempts: int,
) -> None:  # fmt: skip
    chaos_run(
        tmp_path_factory.mktemp("run"),
        seed,
        files=3,
        max_lines=8,
        max_attempts=max_attempts,
        chaos={"crash_rate": crash_rate, "duplicate_events": duplicate_events, "overlapping_polls": overlapping_polls},
        faults={"failure_rate": failure_rate, "expire_rate": expire_rate, "transient_error_rate": 0.1},
    )
