"""The embedded stack captures a notification too large for SNS as it captures any other (issue 13).

The local topic delivers to an SQS queue (raw delivery), whose own limit is also 256 KiB; the
notification that reaches it must be the bounded one, with its attributes as SNS sent them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from batchdrop.adapters import aws
from batchdrop.adapters.notify import Notifier
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from tests.helpers import local_stack
from tests.unit.test_notify import JOB_ID, SNS_LIMIT, SUMMARY_URI, batch, sns_size, summary


@pytest.fixture(scope="module")
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0))) as local:
        yield local


def test_a_summary_too_large_for_sns_reaches_the_capture_queue_bounded(stack: s.LocalStack) -> None:
    sent: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sent.append(params)

    # The functions' own (cached) client, weighed where it hands the call to AWS.
    sns = aws.client("sns")
    sns.meta.events.register("before-parameter-build.sns.Publish", record)
    try:
        body = summary([batch(i, error="rate limited: " + "x" * 2000) for i in range(5000)])
        Notifier(stack.topic_arn, sns).publish(
            "partial", JOB_ID, ["openai", "anthropic"], body, summary_uri=SUMMARY_URI
        )
    finally:
        sns.meta.events.unregister("before-parameter-build.sns.Publish", record)

    assert len(sent) == 1
    assert sns_size(sent[0]) <= SNS_LIMIT
    notes = Dispatcher(stack).notifications()
    assert len(notes) == 1
    note = notes[0]
    assert note["attributes"] == {
        "event": "partial",
        "job_id": JOB_ID,
        "notification_id": f"{JOB_ID}:partial",
        "provider": '["anthropic","openai"]',
    }
    assert note["message"] == orjson.loads(sent[0]["Message"])
    message = note["message"]
    assert message["truncated"] is True
    assert message["summary"] == SUMMARY_URI
    assert message["counts"] == body["counts"]
    assert message["batches_truncated"] == 5000 - len(message["batches"])
