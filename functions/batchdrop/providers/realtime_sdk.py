"""What the real-time clients on the openai and anthropic SDKs share (batchdrop.providers.base.RealtimeClient).

Both SDKs are generated alike (their _base_client.py): a client posts a JSON body to a path with its own
authentication, headers and retries (429, 408, 409, 5xx, timeouts and connection errors, honouring
`retry-after-ms` and `retry-after`), and raises APIStatusError (`status_code`, `response`) for an
answer it will not retry, APIConnectionError (APITimeoutError included) when no answer came. A
client here posts the batch line's own body, unchanged, and keeps the answer's raw JSON, so the
real-time result is the body the batch result would carry, not the SDK's model of it.

Every HTTP answer the SDK receives, its retries' included, is passed to `observe` from the HTTP client's
response hook: the lane's limiter paces itself by them.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar

import orjson

from batchdrop import models as m
from batchdrop.config import ProviderSettings
from batchdrop.providers.base import BUILD_ERRORS, Observe, RateLimited

logger = logging.getLogger(__name__)

# 4xx answers the SDKs retry as transient (_base_client.py `_should_retry`: 408 request timeout, 409
# lock timeout): once the retries have run out, an outage, not the request's fault.
TRANSIENT_4XX = frozenset({408, 409})
# Raised reading a batch line that is not the provider's request (a field missing or of another type).
LINE_ERRORS: tuple[type[Exception], ...] = (*BUILD_ERRORS, KeyError)
# One part of a Go duration, the format of OpenAI's x-ratelimit-reset-* headers ("1s", "6m0s", "12ms").
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

ResponseHook = Callable[[Any], Awaitable[None]]


def observing(observe: Observe) -> dict[str, list[ResponseHook]]:
    """The `event_hooks` of an HTTP client (httpx's, under either SDK) that passes every answer to `observe`."""

    async def seen(response: Any) -> None:
        try:
            observe(response.status_code, {name.lower(): value for name, value in response.headers.items()})
        except Exception:
            # Never out of the hook: the SDK takes an error raised while sending as a failed connection
            # and sends the request again, which would run it twice for the observer's fault.
            logger.exception("the real-time observer failed on an answer; the call goes on")

    return {"request": [], "response": [seen]}


def duration_seconds(value: str) -> float | None:
    """A reset header's wait in seconds: a Go duration (OpenAI's "6m0s") or a number (Azure's "12")."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        return None
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """How long a 429 says to wait, in seconds, or None if it does not say.

    `retry-after-ms`, then `retry-after` (seconds, or an HTTP date), as the SDKs read them
    (_base_client.py `_parse_retry_after_header`). Without either, the reset of the limit that is used
    up: OpenAI's x-ratelimit-reset-requests / -tokens (a Go duration) when its x-ratelimit-remaining-* is
    0 (platform.openai.com/docs/guides/rate-limits, "Rate limits in headers"), Anthropic's
    anthropic-ratelimit-*-reset (RFC 3339) when its -remaining is 0 (docs.anthropic.com/en/api/rate-limits,
    "Response headers"); the longest, if several are used up.
    """
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, IndexError):
                continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    waits: list[float] = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        if headers.get(f"x-ratelimit-remaining-{kind}") == "0" and reset:
            wait = duration_seconds(reset)
            if wait is not None:
                waits.append(wait)
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
        if headers.get(f"anthropic-ratelimit-{kind}-remaining") == "0" and reset:
            try:
                waits.append(datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp() - time.time())
            except ValueError:
                continue
    return max(0.0, max(waits)) if waits else None


def _error_body(response: Any) -> Any:
    """The error answer's body as the provider sent it: its JSON, else its text."""
    try:
        return orjson.loads(response.content)
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return getattr(response, "text", None)


def _provider_message(body: Any) -> str | None:
    """The message of an error body: OpenAI's {"error": {"message"}}, Anthropic's {"type": "error",
    "error": {"type", "message"}}, or a bare {"message"}."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    message = body.get("message")
    return message if isinstance(message, str) else None


class SdkRealtime:
    """One provider's real-time API through its SDK's async client (see the module). A subclass builds
    the client (`_connect`) and says where a batch line goes (`_request`)."""

    name: ClassVar[str]
    # The SDK's APIStatusError and APIConnectionError.
    status_error: ClassVar[type[Exception]]
    connection_error: ClassVar[type[Exception]]
    # Seconds one attempt may take: a long generation answers in minutes, and the SDKs' own default
    # (10 minutes) times the SDK's retries would outlast the function that runs the call.
    timeout: ClassVar[float] = 300.0

    def __init__(self, settings: ProviderSettings, observe: Observe, max_retries: int) -> None:
        self.settings = settings
        self._client = self._connect(settings, observing(observe), max_retries)

    def _connect(self, settings: ProviderSettings, hooks: dict[str, list[ResponseHook]], max_retries: int) -> Any:
        """The SDK's async client, its HTTP client built with these event hooks."""
        raise NotImplementedError

    def _request(self, line: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of the batch line's request, the path relative to the client's base URL;
        ValueError, TypeError or KeyError for a line that is not one."""
        raise NotImplementedError

    async def call(self, payload: bytes, model: str) -> m.Outcome:
        # `model` is not needed: the body names it (Azure: its deployment), as it does in the batch.
        custom_id = ""
        try:
            line = orjson.loads(payload)
            custom_id = str(line["custom_id"])
            path, body = self._request(line)
        except LINE_ERRORS as exc:
            return m.Outcome(custom_id, ok=False, code=m.REQUEST_ERROR, message=f"not a {self.name} request: {exc}")
        try:
            raw = await self._client.post(path, body=body, cast_to=bytes)
        except self.status_error as exc:
            return self._refused(custom_id, exc)
        except self.connection_error as exc:
            # The SDK's retries ran out on timeouts or failed connections.
            return m.Outcome(custom_id, ok=False, code=m.SERVER_ERROR, message=f"{self.name} did not answer: {exc}")
        except BUILD_ERRORS as exc:
            # The SDK would not build the request (a deployment name it cannot put in a URL): the same
            # line fails the same way every time.
            return m.Outcome(custom_id, ok=False, code=m.REQUEST_ERROR, message=f"the request cannot be sent: {exc}")
        try:
            response = orjson.loads(raw)
        except orjson.JSONDecodeError:
            response = None
        if not isinstance(response, dict):
            return m.Outcome(
                custom_id,
                ok=False,
                code=m.SERVER_ERROR,
                message=f"{self.name} answered 200 with a body that is not a JSON object",
                detail=raw[:1000].decode("utf-8", "replace"),
            )
        return m.Outcome(custom_id, ok=True, response=response)

    def _refused(self, custom_id: str, exc: Any) -> m.Outcome:
        """An error answer the SDK gave up on (its retries ran out, or it does not retry it)."""
        status = int(exc.status_code)
        detail = _error_body(exc.response)
        message = _provider_message(detail) or str(exc)
        if status == 429:
            raise RateLimited(message, retry_after(exc.response.headers)) from exc
        refused = 400 <= status < 500 and status not in TRANSIENT_4XX
        return m.Outcome(
            custom_id, ok=False, code=m.REQUEST_ERROR if refused else m.SERVER_ERROR, message=message, detail=detail
        )

    async def aclose(self) -> None:
        await self._client.close()
