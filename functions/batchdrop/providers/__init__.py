"""Provider registry. Adding a provider is adding its folder (batchdrop/providers/<name>/: the spec in
`__init__.py`, the client in `client.py`) and one line here.

The specs import no SDK; a provider's client module is imported only when the provider is used, so a
poll with nothing due never pays for an SDK. The order is the order shapes are recognised in, results
read in, and prices and settings listed in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from batchdrop.providers import anthropic, azure, bedrock, gemini, openai
from batchdrop.providers.spec import ProviderSpec

if TYPE_CHECKING:
    from batchdrop.config import ProviderSettings
    from batchdrop.providers.base import Observe, Provider, RealtimeClient

SPECS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        openai.SPEC,
        anthropic.SPEC,
        azure.SPEC,
        gemini.SPEC,
        bedrock.SPEC,
    )
}


def load(settings: ProviderSettings) -> Provider:
    module_name, _, class_name = SPECS[settings.name].client.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    provider: Provider = cls(settings)
    return provider


def load_realtime(settings: ProviderSettings, observe: Observe, max_retries: int) -> RealtimeClient:
    """The provider's real-time client (the real-time lane's worker only)."""
    module_name, _, class_name = SPECS[settings.name].realtime.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    client: RealtimeClient = cls(settings, observe, max_retries)
    return client
