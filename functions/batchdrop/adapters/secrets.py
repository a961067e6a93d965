"""Provider API keys from Secrets Manager, cached per container by Powertools."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import orjson

from batchdrop.adapters.aws import client


class MissingKey(Exception):
    pass


_providers: dict[int, Any] = {}


def _secrets() -> Any:
    """One SecretsProvider per Secrets Manager client (aws.client is cached per container, and the
    embedded stack resets it when it points at another endpoint)."""
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    sm = client("secretsmanager")
    if id(sm) not in _providers:
        _providers.clear()
        # Our own cached client, so the secret is read from the same endpoint as everything else.
        _providers[id(sm)] = SecretsProvider(boto3_client=sm)
    return _providers[id(sm)]


def api_key(secret_arn: str | None, env_name: str) -> str:
    """The key stored in the secret (a plain string, or JSON with "api_key"), else the SDK's own env var.

    The env var is for running the code outside batchdrop's deployments; the stack never sets it.
    """
    if secret_arn:
        # One provider per container: its cache (max_age) lives on the instance, so a new one per call
        # would read Secrets Manager every time (every webhook request, each 404 included).
        value = str(_secrets().get(secret_arn, max_age=300))
        if value.lstrip().startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                value = str(orjson.loads(value).get("api_key", ""))
        if value.strip():
            return value.strip()
        raise MissingKey(
            f"the secret {secret_arn} holds no API key: put one with "
            f"aws secretsmanager put-secret-value --secret-id {secret_arn} --secret-string KEY"
        )
    value = os.environ.get(env_name, "")
    if value:
        return value
    raise MissingKey(f"no API key: set the provider's secret ARN in the deployment, or {env_name}")
