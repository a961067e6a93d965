"""Provider-side files are cleaned up (docs/contract.md, decisions; issue 15): once a job has ended, what
each provider keeps of its batches is deleted, so a long-lived stack never reaches a provider's file or
storage cap. Counted through each provider's official SDK, as an operator would."""

from __future__ import annotations

import os
from collections.abc import Iterator

import anthropic
import boto3
import openai
import pytest
from google import genai
from google.genai import types

from batchdrop import models as m
from batchdrop.adapters.store import JobStore
from batchdrop.handlers import use_deps
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.providers.azure.client import DEFAULT_API_VERSION
from tests.helpers import drive, ended, jobs_by_key, jsonl, local_stack, neutral_line

FILES = {
    "inputs/openai.jsonl": "gpt-4o-mini",
    "inputs/anthropic.jsonl": "claude-haiku-4-5",
    "inputs/azure/deploy.jsonl": "my-deployment",
    "inputs/gemini.jsonl": "gemini-2.5-flash",
    "inputs/bedrock.jsonl": "amazon.nova-lite-v1:0",
}


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0), bedrock_min_records=2)) as local:
        yield local
    use_deps(None)


def stored(stack: s.LocalStack) -> dict[str, int]:
    """What each provider keeps for this account, by its own SDK."""
    emu = stack.emulator
    oai = openai.OpenAI(api_key="k", base_url=emu.openai_base_url, max_retries=0)
    azure = openai.AzureOpenAI(
        api_key="k",
        azure_endpoint=os.environ["BATCHDROP_AZURE_BASE_URL"],
        api_version=DEFAULT_API_VERSION,
        max_retries=0,
    )
    claude = anthropic.Anthropic(api_key="k", base_url=emu.anthropic_base_url, max_retries=0)
    gemini = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emu.base_url, api_version="v1beta"))
    work = boto3.client("s3").list_objects_v2(Bucket=s.BUCKET, Prefix="work/").get("Contents", [])
    return {
        "openai files": len(list(oai.files.list())),
        "azure files": len(list(azure.files.list())),
        "anthropic batches": len(list(claude.messages.batches.list())),
        "gemini files": len(list(gemini.files.list())),
        "bedrock records": sum(1 for o in work if "/bedrock/" in o["Key"]),
    }


def test_once_its_job_ends_nothing_of_a_batch_is_left_at_any_provider(stack: s.LocalStack) -> None:
    # Given a file for each provider, run to its end
    for key, model in FILES.items():
        stack.put(key, jsonl([neutral_line(model, f"hi {i}", custom_id=f"c-{i}") for i in range(2)]))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), ended(store, set(FILES)), timeout=120)
    assert {j["status"] for j in jobs_by_key(store).values()} == {m.JOB_COMPLETED}
    # Then every provider's storage is empty again: inputs, outputs, error files, batches, records
    assert stored(stack) == dict.fromkeys(stored(stack), 0)
    assert sum(stack.emulator.stats()["batches_created"].values()) == len(FILES)
