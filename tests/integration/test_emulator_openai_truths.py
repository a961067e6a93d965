"""What real OpenAI accounts meet, in the emulator through the official SDK over HTTP and in batchdrop's
OpenAI client: the enqueued-token quota, the 50,000 embedding inputs of a batch, and request bodies
the API refuses coming back per request in the error file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types import Batch

from batchdrop import models as m
from batchdrop.config import PROVIDER_MAXIMA, ProviderSettings
from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from batchdrop.providers.base import BatchRef
from batchdrop.providers.openai.client import OpenAIProvider
from tests.helpers import START, FakeClock, jsonl, openai_line

LATENCY = 60.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emulator(clock: FakeClock) -> Iterator[ProviderEmulator]:
    with ProviderEmulator(EmulatorKnobs(latency=LATENCY, seed=5), clock=clock) as emu:
        yield emu


@pytest.fixture
def sdk(emulator: ProviderEmulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.openai_base_url, api_key="k", max_retries=0)


@pytest.fixture
def client(emulator: ProviderEmulator, sdk: openai.OpenAI) -> OpenAIProvider:
    settings = ProviderSettings(name="openai", limits=PROVIDER_MAXIMA["openai"], base_url=emulator.openai_base_url)
    return OpenAIProvider(settings, client=sdk)


def ref(key: str, model: str = "gpt-4o", url: str = "/v1/chat/completions") -> BatchRef:
    return BatchRef("job1", key, f"{url} {model}", model, 1, intent_at=START)


def write(tmp_path: Any, name: str, lines: list[dict[str, Any]]) -> str:
    path = tmp_path / name
    path.write_bytes(jsonl(lines))
    return str(path)


def raw_batch(sdk: openai.OpenAI, batch_id: str) -> dict[str, Any]:
    raw: dict[str, Any] = sdk.batches.with_raw_response.retrieve(batch_id).http_response.json()
    Batch.model_validate(raw)
    return raw


# -- the enqueued-token quota ------------------------------------------------------------------------


def test_a_batch_over_the_enqueued_token_limit_fails_with_token_limit_exceeded(
    emulator: ProviderEmulator, clock: FakeClock, client: OpenAIProvider, sdk: openai.OpenAI, tmp_path: Any
) -> None:
    emulator.openai.enqueued_token_limits["gpt-4o"] = 10
    five = [openai_line(f"r{i}", model="gpt-4o") for i in range(5)]  # "hello": 2 tokens each
    first = client.create(ref("k1"), write(tmp_path, "a.jsonl", five))
    second = client.create(ref("k2"), write(tmp_path, "b.jsonl", [openai_line("x", model="gpt-4o")]))
    # Another model's queue is its own.
    third = client.create(ref("k3", "gpt-4o-mini"), write(tmp_path, "c.jsonl", [openai_line("y")]))
    clock.advance(LATENCY * 0.1)
    failed = raw_batch(sdk, second)
    assert failed["status"] == "failed"
    (error,) = failed["errors"]["data"]
    assert error["code"] == "token_limit_exceeded"
    assert error["message"].startswith("Enqueued token limit reached for gpt-4o in organization")
    assert "Limit: 10 enqueued tokens" in error["message"]
    status = client.status(second)
    assert status.state == m.FAILED
    assert status.over_quota
    assert not client.status(first).over_quota
    assert raw_batch(sdk, third)["status"] == "in_progress"
    # Once the first has ended, the queue has room again.
    clock.advance(LATENCY)
    assert client.status(first).state == m.COMPLETED
    again = client.create(ref("k2"), write(tmp_path, "b.jsonl", [openai_line("x", model="gpt-4o")]))
    clock.advance(LATENCY)
    assert client.status(again).state == m.COMPLETED


def test_find_never_adopts_a_batch_that_failed_for_quota(
    emulator: ProviderEmulator, clock: FakeClock, client: OpenAIProvider, tmp_path: Any
) -> None:
    emulator.openai.enqueued_token_limit = 1
    refused = client.create(ref("k1"), write(tmp_path, "a.jsonl", [openai_line("x", model="gpt-4o")]))
    clock.advance(LATENCY)
    assert client.status(refused).over_quota
    # Not even when the caller forgot to exclude it: its tags are about to be used again.
    assert client.find(ref("k1"), frozenset()) is None
    emulator.openai.enqueued_token_limit = None
    again = client.create(ref("k1"), write(tmp_path, "a.jsonl", [openai_line("x", model="gpt-4o")]))
    assert client.find(ref("k1"), frozenset({refused})) == again


def test_the_quota_is_off_by_default(emulator: ProviderEmulator) -> None:
    assert emulator.openai.enqueued_token_limit is None
    assert emulator.openai.enqueued_token_limits == {}


# -- embedding inputs ---------------------------------------------------------------------------------


def embedding_line(custom_id: str, inputs: int) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": [f"t{i}" for i in range(inputs)]},
    }


def test_an_embeddings_batch_over_50000_inputs_fails(
    emulator: ProviderEmulator, clock: FakeClock, sdk: openai.OpenAI
) -> None:
    assert emulator.openai.max_embedding_inputs == 50_000
    # 26 requests of 2,000 inputs: 52,000 inputs in 26 requests, far under 50,000 requests.
    lines = [embedding_line(f"e{i}", 2000) for i in range(26)]
    file = sdk.files.create(file=("e.jsonl", jsonl(lines)), purpose="batch")
    batch = sdk.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    clock.advance(LATENCY)
    failed = raw_batch(sdk, batch.id)
    assert failed["status"] == "failed"
    assert [e["code"] for e in failed["errors"]["data"]] == ["too_many_embedding_inputs"]
    # 25 of them, 50,000 inputs, run.
    file = sdk.files.create(file=("e.jsonl", jsonl(lines[:25])), purpose="batch")
    batch = sdk.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    clock.advance(LATENCY)
    assert raw_batch(sdk, batch.id)["status"] == "completed"


# -- bodies the API refuses ---------------------------------------------------------------------------

BAD_BODIES = [
    ({"model": "gpt-4o-mini"}, "messages", "missing_required_parameter", "Missing required parameter: 'messages'."),
    ({"model": "gpt-4o-mini", "messages": []}, "messages", "empty_array", "Invalid 'messages': empty array."),
    (
        {"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "hi"}]},
        "messages[0].role",
        "invalid_value",
        "Invalid value: 'robot'.",
    ),
    (
        {"model": "gpt-4o-mini", "messages": [{"content": "hi"}]},
        "messages[0].role",
        "missing_required_parameter",
        "Missing required parameter: 'messages[0].role'.",
    ),
]


@pytest.mark.parametrize(("body", "param", "code", "message"), BAD_BODIES)
def test_a_body_the_api_refuses_is_a_400_in_the_error_file(
    clock: FakeClock,
    client: OpenAIProvider,
    sdk: openai.OpenAI,
    tmp_path: Any,
    body: dict[str, Any],
    param: str,
    code: str,
    message: str,
) -> None:
    good = openai_line("good")
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": body}
    batch_id = client.create(ref("k", "gpt-4o-mini"), write(tmp_path, "a.jsonl", [good, bad]))
    clock.advance(LATENCY)
    raw = raw_batch(sdk, batch_id)
    assert raw["status"] == "completed"
    assert raw["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    with sdk.files.with_streaming_response.content(raw["error_file_id"]) as response:
        (line,) = [json.loads(x) for x in response.iter_lines() if x]
    assert line["custom_id"] == "bad"
    assert line["error"] is None
    assert line["response"]["status_code"] == 400
    error = line["response"]["body"]["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"].startswith(message)
    outcomes = {o.custom_id: o for o in client.outcomes(batch_id, client.status(batch_id))}
    assert outcomes["good"].ok
    assert outcomes["bad"].code == m.REQUEST_ERROR
    assert outcomes["bad"].message == error["message"]


def test_an_embeddings_request_of_more_than_2048_inputs_is_refused(
    clock: FakeClock, client: OpenAIProvider, tmp_path: Any
) -> None:
    batch_id = client.create(
        ref("k", "text-embedding-3-small", "/v1/embeddings"), write(tmp_path, "a.jsonl", [embedding_line("e", 2049)])
    )
    clock.advance(LATENCY)
    (outcome,) = client.outcomes(batch_id, client.status(batch_id))
    assert outcome.code == m.REQUEST_ERROR
    assert "maximum length 2048" in (outcome.message or "")
