"""A local emulator of the OpenAI Batch API and the Anthropic Message Batches API.

It is an HTTP server on 127.0.0.1 that the official ``openai`` and ``anthropic`` SDKs talk to through
their ``base_url``: OpenAI's Files and Batches endpoints under ``/v1`` and Anthropic's
``/v1/messages/batches``. Batches advance with the clock (a fake clock in tests), every request gets a
deterministic echo-like answer with token usage, and the knobs inject the failures a real provider has:
refused and failed requests, expired batches and transient HTTP errors. Outcomes are drawn from a hash
of (seed, batch id, custom_id), so the same seed and the same submissions give the same outcomes.

State lives in memory behind one lock; the server runs on a background thread (``start``) or in the
foreground (``serve_forever``, for the ``batchdrop emulator`` command).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import random
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

logger = logging.getLogger(__name__)

MB = 1024 * 1024
DAY = 24 * 3600

OPENAI_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
)
OPENAI_FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

# Failure kinds drawn per request.
REFUSED = "refused"  # the provider refuses the request: OpenAI 400 / Anthropic invalid_request_error
SERVER_ERROR = "server_error"  # the provider fails it: OpenAI 500 / Anthropic api_error

_ECHO_PREFIX = "echo: "
_ECHO_MAX_CHARS = 200
_STREAM_CHUNK = 64 * 1024
_MAX_REPORTED_ERRORS = 1000
_EMBEDDING_DIMENSIONS = 8


@dataclass(frozen=True)
class EmulatorKnobs:
    """How the emulated providers behave.

    latency: seconds from batch creation until the batch has ended (0: ended on the first retrieve).
    failure_rate: per request, the probability it fails; half of those are refused (OpenAI 400 /
        Anthropic ``invalid_request_error``), half are server errors (OpenAI 500 / Anthropic ``api_error``).
    expire_rate: per batch, the probability it expires at ``latency``; requests whose finish fraction is
        <= 0.5 completed, the rest expired.
    transient_error_rate: per HTTP request, the probability of a 429 or 500 answered before doing
        anything (the SDKs retry these).
    seed: seeds every draw.
    """

    latency: float = 0.0
    failure_rate: float = 0.0
    expire_rate: float = 0.0
    transient_error_rate: float = 0.0
    seed: int = 0


# ---------------------------------------------------------------------------------------------------
# Deterministic draws


def _unit(*parts: object) -> float:
    """A uniform draw in [0, 1) from a hash of the parts."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _hex(*parts: object, length: int = 24) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()[:length]


@dataclass(frozen=True)
class RequestOutcome:
    """What happens to one request: when it finishes (a fraction of the processing time) and how."""

    finish_fraction: float
    failure: str | None  # None (succeeds), REFUSED or SERVER_ERROR


def draw_request_outcome(seed: int, batch_key: str, custom_id: str, failure_rate: float) -> RequestOutcome:
    """The deterministic outcome of one request of one batch."""
    finish = _unit(seed, batch_key, custom_id, "finish")
    draw = _unit(seed, batch_key, custom_id, "failure")
    failure = None
    if draw < failure_rate / 2:
        failure = REFUSED
    elif draw < failure_rate:
        failure = SERVER_ERROR
    return RequestOutcome(finish, failure)


def draw_batch_expires(seed: int, batch_key: str, expire_rate: float) -> bool:
    """Whether a batch expires (deterministic for the seed and the batch)."""
    return _unit(seed, batch_key, "expire") < expire_rate


# ---------------------------------------------------------------------------------------------------
# State


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    created_at: int
    data: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


class Emulation(Protocol):
    """Another provider's API served by the same emulator (Gemini, Bedrock): its routes, its error
    shape and authentication, and how it writes the results of a batch that has ended.

    It shares the emulator's lock, clock, knobs and `_Batch` state machine: create a `_Batch` with
    its own `provider` name and `emulator._register` it; `_advance` and `_end` then run as for the
    others, and `_end` calls `write_results` once the outcomes are drawn.
    """

    provider: str

    def routes(self) -> list[_Route]: ...

    def owns(self, path: str) -> bool: ...

    def authorised(self, request: Request) -> bool: ...

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response: ...

    def write_results(self, batch: _Batch) -> None: ...


# Extensions, built with the emulator they extend (one line per provider).
EMULATIONS: list[Callable[[ProviderEmulator], Emulation]] = []


@dataclass
class _Request:
    custom_id: str
    body: dict[str, Any]  # OpenAI: the line's body; Anthropic: params
    finish_fraction: float
    failure: str | None


@dataclass
class _Batch:
    provider: str
    id: str
    created: float
    latency: float
    expires: bool
    requests: list[_Request]
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
    notified: bool = False  # the webhook for its end was sent

    def finish_time(self, request: _Request) -> float:
        # Requests finish while the batch is in progress: between 10% and 90% of the latency.
        return self.created + self.latency * (0.1 + 0.8 * request.finish_fraction)

    def finished_by(self, request: _Request, at: float) -> bool:
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


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _int(ts: float | None) -> int | None:
    return None if ts is None else int(ts)


# ---------------------------------------------------------------------------------------------------
# Echo-like answers


def _tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


def _text_of(content: Any) -> str:
    """The text of a message content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _messages_text(messages: Any) -> tuple[str, int]:
    """The last user message's text and the characters of every message."""
    last_user = ""
    chars = 0
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            text = _text_of(message.get("content"))
            chars += len(text)
            if message.get("role") == "user":
                last_user = text
    return last_user, chars


def _cap(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def _echo(user_text: str, cap: int | None) -> tuple[str, int, bool]:
    """The reply text, its output tokens, and whether it was cut by the token cap."""
    text = _ECHO_PREFIX + user_text[:_ECHO_MAX_CHARS]
    tokens = _tokens(len(text))
    if cap is not None and tokens > cap:
        return text[: cap * 4], cap, True
    return text, tokens, False


def _chat_completion(body: dict[str, Any], key: str, created: int) -> tuple[dict[str, Any], int, int]:
    user_text, chars = _messages_text(body.get("messages"))
    text, out_tokens, cut = _echo(user_text, _cap(body, "max_completion_tokens", "max_tokens"))
    n = min(_cap(body, "n") or 1, 8)
    in_tokens = _tokens(chars)
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
        "id": f"chatcmpl-{_hex(key, 'chat')}",
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
        user_text, chars = _messages_text(given)
    instructions = body.get("instructions") if isinstance(body.get("instructions"), str) else None
    chars += len(instructions or "")
    max_output = _cap(body, "max_output_tokens")
    text, out_tokens, cut = _echo(user_text, max_output)
    in_tokens = _tokens(chars)
    status = "incomplete" if cut else "completed"
    reply = {
        "id": f"resp_{_hex(key, 'response', length=32)}",
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
                "id": f"msg_{_hex(key, 'response-message', length=32)}",
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


def _completion(body: dict[str, Any], key: str, created: int) -> tuple[dict[str, Any], int, int]:
    prompt = body.get("prompt")
    prompts = [p for p in prompt if isinstance(p, str)] if isinstance(prompt, list) else [_text_of(prompt)]
    prompts = prompts or [""]
    cap = _cap(body, "max_tokens")
    choices = []
    out_total = 0
    for index, text_in in enumerate(prompts):
        text, out_tokens, cut = _echo(text_in, cap)
        out_total += out_tokens
        choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": "length" if cut else "stop"})
    in_tokens = sum(_tokens(len(p)) for p in prompts)
    reply = {
        "id": f"cmpl-{_hex(key, 'completion')}",
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
        return [_tokens(len(given))]
    if isinstance(given, list):
        if given and all(isinstance(item, int) for item in given):
            return [len(given)]
        return [
            _tokens(len(item)) if isinstance(item, str) else len(item) if isinstance(item, list) else 1
            for item in given
        ] or [1]
    return [1]


def _embeddings(body: dict[str, Any], key: str, created: int) -> tuple[dict[str, Any], int, int]:
    dims = _cap(body, "dimensions") or _EMBEDDING_DIMENSIONS
    dims = min(dims, 64)
    counts = _embedding_inputs(body.get("input"))
    data = []
    for index in range(len(counts)):
        vector = [round(_unit(key, index, d) * 2 - 1, 6) for d in range(dims)]
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
            "category_scores": {name: round(_unit(key, index, name) / 1000, 8) for name, _ in _MODERATION_CATEGORIES},
            "category_applied_input_types": {name: list(types) for name, types in _MODERATION_CATEGORIES},
        }
        for index in range(count)
    ]
    reply = {"id": f"modr-{_hex(key, 'moderation')}", "model": body.get("model"), "results": results}
    return reply, 0, 0


_OPENAI_ANSWERS: dict[str, Callable[[dict[str, Any], str, int], tuple[dict[str, Any], int, int]]] = {
    "/v1/chat/completions": _chat_completion,
    "/v1/responses": _response,
    "/v1/completions": _completion,
    "/v1/embeddings": _embeddings,
    "/v1/moderations": _moderations,
}


def _anthropic_message(params: dict[str, Any], key: str) -> tuple[dict[str, Any], int, int]:
    user_text, chars = _messages_text(params.get("messages"))
    chars += len(_text_of(params.get("system")))
    text, out_tokens, cut = _echo(user_text, _cap(params, "max_tokens"))
    in_tokens = _tokens(chars)
    message = {
        "id": f"msg_{_hex(key, 'message')}",
        "type": "message",
        "role": "assistant",
        "model": params.get("model"),
        "content": [{"type": "text", "text": text, "citations": None}],
        "stop_reason": "max_tokens" if cut else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": in_tokens,
            "output_tokens": out_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "batch",
        },
    }
    return message, in_tokens, out_tokens


# ---------------------------------------------------------------------------------------------------
# HTTP helpers


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status=status, mimetype="application/json", headers=headers)


def _openai_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return _json({"error": error}, status, headers)


def _anthropic_error(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"type": "error", "error": {"type": type_, "message": message}}, status, headers)


def _stream(data: bytes, mimetype: str) -> Response:
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), _STREAM_CHUNK):
            yield data[start : start + _STREAM_CHUNK]

    response = Response(chunks(), mimetype=mimetype, direct_passthrough=True)
    response.content_length = len(data)
    return response


class _ClientError(Exception):
    """A request the emulator answers with a 4xx in the provider's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind


def _parse_json_body(request: Request) -> dict[str, Any]:
    try:
        payload = orjson.loads(request.get_data())
    except orjson.JSONDecodeError as exc:
        raise _ClientError(400, f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise _ClientError(400, "The request body must be a JSON object.")
    return payload


def _limit(request: Request, default: int, maximum: int) -> int:
    raw = request.args.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ClientError(400, f"Invalid 'limit': {raw!r} is not an integer.", "limit") from None
    if not 1 <= value <= maximum:
        raise _ClientError(400, f"Invalid 'limit': must be between 1 and {maximum}.", "limit")
    return value


class _QuietHandler(WSGIRequestHandler):
    """Serves without writing a line per request to stderr."""

    def log(self, type: str, message: str, *args: Any) -> None:
        return


_Route = tuple[str, re.Pattern[str], Callable[..., Response]]
# The calls that create a batch: OpenAI and Azure, Anthropic, Gemini (Bedrock's are idempotent by token).
# Bedrock's CreateModelInvocationJob (botocore's service model: POST /model-invocation-job).
_BEDROCK_CREATE = "/model-invocation-job"
_CREATES = re.compile(r"/v1/batches|/openai/batches|/v1/messages/batches|/v1beta/models/[^/]+:batchGenerateContent")


# ---------------------------------------------------------------------------------------------------
# The emulator


class ProviderEmulator:
    """The OpenAI and Anthropic batch APIs, emulated over HTTP on a background thread."""

    # Provider limits, as instance attributes so tests can lower them.
    openai_max_requests = 50_000
    openai_max_file_bytes = 200 * MB
    anthropic_max_requests = 100_000
    anthropic_max_bytes = 256 * MB
    # Bedrock's per-model quota of records per job (the local stack sets it with the functions').
    bedrock_min_records = 100
    # How many batch creates, from now on, succeed but answer 500, as if the answer were lost.
    lost_create_responses = 0
    # How many batch creates, from now on, are refused with a 400 in the provider's own error shape (a
    # batch the provider judges invalid: OpenAI's invalid_request_error, Anthropic's, Gemini's
    # INVALID_ARGUMENT, Bedrock's ValidationException), and how many fail with a 500 without making the
    # batch (an outage): what a create must end on at once, or retry within a bound.
    refused_creates = 0
    failed_creates = 0

    def __init__(
        self,
        knobs: EmulatorKnobs = EmulatorKnobs(),
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.knobs = knobs
        self.host = host
        self.port = port
        self._clock = clock
        self._lock = threading.RLock()
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}  # in creation order
        self._counters: dict[str, int] = {}
        self._batches_created: dict[str, int] = {"openai": 0, "anthropic": 0}
        self._requests_submitted: dict[str, int] = {}
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        # OpenAI webhooks (batch.completed, ...): where to send them and the signing secret
        # ("whsec_" + base64), as a project's webhook endpoint is configured at OpenAI.
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self._webhook_thread: threading.Thread | None = None
        self.webhooks_sent = 0
        self._serving = threading.Event()
        self._routes: list[_Route] = [
            ("POST", re.compile(r"/v1/files"), self._create_file),
            ("GET", re.compile(r"/v1/files"), self._list_files),
            ("GET", re.compile(r"/v1/files/(?P<file_id>[^/]+)"), self._retrieve_file),
            ("DELETE", re.compile(r"/v1/files/(?P<file_id>[^/]+)"), self._delete_file),
            ("GET", re.compile(r"/v1/files/(?P<file_id>[^/]+)/content"), self._file_content),
            ("POST", re.compile(r"/v1/batches"), self._create_openai_batch),
            ("GET", re.compile(r"/v1/batches"), self._list_openai_batches),
            ("GET", re.compile(r"/v1/batches/(?P<batch_id>[^/]+)"), self._retrieve_openai_batch),
            ("POST", re.compile(r"/v1/batches/(?P<batch_id>[^/]+)/cancel"), self._cancel_openai_batch),
            ("POST", re.compile(r"/v1/messages/batches"), self._create_anthropic_batch),
            ("GET", re.compile(r"/v1/messages/batches"), self._list_anthropic_batches),
            ("GET", re.compile(r"/v1/messages/batches/(?P<batch_id>[^/]+)"), self._retrieve_anthropic_batch),
            (
                "POST",
                re.compile(r"/v1/messages/batches/(?P<batch_id>[^/]+)/cancel"),
                self._cancel_anthropic_batch,
            ),
            (
                "GET",
                re.compile(r"/v1/messages/batches/(?P<batch_id>[^/]+)/results"),
                self._anthropic_results,
            ),
        ]
        self._emulations = [make(self) for make in EMULATIONS]
        for emulation in self._emulations:
            self._batches_created[emulation.provider] = 0
            self._routes.extend(emulation.routes())

    # -- lifecycle --------------------------------------------------------------------------------

    def _bind(self) -> BaseWSGIServer:
        if self._server is None:
            self._server = make_server(self.host, self.port, self._wsgi, threaded=True, request_handler=_QuietHandler)
            self.port = self._server.server_port
        return self._server

    def start(self) -> ProviderEmulator:
        """Serve on a background thread (port 0 picks a free port)."""
        server = self._bind()
        if self._thread is None:
            self._serving.set()
            self._thread = threading.Thread(target=self._serve, args=(server,), name="provider-emulator", daemon=True)
            self._thread.start()
        if self._webhook_thread is None:
            self._webhook_thread = threading.Thread(target=self._send_webhooks, name="emulator-webhooks", daemon=True)
            self._webhook_thread.start()
        return self

    def _send_webhooks(self) -> None:
        """When an OpenAI batch ends, POST a signed event to `webhook_url` (Standard Webhooks)."""
        import hmac
        import urllib.request

        while self._serving.is_set():
            time.sleep(0.05)
            if not self.webhook_url or not self.webhook_secret:
                continue
            events = []
            with self._lock:
                now = self._clock()
                for batch in self._batches.values():
                    if batch.provider != "openai" or batch.notified:
                        continue
                    self._advance(batch, now)
                    if batch.end_kind is not None:
                        batch.notified = True
                        events.append((batch.id, batch.end_kind, int(now)))
            secret = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
            for batch_id, kind, at in events:
                event_id = "evt_" + _hex("webhook", batch_id, length=24)
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

    def _serve(self, server: BaseWSGIServer) -> None:
        try:
            # A short poll interval keeps `stop` quick (shutdown waits for the next poll).
            server.serve_forever(poll_interval=0.05)
        finally:
            self._serving.clear()

    def stop(self) -> None:
        """Stop serving and release the port (also ends a foreground `serve_forever`)."""
        server = self._server
        if server is None:
            return
        if self._serving.is_set():
            server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        server.server_close()
        self._server = None

    def __enter__(self) -> ProviderEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    def stats(self) -> dict[str, Any]:
        """What was submitted: every batch with its custom_ids, and how often each custom_id was sent."""
        with self._lock:
            return {
                "batches": [
                    {
                        "provider": batch.provider,
                        "id": batch.id,
                        "request_count": batch.line_count,
                        "custom_ids": list(batch.custom_ids),
                        "metadata": dict(batch.metadata) if batch.metadata is not None else None,
                        "created_at": batch.created,
                    }
                    for batch in self._batches.values()
                ],
                "batches_created": dict(self._batches_created),
                "requests_submitted": dict(self._requests_submitted),
            }

    # -- HTTP dispatch ----------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        # Azure OpenAI serves the same Files and Batches API under /openai/ (with ?api-version=...).
        path = environ.get("PATH_INFO", "")
        if path.startswith("/openai/"):
            environ["PATH_INFO"] = "/v1/" + path[len("/openai/") :]
        request = Request(environ)
        try:
            response = self._dispatch(request)
        except Exception:
            logger.exception("provider emulator: unexpected error on %s %s", request.method, request.path)
            response = self._error(request, 500, "The emulator failed on this request.", "server")
        return response(environ, start_response)

    @staticmethod
    def _is_anthropic(request: Request) -> bool:
        return request.path.startswith("/v1/messages")

    def _request_id(self, request: Request) -> str:
        with self._lock:
            return f"req_{self._next_id('request')}"

    def _error(
        self,
        request: Request,
        status: int,
        message: str,
        kind: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """An error in the shape of the provider the path belongs to."""
        emulation = self._emulation_for(request.path)
        if emulation is not None:
            return emulation.error(status, message, headers)
        if self._is_anthropic(request):
            anthropic_types = {
                400: "invalid_request_error",
                401: "authentication_error",
                404: "not_found_error",
                405: "invalid_request_error",
                413: "request_too_large",
                429: "rate_limit_error",
                500: "api_error",
            }
            return _anthropic_error(status, anthropic_types.get(status, "api_error"), message, headers)
        openai_kinds = {401: "invalid_request_error", 429: "requests", 500: "server_error"}
        codes = {401: "invalid_api_key", 429: "rate_limit_exceeded"}
        type_ = openai_kinds.get(status, "invalid_request_error")
        return _openai_error(status, message, type_, param, kind or codes.get(status), headers)

    def _dispatch(self, request: Request) -> Response:
        transient = self._transient_status()
        if transient is not None:
            message = "Rate limit reached (emulated)." if transient == 429 else "Server error (emulated)."
            response = self._error(request, transient, message, headers={"retry-after-ms": "10"})
        elif not self._authorised(request, self._emulation_for(request.path)):
            response = self._error(request, 401, "Missing API key: send 'Authorization: Bearer' or 'x-api-key'.")
        elif (injected := self._injected_create_error(request)) is not None:
            response = injected
        else:
            response = self._route(request)
            if response.status_code == 200 and request.method == "POST" and _CREATES.fullmatch(request.path):
                with self._lock:
                    lose = self.lost_create_responses > 0
                    self.lost_create_responses -= lose
                if lose:
                    # The batch exists, but the client never hears of it (a dropped connection, a
                    # gateway timeout): what must not lead to a second batch.
                    response = self._error(request, 500, "Server error after the batch was created (emulated).")
        request_id = self._request_id(request)
        response.headers["request-id" if self._is_anthropic(request) else "x-request-id"] = request_id
        return response

    def _injected_create_error(self, request: Request) -> Response | None:
        if request.method != "POST" or not (_CREATES.fullmatch(request.path) or request.path == _BEDROCK_CREATE):
            return None
        with self._lock:
            refuse = self.refused_creates > 0
            fail = not refuse and self.failed_creates > 0
            self.refused_creates -= refuse
            self.failed_creates -= fail
        if refuse:
            return self._error(request, 400, "The batch was refused: its requests are invalid (emulated).")
        if fail:
            return self._error(request, 500, "Server error before the batch was created (emulated).")
        return None

    def _route(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        path_matched = False
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            path_matched = True
            if method != request.method:
                continue
            try:
                return handler(request, **match.groupdict())
            except _ClientError as exc:
                return self._error(request, exc.status, exc.message, exc.kind, exc.param)
        if path_matched:
            return self._error(request, 405, f"Method {request.method} is not allowed on {path}.")
        return self._error(request, 404, f"Unknown path: {request.method} {path}.")

    def _transient_status(self) -> int | None:
        knobs = self.knobs
        if knobs.transient_error_rate <= 0:
            return None
        with self._lock:
            n = self._counters.get("transient", 0)
            self._counters["transient"] = n + 1
        if _unit(knobs.seed, "transient", n) >= knobs.transient_error_rate:
            return None
        return 429 if _unit(knobs.seed, "transient-kind", n) < 0.5 else 500

    def _emulation_for(self, path: str) -> Emulation | None:
        return next((e for e in self._emulations if e.owns(path)), None)

    @staticmethod
    def _authorised(request: Request, emulation: Emulation | None = None) -> bool:
        if emulation is not None:
            return emulation.authorised(request)
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Bearer ") and authorization[len("Bearer ") :].strip():
            return True
        return bool(request.headers.get("x-api-key", "").strip() or request.headers.get("api-key", "").strip())

    def _next_id(self, kind: str, length: int = 24) -> str:
        """A deterministic id: the same seed and the same sequence of calls give the same ids."""
        n = self._counters.get(kind, 0)
        self._counters[kind] = n + 1
        return _hex(self.knobs.seed, kind, n, length=length)

    def _now(self) -> float:
        return float(self._clock())

    # -- OpenAI files -----------------------------------------------------------------------------

    def _create_file(self, request: Request) -> Response:
        purpose = request.form.get("purpose")
        upload = request.files.get("file")
        if upload is None:
            raise _ClientError(400, "Missing required parameter: 'file'.", "file")
        if purpose not in OPENAI_FILE_PURPOSES:
            raise _ClientError(400, f"Invalid value for 'purpose': {purpose!r}.", "purpose")
        data = upload.read()
        if purpose == "batch" and len(data) > self.openai_max_file_bytes:
            raise _ClientError(400, "File is too large: batch input files are limited to 200 MB.", "file")
        with self._lock:
            file = _File(
                id=f"file-{self._next_id('file')}",
                filename=upload.filename or "upload.jsonl",
                purpose=purpose,
                created_at=int(self._now()),
                data=data,
            )
            self._files[file.id] = file
        return _json(file.to_json())

    def _get_file(self, file_id: str) -> _File:
        with self._lock:
            file = self._files.get(file_id)
        if file is None:
            raise _ClientError(404, f"No such File object: {file_id}", "id")
        return file

    def _list_files(self, request: Request) -> Response:
        limit = _limit(request, 10_000, 10_000)
        purpose = request.args.get("purpose")
        with self._lock:
            files = [f for f in reversed(self._files.values()) if purpose is None or f.purpose == purpose]
        return self._cursor_page(request, [f.to_json() for f in files], limit)

    def _retrieve_file(self, request: Request, file_id: str) -> Response:
        return _json(self._get_file(file_id).to_json())

    def _delete_file(self, request: Request, file_id: str) -> Response:
        file = self._get_file(file_id)
        with self._lock:
            self._files.pop(file.id, None)
        return _json({"id": file.id, "object": "file", "deleted": True})

    def _file_content(self, request: Request, file_id: str) -> Response:
        file = self._get_file(file_id)
        return _stream(file.data, "application/octet-stream")

    @staticmethod
    def _cursor_page(request: Request, items: list[dict[str, Any]], limit: int) -> Response:
        after = request.args.get("after")
        if after is not None:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return _json(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )

    # -- OpenAI batches ---------------------------------------------------------------------------

    def _create_openai_batch(self, request: Request) -> Response:
        payload = _parse_json_body(request)
        input_file_id = payload.get("input_file_id")
        endpoint = payload.get("endpoint")
        window = payload.get("completion_window")
        metadata = payload.get("metadata")
        if not isinstance(input_file_id, str) or not input_file_id:
            raise _ClientError(400, "Missing required parameter: 'input_file_id'.", "input_file_id")
        if endpoint not in OPENAI_ENDPOINTS:
            raise _ClientError(
                400,
                f"Invalid value for 'endpoint': {endpoint!r}. Supported: {', '.join(OPENAI_ENDPOINTS)}.",
                "endpoint",
            )
        if window != "24h":
            raise _ClientError(
                400,
                f"Invalid value for 'completion_window': {window!r}. Supported: '24h'.",
                "completion_window",
            )
        self._check_metadata(metadata)
        with self._lock:
            file = self._files.get(input_file_id)
        if file is None:
            raise _ClientError(400, f"Invalid 'input_file_id': {input_file_id!r}. No such file.", "input_file_id")
        if file.purpose != "batch":
            raise _ClientError(
                400,
                f"Invalid 'input_file_id': the file's purpose is {file.purpose!r}, not 'batch'.",
                "input_file_id",
            )
        lines = self._read_openai_lines(file.data, str(endpoint))
        with self._lock:
            knobs = self.knobs
            batch_id = f"batch_{self._next_id('openai-batch', 32)}"
            requests = []
            if not lines.errors:
                for custom_id, body in lines.requests:
                    outcome = draw_request_outcome(knobs.seed, batch_id, custom_id, knobs.failure_rate)
                    requests.append(_Request(custom_id, body, outcome.finish_fraction, outcome.failure))
            batch = _Batch(
                provider="openai",
                id=batch_id,
                created=self._now(),
                latency=max(0.0, knobs.latency),
                expires=draw_batch_expires(knobs.seed, batch_id, knobs.expire_rate),
                requests=requests,
                custom_ids=lines.custom_ids,
                line_count=lines.line_count,
                metadata=dict(metadata) if metadata is not None else None,
                endpoint=str(endpoint),
                input_file_id=input_file_id,
                model=lines.model,
                errors=lines.errors,
            )
            self._register(batch)
            return _json(self._openai_batch_json(batch, batch.created, creating=True))

    @staticmethod
    def _check_metadata(metadata: Any) -> None:
        if metadata is None:
            return
        if not isinstance(metadata, dict):
            raise _ClientError(400, "Invalid 'metadata': expected an object.", "metadata")
        if len(metadata) > 16:
            raise _ClientError(400, "Invalid 'metadata': at most 16 key-value pairs.", "metadata")
        for key, value in metadata.items():
            if len(key) > 64:
                raise _ClientError(400, f"Invalid 'metadata': key {key[:20]!r}... is over 64 characters.", "metadata")
            if not isinstance(value, str) or len(value) > 512:
                raise _ClientError(
                    400,
                    f"Invalid 'metadata': the value of {key!r} must be a string of at most 512 characters.",
                    "metadata",
                )

    def _read_openai_lines(self, data: bytes, endpoint: str) -> _OpenAILines:
        """Validate an input file the way OpenAI does while the batch is `validating`."""
        result = _OpenAILines()
        seen: set[str] = set()

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
        if result.line_count == 0:
            fail("empty_file", None, "The input file is empty.")
        elif result.line_count > self.openai_max_requests:
            fail(
                "too_many_tasks",
                None,
                f"The input file has {result.line_count} requests; a batch holds at most {self.openai_max_requests}.",
            )
        return result

    def _register(self, batch: _Batch) -> None:
        self._batches[batch.id] = batch
        self._batches_created[batch.provider] = self._batches_created.get(batch.provider, 0) + 1
        for custom_id in batch.custom_ids:
            self._requests_submitted[custom_id] = self._requests_submitted.get(custom_id, 0) + 1

    def _get_batch(self, provider: str, batch_id: str) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None or batch.provider != provider:
            raise _ClientError(404, f"No batch found with id '{batch_id}'.", "batch_id")
        return batch

    def _retrieve_openai_batch(self, request: Request, batch_id: str) -> Response:
        with self._lock:
            batch = self._get_batch("openai", batch_id)
            now = self._now()
            self._advance(batch, now)
            return _json(self._openai_batch_json(batch, now))

    def _list_openai_batches(self, request: Request) -> Response:
        limit = _limit(request, 20, 100)
        after = request.args.get("after")
        with self._lock:
            batches = [b for b in reversed(self._batches.values()) if b.provider == "openai"]
            if after is not None:
                ids = [b.id for b in batches]
                batches = batches[ids.index(after) + 1 :] if after in ids else []
            page = batches[:limit]
            now = self._now()
            data = []
            for batch in page:
                self._advance(batch, now)
                data.append(self._openai_batch_json(batch, now))
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(batches) > limit,
            }
        )

    def _cancel_openai_batch(self, request: Request, batch_id: str) -> Response:
        with self._lock:
            batch = self._get_batch("openai", batch_id)
            now = self._now()
            self._cancel(batch, now)
            return _json(self._openai_batch_json(batch, now))

    def _cancel(self, batch: _Batch, now: float) -> None:
        self._advance(batch, now)
        if batch.cancel_at is not None:
            return
        if batch.end_kind is not None:
            raise _ClientError(400, f"Cannot cancel a batch that has already ended ({batch.end_kind}).")
        batch.cancel_at = now

    def _advance(self, batch: _Batch, now: float) -> None:
        """End the batch if its time has come, or if a cancel was requested."""
        if batch.end_kind is not None:
            return
        if batch.cancel_at is not None:
            # The cancel was answered with `cancelling`; the next look finds it done.
            self._end(batch, max(now, batch.cancel_at), "cancelled")
            return
        if batch.errors:
            if now >= batch.phase_time(0.1):
                self._end(batch, batch.phase_time(0.1), "failed")
            return
        if now >= batch.phase_time(1.0):
            self._end(batch, batch.phase_time(1.0), "expired" if batch.expires else "completed")

    def _end(self, batch: _Batch, at: float, kind: str) -> None:
        batch.ended_at = at
        batch.end_kind = kind
        if kind == "failed":
            return
        for request in batch.requests:
            if kind == "cancelled":
                done = batch.cancel_at is not None and batch.finished_by(request, batch.cancel_at)
                missing = "canceled"
            else:
                done = batch.finished_by(request, at)
                missing = "expired"
            batch.outcomes[request.custom_id] = (request.failure or "succeeded") if done else missing
        if batch.provider == "openai":
            self._write_openai_files(batch)
        elif batch.provider == "anthropic":
            self._write_anthropic_results(batch)
        else:
            next(e for e in self._emulations if e.provider == batch.provider).write_results(batch)

    # OpenAI output and error files

    def _write_openai_files(self, batch: _Batch) -> None:
        answer = _OPENAI_ANSWERS[batch.endpoint]
        output: list[bytes] = []
        errors: list[bytes] = []
        unfinished: list[bytes] = []
        in_total = out_total = 0
        for request in sorted(batch.requests, key=lambda r: r.finish_fraction):
            outcome = batch.outcomes[request.custom_id]
            key = f"{batch.id}/{request.custom_id}"
            line: dict[str, Any] = {
                "id": f"batch_req_{_hex(key, 'line', length=32)}",
                "custom_id": request.custom_id,
            }
            request_id = _hex(key, "request", length=32)
            if outcome == "succeeded":
                body, in_tokens, out_tokens = answer(request.body, key, int(batch.finish_time(request)))
                in_total += in_tokens
                out_total += out_tokens
                line["response"] = {"status_code": 200, "request_id": request_id, "body": body}
                line["error"] = None
                output.append(orjson.dumps(line))
            elif outcome in (REFUSED, SERVER_ERROR):
                status, type_, message = (
                    (400, "invalid_request_error", "The request was refused (emulated failure).")
                    if outcome == REFUSED
                    else (500, "server_error", "The server had an error processing the request (emulated).")
                )
                error_body = {"error": {"message": message, "type": type_, "param": None, "code": None}}
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
        if output:
            batch.output_file_id = self._store_file(f"{batch.id}_output.jsonl", output, created)
        if errors:
            batch.error_file_id = self._store_file(f"{batch.id}_error.jsonl", errors, created)

    def _store_file(self, filename: str, lines: list[bytes], created: int) -> str:
        file = _File(
            id=f"file-{self._next_id('file')}",
            filename=filename,
            purpose="batch_output",
            created_at=created,
            data=b"\n".join(lines) + b"\n",
        )
        self._files[file.id] = file
        return file.id

    def _openai_batch_json(self, batch: _Batch, now: float, creating: bool = False) -> dict[str, Any]:
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
            "created_at": int(batch.created),
            "expires_at": int(batch.created + DAY),
            **{name: _int(value) for name, value in stamps.items()},
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

    # -- Anthropic message batches ----------------------------------------------------------------

    def _create_anthropic_batch(self, request: Request) -> Response:
        if (request.content_length or 0) > self.anthropic_max_bytes:
            raise _ClientError(413, f"Request exceeds the maximum size of {self.anthropic_max_bytes} bytes.")
        payload = _parse_json_body(request)
        if len(request.get_data()) > self.anthropic_max_bytes:
            raise _ClientError(413, f"Request exceeds the maximum size of {self.anthropic_max_bytes} bytes.")
        requests = payload.get("requests")
        if not isinstance(requests, list) or not requests:
            raise _ClientError(400, "requests: Field required and must be a non-empty list.")
        if len(requests) > self.anthropic_max_requests:
            raise _ClientError(
                400,
                f"requests: a batch holds at most {self.anthropic_max_requests} requests, got {len(requests)}.",
            )
        seen: set[str] = set()
        accepted: list[tuple[str, dict[str, Any]]] = []
        for index, item in enumerate(requests):
            where = f"requests.{index}"
            if not isinstance(item, dict):
                raise _ClientError(400, f"{where}: Input should be an object.")
            custom_id = item.get("custom_id")
            params = item.get("params")
            if not isinstance(custom_id, str) or not ANTHROPIC_CUSTOM_ID.fullmatch(custom_id):
                raise _ClientError(400, f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'.")
            if custom_id in seen:
                raise _ClientError(400, f"{where}.custom_id: duplicate custom_id {custom_id!r} within the batch.")
            seen.add(custom_id)
            if not isinstance(params, dict):
                raise _ClientError(400, f"{where}.params: Field required.")
            if not isinstance(params.get("model"), str) or not params["model"]:
                raise _ClientError(400, f"{where}.params.model: Field required.")
            max_tokens = params.get("max_tokens")
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
                raise _ClientError(400, f"{where}.params.max_tokens: Input should be an integer >= 1.")
            messages = params.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _ClientError(400, f"{where}.params.messages: Field required and must be a non-empty list.")
            accepted.append((custom_id, params))
        with self._lock:
            knobs = self.knobs
            batch_id = f"msgbatch_{self._next_id('anthropic-batch')}"
            batch = _Batch(
                provider="anthropic",
                id=batch_id,
                created=self._now(),
                latency=max(0.0, knobs.latency),
                expires=draw_batch_expires(knobs.seed, batch_id, knobs.expire_rate),
                requests=[
                    _Request(custom_id, params, outcome.finish_fraction, outcome.failure)
                    for custom_id, params in accepted
                    for outcome in [draw_request_outcome(knobs.seed, batch_id, custom_id, knobs.failure_rate)]
                ],
                custom_ids=[custom_id for custom_id, _ in accepted],
                line_count=len(accepted),
            )
            self._register(batch)
            return _json(self._anthropic_batch_json(batch, request))

    def _retrieve_anthropic_batch(self, request: Request, batch_id: str) -> Response:
        with self._lock:
            batch = self._get_batch("anthropic", batch_id)
            self._advance(batch, self._now())
            return _json(self._anthropic_batch_json(batch, request))

    def _list_anthropic_batches(self, request: Request) -> Response:
        limit = _limit(request, 20, 1000)
        after_id = request.args.get("after_id")
        before_id = request.args.get("before_id")
        with self._lock:
            batches = [b for b in reversed(self._batches.values()) if b.provider == "anthropic"]
            ids = [b.id for b in batches]
            if before_id is not None:
                end = ids.index(before_id) if before_id in ids else 0
                start = max(0, end - limit)
                page, has_more = batches[start:end], start > 0
            else:
                start = ids.index(after_id) + 1 if after_id in ids else (0 if after_id is None else len(ids))
                page, has_more = batches[start : start + limit], len(batches) > start + limit
            now = self._now()
            data = []
            for batch in page:
                self._advance(batch, now)
                data.append(self._anthropic_batch_json(batch, request))
        return _json(
            {
                "data": data,
                "has_more": has_more,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }
        )

    def _cancel_anthropic_batch(self, request: Request, batch_id: str) -> Response:
        with self._lock:
            batch = self._get_batch("anthropic", batch_id)
            self._cancel(batch, self._now())
            return _json(self._anthropic_batch_json(batch, request))

    def _anthropic_results(self, request: Request, batch_id: str) -> Response:
        with self._lock:
            batch = self._get_batch("anthropic", batch_id)
            self._advance(batch, self._now())
            if batch.end_kind is None:
                status = "canceling" if batch.cancel_at is not None else "in_progress"
                raise _ClientError(404, f"Results for batch {batch_id} are not available yet: it is {status}.")
            data = batch.results
        return _stream(data, "application/binary")

    def _write_anthropic_results(self, batch: _Batch) -> None:
        lines: list[bytes] = []
        for request in batch.requests:
            outcome = batch.outcomes[request.custom_id]
            key = f"{batch.id}/{request.custom_id}"
            result: dict[str, Any]
            if outcome == "succeeded":
                message, _, _ = _anthropic_message(request.body, key)
                result = {"type": "succeeded", "message": message}
            elif outcome in (REFUSED, SERVER_ERROR):
                type_, message_text = (
                    ("invalid_request_error", "The request was refused (emulated failure).")
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
        random.Random(_hex(batch.id, "shuffle")).shuffle(lines)
        batch.results = b"".join(line + b"\n" for line in lines)

    def _anthropic_batch_json(self, batch: _Batch, request: Request) -> dict[str, Any]:
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
            "ended_at": _iso(batch.ended_at),
            "created_at": _iso(batch.created),
            "expires_at": _iso(batch.created + DAY),
            "archived_at": None,
            "cancel_initiated_at": _iso(batch.cancel_at),
            "results_url": results_url,
        }


@dataclass
class _OpenAILines:
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    custom_ids: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    line_count: int = 0


def serve_forever(
    knobs: EmulatorKnobs,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Callable[[ProviderEmulator], None] | None = None,
) -> None:
    """Serve the emulator in the foreground until interrupted (the `batchdrop emulator` command).

    Prints nothing itself; `ready`, if given, is called with the bound emulator (its base URLs are
    known then, even with port 0) before serving starts. `emulator.stop()` from another thread, or
    Ctrl-C, ends it.
    """
    emulator = ProviderEmulator(knobs, host, port)
    server = emulator._bind()
    if ready is not None:
        ready(emulator)
    emulator._serving.set()
    try:
        emulator._serve(server)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()


from batchdrop.local.emulator_bedrock import BedrockEmulation  # noqa: E402

EMULATIONS.append(BedrockEmulation)

from batchdrop.local.emulator_gemini import GeminiEmulation  # noqa: E402

EMULATIONS.append(GeminiEmulation)
