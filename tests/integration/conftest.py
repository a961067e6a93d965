"""Fixtures of the emulator tests: a clock moved by hand, and the emulator running on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from tests.helpers import LATENCY, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emulator(clock: FakeClock) -> Iterator[ProviderEmulator]:
    with ProviderEmulator(EmulatorKnobs(latency=LATENCY, seed=7), clock=clock) as emu:
        yield emu
