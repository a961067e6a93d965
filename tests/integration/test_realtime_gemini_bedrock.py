"""The real-time lane's Gemini and Bedrock clients against the emulator's real-time endpoints, over HTTP
through the official SDKs (google-genai's async client; boto3's bedrock-runtime).

Each provider: a success whose body reads like the batch result of the same request, a refused request,
server errors retried and then given up, the requests-per-minute limit's 429 in the provider's shape
(RateLimited once the retries are spent, success once the window frees), and `observe` seeing every
HTTP answer, retries included.
"""

from __future__ import annotations

import asyncio
import tempfile
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import boto3
import orjson
import pytest
from botocore.exceptions import ClientError
from google.genai import errors, types

from batchdrop import models as m
from batchdrop.adapters import aws
from batchdrop.config import PROVIDER_MAXIMA, BatchLimits, ProviderSettings
from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from batchdrop.local.emulator.canned import REFUSED, SERVER_ERROR, call_key, draw_call_failure
from batchdrop.outputs import extract
from batchdrop.providers.base import BatchRef, RateLimited
from batchdrop.providers.bedrock.client import BedrockProvider
from batchdrop.providers.bedrock.realtime import BedrockRealtime
from batchdrop.providers.gemini.client import GeminiProvider
from batchdrop.providers.gemini.realtime import GeminiRealtime
from tests.helpers import LATENCY, START, FakeClock
from tests.integration.test_emulator_bedrock import (
    BUCKET,
    ROLE,
    claude_input,
    emulation,
    grant_role,
    llama_input,
    nova_input,
)

GEMINI = "gemini-2.5-flash"
CLAUDE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
NOVA = "us.amazon.nova-lite-v1:0"
LLAMA = "meta.llama3-1-8b-instruct-v1:0"
SEED = 7
T = TypeVar("T")


class Seen:
    """An `Observe` that keeps every answer; `on_429` runs on each 429 (to free the rate limit's window)."""

    def __init__(self, on_429: Callable[[], None] | None = None) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.on_429 = on_429

    def __call__(self, status: int, headers: Mapping[str, str]) -> None:
        self.answers.append((status, dict(headers)))
        if status == 429 and self.on_429 is not None:
            self.on_429()

    @property
    def statuses(self) -> list[int]:
        return [status for status, _ in self.answers]


def run(client: Any, payload: bytes, model: str) -> m.Outcome:
    """One call on a client of its own, closed after."""

    async def once() -> m.Outcome:
        try:
            outcome: m.Outcome = await client.call(payload, model)
            return outcome
        finally:
            await client.aclose()

    return asyncio.run(once())


def raised(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> BaseException:
    with pytest.raises(RateLimited) as caught:
        asyncio.run(coroutine())
    return caught.value


def drawing(failure: str, make: Callable[[str], dict[str, Any]], provider: str) -> dict[str, Any]:
    """A request body the emulator's failure draw gives `failure` at failure_rate 1 (seed SEED)."""
    for i in range(200):
        body = make(f"question {i}")
        if draw_call_failure(SEED, provider, call_key(body), 1.0) == failure:
            return body
    raise AssertionError(f"no body draws {failure}")


def calls(emulator: ProviderEmulator, provider: str) -> list[tuple[str, int]]:
    return [(c["key"], c["status"]) for c in emulator.realtime_calls() if c["provider"] == provider]


# -- Gemini -------------------------------------------------------------------------------------------


def gemini_request(text: str, **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


def gemini_line(key: str, request: dict[str, Any]) -> bytes:
    return orjson.dumps({"key": key, "request": request}) + b"\n"


def gemini_settings(emulator: ProviderEmulator) -> ProviderSettings:
    return ProviderSettings(name="gemini", limits=PROVIDER_MAXIMA["gemini"], base_url=emulator.base_url)


@pytest.fixture
def gemini(emulator: ProviderEmulator, monkeypatch: pytest.MonkeyPatch) -> Callable[..., GeminiRealtime]:
    # As in the lane: the key from the provider's secret (here the SDK's env var), the base URL from settings.
    monkeypatch.setenv("GEMINI_API_KEY", "k")

    def make(observe: Seen, max_retries: int = 0) -> GeminiRealtime:
        client = GeminiRealtime(gemini_settings(emulator), observe, max_retries)
        client.retry_initial_delay, client.retry_max_delay = 0.001, 0.01
        return client

    return make


def test_gemini_answer_reads_like_the_batch_result(
    gemini: Callable[..., GeminiRealtime], emulator: ProviderEmulator, clock: FakeClock, tmp_path: Path
) -> None:
    emulator.knobs = EmulatorKnobs(latency=LATENCY, seed=SEED)
    request = gemini_request("what is real time?", generationConfig={"maxOutputTokens": 64})
    seen = Seen()
    outcome = run(gemini(seen), gemini_line("r1", {**request, "model": f"models/{GEMINI}"}), GEMINI)
    assert outcome.ok
    assert outcome.custom_id == "r1"
    assert outcome.response is not None
    # Google's JSON as it came, which the SDK's own type takes
    types.GenerateContentResponse.model_validate(outcome.response)
    assert seen.statuses == [200]
    assert calls(emulator, "gemini") == [(call_key(request), 200)]

    # The same request in a batch
    path = tmp_path / "batch.jsonl"
    path.write_bytes(gemini_line("r1", request))
    batch = BatchRef(job_id="job-rt", key="gemini-0001", group=GEMINI, model=GEMINI, requests=1, intent_at=START)
    provider = GeminiProvider(gemini_settings(emulator))
    batch_id = provider.create(batch, str(path))
    clock.advance(LATENCY + 1)
    [batch_outcome] = list(provider.outcomes(batch_id, provider.status(batch_id)))
    assert batch_outcome.ok
    assert batch_outcome.response is not None
    assert extract(outcome.response) == extract(batch_outcome.response)
    text, usage = extract(outcome.response)
    assert text == "echo: what is real time?"
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    # The same body but for the id of the answer
    assert {**outcome.response, "responseId": ""} == {**batch_outcome.response, "responseId": ""}


def test_gemini_refusals_are_request_errors_with_googles_message(
    gemini: Callable[..., GeminiRealtime], emulator: ProviderEmulator
) -> None:
    emulator.knobs = EmulatorKnobs(seed=SEED, failure_rate=1.0)
    seen = Seen()
    # What the batch side refuses, refused the same way; never retried
    empty = run(gemini(seen, max_retries=3), gemini_line("e", {"contents": []}), GEMINI)
    assert (empty.ok, empty.code, empty.custom_id) == (False, m.REQUEST_ERROR, "e")
    assert empty.message == "* GenerateContentRequest.contents: contents is not specified"
    assert empty.detail["error"]["status"] == "INVALID_ARGUMENT"
    # A field GenerateContentRequest does not have
    unknown = run(gemini(seen, max_retries=3), gemini_line("u", gemini_request("hi", temperature=1)), GEMINI)
    assert unknown.code == m.REQUEST_ERROR
    assert unknown.message == 'Invalid JSON payload received. Unknown name "temperature": Cannot find field.'
    assert unknown.detail["error"]["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    # A model Google does not have
    missing = run(gemini(seen), gemini_line("n", gemini_request("hi")), "palm-2")
    assert missing.code == m.REQUEST_ERROR
    assert "is not found" in str(missing.message)
    # The failure knob's refusal
    refused = run(gemini(seen, max_retries=3), gemini_line("f", drawing(REFUSED, gemini_request, "gemini")), GEMINI)
    assert refused.code == m.REQUEST_ERROR
    assert refused.message == "Request contains an invalid argument. (emulated failure)"
    assert seen.statuses == [400, 400, 404, 400]


def test_gemini_server_errors_are_retried_then_given_up(
    gemini: Callable[..., GeminiRealtime], emulator: ProviderEmulator
) -> None:
    emulator.knobs = EmulatorKnobs(seed=SEED, failure_rate=1.0)
    request = drawing(SERVER_ERROR, gemini_request, "gemini")
    seen = Seen()
    outcome = run(gemini(seen, max_retries=2), gemini_line("s", request), GEMINI)
    assert (outcome.ok, outcome.code) == (False, m.SERVER_ERROR)
    assert outcome.message == "Internal error encountered. (emulated failure)"
    assert seen.statuses == [500, 500, 500]
    assert calls(emulator, "gemini") == [(call_key(request), 500)] * 3


def test_gemini_rate_limit_is_googles_429_then_rate_limited(
    gemini: Callable[..., GeminiRealtime], emulator: ProviderEmulator
) -> None:
    emulator.knobs = EmulatorKnobs(seed=SEED, realtime_rpm={"gemini": 1})
    seen = Seen()
    assert run(gemini(seen), gemini_line("a", gemini_request("one")), GEMINI).ok
    client = gemini(seen)

    async def second() -> m.Outcome:
        try:
            return await client.call(gemini_line("b", gemini_request("two")), GEMINI)
        finally:
            await client.aclose()

    exc = raised(second)
    assert isinstance(exc, RateLimited)
    # The window's oldest call leaves it in 60 s of the emulator's clock, which has not moved
    assert exc.retry_after == 60.0
    cause = exc.__cause__
    assert isinstance(cause, errors.ClientError)
    assert cause.code == 429
    error = cause.details["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert error["message"].startswith("You exceeded your current quota")
    kinds = [detail["@type"] for detail in error["details"]]
    assert kinds == [f"type.googleapis.com/google.rpc.{name}" for name in ("QuotaFailure", "Help", "RetryInfo")]
    assert error["details"][0]["violations"][0]["quotaDimensions"] == {"location": "global", "model": GEMINI}
    assert error["details"][2] == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "60s"}
    assert seen.statuses == [200, 429]


def test_gemini_retries_succeed_once_the_window_frees(
    gemini: Callable[..., GeminiRealtime], emulator: ProviderEmulator, clock: FakeClock
) -> None:
    emulator.knobs = EmulatorKnobs(seed=SEED, realtime_rpm={"gemini": 1})
    assert run(gemini(Seen()), gemini_line("a", gemini_request("one")), GEMINI).ok
    # The first 429 moves the emulator's clock past the window: the SDK's next attempt is let through
    seen = Seen(on_429=lambda: clock.advance(61))
    outcome = run(gemini(seen, max_retries=3), gemini_line("b", gemini_request("two")), GEMINI)
    assert outcome.ok
    assert extract(outcome.response or {})[0] == "echo: two"
    assert seen.statuses == [429, 200]
    assert [status for _, status in calls(emulator, "gemini")] == [200, 429, 200]


# -- Bedrock ------------------------------------------------------------------------------------------


def bedrock_line(record_id: str, model_input: dict[str, Any]) -> bytes:
    return orjson.dumps({"recordId": record_id, "modelInput": model_input}) + b"\n"


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 and IAM for the batch side (Bedrock reads and writes jobs in S3), emptied first."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).close()
    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    aws.reset()
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    grant_role(ROLE, f"arn:aws:s3:::{BUCKET}/*")
    yield client
    aws.reset()


@pytest.fixture
def bedrock(s3: Any, emulator: ProviderEmulator, monkeypatch: pytest.MonkeyPatch) -> Callable[..., BedrockRealtime]:
    # As the local stack points boto3 at the emulator: the control plane and the runtime, each its own variable
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", emulator.base_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", emulator.base_url)
    emulation(emulator).min_records = 1
    settings = ProviderSettings(name="bedrock", limits=BatchLimits(max_requests=100, max_bytes=1 << 20))

    def make(observe: Seen, max_retries: int = 0) -> BedrockRealtime:
        return BedrockRealtime(settings, observe, max_retries)

    return make


def bedrock_batch(emulator: ProviderEmulator, clock: FakeClock, model: str, lines: list[bytes]) -> list[m.Outcome]:
    settings = ProviderSettings(
        name="bedrock", limits=BatchLimits(max_requests=100, max_bytes=1 << 20), role_arn=ROLE, bucket=BUCKET
    )
    provider = BedrockProvider(settings)
    batch = BatchRef(job_id="job-rt", key="bedrock-0001", group=model, model=model, requests=1, intent_at=START)
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as file:
        file.write(b"".join(lines))
        file.flush()
        arn = provider.create(batch, file.name)
    clock.advance(LATENCY + 1)
    return sorted(provider.outcomes(arn, provider.status(arn)), key=lambda o: o.custom_id)


@pytest.mark.parametrize(
    ("model", "make", "volatile"),
    [(CLAUDE, claude_input, "id"), (NOVA, nova_input, None), (LLAMA, llama_input, None)],
)
def test_bedrock_answer_reads_like_the_batch_output(
    bedrock: Callable[..., BedrockRealtime],
    emulator: ProviderEmulator,
    clock: FakeClock,
    model: str,
    make: Callable[[str], dict[str, Any]],
    volatile: str | None,
) -> None:
    emulator.knobs = EmulatorKnobs(latency=LATENCY, seed=SEED)
    model_input = make("what is real time?")
    seen = Seen()
    outcome = run(bedrock(seen), bedrock_line("r1", model_input), model)
    assert outcome.ok
    assert outcome.custom_id == "r1"
    assert outcome.response is not None
    [(status, headers)] = seen.answers
    assert status == 200
    assert int(headers["x-amzn-bedrock-input-token-count"]) > 0
    assert calls(emulator, "bedrock") == [(call_key(model_input), 200)]

    # The same record in a batch, beside one Bedrock refuses for its model (checked alike on both sides)
    invalid = {k: v for k, v in model_input.items() if k not in ("anthropic_version", "messages", "prompt")}
    batch = bedrock_batch(emulator, clock, model, [bedrock_line("r1", model_input), bedrock_line("r2", invalid)])
    assert [o.custom_id for o in batch] == ["r1", "r2"]
    assert batch[0].ok
    assert batch[0].response is not None
    assert extract(outcome.response) == extract(batch[0].response)
    text, usage = extract(outcome.response)
    assert text
    assert "what is real time?" in text
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    if volatile is None:
        assert outcome.response == batch[0].response
    else:
        assert {**outcome.response, volatile: ""} == {**batch[0].response, volatile: ""}
    refused = run(bedrock(seen), bedrock_line("r2", invalid), model)
    assert (batch[1].code, refused.code) == (m.REQUEST_ERROR, m.REQUEST_ERROR)
    assert batch[1].message == refused.message
    assert str(refused.message).startswith("Malformed input request: ")


def test_bedrock_refusals_are_request_errors_with_bedrocks_message(
    bedrock: Callable[..., BedrockRealtime], emulator: ProviderEmulator
) -> None:
    emulator.knobs = EmulatorKnobs(seed=SEED, failure_rate=1.0)
    seen = Seen()
    body = {k: v for k, v in claude_input("hi").items() if k != "max_tokens"}
    missing = run(bedrock(seen, max_retries=3), bedrock_line("m", body), CLAUDE)
    assert (missing.ok, missing.code, missing.custom_id) == (False, m.REQUEST_ERROR, "m")
    assert missing.message == (
        "Malformed input request: #: required key [max_tokens] not found, please reformat your input and try again."
    )
    assert missing.detail == {"type": "ValidationException", "message": missing.message, "status": 400}
    extra = run(bedrock(seen), bedrock_line("x", {**nova_input("hi"), "top_p": 0.5}), NOVA)
    assert extra.message == (
        "Malformed input request: #: extraneous key [top_p] is not permitted, please reformat your input and try again."
    )
    unknown = run(bedrock(seen), bedrock_line("u", nova_input("hi")), "cohere.command-r-v1:0")
    assert (unknown.code, unknown.message) == (m.REQUEST_ERROR, "The provided model identifier is invalid.")
    refused = run(bedrock(seen, max_retries=3), bedrock_line("f", drawing(REFUSED, nova_input, "bedrock")), NOVA)
    assert refused.code == m.REQUEST_ERROR
    assert "emulated failure" in str(refused.message)
    assert seen.statuses == [400, 400, 400, 400]


def test_bedrock_server_errors_are_retried_then_given_up(
    bedrock: Callable[..., BedrockRealtime], emulator: ProviderEmulator
) -> None:
    emulator.knobs = EmulatorKnobs(seed=SEED, failure_rate=1.0)
    model_input = drawing(SERVER_ERROR, nova_input, "bedrock")
    seen = Seen()
    outcome = run(bedrock(seen, max_retries=2), bedrock_line("s", model_input), NOVA)
    assert (outcome.ok, outcome.code) == (False, m.SERVER_ERROR)
    assert outcome.detail == {"type": "InternalServerException", "message": outcome.message, "status": 500}
    assert seen.statuses == [500, 500, 500]
    assert calls(emulator, "bedrock") == [(call_key(model_input), 500)] * 3


def test_bedrock_rate_limit_is_a_throttling_exception_then_rate_limited(
    bedrock: Callable[..., BedrockRealtime], emulator: ProviderEmulator
) -> None:
    emulator.knobs = EmulatorKnobs(seed=SEED, realtime_rpm={"bedrock": 1})
    seen = Seen()
    assert run(bedrock(seen), bedrock_line("a", nova_input("one")), NOVA).ok
    client = bedrock(seen)

    async def second() -> m.Outcome:
        try:
            return await client.call(bedrock_line("b", nova_input("two")), NOVA)
        finally:
            await client.aclose()

    exc = raised(second)
    assert isinstance(exc, RateLimited)
    # Bedrock says nothing of when to come back
    assert exc.retry_after is None
    cause = exc.__cause__
    assert isinstance(cause, ClientError)
    assert cause.response["Error"] == {
        "Code": "ThrottlingException",
        "Message": "Too many requests, please wait before trying again.",
    }
    assert cause.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert seen.statuses == [200, 429]
    assert seen.answers[1][1]["x-amzn-errortype"].startswith("ThrottlingException:")


def test_bedrock_retries_succeed_once_the_window_frees(
    bedrock: Callable[..., BedrockRealtime], emulator: ProviderEmulator, clock: FakeClock
) -> None:
    emulator.knobs = EmulatorKnobs(seed=SEED, realtime_rpm={"bedrock": 1})
    assert run(bedrock(Seen()), bedrock_line("a", nova_input("one")), NOVA).ok
    # The 429 moves the emulator's clock past the window; botocore's next attempt (after its throttling
    # backoff, under a second) is let through
    seen = Seen(on_429=lambda: clock.advance(61))
    outcome = run(bedrock(seen, max_retries=3), bedrock_line("b", nova_input("two")), NOVA)
    assert outcome.ok
    assert extract(outcome.response or {})[0] == "echo: two"
    assert seen.statuses[0] == 429
    assert seen.statuses[-1] == 200
    assert set(seen.statuses) == {429, 200}


def test_bedrock_converse_answers_as_a_converse_batch_would(
    bedrock: Callable[..., BedrockRealtime], emulator: ProviderEmulator
) -> None:
    emulator.knobs = EmulatorKnobs(seed=SEED)
    runtime = boto3.client("bedrock-runtime", endpoint_url=emulator.base_url)
    answer = runtime.converse(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "hello"}]}])
    assert answer["output"]["message"]["content"] == [{"text": "echo: hello"}]
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"]["inputTokens"] > 0
