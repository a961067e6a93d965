"""Gemini Batch Mode (the Gemini Developer API) through the official google-genai SDK: upload a JSONL file,
create a batch from it, poll, stream the responses file."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import orjson
from google import genai
from google.genai import errors, types

from batchdrop import models as m
from batchdrop.adapters.secrets import api_key
from batchdrop.config import ProviderSettings, tmpdir
from batchdrop.providers.base import BUILD_ERRORS, REFUSED_HTTP, BatchRef

logger = logging.getLogger(__name__)

# Google documents Batch Mode under v1beta (the SDK's default is v1).
API_VERSION = "v1beta"
# The MIME type the Batch Mode guide uploads its JSONL input with.
MIME_TYPE = "jsonl"
# The SDK's JobState names (it maps the REST BATCH_STATE_* to JOB_STATE_*).
STATES = {
    "JOB_STATE_QUEUED": m.VALIDATING,
    "JOB_STATE_PENDING": m.VALIDATING,
    "JOB_STATE_RUNNING": m.IN_PROGRESS,
    "JOB_STATE_UPDATING": m.IN_PROGRESS,
    "JOB_STATE_CANCELLING": m.CANCELLING,
    "JOB_STATE_SUCCEEDED": m.COMPLETED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": m.COMPLETED,
    "JOB_STATE_FAILED": m.FAILED,
    "JOB_STATE_CANCELLED": m.BATCH_CANCELED,
    "JOB_STATE_EXPIRED": m.BATCH_EXPIRED,
}
# Per-request errors worth a retry in a new batch. Lines carry a google.rpc.Status: a gRPC code (below 100)
# and a message; an HTTP code or a status name is read the same way.
# gRPC codes: UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE.
RETRYABLE_GRPC = frozenset({2, 4, 8, 10, 13, 14})
RETRYABLE_STATUS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNAVAILABLE"}
)
# HTTP answers the SDK and our own loops retry.
RETRYABLE_HTTP = (408, 429, 500, 502, 503, 504)
# Gemini documents no limit for a batch's display name; we stay well within what Google takes elsewhere.
MAX_DISPLAY_NAME = 128
SKEW_SECONDS = 300
LIST_PAGE_SIZE = 100


def _http_errors(name: str) -> tuple[type[Exception], ...]:
    """An exception class of the HTTP client under the SDK (httpx, or httpx2 in newer SDKs), by name."""
    found: list[type[Exception]] = []
    for module in ("httpx", "httpx2"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


# Connection failures and timeouts; and the refusal of a URL the client cannot build (a model name too
# long or malformed for a path).
TRANSPORT_ERRORS = _http_errors("TransportError")
URL_ERRORS = _http_errors("InvalidURL")
RETRIED: tuple[type[Exception], ...] = (errors.APIError, *TRANSPORT_ERRORS)

T = TypeVar("T")


class GeminiProvider:
    name = "gemini"
    # Batches carry a display name naming our job and batch, so an orphan is found by its name.
    tags_batches = True
    # Our own retries around the two transfers the SDK's retry options do not cover: the upload (its data
    # requests are tried 3 times, 1-4 s apart, then the upload fails) and the download (not retried).
    retry_attempts = 6
    retry_initial_delay = 1.0
    retry_max_delay = 30.0

    def __init__(self, settings: ProviderSettings, client: genai.Client | None = None) -> None:
        self.settings = settings
        self._client = client

    @property
    def client(self) -> genai.Client:
        if self._client is None:
            # The SDK retries 408, 429, 5xx, timeouts and connection errors with exponential backoff and
            # jitter (tenacity): here 6 attempts, 1 s doubling to at most 60 s.
            self._client = genai.Client(
                api_key=api_key(self.settings.secret_arn, "GEMINI_API_KEY"),
                http_options=types.HttpOptions(
                    base_url=self.settings.base_url,  # None: Google's own endpoint
                    api_version=API_VERSION,
                    timeout=300_000,  # milliseconds
                    retry_options=types.HttpRetryOptions(
                        attempts=6, initial_delay=1.0, max_delay=60.0, exp_base=2.0, jitter=1.0
                    ),
                ),
            )
        return self._client

    def create(self, batch: BatchRef, path: str) -> str:
        display_name = batch_display_name(batch)
        upload = types.UploadFileConfig(
            display_name=f"{display_name}.jsonl",
            mime_type=MIME_TYPE,
            # Not 429: a full project (its 20 GB of files) stays full until batches end and their files are
            # deleted, minutes or hours away; retrying it here would hold the invocation for minutes
            # before the batch is held (over_quota) and offered again later.
            http_options=types.HttpOptions(
                retry_options=types.HttpRetryOptions(
                    attempts=6,
                    initial_delay=1.0,
                    max_delay=60.0,
                    exp_base=2.0,
                    jitter=1.0,
                    http_status_codes=[code for code in RETRYABLE_HTTP if code != 429],
                )
            ),
        )
        # A failed upload leaves no batch behind, so it is safe to send again.
        uploaded = self._retrying(lambda: self.client.files.upload(file=path, config=upload), quota_final=True)
        if not uploaded.name:
            raise RuntimeError("Gemini accepted the upload but returned no file name")
        try:
            created = self.client.batches.create(
                model=batch.model,
                src=uploaded.name,
                # Sent once: a create whose answer was lost may have made a batch, and a blind retry would
                # make a second, billed and never tracked. The caller's retry looks for it first (`find`).
                config=types.CreateBatchJobConfig(
                    display_name=display_name,
                    http_options=types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1)),
                ),
            )
        except errors.APIError as exc:
            if self.over_quota(exc) or self.refused(exc):
                # Gemini answered, and made no batch of it: the upload would only count against the
                # project's 20 GB for 48 hours (and a batch refused for now is uploaded again later).
                with contextlib.suppress(Exception):
                    self.client.files.delete(name=uploaded.name)
            raise
        if not created.name:
            raise RuntimeError("Gemini accepted the batch but returned no name")
        return created.name

    def refused(self, exc: Exception) -> bool:
        if isinstance(exc, errors.APIError):
            # errors.ClientError carries the HTTP code: 400 INVALID_ARGUMENT, 404 NOT_FOUND (no such model).
            return exc.code in REFUSED_HTTP
        # The SDK refuses a model name it will not put in `models/<name>:batchGenerateContent` (`..`, `?`)
        # with a ValueError before sending; httpx refuses a URL it cannot build.
        return isinstance(exc, (*BUILD_ERRORS, *URL_ERRORS))

    def over_quota(self, exc: Exception) -> bool:
        # 429 RESOURCE_EXHAUSTED: the model's "Batch Enqueued Tokens" are at the project's limit
        # (ai.google.dev/gemini-api/docs/rate-limits), or the project's files fill its 20 GB
        # (ai.google.dev/gemini-api/docs/files): both free up as batches end and files are deleted.
        return isinstance(exc, errors.APIError) and (exc.code == 429 or exc.status == "RESOURCE_EXHAUSTED")

    def cleanup(self, batch_id: str, status: m.BatchStatus) -> None:
        """Delete the batch's uploaded input and its responses file: the project's files count against its
        20 GB until Google deletes them after 48 hours, and a busy stack would reach that first."""
        raw = status.raw
        if "input_file" not in raw:
            raw = self.status(batch_id).raw
        for name in (raw.get("input_file"), raw.get("responses_file")):
            if not name:
                continue
            try:
                self.client.files.delete(name=str(name))
            except errors.ClientError as exc:
                # Gone already (a cleanup that ran twice, or Google's 48-hour expiry): Google answers a
                # missing file with 403 PERMISSION_DENIED ("or it may not exist") or 404.
                if exc.code not in (403, 404):
                    raise

    def find(self, batch: BatchRef, exclude: frozenset[str]) -> str | None:
        """The batch whose display name is ours. Gemini does not document the order of its list, so every
        page is read (batches created well before our intent are skipped, not taken as the end)."""
        wanted = batch_display_name(batch)
        pager = self.client.batches.list(config=types.ListBatchJobsConfig(page_size=LIST_PAGE_SIZE))
        for candidate in pager:
            if candidate.display_name != wanted or not candidate.name or candidate.name in exclude:
                continue
            created = candidate.create_time
            if created is not None and created.timestamp() < batch.intent_at - SKEW_SECONDS:
                continue
            return candidate.name
        return None

    def status(self, batch_id: str) -> m.BatchStatus:
        operation = self._operation(batch_id)
        meta = operation.get("metadata") or {}
        provider_status = _job_state(str(meta.get("state") or "BATCH_STATE_UNSPECIFIED"))
        state = STATES.get(provider_status, m.IN_PROGRESS)
        stats = meta.get("batchStats") or {}
        total = _count(stats, "requestCount")
        succeeded = _count(stats, "successfulRequestCount") or 0
        failed = _count(stats, "failedRequestCount") or 0
        error = None
        if state == m.FAILED:
            error = str((operation.get("error") or {}).get("message") or "") or "Gemini failed the batch"
        output = meta.get("output") or operation.get("response") or {}
        return m.BatchStatus(
            state=state,
            provider_status=provider_status,
            total=total,
            done=succeeded + failed if total is not None else None,
            failed=failed if total is not None else None,
            error=error,
            raw={
                "responses_file": output.get("responsesFile"),
                "input_file": (meta.get("inputConfig") or {}).get("fileName"),
            },
        )

    def outcomes(self, batch_id: str, status: m.BatchStatus) -> Iterator[m.Outcome]:
        """One outcome a line of the responses file; requests without a line (they never ran) are left to
        the caller, which knows them from the batch's state."""
        file_name = status.raw.get("responses_file")
        if not file_name:
            return
        # files.download returns the whole file as bytes unless given a destination, which it streams to:
        # spool it to local disk (the function's ephemeral storage) rather than hold up to 2 GB in memory.
        with tempfile.TemporaryFile(dir=tmpdir()) as spool:
            self._download(str(file_name), cast(io.IOBase, spool))
            spool.seek(0)
            for raw in spool:
                if raw.strip():
                    yield _outcome(orjson.loads(raw))

    def cancel(self, batch_id: str) -> None:
        self.client.batches.cancel(name=batch_id)

    def _operation(self, batch_id: str) -> dict[str, Any]:
        """The batch's REST Operation as JSON, through the SDK's own request path (auth, base URL, retries).

        `batches.get` would do for the state, but for the Developer API the SDK drops `batchStats` and the
        Operation's `error` (its `_BatchJob_from_mldev` converter keeps neither), and a failed batch's
        reason is what tells a user what to fix."""
        if not batch_id.startswith("batches/") or "/" in batch_id.removeprefix("batches/"):
            raise ValueError(f"not a Gemini batch name: {batch_id!r}")
        response = self.client._api_client.request("get", batch_id, {})
        body = orjson.loads(response.body or "{}")
        if not isinstance(body, dict):
            raise errors.UnknownApiResponseError(f"unexpected answer for {batch_id}: {response.body!r}")
        return body

    def _download(self, file_name: str, destination: io.IOBase) -> None:
        def attempt() -> None:
            destination.seek(0)
            destination.truncate()
            self.client.files.download(file=file_name, destination=destination)

        self._retrying(attempt)

    def _retrying(self, call: Callable[[], T], quota_final: bool = False) -> T:
        """`call`, again after a transient error; with `quota_final`, a quota's 429 is given to the caller
        at once (the batch is held, not retried here)."""
        delay = self.retry_initial_delay
        for attempt in range(1, self.retry_attempts + 1):
            try:
                return call()
            except RETRIED as exc:
                transient = not isinstance(exc, errors.APIError) or exc.code in RETRYABLE_HTTP
                if quota_final and self.over_quota(exc):
                    raise
                if not transient or attempt == self.retry_attempts:
                    raise
                logger.info("retrying a Gemini call after %s", type(exc).__name__, extra={"attempt": attempt})
            time.sleep(delay)
            delay = min(delay * 2, self.retry_max_delay)
        raise AssertionError("unreachable")


def batch_display_name(batch: BatchRef) -> str:
    """`batchdrop-<job id>-<batch key>`, shortened deterministically (a hash of the whole) if too long."""
    name = f"batchdrop-{batch.job_id}-{batch.key}"
    if len(name) <= MAX_DISPLAY_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[: MAX_DISPLAY_NAME - len(digest) - 1]}-{digest}"


def _job_state(state: str) -> str:
    """REST BATCH_STATE_X as the SDK names it (JOB_STATE_X), as its `t_job_state` does."""
    return "JOB_STATE_" + state.removeprefix("BATCH_STATE_") if state.startswith("BATCH_STATE_") else state


def _count(stats: dict[str, Any], name: str) -> int | None:
    """An int64 of BatchStats: a JSON string, left out when zero (proto3 JSON)."""
    value = stats.get(name)
    if value is None:
        return 0 if stats else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _outcome(line: dict[str, Any]) -> m.Outcome:
    key = str(line.get("key"))
    response = line.get("response")
    error = line.get("error") or line.get("status")
    if isinstance(response, dict) and not error:
        return m.Outcome(key, ok=True, response=response)
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    name = str(error.get("status") or "")
    if isinstance(code, int) and code >= 100:  # an HTTP status
        retryable = code in RETRYABLE_HTTP or code >= 500
    else:
        retryable = code in RETRYABLE_GRPC or name in RETRYABLE_STATUS
    message = str(error.get("message") or name or f"code {code}") if error else "the line holds no response"
    return m.Outcome(
        key,
        ok=False,
        code=m.SERVER_ERROR if retryable else m.REQUEST_ERROR,
        message=message,
        detail=line,
    )
