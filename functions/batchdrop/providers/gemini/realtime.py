"""Gemini's real-time API: one GenerateContentRequest at a time, through the official google-genai SDK's
async client.

The batch line's `request` is already the REST GenerateContentRequest that Batch Mode runs, so it is
sent as it is, on the path `client.aio.models.generate_content` uses (`t_model(model)` +
`:generateContent`) through the SDK's own request function (its auth, base URL, timeout and retries):
going through `generate_content`'s typed arguments would re-encode it through the SDK's pydantic types
(refusing fields they do not know, rewriting schemas) and hand back a parsed object, where the batch
result carries Google's JSON as it came. So the answer here is byte for byte what Batch Mode's
responses file would hold for the line.

Every HTTP answer, each retry's included, reaches `observe` through an event hook of the httpx client
we give the SDK (`HttpOptions.httpx_async_client`; the SDK would otherwise pick aiohttp when it is
installed, which has no such hook).
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Mapping
from typing import Any

import orjson
from google import genai
from google.genai import _transformers, errors, types

from batchdrop import models as m
from batchdrop.adapters.secrets import api_key
from batchdrop.config import ProviderSettings
from batchdrop.providers.base import BUILD_ERRORS, Observe, RateLimited
from batchdrop.providers.gemini.client import API_VERSION, TRANSPORT_ERRORS, URL_ERRORS

# One call may generate for minutes (long outputs, thinking); past this the attempt counts as a timeout,
# which the SDK retries.
REQUEST_TIMEOUT_MS = 300_000
# google.rpc.RetryInfo's retryDelay: a google.protobuf.Duration in JSON, seconds with up to 9 decimals
# and an "s" ("26s", "1.5s").
_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# A payload that is not a Gemini batch line, or a model name the SDK will not put in a URL (`t_model`'s
# ValueError): it fails alike every time it is sent.
BAD_LINE: tuple[type[Exception], ...] = (*BUILD_ERRORS, KeyError, AttributeError)


class GeminiRealtime:
    """A `batchdrop.providers.base.RealtimeClient` for Gemini (see the module)."""

    name = "gemini"
    # The SDK's backoff between attempts (tenacity's exponential jitter): 1 s doubling to 60 s. It does
    # not read Google's RetryInfo; `RateLimited` carries it to the lane once the attempts are spent.
    retry_initial_delay = 1.0
    retry_max_delay = 60.0

    def __init__(self, settings: ProviderSettings, observe: Observe, max_retries: int) -> None:
        self.settings = settings
        self.observe = observe
        self.max_retries = max(0, max_retries)
        self._client: genai.Client | None = None
        self._http: Any = None
        self._building = asyncio.Lock()

    async def call(self, payload: bytes, model: str) -> m.Outcome:
        client = await self._sdk()
        custom_id = ""
        try:
            line = orjson.loads(payload)
            custom_id = str(line["key"])
            # The model is the batch's (Gemini runs a batch on one model); the path carries it.
            request = {k: v for k, v in line["request"].items() if k != "model"}
            path = f"{_transformers.t_model(client._api_client, model)}:generateContent"
        except BAD_LINE as exc:
            return _failed(custom_id, m.REQUEST_ERROR, f"the request cannot be sent to Gemini: {exc}", None)
        try:
            response = await client.aio._api_client.async_request("post", path, request)
        except errors.APIError as exc:
            return _outcome_of_error(custom_id, exc)
        except URL_ERRORS as exc:
            return _failed(custom_id, m.REQUEST_ERROR, f"the request cannot be sent to Gemini: {exc}", None)
        except TRANSPORT_ERRORS as exc:
            # Timeouts and connection errors that outlasted the SDK's retries.
            return _failed(custom_id, m.SERVER_ERROR, f"Gemini did not answer: {type(exc).__name__}: {exc}", None)
        try:
            body = orjson.loads(response.body or b"")
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _failed(custom_id, m.SERVER_ERROR, "Gemini answered 200 without a GenerateContentResponse", None)
        return m.Outcome(custom_id, ok=True, response=body)

    async def aclose(self) -> None:
        client, http = self._client, self._http
        self._client = self._http = None
        if client is not None:
            # The SDK leaves a client it was given to its owner; these close what it built itself.
            await client.aio.aclose()
            client.close()
        if http is not None:
            await http.aclose()

    async def _sdk(self) -> genai.Client:
        async with self._building:
            if self._client is None:
                # Secrets Manager is read through boto3, which blocks: not on the event loop.
                key = await asyncio.to_thread(api_key, self.settings.secret_arn, "GEMINI_API_KEY")
                self._http = _httpx().AsyncClient(
                    event_hooks={"response": [self._observed]},
                    # As the SDK's own clients are built.
                    follow_redirects=True,
                )
                self._client = genai.Client(
                    api_key=key,
                    http_options=types.HttpOptions(
                        base_url=self.settings.base_url,  # None: Google's own endpoint
                        api_version=API_VERSION,
                        timeout=REQUEST_TIMEOUT_MS,
                        # The SDK retries 408, 429, 5xx, timeouts and connection errors.
                        retry_options=types.HttpRetryOptions(
                            attempts=self.max_retries + 1,
                            initial_delay=self.retry_initial_delay,
                            max_delay=self.retry_max_delay,
                            exp_base=2.0,
                            jitter=1.0,
                        ),
                        httpx_async_client=self._http,
                    ),
                )
            return self._client

    async def _observed(self, response: Any) -> None:
        headers: Mapping[str, str] = {k.lower(): v for k, v in response.headers.items()}
        self.observe(response.status_code, headers)


def _httpx() -> Any:
    """The HTTP client package the SDK uses by default (httpx2), else httpx, which it also takes."""
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("google-genai needs httpx2 or httpx")


def _outcome_of_error(custom_id: str, exc: errors.APIError) -> m.Outcome:
    message = str(exc.message or exc.status or f"HTTP {exc.code}")
    if exc.code == 429:
        # RESOURCE_EXHAUSTED: a quota still full once the SDK's attempts were spent.
        raise RateLimited(f"Gemini: {message}", retry_delay(exc.details)) from exc
    if 400 <= exc.code < 500 and exc.code != 408:
        # INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED...: Google will answer the same request the same way.
        return _failed(custom_id, m.REQUEST_ERROR, message, exc.details)
    # 408 (DEADLINE_EXCEEDED) and 5xx: the SDK's retries ran out.
    return _failed(custom_id, m.SERVER_ERROR, message, exc.details)


def retry_delay(body: Any) -> float | None:
    """The seconds Google's RetryInfo asks for, from an error body {"error": {"details": [...]}}."""
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
            match = _DURATION.fullmatch(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _failed(custom_id: str, code: str, message: str, detail: Any) -> m.Outcome:
    return m.Outcome(custom_id, ok=False, code=code, message=message, detail=detail)
