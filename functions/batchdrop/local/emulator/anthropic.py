"""The Anthropic Message Batches API.

The official ``anthropic`` SDK talks to it through ``base_url`` (the emulator's root):
``/v1/messages/batches`` to create, list, retrieve, cancel and delete, and ``.../results`` for the
results (JSONL, not in input order), each an echo in the Messages API's shape.

Validation is split as Anthropic splits it (docs.anthropic.com/en/docs/build-with-claude/batch-processing:
"Validation of the params object for each message request is performed asynchronously, and validation
errors are returned when processing of the entire batch has ended"): the batch's own shape (its list of
requests, custom_id patterns, duplicates, sizes) is refused at create with a 400, while a request whose
params are wrong (an unknown model, no max_tokens, no messages, a role other than user or assistant)
is accepted and comes back as an ``errored`` result carrying an ``invalid_request_error``.

The queue limit (docs.anthropic.com/en/api/rate-limits, "Message Batches API": a maximum of batch
requests in the processing queue, across the organisation's batches) is ``max_queued_requests``: a
create that would put more requests in progress than that is a 429 ``rate_limit_error``. Off (None)
unless a test or the local stack sets it; Anthropic's Tier 1 limit is 100,000.

The Messages API itself (``POST /v1/messages``) is served for the real-time lane: its params are
checked as a batch request's are (`params_problem`, a 400 ``invalid_request_error`` here, as the API
answers at once), and the answer is the batch result's message on the standard tier. Its rate-limit
headers are Anthropic's (docs.anthropic.com/en/api/rate-limits, "Response headers"):
``anthropic-ratelimit-requests-limit``, ``-remaining``, and ``-reset`` ("the time when the rate limit
will be fully replenished, provided in RFC 3339 format"); a 429 adds ``retry-after``, "the number of
seconds to wait until you can retry the request", and ``x-should-retry: true`` (seen on Anthropic's
429s in anthropics/anthropic-sdk-typescript issue 357, which the SDKs obey: _base_client.py
`_should_retry`).
"""

from __future__ import annotations

import functools
import math
import random
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from batchdrop.local.emulator import schemas
from batchdrop.local.emulator.batches import Batch
from batchdrop.local.emulator.canned import REFUSED, SERVER_ERROR, anthropic_message, hex_id, iso
from batchdrop.local.emulator.core import Admission, Emulator, Plugin, Route
from batchdrop.local.emulator.realtime import read_call, serve_call, whole_seconds
from batchdrop.local.emulator.web import (
    MB,
    ClientError,
    has_api_key,
    json_response,
    page_limit,
    parse_json_body,
    stream,
)

DAY = 24 * 3600
# The models the emulator runs: any Claude model name. Any other is refused per request, in the results.
KNOWN_MODEL = re.compile(r"claude-[a-z0-9][a-z0-9.-]*")
# The Messages API's roles (anthropic/types/message_param.py: Literal["user", "assistant"]).
ROLES = ("user", "assistant")
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# HTTP status → the error type Anthropic puts in its error bodies.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
}


class AnthropicEmulation(Plugin):
    """Anthropic's Message Batches API (see the module)."""

    provider = "anthropic"
    prefixes = ("/v1/messages",)
    creates = re.compile(r"/v1/messages/batches")
    request_id_header = "request-id"

    def __init__(self, emulator: Emulator) -> None:
        super().__init__(emulator)
        # Anthropic's limits, as instance attributes so tests can lower them.
        self.max_requests = 100_000
        self.max_bytes = 256 * MB
        # Requests that may wait in the organisation's unended batches (None: no limit).
        self.max_queued_requests: int | None = None
        self._deleted: set[str] = set()

    # -- the plugin ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            ("POST", re.compile(r"/v1/messages/batches"), self._create_batch),
            ("GET", re.compile(r"/v1/messages/batches"), self._list_batches),
            ("GET", re.compile(r"/v1/messages/batches/(?P<batch_id>[^/]+)"), self._retrieve_batch),
            ("DELETE", re.compile(r"/v1/messages/batches/(?P<batch_id>[^/]+)"), self._delete_batch),
            ("POST", re.compile(r"/v1/messages/batches/(?P<batch_id>[^/]+)/cancel"), self._cancel_batch),
            ("GET", re.compile(r"/v1/messages/batches/(?P<batch_id>[^/]+)/results"), self._results),
            ("POST", re.compile(r"/v1/messages"), self._create_message),
        ]

    def reach(self, base_url: str) -> list[tuple[str, str]]:
        return [("Anthropic base URL", base_url)]

    def authorised(self, request: Request) -> bool:
        return has_api_key(request)

    def error(self, problem: ClientError, headers: dict[str, str] | None = None) -> Response:
        error = {"type": _ERROR_TYPES.get(problem.status, "api_error"), "message": problem.message}
        return json_response({"type": "error", "error": error}, problem.status, headers)

    # -- real time: the Messages API ----------------------------------------------------------------

    def _create_message(self, request: Request) -> Response:
        params, key, problem = read_call(request)
        if params is not None:
            found = params_problem(params)
            if found is not None:
                problem = ClientError(400, found)
            elif params.get("stream"):
                # Not a refusal the API makes: the emulator has no server-sent events to answer with.
                problem = ClientError(400, "stream: the emulator does not stream; send stream: false")
        return serve_call(
            self,
            key,
            problem,
            functools.partial(self._message, params or {}),
            limited=self._rate_limited,
            rate_headers=self._rate_headers,
        )

    def _message(self, params: dict[str, Any]) -> dict[str, Any]:
        # A key per call, not per body: every message has its own id, as the API's do.
        key = f"realtime/{self.emulator.next_id('realtime-call')}"
        knobs = self.emulator.knobs
        message, _, _ = anthropic_message(params, key, knobs.cached_input_rate)
        schemas.anthropic_reply(params, message, key, schemas.mismatch(knobs.seed, key, knobs.schema_mismatch_rate))
        # Real time runs on the standard tier; the batch result says "batch" (anthropic/types/usage.py:
        # service_tier is "standard", "priority" or "batch").
        message["usage"]["service_tier"] = "standard"
        return message

    def _rate_headers(self, admission: Admission) -> dict[str, str]:
        # Whole seconds, as Anthropic's own values are ("2024-03-26T20:00:00Z" in issue 357), rounded up.
        reset = datetime.fromtimestamp(math.ceil(self.emulator.now() + admission.reset_seconds), tz=UTC)
        return {
            "anthropic-ratelimit-requests-limit": str(admission.limit),
            "anthropic-ratelimit-requests-remaining": str(admission.remaining),
            "anthropic-ratelimit-requests-reset": reset.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def _rate_limited(self, admission: Admission) -> Response:
        # The message is modelled on Anthropic's per-minute 429s ("Number of request tokens has exceeded
        # your per-minute rate limit (https://docs.anthropic.com/en/api/rate-limits) ...").
        message = (
            f"This request would exceed your organization's rate limit of {admission.limit} requests per "
            "minute (https://docs.anthropic.com/en/api/rate-limits); see the response headers for current "
            "usage. Please try again later."
        )
        headers = {"retry-after": str(whole_seconds(admission.reset_seconds)), "x-should-retry": "true"}
        return self.error(ClientError(429, message), headers)

    # -- message batches --------------------------------------------------------------------------

    def _create_batch(self, request: Request) -> Response:
        if (request.content_length or 0) > self.max_bytes:
            raise ClientError(413, f"Request exceeds the maximum size of {self.max_bytes} bytes.")
        payload = parse_json_body(request)
        if len(request.get_data()) > self.max_bytes:
            raise ClientError(413, f"Request exceeds the maximum size of {self.max_bytes} bytes.")
        requests = payload.get("requests")
        if not isinstance(requests, list) or not requests:
            raise ClientError(400, "requests: Field required and must be a non-empty list.")
        if len(requests) > self.max_requests:
            raise ClientError(
                400,
                f"requests: a batch holds at most {self.max_requests} requests, got {len(requests)}.",
            )
        seen: set[str] = set()
        accepted: list[tuple[str, dict[str, Any]]] = []
        for index, item in enumerate(requests):
            where = f"requests.{index}"
            if not isinstance(item, dict):
                raise ClientError(400, f"{where}: Input should be an object.")
            custom_id = item.get("custom_id")
            params = item.get("params")
            if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
                raise ClientError(400, f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'.")
            if custom_id in seen:
                raise ClientError(400, f"{where}.custom_id: duplicate custom_id {custom_id!r} within the batch.")
            seen.add(custom_id)
            if not isinstance(params, dict):
                raise ClientError(400, f"{where}.params: Field required.")
            accepted.append((custom_id, params))
        with self.emulator.lock:
            self._check_queue(len(accepted))
            batch = self.emulator.create_batch(
                self.provider,
                f"msgbatch_{self.emulator.next_id('anthropic-batch')}",
                accepted,
                custom_ids=[custom_id for custom_id, _ in accepted],
                line_count=len(accepted),
            )
            for item in batch.requests:
                if params_problem(item.body) is not None:
                    item.failure = REFUSED  # refused whatever was drawn: its params are wrong
            return json_response(self._batch_json(batch, request))

    def _check_queue(self, adding: int) -> None:
        """A 429 when the organisation's unended batches and this one would pass the queue limit."""
        limit = self.queue_limit(self.max_queued_requests)
        if limit is None:
            return
        now = self.emulator.now()
        queued = 0
        for batch in self.emulator.batches(self.provider):
            self.emulator.advance(batch, now)
            if batch.end_kind is None:
                queued += len(batch.requests)
        if queued + adding > limit:
            raise ClientError(
                429,
                f"Number of batch requests in the processing queue ({queued} + {adding}) would exceed your "
                f"organization's limit of {limit}. Wait for batches to finish, or lower the batch size.",
            )

    def _batch(self, batch_id: str) -> Batch:
        if batch_id in self._deleted:
            raise ClientError(404, f"Message batch {batch_id} not found.")
        return self.emulator.batch(self.provider, batch_id)

    def _delete_batch(self, request: Request, batch_id: str) -> Response:
        # "Message Batches can only be deleted once they've finished processing. If you'd like to delete
        # an in-progress batch, you must first cancel it." (anthropic SDK, messages.batches.delete)
        with self.emulator.lock:
            batch = self._batch(batch_id)
            self.emulator.advance(batch, self.emulator.now())
            if batch.end_kind is None:
                raise ClientError(400, f"Batch {batch_id} cannot be deleted while it is still processing.")
            self._deleted.add(batch_id)
        return json_response({"id": batch_id, "type": "message_batch_deleted"})

    def _retrieve_batch(self, request: Request, batch_id: str) -> Response:
        with self.emulator.lock:
            batch = self._batch(batch_id)
            self.emulator.advance(batch, self.emulator.now())
            return json_response(self._batch_json(batch, request))

    def _list_batches(self, request: Request) -> Response:
        limit = page_limit(request, 20, 1000)
        after_id = request.args.get("after_id")
        before_id = request.args.get("before_id")
        with self.emulator.lock:
            batches = [b for b in self.emulator.batches(self.provider) if b.id not in self._deleted]
            ids = [b.id for b in batches]
            if before_id is not None:
                end = ids.index(before_id) if before_id in ids else 0
                start = max(0, end - limit)
                page, has_more = batches[start:end], start > 0
            else:
                start = ids.index(after_id) + 1 if after_id in ids else (0 if after_id is None else len(ids))
                page, has_more = batches[start : start + limit], len(batches) > start + limit
            now = self.emulator.now()
            data = []
            for batch in page:
                self.emulator.advance(batch, now)
                data.append(self._batch_json(batch, request))
        return json_response(
            {
                "data": data,
                "has_more": has_more,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }
        )

    def _cancel_batch(self, request: Request, batch_id: str) -> Response:
        with self.emulator.lock:
            batch = self._batch(batch_id)
            self.emulator.cancel(batch, self.emulator.now())
            return json_response(self._batch_json(batch, request))

    def _results(self, request: Request, batch_id: str) -> Response:
        with self.emulator.lock:
            batch = self._batch(batch_id)
            self.emulator.advance(batch, self.emulator.now())
            if batch.end_kind is None:
                status = "canceling" if batch.cancel_at is not None else "in_progress"
                raise ClientError(404, f"Results for batch {batch_id} are not available yet: it is {status}.")
            data = batch.results
        return stream(data, "application/binary")

    def write_results(self, batch: Batch) -> None:
        """The results file: one line per request, shuffled."""
        lines: list[bytes] = []
        for request in batch.requests:
            outcome = batch.outcomes[request.custom_id]
            key = f"{batch.id}/{request.custom_id}"
            result: dict[str, Any]
            if outcome == "succeeded":
                knobs = self.emulator.knobs
                message, _, _ = anthropic_message(request.body, key, knobs.cached_input_rate)
                broken = schemas.mismatch(knobs.seed, key, knobs.schema_mismatch_rate)
                schemas.anthropic_reply(request.body, message, key, broken)
                result = {"type": "succeeded", "message": message}
            elif outcome in (REFUSED, SERVER_ERROR):
                type_, message_text = (
                    (
                        "invalid_request_error",
                        params_problem(request.body) or "The request was refused (emulated failure).",
                    )
                    if outcome == REFUSED
                    else ("api_error", "Internal server error (emulated failure).")
                )
                result = {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": type_, "message": message_text}},
                }
            else:
                result = {"type": outcome}
            lines.append(orjson.dumps({"custom_id": request.custom_id, "result": result}))
        # Results are not in input order (as with the real API): shuffle deterministically.
        random.Random(hex_id(batch.id, "shuffle")).shuffle(lines)
        batch.results = b"".join(line + b"\n" for line in lines)

    def _batch_json(self, batch: Batch, request: Request) -> dict[str, Any]:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch.end_kind is None:
            status = "canceling" if batch.cancel_at is not None else "in_progress"
            counts["processing"] = len(batch.requests)
        else:
            status = "ended"
            for outcome in batch.outcomes.values():
                name = "errored" if outcome in (REFUSED, SERVER_ERROR) else outcome
                counts[name] += 1
        results_url = None
        if status == "ended":
            results_url = f"{request.host_url.rstrip('/')}/v1/messages/batches/{batch.id}/results"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": iso(batch.ended_at),
            "created_at": iso(batch.created),
            "expires_at": iso(batch.created + DAY),
            "archived_at": None,
            "cancel_initiated_at": iso(batch.cancel_at),
            "results_url": results_url,
        }


def params_problem(params: dict[str, Any]) -> str | None:
    """Why Anthropic's asynchronous validation would refuse a request's params, worded as its
    invalid_request_error messages are (the field's path, then what is wrong), or None."""
    model = params.get("model")
    if not isinstance(model, str) or not model:
        return "model: Field required"
    if not KNOWN_MODEL.fullmatch(model):
        return f"model: {model}"
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        return "max_tokens: Field required"
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    messages = params.get("messages")
    if not isinstance(messages, list):
        return "messages: Field required"
    if not messages:
        return "messages: List should have at least 1 item after validation, not 0"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{index}: Input should be a valid dictionary"
        if message.get("role") not in ROLES:
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
        if "content" not in message:
            return f"messages.{index}.content: Field required"
    return schemas.anthropic_problem(params)
