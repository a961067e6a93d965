"""Anthropic Message Batches through the official SDK: requests inline, results streamed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import anthropic
import orjson

from batchdrop import models as m
from batchdrop.adapters.secrets import api_key
from batchdrop.config import ProviderSettings
from batchdrop.providers.base import BUILD_ERRORS, REFUSED_HTTP, BatchRef

# Error types worth a retry in a new batch; the rest say the request itself is wrong.
RETRYABLE_TYPES = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})
SKEW_SECONDS = 300


class AnthropicProvider:
    name = "anthropic"
    # No metadata on Message Batches: creates are serialised and orphans matched by time and size.
    tags_batches = False

    def __init__(self, settings: ProviderSettings, client: anthropic.Anthropic | None = None) -> None:
        self.settings = settings
        self._client = client

    @property
    def client(self) -> anthropic.Anthropic:
        if self._client is None:
            self._client = anthropic.Anthropic(
                api_key=api_key(self.settings.secret_arn, "ANTHROPIC_API_KEY"),
                base_url=self.settings.base_url,
                max_retries=6,
                timeout=300,
            )
        return self._client

    def create(self, batch: BatchRef, path: str) -> str:
        # Inline requests: the batch is in memory while it is sent, bounded by the byte limit.
        with open(path, "rb") as f:
            requests = [orjson.loads(line) for line in f if line.strip()]
        # Sent once, unlike every other call: a create whose answer was lost may have made the batch,
        # and a blind retry would make a second one. The caller's retry looks for it first (`find`).
        created = self.client.with_options(max_retries=0).messages.batches.create(requests=requests)
        return created.id

    def refused(self, exc: Exception) -> bool:
        if isinstance(exc, anthropic.APIStatusError):
            # anthropic.BadRequestError (400 invalid_request_error), NotFoundError (404),
            # RequestTooLargeError (413), UnprocessableEntityError (422). A 429 (the queue limit) is "not now".
            return exc.status_code in REFUSED_HTTP
        return isinstance(exc, BUILD_ERRORS) and not isinstance(exc, anthropic.AnthropicError)

    def over_quota(self, exc: Exception) -> bool:
        # A 429 at create: the requests waiting in the organisation's batches are at the queue limit
        # (docs.anthropic.com/en/api/rate-limits, "Message Batches API").
        return isinstance(exc, anthropic.RateLimitError)

    def cleanup(self, batch_id: str, status: m.BatchStatus) -> None:
        """Delete the ended batch: Anthropic keeps nothing else of it (its requests were inline) and would
        otherwise keep its results for 29 days. Only an ended batch can be deleted (the SDK's
        messages.batches.delete: "If you'd like to delete an in-progress batch, you must first cancel it")."""
        if not status.terminal:
            return
        try:
            self.client.messages.batches.delete(batch_id)
        except anthropic.NotFoundError:
            return  # deleted already (a cleanup that ran twice)

    def find(self, batch: BatchRef, exclude: frozenset[str]) -> str | None:
        """Anthropic batches carry no metadata: adopt the newest batch created after our intent with
        our request count that no other batch of ours has claimed."""
        for candidate in self.client.messages.batches.list(limit=100):
            created = _epoch(candidate.created_at)
            if created < batch.intent_at - SKEW_SECONDS:
                return None
            c = candidate.request_counts
            total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
            if total == batch.requests and candidate.id not in exclude and created >= batch.intent_at - 5:
                return candidate.id
        return None

    def status(self, batch_id: str) -> m.BatchStatus:
        b = self.client.messages.batches.retrieve(batch_id)
        c = b.request_counts
        total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
        if b.processing_status == "ended":
            state = m.BATCH_CANCELED if b.cancel_initiated_at else m.COMPLETED
        elif b.processing_status == "canceling":
            state = m.CANCELLING
        else:
            state = m.IN_PROGRESS
        return m.BatchStatus(
            state=state,
            provider_status=b.processing_status,
            total=total,
            done=total - c.processing,
            failed=c.errored + c.expired + c.canceled,
        )

    def outcomes(self, batch_id: str, status: m.BatchStatus) -> Iterator[m.Outcome]:
        for item in self.client.messages.batches.results(batch_id):
            result = item.result
            if result.type == "succeeded":
                yield m.Outcome(item.custom_id, ok=True, response=result.message.model_dump(mode="json"))
            elif result.type == "errored":
                inner = result.error.error
                code = m.SERVER_ERROR if inner.type in RETRYABLE_TYPES else m.REQUEST_ERROR
                yield m.Outcome(
                    item.custom_id,
                    ok=False,
                    code=code,
                    message=inner.message,
                    detail=item.model_dump(mode="json"),
                )
            elif result.type == "expired":
                yield m.Outcome(
                    item.custom_id,
                    ok=False,
                    code=m.EXPIRED,
                    message="the batch expired before this request ran",
                    detail=item.model_dump(mode="json"),
                )
            else:
                yield m.Outcome(
                    item.custom_id,
                    ok=False,
                    code=m.CANCELED,
                    message="the batch was canceled before this request ran",
                    detail=item.model_dump(mode="json"),
                )

    def cancel(self, batch_id: str) -> None:
        self.client.messages.batches.cancel(batch_id)


def _epoch(value: datetime | str) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp()
