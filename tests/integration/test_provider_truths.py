"""Production truths of Bedrock (issue 15) through the whole pipeline on the embedded stack: the job
state-change event the emulator makes, routed as the deployed EventBridge rule routes it; and a
service role that may not read the input, which fails the batch with Bedrock's message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from batchdrop import models as m
from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.handlers import use_deps
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import BEDROCK_RULE_PATTERN, Dispatcher, matches
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.providers import SPECS
from tests.helpers import all_jobs_final, assert_accounting, drive, jsonl, local_stack, neutral_line, outputs_of

MODEL = "amazon.nova-lite-v1:0"
MIN_RECORDS = 5


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    options = s.StackOptions(knobs=EmulatorKnobs(latency=0.0), bedrock_min_records=MIN_RECORDS, providers=("bedrock",))
    with local_stack(options) as local:
        yield local
    use_deps(None)


def lines(n: int, prefix: str) -> list[dict[str, Any]]:
    return [neutral_line(MODEL, f"hello {i}", custom_id=f"{prefix}-{i}") for i in range(n)]


def test_the_emulators_state_change_event_reaches_poll_through_the_rules_pattern(stack: s.LocalStack) -> None:
    stack.put("inputs/bedrock.jsonl", jsonl(lines(MIN_RECORDS, "b")))
    store = JobStore(s.TABLE)
    dispatcher = Dispatcher(stack)
    dispatcher.deliver_uploads()
    (job,) = store.list_jobs()
    (batch,) = store.get_batches(job["job_id"])
    assert batch["status"] != m.COMPLETED
    before = len(dispatcher.invocations)
    # No poll tick: only the event, made by the emulator, gets the job looked at.
    assert dispatcher.deliver_bedrock_events() == 1
    (invocation,) = dispatcher.invocations[before:]
    assert (invocation.function, invocation.ok, invocation.result) == ("poll", True, {"bedrock_event": "ok"})
    (batch,) = store.get_batches(job["job_id"])
    assert batch["status"] == m.COMPLETED
    assert dispatcher.deliver_bedrock_events() == 0  # no change since


def test_an_event_the_rule_does_not_match_is_not_delivered(stack: s.LocalStack) -> None:
    stack.put("inputs/bedrock.jsonl", jsonl(lines(MIN_RECORDS, "b")))
    Dispatcher(stack).deliver_uploads()
    (event,) = stack.emulator.bedrock.state_changes()
    assert matches(BEDROCK_RULE_PATTERN, event)
    assert not matches(BEDROCK_RULE_PATTERN, {**event, "detail-type": "Model Customization Job State Change"})
    assert not matches(BEDROCK_RULE_PATTERN, {**event, "source": "aws.sagemaker"})
    assert not matches(BEDROCK_RULE_PATTERN, {k: v for k, v in event.items() if k != "source"})


def test_a_role_that_may_not_read_the_input_fails_the_batch_with_bedrocks_message(stack: s.LocalStack) -> None:
    role = SPECS["bedrock"].local.values["ROLE_ARN"].rsplit("/", 1)[-1]
    aws.client("iam").delete_role_policy(RoleName=role, PolicyName="work")
    data = lines(MIN_RECORDS, "d")
    stack.put("inputs/denied.jsonl", jsonl(data))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    (job,) = store.list_jobs()
    results, errors, summary = outputs_of(stack, job)
    assert_accounting(set(range(1, len(data) + 1)), results, errors, summary)
    assert job["status"] == m.JOB_FAILED
    assert results == []
    assert {e["code"] for e in errors} == {m.BATCH_FAILED}
    assert all("Access denied" in e["message"] and "s3:GetObject" in e["message"] for e in errors)
