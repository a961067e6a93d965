"""Anthropic's Messages API through the official SDK's AsyncAnthropic: a batch request's params posted
to /v1/messages as they are.

The params are posted as the batch sent them, not through `messages.create`, which takes only the
parameters this SDK version knows and refuses, before sending, a non-streaming request whose max_tokens
it expects to take over 10 minutes (_base_client.py `_calculate_nonstreaming_timeout`): a batch takes both.
"""

from __future__ import annotations

from typing import Any

import anthropic

from batchdrop.adapters.secrets import api_key
from batchdrop.config import ProviderSettings
from batchdrop.providers.realtime_sdk import ResponseHook, SdkRealtime


class AnthropicRealtime(SdkRealtime):
    name = "anthropic"
    status_error = anthropic.APIStatusError
    connection_error = anthropic.APIConnectionError

    def _connect(
        self, settings: ProviderSettings, hooks: dict[str, list[ResponseHook]], max_retries: int
    ) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=api_key(settings.secret_arn, "ANTHROPIC_API_KEY"),
            base_url=settings.base_url,
            max_retries=max_retries,
            timeout=self.timeout,
            # The SDK's own HTTP client (its timeouts, connection limits and TCP keepalive), with our hook.
            http_client=anthropic.DefaultAsyncHttpxClient(event_hooks=hooks),
        )

    def _request(self, line: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        params = line["params"]
        if not isinstance(params, dict):
            raise TypeError(f"params must be a JSON object, got {type(params).__name__}")
        return "/v1/messages", params
