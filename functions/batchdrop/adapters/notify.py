"""SNS notifications: one message when a job is submitted and one when it ends (docs/contract.md, "Notifications").

Every notification fits SNS's size limit by construction. A message SNS refuses fails each retry
of the invocation that publishes it, and a completion that can never publish leaves its job
`completing` forever. A body that fits is sent exactly as given, because subscribers read its shape.
A larger one is cut down in steps (long strings and long lists first, then a compact body, then only
the identity and counts) and then carries `truncated: true` and `summary`, the S3 URI of the full data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from batchdrop.adapters.aws import client

# SNS refuses a Publish over 256 KiB: "262,144 bytes, not 262,144 characters", and it "validates the
# combined size of the message body and message attributes", where "all parts of the message
# attribute, including name, type, and value, are included" (botocore's SNS model: Publish.Message
# and MessageAttributeValue; https://docs.aws.amazon.com/sns/latest/api/API_Publish.html). A topic
# may raise its MaximumMessageSize; ours keeps the default.
SNS_MAX_MESSAGE_BYTES = 262_144

# When a body does not fit: strings cut to this many characters (an error or provider message is
# readable at that length; the whole of it is in summary.json and errors.jsonl), lists to this many
# items (a hundred batches with a cut error each are about 120 KB in ASCII; when that is still too
# much, the compact body follows).
MAX_STRING_CHARS = 1_000
MAX_LIST_ITEMS = 100

# Provider names are a handful of short words; the bound only keeps a mistaken list from pushing
# the message out of SNS's limit.
MAX_PROVIDER_ATTRIBUTE_BYTES = 1_024

# What a subscriber needs even from the most compact notification (with event and notification_id).
KEPT_KEYS = ("job_id", "status", "counts")
# Where the data is: S3 URIs and the input object, bounded by S3 (a key is at most 1,024 bytes), so
# they are kept whole when the rest is cut down.
LOCATION_KEYS = ("input", "output_prefix", "results", "errors")
MAX_LOCATION_BYTES = 4_096
# Kept, cut to length, in the compact body.
COMPACT_KEYS = ("reason",)


def notification_id(job_id: str, event: str) -> str:
    """Stable per job and event, so a subscriber can drop the duplicate a re-run may send."""
    return f"{job_id}:{event}"


class NotificationTooLarge(ValueError):
    """Even the compact body does not fit: only a job id or status far beyond any real one does this."""


@dataclass
class Notifier:
    topic_arn: str
    sns: Any = None

    def __post_init__(self) -> None:
        if self.sns is None:
            self.sns = client("sns")

    def publish(
        self,
        event: str,
        job_id: str,
        providers: Iterable[str],
        body: dict[str, Any],
        summary_uri: str | None = None,
    ) -> str:
        """Publish one notification; returns its notification id.

        `summary_uri` is where the full body is kept (summary.json); a notification too large for
        SNS points there. Without it, the body's `output_prefix` (the submitted event) stands in.
        """
        nid = notification_id(job_id, event)
        attributes = message_attributes(event, job_id, nid, providers)
        message = bounded_message(event, nid, body, summary_uri, SNS_MAX_MESSAGE_BYTES - attributes_size(attributes))
        self.sns.publish(TopicArn=self.topic_arn, Message=message, MessageAttributes=attributes)
        return nid


def message_attributes(event: str, job_id: str, nid: str, providers: Iterable[str]) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "event": {"DataType": "String", "StringValue": event},
        "job_id": {"DataType": "String", "StringValue": job_id},
        "notification_id": {"DataType": "String", "StringValue": nid},
    }
    names: list[str] = []
    for name in sorted(set(providers)):
        # Whole names only: a cut name would match no subscription filter.
        if len(orjson.dumps([*names, name])) > MAX_PROVIDER_ATTRIBUTE_BYTES:
            break
        names.append(name)
    if names:
        # String.Array lets a subscription filter on one provider even for mixed jobs.
        attributes["provider"] = {"DataType": "String.Array", "StringValue": orjson.dumps(names).decode()}
    return attributes


def attributes_size(attributes: dict[str, Any]) -> int:
    """The bytes SNS counts for message attributes: each one's name, data type and value."""
    return sum(
        len(name.encode()) + len(value["DataType"].encode()) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


def bounded_message(event: str, nid: str, body: dict[str, Any], summary_uri: str | None, budget: int) -> str:
    """The message as JSON, at most `budget` UTF-8 bytes: unchanged when it fits, else cut down."""
    full = orjson.dumps({"event": event, "notification_id": nid, **body})
    if len(full) <= budget:
        return full.decode()

    head: dict[str, Any] = {"event": event, "notification_id": nid}
    head.update((key, body[key]) for key in KEPT_KEYS if key in body)
    prefix = body.get("output_prefix")
    summary = summary_uri if summary_uri is not None else prefix if isinstance(prefix, str) else None
    tail: dict[str, Any] = {"truncated": True, **({"summary": _location(summary)} if summary is not None else {})}

    rest = {key: value for key, value in body.items() if key not in head and key not in tail}
    locations = {key: _location(rest[key]) for key in LOCATION_KEYS if key in rest}
    shortened: dict[str, Any] = {**_shorten({k: v for k, v in rest.items() if k not in locations}), **locations}
    compact: dict[str, Any] = dict(locations)
    compact.update((key, _shorten(rest[key])) for key in COMPACT_KEYS if key in rest)
    if isinstance(rest.get("batches"), list):
        compact["batches_truncated"] = len(rest["batches"])

    for middle in (shortened, compact, {}):
        encoded = orjson.dumps({**head, **middle, **tail})
        if len(encoded) <= budget:
            return encoded.decode()
    raise NotificationTooLarge(f"notification {nid[:200]!r}: {len(encoded)} bytes even when compact, budget {budget}")


def _shorten(value: Any) -> Any:
    """Strings cut to MAX_STRING_CHARS with a marker, lists to MAX_LIST_ITEMS, all the way down.

    A list that is a dict's value says how many items it left out in `<key>_truncated` beside it.
    """
    if isinstance(value, str):
        if len(value) <= MAX_STRING_CHARS:
            return value
        return f"{value[:MAX_STRING_CHARS]}… [truncated: {len(value) - MAX_STRING_CHARS} more characters]"
    if isinstance(value, list):
        return [_shorten(item) for item in value[:MAX_LIST_ITEMS]]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out[key] = _shorten(item)
            if isinstance(item, list) and len(item) > MAX_LIST_ITEMS:
                out[f"{key}_truncated"] = len(item) - MAX_LIST_ITEMS
        return out
    return value


def _location(value: Any) -> Any:
    """A URI or the input object, whole unless it is larger than anything S3 names can make."""
    return value if len(orjson.dumps(value)) <= MAX_LOCATION_BYTES else _shorten(value)
