"""Provider events. OpenAI webhooks: a signed `batch.completed` (or failed, expired, cancelled) makes the batch be
looked at now, so completion follows within seconds; the schedule stays the safety net.

The signature (Standard Webhooks: HMAC-SHA256 of id, timestamp and body, within 5 minutes) is
checked by the official SDK; anything unsigned, wrongly signed or stale is refused and logged.
Bedrock publishes its jobs' state changes to EventBridge, which a rule sends to the poll function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from batchdrop.pipeline import Deps
from batchdrop.poll import look_at_provider_batch

logger = Logger(service="batchdrop")


@dataclass(frozen=True)
class Answer:
    status: int
    message: str


def receive(deps: Deps, body: bytes, headers: Mapping[str, str], secret: str) -> Answer:
    from openai import InvalidWebhookSignatureError

    provider = deps.provider("openai")
    client = provider.client  # type: ignore[attr-defined]
    try:
        event = client.webhooks.unwrap(body, dict(headers), secret=secret)
    except (InvalidWebhookSignatureError, ValueError) as exc:
        logger.warning("webhook refused: bad or missing signature", extra={"reason": str(exc)[:200]})
        return Answer(401, "invalid signature")
    if not event.type.startswith("batch."):
        return Answer(200, "ignored: not a batch event")
    batch_id = event.data.id
    report = look_at_provider_batch(deps, "openai", batch_id)
    if report is None:
        # Not one of ours (another tool on the same OpenAI project), or not recorded yet: the poll
        # will find ours anyway.
        logger.info("webhook for a batch we do not track", extra={"batch_id": batch_id})
        return Answer(200, "ignored: unknown batch")
    logger.info("webhook: batch looked at", extra={"type": event.type, "handed_over": bool(report.handed_over)})
    return Answer(200, "ok")


def bedrock_state_change(deps: Deps, event: Mapping[str, Any]) -> str:
    """EventBridge's "Batch Inference Job State Change" from aws.bedrock: look at the job now."""
    detail = event.get("detail") or {}
    job_arn = detail.get("batchJobArn") or detail.get("jobArn")
    if not isinstance(job_arn, str) or not job_arn:
        logger.warning("a Bedrock event without a job ARN", extra={"detail_keys": sorted(detail)})
        return "ignored: no job ARN"
    report = look_at_provider_batch(deps, "bedrock", job_arn)
    if report is None:
        logger.info("Bedrock event for a job we do not track", extra={"batch_id": job_arn})
        return "ignored: unknown batch"
    logger.info("Bedrock event: batch looked at", extra={"status": detail.get("status")})
    return "ok"
