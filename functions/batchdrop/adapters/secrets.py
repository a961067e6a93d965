"""Provider API keys from Secrets Manager, cached per container by Powertools."""

from __future__ import annotations

import contextlib
import os

import orjson

from batchdrop.adapters.aws import client


class MissingKey(Exception):
    pass


def api_key(secret_arn: str | None, env_name: str) -> str:
    """The key stored in the secret (a plain string, or JSON with "api_key"), else the SDK's own env var.

    The env var is for running the code outside batchdrop's deployments; the stack never sets it.
    """
    if secret_arn:
        from aws_lambda_powertools.utilities.parameters import SecretsProvider

        # Our own cached client, so the secret is read from the same endpoint as everything else.
        value = str(SecretsProvider(boto3_client=client("secretsmanager")).get(secret_arn, max_age=300))
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
