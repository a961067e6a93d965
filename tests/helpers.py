"""Shared test helpers: the embedded stack on the session's moto server, and a driver for it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from batchdrop import models as m
from batchdrop.adapters.store import JobStore
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher

# The checks on a job's outputs live in tests/checks.py, shared with the chaos runs and the smoke test.
from tests.checks import Outputs, read_outputs
from tests.checks import assert_accounting as assert_accounting

# The line builders and file writers live in tests/lines.py; named here too, as the stack tests import them.
from tests.lines import anthropic_line as anthropic_line
from tests.lines import jsonl as jsonl
from tests.lines import neutral_line as neutral_line
from tests.lines import openai_line as openai_line
from tests.lines import read_jsonl as read_jsonl

# The emulator tests' clock: a fixed start, moved on by hand; and their batches' processing time.
START = 1_750_000_000.0
LATENCY = 100.0


_moto: Any = None


def shared_moto_endpoint() -> str:
    """One moto server for the whole test process, started on first use.

    moto keeps its accounts per process, not per server, so a second server would add nothing but
    its start and its half-second stop: every stack's start empties the account (moto-api/reset).
    """
    global _moto
    if _moto is None:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        _moto = server
    host, port = _moto.get_host_and_port()
    return f"http://{host}:{port}"


def stop_shared_moto() -> None:
    global _moto
    if _moto is not None:
        _moto.stop()
        _moto = None


def local_stack(options: s.StackOptions | None = None) -> s.LocalStack:
    """A `LocalStack` on the session's moto server, cleaned as it starts: an empty account with the
    resources created anew, a new emulator (its own state and knobs), and the environment set from
    these options and put back as it stops. One stack at a time, as before: moto's state is per process."""
    options = options or s.StackOptions()
    if options.external_aws is None:
        options = dataclasses.replace(options, external_aws=shared_moto_endpoint())
    return s.LocalStack(options)


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drive(
    dispatcher: Dispatcher,
    until: Callable[[], bool],
    timeout: float = 60.0,
    tick: Callable[[Dispatcher], None] | None = None,
) -> None:
    """Run the event sources until `until()` holds; fail loudly on a timeout."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"the pipeline did not settle in {timeout}s")
        dispatcher.deliver_uploads()
        dispatcher.deliver_realtime()
        if tick is None:
            dispatcher.tick()
        else:
            tick(dispatcher)
        dispatcher.deliver_completions()
        time.sleep(0.05)


def all_notifications(dispatcher: Dispatcher) -> list[dict[str, Any]]:
    """Every SNS message captured so far, drained from the capture queue."""
    out: list[dict[str, Any]] = []
    while batch := dispatcher.notifications():
        out.extend(batch)
    return out


def all_jobs_final(store: JobStore, expected: int) -> Callable[[], bool]:
    def check() -> bool:
        jobs = store.list_jobs(limit=1000)
        return len(jobs) >= expected and all(j["status"] in m.FINAL_JOB_STATES for j in jobs)

    return check


def jobs_by_key(store: JobStore) -> dict[str, dict[str, Any]]:
    return {j["input"]["key"]: j for j in store.list_jobs(limit=100_000)}


def ended(store: JobStore, keys: set[str]) -> Callable[[], bool]:
    """True once every job uploaded under `keys` has reached a final state."""

    def check() -> bool:
        jobs = jobs_by_key(store)
        return all(k in jobs and jobs[k]["status"] in m.FINAL_JOB_STATES for k in keys)

    return check


def outputs_of(stack: s.LocalStack, job: dict[str, Any]) -> Outputs:
    return read_outputs(stack.get, job["output_prefix"])
