"""The real-time lane's OpenAI, Azure OpenAI and Anthropic clients against the emulator's real-time
endpoints, over HTTP through the official async SDKs: answers read like the batch's, refusals, server
errors after the SDK's retries, the requests-per-minute limit with each provider's headers, and the
observer seeing every answer."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchdrop import models as m
from batchdrop.config import PROVIDER_DEFAULT_LIMITS, ProviderSettings
from batchdrop.local.emulator import REFUSED, SERVER_ERROR, EmulatorKnobs, ProviderEmulator
from batchdrop.local.emulator.canned import call_key, draw_call_failure
from batchdrop.outputs import extract
from batchdrop.providers.anthropic.client import AnthropicProvider
from batchdrop.providers.anthropic.realtime import AnthropicRealtime
from batchdrop.providers.azure.client import AzureOpenAIProvider
from batchdrop.providers.azure.realtime import AzureOpenAIRealtime
from batchdrop.providers.base import BatchRef, RateLimited
from batchdrop.providers.openai.client import OpenAIProvider
from batchdrop.providers.openai.realtime import OpenAIRealtime
from batchdrop.providers.realtime_sdk import SdkRealtime
from tests.helpers import LATENCY, START, FakeClock

SEED = 7
API_VERSION = "2024-10-21"
Observed = list[tuple[int, Mapping[str, str]]]


@dataclass(frozen=True)
class Case:
    """One kind of request: its provider, and the batch line's endpoint (OpenAI's shape) or None (Anthropic)."""

    provider: str
    url: str | None = None

    @property
    def model(self) -> str:
        if self.provider == "anthropic":
            return "claude-haiku-4-5"
        if self.provider == "azure":
            return "my-deployment"
        return "text-embedding-3-small" if self.url == "/v1/embeddings" else "gpt-4o-mini"

    def body(self, text: str) -> dict[str, Any]:
        """The request's body as the provider receives it (the line's body, or its params)."""
        if self.provider == "anthropic":
            return {"model": self.model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
        if self.url == "/v1/chat/completions":
            return {"model": self.model, "messages": [{"role": "user", "content": text}], "max_completion_tokens": 64}
        return {"model": self.model, "input": text}

    def line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.provider == "anthropic":
            return {"custom_id": custom_id, "params": body}
        return {"custom_id": custom_id, "method": "POST", "url": self.url, "body": body}

    def settings(self, emulator: ProviderEmulator, base_url: str | None = None) -> ProviderSettings:
        url = base_url or {"openai": emulator.openai_base_url, "anthropic": emulator.anthropic_base_url}.get(
            self.provider, emulator.base_url
        )
        api_version = API_VERSION if self.provider == "azure" else None
        return ProviderSettings(
            self.provider, PROVIDER_DEFAULT_LIMITS[self.provider], base_url=url, api_version=api_version
        )

    def id(self) -> str:
        return self.provider + (self.url or "").replace("/v1/", ":")


REALTIME: dict[str, type[SdkRealtime]] = {
    "openai": OpenAIRealtime,
    "azure": AzureOpenAIRealtime,
    "anthropic": AnthropicRealtime,
}
CASES = [
    Case("openai", "/v1/chat/completions"),
    Case("openai", "/v1/responses"),
    Case("openai", "/v1/embeddings"),
    Case("azure", "/v1/chat/completions"),
    Case("azure", "/v1/responses"),
    Case("azure", "/v1/embeddings"),
    Case("anthropic"),
]
ONE_EACH = [Case("openai", "/v1/chat/completions"), Case("azure", "/v1/chat/completions"), Case("anthropic")]


def by_id(cases: list[Case]) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[c.id() for c in cases])


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # No secret ARN in these settings: the clients read the SDKs' own variables (adapters.secrets).
    for name in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(name, "test-key")


@pytest.fixture
def start(clock: FakeClock) -> Iterator[Callable[..., ProviderEmulator]]:
    """Starts an emulator with the given knobs (seed 7, the tests' clock unless another is given)."""
    started: list[ProviderEmulator] = []

    def run(clock_: Callable[[], float] = clock, **knobs: Any) -> ProviderEmulator:
        emulator = ProviderEmulator(EmulatorKnobs(latency=LATENCY, seed=SEED, **knobs), clock=clock_).start()
        started.append(emulator)
        return emulator

    yield run
    for emulator in started:
        emulator.stop()


def calls(
    case: Case, settings: ProviderSettings, lines: list[dict[str, Any]], observed: Observed, max_retries: int = 0
) -> list[m.Outcome | RateLimited]:
    """Each line sent in turn through the case's real-time client (one client, as the lane uses one per
    invocation); a RateLimited raised is returned in the line's place."""

    async def run() -> list[m.Outcome | RateLimited]:
        client = REALTIME[case.provider](
            settings, lambda status, headers: observed.append((status, headers)), max_retries
        )
        results: list[m.Outcome | RateLimited] = []
        try:
            for line in lines:
                try:
                    results.append(await client.call(orjson.dumps(line) + b"\n", case.model))
                except RateLimited as exc:
                    results.append(exc)
        finally:
            await client.aclose()
        return results

    return asyncio.run(run())


def one(case: Case, settings: ProviderSettings, line: dict[str, Any], observed: Observed, **kw: Any) -> m.Outcome:
    (result,) = calls(case, settings, [line], observed, **kw)
    assert isinstance(result, m.Outcome), result
    return result


def batch_outcome(
    case: Case, emulator: ProviderEmulator, clock: FakeClock, line: dict[str, Any], tmp: Path
) -> m.Outcome:
    """The same line run through the batch API by our batch client."""
    settings = case.settings(emulator)
    provider = {"openai": OpenAIProvider, "azure": AzureOpenAIProvider, "anthropic": AnthropicProvider}[case.provider](
        settings
    )
    path = tmp / "batch.jsonl"
    path.write_bytes(orjson.dumps(line) + b"\n")
    ref = BatchRef("job", "b0", f"{case.url} {case.model}", case.model, 1, clock.now)
    batch_id = provider.create(ref, str(path))
    clock.advance(LATENCY + 1)
    (outcome,) = list(provider.outcomes(batch_id, provider.status(batch_id)))
    return outcome


def headers_of(observed: Observed, status: int) -> dict[str, str]:
    (headers,) = [h for s, h in observed if s == status]
    return dict(headers)


# -- answers --------------------------------------------------------------------------------------


@by_id(CASES)
def test_an_answer_reads_like_the_batch_result_of_the_same_line(
    case: Case, start: Callable[..., ProviderEmulator], clock: FakeClock, tmp_path: Path
) -> None:
    emulator = start()
    line = case.line("r1", case.body("What is the capital of France?"))
    observed: Observed = []

    realtime = one(case, case.settings(emulator), line, observed)
    batch = batch_outcome(case, emulator, clock, line, tmp_path)

    assert realtime.ok
    assert batch.ok
    assert realtime.custom_id == batch.custom_id == "r1"
    assert realtime.response is not None
    assert batch.response is not None
    text, usage = extract(realtime.response)
    assert (text, usage) == extract(batch.response)
    assert usage.input_tokens > 0
    if case.url != "/v1/embeddings":
        assert text == "echo: What is the capital of France?"
        assert usage.output_tokens > 0
    assert [status for status, _ in observed] == [200]
    if case.provider == "anthropic":
        # the standard tier in real time, the batch tier in a batch (anthropic/types/usage.py)
        assert realtime.response["usage"]["service_tier"] == "standard"
        assert batch.response["usage"]["service_tier"] == "batch"
    [call] = emulator.realtime_calls()
    assert (call["provider"], call["key"], call["status"]) == (
        case.provider,
        call_key(line.get("body") or line["params"]),
        200,
    )


def test_the_latency_knob_delays_each_answer(start: Callable[..., ProviderEmulator]) -> None:
    emulator = start(realtime_latency=0.3)
    case = Case("openai", "/v1/chat/completions")
    began = time.monotonic()
    outcome = one(case, case.settings(emulator), case.line("r1", case.body("hi")), [])
    assert outcome.ok
    assert time.monotonic() - began >= 0.3


# -- refusals and failures ------------------------------------------------------------------------

REFUSALS = [
    (
        Case("openai", "/v1/chat/completions"),
        {"model": "gpt-4o-mini", "messages": []},
        "Invalid 'messages': empty array.",
    ),
    (Case("openai", "/v1/responses"), {"input": "hi"}, "Missing required parameter: 'model'."),
    (Case("openai", "/v1/embeddings"), {"model": "text-embedding-3-small"}, "Missing required parameter: 'input'."),
    (
        Case("azure", "/v1/chat/completions"),
        {"model": "dep", "messages": [{"role": "robot"}]},
        "Invalid value: 'robot'.",
    ),
    (Case("anthropic"), {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens:"),
]


@pytest.mark.parametrize(("case", "body", "message"), REFUSALS, ids=[c.id() for c, _, _ in REFUSALS])
def test_a_request_the_api_refuses_is_a_request_error_with_its_message(
    case: Case, body: dict[str, Any], message: str, start: Callable[..., ProviderEmulator]
) -> None:
    emulator = start()
    observed: Observed = []
    outcome = one(case, case.settings(emulator), case.line("bad", body), observed, max_retries=3)
    assert not outcome.ok
    assert outcome.code == m.REQUEST_ERROR
    assert outcome.custom_id == "bad"
    assert outcome.message is not None
    assert outcome.message.startswith(message)
    # the error body as the provider sent it, in its own shape
    assert isinstance(outcome.detail, dict)
    error = outcome.detail["error"]
    assert error["message"] == outcome.message
    if case.provider == "anthropic":
        assert outcome.detail["type"] == "error"
        assert error["type"] == "invalid_request_error"
    else:
        assert error["type"] == "invalid_request_error"
    # a 400 is not retried
    assert [status for status, _ in observed] == [400]


def drawn(case: Case, kind: str) -> dict[str, Any]:
    """A body the emulator's failure draw (failure_rate 1: half refused, half server errors) gives `kind`."""
    for n in range(100):
        body = case.body(f"request {n}")
        if draw_call_failure(SEED, case.provider, call_key(body), 1.0) == kind:
            return body
    raise AssertionError(f"no body drawn {kind}")


@by_id(ONE_EACH)
def test_server_errors_are_retried_by_the_sdk_then_a_server_error(
    case: Case, start: Callable[..., ProviderEmulator]
) -> None:
    emulator = start(failure_rate=1.0)
    body = drawn(case, SERVER_ERROR)
    observed: Observed = []
    outcome = one(case, case.settings(emulator), case.line("r1", body), observed, max_retries=1)
    assert not outcome.ok
    assert outcome.code == m.SERVER_ERROR
    assert outcome.message == "The server had an error while processing your request (emulated failure)."
    assert [status for status, _ in observed] == [500, 500]
    assert [(c["key"], c["status"]) for c in emulator.realtime_calls()] == [(call_key(body), 500)] * 2


@by_id(ONE_EACH)
def test_a_request_drawn_refused_is_a_request_error_at_once(case: Case, start: Callable[..., ProviderEmulator]) -> None:
    emulator = start(failure_rate=1.0)
    observed: Observed = []
    outcome = one(case, case.settings(emulator), case.line("r1", drawn(case, REFUSED)), observed, max_retries=2)
    assert not outcome.ok
    assert outcome.code == m.REQUEST_ERROR
    assert outcome.message == "The request was refused (emulated failure)."
    assert [status for status, _ in observed] == [400]


@by_id(ONE_EACH)
def test_no_answer_at_all_is_a_server_error(case: Case, start: Callable[..., ProviderEmulator]) -> None:
    emulator = start()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = case.settings(
        emulator, base_url=f"http://127.0.0.1:{port}" + ("/v1" if case.provider == "openai" else "")
    )
    observed: Observed = []
    outcome = one(case, settings, case.line("r1", case.body("hi")), observed)
    assert not outcome.ok
    assert outcome.code == m.SERVER_ERROR
    assert observed == []


# -- the requests-per-minute limit ----------------------------------------------------------------

RESET_AT = datetime.fromtimestamp(START + 60, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
# What each provider's answers say with a limit of 1 a minute, once the call is made and once it is refused.
LIMIT_HEADERS = {
    "openai": (
        {
            "x-ratelimit-limit-requests": "1",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1m0s",
        },
        {"retry-after": "60"},
        "Rate limit reached for gpt-4o-mini in organization org-emulator on requests per min (RPM): Limit 1",
    ),
    "azure": (
        {"x-ratelimit-limit-requests": "1", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "60"},
        {"retry-after-ms": "60000", "retry-after": "60"},
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded",
    ),
    "anthropic": (
        {
            "anthropic-ratelimit-requests-limit": "1",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": RESET_AT,
        },
        {"retry-after": "60", "x-should-retry": "true"},
        "This request would exceed your organization's rate limit of 1 requests per minute",
    ),
}


@by_id(ONE_EACH)
def test_past_the_limit_a_429_with_the_providers_headers_raises_rate_limited(
    case: Case, start: Callable[..., ProviderEmulator]
) -> None:
    emulator = start(realtime_rpm={case.provider: 1})
    rate, retry, message = LIMIT_HEADERS[case.provider]
    observed: Observed = []
    lines = [case.line("r1", case.body("first")), case.line("r2", case.body("second"))]

    ran, limited = calls(case, case.settings(emulator), lines, observed)

    assert isinstance(ran, m.Outcome)
    assert ran.ok
    assert isinstance(limited, RateLimited)
    assert str(limited).startswith(message)
    assert limited.retry_after == 60.0
    assert [status for status, _ in observed] == [200, 429]
    assert rate.items() <= headers_of(observed, 200).items()
    assert (rate | retry).items() <= headers_of(observed, 429).items()
    assert [c["status"] for c in emulator.realtime_calls()] == [200, 429]


class RealClock:
    """Real time, moved on by hand: the SDK's retry really waits the retry-after the emulator computed."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@by_id(ONE_EACH)
def test_the_sdk_waits_the_retry_after_and_the_retry_runs(case: Case, start: Callable[..., ProviderEmulator]) -> None:
    clock = RealClock()
    emulator = start(clock, realtime_rpm={case.provider: 1})
    settings = case.settings(emulator)
    observed: Observed = []
    assert one(case, settings, case.line("r1", case.body("first")), observed).ok
    clock.offset += 59.0  # the first call leaves the window in about a second

    began = time.monotonic()
    outcome = one(case, settings, case.line("r2", case.body("second")), observed, max_retries=1)
    waited = time.monotonic() - began

    assert outcome.ok
    assert [status for status, _ in observed] == [200, 429, 200]
    told = headers_of(observed, 429)
    retry_after = float(told["retry-after-ms"]) / 1000 if "retry-after-ms" in told else float(told["retry-after"])
    assert 0.5 <= retry_after <= 1.0
    assert waited >= 0.9 * retry_after
    assert [c["status"] for c in emulator.realtime_calls()] == [200, 429, 200]


# -- the observer, and Azure's paths --------------------------------------------------------------


def test_an_observer_that_fails_neither_fails_the_call_nor_sends_it_again(
    start: Callable[..., ProviderEmulator],
) -> None:
    emulator = start()
    case = Case("openai", "/v1/chat/completions")

    def broken(status: int, headers: Any) -> None:
        raise RuntimeError("observer bug")

    async def run() -> m.Outcome:
        client = OpenAIRealtime(case.settings(emulator), broken, 3)
        try:
            return await client.call(orjson.dumps(case.line("r1", case.body("hi"))), case.model)
        finally:
            await client.aclose()

    assert asyncio.run(run()).ok
    assert len(emulator.realtime_calls()) == 1


def test_azure_answers_404_without_an_api_version(start: Callable[..., ProviderEmulator]) -> None:
    emulator = start()
    request = urllib.request.Request(
        f"{emulator.base_url}/openai/deployments/dep/chat/completions",
        data=orjson.dumps(Case("azure", "/v1/chat/completions").body("hi")),
        headers={"api-key": "k", "content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 404
    assert orjson.loads(refused.value.read()) == {"error": {"code": "404", "message": "Resource not found"}}
