"""One Secrets Manager secret per enabled provider: the API key, read by the functions at run time."""

from __future__ import annotations

import json

from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from batchdrop.blueprint import secret_name, webhook_secret_name
from batchdrop.providers import SPECS
from infra.settings import DeploySettings
from infra.suppressions import acknowledge


class Secrets(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploySettings) -> None:
        super().__init__(scope, construct_id)
        self.by_provider: dict[str, secretsmanager.Secret] = {}
        # A provider whose spec needs no key (Bedrock) signs its calls with the functions' own IAM roles.
        for provider in (p for p in settings.providers if SPECS[p].needs_key):
            secret = secretsmanager.Secret(
                self,
                provider.capitalize(),
                secret_name=secret_name(settings.stack_name, provider),
                description=(
                    f"{provider} API key for batchdrop: aws secretsmanager put-secret-value "
                    "--secret-id <this secret> --secret-string <key>"
                ),
                # CloudFormation cannot know the key. The placeholder's api_key is empty, so until the
                # user puts the key the functions fail with "the secret holds no API key" instead of
                # sending a random string to the provider.
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    secret_string_template=json.dumps({"api_key": ""}),
                    generate_string_key="placeholder",
                ),
            )
            acknowledge(
                secret,
                "AwsSolutions-SMG4",
                f"A third-party {provider} API key cannot be rotated by a Lambda here: the provider issues "
                "it in its console; the user replaces it with put-secret-value.",
            )
            self.by_provider[provider] = secret
        # OpenAI signs its webhooks with a key from its dashboard ("whsec_..."): kept like the API key.
        self.openai_webhook: secretsmanager.Secret | None = None
        if "openai" in settings.providers:
            self.openai_webhook = secretsmanager.Secret(
                self,
                "OpenaiWebhook",
                secret_name=webhook_secret_name(settings.stack_name),
                description="OpenAI webhook signing secret (whsec_...) for batchdrop's webhook URL",
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    secret_string_template=json.dumps({"api_key": ""}),
                    generate_string_key="placeholder",
                ),
            )
            acknowledge(
                self.openai_webhook,
                "AwsSolutions-SMG4",
                "OpenAI issues the webhook signing secret in its dashboard; it cannot be rotated by a Lambda here.",
            )
