"""Azure OpenAI global batch: the official AzureOpenAI client against the emulator, and files under
inputs/azure/ through the whole pipeline."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from batchdrop.adapters.store import JobStore
from batchdrop.handlers import use_deps
from batchdrop.handlers.submit import handler as submit_handler
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher, LocalContext
from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from tests.helpers import (
    all_jobs_final,
    assert_accounting,
    drive,
    jsonl,
    local_stack,
    neutral_line,
    openai_line,
    outputs_of,
)
from tests.integration.test_pipeline import Crash, crash_once_at, only_job, s3_event_bodies


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0))) as local:
        yield local
    use_deps(None)


def test_the_azure_client_speaks_to_the_emulator_under_openai_paths() -> None:
    with ProviderEmulator(EmulatorKnobs()).start() as emulator:
        client = openai.AzureOpenAI(azure_endpoint=emulator.base_url, api_version="2024-10-21", api_key="key")
        uploaded = client.files.create(
            file=("in.jsonl", jsonl([openai_line("a", model="my-deployment")])), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = client.batches.retrieve(batch.id)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert done.request_counts.completed == 1
        assert [b.id for b in client.batches.list()] == [batch.id]


def test_files_under_inputs_azure_go_to_azure_openai(stack: s.LocalStack) -> None:
    lines = [openai_line("a", model="my-gpt4o-deployment"), neutral_line("my-gpt4o-deployment", "hi", custom_id="n")]
    stack.put("inputs/azure/evals.jsonl", jsonl(lines))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting({1, 2}, results, errors, summary)
    assert {r["provider"] for r in results} == {"azure"}
    assert {b["provider"] for b in summary["batches"]} == {"azure"}
    # a deployment name has no list price: no guess
    assert summary["cost_usd"]["batch"] is None


def test_a_crash_after_azure_accepted_a_batch_is_adopted(stack: s.LocalStack) -> None:
    stack.put("inputs/azure/crash.jsonl", jsonl([openai_line(f"r{i}", model="dep") for i in range(4)]))
    (event,) = s3_event_bodies(stack)
    crash_once_at("after_create")
    with pytest.raises(Crash):
        submit_handler(event, LocalContext("submit"))
    submit_handler(event, LocalContext("submit"))
    assert sum(stack.emulator.stats()["batches_created"].values()) == 1
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    assert only_job(store)["status"] == "completed"
