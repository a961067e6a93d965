"""Azure OpenAI's real-time APIs through the official SDK's AsyncAzureOpenAI.

The line is OpenAI's; the client sends chat completions, completions and embeddings to
/openai/deployments/{body.model}/..., and the Responses API to /openai/responses, with the
api-version (openai-python lib/azure.py).
"""

from __future__ import annotations

import openai

from batchdrop.adapters.secrets import api_key
from batchdrop.config import ProviderSettings
from batchdrop.providers.azure.client import DEFAULT_API_VERSION
from batchdrop.providers.openai.realtime import OpenAIRealtime
from batchdrop.providers.realtime_sdk import ResponseHook


class AzureOpenAIRealtime(OpenAIRealtime):
    name = "azure"

    def _connect(
        self, settings: ProviderSettings, hooks: dict[str, list[ResponseHook]], max_retries: int
    ) -> openai.AsyncOpenAI:
        return openai.AsyncAzureOpenAI(
            azure_endpoint=settings.base_url or "",
            api_version=settings.api_version or DEFAULT_API_VERSION,
            api_key=api_key(settings.secret_arn, "AZURE_OPENAI_API_KEY"),
            max_retries=max_retries,
            timeout=self.timeout,
            http_client=openai.DefaultAsyncHttpxClient(event_hooks=hooks),
        )
