"""A local emulator of the providers' batch APIs: OpenAI (and Azure OpenAI), Anthropic, Bedrock and Gemini.

It is an HTTP server on 127.0.0.1 that the official SDKs talk to through their ``base_url`` (boto3
through ``endpoint_url``). Batches advance with the clock (a fake clock in tests), every request gets a
deterministic echo-like answer with token usage, and the knobs inject the failures a real provider has:
refused and failed requests, expired batches and transient HTTP errors. Outcomes are drawn from a hash
of (seed, batch id, custom_id), so the same seed and the same submissions give the same outcomes.

The package is a core (`core`: the server, routing, the lock, the clock, ids and fault injection), the
pieces every provider shares (`batches`, `canned`, `web`), and one plugin per provider (`openai`,
`anthropic`, `bedrock`, `gemini`). `ProviderEmulator` assembles them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from batchdrop.local.emulator.anthropic import AnthropicEmulation
from batchdrop.local.emulator.batches import Batch, BatchRequest
from batchdrop.local.emulator.bedrock import BedrockEmulation
from batchdrop.local.emulator.canned import (
    REFUSED,
    SERVER_ERROR,
    RequestOutcome,
    draw_batch_expires,
    draw_request_outcome,
)
from batchdrop.local.emulator.core import Emulator, EmulatorKnobs, Plugin, Route
from batchdrop.local.emulator.gemini import GeminiEmulation
from batchdrop.local.emulator.openai import OpenAIEmulation

__all__ = [
    "REFUSED",
    "SERVER_ERROR",
    "AnthropicEmulation",
    "Batch",
    "BatchRequest",
    "BedrockEmulation",
    "Emulator",
    "EmulatorKnobs",
    "GeminiEmulation",
    "OpenAIEmulation",
    "Plugin",
    "ProviderEmulator",
    "RequestOutcome",
    "Route",
    "draw_batch_expires",
    "draw_request_outcome",
    "serve_forever",
]


class ProviderEmulator(Emulator):
    """The OpenAI, Anthropic, Bedrock and Gemini batch APIs, emulated over HTTP on a background thread."""

    def __init__(
        self,
        knobs: EmulatorKnobs = EmulatorKnobs(),  # noqa: B008 — frozen: one shared default is safe
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(knobs, host, port, clock)
        self.openai = OpenAIEmulation(self)
        self.anthropic = AnthropicEmulation(self)
        self.bedrock = BedrockEmulation(self)
        self.gemini = GeminiEmulation(self)
        # OpenAI first: a path no provider owns is answered in its shape.
        for plugin in (self.openai, self.anthropic, self.bedrock, self.gemini):
            self.install(plugin)

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
