"""The local AWS bill on a real run: only the handlers' calls are counted, every invocation is billed,
and the counts match what the run did."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.handlers import use_deps
from batchdrop.local import aws_prices as p
from batchdrop.local import bill as b
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from tests.helpers import all_jobs_final, all_notifications, anthropic_line, drive, jsonl, local_stack, openai_line


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0), lane="batch")) as local:
        yield local
    use_deps(None)


def test_the_bill_counts_the_handlers_calls_and_bills_every_invocation(stack: s.LocalStack) -> None:
    # Given two files in the batch lane, run with the meter installed after the stack's resources exist
    with b.metering() as meter:
        dispatcher = Dispatcher(stack)
        stack.put("inputs/a.jsonl", jsonl([openai_line(f"a{i}") for i in range(5)]))
        stack.put("inputs/b.jsonl", jsonl([anthropic_line(f"b{i}") for i in range(3)]))
        drive(dispatcher, all_jobs_final(JobStore(s.TABLE), 2))
        notes = all_notifications(dispatcher)
        dispatcher.close()
    bill = b.bill(meter, requests=8)
    calls: Counter[tuple[str, str]] = Counter()
    for (service, op, _), usage in meter.usage.items():
        calls[(service, op)] += usage.calls
    by_function = Counter({key: usage.calls for key, usage in meter.usage.items()})

    # Then every invocation is on the bill, once
    assert Counter(r.function for r in meter.runs) == Counter(i.function for i in dispatcher.invocations)
    lambda_requests = sum(line.calls for line in bill.lines if (line.service, line.operation) == ("lambda", "requests"))
    assert lambda_requests == len(dispatcher.invocations)
    # and nothing of the stack's own: no resource created, no event-source receive or delete, no download
    assert not [op for _, op in calls if op.startswith(("Create", "Put", "Set")) and op not in ("PutObject", "PutItem")]
    assert calls[("sqs", "ReceiveMessage")] == calls[("sqs", "DeleteMessage")] == 0
    assert {fn for (_, _, fn) in by_function} <= {"submit", "poll", "complete"}
    # One SNS publish per notification sent (each job's final one among them), from the functions
    assert calls[("sns", "Publish")] == len(notes)
    assert by_function[("sns", "Publish", "complete")] == 2
    # Every object under outputs/ was written by a handler: the bytes stored are exactly theirs
    sizes = [o["Size"] for o in aws.client("s3").list_objects_v2(Bucket=s.BUCKET, Prefix="outputs/")["Contents"]]
    assert by_function[("s3", "PutObject", "complete")] >= len(sizes)
    stored = sum(u.units.get("s3.gb_months_outputs", 0.0) for u in meter.usage.values())
    assert stored == pytest.approx(sum(sizes) / p.GB * b.OUTPUT_DAYS * 24 / p.HOURS_PER_MONTH)
    # Each job item was put once, and the writes cost at least a unit each
    assert by_function[("dynamodb", "PutItem", "submit")] >= 2
    writes = meter.usage[("dynamodb", "UpdateItem", "submit")]
    assert writes.units["dynamodb.write_units"] >= writes.calls
    assert bill.total > 0
    assert bill.per_million(bill.total) == pytest.approx(bill.total * 1e6 / 8)


def test_a_meter_leaves_no_handler_on_the_clients(stack: s.LocalStack) -> None:
    client = aws.client("sqs")
    model = client.meta.service_model.operation_model("GetQueueUrl")

    def looked_at() -> bool:
        """Whether a call made inside an invocation would be seen by a meter's handler."""
        context: dict[str, object] = {}
        token = b._scope.set(b.Scope("poll"))
        try:
            client.meta.events.emit("before-parameter-build.sqs.GetQueueUrl", params={}, model=model, context=context)
        finally:
            b._scope.reset(token)
        return "batchdrop_bill" in context

    assert not looked_at()
    with b.metering():
        assert looked_at()
        created_meanwhile = aws.client("sns")
    assert not looked_at()
    assert created_meanwhile is aws.client("sns")
