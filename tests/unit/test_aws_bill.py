"""The local AWS bill's arithmetic: request units from item sizes, Lambda's rounding, chunks, and
which calls the meter counts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from batchdrop.local import aws_prices as p
from batchdrop.local import bill as b


def test_lambda_bills_each_invocation_rounded_up_to_the_millisecond() -> None:
    assert p.lambda_gb_seconds(0.0001, 1024) == pytest.approx(0.001)
    assert p.lambda_gb_seconds(1.2341, 512) == pytest.approx(1.235 / 2)
    # A whole number of milliseconds is not rounded up by float noise.
    assert p.lambda_gb_seconds(0.3, 1024) == pytest.approx(0.3)


def test_dynamodb_units_are_per_kb_written_and_per_4_kb_read() -> None:
    assert [p.write_units(n) for n in (0, 1, 1024, 1025, 3000)] == [1, 1, 1, 2, 3]
    assert p.read_units(4096, consistent=True) == 1
    assert p.read_units(4097, consistent=True) == 2
    assert p.read_units(100, consistent=False) == 0.5
    assert p.read_units(0, consistent=False) == 0.5  # an empty query still costs the minimum


def test_sqs_and_sns_bill_a_request_per_64_kb_chunk() -> None:
    assert p.chunks(10, p.SQS_CHUNK_BYTES) == 1
    assert p.chunks(64 * 1024, p.SNS_CHUNK_BYTES) == 1
    assert p.chunks(64 * 1024 + 1, p.SQS_CHUNK_BYTES) == 2


def test_item_size_follows_dynamodbs_rules() -> None:
    assert b.item_size({"pk": {"S": "JOB#a"}}) == 2 + 5
    assert b.item_size({"n": {"N": "123"}}) == 1 + 3  # two digits a byte, plus one
    assert b.item_size({"n": {"N": "-0.5000"}}) == 1 + 2
    assert b.item_size({"ok": {"BOOL": True}}) == 2 + 1
    assert b.item_size({"m": {"M": {"a": {"S": "xy"}}}}) == 1 + 3 + 1 + 1 + 2
    assert b.item_size({"l": {"L": [{"S": "x"}, {"S": "yz"}]}}) == 1 + 3 + (1 + 1) + (1 + 2)


def test_index_writes_follow_the_item_in_and_out_of_the_due_index() -> None:
    due = {"due_pk": {"S": "DUE"}, "due_at": {"N": "10"}}
    other_time = {"due_pk": {"S": "DUE"}, "due_at": {"N": "20"}}
    big = {"x": {"S": "a" * 1500}}
    assert b.index_write_units({"a": {"S": "1"}}, {"a": {"S": "2"}}) == 0
    assert b.index_write_units(None, {**due, **big}) == 2  # enters: one put of 1.5 KB
    assert b.index_write_units(due, {"a": {"S": "1"}}) == 1  # leaves: one delete
    assert b.index_write_units(due, other_time) == 2  # its key moves: a delete and a put
    assert b.index_write_units(due, {**due, "a": {"S": "1"}}) == 1  # stays: one write


def test_a_bill_prices_invocations_and_scales_to_a_million_requests() -> None:
    meter = b.Meter()
    meter.runs.append(b.Run("complete", "sqs", 0.5))
    meter.runs.append(b.Run("poll", "schedule", 0.0101))
    meter.usage[("dynamodb", "UpdateItem", "poll")].calls = 2
    meter.usage[("dynamodb", "UpdateItem", "poll")].units["dynamodb.write_units"] = 3
    bill = b.bill(meter, requests=1000)
    lines = {(line.service, line.operation, line.function): line for line in bill.lines}
    assert lines[("lambda", "duration", "complete")].units["lambda.gb_seconds"] == pytest.approx(0.5)
    # 10.1 ms bills 11 ms
    assert lines[("lambda", "duration", "poll")].units["lambda.gb_seconds"] == pytest.approx(0.011 / 2)
    assert lines[("lambda", "requests", "poll")].usd == pytest.approx(0.20 / 1e6)
    assert lines[("dynamodb", "UpdateItem", "poll")].usd == pytest.approx(3 * 0.625 / 1e6)
    # The SQS event source's receive and delete for the completion message; the schedule is free.
    assert lines[("sqs", "ReceiveMessage (event source)", "complete")].usd == pytest.approx(0.40 / 1e6)
    assert lines[("events", "schedule", "poll")].usd == 0
    assert bill.per_million(bill.total) == pytest.approx(bill.total * 1000)
    # Stretching the measured seconds to Lambda's CPU share only raises the duration's cost.
    assert bill.total_cpu_bound > bill.total


@pytest.fixture
def sns() -> Iterator[tuple[b.Meter, Stubber]]:
    client = boto3.session.Session().client("sns", region_name="us-east-1")
    meter = b.Meter()
    meter.register(client)
    stubber = Stubber(client)
    stubber.activate()
    b._meter = meter  # what install does, without the stack's logging and clients
    try:
        yield meter, stubber
    finally:
        b._meter = None
        meter.unregister(client)


def test_only_calls_inside_an_invocation_count(sns: tuple[b.Meter, Stubber]) -> None:
    meter, stubber = sns
    topic = "arn:aws:sns:us-east-1:123456789012:t"
    for _ in range(2):
        stubber.add_response("publish", {"MessageId": "m"}, {"TopicArn": topic, "Message": "x" * 70_000})
    client: Any = stubber.client
    client.publish(TopicArn=topic, Message="x" * 70_000)  # the stack's own call: not counted
    with b.invocation("complete", {"Records": [{"eventSource": "aws:sqs"}]}):
        client.publish(TopicArn=topic, Message="x" * 70_000)
    usage = meter.usage[("sns", "Publish", "complete")]
    assert usage.calls == 1
    assert usage.units["sns.publishes"] == 2  # 70 KB: two 64 KB chunks
    assert usage.units["kms.requests"] == 1
    assert [(r.function, r.trigger) for r in meter.runs] == [("complete", "sqs")]


def test_triggers_are_read_from_the_event() -> None:
    assert b.trigger_of({"detail-type": "Scheduled Event"}) == "schedule"
    assert b.trigger_of({"source": "aws.bedrock"}) == "bedrock event"
    assert b.trigger_of({"Records": [{"eventSource": "aws:s3"}]}) == "s3"
    assert b.trigger_of({"requestContext": {}}) == "function url"
