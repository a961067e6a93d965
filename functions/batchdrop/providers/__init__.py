"""Provider registry. Adding a provider is adding one module and one line here.

Modules are imported only when a provider is used, so a poll with nothing due never pays for an SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchdrop.config import ProviderSettings
    from batchdrop.providers.base import Provider

REGISTRY: dict[str, str] = {
    "openai": "batchdrop.providers.openai_batch:OpenAIProvider",
    "anthropic": "batchdrop.providers.anthropic_batch:AnthropicProvider",
    "azure": "batchdrop.providers.azure_batch:AzureOpenAIProvider",
    "gemini": "batchdrop.providers.gemini_batch:GeminiProvider",
    "bedrock": "batchdrop.providers.bedrock_batch:BedrockProvider",
}


def load(settings: ProviderSettings) -> Provider:
    module_name, _, class_name = REGISTRY[settings.name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    provider: Provider = cls(settings)
    return provider
