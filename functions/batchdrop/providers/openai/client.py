"""OpenAI Batch API through the official SDK: upload a JSONL file, create a batch, poll, read files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import openai
import orjson

from batchdrop import models as m
from batchdrop.adapters.secrets import api_key
from batchdrop.config import ProviderSettings
from batchdrop.providers.base import BUILD_ERRORS, REFUSED_HTTP, BatchRef

STATES = {
    "validating": m.VALIDATING,
    "in_progress": m.IN_PROGRESS,
    "finalizing": m.FINALIZING,
    "cancelling": m.CANCELLING,
    "completed": m.COMPLETED,
    "failed": m.FAILED,
    "expired": m.BATCH_EXPIRED,
    "cancelled": m.BATCH_CANCELED,
}
# Error-file codes OpenAI uses for requests a batch never ran.
UNRUN = {"batch_expired": m.EXPIRED, "batch_cancelled": m.CANCELED}
META_JOB = "batchdrop_job_id"
META_BATCH = "batchdrop_batch_key"
# How far before our recorded intent a provider-side creation time may fall (clock skew).
SKEW_SECONDS = 300
# The errors.data code of a batch OpenAI took and then failed because the model's enqueued tokens were
# over the organisation's limit (openai/openai-python issue 2084), and of Azure's refused create.
OVER_QUOTA = "token_limit_exceeded"


class OpenAIProvider:
    name = "openai"
    # Batches carry our job id and batch key in metadata, so an orphan is found by its tag.
    tags_batches = True

    def __init__(self, settings: ProviderSettings, client: openai.OpenAI | None = None) -> None:
        self.settings = settings
        self._client = client

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            # The SDK retries 429s, 5xx and timeouts with exponential backoff and jitter.
            self._client = openai.OpenAI(
                api_key=api_key(self.settings.secret_arn, "OPENAI_API_KEY"),
                base_url=self.settings.base_url,
                max_retries=6,
                timeout=120,
            )
        return self._client

    def create(self, batch: BatchRef, path: str) -> str:
        endpoint = batch.group.split(" ", 1)[0]
        with open(path, "rb") as f:
            uploaded = self.client.files.create(file=(f"{batch.job_id}-{batch.key}.jsonl", f), purpose="batch")
        # Sent once, unlike every other call: a create whose answer was lost may have made the batch,
        # and a blind retry would make a second one, billed and never tracked. The caller's retry
        # looks for it first (`find`, by our metadata).
        created = self.client.with_options(max_retries=0).batches.create(
            input_file_id=uploaded.id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            metadata={META_JOB: batch.job_id, META_BATCH: batch.key},
        )
        return created.id

    def refused(self, exc: Exception) -> bool:
        if isinstance(exc, openai.APIStatusError):
            # openai.BadRequestError (400), NotFoundError (404), UnprocessableEntityError (422), and 413.
            # Azure's fail-fast quota answer is a 400 with code token_limit_exceeded: "not now", not "never".
            return exc.status_code in REFUSED_HTTP and getattr(exc, "code", None) != OVER_QUOTA
        return isinstance(exc, BUILD_ERRORS) and not isinstance(exc, openai.OpenAIError)

    def over_quota(self, exc: Exception) -> bool:
        # Azure's fail-fast regions answer a create over the enqueued-token quota with 400
        # token_limit_exceeded (learn.microsoft.com/azure/ai-foundry/openai/how-to/batch, "Batch limits").
        return isinstance(exc, openai.APIStatusError) and getattr(exc, "code", None) == OVER_QUOTA

    def cleanup(self, batch_id: str, status: m.BatchStatus) -> None:
        """Delete the batch's input, output and error files: OpenAI keeps them (a batch input file for
        30 days, file_create_params.py) and Azure counts them against its 500-file cap."""
        raw = status.raw
        if "input_file_id" not in raw:  # a status recorded before it carried the input file
            raw = self.status(batch_id).raw
        for key in ("input_file_id", "output_file_id", "error_file_id"):
            file_id = raw.get(key)
            if file_id:
                with contextlib.suppress(openai.NotFoundError):  # already deleted, or expired
                    self.client.files.delete(file_id)

    def find(self, batch: BatchRef, exclude: frozenset[str]) -> str | None:
        for candidate in self.client.batches.list(limit=100):
            if created_at(candidate.created_at) < batch.intent_at - SKEW_SECONDS:
                return None  # newest first: everything further is older than our intent
            meta = candidate.metadata or {}
            if (
                meta.get(META_JOB) == batch.job_id
                and meta.get(META_BATCH) == batch.key
                and candidate.id not in exclude
                and not over_quota(candidate)
            ):
                return candidate.id
        return None

    def status(self, batch_id: str) -> m.BatchStatus:
        b = self.client.batches.retrieve(batch_id)
        counts = b.request_counts
        error = None
        if b.errors and b.errors.data:
            error = "; ".join(f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "") for e in b.errors.data)
        return m.BatchStatus(
            state=STATES.get(b.status, m.IN_PROGRESS),
            provider_status=b.status,
            total=counts.total if counts else None,
            done=counts.completed if counts else None,
            failed=counts.failed if counts else None,
            error=error,
            raw={
                "input_file_id": b.input_file_id,
                "output_file_id": b.output_file_id,
                "error_file_id": b.error_file_id,
            },
            over_quota=b.status == "failed" and over_quota(b),
        )

    def outcomes(self, batch_id: str, status: m.BatchStatus) -> Iterator[m.Outcome]:
        for key in ("output_file_id", "error_file_id"):
            file_id = status.raw.get(key)
            if file_id:
                for line in self._lines(file_id):
                    yield _outcome(orjson.loads(line))

    def cancel(self, batch_id: str) -> None:
        self.client.batches.cancel(batch_id)

    def _lines(self, file_id: str) -> Iterator[bytes]:
        # Streamed: files.content() would hold a 200 MB output file in memory.
        with self.client.files.with_streaming_response.content(file_id) as response:
            rest = b""
            for chunk in response.iter_bytes(1 << 20):
                parts = (rest + chunk).split(b"\n")
                rest = parts.pop()
                yield from (p for p in parts if p.strip())
            if rest.strip():
                yield rest


def over_quota(batch: openai.types.Batch) -> bool:
    """The batch failed, without running, because the model's enqueued-token quota was full: it is
    created again later under the same tags, so it is never the batch `find` looks for."""
    return bool(batch.errors and batch.errors.data and any(e.code == OVER_QUOTA for e in batch.errors.data))


def created_at(value: int | float | str) -> float:
    """A batch's created_at as epoch seconds: an integer, or (some Azure API versions) an ISO 8601 string."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return float(value)


def _outcome(line: dict[str, Any]) -> m.Outcome:
    custom_id = str(line.get("custom_id"))
    response = line.get("response") or None
    error = line.get("error") or None
    if response and response.get("status_code") == 200 and not error:
        return m.Outcome(custom_id, ok=True, response=response.get("body") or {})
    if error and error.get("code") in UNRUN:
        return m.Outcome(
            custom_id,
            ok=False,
            code=UNRUN[error["code"]],
            message=error.get("message") or error["code"],
            detail=line,
        )
    status_code = (response or {}).get("status_code")
    body_error = ((response or {}).get("body") or {}).get("error") or {}
    message = body_error.get("message") or (error or {}).get("message") or f"HTTP {status_code}"
    code = m.SERVER_ERROR if status_code is None or status_code >= 500 or status_code == 429 else m.REQUEST_ERROR
    return m.Outcome(custom_id, ok=False, code=code, message=message, detail=line)
