"""The provider emulator, driven over HTTP by the official openai SDK.

The SDK does not validate what it parses, so every batch is also fetched raw and checked strictly with
the SDK's pydantic types, plus the keys the state requires.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from openai.types import Batch, Completion, CreateEmbeddingResponse, FileObject, ModerationCreateResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response as ResponsesResponse
from pydantic import BaseModel

from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator, serve_forever
from tests.helpers import LATENCY, START, FakeClock

MODEL = "gpt-4o-mini"

BATCH_KEYS = (
    "id",
    "object",
    "endpoint",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "usage",
    "metadata",
)
# Which keys must be non-null in which status.
NON_NULL_BY_STATUS: dict[str, tuple[str, ...]] = {
    "validating": (),
    "in_progress": ("in_progress_at",),
    "finalizing": ("in_progress_at", "finalizing_at"),
    "completed": ("in_progress_at", "finalizing_at", "completed_at", "usage"),
    "failed": ("failed_at", "errors"),
    "expired": ("in_progress_at", "expired_at", "usage"),
    "cancelling": ("cancelling_at",),
    "cancelled": ("cancelling_at", "cancelled_at", "usage"),
}
ALWAYS_NON_NULL = (
    *("id", "object", "endpoint", "input_file_id", "completion_window", "status"),
    *("created_at", "expires_at", "request_counts"),
)


@pytest.fixture
def client(emulator: ProviderEmulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.openai_base_url, api_key="test", max_retries=0)


# -- helpers ----------------------------------------------------------------------------------------


def chat_line(custom_id: str, text: str, model: str = MODEL, **body: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": messages, **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, str) else json.dumps(line)).encode() + b"\n" for line in lines)


def upload(client: openai.OpenAI, lines: list[Any]) -> str:
    return client.files.create(file=("input.jsonl", jsonl(lines), "application/jsonl"), purpose="batch").id


def create_batch(
    client: openai.OpenAI,
    lines: list[Any],
    endpoint: str = "/v1/chat/completions",
    metadata: dict[str, str] | None = None,
) -> str:
    file_id = upload(client, lines)
    raw = client.batches.with_raw_response.create(
        input_file_id=file_id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata=metadata,
    )
    created = strict_batch(raw.http_response.json())
    assert created["status"] == "validating"
    return str(created["id"])


def strict_batch(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a raw batch with the SDK type, and check the keys its status requires."""
    Batch.model_validate(raw)
    missing = [key for key in BATCH_KEYS if key not in raw]
    assert not missing, f"missing keys {missing}"
    required = ALWAYS_NON_NULL + NON_NULL_BY_STATUS[raw["status"]]
    nulls = [key for key in required if raw[key] is None]
    assert not nulls, f"null in status {raw['status']}: {nulls}"
    assert raw["object"] == "batch"
    assert raw["completion_window"] == "24h"
    assert raw["expires_at"] == raw["created_at"] + 24 * 3600
    counts = raw["request_counts"]
    assert counts["completed"] + counts["failed"] <= counts["total"]
    return raw


def retrieve(client: openai.OpenAI, batch_id: str) -> dict[str, Any]:
    return strict_batch(client.batches.with_raw_response.retrieve(batch_id).http_response.json())


def read_file(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    with client.files.with_streaming_response.content(file_id) as response:
        return [json.loads(line) for line in response.iter_lines() if line]


def output_and_errors(
    client: openai.OpenAI, batch: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    output = read_file(client, batch["output_file_id"]) if batch["output_file_id"] else []
    errors = read_file(client, batch["error_file_id"]) if batch["error_file_id"] else []
    for line in output + errors:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_")
    return output, errors


# -- files ------------------------------------------------------------------------------------------


def test_upload_retrieve_and_stream_a_file(client: openai.OpenAI) -> None:
    # Given a JSONL file
    data = jsonl([chat_line(f"r{i}", "hello " * 50) for i in range(2000)])

    # When it is uploaded and read back
    raw = client.files.with_raw_response.create(file=("in.jsonl", data, "application/jsonl"), purpose="batch")
    file = FileObject.model_validate(raw.http_response.json())
    retrieved = client.files.retrieve(file.id)
    with client.files.with_streaming_response.content(file.id) as response:
        streamed = b"".join(response.iter_bytes())

    # Then the file object describes it and the content round-trips
    assert file.id.startswith("file-")
    assert (file.object, file.purpose, file.status, file.filename) == (
        "file",
        "batch",
        "processed",
        "in.jsonl",
    )
    assert file.bytes == len(data) == retrieved.bytes
    assert streamed == data


def test_unknown_file_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")


# -- the life of a batch ----------------------------------------------------------------------------


def test_chat_batch_goes_through_every_status(client: openai.OpenAI, clock: FakeClock) -> None:
    # Given a batch of 30 chat requests with metadata
    lines = [chat_line(f"req-{i}", f"question number {i}") for i in range(30)]
    batch_id = create_batch(client, lines, metadata={"job_id": "job-1", "attempt": "1"})

    # When the clock advances through the latency, the status follows the phases
    seen = []
    completed_counts = []
    for seconds in (5, 10, 40, 30, 5, 5, 4, 1):  # at 5, 15, 55, 85, 90, 95, 99, 100 s
        clock.advance(seconds)
        batch = retrieve(client, batch_id)
        seen.append(batch["status"])
        completed_counts.append(batch["request_counts"]["completed"])
        assert batch["metadata"] == {"job_id": "job-1", "attempt": "1"}
        assert batch["output_file_id"] is None or batch["status"] == "completed"
    assert seen == [
        "validating",
        "in_progress",
        "in_progress",
        "in_progress",
        "finalizing",
        "finalizing",
        "finalizing",
        "completed",
    ]
    # Then the request counts grow as requests finish, and are full once finalizing
    assert completed_counts == sorted(completed_counts)
    assert 0 < completed_counts[2] < 30
    assert completed_counts[-1] == 30
    # And the timestamps follow the phases
    assert batch["created_at"] == int(START)
    assert batch["in_progress_at"] == int(START + 10)
    assert batch["finalizing_at"] == int(START + 90)
    assert batch["completed_at"] == int(START + 100)
    assert batch["request_counts"] == {"total": 30, "completed": 30, "failed": 0}
    assert batch["error_file_id"] is None
    assert batch["model"] == MODEL

    # And the output holds one valid chat completion per request
    output, errors = output_and_errors(client, batch)
    assert errors == []
    assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in lines)
    input_tokens = output_tokens = 0
    for line in output:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"]
        completion = ChatCompletion.model_validate(line["response"]["body"])
        number = line["custom_id"].split("-")[1]
        assert completion.choices[0].message.content == f"echo: question number {number}"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.model == MODEL
        assert completion.usage is not None
        input_tokens += completion.usage.prompt_tokens
        output_tokens += completion.usage.completion_tokens
    # And the batch usage is the sum of the requests' usage
    assert batch["usage"]["input_tokens"] == input_tokens
    assert batch["usage"]["output_tokens"] == output_tokens
    assert batch["usage"]["total_tokens"] == input_tokens + output_tokens


def test_zero_latency_batch_has_ended_on_first_retrieve(emulator: ProviderEmulator, client: openai.OpenAI) -> None:
    emulator.knobs = EmulatorKnobs(latency=0)
    batch_id = create_batch(client, [chat_line("a", "hi")])
    batch = retrieve(client, batch_id)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    # and the SDK reads it the same way
    assert client.batches.retrieve(batch_id).status == "completed"


def test_max_tokens_caps_the_reply(emulator: ProviderEmulator, client: openai.OpenAI) -> None:
    emulator.knobs = EmulatorKnobs(latency=0)
    batch_id = create_batch(client, [chat_line("a", "a long question " * 20, max_completion_tokens=3)])
    output, _ = output_and_errors(client, retrieve(client, batch_id))
    completion = ChatCompletion.model_validate(output[0]["response"]["body"])
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


ENDPOINT_CASES: list[tuple[str, dict[str, Any], type[BaseModel]]] = [
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        ChatCompletion,
    ),
    (
        "/v1/responses",
        {"model": MODEL, "input": [{"role": "user", "content": "hi"}], "instructions": "Be brief."},
        ResponsesResponse,
    ),
    ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 1}, ResponsesResponse),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["one", "two"]}, CreateEmbeddingResponse),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 5}, Completion),
    ("/v1/moderations", {"model": "omni-moderation-latest", "input": "hi"}, ModerationCreateResponse),
]


@pytest.mark.parametrize(("endpoint", "body", "model_type"), ENDPOINT_CASES)
def test_every_endpoint_answers_with_its_sdk_type(
    emulator: ProviderEmulator,
    client: openai.OpenAI,
    endpoint: str,
    body: dict[str, Any],
    model_type: type[BaseModel],
) -> None:
    emulator.knobs = EmulatorKnobs(latency=0)
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": endpoint, "body": body} for i in range(3)]
    batch = retrieve(client, create_batch(client, lines, endpoint=endpoint))
    assert batch["status"] == "completed"
    assert batch["endpoint"] == endpoint
    output, errors = output_and_errors(client, batch)
    assert errors == []
    assert len(output) == 3
    for line in output:
        model_type.model_validate(line["response"]["body"])
    body_out = output[0]["response"]["body"]
    if endpoint == "/v1/embeddings":
        assert len(body_out["data"]) == 2
        assert all(isinstance(x, float) for x in body_out["data"][0]["embedding"])
    if endpoint == "/v1/responses":
        text = body_out["output"][0]["content"][0]["text"]
        assert text.startswith("echo")
        if "max_output_tokens" in body:
            assert body_out["status"] == "incomplete"
            assert body_out["usage"]["output_tokens"] == 1


# -- listing ----------------------------------------------------------------------------------------


def test_list_is_newest_first_and_paginates(client: openai.OpenAI, clock: FakeClock) -> None:
    ids = []
    for i in range(5):
        ids.append(create_batch(client, [chat_line("a", "hi")], metadata={"n": str(i)}))
        clock.advance(1)

    raw = client.batches.with_raw_response.list(limit=2).http_response.json()
    assert set(raw) >= {"object", "data", "first_id", "last_id", "has_more"}
    assert raw["object"] == "list"
    assert [b["id"] for b in raw["data"]] == ids[::-1][:2]
    assert raw["first_id"] == ids[4]
    assert raw["last_id"] == ids[3]
    assert raw["has_more"] is True
    for batch in raw["data"]:
        strict_batch(batch)

    # The SDK's auto-pagination walks every page with `after`
    assert [batch.id for batch in client.batches.list(limit=2)] == ids[::-1]
    last = client.batches.list(limit=2, after=ids[1])
    assert [b.id for b in last.data] == [ids[0]]
    assert last.has_more is False


# -- cancel, expire, fail ---------------------------------------------------------------------------


def test_cancel_keeps_finished_work_and_cancels_the_rest(client: openai.OpenAI, clock: FakeClock) -> None:
    # Given a batch half way through
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(40)]
    batch_id = create_batch(client, lines)
    clock.advance(50)
    before = retrieve(client, batch_id)
    assert before["status"] == "in_progress"
    done_before = before["request_counts"]["completed"]
    assert 0 < done_before < 40

    # When it is cancelled
    cancelling = strict_batch(client.batches.with_raw_response.cancel(batch_id).http_response.json())
    clock.advance(1)
    cancelled = retrieve(client, batch_id)

    # Then it is cancelling, then cancelled
    assert cancelling["status"] == "cancelling"
    assert cancelling["cancelling_at"] == int(START + 50)
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelled_at"] == int(START + 51)
    assert cancelled["completed_at"] is None
    # And finished requests are in the output, the rest cancelled in the error file
    output, errors = output_and_errors(client, cancelled)
    assert len(output) == done_before == cancelled["request_counts"]["completed"]
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert all(line["response"] is None for line in errors)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"r{i}" for i in range(40))
    # And cancelling again is harmless, while an ended batch cannot be cancelled
    assert client.batches.cancel(batch_id).status == "cancelled"


def test_cannot_cancel_a_completed_batch(emulator: ProviderEmulator, client: openai.OpenAI) -> None:
    emulator.knobs = EmulatorKnobs(latency=0)
    batch_id = create_batch(client, [chat_line("a", "hi")])
    assert retrieve(client, batch_id)["status"] == "completed"
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch_id)


def test_expired_batch_returns_early_requests_and_expires_the_rest(
    emulator: ProviderEmulator, client: openai.OpenAI, clock: FakeClock
) -> None:
    emulator.knobs = EmulatorKnobs(latency=LATENCY, expire_rate=1.0, seed=3)
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(40)]
    batch_id = create_batch(client, lines)
    clock.advance(95)
    assert retrieve(client, batch_id)["status"] == "in_progress"
    clock.advance(10)
    batch = retrieve(client, batch_id)
    assert batch["status"] == "expired"
    assert batch["expired_at"] == int(START + LATENCY)
    assert batch["completed_at"] is None
    output, errors = output_and_errors(client, batch)
    assert 0 < len(output) < 40
    assert len(errors) == 40 - len(output)
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert batch["request_counts"]["completed"] == len(output)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"r{i}" for i in range(40))


def test_invalid_input_file_fails_the_batch_with_line_errors(client: openai.OpenAI, clock: FakeClock) -> None:
    # Given a file with one problem per line (line 3 is blank and skipped)
    lines: list[Any] = [
        chat_line("ok-1", "hi"),
        "{not json",
        "",
        {"method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL, "messages": []}},
        {**chat_line("get", "hi"), "method": "GET"},
        {**chat_line("wrong-url", "hi"), "url": "/v1/embeddings"},
        chat_line("other-model", "hi", model="gpt-4o"),
        chat_line("ok-1", "again"),
    ]
    # When a batch is created, creation itself succeeds
    batch_id = create_batch(client, lines)
    assert retrieve(client, batch_id)["status"] == "validating"

    # Then it fails while validating, with a line-level reason for each problem
    clock.advance(LATENCY * 0.1)
    batch = retrieve(client, batch_id)
    assert batch["status"] == "failed"
    assert batch["failed_at"] == int(START + 10)
    assert batch["in_progress_at"] is None
    assert (batch["output_file_id"], batch["error_file_id"]) == (None, None)
    assert batch["errors"]["object"] == "list"
    reasons = [(e["line"], e["code"], e["param"]) for e in batch["errors"]["data"]]
    assert reasons == [
        (2, "invalid_json_line", None),
        (4, "missing_required_parameter", "custom_id"),
        (5, "invalid_value", "method"),
        (6, "url_mismatch", "url"),
        (7, "model_mismatch", "body.model"),
        (8, "duplicate_custom_id", "custom_id"),
    ]
    assert all(e["message"] for e in batch["errors"]["data"])
    sdk_batch = client.batches.retrieve(batch_id)
    assert sdk_batch.errors is not None
    assert sdk_batch.errors.data is not None
    assert sdk_batch.errors.data[0].code == "invalid_json_line"


def test_too_many_requests_and_empty_files_fail_the_batch(emulator: ProviderEmulator, client: openai.OpenAI) -> None:
    emulator.knobs = EmulatorKnobs(latency=0)
    emulator.openai.max_requests = 5
    too_many = retrieve(client, create_batch(client, [chat_line(f"r{i}", "hi") for i in range(6)]))
    empty = retrieve(client, create_batch(client, ["", "  "]))
    assert too_many["status"] == empty["status"] == "failed"
    assert [e["code"] for e in too_many["errors"]["data"]] == ["too_many_tasks"]
    assert [e["code"] for e in empty["errors"]["data"]] == ["empty_file"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        {"metadata": {"k" * 65: "v"}},
        {"metadata": {"k": "v" * 513}},
        {"completion_window": "48h"},
        {"endpoint": "/v1/images/generations"},
        {"input_file_id": "file-missing"},
    ],
)
def test_create_rejects_invalid_parameters(client: openai.OpenAI, kwargs: dict[str, Any]) -> None:
    params: dict[str, Any] = {
        "input_file_id": upload(client, [chat_line("a", "hi")]),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **kwargs,
    }
    with pytest.raises(openai.BadRequestError) as raised:
        client.batches.create(**params)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["type"] == "invalid_request_error"


def test_failed_requests_are_in_the_error_file_with_400_or_500(
    emulator: ProviderEmulator, client: openai.OpenAI
) -> None:
    # Given every request fails
    emulator.knobs = EmulatorKnobs(latency=0, failure_rate=1.0, seed=11)
    batch_id = create_batch(client, [chat_line(f"r{i}", "hi") for i in range(40)])
    batch = retrieve(client, batch_id)

    # Then the batch completes with every request in the error file
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 40, "completed": 0, "failed": 40}
    assert batch["output_file_id"] is None
    output, errors = output_and_errors(client, batch)
    assert output == []
    assert len(errors) == 40
    statuses = {line["response"]["status_code"] for line in errors}
    assert statuses == {400, 500}
    for line in errors:
        assert line["error"] is None
        error = line["response"]["body"]["error"]
        expected = "invalid_request_error" if line["response"]["status_code"] == 400 else "server_error"
        assert error["type"] == expected
        assert set(error) == {"message", "type", "param", "code"}


def test_partial_failure_rate_splits_output_and_errors(emulator: ProviderEmulator, client: openai.OpenAI) -> None:
    emulator.knobs = EmulatorKnobs(latency=0, failure_rate=0.5, seed=5)
    batch = retrieve(client, create_batch(client, [chat_line(f"r{i}", "hi") for i in range(100)]))
    output, errors = output_and_errors(client, batch)
    assert 25 < len(errors) < 75
    assert len(output) + len(errors) == 100
    assert batch["request_counts"] == {"total": 100, "completed": len(output), "failed": len(errors)}


# -- transport ----------------------------------------------------------------------------------------


def test_transient_errors_are_retried_by_the_sdk(emulator: ProviderEmulator) -> None:
    emulator.knobs = EmulatorKnobs(latency=0, transient_error_rate=0.4, seed=2)
    bare = openai.OpenAI(base_url=emulator.openai_base_url, api_key="test", max_retries=0)
    failures = []
    for _ in range(20):
        try:
            bare.batches.list()
        except (openai.RateLimitError, openai.InternalServerError) as exc:
            failures.append(exc)
    assert {type(exc) for exc in failures} == {openai.RateLimitError, openai.InternalServerError}
    assert all(exc.response.headers["retry-after-ms"] == "10" for exc in failures)
    assert all(set(exc.response.json()["error"]) == {"message", "type", "param", "code"} for exc in failures)

    # A client that retries gets through every call
    patient = openai.OpenAI(base_url=emulator.openai_base_url, api_key="test", max_retries=20)
    for _ in range(3):
        batch_id = create_batch(patient, [chat_line("a", "hi"), chat_line("b", "ho")])
        batch = strict_batch(patient.batches.with_raw_response.retrieve(batch_id).http_response.json())
        assert batch["status"] == "completed"
        assert len(read_file(patient, batch["output_file_id"])) == 2


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_missing_key_is_a_401_in_openai_shape(emulator: ProviderEmulator) -> None:
    status, body = http_get(f"{emulator.openai_base_url}/batches")
    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert http_get(f"{emulator.openai_base_url}/batches", {"x-api-key": "k"})[0] == 200
    assert http_get(f"{emulator.openai_base_url}/batches", {"Authorization": "Bearer k"})[0] == 200


def test_stats_record_every_submission(emulator: ProviderEmulator, client: openai.OpenAI) -> None:
    create_batch(client, [chat_line("a", "hi"), chat_line("b", "hi")], metadata={"job_id": "j1"})
    create_batch(client, [chat_line("a", "hi")])
    stats = emulator.stats()
    assert {k: v for k, v in stats["batches_created"].items() if v} == {"openai": 2}
    assert stats["requests_submitted"] == {"a": 2, "b": 1}
    first = stats["batches"][0]
    assert first["provider"] == "openai"
    assert first["request_count"] == 2
    assert first["custom_ids"] == ["a", "b"]
    assert first["metadata"] == {"job_id": "j1"}
    assert first["created_at"] == START


def test_serve_forever_serves_until_stopped() -> None:
    # Given the foreground server of `batchdrop emulator`, run on a thread here
    started: list[ProviderEmulator] = []
    ready = threading.Event()

    def on_ready(emulator: ProviderEmulator) -> None:
        started.append(emulator)
        ready.set()

    thread = threading.Thread(target=serve_forever, args=(EmulatorKnobs(),), kwargs={"ready": on_ready})
    thread.start()
    assert ready.wait(5)
    [emulator] = started

    # Then it answers the SDK, and stops when asked
    client = openai.OpenAI(base_url=emulator.openai_base_url, api_key="test", max_retries=0)
    assert client.batches.list().data == []
    emulator.stop()
    thread.join(5)
    assert not thread.is_alive()
