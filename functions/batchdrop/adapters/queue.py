"""SQS: handing a job to a function by its id (the completion queue, and the segments queue), and a
real-time batch's chunks to the realtime function (the real-time queue)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from batchdrop.adapters.aws import client


@dataclass
class JobQueue:
    url: str
    sqs: Any = None

    def __post_init__(self) -> None:
        if self.sqs is None:
            self.sqs = client("sqs")

    def send(self, job_id: str, **more: Any) -> None:
        self.sqs.send_message(QueueUrl=self.url, MessageBody=orjson.dumps({"job_id": job_id, **more}).decode())

    def send_many(self, bodies: list[dict[str, Any]]) -> None:
        """Send each body, ten to a call (SQS's most); raises if any was not accepted, so the caller's
        retry sends them all again (a receiver must take a message twice without harm)."""
        for start in range(0, len(bodies), 10):
            entries = [
                {"Id": str(i), "MessageBody": orjson.dumps(body).decode()}
                for i, body in enumerate(bodies[start : start + 10])
            ]
            failed = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries).get("Failed") or []
            if failed:
                raise RuntimeError(f"SQS refused {len(failed)} messages: {failed[0].get('Message', failed[0])}")

    def delay(self, receipt_handle: str, seconds: float) -> None:
        """A message being handled comes back after `seconds` (at most SQS's 12 hours), not after the
        queue's visibility timeout."""
        self.sqs.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=receipt_handle, VisibilityTimeout=min(43_200, max(0, int(seconds) + 1))
        )

    def in_flight(self) -> int:
        """Messages received and not yet deleted (SQS's approximate count)."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
