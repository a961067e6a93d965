"""Splitting valid requests into provider batches that respect each provider's limits and rules.

Requests are spilled to one temporary file per open batch, so memory stays flat whatever the input
size: a batch is closed (and handed to `on_batch`) when the next request would pass its request or
byte limit, or the embedding inputs the provider counts (`Request.inputs`, `max_inputs`), and the
rest are closed at the end. The plan is deterministic: the same file and limits
give the same batches with the same keys, which is what lets a retried submit find its own work.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import tempfile
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from batchdrop.config import BatchLimits
from batchdrop.models import Request
from batchdrop.providers import SPECS

# Room for the envelope a provider wraps around the lines (Anthropic: {"requests": [...]}).
ENVELOPE_BYTES = 64
# The index of a batch planned without its data: (line number, size in bytes) of each request.
SIZES_INDEX = "I"

_LINE = operator.attrgetter("line")
_PAYLOAD = operator.attrgetter("payload")
# What carries the inputs a provider counts besides requests (ProviderSpec.inputs), by provider.
_INPUTS = {s.name: s.inputs for s in SPECS.values() if s.inputs is not None}


def _inputs(request: Request) -> int:
    """The request's embedding inputs; counted from its line when whoever made it did not (a request
    sent again from a stored batch, or converted for a fallback provider)."""
    carried = _INPUTS.get(request.provider)
    if request.inputs or carried is None or not request.group.startswith(carried[0]):
        return request.inputs
    return carried[1](request.payload)


@dataclass
class PlannedBatch:
    """A closed batch: its requests in provider format (`path`) and their line numbers (`index_path`)."""

    key: str
    provider: str
    group: str
    model: str
    requests: int
    bytes: int
    path: str
    index_path: str
    # The lane it runs in (models.LANE_BATCH or LANE_REALTIME): a batch under its provider's minimum
    # goes real-time when the file's lane allows it.
    lane: str = "batch"
    # Answers from the response cache, for an item of the `cache` lane (batchdrop.cache).
    answers_path: str | None = None

    def discard(self) -> None:
        for p in (self.path, self.index_path, self.answers_path):
            if p is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


@dataclass
class _Open:
    provider: str
    group: str
    model: str
    data: IO[bytes] | None  # None: planned without the data (BatchPlanner.sizes_only)
    index: IO[bytes]
    requests: int = 0
    bytes: int = ENVELOPE_BYTES
    inputs: int = 0


@dataclass
class BatchPlanner:
    limits: Mapping[str, BatchLimits]
    on_batch: Callable[[PlannedBatch], None]
    key_prefix: str = ""
    tmpdir: str | None = None
    # Providers whose batches are planned without their data, for a plan that sends nothing (`batchdrop
    # validate`): no request is written, and the index holds each request's line number and size in
    # bytes as two 4-byte integers (SIZES_INDEX), no custom_id; the batch's `path` is "". The batches
    # are the same as with the data.
    sizes_only: frozenset[str] = frozenset()
    _open: dict[tuple[str, str], _Open] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)
    # Per slot of a provider with a minimum batch size (Bedrock): the last batch closed, held back
    # until the next one closes, so that a too-small last batch can borrow requests from it.
    _held: dict[tuple[str, str], PlannedBatch] = field(default_factory=dict)

    def add(self, request: Request) -> None:
        limits = self.limits[request.provider]
        slot = (request.provider, request.group)
        batch = self._open.get(slot)
        size = len(request.payload)
        inputs = _inputs(request)
        if batch is not None and (
            batch.requests + 1 > limits.max_requests
            or batch.bytes + size > limits.max_bytes
            or (inputs and batch.inputs + inputs > (limits.max_inputs or inputs))
        ):
            self._close(slot)
            batch = None
        if batch is None:
            batch = self._open[slot] = _Open(
                request.provider,
                request.group,
                request.model,
                None
                if request.provider in self.sizes_only
                else tempfile.NamedTemporaryFile(dir=self.tmpdir, suffix=".jsonl", delete=False),  # noqa: SIM115
                tempfile.NamedTemporaryFile(dir=self.tmpdir, suffix=".idx", delete=False),  # noqa: SIM115
            )
        if batch.data is None:
            batch.index.write(array(SIZES_INDEX, (request.line, size)).tobytes())
        else:
            batch.data.write(request.payload)
            batch.index.write(b"%s\t%d\n" % (request.custom_id.encode(), request.line))
        batch.requests += 1
        batch.bytes += size
        batch.inputs += inputs

    def add_many(self, requests: Sequence[Request]) -> None:
        """`add` of each request in turn (the same batches, closed in the same order), with the
        requests that go to one batch in a row written with one write each for data and index."""
        i, n = 0, len(requests)
        while i < n:
            first = requests[i]
            provider, group = first.provider, first.group
            slot = (provider, group)
            batch = self._open.get(slot)
            if batch is None:
                self.add(first)
                i += 1
                continue
            limits = self.limits[provider]
            room, space = limits.max_requests - batch.requests, limits.max_bytes - batch.bytes
            # Only an embeddings group carries inputs: other runs skip the count.
            most = limits.max_inputs
            carried = _INPUTS.get(provider)
            counted = most is not None and carried is not None and group.startswith(carried[0])
            inputs_room = (most or 0) - batch.inputs
            j, size, inputs = i, 0, 0
            while j < n:
                request = requests[j]
                if request.provider != provider or request.group != group:
                    break
                length = len(request.payload)
                if j - i >= room or size + length > space:
                    break
                if counted:
                    weight = _inputs(request)
                    if inputs + weight > inputs_room:
                        break
                    inputs += weight
                size += length
                j += 1
            if j == i:  # the batch is full: `add` closes it and opens the next
                self.add(first)
                i += 1
                continue
            run = requests[i:j]
            if batch.data is None:
                pairs = zip(map(_LINE, run), map(len, map(_PAYLOAD, run)), strict=True)
                batch.index.write(array(SIZES_INDEX, itertools.chain.from_iterable(pairs)).tobytes())
            else:
                batch.data.write(b"".join(map(_PAYLOAD, run)))
                batch.index.write("".join([f"{r.custom_id}\t{r.line}\n" for r in run]).encode())
            batch.requests += j - i
            batch.bytes += size
            batch.inputs += inputs
            i = j

    def finish(self) -> None:
        for slot in sorted(self._open):
            self._close(slot, last=True)
        for slot in sorted(self._held):
            self.on_batch(self._held.pop(slot))

    def _close(self, slot: tuple[str, str], last: bool = False) -> None:
        batch = self._open.pop(slot)
        if batch.data is not None:
            batch.data.close()
        batch.index.close()
        n = self._count.get(batch.provider, 0) + 1
        self._count[batch.provider] = n
        planned = PlannedBatch(
            key=f"{self.key_prefix}{batch.provider}-{n:04d}",
            provider=batch.provider,
            group=batch.group,
            model=batch.model,
            requests=batch.requests,
            bytes=batch.bytes,
            path="" if batch.data is None else batch.data.name,
            index_path=batch.index.name,
        )
        minimum = self.limits[batch.provider].min_requests
        if minimum <= 1:
            self.on_batch(planned)
            return
        held = self._held.pop(slot, None)
        if last and held is not None and planned.requests < minimum:
            rebalance(held, planned, minimum, self.limits[batch.provider], self.tmpdir)
        if held is not None:
            self.on_batch(held)
        if last:
            self.on_batch(planned)
        else:
            self._held[slot] = planned


def rebalance(full: PlannedBatch, tail: PlannedBatch, minimum: int, limits: BatchLimits, tmpdir: str | None) -> None:
    """Move requests from the end of `full` to `tail` until `tail` has `minimum` of them, if `full`
    keeps at least as many and `tail` stays within the byte limit; otherwise leave both alone.
    Streams the files: memory holds the moved requests only (fewer than `minimum`)."""
    need = minimum - tail.requests
    if full.requests - need < minimum:
        return
    keep = full.requests - need
    moved: list[tuple[bytes, bytes]] = []
    data_out = tempfile.NamedTemporaryFile(dir=tmpdir, suffix=".jsonl", delete=False)  # noqa: SIM115
    index_out = tempfile.NamedTemporaryFile(dir=tmpdir, suffix=".idx", delete=False)  # noqa: SIM115
    kept_bytes = ENVELOPE_BYTES
    with open(full.path, "rb") as data, open(full.index_path, "rb") as index, data_out, index_out:
        for n, (payload, entry) in enumerate(zip(data, index, strict=True)):
            if n < keep:
                data_out.write(payload)
                index_out.write(entry)
                kept_bytes += len(payload)
            else:
                moved.append((payload, entry))
    moved_bytes = sum(len(payload) for payload, _ in moved)
    if tail.bytes + moved_bytes > limits.max_bytes:
        for path in (data_out.name, index_out.name):
            os.unlink(path)
        return
    with open(tail.path, "ab") as data, open(tail.index_path, "ab") as index:
        for payload, entry in moved:
            data.write(payload)
            index.write(entry)
    for path in (full.path, full.index_path):
        os.unlink(path)
    full.path, full.index_path, full.requests, full.bytes = data_out.name, index_out.name, keep, kept_bytes
    tail.requests += need
    tail.bytes += moved_bytes
