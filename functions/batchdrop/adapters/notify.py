"""SNS notifications: one message when a job is submitted and one when it ends (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from batchdrop.adapters.aws import client


def notification_id(job_id: str, event: str) -> str:
    """Stable per job and event, so a subscriber can drop the duplicate a re-run may send."""
    return f"{job_id}:{event}"


@dataclass
class Notifier:
    topic_arn: str
    sns: Any = None

    def __post_init__(self) -> None:
        if self.sns is None:
            self.sns = client("sns")

    def publish(self, event: str, job_id: str, providers: Iterable[str], body: dict[str, Any]) -> str:
        nid = notification_id(job_id, event)
        message = {"event": event, "notification_id": nid, **body}
        attributes: dict[str, Any] = {
            "event": {"DataType": "String", "StringValue": event},
            "job_id": {"DataType": "String", "StringValue": job_id},
            "notification_id": {"DataType": "String", "StringValue": nid},
        }
        names = sorted(set(providers))
        if names:
            # String.Array lets a subscription filter on one provider even for mixed jobs.
            attributes["provider"] = {"DataType": "String.Array", "StringValue": orjson.dumps(names).decode()}
        self.sns.publish(
            TopicArn=self.topic_arn,
            Message=orjson.dumps(message).decode(),
            MessageAttributes=attributes,
        )
        return nid
