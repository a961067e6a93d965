"""A local emulator of the providers' batch APIs: OpenAI (and Azure OpenAI), Anthropic, Bedrock and Gemini.

It is an HTTP server on 127.0.0.1 that the official SDKs talk to through their ``base_url`` (boto3
through ``endpoint_url``). Batches advance with the clock (a fake clock in tests), every request gets a
deterministic echo-like answer with token usage, and the knobs inject the failures a real provider has:
refused and failed requests, expired batches and transient HTTP errors. Outcomes are drawn from a hash
of (seed, batch id, custom_id), so the same seed and the same submissions give the same outcomes.

The package is a core (`core`: the server, routing, the lock, the clock, ids and fault injection), the
pieces every provider shares (`batches`, `canned`, `web`, and `realtime` for the real-time endpoints'
rate limit, failures and record), and one plugin per provider (`openai`,
`anthropic`, `bedrock`, `gemini`). `ProviderEmulator` installs the plugin each registered provider's
spec names (batchdrop.providers.SPECS), so a new provider's plugin needs no line here.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

from batchdrop.local.emulator.batches import Batch, BatchRequest
from batchdrop.local.emulator.canned import (
    REFUSED,
    SERVER_ERROR,
    RequestOutcome,
    draw_batch_expires,
    draw_request_outcome,
)
from batchdrop.local.emulator.core import Emulator, EmulatorKnobs, Plugin, Route
from batchdrop.providers import SPECS

__all__ = [
    "REFUSED",
    "SERVER_ERROR",
    "Batch",
    "BatchRequest",
    "Emulator",
    "EmulatorKnobs",
    "Plugin",
    "ProviderEmulator",
    "RequestOutcome",
    "Route",
    "draw_batch_expires",
    "draw_request_outcome",
    "serve_forever",
]


class ProviderEmulator(Emulator):
    """Every registered provider's batch API, emulated over HTTP on a background thread; a provider's
    plugin is the attribute of its name (`emulator.openai`, `emulator.bedrock`)."""

    def __init__(
        self,
        knobs: EmulatorKnobs = EmulatorKnobs(),  # noqa: B008 — frozen: one shared default is safe
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(knobs, host, port, clock)
        # Each spec's plugin once (Azure's is OpenAI's), in the registry's order: a path no plugin owns
        # is answered in the first one's shape (OpenAI's).
        for path in dict.fromkeys(spec.emulator for spec in SPECS.values()):
            module, _, name = path.partition(":")
            self.install(getattr(importlib.import_module(module), name)(self))

    def __getattr__(self, name: str) -> Any:
        for plugin in self.__dict__.get("plugins", ()):
            if plugin.provider == name:
                return plugin
        raise AttributeError(f"{type(self).__name__} has no attribute or provider plugin {name!r}")

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url


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
    emulator.bind()
    if ready is not None:
        ready(emulator)
    try:
        emulator.serve()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
