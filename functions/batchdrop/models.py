"""The shapes batchdrop passes between its layers, by role.

Input lines become a `Request` (valid, in the provider's own batch-line format) or an `Invalid`.
Provider answers become an `Outcome`. Output lines are built from those in `batchdrop.outputs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

# Validation error codes (docs/contract.md "Input lines").
INVALID_ENCODING = "invalid_encoding"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_FORMAT = "unknown_format"
MISSING_CUSTOM_ID = "missing_custom_id"
INVALID_CUSTOM_ID = "invalid_custom_id"
DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
MISSING_MODEL = "missing_model"
UNKNOWN_PROVIDER = "unknown_provider"
UNSUPPORTED_ENDPOINT = "unsupported_endpoint"
INVALID_REQUEST = "invalid_request"
REQUEST_TOO_LARGE = "request_too_large"
# A valid line that was not sent because on_invalid=reject refused its file. docs/contract.md has no code
# for it, yet every line must land in exactly one output file and `lines == invalid + submitted`.
FILE_REJECTED = "file_rejected"
# A valid line for a provider with a minimum batch size (Bedrock) whose file has too few such lines,
# and no fallback provider configured to take them.
BATCH_TOO_SMALL = "batch_too_small"
# A table job's row that did not render into a request (docs/contract.md, "Table jobs"): its template
# names a value the row lacks, or fails on it; or a CSV line of the wrong width.
TEMPLATE_ERROR = "template_error"
INVALID_ROW = "invalid_row"
# A valid line not sent because sending it would have passed the file's budget or a monthly cap, under the
# `truncate` policy (docs/budgets.md): the first requests that fit were sent.
OVER_BUDGET = "over_budget"

VALIDATION_CODES = (
    INVALID_ENCODING,
    INVALID_JSON,
    NOT_AN_OBJECT,
    UNKNOWN_FORMAT,
    MISSING_CUSTOM_ID,
    INVALID_CUSTOM_ID,
    DUPLICATE_CUSTOM_ID,
    MISSING_MODEL,
    UNKNOWN_PROVIDER,
    UNSUPPORTED_ENDPOINT,
    INVALID_REQUEST,
    REQUEST_TOO_LARGE,
)
# The codes only a table job's rows get, besides the above.
TABLE_ROW_CODES = (TEMPLATE_ERROR, INVALID_ROW)

# Provider-stage error codes (docs/contract.md "Outputs").
REQUEST_ERROR = "request_error"
SERVER_ERROR = "server_error"
EXPIRED = "expired"
CANCELED = "canceled"
BATCH_FAILED = "batch_failed"
# The request asked for a JSON Schema and its answer is not JSON or does not match it (docs/contract.md
# "Structured outputs"). Not retried: the model answered, and was paid for it.
SCHEMA_MISMATCH = "schema_mismatch"
# Worth another attempt in a new batch: the request itself was not at fault.
RETRYABLE_CODES = frozenset({SERVER_ERROR, EXPIRED})


# A msgspec Struct rather than a dataclass: one is built per valid line, and a Struct is built in C
# (twice as fast); gc=False because it holds only strings, bytes and numbers.
class Request(msgspec.Struct, gc=False):
    """A valid input line, already in its provider's batch-line format (`payload`, ending in one
    newline, as it goes into a batch file)."""

    line: int
    custom_id: str
    provider: str
    # What must be equal for two requests to share a batch (OpenAI: endpoint and model).
    group: str
    model: str
    payload: bytes
    # The embedding inputs it carries, which OpenAI limits per batch as well as requests (an OpenAI
    # /v1/embeddings line: one per string or token array of body.input); 0 for any other request.
    # The planner closes a batch before they would pass the provider's limit.
    inputs: int = 0


@dataclass(slots=True)
class Invalid:
    line: int
    custom_id: str | None
    code: str
    message: str


# Batch states, normalised across providers.
PENDING = "pending"  # planned and stored, not yet sent
SUBMITTING = "submitting"  # intent recorded; the provider may or may not have it
# Planned, and waiting for room in the provider's queue: our cap on what is enqueued at the provider
# was full, or the provider answered "not now" (an enqueued-token or queue quota). The poll offers it
# to the submit function again with backoff; it is never failed for that.
HELD = "held"
VALIDATING = "validating"
IN_PROGRESS = "in_progress"
FINALIZING = "finalizing"
CANCELLING = "cancelling"
COMPLETED = "completed"
FAILED = "failed"
BATCH_EXPIRED = "expired"
BATCH_CANCELED = "canceled"
TERMINAL_BATCH_STATES = frozenset({COMPLETED, FAILED, BATCH_EXPIRED, BATCH_CANCELED})

# The lanes a request can take (docs/contract.md "Lanes and deadlines"): a provider's Batch API at half
# price, or its real-time API at full price, run by batchdrop's own worker pool.
LANE_BATCH = "batch"
LANE_REALTIME = "realtime"
# Not a lane a request is sent in: the item of a job's requests answered from the response cache
# (docs/cache.md), stored like a batch (an index and a data file of the answers) and ended as planned.
LANE_CACHE = "cache"


def lane_of(batch: dict[str, Any]) -> str:
    return str(batch.get("lane") or LANE_BATCH)


def batch_done(batch: dict[str, Any]) -> bool:
    """The batch has ended and nothing more will come of it: an escalated batch (canceled before its
    deadline) is done only once its unfinished requests have their real-time batches."""
    if batch.get("status") not in TERMINAL_BATCH_STATES:
        return False
    return not (batch.get("escalated") and not batch.get("replacement_planned"))


# Job states.
JOB_SUBMITTING = "submitting"
JOB_SUBMITTED = "submitted"
JOB_COMPLETING = "completing"
JOB_COMPLETED = "completed"
JOB_PARTIAL = "partial"
JOB_FAILED = "failed"
JOB_REJECTED = "rejected"
JOB_CANCELED = "canceled"
FINAL_JOB_STATES = frozenset({JOB_COMPLETED, JOB_PARTIAL, JOB_FAILED, JOB_REJECTED, JOB_CANCELED})


@dataclass(slots=True)
class BatchStatus:
    """What a provider says of one batch, in our terms."""

    state: str
    provider_status: str
    total: int | None = None
    done: int | None = None
    failed: int | None = None
    # The provider's own reason when the whole batch failed, e.g. OpenAI's errors.data.
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    # The provider ended the batch without running it because a queue quota was full (OpenAI's
    # `failed` with errors.data[].code "token_limit_exceeded"): not a failure, the batch is held and
    # created again later.
    over_quota: bool = False

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_BATCH_STATES


@dataclass(slots=True)
class Outcome:
    """One request's result from a provider: a success body, or an error with one of our codes."""

    custom_id: str
    ok: bool
    response: dict[str, Any] | None = None
    code: str | None = None
    message: str | None = None
    detail: Any = None


@dataclass(frozen=True, slots=True)
class InputObject:
    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    size: int | None
    # Not part of the job's record of its input: the object's user metadata (the per-file options)
    # and when it was uploaded (what a deadline given as a duration counts from).
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)
    uploaded_at: float | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "version_id": self.version_id,
            "etag": self.etag,
            "size": self.size,
        }
