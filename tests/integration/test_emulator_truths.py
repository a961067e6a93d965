"""Production truths of Anthropic and Gemini (issue 15), through the official SDKs against the emulator:
the providers' quotas and what our clients make of them, Anthropic's asynchronous params validation,
Gemini's 48-hour expiry, and the provider-side files our clients clean up."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse
from google import genai
from google.genai import errors, types

from batchdrop import models as m
from batchdrop.config import PROVIDER_MAXIMA, ProviderSettings
from batchdrop.local.emulator import ProviderEmulator
from batchdrop.providers.anthropic.client import AnthropicProvider
from batchdrop.providers.base import BatchRef
from batchdrop.providers.gemini.client import GeminiProvider
from tests.helpers import LATENCY, START, FakeClock
from tests.lines import jsonl

CLAUDE = "claude-3-5-haiku-latest"
GEMINI = "gemini-2.5-flash"
HOUR = 3600.0


def claude_request(custom_id: str, **params: Any) -> dict[str, Any]:
    base = {"model": CLAUDE, "max_tokens": 64, "messages": [{"role": "user", "content": f"hi {custom_id}"}]}
    return {"custom_id": custom_id, "params": {**base, **params}}


def anthropic_provider(emulator: ProviderEmulator, monkeypatch: pytest.MonkeyPatch) -> AnthropicProvider:
    # The provider builds its own client (retries as deployed): key from the environment.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    return AnthropicProvider(
        ProviderSettings(name="anthropic", limits=PROVIDER_MAXIMA["anthropic"], base_url=emulator.anthropic_base_url)
    )


def gemini_provider(emulator: ProviderEmulator, monkeypatch: pytest.MonkeyPatch) -> GeminiProvider:
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    return GeminiProvider(ProviderSettings(name="gemini", limits=PROVIDER_MAXIMA["gemini"], base_url=emulator.base_url))


def gemini_client(emulator: ProviderEmulator) -> genai.Client:
    return genai.Client(
        api_key="k",
        http_options=types.HttpOptions(
            base_url=emulator.base_url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )


def ref(provider: str, model: str, key: str, requests: int) -> BatchRef:
    return BatchRef(
        job_id="job-0123456789abcdef0123", key=key, group=model, model=model, requests=requests, intent_at=START
    )


def gemini_file(tmp_path: Path, name: str, n: int, text: str = "q") -> str:
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(
        jsonl(
            [{"key": f"{name}-{i}", "request": {"contents": [{"parts": [{"text": f"{text} {i}"}]}]}} for i in range(n)]
        )
    )
    return str(path)


def anthropic_file(tmp_path: Path, name: str, requests: list[dict[str, Any]]) -> str:
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(jsonl(requests))
    return str(path)


# -- Anthropic --------------------------------------------------------------------------------------


def test_anthropic_params_are_validated_in_the_results_and_map_to_request_errors(
    emulator: ProviderEmulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = anthropic.Anthropic(base_url=emulator.anthropic_base_url, api_key="k", max_retries=0)
    no_max_tokens = claude_request("no-max-tokens")
    del no_max_tokens["params"]["max_tokens"]
    requests = [
        claude_request("good"),
        claude_request("unknown-model", model="gpt-4o"),
        no_max_tokens,
        claude_request("no-messages", messages=[]),
        claude_request("system-role", messages=[{"role": "system", "content": "be brief"}]),
    ]
    # Accepted: Anthropic checks params only once the batch runs.
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 5
    clock.advance(LATENCY)
    assert client.messages.batches.retrieve(batch.id).request_counts.errored == 4

    raw = {item.custom_id: item for item in client.messages.batches.results(batch.id)}
    for item in raw.values():
        MessageBatchIndividualResponse.model_validate(item.model_dump())
    assert raw["good"].result.type == "succeeded"
    expected = {
        "unknown-model": "model: gpt-4o",
        "no-max-tokens": "max_tokens: Field required",
        "no-messages": "messages: List should have at least 1 item after validation, not 0",
        "system-role": "messages.0.role: Input should be 'user' or 'assistant'",
    }
    for custom_id, message in expected.items():
        result = raw[custom_id].result
        assert result.type == "errored"
        assert result.error.type == "error"
        assert (result.error.error.type, result.error.error.message) == ("invalid_request_error", message)

    provider = anthropic_provider(emulator, monkeypatch)
    outcomes = {o.custom_id: o for o in provider.outcomes(batch.id, provider.status(batch.id))}
    assert outcomes["good"].ok
    assert {k: (o.code, o.message) for k, o in outcomes.items() if not o.ok} == {
        k: (m.REQUEST_ERROR, v) for k, v in expected.items()
    }


def test_anthropic_queue_limit_is_a_quick_429_that_is_over_quota_not_refused(
    emulator: ProviderEmulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulator.anthropic.max_queued_requests = 5
    provider = anthropic_provider(emulator, monkeypatch)
    provider.create(
        ref("anthropic", CLAUDE, "a", 3), anthropic_file(tmp_path, "a", [claude_request(f"a{i}") for i in range(3)])
    )
    second = anthropic_file(tmp_path, "b", [claude_request(f"b{i}") for i in range(3)])
    answers = emulator.counters.get("request", 0)
    started = time.monotonic()
    with pytest.raises(anthropic.RateLimitError) as raised:
        provider.create(ref("anthropic", CLAUDE, "b", 3), second)
    # One answer, at once: the create is not retried by the SDK (whose default honours retry-after).
    assert time.monotonic() - started < 2
    assert emulator.counters["request"] - answers == 1
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert "limit of 5" in body["error"]["message"]
    assert provider.over_quota(raised.value)
    assert not provider.refused(raised.value)
    assert emulator.stats()["batches_created"]["anthropic"] == 1
    # Room again once the first batch has ended.
    clock.advance(LATENCY)
    assert provider.create(ref("anthropic", CLAUDE, "b", 3), second).startswith("msgbatch_")


def test_anthropic_cleanup_deletes_the_ended_batch(
    emulator: ProviderEmulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    provider = anthropic_provider(emulator, monkeypatch)
    client = anthropic.Anthropic(base_url=emulator.anthropic_base_url, api_key="k", max_retries=0)
    batch_id = provider.create(
        ref("anthropic", CLAUDE, "a", 2), anthropic_file(tmp_path, "a", [claude_request("x"), claude_request("y")])
    )
    # An unended batch is left alone (Anthropic refuses to delete it: it must be cancelled first).
    provider.cleanup(batch_id, provider.status(batch_id))
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(batch_id)
    assert [b.id for b in client.messages.batches.list()] == [batch_id]
    clock.advance(LATENCY)
    status = provider.status(batch_id)
    assert status.terminal
    provider.cleanup(batch_id, status)
    assert list(client.messages.batches.list()) == []
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch_id)
    provider.cleanup(batch_id, status)  # twice: already gone, no error


# -- Gemini -----------------------------------------------------------------------------------------


def test_gemini_enqueued_tokens_quota_is_a_429_that_is_over_quota_not_refused(
    emulator: ProviderEmulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    provider = gemini_provider(emulator, monkeypatch)
    first = gemini_file(tmp_path, "a", 20)
    size_tokens = (Path(first).stat().st_size + 3) // 4
    emulator.gemini.max_enqueued_tokens = size_tokens + size_tokens // 2
    provider.create(ref("gemini", GEMINI, "a", 20), first)
    with pytest.raises(errors.ClientError) as raised:
        provider.create(ref("gemini", GEMINI, "b", 20), gemini_file(tmp_path, "b", 20))
    assert (raised.value.code, raised.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert provider.over_quota(raised.value)
    assert not provider.refused(raised.value)
    assert emulator.stats()["batches_created"]["gemini"] == 1
    # and the refused batch's upload is not left to fill the project's storage
    assert len(emulator.gemini.file_names()) == 1
    # Another model's queue is its own.
    other = "gemini-2.0-flash"
    provider.create(ref("gemini", other, "c", 20), gemini_file(tmp_path, "c", 20))
    clock.advance(LATENCY)
    provider.create(ref("gemini", GEMINI, "b", 20), gemini_file(tmp_path, "b", 20))


def test_gemini_batch_pending_past_48_hours_expires_without_a_responses_file(
    emulator: ProviderEmulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from batchdrop.local.emulator import EmulatorKnobs

    emulator.knobs = EmulatorKnobs(latency=100 * HOUR, seed=7)
    provider = gemini_provider(emulator, monkeypatch)
    batch_id = provider.create(ref("gemini", GEMINI, "a", 10), gemini_file(tmp_path, "a", 10))
    clock.advance(47 * HOUR)
    assert provider.status(batch_id).state == m.IN_PROGRESS  # some requests have run by now
    clock.advance(1 * HOUR)
    client = gemini_client(emulator)
    job = client.batches.get(name=batch_id)
    assert job.state == types.JobState.JOB_STATE_EXPIRED
    assert job.dest is None or not job.dest.file_name
    status = provider.status(batch_id)
    assert (status.state, status.provider_status) == (m.BATCH_EXPIRED, "JOB_STATE_EXPIRED")
    assert status.raw["responses_file"] is None
    # No responses at all: every request is left to the caller, which reports it expired.
    assert list(provider.outcomes(batch_id, status)) == []
    # Only the uploaded input is left in the project.
    assert len(emulator.gemini.file_names()) == 1


def test_gemini_cleanup_deletes_the_input_and_responses_files(
    emulator: ProviderEmulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    provider = gemini_provider(emulator, monkeypatch)
    kept = provider.create(ref("gemini", GEMINI, "kept", 3), gemini_file(tmp_path, "kept", 3))
    batch_id = provider.create(ref("gemini", GEMINI, "a", 3), gemini_file(tmp_path, "a", 3))
    clock.advance(LATENCY)
    kept_status = provider.status(kept)
    status = provider.status(batch_id)
    assert len(list(provider.outcomes(batch_id, status))) == 3
    assert len(emulator.gemini.file_names()) == 4  # two inputs, two responses files
    provider.cleanup(batch_id, status)
    names = emulator.gemini.file_names()
    assert len(names) == 2
    assert set(names) == {kept_status.raw["input_file"], kept_status.raw["responses_file"]}
    provider.cleanup(batch_id, status)  # twice: already gone, no error
    assert len(emulator.gemini.file_names()) == 2


def test_gemini_storage_quota_refuses_uploads_until_files_are_cleaned_up(
    emulator: ProviderEmulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    provider = gemini_provider(emulator, monkeypatch)
    path = gemini_file(tmp_path, "a", 5)
    size = Path(path).stat().st_size
    emulator.gemini.max_storage_bytes = size + size // 2
    batch_id = provider.create(ref("gemini", GEMINI, "a", 5), path)
    # Our create gives the full project back at once as "not now", neither retried for minutes nor refused
    started = time.monotonic()
    with pytest.raises(errors.ClientError) as ours:
        provider.create(ref("gemini", GEMINI, "b", 5), path)
    assert time.monotonic() - started < 2
    assert provider.over_quota(ours.value)
    client = gemini_client(emulator)
    with pytest.raises(errors.ClientError) as raised:
        client.files.upload(file=path, config=types.UploadFileConfig(mime_type="jsonl"))
    assert (raised.value.code, raised.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert provider.over_quota(raised.value)
    assert not provider.refused(raised.value)
    clock.advance(LATENCY)
    provider.cleanup(batch_id, provider.status(batch_id))
    assert emulator.gemini.file_names() == []
    assert client.files.upload(file=path, config=types.UploadFileConfig(mime_type="jsonl")).name
