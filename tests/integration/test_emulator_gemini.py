"""The emulator's Gemini Batch Mode, driven over HTTP by the official google-genai SDK, and GeminiProvider
end to end against it.

Raw responses are validated strictly: the Operation's keys and types by hand, the conversion with the SDK's
own converter, and every output line with the SDK's pydantic types (which forbid unknown fields).
"""

from __future__ import annotations

import io
import json
import logging
import re
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import _api_client, errors, types
from google.genai.batches import _BatchJob_from_mldev

from batchdrop import models as m
from batchdrop.config import PROVIDER_MAXIMA, ProviderSettings
from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from batchdrop.local.emulator.canned import tokens as _tokens
from batchdrop.providers.base import BatchRef
from batchdrop.providers.gemini.client import GeminiProvider, batch_display_name
from tests.helpers import LATENCY, START, FakeClock

MODEL = "gemini-2.5-flash"
BATCH_STATES = {
    "BATCH_STATE_PENDING",
    "BATCH_STATE_RUNNING",
    "BATCH_STATE_SUCCEEDED",
    "BATCH_STATE_FAILED",
    "BATCH_STATE_CANCELLED",
    "BATCH_STATE_EXPIRED",
}
TERMINAL = {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"}
METADATA_REQUIRED = {
    "@type",
    "model",
    "displayName",
    "inputConfig",
    "createTime",
    "updateTime",
    "batchStats",
    "state",
    "name",
}
METADATA_KEYS = METADATA_REQUIRED | {"endTime", "output"}
STATS_KEYS = {"requestCount", "successfulRequestCount", "failedRequestCount", "pendingRequestCount"}


def make_client(emulator: ProviderEmulator, attempts: int = 1) -> genai.Client:
    retry = types.HttpRetryOptions(attempts=attempts, initial_delay=0.001, max_delay=0.01, jitter=0.001)
    return genai.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url=emulator.base_url, api_version="v1beta", retry_options=retry),
    )


@pytest.fixture
def client(emulator: ProviderEmulator) -> genai.Client:
    return make_client(emulator)


# -- helpers ----------------------------------------------------------------------------------------


def line(key: str, text: str, **request: Any) -> dict[str, Any]:
    return {"key": key, "request": {"contents": [{"role": "user", "parts": [{"text": text}]}], **request}}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in lines)


def upload(client: genai.Client, data: bytes) -> str:
    file = client.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl", "display_name": "input"})
    assert file.name is not None
    assert re.fullmatch(r"files/[a-z0-9]+", file.name)
    assert file.size_bytes == len(data)
    assert file.source == types.FileSource.UPLOADED
    return file.name


def create(client: genai.Client, lines: list[dict[str, Any]], display_name: str = "job", model: str = MODEL) -> str:
    job = client.batches.create(model=model, src=upload(client, jsonl(lines)), config={"display_name": display_name})
    assert job.name is not None
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.display_name == display_name
    assert job.create_time is not None
    assert job.model == f"models/{model}"
    return job.name


def http(
    emulator: ProviderEmulator, method: str, path: str, body: Any = None, key: str | None = "k"
) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-goog-api-key"] = key
    data = json.dumps(body).encode() if body is not None else None
    call = urllib.request.Request(emulator.base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(call) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def google_error(status: int, body: dict[str, Any], code: int, status_name: str) -> str:
    assert status == code
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "status"}
    assert body["error"]["code"] == code
    assert body["error"]["status"] == status_name
    message: str = body["error"]["message"]
    assert message
    return message


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def strict_operation(raw: dict[str, Any]) -> dict[str, Any]:
    """Check a raw batch (an Operation) key by key, then convert it as the SDK does."""
    assert set(raw) <= {"name", "metadata", "done", "response", "error"}
    assert re.fullmatch(r"batches/[a-z0-9-]+", raw["name"])
    meta = raw["metadata"]
    assert METADATA_REQUIRED <= set(meta) <= METADATA_KEYS
    assert meta["@type"].endswith("google.ai.generativelanguage.v1beta.GenerateContentBatch")
    assert meta["name"] == raw["name"]
    assert meta["model"].startswith("models/")
    assert re.fullmatch(r"files/[a-z0-9]+", meta["inputConfig"]["fileName"])
    assert meta["state"] in BATCH_STATES
    created = parse_time(meta["createTime"])
    assert parse_time(meta["updateTime"]) >= created
    stats = meta["batchStats"]
    assert "requestCount" in stats
    assert set(stats) <= STATS_KEYS
    assert all((isinstance(v, str) and v.isdigit() and v != "0") or k == "requestCount" for k, v in stats.items())
    counts = {k: int(stats.get(k, "0")) for k in STATS_KEYS}
    if meta["state"] != "BATCH_STATE_FAILED":
        assert counts["requestCount"] == sum(counts[k] for k in STATS_KEYS - {"requestCount"})
    if meta["state"] in TERMINAL:
        assert raw["done"] is True
        assert parse_time(meta["endTime"]) >= created
        if meta["state"] == "BATCH_STATE_FAILED":
            assert "response" not in raw
            assert set(raw["error"]) == {"code", "message"}
            assert "output" not in meta
        else:
            assert "error" not in raw
            assert raw["response"]["@type"].endswith("GenerateContentBatchOutput")
            assert raw["response"].get("responsesFile") == meta.get("output", {}).get("responsesFile")
    else:
        assert "done" not in raw
        assert "response" not in raw
        assert "error" not in raw
        assert "endTime" not in meta
        assert "output" not in meta
    job = types.BatchJob._from_response(response=_BatchJob_from_mldev(raw), kwargs={})
    assert job.name == raw["name"]
    assert job.state is not None
    assert job.state.value == meta["state"].replace("BATCH_STATE_", "JOB_STATE_")
    assert job.create_time is not None
    assert job.update_time is not None
    assert job.display_name == meta["displayName"]
    if "output" in meta:
        assert job.dest is not None
        assert job.dest.file_name == meta["output"]["responsesFile"]
    return raw


def get(emulator: ProviderEmulator, name: str) -> dict[str, Any]:
    status, body = http(emulator, "GET", f"/v1beta/{name}")
    assert status == 200, body
    return strict_operation(body)


def stats(raw: dict[str, Any]) -> dict[str, int]:
    given = raw["metadata"]["batchStats"]
    return {k: int(given.get(k, "0")) for k in STATS_KEYS}


def output(client: genai.Client, file_name: str) -> list[dict[str, Any]]:
    file = client.files.get(name=file_name)
    assert file.source == types.FileSource.GENERATED
    assert file.download_uri is not None
    data = client.files.download(file=file_name)
    assert data.endswith(b"\n")
    lines = [json.loads(raw) for raw in data.splitlines()]
    assert all(raw for raw in data.splitlines())
    for item in lines:
        assert isinstance(item["key"], str)
        if "response" in item:
            assert set(item) == {"key", "response"}
            # Strict: the SDK's types forbid unknown fields.
            types.GenerateContentResponse.model_validate(item["response"])
        else:
            assert set(item) == {"key", "error"}
            assert set(item["error"]) == {"code", "message"}
            assert item["error"]["code"] in (3, 13)
    assert len({item["key"] for item in lines}) == len(lines)
    return lines


# -- the life of a batch ----------------------------------------------------------------------------


def test_batch_runs_through_its_states_and_returns_every_result(
    emulator: ProviderEmulator, client: genai.Client, clock: FakeClock
) -> None:
    # Given 12 requests, one with a system instruction and one with a small output cap
    lines = [line(f"req-{i}", f"question {i}") for i in range(10)]
    lines.append(line("with-system", "hello", systemInstruction={"parts": [{"text": "Be brief."}]}))
    lines.append(line("capped", "x" * 100, generationConfig={"maxOutputTokens": 3}))
    name = create(client, lines, display_name="my batch")

    # When the clock runs, it is pending, then running with growing counts, then succeeded
    assert get(emulator, name)["metadata"]["state"] == "BATCH_STATE_PENDING"
    clock.advance(30)
    running = get(emulator, name)
    assert running["metadata"]["state"] == "BATCH_STATE_RUNNING"
    assert client.batches.get(name=name).state == types.JobState.JOB_STATE_RUNNING
    assert 0 < stats(running)["successfulRequestCount"] < 12
    clock.advance(70)
    ended = get(emulator, name)
    assert ended["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert stats(ended) == {
        "requestCount": 12,
        "successfulRequestCount": 12,
        "failedRequestCount": 0,
        "pendingRequestCount": 0,
    }
    job = client.batches.get(name=name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.end_time is not None
    assert job.end_time.timestamp() == START + LATENCY
    assert job.dest is not None
    assert job.dest.file_name is not None

    # Then every request has a response line, not in input order, echoing the question with its usage
    results = output(client, job.dest.file_name)
    keys = [item["key"] for item in results]
    assert sorted(keys) == sorted(item["key"] for item in lines)
    assert keys != [item["key"] for item in lines]
    by_key = {item["key"]: item["response"] for item in results}
    for i in range(10):
        response = by_key[f"req-{i}"]
        text = f"echo: question {i}"
        assert response["candidates"][0]["content"] == {"role": "model", "parts": [{"text": text}]}
        assert response["candidates"][0]["finishReason"] == "STOP"
        assert response["modelVersion"] == MODEL
        usage = response["usageMetadata"]
        assert usage["promptTokenCount"] == _tokens(len(f"question {i}"))
        assert usage["candidatesTokenCount"] == _tokens(len(text))
        assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert by_key["with-system"]["usageMetadata"]["promptTokenCount"] == _tokens(len("hello") + len("Be brief."))
    capped = by_key["capped"]
    assert capped["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert capped["usageMetadata"]["candidatesTokenCount"] == 3
    parsed = types.GenerateContentResponse.model_validate(capped)
    assert parsed.usage_metadata is not None
    assert parsed.usage_metadata.candidates_token_count == 3


def test_files_get_list_delete_and_refuse_downloading_uploads(emulator: ProviderEmulator, client: genai.Client) -> None:
    names = [upload(client, jsonl([line(f"k{i}", "hi")])) for i in range(3)]
    file = client.files.get(name=names[0])
    assert file.name == names[0]
    assert file.display_name == "input"
    assert file.mime_type == "jsonl"
    assert file.state == types.FileState.ACTIVE
    assert file.expiration_time is not None

    listed = client.files.list(config={"page_size": 2})
    assert len(listed.page) == 2
    assert [f.name for f in listed] == list(reversed(names))

    with pytest.raises(errors.ClientError) as refused:
        client.files.download(file=names[0])
    assert refused.value.code == 400

    client.files.delete(name=names[0])
    with pytest.raises(errors.ClientError) as gone:
        client.files.get(name=names[0])
    assert gone.value.code == 403  # as Google: "do not have permission ... or it may not exist"


def test_list_is_newest_first_and_paginates(emulator: ProviderEmulator, client: genai.Client, clock: FakeClock) -> None:
    names = []
    for i in range(5):
        names.append(create(client, [line("a", "hi")], display_name=f"job-{i}"))
        clock.advance(1)

    pager = client.batches.list(config={"page_size": 2})
    assert len(pager.page) == 2
    jobs = list(pager)
    assert [j.name for j in jobs] == list(reversed(names))
    assert [j.display_name for j in jobs] == [f"job-{i}" for i in reversed(range(5))]

    status, first = http(emulator, "GET", "/v1beta/batches?pageSize=2")
    assert status == 200
    assert set(first) == {"operations", "nextPageToken"}
    for operation in first["operations"]:
        strict_operation(operation)
    status, last = http(emulator, "GET", f"/v1beta/batches?pageSize=4&pageToken={first['nextPageToken']}")
    assert status == 200
    assert set(last) == {"operations"}
    assert [o["name"] for o in last["operations"]] == list(reversed(names))[2:]
    status, body = http(emulator, "GET", "/v1beta/batches?pageToken=nope")
    google_error(status, body, 400, "INVALID_ARGUMENT")

    # A deleted batch is gone from get and list (deleting does not cancel it)
    client.batches.delete(name=names[0])
    assert names[0] not in [j.name for j in client.batches.list()]
    status, body = http(emulator, "GET", f"/v1beta/{names[0]}")
    google_error(status, body, 404, "NOT_FOUND")


def test_cancel_keeps_the_results_that_finished(
    emulator: ProviderEmulator, client: genai.Client, clock: FakeClock
) -> None:
    name = create(client, [line(f"r{i}", f"q{i}") for i in range(20)])
    clock.advance(50)
    finished = stats(get(emulator, name))["successfulRequestCount"]
    assert 0 < finished < 20

    client.batches.cancel(name=name)
    clock.advance(10)
    job = client.batches.get(name=name)
    assert job.state == types.JobState.JOB_STATE_CANCELLED
    raw = get(emulator, name)
    assert stats(raw)["successfulRequestCount"] == finished
    assert stats(raw)["pendingRequestCount"] == 20 - finished
    assert job.dest is not None
    assert job.dest.file_name
    assert len(output(client, job.dest.file_name)) == finished

    # Cancelling again changes nothing; cancelling a batch that has ended otherwise is refused
    client.batches.cancel(name=name)
    assert get(emulator, name)["metadata"]["state"] == "BATCH_STATE_CANCELLED"
    done = create(client, [line("a", "hi")])
    clock.advance(LATENCY)
    status, body = http(emulator, "POST", f"/v1beta/{done}:cancel", {})
    google_error(status, body, 400, "INVALID_ARGUMENT")
    # A batch cancelled before anything ran has no responses file
    early = create(client, [line("a", "hi")])
    client.batches.cancel(name=early)
    cancelled = get(emulator, early)
    assert cancelled["metadata"]["state"] == "BATCH_STATE_CANCELLED"
    assert "output" not in cancelled["metadata"]
    assert "responsesFile" not in cancelled["response"]


def test_failure_rate_gives_request_errors(emulator: ProviderEmulator, client: genai.Client, clock: FakeClock) -> None:
    emulator.knobs = EmulatorKnobs(latency=LATENCY, failure_rate=0.5, seed=7)
    lines = [line(f"r{i}", f"q{i}") for i in range(30)]
    lines.append({"key": "no-contents", "request": {"contents": []}})
    name = create(client, lines)
    clock.advance(LATENCY)
    raw = get(emulator, name)
    assert raw["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    results = output(client, raw["metadata"]["output"]["responsesFile"])
    failed = [item for item in results if "error" in item]
    assert {item["error"]["code"] for item in failed} == {3, 13}
    assert len(failed) == stats(raw)["failedRequestCount"]
    assert len(results) - len(failed) == stats(raw)["successfulRequestCount"]
    # A request Gemini would refuse is refused whatever the draw
    refused = next(item for item in results if item["key"] == "no-contents")
    assert refused["error"]["code"] == 3
    assert "contents" in refused["error"]["message"]


def test_expired_batch_keeps_partial_results(
    emulator: ProviderEmulator, client: genai.Client, clock: FakeClock
) -> None:
    emulator.knobs = EmulatorKnobs(latency=LATENCY, expire_rate=1.0, seed=7)
    name = create(client, [line(f"r{i}", f"q{i}") for i in range(20)])
    clock.advance(LATENCY)
    raw = get(emulator, name)
    assert raw["metadata"]["state"] == "BATCH_STATE_EXPIRED"
    assert client.batches.get(name=name).state == types.JobState.JOB_STATE_EXPIRED
    counts = stats(raw)
    assert 0 < counts["successfulRequestCount"] < 20
    assert counts["pendingRequestCount"] == 20 - counts["successfulRequestCount"]
    assert len(output(client, raw["metadata"]["output"]["responsesFile"])) == counts["successfulRequestCount"]


def test_bad_input_fails_the_batch(emulator: ProviderEmulator, client: genai.Client, clock: FakeClock) -> None:
    data = jsonl([line("good", "hi")]) + b"{not json\n" + jsonl([{"request": {"contents": []}}])
    job = client.batches.create(model=MODEL, src=upload(client, data), config={"display_name": "bad"})
    assert job.name is not None
    clock.advance(LATENCY * 0.1)
    raw = get(emulator, job.name)
    assert raw["metadata"]["state"] == "BATCH_STATE_FAILED"
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_FAILED
    message = raw["error"]["message"]
    assert "line 2" in message
    assert "line 3" in message
    assert "key" in message

    unknown = create(client, [line("a", "hi")], model="no-such-model")
    clock.advance(LATENCY * 0.1)
    raw = get(emulator, unknown)
    assert raw["metadata"]["state"] == "BATCH_STATE_FAILED"
    assert "models/no-such-model is not found" in raw["error"]["message"]


def test_create_refuses_what_gemini_refuses(emulator: ProviderEmulator, client: genai.Client) -> None:
    file = upload(client, jsonl([line("a", "hi")]))
    path = f"/v1beta/models/{MODEL}:batchGenerateContent"
    cases = [
        ({"batch": {"inputConfig": {"fileName": file}}}, 400, "INVALID_ARGUMENT"),
        ({"batch": {"displayName": "x" * 129, "inputConfig": {"fileName": file}}}, 400, "INVALID_ARGUMENT"),
        ({"batch": {"displayName": "d", "inputConfig": {"requests": {"requests": []}}}}, 400, "INVALID_ARGUMENT"),
        ({"batch": {"displayName": "d", "inputConfig": {"fileName": "files/nope"}}}, 403, "PERMISSION_DENIED"),
    ]
    for body, code, status_name in cases:
        status, answer = http(emulator, "POST", path, body)
        google_error(status, answer, code, status_name)
    assert emulator.stats()["batches_created"]["gemini"] == 0


def test_a_missing_api_key_is_refused_in_googles_shape(emulator: ProviderEmulator) -> None:
    status, body = http(emulator, "GET", "/v1beta/batches", key=None)
    assert "API Key" in google_error(status, body, 403, "PERMISSION_DENIED")
    status, _ = http(emulator, "GET", "/v1beta/batches?key=k", key=None)
    assert status == 200
    status, body = http(emulator, "GET", "/v1beta/nothing/here")
    google_error(status, body, 404, "NOT_FOUND")


def test_transient_errors_are_retried_by_the_sdk(
    emulator: ProviderEmulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK's own pause between retries of an upload chunk (1 s), shortened for the test
    monkeypatch.setattr(_api_client, "INITIAL_RETRY_DELAY", 0.001)
    emulator.knobs = EmulatorKnobs(latency=0, transient_error_rate=0.3, seed=8)
    bare = make_client(emulator, attempts=1)
    failures = []
    for _ in range(20):
        try:
            bare.batches.list()
        except errors.APIError as exc:
            failures.append(exc)
    assert {exc.code for exc in failures} == {429, 500}
    assert {exc.status for exc in failures} == {"RESOURCE_EXHAUSTED", "INTERNAL"}

    patient = make_client(emulator, attempts=10)
    for i in range(3):
        name = create(patient, [line("a", "hi"), line("b", "ho")], display_name=f"t{i}")
        job = patient.batches.get(name=name)
        assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert len(list(patient.batches.list(config={"page_size": 1}))) == 3


def test_stats_record_gemini_batches(emulator: ProviderEmulator, client: genai.Client) -> None:
    create(client, [line("a", "hi"), line("b", "ho")], display_name="counted")
    stats_ = emulator.stats()
    assert stats_["batches_created"]["gemini"] == 1
    assert stats_["batches"][-1]["custom_ids"] == ["a", "b"]
    assert stats_["batches"][-1]["metadata"] == {"displayName": "counted"}


def test_same_seed_same_submissions_same_outcomes(clock: FakeClock) -> None:
    def run() -> list[dict[str, Any]]:
        with ProviderEmulator(EmulatorKnobs(latency=10, failure_rate=0.4, seed=5), clock=FakeClock()) as emu:
            c = make_client(emu)
            name = create(c, [line(f"r{i}", f"q{i}") for i in range(10)])
            emu.clock.advance(10)  # type: ignore[attr-defined]
            job = c.batches.get(name=name)
            assert job.dest is not None
            assert job.dest.file_name
            return output(c, job.dest.file_name)

    assert run() == run()


# -- GeminiProvider against the emulator ------------------------------------------------------------


def settings(emulator: ProviderEmulator) -> ProviderSettings:
    return ProviderSettings(name="gemini", limits=PROVIDER_MAXIMA["gemini"], base_url=emulator.base_url)


def ref(key: str = "gemini-0001", requests: int = 3, intent_at: float = START) -> BatchRef:
    return BatchRef(
        job_id="job-0123456789abcdef0123", key=key, group=MODEL, model=MODEL, requests=requests, intent_at=intent_at
    )


def batch_file(tmp_path: Path, lines: list[dict[str, Any]]) -> str:
    path = tmp_path / "batch.jsonl"
    path.write_bytes(jsonl(lines))
    return str(path)


@pytest.fixture
def provider(emulator: ProviderEmulator, monkeypatch: pytest.MonkeyPatch) -> GeminiProvider:
    # The provider builds its own client: key from the environment, base URL from the settings.
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    return GeminiProvider(settings(emulator))


def test_provider_runs_a_batch_end_to_end(
    emulator: ProviderEmulator, provider: GeminiProvider, clock: FakeClock, tmp_path: Path
) -> None:
    emulator.knobs = EmulatorKnobs(latency=LATENCY, failure_rate=0.5, seed=11)
    lines = [line(f"r{i}", f"q{i}") for i in range(12)]
    batch_id = provider.create(ref(requests=12), batch_file(tmp_path, lines))
    assert batch_id.startswith("batches/")
    raw = get(emulator, batch_id)
    assert raw["metadata"]["displayName"] == "batchdrop-job-0123456789abcdef0123-gemini-0001"
    assert raw["metadata"]["model"] == f"models/{MODEL}"

    status = provider.status(batch_id)
    assert (status.state, status.provider_status) == (m.VALIDATING, "JOB_STATE_PENDING")
    assert (status.total, status.done, status.failed) == (12, 0, 0)
    assert not status.terminal
    clock.advance(50)
    status = provider.status(batch_id)
    assert (status.state, status.provider_status) == (m.IN_PROGRESS, "JOB_STATE_RUNNING")
    assert status.total == 12
    assert status.done is not None
    assert 0 < status.done < 12
    clock.advance(50)
    status = provider.status(batch_id)
    assert (status.state, status.provider_status) == (m.COMPLETED, "JOB_STATE_SUCCEEDED")
    assert status.terminal
    assert status.error is None
    assert status.total == status.done == 12
    assert status.raw["responses_file"].startswith("files/")

    outcomes = list(provider.outcomes(batch_id, status))
    assert sorted(o.custom_id for o in outcomes) == sorted(item["key"] for item in lines)
    ok = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == status.failed
    assert ok
    assert failed
    for outcome in ok:
        assert outcome.response is not None
        types.GenerateContentResponse.model_validate(outcome.response)
        assert outcome.response["candidates"][0]["content"]["parts"][0]["text"] == f"echo: q{outcome.custom_id[1:]}"
    assert {o.code for o in failed} == {m.REQUEST_ERROR, m.SERVER_ERROR}
    for outcome in failed:
        assert outcome.message
        assert outcome.detail["key"] == outcome.custom_id
        assert outcome.code == (m.SERVER_ERROR if outcome.detail["error"]["code"] == 13 else m.REQUEST_ERROR)


def test_provider_status_for_each_end(
    emulator: ProviderEmulator, provider: GeminiProvider, clock: FakeClock, tmp_path: Path
) -> None:
    path = batch_file(tmp_path, [line(f"r{i}", f"q{i}") for i in range(10)])

    # Cancelled: the finished requests have outcomes; the rest are left to the caller
    cancelled = provider.create(ref("c"), path)
    clock.advance(50)
    provider.cancel(cancelled)
    status = provider.status(cancelled)
    assert (status.state, status.provider_status) == (m.BATCH_CANCELED, "JOB_STATE_CANCELLED")
    assert status.total == 10
    assert status.done is not None
    assert 0 < status.done < 10
    assert len(list(provider.outcomes(cancelled, status))) == status.done

    # Expired, with partial results
    emulator.knobs = EmulatorKnobs(latency=LATENCY, expire_rate=1.0, seed=7)
    expired = provider.create(ref("e"), path)
    clock.advance(LATENCY)
    status = provider.status(expired)
    assert (status.state, status.provider_status) == (m.BATCH_EXPIRED, "JOB_STATE_EXPIRED")
    assert all(o.ok for o in provider.outcomes(expired, status))
    assert len(list(provider.outcomes(expired, status))) == status.done

    # Failed: the batch's own reason, and no outcomes
    emulator.knobs = EmulatorKnobs(latency=LATENCY, seed=7)
    failed = provider.create(ref("f"), batch_file(tmp_path, [{"request": {}}]))
    clock.advance(LATENCY)
    status = provider.status(failed)
    assert (status.state, status.provider_status) == (m.FAILED, "JOB_STATE_FAILED")
    assert status.error is not None
    assert "line 1" in status.error
    assert "key" in status.error
    assert list(provider.outcomes(failed, status)) == []


def test_provider_finds_its_batch_by_display_name(
    emulator: ProviderEmulator, provider: GeminiProvider, clock: FakeClock, tmp_path: Path
) -> None:
    path = batch_file(tmp_path, [line("a", "hi")])
    assert provider.find(ref(), frozenset()) is None
    first = provider.create(ref(), path)
    provider.create(ref("gemini-0002"), path)
    clock.advance(10)
    second = provider.create(ref(), path)  # the same batch sent twice
    for _ in range(3):
        provider.create(ref("other"), path)

    assert provider.find(ref(), frozenset()) == second  # newest first
    assert provider.find(ref(), frozenset({second})) == first
    assert provider.find(ref(), frozenset({first, second})) is None
    # A batch created well before our intent is not ours
    assert provider.find(ref(intent_at=START + 10_000), frozenset()) is None


def test_display_names_stay_within_the_limit() -> None:
    short = ref()
    assert batch_display_name(short) == "batchdrop-job-0123456789abcdef0123-gemini-0001"
    long_a = ref("a" * 200)
    long_b = ref("a" * 199 + "b")
    assert len(batch_display_name(long_a)) == 128
    assert batch_display_name(long_a) == batch_display_name(long_a)
    assert batch_display_name(long_a) != batch_display_name(long_b)


def test_provider_survives_transient_errors(
    emulator: ProviderEmulator,
    clock: FakeClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="batchdrop.providers.gemini.client")
    monkeypatch.setattr(_api_client, "INITIAL_RETRY_DELAY", 0.001)
    emulator.knobs = EmulatorKnobs(latency=0, transient_error_rate=0.3, seed=8)
    provider = GeminiProvider(settings(emulator), client=make_client(emulator, attempts=10))
    provider.retry_initial_delay = 0.001
    path = batch_file(tmp_path, [line(f"r{i}", f"q{i}") for i in range(5)])
    for i in range(3):
        # A failed create is not retried by the SDK (it might have made the batch): the pipeline looks
        # for the batch, then creates again, as batches.send_batch does.
        batch_id = None
        while batch_id is None:
            try:
                batch_id = provider.find(ref(f"t{i}", requests=5), frozenset()) or provider.create(
                    ref(f"t{i}", requests=5), path
                )
            except errors.APIError:
                continue
        status = provider.status(batch_id)
        assert status.state == m.COMPLETED
        outcomes = list(provider.outcomes(batch_id, status))
        assert sorted(o.custom_id for o in outcomes) == [f"r{i}" for i in range(5)]
        assert all(o.ok for o in outcomes)
    # Each run makes 5 calls (upload start and data, create, get, download); the rest were retries
    assert emulator.counters["transient"] > 3 * 5
    # and some were ours: the SDK does not retry a download
    assert any("retrying a Gemini call" in r.message for r in caplog.records)
    # and however often a create failed, each batch was made once
    assert emulator.stats()["batches_created"]["gemini"] == 3
