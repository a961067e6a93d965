"""Azure OpenAI global batch through the official SDK's AzureOpenAI client.

The API is OpenAI's (Files and Batches under <endpoint>/openai/, with an api-version); `body.model`
names a deployment. Whether Azure keeps batch metadata is not documented clearly, so an orphan is not
looked for by tag: creates are serialised like Anthropic's and matched by time and request count,
with our metadata used when it is there.
"""

from __future__ import annotations

import openai

from batchdrop.adapters.secrets import api_key
from batchdrop.providers.base import BatchRef
from batchdrop.providers.openai.client import META_BATCH, META_JOB, SKEW_SECONDS, OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIProvider(OpenAIProvider):
    name = "azure"
    tags_batches = False

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = openai.AzureOpenAI(
                azure_endpoint=self.settings.base_url or "",
                api_version=self.settings.api_version or DEFAULT_API_VERSION,
                api_key=api_key(self.settings.secret_arn, "AZURE_OPENAI_API_KEY"),
                max_retries=6,
                timeout=120,
            )
        return self._client

    def find(self, batch: BatchRef, exclude: frozenset[str]) -> str | None:
        for candidate in self.client.batches.list(limit=100):
            if candidate.created_at < batch.intent_at - SKEW_SECONDS:
                return None
            if candidate.id in exclude:
                continue
            meta = candidate.metadata or {}
            if meta:
                if meta.get(META_JOB) == batch.job_id and meta.get(META_BATCH) == batch.key:
                    return candidate.id
                continue
            counts = candidate.request_counts
            if counts is not None and counts.total == batch.requests and candidate.created_at >= batch.intent_at - 5:
                return candidate.id
        return None
