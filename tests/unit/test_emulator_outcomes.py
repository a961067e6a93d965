"""The emulator's outcome draws: deterministic for a seed, and honouring the rates."""

from __future__ import annotations

from collections import Counter

import pytest

from batchdrop.local.emulator import (
    REFUSED,
    SERVER_ERROR,
    EmulatorKnobs,
    draw_batch_expires,
    draw_request_outcome,
)

N = 2000


def test_knobs_default_to_a_perfect_instant_provider() -> None:
    assert EmulatorKnobs() == EmulatorKnobs(
        latency=0.0, failure_rate=0.0, expire_rate=0.0, transient_error_rate=0.0, seed=0
    )


def test_request_draws_are_deterministic_for_a_seed() -> None:
    first = [draw_request_outcome(42, "batch_a", f"r{i}", 0.3) for i in range(N)]
    again = [draw_request_outcome(42, "batch_a", f"r{i}", 0.3) for i in range(N)]
    other_seed = [draw_request_outcome(43, "batch_a", f"r{i}", 0.3) for i in range(N)]
    other_batch = [draw_request_outcome(42, "batch_b", f"r{i}", 0.3) for i in range(N)]
    assert first == again
    assert first != other_seed
    assert first != other_batch


def test_batch_expiry_draws_are_deterministic_for_a_seed() -> None:
    first = [draw_batch_expires(1, f"batch_{i}", 0.5) for i in range(N)]
    assert first == [draw_batch_expires(1, f"batch_{i}", 0.5) for i in range(N)]
    assert first != [draw_batch_expires(2, f"batch_{i}", 0.5) for i in range(N)]


@pytest.mark.parametrize("failure_rate", [0.0, 0.1, 0.5, 1.0])
def test_failure_rate_is_honoured_half_refused_half_server_errors(failure_rate: float) -> None:
    outcomes = [draw_request_outcome(7, "batch_x", f"req-{i}", failure_rate) for i in range(N)]
    kinds = Counter(outcome.failure for outcome in outcomes)
    assert set(kinds) <= {None, REFUSED, SERVER_ERROR}
    failed = kinds[REFUSED] + kinds[SERVER_ERROR]
    assert abs(failed / N - failure_rate) < 0.03
    assert abs(kinds[REFUSED] / N - failure_rate / 2) < 0.025
    assert abs(kinds[SERVER_ERROR] / N - failure_rate / 2) < 0.025


def test_a_failure_at_a_low_rate_stays_a_failure_at_a_higher_rate() -> None:
    # The same draw decides, so raising the rate only adds failures.
    for i in range(N):
        low = draw_request_outcome(3, "b", f"r{i}", 0.2)
        high = draw_request_outcome(3, "b", f"r{i}", 0.6)
        assert low.finish_fraction == high.finish_fraction
        if low.failure is not None:
            assert high.failure is not None


def test_finish_fractions_are_spread_over_the_unit_interval() -> None:
    fractions = [draw_request_outcome(5, "b", f"r{i}", 0.0).finish_fraction for i in range(N)]
    assert all(0.0 <= f < 1.0 for f in fractions)
    assert abs(sum(fractions) / N - 0.5) < 0.03
    # roughly half finish in the first half: these are the ones an expired batch still returns
    assert abs(sum(1 for f in fractions if f <= 0.5) / N - 0.5) < 0.03
    deciles = Counter(int(f * 10) for f in fractions)
    assert all(abs(deciles[d] / N - 0.1) < 0.03 for d in range(10))


@pytest.mark.parametrize("expire_rate", [0.0, 0.25, 1.0])
def test_expire_rate_is_honoured(expire_rate: float) -> None:
    expired = sum(draw_batch_expires(9, f"batch_{i}", expire_rate) for i in range(N))
    assert abs(expired / N - expire_rate) < 0.03
