"""What every provider's line check and neutral translator shares: the rejection, the neutral format's
pieces (messages, text content, sampling, tools) and the checks of values (numbers, model names).

Imported by the provider specs and by batchdrop.validation; imports no provider and no SDK.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

from batchdrop import models as m

# The largest max_tokens (or max_completion_tokens, maxOutputTokens...) we pass: Gemini reads it as a
# protobuf int32 (GenerationConfig.max_output_tokens), and no model's output cap comes near it. Larger
# integers also lose their value in orjson beyond 64 bits (read as a float), which the provider refuses.
MAX_TOKENS = 2**31 - 1
ROLES = frozenset({"system", "user", "assistant"})
# OpenAI, Azure OpenAI, Anthropic: the name travels in the request body, never a path, so the rule is
# only conservative: the characters real ids use (gpt-4o-mini, claude-3-5-haiku-20241022, fine-tunes
# "ft:gpt-4o-mini:org:name:id", Azure deployment names of letters, digits, "-", "_" and "."), up to 256.
BODY_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}").fullmatch
BODY_RULE = (BODY_MODEL, 'up to 256 letters, digits, ".", "-", "_", ":" and "/", starting with a letter or digit')
# A line's id, in every format: held to the strictest provider's rule, so that a line can go anywhere.
CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Reject(Exception):
    def __init__(self, code: str, msg: str) -> None:
        self.code = code
        self.msg = msg


def model_name(value: Any, where: str, example: str = "gpt-4o-mini") -> str:
    if value is None or value == "":
        raise Reject(m.MISSING_MODEL, f"{where} is missing: name the model to run, e.g. {example}")
    if not isinstance(value, str):
        raise Reject(m.INVALID_REQUEST, f"{where} must be a string, got {json_type(value)}")
    return value


def check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise Reject(m.INVALID_REQUEST, f"{where} must be a non-empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise Reject(m.INVALID_REQUEST, f'{where}[{i}] must be an object with a "role" and a "content"')
        if "content" not in message:
            raise Reject(m.INVALID_REQUEST, f'{where}[{i}] has no "content"')


def positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
        raise Reject(
            m.INVALID_REQUEST,
            f"{where} must be a whole number of at least 1 and at most {MAX_TOKENS:,}, got {short(value)}",
        )
    return value


def text_content(content: Any, where: str) -> Any:
    """Neutral content is a string or a list of text parts: the part both providers read alike."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return [{"type": "text", "text": p["text"]} for p in content]
    raise Reject(
        m.INVALID_REQUEST,
        f"{where} must be a string or a list of {{type: text, text}} parts in the neutral format; "
        "for images or other parts use the provider's own batch line",
    )


def stop_list(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise Reject(m.INVALID_REQUEST, '"stop" must be a string or a list of strings')


def tools(tools: Any) -> list[dict[str, Any]]:
    """Neutral tools: [{name, description?, parameters|input_schema}] (a JSON Schema for the input)."""
    if not isinstance(tools, list):
        raise Reject(m.INVALID_REQUEST, '"tools" must be a list of {name, description, parameters}')
    out = []
    for i, tool in enumerate(tools):
        schema = tool.get("parameters", tool.get("input_schema")) if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not isinstance(schema, dict):
            raise Reject(
                m.INVALID_REQUEST,
                f'"tools"[{i}] must be {{"name", "description"?, "parameters": JSON Schema}}',
            )
        out.append({"name": tool["name"], "description": tool.get("description", ""), "schema": schema})
    return out


def plain_text(content: Any) -> str:
    """Neutral content (a string or text parts, already checked) as one string."""
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def split_system(obj: dict[str, Any], messages: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str]]]:
    """(system texts, [(role, text)]) for providers that take the system prompt apart; as for
    Anthropic, only leading system messages can move there."""
    system = [plain_text(text_content(obj["system"], '"system"'))] if obj.get("system") is not None else []
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        role = msg["role"]
        text = plain_text(text_content(msg["content"], f'"messages"[{i}].content'))
        if role == "system":
            if turns:
                raise Reject(
                    m.INVALID_REQUEST,
                    f'"messages"[{i}] is a system message after the conversation started; move it into "system"',
                )
            system.append(text)
        elif role in ("user", "assistant"):
            turns.append((role, text))
        else:
            raise Reject(m.INVALID_REQUEST, f'"messages"[{i}].role {role!r} must be system, user or assistant')
    if not turns:
        raise Reject(m.INVALID_REQUEST, '"messages" holds only system messages; add a user message')
    return system, turns


def sampling(obj: dict[str, Any], *, max_tokens: str, max_temperature: float) -> dict[str, Any]:
    """The neutral sampling fields in the camelCase of Gemini's generationConfig and Nova's
    inferenceConfig, which differ only in the name of the token cap and the temperature range."""
    config: dict[str, Any] = {}
    if obj.get("max_tokens") is not None:
        config[max_tokens] = positive_int(obj["max_tokens"], '"max_tokens"')
    if obj.get("temperature") is not None:
        config["temperature"] = number(obj["temperature"], "temperature", 0, max_temperature)
    if obj.get("top_p") is not None:
        config["topP"] = number(obj["top_p"], "top_p", 0, 1)
    if obj.get("stop") is not None:
        config["stopSequences"] = stop_list(obj["stop"])
    return config


def join_system(parts: list[Any]) -> Any:
    if all(isinstance(p, str) for p in parts):
        return "\n\n".join(parts)
    blocks: list[dict[str, Any]] = []
    for part in parts:
        blocks.extend([{"type": "text", "text": part}] if isinstance(part, str) else part)
    return blocks


def number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise Reject(
            m.INVALID_REQUEST,
            f'"{name}" must be a number from {low:g} to {high:g} for this provider, got {short(value)}',
        )
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(value), "an object"
    )


def short(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode() if not isinstance(value, bytes) else repr(value)
    except TypeError:  # nested deeper than orjson writes (254 levels)
        text = f"{json_type(value)} nested too deeply to show"
    return text if len(text) <= 60 else text[:57] + "..."


def shown(name: str) -> str:
    """A model name for a message: a hostile one may be hundreds of KB."""
    return repr(name if len(name) <= 60 else name[:57] + "...")


def names(keys: Iterable[str]) -> str:
    return ", ".join(sorted(keys))
