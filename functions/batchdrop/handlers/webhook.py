"""Lambda function URL (OpenAI webhooks) → look at the batch now."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from batchdrop.adapters.secrets import MissingKey, api_key
from batchdrop.config import ENV_OPENAI_WEBHOOK_SECRET_ARN
from batchdrop.handlers import deps
from batchdrop.observability import logger, metrics, tracer
from batchdrop.webhook import Delivery, receive


def signing_secret() -> str | None:
    """The OpenAI webhook signing key; None until a user has put one in the stack's placeholder secret."""
    try:
        return api_key(os.environ.get(ENV_OPENAI_WEBHOOK_SECRET_ARN), "OPENAI_WEBHOOK_SECRET")
    except MissingKey:
        return None


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    http = (event.get("requestContext") or {}).get("http") or {}
    delivery = Delivery(
        # A function URL always names the method; a direct invocation without one is checked as a POST.
        method=str(http.get("method") or "POST"),
        body=str(event.get("body") or ""),
        base64_encoded=bool(event.get("isBase64Encoded")),
        headers={str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()},
    )
    answer = receive(deps, delivery, signing_secret)
    headers = {"content-type": "text/plain"}
    if answer.status == 405:
        headers["allow"] = "POST"
    return {"statusCode": answer.status, "headers": headers, "body": answer.message}
