"""The one small interface every provider implements."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from batchdrop.models import BatchStatus, Outcome


@dataclass(frozen=True)
class BatchRef:
    """What a provider needs to know of one of our batches."""

    job_id: str
    key: str
    group: str
    model: str
    requests: int
    # When the intent to create it was recorded (epoch seconds): orphans are looked for after it.
    intent_at: float


class Provider(Protocol):
    name: str

    def create(self, batch: BatchRef, path: str) -> str:
        """Send the batch whose provider-format lines are in `path`; return the provider's batch id."""
        ...

    def find(self, batch: BatchRef, exclude: frozenset[str]) -> str | None:
        """The id of a batch this provider accepted for `batch` before we could record it, if any."""
        ...

    def status(self, batch_id: str) -> BatchStatus: ...

    def outcomes(self, batch_id: str, status: BatchStatus) -> Iterator[Outcome]:
        """Every result and error line the provider has for the batch, in the provider's order."""
        ...

    def cancel(self, batch_id: str) -> None: ...
