"""SQS: handing a job to a function by its id (the completion queue, and the segments queue)."""

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
