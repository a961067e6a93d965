"""Notifications always fit SNS's message size limit (issue 13, defect 4).

A terminal notification that SNS refuses ("Message too long") fails every completion retry and
leaves the job `completing` forever. These tests publish through a real boto3 SNS client to moto
(in process) and weigh each Publish call at the AWS boundary (botocore's `before-parameter-build`
event), because moto measures only the message, and in characters, while SNS counts bytes of the
message and of every attribute's name, type and value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import hypothesis
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from batchdrop.adapters.notify import Notifier

# SNS's limit on one published message: "at most 256 KiB in size (262,144 bytes, not 262,144
# characters) … Amazon SNS validates the combined size of the message body and message attributes"
# and "all parts of the message attribute, including name, type, and value, are included in the
# message size restriction" (botocore's SNS model, Publish.Message and MessageAttributeValue).
SNS_LIMIT = 262_144

JOB_ID = "job-0123456789abcdef0123"
PREFIX = "s3://batchdrop-bucket/outputs/evals/run1/job-0123456789abcdef0123/"
SUMMARY_URI = PREFIX + "summary.json"
PROVIDERS = ["openai", "anthropic"]
COUNTS = {"lines": 5000, "invalid": 0, "submitted": 5000, "succeeded": 4000, "failed": 1000}


def sns_size(params: dict[str, Any]) -> int:
    """The bytes SNS counts against its limit (see SNS_LIMIT)."""
    size = len(params["Message"].encode())
    for name, value in (params.get("MessageAttributes") or {}).items():
        size += len(name.encode()) + len(value["DataType"].encode()) + len(value["StringValue"].encode())
    return size


class Capture:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        self.calls.append(params)

    @property
    def last(self) -> dict[str, Any]:
        return self.calls[-1]

    @property
    def message(self) -> dict[str, Any]:
        decoded: dict[str, Any] = orjson.loads(self.last["Message"])
        return decoded


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str, Capture]]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        sns = boto3.client("sns", region_name="us-east-1")
        capture = Capture()
        sns.meta.events.register("before-parameter-build.sns.Publish", capture)
        topic = sns.create_topic(Name="batchdrop-notifications")["TopicArn"]
        yield sns, topic, capture


def summary(batches: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A terminal body shaped as complete.write_outputs builds it."""
    return {
        "job_id": JOB_ID,
        "status": "partial",
        "input": {"bucket": "batchdrop-bucket", "key": "inputs/evals/run1.jsonl", "version_id": "v1", "etag": "e"},
        "counts": COUNTS,
        "batches": batches,
        "usage": {"input_tokens": 123456, "output_tokens": 654321},
        "cost_usd": {"batch": 1.5, "realtime_equivalent": 3.0, "saved": 1.5},
        "timings": {
            "received_at": "2025-01-01T00:00:00Z",
            "submitted_at": "2025-01-01T00:01:00Z",
            "ended_at": "2025-01-01T10:00:00Z",
            "completed_at": "2025-01-01T10:05:00Z",
        },
        "results": PREFIX + "results.jsonl",
        "errors": PREFIX + "errors.jsonl",
        **extra,
    }


def batch(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai" if i % 2 else "anthropic",
        "batch_id": f"batch_{i:08d}",
        "requests": 1,
        "status": "completed",
        "attempt": 1,
        **extra,
    }


def expected_attributes(event: str) -> dict[str, Any]:
    return {
        "event": {"DataType": "String", "StringValue": event},
        "job_id": {"DataType": "String", "StringValue": JOB_ID},
        "notification_id": {"DataType": "String", "StringValue": f"{JOB_ID}:{event}"},
        "provider": {"DataType": "String.Array", "StringValue": '["anthropic","openai"]'},
    }


def assert_kept(capture: Capture, event: str, body: dict[str, Any]) -> dict[str, Any]:
    """What every notification keeps, however large its body was."""
    assert sns_size(capture.last) <= SNS_LIMIT
    assert capture.last["MessageAttributes"] == expected_attributes(event)
    message = capture.message
    assert message["event"] == event
    assert message["notification_id"] == f"{JOB_ID}:{event}"
    for key in ("job_id", "status", "counts"):
        assert message[key] == body[key]
    return message


def test_a_job_with_5000_batches_is_published_with_its_first_batches_and_how_many_were_left_out(aws):
    sns, topic, capture = aws
    body = summary([batch(i) for i in range(5000)])
    assert len(orjson.dumps(body)) > SNS_LIMIT

    Notifier(topic, sns).publish("partial", JOB_ID, PROVIDERS, body, summary_uri=SUMMARY_URI)

    message = assert_kept(capture, "partial", body)
    assert message["truncated"] is True
    assert message["summary"] == SUMMARY_URI
    kept = message["batches"]
    assert 0 < len(kept) < 5000
    assert kept == body["batches"][: len(kept)]
    assert message["batches_truncated"] == 5000 - len(kept)
    for key in ("input", "usage", "cost_usd", "timings", "results", "errors"):
        assert message[key] == body[key]


def test_a_300_kb_batch_error_is_cut_with_a_marker(aws):
    sns, topic, capture = aws
    huge = "provider said: " + "x" * 300_000
    body = summary([batch(0), batch(1, status="failed", error=huge), batch(2)])

    Notifier(topic, sns).publish("partial", JOB_ID, PROVIDERS, body, summary_uri=SUMMARY_URI)

    message = assert_kept(capture, "partial", body)
    assert message["truncated"] is True
    assert message["summary"] == SUMMARY_URI
    error = message["batches"][1]["error"]
    assert error.startswith(huge[:1000])
    assert len(error) < 1100
    assert "truncated" in error
    assert message["batches"][0] == body["batches"][0]
    assert message["batches"][2] == body["batches"][2]


def test_huge_multibyte_model_names_are_weighed_in_bytes_not_characters(aws):
    sns, topic, capture = aws
    # 135,000 characters but 405,000 bytes: moto (which counts characters) takes it, SNS would not.
    model = "模" * 45_000
    body = summary([batch(0, model=model), batch(1, model=model, status="failed", error=f"no model {model!r}")])
    assert len(orjson.dumps(body).decode()) < SNS_LIMIT < len(orjson.dumps(body))

    Notifier(topic, sns).publish("failed", JOB_ID, PROVIDERS, body, summary_uri=SUMMARY_URI)

    message = assert_kept(capture, "failed", body)
    assert message["truncated"] is True
    for kept in message["batches"]:
        assert kept["model"].startswith("模" * 1000)
        assert len(kept["model"]) < 1100
    assert message["batches"][1]["error"].startswith("no model '模模")
    assert len(message["batches"][1]["error"]) < 1100


def message_bytes(event: str, body: dict[str, Any]) -> int:
    return len(orjson.dumps({"event": event, "notification_id": f"{JOB_ID}:{event}", **body}))


def attributes_bytes(event: str) -> int:
    return sns_size({"Message": "", "MessageAttributes": expected_attributes(event)})


def padded_to(total: int) -> dict[str, Any]:
    """A summary whose notification (message and attributes) weighs exactly `total` bytes."""
    body = summary([batch(0), batch(1, error="")])
    body["batches"][1]["error"] = "e" * (total - attributes_bytes("partial") - message_bytes("partial", body))
    return body


def test_a_message_that_fits_exactly_is_sent_unchanged(aws):
    sns, topic, capture = aws
    body = padded_to(SNS_LIMIT)

    Notifier(topic, sns).publish("partial", JOB_ID, PROVIDERS, body, summary_uri=SUMMARY_URI)

    assert sns_size(capture.last) == SNS_LIMIT
    assert (
        capture.last["Message"]
        == orjson.dumps({"event": "partial", "notification_id": f"{JOB_ID}:partial", **body}).decode()
    )
    assert capture.last["MessageAttributes"] == expected_attributes("partial")


def test_a_message_one_byte_over_is_bounded(aws):
    # moto accepted this before (it counts the message alone); SNS would refuse it for its attributes.
    sns, topic, capture = aws
    body = padded_to(SNS_LIMIT + 1)

    Notifier(topic, sns).publish("partial", JOB_ID, PROVIDERS, body, summary_uri=SUMMARY_URI)

    message = assert_kept(capture, "partial", body)
    assert message["truncated"] is True
    assert message["summary"] == SUMMARY_URI


def test_a_small_notification_is_unchanged(aws):
    sns, topic, capture = aws
    body = summary([batch(i, error="boom") for i in range(3)])

    Notifier(topic, sns).publish("partial", JOB_ID, PROVIDERS, body)

    assert capture.message == {"event": "partial", "notification_id": f"{JOB_ID}:partial", **body}
    assert capture.last["MessageAttributes"] == expected_attributes("partial")


def test_a_large_submitted_notification_points_at_the_output_prefix(aws):
    sns, topic, capture = aws
    body = {
        "job_id": JOB_ID,
        "status": "submitted",
        "input": {"bucket": "batchdrop-bucket", "key": "inputs/evals/run1.jsonl"},
        "counts": {"lines": 5000, "invalid": 0, "submitted": 5000},
        "batches": [{"provider": "openai", "batch_id": f"batch_{i:08d}", "requests": 1} for i in range(10_000)],
        "output_prefix": PREFIX,
    }

    Notifier(topic, sns).publish("submitted", JOB_ID, PROVIDERS, body)

    message = assert_kept(capture, "submitted", body)
    assert message["truncated"] is True
    assert message["summary"] == PREFIX
    assert message["output_prefix"] == PREFIX
    assert message["batches_truncated"] == 10_000 - len(message["batches"])


def test_a_body_that_truncation_cannot_shrink_enough_falls_back_to_the_compact_body(aws):
    # Many small strings in many small lists: no string is long and no list is long, yet together
    # they are too much.
    sns, topic, capture = aws
    detail = {f"k{i}": ["v" * 900] * 50 for i in range(200)}
    body = summary([batch(0)], detail=detail, reason="the file was rejected: " + "r" * 5000)

    Notifier(topic, sns).publish("rejected", JOB_ID, PROVIDERS, body, summary_uri=SUMMARY_URI)

    message = assert_kept(capture, "rejected", body)
    assert message["truncated"] is True
    assert message["summary"] == SUMMARY_URI
    assert "detail" not in message
    for key in ("input", "results", "errors"):
        assert message[key] == body[key]
    assert message["batches_truncated"] == 1
    assert message["reason"].startswith("the file was rejected: rrr")


def test_the_provider_attribute_is_bounded(aws):
    sns, topic, capture = aws
    providers = [f"provider-{i:04d}-" + "p" * 200 for i in range(2000)]
    body = summary([batch(0)])

    Notifier(topic, sns).publish("completed", JOB_ID, providers, body)

    assert sns_size(capture.last) <= SNS_LIMIT
    attribute = capture.last["MessageAttributes"]["provider"]
    assert attribute["DataType"] == "String.Array"
    names = orjson.loads(attribute["StringValue"])
    assert 0 < len(names) < len(providers)
    assert names == sorted(providers)[: len(names)]
    assert len(attribute["StringValue"].encode()) <= 1024
    assert capture.message == {"event": "completed", "notification_id": f"{JOB_ID}:completed", **body}


# -- any body --------------------------------------------------------------------------------------

small = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=6,
)
values = st.recursive(
    small
    # Long strings cheaply: one character (ASCII or not) repeated.
    | st.builds(lambda ch, n: ch * n, st.characters(codec="utf-8"), st.integers(0, 300_000)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=20), children, max_size=4)
        # Long lists cheaply: one small value repeated (never a large one: that would be terabytes).
        | st.builds(lambda v, n: [v] * n, small, st.integers(0, 6000))
        # Many medium strings, multibyte or not: more than fits even once each is cut down.
        | st.builds(
            lambda ch, k, n: [ch * k] * n, st.characters(codec="utf-8"), st.integers(0, 3000), st.integers(0, 300)
        )
    ),
    max_leaves=12,
)
bodies = st.fixed_dictionaries(
    {
        "job_id": st.just(JOB_ID),
        "status": st.sampled_from(["submitted", "completed", "partial", "failed", "canceled", "rejected"]),
        "counts": st.dictionaries(
            st.sampled_from(["lines", "invalid", "submitted", "succeeded", "failed"]), st.integers(0, 10**9)
        ),
    },
    optional={
        "input": values,
        "batches": values,
        "results": values,
        "errors": values,
        "output_prefix": values,
        "reason": values,
    },
).flatmap(
    lambda base: st.dictionaries(
        st.text(max_size=20).filter(lambda k: k not in base and k not in ("event", "notification_id")),
        values,
        max_size=4,
    ).map(lambda extra: {**base, **extra})
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(
    body=bodies,
    kind=st.sampled_from(["submitted", "completed", "partial", "failed"]),
    uri=st.none() | st.just(SUMMARY_URI),
)
def test_any_body_is_published_within_the_limit(aws, body, kind, uri):
    sns, topic, capture = aws

    Notifier(topic, sns).publish(kind, JOB_ID, PROVIDERS, body, summary_uri=uri)

    message = assert_kept(capture, kind, body)
    if message_bytes(kind, body) + attributes_bytes(kind) <= SNS_LIMIT:
        assert message == {"event": kind, "notification_id": f"{JOB_ID}:{kind}", **body}
        hypothesis.event("fits")
    else:
        assert message["truncated"] is True
        assert ("summary" in message) == (uri is not None or isinstance(body.get("output_prefix"), str))
        if uri is not None:
            assert message["summary"] == uri
        extra = set(message) - {"event", "notification_id", "job_id", "status", "counts", "truncated", "summary"}
        compact = {"input", "output_prefix", "results", "errors", "reason", "batches_truncated"}
        hypothesis.event("minimal" if not extra else "compact" if extra <= compact else "shortened")
