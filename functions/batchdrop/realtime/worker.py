"""The realtime function's work: each message is one chunk of a real-time batch, run on its provider's
real-time API, all of an invocation's chunks at once (asyncio), paced per provider.

A chunk is claimed before it runs (a message delivered twice runs once), its answers are written to
one file (with those of an earlier, cut-short run of it: only what that run had not answered is sent
again), and only then is it counted done, together with its batch's count, in one transaction. So a
crash resends at most the chunk's requests that were in flight or answered since its file was last
written: the requests of the chunks the invocation was running (BATCHDROP_REALTIME_CHUNK each, up to
ten chunks an invocation). docs/realtime.md has the bound.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import Conflict
from batchdrop.pipeline import Deps, batch_data_key, batch_index_key
from batchdrop.poll import PollReport, look_at_batch
from batchdrop.providers import load_realtime
from batchdrop.providers.base import RateLimited, RealtimeClient
from batchdrop.realtime.lane import chunk_key, outcome_from_line, outcome_line
from batchdrop.realtime.limiter import Limiter

logger = Logger(service="batchdrop")

# The SDKs' own retries of a call (429s honouring retry-after, 5xx and timeouts with backoff) before
# the lane sees it fail; a 429 past them waits and is tried again while the invocation has time.
SDK_RETRIES = 3
# The invocation stops starting requests this long before its timeout (at most a fifth of it), to write
# what it answered.
SAFETY_SECONDS = 20.0


def stop_after(seconds_left: float) -> float:
    """How long an invocation with `seconds_left` may start requests."""
    return max(1.0, seconds_left - min(SAFETY_SECONDS, seconds_left / 5))


# How often an invocation reads how many others share the providers' limits with it.
PEERS_SECONDS = 5.0
# What each provider's pace was learned to be, kept by a warm container for its next invocation.
_learned: dict[str, tuple[float, float | None]] = {}


class ChunkBusy(Exception):
    """Another invocation runs this chunk now (or one that died holds it until its claim runs out)."""


class Unfinished(Exception):
    """The invocation's time ran out before every request of the chunk was answered; its message comes
    back, and the next run sends only what is left. `progressed`: this run answered some."""

    def __init__(self, message: str, progressed: bool) -> None:
        super().__init__(message)
        self.progressed = progressed


@dataclass
class Run:
    """One invocation: its clients and limiters (bound to its event loop), and what it did."""

    deps: Deps
    stop_at: float  # time.monotonic() after which no request starts
    ends_at: float  # time.monotonic() when the invocation's time is up
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    clients: dict[str, RealtimeClient] = field(default_factory=dict)
    limiters: dict[str, Limiter] = field(default_factory=dict)
    batches: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    finished: set[tuple[str, str]] = field(default_factory=set)
    answered: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _peers: int = 1
    _peers_at: float = float("-inf")

    def limiter(self, provider: str) -> Limiter:
        if provider not in self.limiters:
            settings = self.deps.settings
            limiter = Limiter(settings.realtime_concurrency, settings.providers[provider].rpm, peers=self.peers)
            if provider in _learned:
                limiter.rate, limiter.limit = _learned[provider]
            self.limiters[provider] = limiter
        return self.limiters[provider]

    def peers(self) -> int:
        """How many invocations of the lane run now, this one included: the real-time queue's messages in
        flight, ten to an invocation, at most the event source's cap; read at most every PEERS_SECONDS."""
        now = time.monotonic()
        if now - self._peers_at >= PEERS_SECONDS and self.deps.realtime is not None:
            self._peers_at = now
            try:
                in_flight = self.deps.realtime.in_flight()
            except Exception:  # an estimate: keep the last one
                return self._peers
            cap = self.deps.settings.realtime_invocations
            self._peers = max(1, min(cap, -(-in_flight // 10)))
        return self._peers

    def client(self, provider: str) -> RealtimeClient:
        if provider not in self.clients:
            limiter = self.limiter(provider)
            self.clients[provider] = load_realtime(self.deps.settings.providers[provider], limiter.observe, SDK_RETRIES)
        return self.clients[provider]

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        for provider, limiter in self.limiters.items():
            _learned[provider] = (limiter.rate, limiter.limit)


async def run_chunk(run: Run, body: dict[str, Any], message_id: str = "") -> None:
    """Run one message's chunk: claim it, send what it has not answered, write, count it done.

    The claim is the message's (two copies of one chunk in one invocation are two claimants), and it
    is held until the invocation's time is up: a run cut short gives it back, one that dies lets it run
    out before its message comes back (the queue's visibility timeout is longer than the function's)."""
    deps = run.deps
    job_id, key, chunk = str(body["job_id"]), str(body["batch_key"]), int(body["chunk"])
    owner = f"{run.owner}/{message_id}"
    lease = max(1.0, run.ends_at - time.monotonic())
    claim = await asyncio.to_thread(deps.store.claim_chunk, job_id, key, chunk, owner, deps.clock(), lease)
    if claim == "done":
        return
    if claim == "busy":
        raise ChunkBusy(f"chunk {chunk} of {key} is being run by another invocation")
    batch = await _batch(run, job_id, key)
    if batch is None or batch.get("status") in m.TERMINAL_BATCH_STATES or batch.get("rt_canceled"):
        # Canceled (or gone): nothing more is started for it; what was answered is kept.
        await asyncio.to_thread(deps.store.finish_chunk, job_id, key, chunk, owner, 0)
        run.finished.add((job_id, key))
        return
    name = chunk_key(job_id, key, chunk)
    earlier = await asyncio.to_thread(deps.objects.get_bytes, name)
    answers: dict[str, bytes] = {}
    for raw in (earlier or b"").splitlines():
        if raw:
            answers[outcome_from_line(raw).custom_id] = raw
    data_start, data_end = body["data"]
    index_start, index_end = body["index"]
    payloads = await asyncio.to_thread(deps.objects.read_range, batch_data_key(job_id, key), data_start, data_end)
    entries = await asyncio.to_thread(deps.objects.read_range, batch_index_key(job_id, key), index_start, index_end)
    ids = [entry.partition(b"\t")[0].decode() for entry in entries.splitlines() if entry]
    requests = [p for p in payloads.splitlines() if p]
    todo = [(cid, payload) for cid, payload in zip(ids, requests, strict=True) if cid not in answers]
    provider, model = str(body["provider"]), str(body.get("model") or "")
    outcomes = await asyncio.gather(*(_call(run, provider, model, cid, payload) for cid, payload in todo))
    for outcome in outcomes:
        if outcome is not None:
            answers[outcome.custom_id] = outcome_line(outcome)
    run.answered[provider] = run.answered.get(provider, 0) + sum(o is not None for o in outcomes)
    # A crash here loses these answers: the chunk's next run asks for them again (docs/realtime.md).
    deps.checkpoint("before_chunk_written")
    if len(answers) > (len(earlier.splitlines()) if earlier else 0):
        file = b"".join(answers[cid] + b"\n" for cid in ids if cid in answers)
        await asyncio.to_thread(deps.objects.put_bytes, name, file)
    deps.checkpoint("after_chunk_written")
    if len(answers) < len(ids):
        await asyncio.to_thread(deps.store.release_chunk, job_id, key, chunk, owner)
        raise Unfinished(
            f"chunk {chunk} of {key}: {len(answers)} of {len(ids)} requests answered in time",
            progressed=any(o is not None for o in outcomes),
        )
    await asyncio.to_thread(deps.store.finish_chunk, job_id, key, chunk, owner, len(ids))
    run.finished.add((job_id, key))


async def _batch(run: Run, job_id: str, key: str) -> dict[str, Any] | None:
    if (job_id, key) not in run.batches:
        run.batches[(job_id, key)] = await asyncio.to_thread(run.deps.store.get_batch, job_id, key)
    return run.batches[(job_id, key)]


async def _call(run: Run, provider: str, model: str, custom_id: str, payload: bytes) -> m.Outcome | None:
    """One request's answer, or None if the invocation's time ran out before it could be sent."""
    limiter = run.limiter(provider)
    client = run.client(provider)
    while time.monotonic() < run.stop_at:
        async with limiter:
            if time.monotonic() >= run.stop_at:
                return None
            try:
                # Never past the invocation's time: a call cut off is asked again by the chunk's next run.
                outcome = await asyncio.wait_for(
                    client.call(payload, model), timeout=max(1.0, run.stop_at - time.monotonic() + SAFETY_SECONDS / 2)
                )
            except TimeoutError:
                return None
            except RateLimited as exc:
                # The SDK's retries are spent and the provider still says 429: every call waits, and
                # this one is tried again.
                limiter.hold(exc.retry_after if exc.retry_after is not None else 1.0)
                continue
        return m.Outcome(custom_id, outcome.ok, outcome.response, outcome.code, outcome.message, outcome.detail)
    return None


def end_finished(run: Run) -> int:
    """End the batches whose last chunk this invocation finished (the poll would, later): their jobs go to
    completion now. Returns how many ended."""
    ended = 0
    for job_id, key in sorted(run.finished):
        batch = run.deps.store.get_batch(job_id, key)
        if batch is None or batch.get("status") in m.TERMINAL_BATCH_STATES or not batch.get("provider_batch_id"):
            continue
        chunks, done = int(batch.get("chunks") or 0), int(batch.get("chunks_done") or 0)
        if batch.get("rt_canceled") or (chunks and done >= chunks):
            report = PollReport()
            try:
                look_at_batch(run.deps, batch, report, watchdog=False)
            except Conflict:
                continue  # a poll or another invocation ended it first
            ended += report.ended
    return ended


def record_pace(run: Run) -> None:
    """What this invocation sustained per provider, for the poll's escalation estimate."""
    elapsed = max(1.0, time.monotonic() - run.started)
    for provider, answered in run.answered.items():
        if answered >= 10:  # fewer says little about a pace
            run.deps.store.record_lane_pace(provider, answered / elapsed, run.deps.clock())


def message_body(raw: str) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(raw)
    return body


RecordHandler = Callable[[Any], Any]
