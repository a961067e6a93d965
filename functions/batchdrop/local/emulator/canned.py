"""The emulator's canned answers and deterministic draws, shared by every provider.

Outcomes are drawn from a hash of (seed, batch id, custom_id), so the same seed and the same
submissions give the same outcomes; answers echo the last user text with token usage counted as one
token per four characters.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

# Failure kinds drawn per request.
REFUSED = "refused"  # the provider refuses the request: OpenAI 400 / Anthropic invalid_request_error
SERVER_ERROR = "server_error"  # the provider fails it: OpenAI 500 / Anthropic api_error

ECHO_PREFIX = "echo: "
ECHO_MAX_CHARS = 200


# ---------------------------------------------------------------------------------------------------
# Deterministic draws


def unit(*parts: object) -> float:
    """A uniform draw in [0, 1) from a hash of the parts."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def hex_id(*parts: object, length: int = 24) -> str:
    """A hex string from a hash of the parts (ids, keys, shuffles)."""
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()[:length]


@dataclass(frozen=True)
class RequestOutcome:
    """What happens to one request: when it finishes (a fraction of the processing time) and how."""

    finish_fraction: float
    failure: str | None  # None (succeeds), REFUSED or SERVER_ERROR


def draw_request_outcome(seed: int, batch_key: str, custom_id: str, failure_rate: float) -> RequestOutcome:
    """The deterministic outcome of one request of one batch."""
    finish = unit(seed, batch_key, custom_id, "finish")
    draw = unit(seed, batch_key, custom_id, "failure")
    failure = None
    if draw < failure_rate / 2:
        failure = REFUSED
    elif draw < failure_rate:
        failure = SERVER_ERROR
    return RequestOutcome(finish, failure)


def call_key(body: Any) -> str:
    """The name of one real-time request: a hash of its body as canonical JSON (keys sorted), or of its
    bytes when they are not JSON. A request sent again (an SDK's retry, the lane's next try) keeps its
    name, so its draws and its entries in `Emulator.realtime_calls` match."""
    if isinstance(body, bytes):
        canonical = body
    else:
        try:
            canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            canonical = repr(body).encode()
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def draw_call_failure(seed: int, provider: str, key: str, failure_rate: float) -> str | None:
    """How a real-time call fails, if it does: REFUSED or SERVER_ERROR, half of `failure_rate` each, as
    for a batch's requests; drawn from the request's name (`call_key`), so that the same request fails
    the same way every time it is sent."""
    draw = unit(seed, provider, key, "call-failure")
    if draw < failure_rate / 2:
        return REFUSED
    if draw < failure_rate:
        return SERVER_ERROR
    return None


def draw_batch_expires(seed: int, batch_key: str, expire_rate: float) -> bool:
    """Whether a batch expires (deterministic for the seed and the batch)."""
    return unit(seed, batch_key, "expire") < expire_rate


def iso(ts: float | None) -> str | None:
    """A timestamp as RFC 3339 with microseconds and a Z (Anthropic, Gemini and Bedrock alike)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------------
# Echo-like answers


def tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


def text_of(content: Any) -> str:
    """The text of a message content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def messages_text(messages: Any) -> tuple[str, int]:
    """The last user message's text and the characters of every message."""
    last_user = ""
    chars = 0
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            text = text_of(message.get("content"))
            chars += len(text)
            if message.get("role") == "user":
                last_user = text
    return last_user, chars


def positive(body: dict[str, Any], *names: str) -> int | None:
    """The first of the named fields that is a positive integer (a token cap, a count)."""
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def echo(user_text: str, cap: int | None) -> tuple[str, int, bool]:
    """The reply text, its output tokens, and whether it was cut by the token cap."""
    text = ECHO_PREFIX + user_text[:ECHO_MAX_CHARS]
    count = tokens(len(text))
    if cap is not None and count > cap:
        return text[: cap * 4], cap, True
    return text, count, False


def cached_part(prompt_tokens: int, rate: float) -> int:
    """The prompt tokens an answer reports as read from the provider's cache (the knob
    `cached_input_rate`): a share of them, rounded down, so a test knows the figure exactly."""
    return int(prompt_tokens * rate)


def anthropic_message(params: dict[str, Any], key: str, cached_rate: float = 0.0) -> tuple[dict[str, Any], int, int]:
    """A Messages API answer: Anthropic's batches return it, and Bedrock's Claude models too. Its input
    tokens (returned) are the whole prompt; the answer reports `cached_rate` of them as cache reads,
    apart from its `input_tokens` as Anthropic does (anthropic-python's Usage.cache_read_input_tokens)."""
    user_text, chars = messages_text(params.get("messages"))
    chars += len(text_of(params.get("system")))
    text, out_tokens, cut = echo(user_text, positive(params, "max_tokens"))
    in_tokens = tokens(chars)
    read = cached_part(in_tokens, cached_rate)
    message = {
        "id": f"msg_{hex_id(key, 'message')}",
        "type": "message",
        "role": "assistant",
        "model": params.get("model"),
        "content": [{"type": "text", "text": text, "citations": None}],
        "stop_reason": "max_tokens" if cut else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": in_tokens - read,
            "output_tokens": out_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": read,
            "service_tier": "batch",
        },
    }
    return message, in_tokens, out_tokens
