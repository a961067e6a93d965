"""Provider events. OpenAI webhooks: a signed `batch.completed` (or failed, expired, cancelled) makes the batch be
looked at now, so completion follows within seconds; the schedule stays the safety net.

The signature (Standard Webhooks: HMAC-SHA256 of id, timestamp and body, within 5 minutes) is
checked by the official SDK; anything unsigned, wrongly signed or stale is refused and logged.
The function URL is public, so whatever anyone sends gets an answer, never an exception: a failed
invocation would fire the errors alarm (and anonymous traffic could keep it firing). Each refusal
is one warning line that names the reason, never the body or the secret.
Bedrock publishes its jobs' state changes to EventBridge, which a rule sends to the poll function.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from batchdrop.adapters.store import Conflict
from batchdrop.pipeline import Deps
from batchdrop.poll import look_at_provider_batch

if TYPE_CHECKING:
    from openai.resources.webhooks.webhooks import Webhooks

logger = Logger(service="batchdrop")

# OpenAI's events are a few hundred bytes; a function URL takes up to 6 MB, which is not worth hashing.
MAX_BODY_BYTES = 64 * 1024
SIGNING_KEY_PREFIX = "whsec_"


@dataclass(frozen=True)
class Answer:
    status: int
    message: str


@dataclass(frozen=True)
class Delivery:
    """What a function URL request carries, as the handler read it from the event."""

    method: str
    body: str
    base64_encoded: bool
    headers: Mapping[str, str]


def _refuse(status: int, message: str, reason: str) -> Answer:
    logger.warning(f"webhook refused: {reason}", extra={"status": status})
    return Answer(status, message)


@functools.cache
def _signatures() -> Webhooks:
    import openai

    # Checking a signature takes the signing secret only. A client of its own, which never sends a
    # request, so a webhook is checked (and most are refused) before anything reads our API key.
    return openai.OpenAI(api_key="unused: this client only checks webhook signatures", max_retries=0).webhooks


def _usable(secret: str | None) -> bool:
    if not secret:
        return False
    if secret.startswith(SIGNING_KEY_PREFIX):
        # The SDK decodes it on every check; a key that does not decode would make every webhook fail.
        try:
            base64.b64decode(secret.removeprefix(SIGNING_KEY_PREFIX))
        except binascii.Error:
            return False
    return True


def receive(deps: Callable[[], Deps], delivery: Delivery, signing_secret: Callable[[], str | None]) -> Answer:
    """Answer one request to the webhook URL. `signing_secret` is None while webhooks are not set up
    (the stack's placeholder secret, or none); the cheap refusals come before it is read."""
    if delivery.method.upper() != "POST":
        return _refuse(405, "method not allowed", f"method {delivery.method[:16]!r}")
    if len(delivery.body) > (MAX_BODY_BYTES * 4 // 3 + 4 if delivery.base64_encoded else MAX_BODY_BYTES):
        return _refuse(413, "payload too large", f"body of {len(delivery.body)} characters")
    try:
        raw = base64.b64decode(delivery.body, validate=True) if delivery.base64_encoded else None
        text = raw.decode("utf-8") if raw is not None else delivery.body
    except binascii.Error:
        return _refuse(400, "bad request", "isBase64Encoded but the body is not base64")
    except UnicodeDecodeError:
        return _refuse(400, "bad request", "the body is not UTF-8")
    if len(text.encode()) > MAX_BODY_BYTES:
        return _refuse(413, "payload too large", f"body of {len(text)} characters")
    secret = signing_secret()
    if not _usable(secret):
        return _refuse(
            404,
            "webhooks are not configured",
            "webhooks are not configured (the OpenAI webhook secret holds no usable signing key; put it "
            "with aws secretsmanager put-secret-value)",
        )
    from openai import InvalidWebhookSignatureError

    try:
        event: Any = _signatures().unwrap(text, dict(delivery.headers), secret=secret)
    except InvalidWebhookSignatureError as exc:
        # The SDK's messages are fixed sentences (no signature, secret or body in them).
        return _refuse(401, "invalid signature", f"bad signature ({exc})")
    except json.JSONDecodeError:
        return _refuse(400, "bad request", "signed, but the body is not JSON")
    except ValueError:
        # The SDK raises a plain ValueError for a missing webhook-id, -timestamp or -signature header.
        return _refuse(401, "invalid signature", "missing signature headers")
    event_type = getattr(event, "type", None)
    if not isinstance(event_type, str) or not event_type.startswith("batch."):
        return Answer(200, "ignored: not a batch event")
    batch_id = getattr(getattr(event, "data", None), "id", None)
    if not isinstance(batch_id, str) or not batch_id:
        logger.warning("a signed batch event without a batch id", extra={"type": event_type})
        return Answer(200, "ignored: no batch id")
    try:
        report = look_at_provider_batch(deps(), "openai", batch_id)
    except Conflict:
        # OpenAI delivers at least once and the schedule runs too: another invocation recorded this
        # batch between our read and our write, and the next poll finishes what is left.
        logger.info("webhook: batch recorded by another invocation", extra={"batch_id": batch_id})
        return Answer(200, "ok")
    if report is None:
        # Not one of ours (another tool on the same OpenAI project), or not recorded yet: the poll
        # will find ours anyway.
        logger.info("webhook for a batch we do not track", extra={"batch_id": batch_id})
        return Answer(200, "ignored: unknown batch")
    logger.info("webhook: batch looked at", extra={"type": event_type, "handed_over": bool(report.handed_over)})
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
