"""The OpenAI Batch API, with OpenAI's webhooks, and Azure OpenAI's (`AzureOpenAIEmulation`: the same
API under ``/openai/``, with Azure's own limits and behaviours, and its own files and batches).

The official ``openai`` SDK talks to it through ``base_url`` (the emulator's ``/v1``), and
``AzureOpenAI`` through ``azure_endpoint`` (paths under ``/openai/``, with ``?api-version=...``): the
Files endpoints (``/v1/files``) and the Batches endpoints (``/v1/batches``). An input file is validated
the way OpenAI does while the batch is ``validating``; a batch with invalid lines ends ``failed`` with
their errors. Each line's answer is an echo in the shape of its endpoint (chat completion, response,
completion, embeddings, moderation), written to an output file and an error file when the batch ends;
a request whose body the service would refuse gets a 400 in the error file instead.

Queue quotas (off unless a limit is set): a batch's input tokens are counted as the canned usage counts
them (one token per four characters of the text the answer echoes, `canned.tokens`), and a batch that
would take the model's enqueued tokens past the limit ends ``failed`` with ``token_limit_exceeded``
(OpenAI) or is refused at create with a 400 of that code (Azure's "fail fast").

The real-time endpoints the batch lines name (``POST /v1/chat/completions``, ``/v1/responses``,
``/v1/embeddings``, ``/v1/completions``, ``/v1/moderations``; Azure's under ``/openai/``, see
`AzureOpenAIEmulation`) answer one request at once with the same body builder and the same body check
(a 400 in OpenAI's error shape), under the emulator's requests-per-minute window: a 429 past it, and
OpenAI's x-ratelimit-*-requests headers on every answer (batchdrop.local.emulator.realtime).

When ``webhook_url`` and ``webhook_secret`` are set, a batch that ends is announced with a signed
``batch.<status>`` event (Standard Webhooks), as a project's webhook endpoint receives it at OpenAI.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import re
import struct
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from batchdrop.local.emulator import schemas
from batchdrop.local.emulator.batches import Batch
from batchdrop.local.emulator.canned import (
    REFUSED,
    SERVER_ERROR,
    cached_part,
    echo,
    hex_id,
    iso,
    messages_text,
    positive,
    text_of,
    tokens,
    unit,
)
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
ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
)
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# openai-python types/file_create_params.py and batch_create_params.py (ExpiresAfter, OutputExpiresAfter):
# "Must be between 3600 (1 hour) and 2592000 (30 days)"; the anchor is always "created_at".
OPENAI_EXPIRY_SECONDS = (3600, 2_592_000)
# Azure's batch-python.md (MicrosoftDocs azure-ai-docs): "a number between 1209600-2592000" (14-30 days).
AZURE_EXPIRY_SECONDS = (1_209_600, 2_592_000)
# OpenAI docs, "Batch API", rate limits: "/v1/embeddings batches are also restricted to a maximum of
# 50,000 embedding inputs across all requests in the batch" (also openai-python batch_create_params.py).
MAX_EMBEDDING_INPUTS = 50_000
# The embeddings API's own cap on one request's input array (Azure OpenAI quotas and limits: "Max number
# of inputs in array with /embeddings: 2048"; OpenAI's API reference says the same).
MAX_INPUTS_PER_REQUEST = 2048
# openai-python types/chat/chat_completion_message_param.py: the roles a chat message may take.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
INVALID_BODY = "invalid_body"  # a request failure of ours: its body is one the service refuses
_MAX_REPORTED_ERRORS = 1000
_EMBEDDING_DIMENSIONS = 8


# ---------------------------------------------------------------------------------------------------
# Echo-like answers, one per endpoint


def _chat_completion(body: dict[str, Any], key: str, created: int) -> tuple[dict[str, Any], int, int]:
    user_text, chars = messages_text(body.get("messages"))
    text, out_tokens, cut = echo(user_text, positive(body, "max_completion_tokens", "max_tokens"))
    n = min(positive(body, "n") or 1, 8)
    in_tokens = tokens(chars)
    choices: list[dict[str, Any]] = [
        {
            "index": i,
            "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "length" if cut else "stop",
        }
        for i in range(n)
    ]
    usage = {
        "prompt_tokens": in_tokens,
        "completion_tokens": out_tokens * n,
        "total_tokens": in_tokens + out_tokens * n,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    reply = {
        "id": f"chatcmpl-{hex_id(key, 'chat')}",
        "object": "chat.completion",
        "created": created,
        "model": body.get("model"),
        "choices": choices,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_emulator",
    }
    return reply, in_tokens, out_tokens * n


def _response(body: dict[str, Any], key: str, created: int) -> tuple[dict[str, Any], int, int]:
    given = body.get("input")
    if isinstance(given, str):
        user_text, chars = given, len(given)
    else:
        user_text, chars = messages_text(given)
    instructions = body.get("instructions") if isinstance(body.get("instructions"), str) else None
    chars += len(instructions or "")
    max_output = positive(body, "max_output_tokens")
    text, out_tokens, cut = echo(user_text, max_output)
    in_tokens = tokens(chars)
    status = "incomplete" if cut else "completed"
    reply = {
        "id": f"resp_{hex_id(key, 'response', length=32)}",
        "object": "response",
        "created_at": created,
        "completed_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": instructions,
        "max_output_tokens": max_output,
        "model": body.get("model"),
        "output": [
            {
                "type": "message",
                "id": f"msg_{hex_id(key, 'response-message', length=32)}",
                "status": status,
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": in_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": out_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": in_tokens + out_tokens,
        },
        "user": None,
        "metadata": {},
    }
    return reply, in_tokens, out_tokens


def _report_cached(reply: dict[str, Any], rate: float) -> None:
    """Report `rate` of the reply's prompt tokens as read from the prompt cache, a part of them as OpenAI
    counts it: openai-python's CompletionUsage.prompt_tokens_details.cached_tokens ("Cached tokens present
    in the prompt") and ResponseUsage.input_tokens_details.cached_tokens. Completions, embeddings and
    moderations report none."""
    usage = reply.get("usage") or {}
    for total, details in (("prompt_tokens", "prompt_tokens_details"), ("input_tokens", "input_tokens_details")):
        if isinstance(usage.get(details), dict):
            usage[details]["cached_tokens"] = cached_part(int(usage[total]), rate)


def _completion(body: dict[str, Any], key: str, created: int) -> tuple[dict[str, Any], int, int]:
    prompt = body.get("prompt")
    prompts = [p for p in prompt if isinstance(p, str)] if isinstance(prompt, list) else [text_of(prompt)]
    prompts = prompts or [""]
    cap = positive(body, "max_tokens")
    choices = []
    out_total = 0
    for index, text_in in enumerate(prompts):
        text, out_tokens, cut = echo(text_in, cap)
        out_total += out_tokens
        choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": "length" if cut else "stop"})
    in_tokens = sum(tokens(len(p)) for p in prompts)
    reply = {
        "id": f"cmpl-{hex_id(key, 'completion')}",
        "object": "text_completion",
        "created": created,
        "model": body.get("model"),
        "choices": choices,
        "system_fingerprint": "fp_emulator",
        "usage": {
            "prompt_tokens": in_tokens,
            "completion_tokens": out_total,
            "total_tokens": in_tokens + out_total,
        },
    }
    return reply, in_tokens, out_total


def _embedding_inputs(given: Any) -> list[int]:
    """The token count of each input (a string, a token list, or a list of either)."""
    if isinstance(given, str):
        return [tokens(len(given))]
    if isinstance(given, list):
        if given and all(isinstance(item, int) for item in given):
            return [len(given)]
        return [
            tokens(len(item)) if isinstance(item, str) else len(item) if isinstance(item, list) else 1 for item in given
        ] or [1]
    return [1]


def _embeddings(body: dict[str, Any], key: str, created: int) -> tuple[dict[str, Any], int, int]:
    dims = positive(body, "dimensions") or _EMBEDDING_DIMENSIONS
    dims = min(dims, 64)
    counts = _embedding_inputs(body.get("input"))
    data = []
    for index in range(len(counts)):
        vector = [round(unit(key, index, d) * 2 - 1, 6) for d in range(dims)]
        embedding: list[float] | str = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    in_tokens = sum(counts)
    reply = {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": in_tokens, "total_tokens": in_tokens},
    }
    return reply, in_tokens, 0


_MODERATION_CATEGORIES = (
    ("harassment", ["text"]),
    ("harassment/threatening", ["text"]),
    ("hate", ["text"]),
    ("hate/threatening", ["text"]),
    ("illicit", ["text"]),
    ("illicit/violent", ["text"]),
    ("self-harm", ["text"]),
    ("self-harm/intent", ["text"]),
    ("self-harm/instructions", ["text"]),
    ("sexual", ["text"]),
    ("sexual/minors", ["text"]),
    ("violence", ["text"]),
    ("violence/graphic", ["text"]),
)


def _moderations(body: dict[str, Any], key: str, created: int) -> tuple[dict[str, Any], int, int]:
    given = body.get("input")
    count = len(given) if isinstance(given, list) and given and not isinstance(given[0], dict) else 1
    results = [
        {
            "flagged": False,
            "categories": {name: False for name, _ in _MODERATION_CATEGORIES},
            "category_scores": {name: round(unit(key, index, name) / 1000, 8) for name, _ in _MODERATION_CATEGORIES},
            "category_applied_input_types": {name: list(types) for name, types in _MODERATION_CATEGORIES},
        }
        for index in range(count)
    ]
    reply = {"id": f"modr-{hex_id(key, 'moderation')}", "model": body.get("model"), "results": results}
    return reply, 0, 0


def _refusal(message: str, param: str, code: str) -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def body_error(endpoint: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The error the service answers a request body with, as its API would (None: it runs).

    OpenAI checks a batch's lines while it is `validating` (custom_id, method, url, model) but each
    body only when it runs it, so a body the API refuses comes back in the error file as a 400 with the
    API's error object (OpenAI docs, "Batch API": the error file holds "requests that failed"). The
    messages and codes are the Chat Completions API's for the same mistakes.
    """
    if endpoint == "/v1/chat/completions":
        messages = body.get("messages")
        if messages is None:
            return _refusal("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
        if not isinstance(messages, list):
            return _refusal("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
        if not messages:
            return _refusal(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                "messages",
                "empty_array",
            )
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                return _refusal(
                    f"Invalid type for 'messages[{i}]': expected an object.", f"messages[{i}]", "invalid_type"
                )
            role = message.get("role")
            if role is None:
                return _refusal(
                    f"Missing required parameter: 'messages[{i}].role'.",
                    f"messages[{i}].role",
                    "missing_required_parameter",
                )
            if role not in CHAT_ROLES:
                return _refusal(
                    f"Invalid value: {str(role)[:40]!r}. Supported values are: 'system', 'assistant', 'user', "
                    "'function', 'tool', and 'developer'.",
                    f"messages[{i}].role",
                    "invalid_value",
                )
            if role in ("system", "developer", "user", "tool") and "content" not in message:
                return _refusal(
                    f"Missing required parameter: 'messages[{i}].content'.",
                    f"messages[{i}].content",
                    "missing_required_parameter",
                )
        found = schemas.openai_problem(endpoint, body)
        if found is not None:
            return _refusal(*found)
    elif endpoint == "/v1/responses":
        found = schemas.openai_problem(endpoint, body)
        if found is not None:
            return _refusal(*found)
    elif endpoint in ("/v1/embeddings", "/v1/moderations"):
        given = body.get("input")
        if given is None:
            return _refusal("Missing required parameter: 'input'.", "input", "missing_required_parameter")
        if endpoint == "/v1/embeddings" and embedding_inputs(given) > MAX_INPUTS_PER_REQUEST:
            return _refusal(
                f"Invalid 'input': array too long. Expected an array with maximum length "
                f"{MAX_INPUTS_PER_REQUEST}, but got an array with length {len(given)} instead.",
                "input",
                "array_above_max_length",
            )
    return None


def embedding_inputs(given: Any) -> int:
    """How many inputs a /v1/embeddings body's `input` holds, as OpenAI counts them for its batch limit:
    a string or one token array is one input; a list of strings or of token arrays is one per item."""
    if isinstance(given, list) and given and not isinstance(given[0], int):
        return len(given)
    return 1


def go_duration(seconds: float) -> str:
    """A wait as Go's time.Duration prints it, the format of OpenAI's x-ratelimit-reset-* headers ("1s",
    "6m0s" in its rate-limit guide; "12ms" in accounts' answers), rounded up to the millisecond."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    secs = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


_ANSWERS: dict[str, Callable[[dict[str, Any], str, int], tuple[dict[str, Any], int, int]]] = {
    "/v1/chat/completions": _chat_completion,
    "/v1/responses": _response,
    "/v1/completions": _completion,
    "/v1/embeddings": _embeddings,
    "/v1/moderations": _moderations,
}


@dataclass
class _Lines:
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    custom_ids: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    line_count: int = 0


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    created_at: int
    data: bytes
    # Azure: the file is `pending` until then (its import runs after the upload has answered).
    ready_at: float = 0.0
    expires_at: int | None = None

    def ready(self, now: float) -> bool:
        return now >= self.ready_at

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed" if self.ready(now) else "pending",
            "status_details": None,
            "expires_at": self.expires_at,
        }


class OpenAIEmulation(Plugin):
    """OpenAI's Files and Batches API (also as Azure OpenAI), and its webhooks (see the module)."""

    provider = "openai"
    # Where its Files and Batches paths start.
    root = "/v1"
    # Every /v1/ path but Anthropic's; a path no provider owns is answered in OpenAI's shape too.
    prefixes = ("/v1/",)
    creates = re.compile(r"/v1/batches")
    # The range `expires_after.seconds` and `output_expires_after.seconds` must be in.
    expiry_seconds = OPENAI_EXPIRY_SECONDS
    # The `code` of a real-time call's 429.
    rate_limit_code = "rate_limit_exceeded"

    def __init__(self, emulator: Emulator) -> None:
        super().__init__(emulator)
        # OpenAI's limits, as instance attributes so tests can lower them.
        self.max_requests = 50_000
        self.max_file_bytes = 200 * MB
        self.max_embedding_inputs = MAX_EMBEDDING_INPUTS
        # The enqueued-token quota: input tokens of a model's batches that are validating, in progress
        # or finalizing, per model name (or deployment, for Azure), else `enqueued_token_limit` for
        # every model; None: no quota.
        self.enqueued_token_limits: dict[str, int] = {}
        self.enqueued_token_limit: int | None = None
        # Files a resource may hold at once (None: no cap): Azure's.
        self.max_files: int | None = None
        self.max_files_with_expiry: int | None = None
        # Seconds an uploaded file stays `pending` (Azure's import).
        self.file_processing_seconds = 0.0
        self._tokens: dict[str, int] = {}  # batch id → input tokens it enqueued
        self._output_expiry: dict[str, int] = {}  # batch id → output_expires_after.seconds
        # OpenAI webhooks (batch.completed, ...): where to send them and the signing secret
        # ("whsec_" + base64), as a project's webhook endpoint is configured at OpenAI.
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.webhooks_sent = 0
        self._notified: set[str] = set()  # the batches whose end was announced
        self._files: dict[str, _File] = {}

    # -- the plugin ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        root = self.root
        return [
            ("POST", re.compile(rf"{root}/files"), self._create_file),
            ("GET", re.compile(rf"{root}/files"), self._list_files),
            ("GET", re.compile(rf"{root}/files/(?P<file_id>[^/]+)"), self._retrieve_file),
            ("DELETE", re.compile(rf"{root}/files/(?P<file_id>[^/]+)"), self._delete_file),
            ("GET", re.compile(rf"{root}/files/(?P<file_id>[^/]+)/content"), self._file_content),
            ("POST", re.compile(rf"{root}/batches"), self._create_batch),
            ("GET", re.compile(rf"{root}/batches"), self._list_batches),
            ("GET", re.compile(rf"{root}/batches/(?P<batch_id>[^/]+)"), self._retrieve_batch),
            ("POST", re.compile(rf"{root}/batches/(?P<batch_id>[^/]+)/cancel"), self._cancel_batch),
            *self.realtime_routes(),
        ]

    def realtime_routes(self) -> list[Route]:
        """The real-time endpoints a batch line's `url` names, each at that path."""
        return [
            ("POST", re.compile(re.escape(endpoint)), functools.partial(self._realtime_call, endpoint=endpoint))
            for endpoint in ENDPOINTS
        ]

    def reach(self, base_url: str) -> list[tuple[str, str]]:
        return [
            ("OpenAI base URL", f"{base_url}/v1"),
            ("Azure endpoint", f"{base_url} (AzureOpenAI(azure_endpoint=...))"),
        ]

    def authorised(self, request: Request) -> bool:
        return has_api_key(request)

    def error(self, problem: ClientError, headers: dict[str, str] | None = None) -> Response:
        status = problem.status
        kinds = {401: "invalid_request_error", 429: "requests", 500: "server_error"}
        codes = {401: "invalid_api_key", 429: "rate_limit_exceeded"}
        type_ = kinds.get(status, "invalid_request_error")
        code = problem.kind or codes.get(status)
        error = {"message": problem.message, "type": type_, "param": problem.param, "code": code}
        return json_response({"error": error}, status, headers)

    def workers(self) -> list[Callable[[], None]]:
        return [self._send_webhooks]

    # -- webhooks -----------------------------------------------------------------------------------

    def _send_webhooks(self) -> None:
        """When a batch ends, POST a signed event to `webhook_url` (Standard Webhooks)."""
        emulator = self.emulator
        while emulator.is_serving():
            time.sleep(0.05)
            if not self.webhook_url or not self.webhook_secret:
                continue
            events = []
            with emulator.lock:
                now = emulator.now()
                for batch in reversed(emulator.batches(self.provider)):
                    if batch.id in self._notified:
                        continue
                    emulator.advance(batch, now)
                    if batch.end_kind is not None:
                        self._notified.add(batch.id)
                        events.append((batch.id, batch.end_kind, int(now)))
            secret = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
            for batch_id, kind, at in events:
                event_id = "evt_" + hex_id("webhook", batch_id, length=24)
                body = orjson.dumps(
                    {
                        "id": event_id,
                        "object": "event",
                        "created_at": at,
                        "type": f"batch.{kind}",
                        "data": {"id": batch_id},
                    }
                )
                signature = base64.b64encode(
                    hmac.new(secret, f"{event_id}.{at}.".encode() + body, hashlib.sha256).digest()
                ).decode()
                request = urllib.request.Request(  # noqa: S310 — the local stack's own receiver
                    self.webhook_url,
                    data=body,
                    method="POST",
                    headers={
                        "content-type": "application/json",
                        "webhook-id": event_id,
                        "webhook-timestamp": str(at),
                        "webhook-signature": f"v1,{signature}",
                    },
                )
                try:
                    urllib.request.urlopen(request, timeout=30).close()  # noqa: S310
                    self.webhooks_sent += 1
                except OSError:
                    pass  # like OpenAI's, a failed delivery is not retried here; the poll still finds the batch

    # -- real time ----------------------------------------------------------------------------------

    def _realtime_call(self, request: Request, endpoint: str, deployment: str | None = None) -> Response:
        """One request to a real-time endpoint (`endpoint`: the batch `url` it answers as; `deployment`:
        Azure's, from the path), checked as a batch request's body is (`body_error`) and answered with
        the same body builder (see batchdrop.local.emulator.realtime for the rest)."""
        body, key, problem = read_call(request)
        if body is not None:
            if deployment is not None:
                # Azure takes the deployment from the path; the body's model, if any, is not used.
                body = {**body, "model": deployment}
            problem = self._call_problem(endpoint, body)
        model = str((body or {}).get("model") or "the model")
        return serve_call(
            self,
            key,
            problem,
            functools.partial(self._call_answer, endpoint, body or {}),
            limited=functools.partial(self._rate_limited, request, endpoint, model),
            rate_headers=self._rate_headers,
        )

    @staticmethod
    def _call_problem(endpoint: str, body: dict[str, Any]) -> ClientError | None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            # The batch side's line check, as the API words a missing parameter (body_error).
            return ClientError(400, "Missing required parameter: 'model'.", "model", "missing_required_parameter")
        if body.get("stream"):
            # Not a refusal the API makes: the emulator has no server-sent events to answer with.
            return ClientError(400, "The emulator does not stream: send 'stream': false.", "stream", "unsupported")
        error = body_error(endpoint, body)
        if error is not None:
            return ClientError(400, error["message"], error["param"], error["code"])
        return None

    def _call_answer(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        # A key per call, not per body: every answer has its own id, as the API's do.
        key = f"realtime/{self.emulator.next_id('realtime-call')}"
        reply, _, _ = _ANSWERS[endpoint](body, key, int(self.emulator.now()))
        knobs = self.emulator.knobs
        _report_cached(reply, knobs.cached_input_rate)
        schemas.openai_reply(endpoint, body, reply, key, schemas.mismatch(knobs.seed, key, knobs.schema_mismatch_rate))
        return reply

    def _rate_headers(self, admission: Admission) -> dict[str, str]:
        """OpenAI's requests-per-minute headers (platform.openai.com/docs/guides/rate-limits, "Rate limits
        in headers": x-ratelimit-limit-requests 60, x-ratelimit-remaining-requests 59,
        x-ratelimit-reset-requests 1s, "the time until the rate limit (based on requests) resets")."""
        return {
            "x-ratelimit-limit-requests": str(admission.limit),
            "x-ratelimit-remaining-requests": str(admission.remaining),
            "x-ratelimit-reset-requests": self.reset_text(admission.reset_seconds),
        }

    def reset_text(self, seconds: float) -> str:
        return go_duration(seconds)

    def retry_headers(self, seconds: float) -> dict[str, str]:
        """A 429's wait: `retry-after`, whole seconds (openai/openai-openapi PR 564 documents it as an
        optional integer number of seconds on rate-limit 429s; the SDK honours it, _base_client.py
        `_parse_retry_after_header`)."""
        return {"retry-after": str(whole_seconds(seconds))}

    def limit_message(self, request: Request, endpoint: str, model: str, admission: Admission) -> str:
        # OpenAI's wording for a requests-per-minute 429, as accounts quote it: "Rate limit reached for
        # gpt-4o-mini in organization org-... on requests per min (RPM): Limit 3, Used 3, Requested 1.
        # Please try again in 20s. Visit https://platform.openai.com/account/rate-limits to learn more."
        return (
            f"Rate limit reached for {model} in organization org-emulator on requests per min (RPM): "
            f"Limit {admission.limit}, Used {admission.limit}, Requested 1. Please try again in "
            f"{go_duration(admission.reset_seconds)}. Visit https://platform.openai.com/account/rate-limits "
            "to learn more."
        )

    def _rate_limited(self, request: Request, endpoint: str, model: str, admission: Admission) -> Response:
        # The error object of a rate-limit 429: type "requests", code "rate_limit_exceeded" (`error`).
        message = self.limit_message(request, endpoint, model, admission)
        problem = ClientError(429, message, None, self.rate_limit_code)
        return self.error(problem, self.retry_headers(admission.reset_seconds))

    # -- OpenAI files -----------------------------------------------------------------------------

    def _create_file(self, request: Request) -> Response:
        purpose = request.form.get("purpose")
        upload = request.files.get("file")
        if upload is None:
            raise ClientError(400, "Missing required parameter: 'file'.", "file")
        if purpose not in FILE_PURPOSES:
            raise ClientError(400, f"Invalid value for 'purpose': {purpose!r}.", "purpose")
        anchor, seconds = request.form.get("expires_after[anchor]"), request.form.get("expires_after[seconds]")
        expires = None
        if anchor is not None or seconds is not None:
            expires = self._expiry({"anchor": anchor, "seconds": seconds}, "expires_after")
        data = upload.read()
        if purpose == "batch" and len(data) > self.max_file_bytes:
            raise ClientError(400, "File is too large: batch input files are limited to 200 MB.", "file")
        with self.emulator.lock:
            now = self.emulator.now()
            self._check_file_cap(now, expires is not None)
            file = _File(
                id=f"file-{self.emulator.next_id('file')}",
                filename=upload.filename or "upload.jsonl",
                purpose=purpose,
                created_at=int(now),
                data=data,
                ready_at=now + self.file_processing_seconds,
                expires_at=None if expires is None else int(now) + expires,
            )
            self._files[file.id] = file
            return json_response(file.to_json(now))

    def _expiry(self, given: Any, param: str) -> int:
        """`expires_after` / `output_expires_after`: {anchor: "created_at", seconds} → seconds."""
        low, high = self.expiry_seconds
        if not isinstance(given, dict) or given.get("anchor") != "created_at":
            raise ClientError(400, f"Invalid '{param}.anchor': expected 'created_at'.", f"{param}.anchor")
        try:
            seconds = int(given.get("seconds"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ClientError(400, f"Invalid '{param}.seconds': expected an integer.", f"{param}.seconds") from None
        if not low <= seconds <= high:
            raise ClientError(
                400,
                f"Invalid '{param}.seconds': {seconds}. It must be between {low} and {high}.",
                f"{param}.seconds",
            )
        return seconds

    def _purge_expired(self, now: float) -> None:
        for file in [f for f in self._files.values() if f.expires_at is not None and f.expires_at <= now]:
            del self._files[file.id]

    def _check_file_cap(self, now: float, expires: bool) -> None:
        """Azure's cap on the files a resource holds (see AzureOpenAIEmulation); none for OpenAI."""
        cap = self.max_files_with_expiry if expires else self.max_files
        if cap is None:
            return
        self._purge_expired(now)
        if len(self._files) >= cap:
            raise ClientError(
                400,
                f"The number of files in this resource has reached the limit of {cap}. Delete files, "
                "or set an expiry on them (expires_after), and try again.",
                "file",
                "quota_exceeded",
            )

    def _get_file(self, file_id: str) -> _File:
        with self.emulator.lock:
            self._purge_expired(self.emulator.now())
            file = self._files.get(file_id)
        if file is None:
            raise ClientError(404, f"No such File object: {file_id}", "id")
        return file

    def _list_files(self, request: Request) -> Response:
        limit = page_limit(request, 10_000, 10_000)
        purpose = request.args.get("purpose")
        with self.emulator.lock:
            now = self.emulator.now()
            self._purge_expired(now)
            files = [f for f in reversed(self._files.values()) if purpose is None or f.purpose == purpose]
        return self._cursor_page(request, [f.to_json(now) for f in files], limit)

    def _retrieve_file(self, request: Request, file_id: str) -> Response:
        return json_response(self._get_file(file_id).to_json(self.emulator.now()))

    def _delete_file(self, request: Request, file_id: str) -> Response:
        file = self._get_file(file_id)
        with self.emulator.lock:
            self._files.pop(file.id, None)
        return json_response({"id": file.id, "object": "file", "deleted": True})

    def _file_content(self, request: Request, file_id: str) -> Response:
        file = self._get_file(file_id)
        return stream(file.data, "application/octet-stream")

    @staticmethod
    def _cursor_page(request: Request, items: list[dict[str, Any]], limit: int) -> Response:
        after = request.args.get("after")
        if after is not None:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return json_response(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )

    # -- OpenAI batches ---------------------------------------------------------------------------

    def _create_batch(self, request: Request) -> Response:
        payload = parse_json_body(request)
        input_file_id = payload.get("input_file_id")
        endpoint = payload.get("endpoint")
        window = payload.get("completion_window")
        metadata = payload.get("metadata")
        if not isinstance(input_file_id, str) or not input_file_id:
            raise ClientError(400, "Missing required parameter: 'input_file_id'.", "input_file_id")
        if endpoint not in ENDPOINTS:
            raise ClientError(
                400,
                f"Invalid value for 'endpoint': {endpoint!r}. Supported: {', '.join(ENDPOINTS)}.",
                "endpoint",
            )
        if window != "24h":
            raise ClientError(
                400,
                f"Invalid value for 'completion_window': {window!r}. Supported: '24h'.",
                "completion_window",
            )
        self._check_metadata(metadata)
        output_expiry = None
        if payload.get("output_expires_after") is not None:
            output_expiry = self._expiry(payload["output_expires_after"], "output_expires_after")
        with self.emulator.lock:
            now = self.emulator.now()
            self._purge_expired(now)
            file = self._files.get(input_file_id)
        if file is None:
            raise ClientError(400, f"Invalid 'input_file_id': {input_file_id!r}. No such file.", "input_file_id")
        if file.purpose != "batch":
            raise ClientError(
                400,
                f"Invalid 'input_file_id': the file's purpose is {file.purpose!r}, not 'batch'.",
                "input_file_id",
            )
        if not file.ready(now):
            # Azure: "wait until the file's status is processed" before creating the batch (batch-python.md,
            # MicrosoftDocs azure-ai-docs); the error it answers is not documented: this is its 400
            # invalid_request_error shape with a message that names the file's status.
            raise ClientError(
                400,
                f"The input file {input_file_id} is not ready for batch processing: its status is 'pending'. "
                "Wait until its status is 'processed'.",
                "input_file_id",
                "invalid_request_error",
            )
        lines = self._read_lines(file.data, str(endpoint))
        answer = _ANSWERS[str(endpoint)]
        enqueued = 0 if lines.errors else sum(answer(body, "", 0)[1] for _, body in lines.requests)
        with self.emulator.lock:
            if not lines.errors and lines.model is not None:
                self._check_quota(lines, enqueued, now)
            batch = self.emulator.create_batch(
                self.provider,
                f"batch_{self.emulator.next_id('openai-batch', 32)}",
                [] if lines.errors else lines.requests,
                custom_ids=lines.custom_ids,
                line_count=lines.line_count,
                metadata=dict(metadata) if metadata is not None else None,
                endpoint=str(endpoint),
                input_file_id=input_file_id,
                model=lines.model,
                errors=lines.errors,
            )
            if not batch.errors:
                self._tokens[batch.id] = enqueued
            for queued in batch.requests:
                if body_error(batch.endpoint, queued.body) is not None:
                    queued.failure = INVALID_BODY
            if output_expiry is not None:
                self._output_expiry[batch.id] = output_expiry
            self.created(batch)
            return json_response(self._batch_json(batch, batch.created, creating=True))

    def created(self, batch: Batch) -> None:
        """What the provider does to a batch it has just made, beyond OpenAI's (Azure's: no expiry)."""
        return

    def _check_quota(self, lines: _Lines, tokens: int, now: float) -> None:
        """The model's enqueued-token quota: what its unfinished batches hold, plus this batch."""
        model = str(lines.model)
        limit = self.queue_limit(self.enqueued_token_limits.get(model, self.enqueued_token_limit))
        if limit is None:
            return
        held = 0
        for other in self.emulator.batches(self.provider):
            if other.model != model or other.id not in self._tokens:
                continue
            self.emulator.advance(other, now)
            if other.end_kind is None and other.cancel_at is None:
                held += self._tokens[other.id]
        if held + tokens > limit:
            self.over_quota(lines, model, limit)

    def over_quota(self, lines: _Lines, model: str, limit: int) -> None:
        """OpenAI takes the batch and fails it while it validates, with errors.data[].code
        token_limit_exceeded (openai/openai-python issue 2084; the message is the one accounts see)."""
        lines.errors.append(
            {
                "code": "token_limit_exceeded",
                "line": None,
                "message": f"Enqueued token limit reached for {model} in organization org-emulator. "
                f"Limit: {limit:,} enqueued tokens. Please try submitting your batch again later.",
                "param": None,
            }
        )

    @staticmethod
    def _check_metadata(metadata: Any) -> None:
        if metadata is None:
            return
        if not isinstance(metadata, dict):
            raise ClientError(400, "Invalid 'metadata': expected an object.", "metadata")
        if len(metadata) > 16:
            raise ClientError(400, "Invalid 'metadata': at most 16 key-value pairs.", "metadata")
        for key, value in metadata.items():
            if len(key) > 64:
                raise ClientError(400, f"Invalid 'metadata': key {key[:20]!r}... is over 64 characters.", "metadata")
            if not isinstance(value, str) or len(value) > 512:
                raise ClientError(
                    400,
                    f"Invalid 'metadata': the value of {key!r} must be a string of at most 512 characters.",
                    "metadata",
                )

    def _read_lines(self, data: bytes, endpoint: str) -> _Lines:
        """Validate an input file the way OpenAI does while the batch is `validating`."""
        result = _Lines()
        seen: set[str] = set()
        inputs = 0

        def fail(code: str, line: int | None, message: str, param: str | None = None) -> None:
            if len(result.errors) < _MAX_REPORTED_ERRORS:
                result.errors.append({"code": code, "line": line, "message": message, "param": param})

        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            result.line_count += 1
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                fail("invalid_json_line", number, "This line is not parseable as valid JSON.")
                continue
            if not isinstance(line, dict):
                fail("invalid_json_line", number, "This line is not a JSON object.")
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                fail(
                    "missing_required_parameter",
                    number,
                    "Missing required parameter: 'custom_id'.",
                    "custom_id",
                )
                continue
            result.custom_ids.append(custom_id)
            body = line.get("body")
            if line.get("method") != "POST":
                fail("invalid_value", number, "Invalid value for 'method': only 'POST' is supported.", "method")
            elif line.get("url") != endpoint:
                fail(
                    "url_mismatch",
                    number,
                    f"The provided URL {line.get('url')!r} does not match the batch's endpoint {endpoint!r}.",
                    "url",
                )
            elif not isinstance(body, dict):
                fail("missing_required_parameter", number, "Missing required parameter: 'body'.", "body")
            elif not isinstance(body.get("model"), str) or not body["model"]:
                fail(
                    "missing_required_parameter",
                    number,
                    "Missing required parameter: 'body.model'.",
                    "body.model",
                )
            elif result.model is not None and body["model"] != result.model:
                fail(
                    "model_mismatch",
                    number,
                    f"The model {body['model']!r} differs from {result.model!r}: one model per batch.",
                    "body.model",
                )
            elif custom_id in seen:
                fail(
                    "duplicate_custom_id",
                    number,
                    "The custom_id for this request is a duplicate of another request. "
                    "The custom_id parameter must be unique for each request in a batch.",
                    "custom_id",
                )
            else:
                seen.add(custom_id)
                result.model = result.model or body["model"]
                result.requests.append((custom_id, body))
                if endpoint == "/v1/embeddings":
                    inputs += embedding_inputs(body.get("input"))
        if inputs > self.max_embedding_inputs:
            # The limit is documented (MAX_EMBEDDING_INPUTS); the code and message are modelled on
            # too_many_tasks, the batch's other size check while it validates.
            fail(
                "too_many_embedding_inputs",
                None,
                f"The batch has {inputs:,} embedding inputs; /v1/embeddings batches are limited to "
                f"{self.max_embedding_inputs:,} embedding inputs across all requests.",
            )
        if result.line_count == 0:
            fail("empty_file", None, "The input file is empty.")
        elif result.line_count > self.max_requests:
            fail(
                "too_many_tasks",
                None,
                f"The input file has {result.line_count} requests; a batch holds at most {self.max_requests}.",
            )
        return result

    def _retrieve_batch(self, request: Request, batch_id: str) -> Response:
        with self.emulator.lock:
            batch = self.emulator.batch(self.provider, batch_id)
            now = self.emulator.now()
            self.emulator.advance(batch, now)
            return json_response(self._batch_json(batch, now))

    def _list_batches(self, request: Request) -> Response:
        limit = page_limit(request, 20, 100)
        after = request.args.get("after")
        with self.emulator.lock:
            batches = self.emulator.batches(self.provider)
            if after is not None:
                ids = [b.id for b in batches]
                batches = batches[ids.index(after) + 1 :] if after in ids else []
            page = batches[:limit]
            now = self.emulator.now()
            data = []
            for batch in page:
                self.emulator.advance(batch, now)
                data.append(self._batch_json(batch, now))
        return json_response(
            {
                "object": "list",
                "data": data,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(batches) > limit,
            }
        )

    def _cancel_batch(self, request: Request, batch_id: str) -> Response:
        with self.emulator.lock:
            batch = self.emulator.batch(self.provider, batch_id)
            now = self.emulator.now()
            self.emulator.cancel(batch, now)
            return json_response(self._batch_json(batch, now))

    def write_results(self, batch: Batch) -> None:
        """The output file (successes) and the error file (failures, then the unfinished), by finish time."""
        answer = _ANSWERS[batch.endpoint]
        knobs = self.emulator.knobs
        output: list[bytes] = []
        errors: list[bytes] = []
        unfinished: list[bytes] = []
        in_total = out_total = 0
        for request in sorted(batch.requests, key=lambda r: r.finish_fraction):
            outcome = batch.outcomes[request.custom_id]
            key = f"{batch.id}/{request.custom_id}"
            line: dict[str, Any] = {
                "id": f"batch_req_{hex_id(key, 'line', length=32)}",
                "custom_id": request.custom_id,
            }
            request_id = hex_id(key, "request", length=32)
            if outcome == "succeeded":
                body, in_tokens, out_tokens = answer(request.body, key, int(batch.finish_time(request)))
                _report_cached(body, knobs.cached_input_rate)
                broken = schemas.mismatch(knobs.seed, key, knobs.schema_mismatch_rate)
                schemas.openai_reply(batch.endpoint, request.body, body, key, broken)
                in_total += in_tokens
                out_total += out_tokens
                line["response"] = {"status_code": 200, "request_id": request_id, "body": body}
                line["error"] = None
                output.append(orjson.dumps(line))
            elif outcome in (REFUSED, SERVER_ERROR, INVALID_BODY):
                status, type_, message = (
                    (400, "invalid_request_error", "The request was refused (emulated failure).")
                    if outcome == REFUSED
                    else (500, "server_error", "The server had an error processing the request (emulated).")
                )
                error: dict[str, Any] | None = {"message": message, "type": type_, "param": None, "code": None}
                if outcome == INVALID_BODY:
                    status, error = 400, body_error(batch.endpoint, request.body)
                error_body = {"error": error}
                line["response"] = {"status_code": status, "request_id": request_id, "body": error_body}
                line["error"] = None
                errors.append(orjson.dumps(line))
            else:
                code, message = (
                    (
                        "batch_expired",
                        "This request could not be executed before the completion window expired.",
                    )
                    if outcome == "expired"
                    else ("batch_cancelled", "This request was not executed because the batch was cancelled.")
                )
                line["response"] = None
                line["error"] = {"code": code, "message": message}
                unfinished.append(orjson.dumps(line))
        errors.extend(unfinished)
        batch.usage = (in_total, out_total)
        created = int(batch.ended_at or batch.created)
        expiry = self._output_expiry.get(batch.id)
        expires = None if expiry is None else created + expiry
        if output:
            batch.output_file_id = self._store_file(f"{batch.id}_output.jsonl", output, created, expires)
        if errors:
            batch.error_file_id = self._store_file(f"{batch.id}_error.jsonl", errors, created, expires)

    def _store_file(self, filename: str, lines: list[bytes], created: int, expires: int | None = None) -> str:
        file = _File(
            id=f"file-{self.emulator.next_id('file')}",
            filename=filename,
            purpose="batch_output",
            created_at=created,
            data=b"\n".join(lines) + b"\n",
            expires_at=expires,
        )
        self._files[file.id] = file
        return file.id

    def _batch_json(self, batch: Batch, now: float, creating: bool = False) -> dict[str, Any]:
        stamps: dict[str, float | None] = dict.fromkeys(
            (
                "in_progress_at",
                "finalizing_at",
                "completed_at",
                "failed_at",
                "expired_at",
                "cancelling_at",
                "cancelled_at",
            )
        )
        total = len(batch.requests)
        completed = failed = 0
        kind = batch.end_kind
        if creating:
            status = "validating"
        elif kind is not None:
            status = kind
            if kind == "failed":
                stamps["failed_at"] = batch.ended_at
            else:
                reached = batch.cancel_at if kind == "cancelled" else batch.ended_at
                assert reached is not None
                if reached >= batch.phase_time(0.1):
                    stamps["in_progress_at"] = batch.phase_time(0.1)
                if kind != "expired" and reached >= batch.phase_time(0.9) and not batch.expires:
                    stamps["finalizing_at"] = batch.phase_time(0.9)
                stamps[f"{kind}_at"] = batch.ended_at
                stamps["cancelling_at"] = batch.cancel_at
                completed = sum(1 for outcome in batch.outcomes.values() if outcome == "succeeded")
                failed = total - completed
        else:
            at = now if batch.cancel_at is None else batch.cancel_at
            if batch.cancel_at is not None:
                status = "cancelling"
                stamps["cancelling_at"] = batch.cancel_at
            elif at < batch.phase_time(0.1):
                status = "validating"
            elif at < batch.phase_time(0.9) or batch.expires:
                status = "in_progress"
            else:
                status = "finalizing"
            if at >= batch.phase_time(0.1) and not batch.errors:
                stamps["in_progress_at"] = batch.phase_time(0.1)
            if at >= batch.phase_time(0.9) and not batch.expires and not batch.errors:
                stamps["finalizing_at"] = batch.phase_time(0.9)
            completed, failed = batch.finished(at)
        in_tokens, out_tokens = batch.usage
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": batch.model,
            "errors": {"object": "list", "data": batch.errors} if batch.errors and status == "failed" else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": self.created_at(batch.created),
            "expires_at": int(batch.created + DAY),
            **{name: None if value is None else int(value) for name, value in stamps.items()},
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "usage": {
                "input_tokens": in_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": out_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": in_tokens + out_tokens,
            },
            "metadata": batch.metadata,
        }

    def created_at(self, at: float) -> int | str:
        return int(at)


class AzureOpenAIEmulation(OpenAIEmulation):
    """Azure OpenAI's global batch: OpenAI's API under ``/openai/`` (``AzureOpenAI`` adds the prefix and
    ``?api-version=``), with the behaviours that set it apart (MicrosoftDocs azure-ai-docs,
    articles/ai-foundry/openai/how-to/batch.md and includes/batch/batch-python.md, "Batch limits"):

    - an uploaded file is `pending` until Azure has imported it, and a batch cannot be made of it before
      it is `processed` (`file_processing_seconds`);
    - at most 500 files per resource, input and output files counted, or 10,000 when the files are
      given an expiry ("There is a max limit of 500 batch files per resource when no expiration is set.
      By setting a value for expiration the number of batch files per resource is increased to 10,000");
      the expiry is 1209600 to 2592000 seconds, on input files (`expires_after`) and on a batch's output
      (`output_expires_after`); past the cap an upload is refused (the error body is not documented:
      a 400 whose message says what the cap is);
    - 100,000 requests per file, not 50,000;
    - "we do not expire the jobs that take longer" than 24 h: a batch runs until it completes or is
      cancelled;
    - over the enqueued-token quota, "fail fast" regions refuse `batches.create` with a 400
      `token_limit_exceeded` (Microsoft Q&A 2285577 quotes the message);
    - some API versions' samples show `created_at` as an ISO 8601 string (`iso_created_at`).

    Its real-time endpoints are where ``AsyncAzureOpenAI`` sends them (openai-python lib/azure.py,
    ``_deployments_endpoints``): chat completions, completions and embeddings under
    ``/openai/deployments/{deployment}/``, and the Responses API at ``/openai/responses`` (the body's
    model names the deployment). Azure has no moderations endpoint. Every path needs ``?api-version=``:
    without it Azure answers 404 ``{"error": {"code": "404", "message": "Resource not found"}}``
    (MicrosoftDocs/azure-docs issue 114602; the body as BerriAI/litellm issue 8572 quotes it).
    """

    provider = "azure"
    root = "/openai"
    prefixes = ("/openai/",)
    creates = re.compile(r"/openai/batches")
    expiry_seconds = AZURE_EXPIRY_SECONDS

    def __init__(self, emulator: Emulator) -> None:
        super().__init__(emulator)
        self.max_requests = 100_000
        self.max_files = 500
        self.max_files_with_expiry = 10_000
        self.iso_created_at = False

    def reach(self, base_url: str) -> list[tuple[str, str]]:
        return [("Azure endpoint", f"{base_url} (AzureOpenAI(azure_endpoint=...))")]

    def routes(self) -> list[Route]:
        return [(method, pattern, self._versioned(handler)) for method, pattern, handler in super().routes()]

    def realtime_routes(self) -> list[Route]:
        deployment = r"/openai/deployments/(?P<deployment>[^/]+)"
        call = self._realtime_call
        return [
            *(
                ("POST", re.compile(rf"{deployment}/{name}"), functools.partial(call, endpoint=f"/v1/{name}"))
                for name in ("chat/completions", "completions", "embeddings")
            ),
            ("POST", re.compile(r"/openai/responses"), functools.partial(call, endpoint="/v1/responses")),
        ]

    @staticmethod
    def _versioned(handler: Callable[..., Response]) -> Callable[..., Response]:
        def versioned(request: Request, **kwargs: Any) -> Response:
            if not request.args.get("api-version"):
                raise ClientError(404, "Resource not found", None, "404")
            return handler(request, **kwargs)

        return versioned

    def error(self, problem: ClientError, headers: dict[str, str] | None = None) -> Response:
        if problem.kind is not None and problem.kind.isdigit():
            # Azure's own answers (a missing version, its rate limits) carry the status as the code and
            # no type or param: {"error": {"code": "429", "message": "..."}} (see the class).
            return json_response({"error": {"code": problem.kind, "message": problem.message}}, problem.status, headers)
        return super().error(problem, headers)

    # Azure's real-time 429: the status as the code (Microsoft Q&A 2140040 and openai/openai-node issue
    # 1108 quote the body).
    rate_limit_code = "429"

    def reset_text(self, seconds: float) -> str:
        # Whole seconds, not OpenAI's durations: "x-ratelimit-reset-tokens usually gives me an int in
        # seconds" (Microsoft Q&A 5625878, openai/openai-dotnet issue 838).
        return str(math.ceil(seconds))

    def retry_headers(self, seconds: float) -> dict[str, str]:
        """Azure sends the wait in whole seconds, `retry-after` (its 429s as Microsoft Q&A threads show
        them), and in milliseconds, `retry-after-ms`: Azure's throttling convention, which azure-core's
        throttling policy reads ("retry-after-ms", "x-ms-retry-after-ms", "Retry-After") and openai-python
        prefers to `retry-after` (_base_client.py `_parse_retry_after_header`)."""
        return {"retry-after-ms": str(max(1, math.ceil(seconds * 1000))), "retry-after": str(whole_seconds(seconds))}

    def limit_message(self, request: Request, endpoint: str, model: str, admission: Admission) -> str:
        # Azure's wording, as Microsoft Q&A 2140040 and openai/openai-node issue 1108 quote it for chat
        # completions' token limit ("ChatCompletions_Create ... have exceeded token rate limit"); the
        # requests-per-minute one and the other operations' names are modelled on it.
        operation = {
            "/v1/chat/completions": "ChatCompletions_Create",
            "/v1/completions": "Completions_Create",
            "/v1/embeddings": "Embeddings_Create",
        }.get(endpoint, "Responses_Create")
        return (
            f"Requests to the {operation} Operation under Azure OpenAI API version "
            f"{request.args.get('api-version')} have exceeded call rate limit of your current OpenAI S0 pricing "
            f"tier. Please retry after {whole_seconds(admission.reset_seconds)} seconds. Please go here: "
            "https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
        )

    def workers(self) -> list[Callable[[], None]]:
        return []  # Azure's batches send no webhooks

    def created(self, batch: Batch) -> None:
        batch.expires = False

    def over_quota(self, lines: _Lines, model: str, limit: int) -> None:
        raise ClientError(
            400,
            f"The number of enqueued tokens has surpassed the configured limit of {limit:,} for the "
            f"deployment '{model}'. Please either increase the limit or try again once the current jobs "
            "have finished.",
            None,
            "token_limit_exceeded",
        )

    def created_at(self, at: float) -> int | str:
        return iso(at) or "" if self.iso_created_at else int(at)
