"""OpenAI webhooks: a signed batch event completes the job without waiting for the schedule; an
unsigned or wrongly signed one is refused and logged."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import orjson
import pytest

from batchdrop.adapters.store import JobStore
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from tests.helpers import jsonl, openai_line, outputs_of


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    with s.LocalStack(s.StackOptions(knobs=EmulatorKnobs(latency=1.0))) as local:
        yield local


def test_a_signed_webhook_completes_the_job_without_a_poll(stack: s.LocalStack) -> None:
    dispatcher = Dispatcher(stack)
    dispatcher.start_webhooks()
    try:
        stack.put("inputs/hooked.jsonl", jsonl([openai_line(f"h{i}") for i in range(5)]))
        dispatcher.deliver_uploads()
        store = JobStore(s.TABLE)
        # No tick of the schedule from here on: only the webhook and the completion queue.
        deadline = time.monotonic() + 30
        while store.list_jobs()[0]["status"] != "completed":
            assert time.monotonic() < deadline, "the webhook did not complete the job"
            dispatcher.deliver_completions()
            time.sleep(0.1)
        assert not [i for i in dispatcher.invocations if i.function == "poll"]
        assert stack.emulator.webhooks_sent >= 1
        assert any(i.function == "webhook" and i.ok for i in dispatcher.invocations)
        results, _errors, summary = outputs_of(stack, store.list_jobs()[0])
        assert len(results) == 5
        assert summary["status"] == "completed"
    finally:
        dispatcher.close()


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": "evt_1", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,Zm9yZ2Vk"},
        {"webhook-id": "evt_1", "webhook-timestamp": "1000", "webhook-signature": "v1,Zm9yZ2Vk"},
    ],
    ids=["unsigned", "wrong-signature", "stale"],
)
def test_an_unsigned_or_wrongly_signed_webhook_is_refused_and_logged(
    stack: s.LocalStack, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = Dispatcher(stack)
    url = dispatcher.start_webhooks()
    try:
        stack.put("inputs/target.jsonl", jsonl([openai_line("t")]))
        dispatcher.deliver_uploads()
        batch_id = JobStore(s.TABLE).get_batches(JobStore(s.TABLE).list_jobs()[0]["job_id"])[0]["provider_batch_id"]
        body = orjson.dumps({"id": "evt_1", "object": "event", "created_at": 1, "type": "batch.completed",
                             "data": {"id": batch_id}})  # fmt: skip
        with caplog.at_level("WARNING", logger="batchdrop"):
            status = post(url, body, {"content-type": "application/json", **headers})
        assert status == 401
        assert any("webhook refused" in r.getMessage() for r in caplog.records)
        assert JobStore(s.TABLE).list_jobs()[0]["status"] == "submitted"
    finally:
        dispatcher.close()
