"""The poll is cheap: it reads only due items from the sparse index, and imports no provider SDK
when nothing is due."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.handlers.poll import handler as poll_handler
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher, LocalContext
from batchdrop.local.emulator import EmulatorKnobs
from tests.helpers import jsonl, local_stack, openai_line


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    # Batches that stay in progress for the whole test
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=3600))) as local:
        yield local


def add_finished_jobs(n: int) -> None:
    """Finished jobs as the table holds them: a job item and a batch item each, out of the index."""
    ddb = aws.client("dynamodb")
    for i in range(n):
        job_id = f"job-finished-{i:05d}"
        for sk, extra in (
            ("JOB", {"status": {"S": "completed"}}),
            ("BATCH#a1-openai-0001", {"status": {"S": "completed"}}),
        ):
            ddb.put_item(
                TableName=s.TABLE,
                Item={
                    "pk": {"S": f"JOB#{job_id}"},
                    "sk": {"S": sk},
                    "job_id": {"S": job_id},
                    "version": {"N": "3"},
                    **extra,
                },
            )


def count_aws_calls() -> Counter[str]:
    calls: Counter[str] = Counter()

    def record(model: Any, **_: Any) -> None:
        calls[f"{model.service_model.service_name}.{model.name}"] += 1

    for service in ("dynamodb", "s3", "sqs", "sns", "secretsmanager"):
        aws.client(service).meta.events.register("before-call.*.*", record)
    return calls


def calls_of_one_poll(stack: s.LocalStack, finished: int) -> tuple[Counter[str], dict[str, Any]]:
    for i in range(3):
        stack.put(f"inputs/active-{i}.jsonl", jsonl([openai_line(f"a{i}")]))
    Dispatcher(stack).deliver_uploads()
    add_finished_jobs(finished)
    assert len(JobStore(s.TABLE).list_jobs(limit=5000)) == finished + 3
    calls = count_aws_calls()
    report = poll_handler({"detail-type": "Scheduled Event"}, LocalContext("poll"))
    return calls, report


def test_a_poll_makes_the_same_aws_calls_with_10_or_1000_finished_jobs(stack: s.LocalStack) -> None:
    few, report = calls_of_one_poll(stack, 10)
    # the 3 active batches, and the 3 jobs just submitted, each looked at once as a whole soon after
    assert report["looked_at"] == 6
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=3600))) as other:
        many, report_many = calls_of_one_poll(other, 1000)
    assert report_many["looked_at"] == 6
    assert many == few
    # one query of the index and one of each active job's batches, one conditional write per active
    # batch and per active job (its next look), and never a scan
    assert few["dynamodb.Query"] == 1 + 3
    assert few["dynamodb.UpdateItem"] == 3 + 3
    assert "dynamodb.Scan" not in few


IDLE_POLL = """
import sys
from batchdrop.local import stack as s
from batchdrop.local.emulator import EmulatorKnobs
with s.LocalStack(s.StackOptions(knobs=EmulatorKnobs())) as local:
    from batchdrop.handlers.poll import handler
    from batchdrop.local.dispatcher import LocalContext
    report = handler({"detail-type": "Scheduled Event"}, LocalContext("poll"))
    assert report["looked_at"] == 0, report
    sdks = ("openai", "anthropic", "google.genai", "batchdrop.providers.bedrock.client")
    print(sorted(m for m in sdks if m in sys.modules))
"""


def test_an_idle_poll_imports_no_provider_sdk() -> None:
    out = subprocess.run([sys.executable, "-c", IDLE_POLL], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
