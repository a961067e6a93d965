"""Lambda's asynchronous invocation of submit, as the local stack models it (batchdrop.blueprint)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from batchdrop import blueprint
from batchdrop.adapters import aws
from batchdrop.local import run
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from tests.helpers import local_stack
from tests.lines import jsonl, openai_line


def queued(stack: s.LocalStack, name: str) -> int:
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_urls[name],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def test_an_upload_whose_submit_always_fails_is_tried_thrice_then_parked_and_the_run_says_so(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl([openai_line(f"r{i}") for i in range(3)]))
    with local_stack() as stack:
        dispatcher = Dispatcher(stack)
        try:
            # Without its table, every submit fails before the job exists (a broken deployment): nothing
            # else would ever pick the upload up, so its event must not vanish.
            aws.client("dynamodb").delete_table(TableName=s.TABLE)
            stack.upload(str(path), "inputs/in.jsonl")
            deadline = time.monotonic() + 30
            while queued(stack, s.SUBMIT_DLQ) == 0 and time.monotonic() < deadline:
                dispatcher.deliver_uploads()
                time.sleep(0.3)
            # (moto's first message is S3's test event, which submit ignores.)
            submits = [i for i in dispatcher.invocations if i.function == "submit" and i.result != {"jobs": []}]
            assert len(submits) == 1 + blueprint.SUBMIT_RETRY_ATTEMPTS
            assert not any(i.ok for i in submits)
            assert queued(stack, s.SUBMIT_DLQ) == 1
            assert queued(stack, s.S3_EVENTS_QUEUE) == 0
            with pytest.raises(run.RunError, match=r"submit dead-letter queue.*ResourceNotFound"):
                run._check_submit_dead_letters(stack, dispatcher, [run.JobView("in.jsonl", "inputs/in.jsonl", "job")])
        finally:
            dispatcher.close()
