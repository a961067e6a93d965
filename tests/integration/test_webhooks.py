"""OpenAI webhooks: a signed batch event completes the job without waiting for the schedule; an
unsigned or wrongly signed one is refused and logged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from batchdrop import config
from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.config import Settings
from batchdrop.handlers import use_deps
from batchdrop.handlers.webhook import handler
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher, LocalContext
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.pipeline import Deps
from tests.helpers import jsonl, local_stack, openai_line, outputs_of


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=1.0))) as local:
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
        assert stack.emulator.openai.webhooks_sent >= 1
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


# -- what anyone on the internet can send to the public URL ---------------------------------------
# The handler is invoked with the events a Lambda function URL delivers (payload format 2.0); an
# exception would be a function error, the errors alarm, and a 502 to the caller.

PLACEHOLDER = orjson.dumps({"api_key": "", "placeholder": "p" * 32}).decode()  # as the stack creates it
BODY_MARKER = "body-marker-7f3a"


def url_event(
    body: str | None, headers: dict[str, str] | None = None, *, method: str = "POST", base64_encoded: bool = False
) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {"host": "abc.lambda-url.us-east-1.on.aws", **(headers or {})},
        "requestContext": {"http": {"method": method, "path": "/", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9"}},
        **({"body": body} if body is not None else {}),
        "isBase64Encoded": base64_encoded,
    }


def signature_headers(secret: str, body: bytes, at: int | None = None) -> dict[str, str]:
    """What OpenAI sends (Standard Webhooks): HMAC-SHA256 of id.timestamp.body with the decoded secret."""
    timestamp = str(at if at is not None else int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = hmac.new(key, b"evt_test." + timestamp.encode() + b"." + body, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "webhook-id": "evt_test",
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(signed).decode(),
    }


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = handler(event, LocalContext("webhook"))
    return result


def put_webhook_secret(stack: s.LocalStack, value: str) -> None:
    aws.client("secretsmanager").put_secret_value(SecretId=stack.secret_arns["openai-webhook"], SecretString=value)


def event_body(batch_id: str = "batch_somebody_elses", type_: str = "batch.completed") -> bytes:
    return orjson.dumps(
        {"id": "evt_test", "object": "event", "created_at": 1, "type": type_, "data": {"id": batch_id},
         "note": BODY_MARKER}
    )  # fmt: skip


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "webhook refused" in r.getMessage()]


def assert_logged_once_without_secrets_or_body(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    assert len(refusals(caplog)) == 1
    everything = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert BODY_MARKER not in everything
    for secret in secrets:
        assert secret not in everything


@pytest.mark.parametrize("signed", [False, True], ids=["anonymous", "signed-with-the-real-key"])
def test_with_the_placeholder_secret_a_post_is_answered_404_not_failed(
    stack: s.LocalStack, signed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    real = stack.webhook_secret
    put_webhook_secret(stack, PLACEHOLDER)
    body = event_body()
    headers = signature_headers(real, body) if signed else {"content-type": "application/json"}
    dispatcher = Dispatcher(stack)
    url = dispatcher.start_webhooks()
    try:
        with caplog.at_level("WARNING", logger="batchdrop"):
            status = post(url, body, headers)
        assert status == 404
        assert [i.ok for i in dispatcher.invocations] == [True]
        assert_logged_once_without_secrets_or_body(caplog, real, "p" * 32)
    finally:
        dispatcher.close()


def test_without_a_webhook_secret_a_post_is_answered_404(
    stack: s.LocalStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(config.ENV_OPENAI_WEBHOOK_SECRET_ARN)
    monkeypatch.delenv("OPENAI_WEBHOOK_SECRET", raising=False)
    body = event_body()
    with caplog.at_level("WARNING", logger="batchdrop"):
        answer = invoke(url_event(body.decode(), signature_headers(stack.webhook_secret, body)))
    assert answer["statusCode"] == 404
    assert_logged_once_without_secrets_or_body(caplog, stack.webhook_secret)


def test_a_signing_secret_that_is_not_valid_base64_counts_as_not_configured(
    stack: s.LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    put_webhook_secret(stack, "whsec_abc")
    with caplog.at_level("WARNING", logger="batchdrop"):
        answer = invoke(url_event(event_body().decode(), {"content-type": "application/json"}))
    assert answer["statusCode"] == 404
    assert_logged_once_without_secrets_or_body(caplog, "whsec_abc")


def signed_event(stack: s.LocalStack, body: bytes) -> dict[str, Any]:
    return url_event(body.decode(), signature_headers(stack.webhook_secret, body))


# Each case: the event, or how to build it from the stack (for those that must be signed), and the answer.
MALFORMED: dict[str, tuple[Callable[[s.LocalStack], dict[str, Any]], int]] = {
    "get": (lambda st: url_event(None, method="GET"), 405),
    "get-with-a-signed-body": (
        lambda st: {**signed_event(st, event_body()), "requestContext": {"http": {"method": "GET"}}},
        405,
    ),
    "no-body-no-headers": (lambda st: {**url_event(None), "headers": None}, 401),
    "empty-body-with-signature-headers": (
        lambda st: url_event("", signature_headers(st.webhook_secret, event_body())),
        401,
    ),
    "not-json-unsigned": (lambda st: url_event(f"hello {BODY_MARKER}"), 401),
    "missing-one-header": (
        lambda st: url_event(
            event_body().decode(),
            {k: v for k, v in signature_headers(st.webhook_secret, event_body()).items() if k != "webhook-id"},
        ),
        401,
    ),
    "bad-timestamp": (
        lambda st: url_event(
            event_body().decode(), {**signature_headers(st.webhook_secret, event_body()), "webhook-timestamp": "soon"}
        ),
        401,
    ),
    "huge-body": (lambda st: url_event("x" * (6 * 1024 * 1024 - 1)), 413),
    "invalid-base64": (lambda st: url_event("%%% not base64 %%%", base64_encoded=True), 400),
    "base64-of-bytes-that-are-not-utf8": (
        lambda st: url_event(base64.b64encode(b"\xff\xfe\x00" + BODY_MARKER.encode()).decode(), base64_encoded=True),
        400,
    ),
    "base64-of-a-signed-event": (
        lambda st: url_event(
            base64.b64encode(event_body()).decode(),
            signature_headers(st.webhook_secret, event_body()),
            base64_encoded=True,
        ),
        200,
    ),
    "signed-but-not-json": (lambda st: signed_event(st, f"not json {BODY_MARKER}".encode()), 400),
    "signed-json-that-is-not-an-object": (lambda st: signed_event(st, b"[1, 2]"), 200),
    "signed-batch-event-without-data": (
        lambda st: signed_event(st, orjson.dumps({"type": "batch.completed", "note": BODY_MARKER})),
        200,
    ),
    "signed-event-of-another-kind": (lambda st: signed_event(st, event_body(type_="response.completed")), 200),
    "signed-event-for-a-batch-that-is-not-ours": (lambda st: signed_event(st, event_body("batch_not_ours")), 200),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_whatever_arrives_is_answered_never_raised(
    stack: s.LocalStack, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    build, expected = MALFORMED[case]
    with caplog.at_level("INFO", logger="batchdrop"):
        answer = invoke(build(stack))
    assert answer["statusCode"] == expected
    assert isinstance(answer["body"], str)
    everything = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert BODY_MARKER not in everything
    assert stack.webhook_secret not in everything
    if expected >= 400:
        assert len(refusals(caplog)) == 1


def test_a_webhook_that_loses_a_race_to_another_writer_still_answers_ok(stack: s.LocalStack) -> None:
    """OpenAI delivers at least once and the schedule runs too: another invocation may record the same
    batch between our read and our write. That is a Conflict, not a failure."""
    store = JobStore(s.TABLE)
    stack.put("inputs/raced.jsonl", jsonl([openai_line("r")]))
    Dispatcher(stack).deliver_uploads()
    job_id = store.list_jobs()[0]["job_id"]
    batch_id = store.get_batches(job_id)[0]["provider_batch_id"]
    raced: list[str] = []

    def another_writer(step: str) -> None:
        # Where the poll's own chaos tests crash: here another invocation writes the same batch.
        if step == "after_batch_ended" and not raced:
            (batch,) = store.get_batches(job_id)
            store.update(batch, {"checks": int(batch.get("checks", 0)) + 1})
            raced.append(step)

    deps = Deps.from_settings(Settings.from_env())
    deps.checkpoint = another_writer
    use_deps(lambda: deps)
    try:
        deadline = time.monotonic() + 30
        while not raced:
            assert time.monotonic() < deadline, "the batch never ended"
            answer = invoke(signed_event(stack, event_body(batch_id)))
            assert answer["statusCode"] == 200
            time.sleep(0.2)
    finally:
        use_deps(None)
    # The hand-over happened; the next poll takes the batch out of the due index.
    job = store.get_job(job_id)
    assert job is not None
    assert job["status"] in ("completing", "completed")
