"""OpenAI webhooks: a signed `batch.completed` (or failed, expired, cancelled) makes the batch be
looked at now, so completion follows within seconds; the schedule stays the safety net.

The signature (Standard Webhooks: HMAC-SHA256 of id, timestamp and body, within 5 minutes) is
checked by the official SDK; anything unsigned, wrongly signed or stale is refused and logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from batchdrop.adapters.store import JOB_SK, deserialize, job_pk
from batchdrop.pipeline import Deps
from batchdrop.poll import PollReport, look_at_batch

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
    owner = deps.store.ddb.get_item(
        TableName=deps.store.table,
        Key={"pk": {"S": f"PBATCH#openai#{batch_id}"}, "sk": {"S": "PBATCH"}},
        ConsistentRead=True,
    ).get("Item")
    if owner is None:
        # Not one of ours (another tool on the same OpenAI project), or not recorded yet: the poll
        # will find ours anyway.
        logger.info("webhook for a batch we do not track", extra={"batch_id": batch_id})
        return Answer(200, "ignored: unknown batch")
    job_id, _, batch_key = owner["owner"]["S"].partition("/")
    logger.append_keys(job_id=job_id, batch_id=batch_id)
    item = deps.store.ddb.get_item(
        TableName=deps.store.table,
        Key={"pk": {"S": job_pk(job_id)}, "sk": {"S": f"BATCH#{batch_key}"}},
        ConsistentRead=True,
    ).get("Item")
    if item is None or item["sk"]["S"] == JOB_SK:
        return Answer(200, "ignored: unknown batch")
    report = PollReport()
    look_at_batch(deps, deserialize(item), report)
    logger.info("webhook: batch looked at", extra={"type": event.type, "handed_over": bool(report.handed_over)})
    return Answer(200, "ok")
