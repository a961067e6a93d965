"""boto3 clients, created lazily and cached per container.

The endpoint comes from boto3 itself (AWS_ENDPOINT_URL), which is how the embedded stack points the
same code at moto's server. Transient AWS errors are retried by botocore's standard retry mode
(exponential backoff with jitter); we do not wrap it.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

RETRIES = Config(retries={"mode": "standard", "max_attempts": 6}, connect_timeout=5, read_timeout=60)


@functools.cache
def client(service: str) -> Any:
    return boto3.session.Session().client(service, config=RETRIES)  # type: ignore[call-overload]


def reset() -> None:
    """Forget cached clients (the embedded stack calls this when it points AWS_ENDPOINT_URL elsewhere)."""
    client.cache_clear()
