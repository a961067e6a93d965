"""Lambda function URL (OpenAI webhooks) → look at the batch now."""

from __future__ import annotations

import base64
import os
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from batchdrop.adapters.secrets import api_key
from batchdrop.config import ENV_OPENAI_WEBHOOK_SECRET_ARN
from batchdrop.handlers import deps
from batchdrop.observability import logger, metrics, tracer
from batchdrop.webhook import receive


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    secret = api_key(os.environ.get(ENV_OPENAI_WEBHOOK_SECRET_ARN), "OPENAI_WEBHOOK_SECRET")
    answer = receive(deps(), raw, headers, secret)
    return {"statusCode": answer.status, "headers": {"content-type": "text/plain"}, "body": answer.message}
