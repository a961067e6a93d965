"""Provider keys come from Secrets Manager once per container and five minutes, not once per call."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from batchdrop.adapters import aws
from batchdrop.adapters.secrets import api_key


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        aws.reset()
        arn = boto3.client("secretsmanager").create_secret(Name="k", SecretString='{"api_key": "sk-1"}')["ARN"]
        yield arn
        aws.reset()


def test_a_key_is_read_from_secrets_manager_once_for_many_calls(secret: str) -> None:
    calls: list[str] = []
    aws.client("secretsmanager").meta.events.register(
        "before-call.secrets-manager.GetSecretValue", lambda **kwargs: calls.append("get")
    )
    keys = [api_key(secret, "OPENAI_API_KEY") for _ in range(5)]
    assert keys == ["sk-1"] * 5
    assert calls == ["get"]
