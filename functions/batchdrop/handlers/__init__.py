"""Lambda entry points. Each handler parses its event, calls one function of the logic, returns.

`deps()` builds the wiring once per container from the environment. The embedded stack swaps the
factory with `use_deps` (dependency injection, as in serverless-python-demo), never by patching.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from batchdrop.config import Settings
from batchdrop.pipeline import Deps

_cache: dict[tuple[tuple[str, str], ...], Deps] = {}
_factory: Callable[[], Deps] | None = None


def deps() -> Deps:
    if _factory is not None:
        return _factory()
    # Keyed by the settings' environment, so a process that points at another stack gets new wiring.
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("BATCHDROP_", "AWS_ENDPOINT"))))
    if key not in _cache:
        _cache[key] = Deps.from_settings(Settings.from_env())
    return _cache[key]


def use_deps(factory: Callable[[], Deps] | None) -> None:
    global _factory
    _factory = factory
