"""The local dispatcher: delivers to the handlers the events AWS would, and is the schedule's clock.

- S3 notifications: moto's server puts them on an SQS queue; we drain it into the submit handler
  (as Lambda's asynchronous invocation would, retrying an invocation that raised).
- The schedule: each tick invokes the poll handler with an EventBridge "Scheduled Event".
- The completion queue: drained into the complete handler as Lambda's SQS event source mapping
  does (batches of records; the records the handler reports as failed are left for redelivery, and
  SQS's redrive policy parks a poison message in the dead-letter queue).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from batchdrop.adapters import aws
from batchdrop.local import stack as s

Listener = Callable[[str, dict[str, Any]], None]


class LocalContext:
    """The parts of Lambda's context object that Powertools and our handlers read."""

    def __init__(self, function_name: str, timeout_seconds: int = 900) -> None:
        self.function_name = f"batchdrop-{function_name}"
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 1024
        self.invoked_function_arn = f"arn:aws:lambda:{s.REGION}:123456789012:function:{self.function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class Invocation:
    function: str
    ok: bool
    result: Any = None
    error: str | None = None


@dataclass
class Dispatcher:
    stack: s.LocalStack
    listeners: list[Listener] = field(default_factory=list)
    invocations: list[Invocation] = field(default_factory=list)

    # -- the three event sources ----------------------------------------------------------------

    def deliver_uploads(self) -> int:
        """Drain the S3 notification queue into the submit handler; returns events delivered."""
        from batchdrop.handlers.submit import handler

        delivered = 0
        for message in self._receive(s.S3_EVENTS_QUEUE, visibility=1):
            event = orjson.loads(message["Body"])
            if self._invoke("submit", handler, event).ok:
                self._delete(s.S3_EVENTS_QUEUE, message)
            # A failed invocation stays on the queue and comes back, as Lambda retries it.
            delivered += 1
        return delivered

    def tick(self) -> Invocation:
        from batchdrop.handlers.poll import handler

        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": now,
            "region": s.REGION,
            "resources": [f"arn:aws:events:{s.REGION}:123456789012:rule/batchdrop-poll"],
            "detail": {},
        }
        return self._invoke("poll", handler, event)

    def deliver_completions(self) -> int:
        from batchdrop.handlers.complete import handler

        messages = self._receive(s.COMPLETION_QUEUE, visibility=2, attributes=True)
        if not messages:
            return 0
        event = {"Records": [self._sqs_record(m) for m in messages]}
        invocation = self._invoke("complete", handler, event)
        failed: set[str] = set()
        if invocation.ok and isinstance(invocation.result, dict):
            failed = {f["itemIdentifier"] for f in invocation.result.get("batchItemFailures", [])}
        else:
            failed = {m["MessageId"] for m in messages}
        for message in messages:
            if message["MessageId"] not in failed:
                self._delete(s.COMPLETION_QUEUE, message)
        return len(messages)

    def notifications(self) -> list[dict[str, Any]]:
        """Drain the SNS capture queue: each message's event, attributes and parsed body."""
        out = []
        for message in self._receive(s.NOTIFICATIONS_QUEUE, visibility=30, attributes=True):
            attrs = {k: v.get("StringValue") for k, v in (message.get("MessageAttributes") or {}).items()}
            out.append({"attributes": attrs, "message": orjson.loads(message["Body"])})
            self._delete(s.NOTIFICATIONS_QUEUE, message)
        return out

    # -- plumbing -------------------------------------------------------------------------------

    def _invoke(
        self, function: str, handler: Callable[[dict[str, Any], Any], Any], event: dict[str, Any]
    ) -> Invocation:
        try:
            result = handler(event, LocalContext(function))
            invocation = Invocation(function, True, result)
        except Exception as exc:
            invocation = Invocation(function, False, error=f"{type(exc).__name__}: {exc}")
        self.invocations.append(invocation)
        for listener in self.listeners:
            listener(function, {"ok": invocation.ok, "result": invocation.result, "error": invocation.error})
        return invocation

    def _receive(self, queue: str, visibility: int, attributes: bool = False) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.stack.queue_urls[queue],
            "MaxNumberOfMessages": 10,
            "VisibilityTimeout": visibility,
            "WaitTimeSeconds": 0,
        }
        if attributes:
            kwargs["MessageAttributeNames"] = ["All"]
            kwargs["AttributeNames"] = ["All"]
        messages: list[dict[str, Any]] = aws.client("sqs").receive_message(**kwargs).get("Messages", [])
        return messages

    def _delete(self, queue: str, message: dict[str, Any]) -> None:
        aws.client("sqs").delete_message(QueueUrl=self.stack.queue_urls[queue], ReceiptHandle=message["ReceiptHandle"])

    def _sqs_record(self, message: dict[str, Any]) -> dict[str, Any]:
        """The record Lambda's SQS event source builds from a received message."""
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.stack.queue_arn(s.COMPLETION_QUEUE),
            "awsRegion": s.REGION,
        }
