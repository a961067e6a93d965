"""Splitting valid requests into provider batches that respect each provider's limits and rules.

Requests are spilled to one temporary file per open batch, so memory stays flat whatever the input
size: a batch is closed (and handed to `on_batch`) when the next request would pass its request or
byte limit, and the rest are closed at the end. The plan is deterministic: the same file and limits
give the same batches with the same keys, which is what lets a retried submit find its own work.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO

from batchdrop.config import BatchLimits
from batchdrop.models import Request

# Room for the envelope a provider wraps around the lines (Anthropic: {"requests": [...]}).
ENVELOPE_BYTES = 64


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

    def discard(self) -> None:
        for p in (self.path, self.index_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


@dataclass
class _Open:
    provider: str
    group: str
    model: str
    data: IO[bytes]
    index: IO[bytes]
    requests: int = 0
    bytes: int = ENVELOPE_BYTES


@dataclass
class BatchPlanner:
    limits: Mapping[str, BatchLimits]
    on_batch: Callable[[PlannedBatch], None]
    key_prefix: str = ""
    tmpdir: str | None = None
    _open: dict[tuple[str, str], _Open] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)

    def add(self, request: Request) -> None:
        limits = self.limits[request.provider]
        slot = (request.provider, request.group)
        batch = self._open.get(slot)
        size = len(request.payload) + 1
        if batch is not None and (batch.requests + 1 > limits.max_requests or batch.bytes + size > limits.max_bytes):
            self._close(slot)
            batch = None
        if batch is None:
            batch = self._open[slot] = _Open(
                request.provider,
                request.group,
                request.model,
                tempfile.NamedTemporaryFile(dir=self.tmpdir, suffix=".jsonl", delete=False),  # noqa: SIM115
                tempfile.NamedTemporaryFile(dir=self.tmpdir, suffix=".idx", delete=False),  # noqa: SIM115
            )
        batch.data.write(request.payload)
        batch.data.write(b"\n")
        batch.index.write(b"%s\t%d\n" % (request.custom_id.encode(), request.line))
        batch.requests += 1
        batch.bytes += size

    def finish(self) -> None:
        for slot in sorted(self._open):
            self._close(slot)

    def _close(self, slot: tuple[str, str]) -> None:
        batch = self._open.pop(slot)
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
            path=batch.data.name,
            index_path=batch.index.name,
        )
        self.on_batch(planned)
