"""boto3 clients, created lazily and cached per container.

The endpoint comes from boto3 itself (AWS_ENDPOINT_URL), which is how the embedded stack points the
same code at moto's server. Transient AWS errors are retried by botocore's standard retry mode
(exponential backoff with jitter); we do not wrap it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

RETRIES = Config(retries={"mode": "standard", "max_attempts": 6}, connect_timeout=5, read_timeout=60)

_clients: dict[str, Any] = {}
# Every client still alive, cached or not: a container's wiring may hold one made before a reset.
_alive: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
# Set only while batchdrop.local.bill counts a local run's calls: it is given every client, cached or
# created later, to register its botocore handlers on. Nothing is registered otherwise, so a deployed
# function's calls pay nothing for it.
_watchers: list[Callable[[Any], None]] = []


def client(service: str) -> Any:
    found = _clients.get(service)
    if found is None:
        with _lock:
            found = _clients.get(service)
            if found is None:
                found = boto3.session.Session().client(service, config=RETRIES)  # type: ignore[call-overload]
                for watch in _watchers:
                    watch(found)
                _clients[service] = found
                _alive.add(found)
    return found


def watch(register: Callable[[Any], None]) -> None:
    """Give `register` every client alive now, and each one created until `unwatch`."""
    with _lock:
        _watchers.append(register)
        clients = list(_alive)
    for existing in clients:
        register(existing)


def unwatch(register: Callable[[Any], None]) -> None:
    with _lock:
        if register in _watchers:
            _watchers.remove(register)


def reset() -> None:
    """Forget cached clients (the embedded stack calls this when it points AWS_ENDPOINT_URL elsewhere)."""
    with _lock:
        _clients.clear()
