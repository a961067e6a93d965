"""The one small interface every provider implements."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from batchdrop.models import BatchStatus, Outcome

# HTTP answers that say the batch itself is wrong, so that sending it again cannot succeed: 400 (a bad
# request), 404 (no such model or path), 413 (too large), 422 (unprocessable). 401, 403, 408, 409, 429
# and 5xx are worth another try: a key or grant an operator fixes, a quota that frees up, an outage.
REFUSED_HTTP = frozenset({400, 404, 413, 422})
# Raised while the request is built from the batch file, before or inside the SDK (a number orjson
# cannot read, a name the SDK will not put in a URL): the same file fails the same way every time.
BUILD_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, UnicodeError, RecursionError)


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


class Backend(Protocol):
    """What runs a batch, as the stages look at it once it is sent: a provider's Batch API, or
    batchdrop's own real-time lane (batchdrop.realtime.lane.RealtimeLane)."""

    name: str

    def status(self, batch_id: str) -> BatchStatus: ...

    def outcomes(self, batch_id: str, status: BatchStatus) -> Iterator[Outcome]:
        """Every result and error line the provider has for the batch, in the provider's order."""
        ...

    def cancel(self, batch_id: str) -> None: ...

    def cleanup(self, batch_id: str, status: BatchStatus) -> None:
        """Delete (or set to expire) what the provider keeps for an ended batch whose outputs we have
        written (input, output and error files; Bedrock's records under work/), so that a long-lived
        stack never reaches a file or storage cap. Best effort: the caller logs what it raises."""
        ...


class Provider(Backend, Protocol):
    name: str

    def create(self, batch: BatchRef, path: str) -> str:
        """Send the batch whose provider-format lines are in `path`; return the provider's batch id."""
        ...

    def refused(self, exc: Exception) -> bool:
        """True when `exc`, raised by `create`, says the provider will never take this batch (so it ends
        now, as failed, with the provider's message); False when another attempt may succeed."""
        ...

    def over_quota(self, exc: Exception) -> bool:
        """True when `exc`, raised by `create`, says "not now": the provider's queue for the model is full
        (an enqueued-token or queue-size quota) or an input it needs is not ready yet. The batch is held
        and created again later; it is never ended as failed for that."""
        ...

    def find(self, batch: BatchRef, exclude: frozenset[str]) -> str | None:
        """The id of a batch this provider accepted for `batch` before we could record it, if any."""
        ...


# -- the real-time lane -------------------------------------------------------------------------------

# Every HTTP answer a real-time client gets, its retries by the SDK included: (status, headers with
# lower-case names). The lane's limiter (batchdrop.realtime.limiter) paces itself by them: a 429 and
# its retry-after slow it down, the rate-limit headers say how fast it may go.
Observe = Callable[[int, Mapping[str, str]], None]


class RateLimited(Exception):
    """The provider still answered 429 once the SDK's own retries (which honour retry-after) ran out:
    the request was not run, and is tried again after `retry_after` seconds (None: unknown)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RealtimeClient(Protocol):
    """One provider's real-time API, called through its official SDK's async client (bedrock-runtime's
    boto3 client in a thread). Built as `cls(settings: ProviderSettings, observe: Observe,
    max_retries: int)`; one per invocation, closed with `aclose`."""

    name: str

    async def call(self, payload: bytes, model: str) -> Outcome:
        """Run one request given as its provider's batch line (`payload`, as the batch file holds it)
        on the real-time API. Returns the answer as the batch API's result would carry it (the same
        response body, so batchdrop.outputs reads both alike), or an error Outcome with one of our
        codes: `request_error` for a request the provider refuses (a 4xx other than 429, with the
        provider's message), `server_error` once 5xx, timeouts or connection errors outlast the SDK's
        retries. Raises RateLimited when 429s outlast them. Never raises anything else for a request's
        own fault."""
        ...

    async def aclose(self) -> None: ...
