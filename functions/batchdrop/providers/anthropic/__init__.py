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
from batchdrop.providers.spec import MB, BatchLimits, LineChecks, LineShape, Price, ProviderSpec, TokenFields, Usage
from batchdrop.providers.structured import TOOL_DESCRIPTION, response_format

LINE_KEYS = frozenset({"custom_id", "params"})


def to_params(
    obj: dict[str, Any], messages: list[dict[str, Any]], default_max_tokens: int, title: str = "Anthropic"
) -> dict[str, Any]:
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
    wanted = response_format(obj)
    if wanted is not None:
        # The schema as a tool the model must call (tool_choice "tool"): every Claude model, on the
        # Batches API and on Bedrock, takes it, where native structured outputs (output_config.format)
        # came later and to fewer models. The answer is the tool_use block's input.
        wanted.object_root(title, "a tool's input_schema is an object: anthropic SDK, ToolParam.input_schema")
        params["tools"] = [
            {"name": wanted.name, "description": wanted.description or TOOL_DESCRIPTION, "input_schema": wanted.schema}
        ]
        params["tool_choice"] = {"type": "tool", "name": wanted.name}
    return params


def params_asks(params: dict[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    """What Messages params ask the answer to match: the input_schema of the tool `tool_choice` forces
    (the answer is that tool_use block's input), or the native `output_config.format` json_schema (the
    answer is the text; anthropic SDK, OutputConfigParam and JSONOutputFormatParam)."""
    choice = params.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool" and isinstance(choice.get("name"), str):
        for tool in params.get("tools") or ():
            if isinstance(tool, dict) and tool.get("name") == choice["name"]:
                schema = tool.get("input_schema")
                return (schema, choice["name"]) if isinstance(schema, dict) else None
        return None
    config = params.get("output_config")
    output = config.get("format") if isinstance(config, dict) else None
    if isinstance(output, dict) and output.get("type") == "json_schema" and isinstance(output.get("schema"), dict):
        return output["schema"], None
    return None


def asks(line: dict[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    params = line.get("params")
    return params_asks(params) if isinstance(params, dict) else None


def tool_input(body: dict[str, Any], name: str) -> Any:
    """The input of the message's call of the tool `name` (a `tool_use` content block), or None."""
    for block in body.get("content") or ():
        if isinstance(block, dict) and block.get("type") == "tool_use" and block.get("name") == name:
            return block.get("input")
    return None


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


def read_message(body: dict[str, Any]) -> tuple[str | None, Usage] | None:
    """A Messages response (Anthropic's, and Claude's on Bedrock)."""
    if (body.get("object") or body.get("type")) != "message":
        return None
    usage = body.get("usage") or {}
    parts = [c.get("text", "") for c in body.get("content") or [] if c.get("type") == "text"]
    text = "".join(parts) if parts else None
    return text, message_usage(usage)


def message_usage(usage: dict[str, Any]) -> Usage:
    """Anthropic counts cache reads and writes apart from `input_tokens` (anthropic-python's Usage:
    `cache_read_input_tokens`, `cache_creation_input_tokens`, and `cache_creation`, the writes by TTL:
    `ephemeral_5m_input_tokens`, `ephemeral_1h_input_tokens`); batchdrop's input is all three."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    by_ttl = usage.get("cache_creation") or {}
    return Usage(
        input_tokens=int(usage.get("input_tokens") or 0) + read + written,
        output_tokens=int(usage.get("output_tokens") or 0),
        cached_input_tokens=read,
        cache_write_input_tokens=written,
        cache_write_1h_input_tokens=int(by_ttl.get("ephemeral_1h_input_tokens") or 0),
    )


def claude(base: float, write: float, write_1h: float, hit: float, output: float) -> Price:
    """A Claude model's prices per million tokens as Anthropic's pricing page lists them (columns "Base
    input tokens", "5m cache writes", "1h cache writes", "Cache hits and refreshes", "Output tokens";
    platform.claude.com/docs/en/about-claude/pricing): 1.25x, 2x and 0.1x the base input. The Batch API
    halves every one of them: "These multipliers stack with other pricing modifiers such as the Batch
    API discount" (platform.claude.com/docs/en/build-with-claude/prompt-caching, "Pricing"), and the
    Batch API is "a 50% discount on both input and output tokens" (the pricing page, "Batch
    processing")."""
    return Price(base, output, cached_input=hit, cache_write=write, cache_write_1h=write_1h, batch=0.5)


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
        "claude-3-5-haiku": claude(0.80, 1.00, 1.60, 0.08, 4.00),
        "claude-haiku-4-5": claude(1.00, 1.25, 2.00, 0.10, 5.00),
        "claude-3-7-sonnet": claude(3.00, 3.75, 6.00, 0.30, 15.00),
        "claude-sonnet-4": claude(3.00, 3.75, 6.00, 0.30, 15.00),
        "claude-opus-4": claude(15.00, 18.75, 30.00, 1.50, 75.00),
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
    asks=asks,
    tool_input=tool_input,
    tokens=TokenFields(body="params", text=("system", "messages", "tools"), caps=("max_tokens",)),
    # No metadata on Message Batches: creates are serialised and orphans matched by time and size.
    tags_batches=False,
)
