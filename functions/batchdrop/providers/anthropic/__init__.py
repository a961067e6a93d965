"""Anthropic: Message Batches (requests sent inline). Bedrock's Claude bodies reuse its translator.

Facts: docs/providers.md ("Anthropic"); the line format: docs/contract.md ("Input lines").
"""

from __future__ import annotations

from typing import Any

import orjson

from batchdrop import models as m
from batchdrop.providers.lines import (
    BODY_RULE,
    Reject,
    check_messages,
    join_system,
    json_type,
    model_name,
    names,
    number,
    positive_int,
    stop_list,
    text_content,
    tools,
)
from batchdrop.providers.spec import MB, BatchLimits, LineChecks, LineShape, ProviderSpec, TokenFields

LINE_KEYS = frozenset({"custom_id", "params"})


def to_params(obj: dict[str, Any], messages: list[dict[str, Any]], default_max_tokens: int) -> dict[str, Any]:
    system_parts: list[Any] = []
    if obj.get("system") is not None:
        system_parts.append(text_content(obj["system"], '"system"'))
    out_messages: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role = msg["role"]
        content = text_content(msg["content"], f'"messages"[{i}].content')
        if role == "system":
            # Anthropic takes the system prompt apart; only leading system messages can move there.
            if out_messages:
                raise Reject(
                    m.INVALID_REQUEST,
                    f'"messages"[{i}] is a system message after the conversation started, which '
                    'Anthropic cannot take; move it into "system"',
                )
            system_parts.append(content)
            continue
        if role not in ("user", "assistant"):
            raise Reject(m.INVALID_REQUEST, f'"messages"[{i}].role {role!r} must be system, user or assistant')
        out_messages.append({"role": role, "content": content})
    if not out_messages:
        raise Reject(m.INVALID_REQUEST, '"messages" holds only system messages; add a user message')
    params: dict[str, Any] = {"model": obj["model"]}
    max_tokens = obj.get("max_tokens")
    params["max_tokens"] = default_max_tokens if max_tokens is None else positive_int(max_tokens, '"max_tokens"')
    params["messages"] = out_messages
    if system_parts:
        params["system"] = join_system(system_parts)
    if obj.get("temperature") is not None:
        params["temperature"] = number(obj["temperature"], "temperature", 0, 1)
    if obj.get("top_p") is not None:
        params["top_p"] = number(obj["top_p"], "top_p", 0, 1)
    if obj.get("stop") is not None:
        params["stop_sequences"] = stop_list(obj["stop"])
    if obj.get("tools") is not None:
        params["tools"] = [
            {"name": t["name"], "description": t["description"], "input_schema": t["schema"]}
            for t in tools(obj["tools"])
        ]
    return params


def check_line(v: LineChecks, number: int, raw: bytes, obj: dict[str, Any], target: str) -> m.Request:
    custom_id = v.take_id(obj, number, required=True)
    extra = obj.keys() - LINE_KEYS
    if extra:
        raise Reject(m.INVALID_REQUEST, f"unexpected field(s) {names(extra)} in an Anthropic batch line")
    params = obj.get("params")
    if not isinstance(params, dict):
        raise Reject(m.INVALID_REQUEST, f'"params" must be a JSON object, got {json_type(params)}')
    model = model_name(params.get("model"), '"params.model"')
    check_messages(params.get("messages"), '"params.messages"')
    if params.get("stream"):
        raise Reject(m.INVALID_REQUEST, '"params.stream" must be false: batch requests cannot stream')
    provider = v.enabled(target, model)
    if "max_tokens" not in params:
        params = {**params, "max_tokens": v.anthropic_default_max_tokens}
        payload = orjson.dumps({"custom_id": custom_id, "params": params})
    else:
        positive_int(params["max_tokens"], '"params.max_tokens"')
        payload = raw.strip()
    return v.request(number, custom_id, provider, "", model, payload)


def translate(
    obj: dict[str, Any], messages: list[dict[str, Any]], custom_id: str, model: str, default_max_tokens: int
) -> tuple[str, str, bytes]:
    params = to_params(obj, messages, default_max_tokens)
    return "", model, orjson.dumps({"custom_id": custom_id, "params": params})


def read_message(body: dict[str, Any]) -> tuple[str | None, int, int] | None:
    """A Messages response (Anthropic's, and Claude's on Bedrock)."""
    if (body.get("object") or body.get("type")) != "message":
        return None
    usage = body.get("usage") or {}
    parts = [c.get("text", "") for c in body.get("content") or [] if c.get("type") == "text"]
    text = "".join(parts) if parts else None
    return text, int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)


SPEC = ProviderSpec(
    name="anthropic",
    title="Anthropic",
    client="batchdrop.providers.anthropic.client:AnthropicProvider",
    realtime="batchdrop.providers.anthropic.realtime:AnthropicRealtime",
    emulator="batchdrop.local.emulator.anthropic:AnthropicEmulation",
    maxima=BatchLimits(max_requests=100_000, max_bytes=256 * MB),
    # Lower than the 256 MB maximum because requests are sent inline: the SDK holds the whole batch as
    # Python objects while it serialises it, about 8x the JSON size, and 32 MB of JSON keeps that
    # under 512 MB.
    defaults=BatchLimits(max_requests=100_000, max_bytes=32 * MB),
    routes=("claude-",),
    prices={
        "claude-3-5-haiku": (0.80, 4.00),
        "claude-haiku-4-5": (1.00, 5.00),
        "claude-3-7-sonnet": (3.00, 15.00),
        "claude-sonnet-4": (3.00, 15.00),
        "claude-opus-4": (15.00, 75.00),
    },
    line=LineShape(
        keys=LINE_KEYS,
        markers=frozenset({"params"}),
        id_field="custom_id",
        described="an Anthropic batch line {custom_id, params}",
        check=check_line,
    ),
    fast="batchdrop.providers.anthropic.fast:FAST",
    shape="anthropic",
    translate=translate,
    model_rule=BODY_RULE,
    readers=(read_message,),
    tokens=TokenFields(body="params", text=("system", "messages", "tools"), caps=("max_tokens",)),
    # No metadata on Message Batches: creates are serialised and orphans matched by time and size.
    tags_batches=False,
)
