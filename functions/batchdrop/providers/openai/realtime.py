"""OpenAI's real-time APIs through the official SDK's AsyncOpenAI: a batch line's body posted to its `url`."""

from __future__ import annotations

from typing import Any

import openai

from batchdrop.adapters.secrets import api_key
from batchdrop.config import ProviderSettings
from batchdrop.providers.realtime_sdk import ResponseHook, SdkRealtime


class OpenAIRealtime(SdkRealtime):
    name = "openai"
    status_error = openai.APIStatusError
    connection_error = openai.APIConnectionError

    def _connect(
        self, settings: ProviderSettings, hooks: dict[str, list[ResponseHook]], max_retries: int
    ) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=api_key(settings.secret_arn, "OPENAI_API_KEY"),
            base_url=settings.base_url,
            max_retries=max_retries,
            timeout=self.timeout,
            # The SDK's own HTTP client (its timeouts, connection limits and TCP keepalive), with our hook.
            http_client=openai.DefaultAsyncHttpxClient(event_hooks=hooks),
        )

    def _request(self, line: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        url, body = line["url"], line["body"]
        if line.get("method") != "POST" or not isinstance(url, str) or not url.startswith("/v1/"):
            raise ValueError(f"method {line.get('method')!r} and url {url!r}: expected POST to a /v1/ path")
        if not isinstance(body, dict):
            raise TypeError(f"body must be a JSON object, got {type(body).__name__}")
        # The client's base URL ends in /v1 (OpenAI's default); Azure's client maps the same relative
        # paths onto its deployments (openai-python lib/azure.py, `_deployments_endpoints`).
        return url[len("/v1") :], body
