"""The batch every emulated provider runs on: its requests, their drawn outcomes, and its life.

A batch is created with its requests' outcomes already drawn (`canned.draw_request_outcome`), and moves
on with the clock: its requests finish between 10% and 90% of the latency, and it ends at the latency
(completed, or expired if drawn to expire), at 10% if its input was invalid (failed), or at the first
look after a cancel (cancelled). Each provider shows this life in its own statuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatchRequest:
    custom_id: str
    body: dict[str, Any]  # OpenAI: the line's body; Anthropic: params; Gemini: the request; Bedrock: the record
    finish_fraction: float
    failure: str | None


@dataclass
class Batch:
    provider: str
    id: str
    created: float
    latency: float
    expires: bool
    requests: list[BatchRequest]
    custom_ids: list[str]
    line_count: int
    metadata: dict[str, str] | None = None
    endpoint: str = ""
    input_file_id: str = ""
    model: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    cancel_at: float | None = None
    ended_at: float | None = None
    end_kind: str | None = None  # completed | expired | cancelled | failed
    outcomes: dict[str, str] = field(default_factory=dict)  # custom_id → succeeded|refused|...|canceled
    usage: tuple[int, int] = (0, 0)
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: bytes = b""

    def finish_time(self, request: BatchRequest) -> float:
        # Requests finish while the batch is in progress: between 10% and 90% of the latency.
        return self.created + self.latency * (0.1 + 0.8 * request.finish_fraction)

    def finished_by(self, request: BatchRequest, at: float) -> bool:
        if self.expires and request.finish_fraction > 0.5:
            return False
        return at >= self.finish_time(request)

    def phase_time(self, fraction: float) -> float:
        return self.created + self.latency * fraction

    def finished(self, at: float) -> tuple[int, int]:
        """(succeeded, failed): the requests of a running batch that are done by `at`."""
        succeeded = failed = 0
        for request in self.requests:
            if self.finished_by(request, at):
                if request.failure is None:
                    succeeded += 1
                else:
                    failed += 1
        return succeeded, failed

    def advance(self, now: float) -> bool:
        """End the batch if its time has come, or if a cancel was requested.

        True when it has just ended with its requests' outcomes drawn: its provider writes the results
        then (never for a failed batch, which ran nothing).
        """
        if self.end_kind is not None:
            return False
        if self.cancel_at is not None:
            # The cancel was answered with `cancelling`; the next look finds it done.
            return self._end(max(now, self.cancel_at), "cancelled")
        if self.errors:
            if now >= self.phase_time(0.1):
                return self._end(self.phase_time(0.1), "failed")
            return False
        if now >= self.phase_time(1.0):
            return self._end(self.phase_time(1.0), "expired" if self.expires else "completed")
        return False

    def _end(self, at: float, kind: str) -> bool:
        self.ended_at = at
        self.end_kind = kind
        if kind == "failed":
            return False
        for request in self.requests:
            if kind == "cancelled":
                done = self.cancel_at is not None and self.finished_by(request, self.cancel_at)
                missing = "canceled"
            else:
                done = self.finished_by(request, at)
                missing = "expired"
            self.outcomes[request.custom_id] = (request.failure or "succeeded") if done else missing
        return True
