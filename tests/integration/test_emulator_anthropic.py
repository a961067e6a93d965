"""The provider emulator, driven over HTTP by the official anthropic SDK.

Raw responses are validated strictly with the SDK's pydantic types, since the SDK itself does not.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from tests.helpers import LATENCY, START, FakeClock

MODEL = "claude-3-5-haiku-latest"
BATCH_KEYS = (
    "id",
    "type",
    "processing_status",
    "request_counts",
    "ended_at",
    "created_at",
    "expires_at",
    "archived_at",
    "cancel_initiated_at",
    "results_url",
)


@pytest.fixture
def client(emulator: ProviderEmulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emulator.anthropic_base_url, api_key="test", max_retries=0)


# -- helpers ----------------------------------------------------------------------------------------


def request(custom_id: str, text: str, max_tokens: int = 256, **params: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {
            "model": MODEL,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}],
            **params,
        },
    }


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def strict_batch(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a raw batch with the SDK type, and check the keys its status requires."""
    MessageBatch.model_validate(raw)
    assert set(BATCH_KEYS) <= set(raw)
    assert raw["type"] == "message_batch"
    assert raw["id"].startswith("msgbatch_")
    created = parse_time(raw["created_at"])
    assert parse_time(raw["expires_at"]) == created + timedelta(hours=24)
    counts = raw["request_counts"]
    if raw["processing_status"] == "ended":
        assert raw["ended_at"] is not None
        assert raw["results_url"] is not None
        assert raw["results_url"].startswith("http://")
        assert counts["processing"] == 0
    else:
        assert raw["ended_at"] is None
        assert raw["results_url"] is None
        # all but `processing` stay 0 until the batch ends
        assert counts["succeeded"] == counts["errored"] == counts["canceled"] == counts["expired"] == 0
    if raw["processing_status"] == "canceling":
        assert raw["cancel_initiated_at"] is not None
    return raw


def create(client: anthropic.Anthropic, requests: list[dict[str, Any]]) -> dict[str, Any]:
    raw = client.messages.batches.with_raw_response.create(requests=requests)  # type: ignore[arg-type]
    batch = strict_batch(raw.http_response.json())
    assert batch["processing_status"] == "in_progress"
    return batch


def retrieve(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return strict_batch(client.messages.batches.with_raw_response.retrieve(batch_id).http_response.json())


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    call = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(call) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def raw_results(batch: dict[str, Any]) -> list[dict[str, Any]]:
    status, body = http_get(batch["results_url"], {"x-api-key": "test"})
    assert status == 200
    lines = [json.loads(line) for line in body.splitlines() if line]
    for line in lines:
        MessageBatchIndividualResponse.model_validate(line)
    return lines


# -- the life of a batch ----------------------------------------------------------------------------


def test_batch_runs_to_the_end_and_returns_every_result(client: anthropic.Anthropic, clock: FakeClock) -> None:
    # Given a batch of 25 requests, one with a system prompt
    requests = [request(f"req-{i}", f"question {i}") for i in range(24)]
    requests.append(request("with-system", "hello", system=[{"type": "text", "text": "Be brief."}]))
    batch = create(client, requests)
    assert batch["request_counts"]["processing"] == 25

    # When the clock runs through the latency, it stays in progress with zero counts, then ends
    for seconds in (1, 49, 49):
        clock.advance(seconds)
        running = retrieve(client, batch["id"])
        assert running["processing_status"] == "in_progress"
        assert running["request_counts"] == {
            "processing": 25,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
    clock.advance(1)
    ended = retrieve(client, batch["id"])
    assert ended["processing_status"] == "ended"
    assert ended["request_counts"]["succeeded"] == 25
    assert parse_time(ended["ended_at"]) == datetime.fromtimestamp(START + LATENCY, tz=UTC)
    assert parse_time(ended["created_at"]) == datetime.fromtimestamp(START, tz=UTC)
    assert ended["results_url"].endswith(f"/v1/messages/batches/{batch['id']}/results")

    # Then the SDK streams every custom_id exactly once, each a full message echoing the last user turn
    results = list(client.messages.batches.results(batch["id"]))
    assert sorted(r.custom_id for r in results) == sorted(r["custom_id"] for r in requests)
    for result in results:
        assert result.result.type == "succeeded"
        message = result.result.message
        assert message.role == "assistant"
        assert message.model == MODEL
        assert message.stop_reason == "end_turn"
        assert message.content[0].type == "text"
        expected = "echo: hello" if result.custom_id == "with-system" else f"echo: question {result.custom_id[4:]}"
        assert message.content[0].text == expected
        assert message.usage.input_tokens > 0
        assert message.usage.output_tokens > 0

    # And the raw file is valid line by line, and not in input order
    lines = raw_results(ended)
    assert [line["custom_id"] for line in lines] != [r["custom_id"] for r in requests]


def test_max_tokens_caps_the_reply(emulator: ProviderEmulator, client: anthropic.Anthropic) -> None:
    emulator.knobs = EmulatorKnobs(latency=0)
    batch = create(client, [request("a", "a long question " * 20, max_tokens=2)])
    [result] = list(client.messages.batches.results(batch["id"]))
    assert result.result.type == "succeeded"
    assert result.result.message.stop_reason == "max_tokens"
    assert result.result.message.usage.output_tokens == 2


def test_results_are_not_available_before_the_end(emulator: ProviderEmulator, client: anthropic.Anthropic) -> None:
    batch = create(client, [request("a", "hi")])
    with pytest.raises(anthropic.AnthropicError):
        client.messages.batches.results(batch["id"])
    url = f"{emulator.anthropic_base_url}/v1/messages/batches/{batch['id']}/results"
    status, body = http_get(url, {"x-api-key": "k"})
    assert status == 404
    assert json.loads(body)["type"] == "error"


def test_every_result_type(emulator: ProviderEmulator, client: anthropic.Anthropic, clock: FakeClock) -> None:
    # Given failures and an expiring batch
    emulator.knobs = EmulatorKnobs(latency=LATENCY, failure_rate=0.5, expire_rate=1.0, seed=4)
    batch = create(client, [request(f"r{i}", "hi") for i in range(60)])

    # When it ends
    clock.advance(LATENCY)
    ended = retrieve(client, batch["id"])

    # Then there are succeeded, errored (both kinds) and expired results, counted in request_counts
    lines = raw_results(ended)
    kinds = [line["result"]["type"] for line in lines]
    counts = ended["request_counts"]
    assert counts["succeeded"] == kinds.count("succeeded") > 0
    assert counts["errored"] == kinds.count("errored") > 0
    assert counts["expired"] == kinds.count("expired") > 0
    assert counts["canceled"] == 0
    assert sum(counts.values()) == 60
    error_types = {line["result"]["error"]["error"]["type"] for line in lines if line["result"]["type"] == "errored"}
    assert error_types == {"invalid_request_error", "api_error"}
    for line in lines:
        if line["result"]["type"] == "errored":
            assert line["result"]["error"]["type"] == "error"
            assert line["result"]["error"]["error"]["message"]
        if line["result"]["type"] == "expired":
            assert line["result"] == {"type": "expired"}


def test_cancel_returns_canceled_results(client: anthropic.Anthropic, clock: FakeClock) -> None:
    # Given a batch half way through
    batch = create(client, [request(f"r{i}", "hi") for i in range(40)])
    clock.advance(50)

    # When it is cancelled
    raw = client.messages.batches.with_raw_response.cancel(batch["id"]).http_response.json()
    canceling = strict_batch(raw)
    clock.advance(1)
    ended = retrieve(client, batch["id"])

    # Then it is canceling, then ended with finished work kept and the rest canceled
    assert canceling["processing_status"] == "canceling"
    assert parse_time(canceling["cancel_initiated_at"]) == datetime.fromtimestamp(START + 50, tz=UTC)
    assert ended["processing_status"] == "ended"
    assert ended["cancel_initiated_at"] == canceling["cancel_initiated_at"]
    counts = ended["request_counts"]
    assert counts["canceled"] > 0
    assert counts["succeeded"] > 0
    assert counts["succeeded"] + counts["canceled"] == 40
    results = list(client.messages.batches.results(batch["id"]))
    assert sum(1 for r in results if r.result.type == "canceled") == counts["canceled"]
    assert len({r.custom_id for r in results}) == 40


def test_create_validates_synchronously(emulator: ProviderEmulator, client: anthropic.Anthropic) -> None:
    bad_batches: list[list[dict[str, Any]]] = [
        [],
        [request("has space", "hi")],
        [request("x" * 65, "hi")],
        [request("dup", "hi"), request("dup", "hi")],
        [{"custom_id": "a"}],
    ]
    for requests in bad_batches:
        with pytest.raises(anthropic.BadRequestError) as raised:
            client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        body = raised.value.body
        assert isinstance(body, dict)
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"]

    emulator.anthropic.max_requests = 3
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[request(f"r{i}", "hi") for i in range(4)])  # type: ignore[misc]
    emulator.anthropic.max_bytes = 1000
    with pytest.raises(anthropic.APIStatusError) as too_large:
        client.messages.batches.create(requests=[request("big", "x" * 2000)])  # type: ignore[list-item]
    assert too_large.value.status_code == 413
    assert emulator.stats()["batches_created"]["anthropic"] == 0


def test_list_is_newest_first_and_paginates(client: anthropic.Anthropic, clock: FakeClock) -> None:
    ids = []
    for i in range(5):
        ids.append(create(client, [request(f"r{i}", "hi")])["id"])
        clock.advance(1)
    newest_first = ids[::-1]

    raw = client.messages.batches.with_raw_response.list(limit=2).http_response.json()
    assert set(raw) == {"data", "has_more", "first_id", "last_id"}
    assert [b["id"] for b in raw["data"]] == newest_first[:2]
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (newest_first[0], newest_first[1], True)
    for batch in raw["data"]:
        strict_batch(batch)

    # The SDK's auto-pagination walks every page with after_id
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first
    # before_id returns the page just before (newer than) the cursor
    page = client.messages.batches.list(limit=2, before_id=newest_first[3])
    assert [b.id for b in page.data] == newest_first[1:3]
    assert page.has_more is True
    last = client.messages.batches.list(limit=2, after_id=newest_first[3])
    assert [b.id for b in last.data] == newest_first[4:]
    assert last.has_more is False


def test_same_seed_same_submissions_same_outcomes(clock: FakeClock) -> None:
    knobs = EmulatorKnobs(latency=0, failure_rate=0.3, expire_rate=0.5, seed=99)
    outcomes = []
    for _ in range(2):
        with ProviderEmulator(knobs, clock=clock) as emu:
            client = anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key="test", max_retries=0)
            per_run = []
            for b in range(4):
                batch = create(client, [request(f"b{b}-r{i}", "hi") for i in range(30)])
                lines = raw_results(retrieve(client, batch["id"]))
                per_run.append((batch["id"], [(line["custom_id"], line["result"]["type"]) for line in lines]))
            outcomes.append(per_run)
    assert outcomes[0] == outcomes[1]


def test_transient_errors_are_retried_by_the_sdk(emulator: ProviderEmulator) -> None:
    emulator.knobs = EmulatorKnobs(latency=0, transient_error_rate=0.4, seed=2)
    bare = anthropic.Anthropic(base_url=emulator.anthropic_base_url, api_key="test", max_retries=0)
    failures = []
    for _ in range(20):
        try:
            bare.messages.batches.list()
        except (anthropic.RateLimitError, anthropic.InternalServerError) as exc:
            failures.append(exc)
    assert {type(exc) for exc in failures} == {anthropic.RateLimitError, anthropic.InternalServerError}
    assert all(exc.response.headers["retry-after-ms"] == "10" for exc in failures)
    assert all(exc.response.json()["type"] == "error" for exc in failures)

    patient = anthropic.Anthropic(base_url=emulator.anthropic_base_url, api_key="test", max_retries=20)
    for _ in range(3):
        batch = patient.messages.batches.create(requests=[request("a", "hi"), request("b", "ho")])  # type: ignore[list-item]
        assert patient.messages.batches.retrieve(batch.id).processing_status == "ended"
        assert len(list(patient.messages.batches.results(batch.id))) == 2


def test_auth_accepts_either_header(emulator: ProviderEmulator) -> None:
    url = f"{emulator.anthropic_base_url}/v1/messages/batches"
    status, body = http_get(url)
    assert status == 401
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": json.loads(body)["error"]["message"]},
    }
    assert http_get(url, {"x-api-key": "k"})[0] == 200
    assert http_get(url, {"Authorization": "Bearer k"})[0] == 200


def test_stats_record_anthropic_batches(emulator: ProviderEmulator, client: anthropic.Anthropic) -> None:
    create(client, [request("a", "hi"), request("b", "hi")])
    stats = emulator.stats()
    assert {k: v for k, v in stats["batches_created"].items() if v} == {"anthropic": 1}
    assert stats["batches"][0]["provider"] == "anthropic"
    assert stats["batches"][0]["metadata"] is None
    assert stats["batches"][0]["custom_ids"] == ["a", "b"]
    assert stats["requests_submitted"] == {"a": 1, "b": 1}
