"""Structured outputs in the emulator: the mechanisms' shapes checked as each provider checks them, and a
deterministic answer that matches the request's JSON Schema, in the provider's own answer shape
(docs/contract.md "Structured outputs").

The answer is generated from the schema, for this subset of JSON Schema: `$ref` to a local pointer
(`#/$defs/...`), `const`, `enum` (its first value, or the i-th inside an array), `anyOf` and `oneOf`
(the first branch), `allOf` (its branches' keywords merged), `type` (the first that is not "null" of a
list; inferred from `properties` or `items` when absent), objects (every property; a required name
without a property gets a string), arrays (`prefixItems`, then `items`, `minItems` of them and at
least one unless `maxItems` is 0; strings and enums differ by index, for `uniqueItems`), strings
(`minLength`, `maxLength`, and the formats date-time, date, time, email, uri and uuid), integers and
numbers (`minimum`, `exclusiveMinimum`, `maximum`), booleans and null. Not generated: `pattern`,
`multipleOf`, `not`, `if`/`then`, `dependentRequired`, `minProperties`: an answer to a schema that uses
them may not match it, as a model's may not.

`schema_mismatch_rate` (a knob) makes that share of structured answers deliberately not match: a text
answer is then half the time not JSON at all and half the time JSON that breaks the schema (its first
required property left out, or its first property of the wrong type); a tool's input is always an
object that breaks it where it can (a schema every object matches cannot be broken there).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from batchdrop.local.emulator.canned import hex_id, unit
from batchdrop.providers.structured import strict_problem

# A depth past which the generator stops following a schema (a `$ref` may recurse).
_MAX_DEPTH = 32
_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
# OpenAI's format name (openai SDK shared_params/response_format_json_schema.py: "a-z, A-Z, 0-9, or
# underscores and dashes, with a maximum length of 64"); Anthropic's tool names (its tool-use guide:
# "name: ... Must match the regex ^[a-zA-Z0-9_-]{1,64}$").
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


# ---------------------------------------------------------------------------------------------------
# Answers


def instance(schema: Any, root: Any = None, index: int = 0, depth: int = 0) -> Any:
    """A value that matches `schema` (for the subset the module names)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if isinstance(schema.get("$ref"), str):
        return instance(_resolve(root, schema["$ref"]), root, index, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][index % len(schema["enum"])]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return instance(schema[key][0], root, index, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged.update(part)
        return instance(merged, root, index, depth + 1)
    kind = _type(schema)
    if kind == "object":
        properties: dict[str, Any] = _given(schema, "properties", dict, {})
        out = {name: instance(sub, root, 0, depth + 1) for name, sub in properties.items()}
        for name in schema.get("required") or ():
            out.setdefault(name, "value")
        return out
    if kind == "array":
        prefix: list[Any] = _given(schema, "prefixItems", list, [])
        count = max(_given(schema, "minItems", int, 0), len(prefix), 0 if schema.get("maxItems") == 0 else 1)
        items = schema.get("items")
        return [
            instance(prefix[i] if i < len(prefix) else items if isinstance(items, dict) else {}, root, i, depth + 1)
            for i in range(count)
        ]
    if kind == "string":
        if schema.get("format") in _FORMATS:
            return _FORMATS[schema["format"]]
        text = "value" if index == 0 else f"value-{index}"
        text = text.ljust(_given(schema, "minLength", int, 0), "x")
        maximum = schema.get("maxLength")
        return text[:maximum] if isinstance(maximum, int) else text
    if kind in ("integer", "number"):
        value: float = index
        if isinstance(schema.get("minimum"), int | float):
            value = max(value, schema["minimum"])
        if isinstance(schema.get("exclusiveMinimum"), int | float):
            value = max(value, schema["exclusiveMinimum"] + 1)
        if isinstance(schema.get("maximum"), int | float):
            value = min(value, schema["maximum"])
        return int(value) if kind == "integer" and value == int(value) else value
    if kind == "boolean":
        return True
    return None


def violating(schema: Any, good: Any) -> Any:
    """A value near `good` that breaks `schema`, or `good` itself when the emulator finds no way to."""
    if isinstance(good, dict) and isinstance(schema, dict):
        required = [name for name in schema.get("required") or () if name in good]
        if required:
            return {k: v for k, v in good.items() if k != required[0]}
        for name in _given(schema, "properties", dict, {}):
            if name in good:
                return {**good, name: [] if isinstance(good[name], str) else "not what the schema says"}
        if schema.get("additionalProperties") is False:
            return {**good, "unexpected": True}
        return good
    return {"unexpected": good} if schema.get("type") != "object" else good


def mismatch(seed: int, key: str, rate: float) -> bool:
    """Whether the answer of the request named `key` deliberately breaks its schema (the knob)."""
    return rate > 0 and unit(seed, key, "schema-mismatch") < rate


def text_answer(schema: Any, key: str, broken: bool) -> str:
    """A structured answer's text: the JSON of a matching value, or, when `broken`, not JSON or not a match."""
    good = instance(schema)
    if not broken:
        return orjson.dumps(good).decode()
    if unit(key, "schema-mismatch-kind") < 0.5:
        return "Sure! Here is the answer you asked for: " + orjson.dumps(good).decode()[:60]
    return orjson.dumps(violating(schema, good)).decode()


def tool_answer(schema: Any, broken: bool) -> Any:
    """A forced tool's input: a value that matches its input schema, or breaks it when `broken`."""
    good = instance(schema)
    good = good if isinstance(good, dict) else {}
    return violating(schema, good) if broken else good


def tool_use_id(key: str) -> str:
    return "toolu_" + hex_id(key, "tool-use", length=24)


def _given(schema: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """The schema's keyword when it has the type the generator reads, else `default`."""
    value = schema.get(key)
    return value if isinstance(value, kind) and not isinstance(value, bool) else default


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    return "array" if "items" in schema or "prefixItems" in schema else "string"


def _resolve(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return None
    node = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part) if isinstance(node, dict) else None
    return node


# ---------------------------------------------------------------------------------------------------
# The providers' own answers


def openai_schema(endpoint: str, body: dict[str, Any]) -> Any:
    """The schema an OpenAI body asks for: chat `response_format` json_schema, Responses `text.format`."""
    if endpoint == "/v1/chat/completions":
        given = body.get("response_format")
        if isinstance(given, dict) and given.get("type") == "json_schema":
            spec = given.get("json_schema")
            return spec.get("schema", {}) if isinstance(spec, dict) else None
    elif endpoint == "/v1/responses":
        text = body.get("text")
        spec = text.get("format") if isinstance(text, dict) else None
        if isinstance(spec, dict) and spec.get("type") == "json_schema":
            return spec.get("schema", {})
    return None


def openai_reply(endpoint: str, body: dict[str, Any], reply: dict[str, Any], key: str, broken: bool) -> None:
    """Put the structured answer in a chat completion (the message's content, a JSON string: openai SDK
    ChatCompletionMessage.content) or a Response (its output_text), in place."""
    schema = openai_schema(endpoint, body)
    if schema is None:
        return
    text = text_answer(schema, key, broken)
    for choice in reply.get("choices") or ():
        choice["message"]["content"] = text
        choice["finish_reason"] = "stop"
    for item in reply.get("output") or ():
        for part in item.get("content") or ():
            part["text"] = text
    if "text" in reply and isinstance(body.get("text"), dict):
        reply["text"] = body["text"]


def openai_problem(endpoint: str, body: dict[str, Any]) -> tuple[str, str, str] | None:
    """(message, param, code) of the 400 OpenAI answers a malformed structured-output request with, or None.
    The fields the SDK types require (shared_params/response_format_json_schema.py: `json_schema` and
    its `name`; responses/response_format_text_json_schema_config_param.py: `name` and `schema`), the
    name's pattern, and strict mode's schema rules (Structured Outputs guide, "Supported schemas")."""
    if endpoint == "/v1/chat/completions" and "response_format" in body:
        given = body["response_format"]
        if not isinstance(given, dict) or given.get("type") not in ("text", "json_object", "json_schema"):
            return (
                "Invalid value for 'response_format.type': expected one of 'text', 'json_object' or 'json_schema'.",
                "response_format.type",
                "invalid_value",
            )
        if given["type"] != "json_schema":
            return None
        spec, where = given.get("json_schema"), "response_format.json_schema"
        if not isinstance(spec, dict):
            return f"Missing required parameter: '{where}'.", where, "missing_required_parameter"
        return _format_problem(spec, where, "response_format", schema_required=False)
    if endpoint == "/v1/responses" and isinstance(body.get("text"), dict):
        spec = body["text"].get("format")
        if isinstance(spec, dict) and spec.get("type") == "json_schema":
            return _format_problem(spec, "text.format", "text.format", schema_required=True)
    return None


def _format_problem(
    spec: dict[str, Any], where: str, schema_param: str, schema_required: bool
) -> tuple[str, str, str] | None:
    name = spec.get("name")
    if name is None:
        return f"Missing required parameter: '{where}.name'.", f"{where}.name", "missing_required_parameter"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (
            f"Invalid '{where}.name': string does not match pattern. Expected a string that matches the "
            "pattern '^[a-zA-Z0-9_-]+$'.",
            f"{where}.name",
            "invalid_value",
        )
    schema = spec.get("schema")
    if schema is None and schema_required:
        return f"Missing required parameter: '{where}.schema'.", f"{where}.schema", "missing_required_parameter"
    if spec.get("strict") is True:
        problem = strict_problem(schema if isinstance(schema, dict) else {})
        if problem is not None:
            return f"Invalid schema for response_format '{name}': {problem}.", schema_param, "invalid_json_schema"
    return None


def anthropic_problem(params: dict[str, Any], prefix: str = "") -> str | None:
    """Why the Messages API refuses the request's tools or tool_choice, in its field-path wording, or
    None: each tool a `name` (the pattern above) and an `input_schema` of type "object" (anthropic SDK
    tool_param.py: both Required, InputSchemaTyped.type Literal["object"]); `tool_choice` one of
    auto, any, tool, none (tool_choice_param.py), "tool" with a `name` (tool_choice_tool_param.py) that
    names one of the tools."""
    tools = params.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return f"{prefix}tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                return f"{prefix}tools.{i}: Input should be a valid dictionary"
            if tool.get("type") not in (None, "custom"):
                continue  # a server tool (web search, code execution...): not ours to check
            name = tool.get("name")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                return f"{prefix}tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                return f"{prefix}tools.{i}.custom.input_schema: Field required"
            if schema.get("type") != "object":
                return f"{prefix}tools.{i}.custom.input_schema.type: Input should be 'object'"
            names.add(name)
    choice = params.get("tool_choice")
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        return f"{prefix}tool_choice: Input tag should be one of 'auto', 'any', 'tool', 'none'"
    if choice["type"] == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            return f"{prefix}tool_choice.tool.name: Field required"
        if name not in names:
            return f"{prefix}tool_choice: tool {name!r} was not found in tools"
    return None


def anthropic_forced(params: dict[str, Any]) -> tuple[str, Any] | None:
    """(name, input schema) of the tool a Messages request forces, or None."""
    choice = params.get("tool_choice")
    if not (isinstance(choice, dict) and choice.get("type") == "tool"):
        return None
    for tool in params.get("tools") or ():
        if isinstance(tool, dict) and tool.get("name") == choice.get("name"):
            return choice["name"], tool.get("input_schema")
    return None


def anthropic_reply(params: dict[str, Any], message: dict[str, Any], key: str, broken: bool) -> None:
    """A Messages answer to a forced tool: one `tool_use` block and `stop_reason: "tool_use"` (anthropic
    SDK types/tool_use_block.py, types/stop_reason.py); to `output_config.format`, the JSON text. In place."""
    forced = anthropic_forced(params)
    if forced is not None:
        name, schema = forced
        block = {"type": "tool_use", "id": tool_use_id(key), "name": name, "input": tool_answer(schema, broken)}
        message["content"] = [block]
        message["stop_reason"] = "tool_use"
        return
    config = params.get("output_config")
    output = config.get("format") if isinstance(config, dict) else None
    if isinstance(output, dict) and output.get("type") == "json_schema":
        for part in message["content"]:
            part["text"] = text_answer(output.get("schema"), key, broken)
        message["stop_reason"] = "end_turn"


def gemini_problem(request: dict[str, Any]) -> str | None:
    """Gemini's refusal of a generationConfig's schema settings (google-genai types.py,
    GenerateContentConfig.response_json_schema: "If set, `response_schema` must be omitted, but
    `response_mime_type` is required"; response_schema: "you must also set the `response_mime_type` to
    `application/json`"), or None."""
    config = request.get("generationConfig", request.get("generation_config"))
    if not isinstance(config, dict):
        return None
    json_schema = config.get("responseJsonSchema", config.get("response_json_schema"))
    schema = config.get("responseSchema", config.get("response_schema"))
    mime = config.get("responseMimeType", config.get("response_mime_type"))
    if json_schema is not None and schema is not None:
        return "* GenerateContentRequest.generation_config: response_schema and response_json_schema cannot both be set"
    if (json_schema is not None or schema is not None) and mime != "application/json":
        return (
            "* GenerateContentRequest.generation_config.response_mime_type: response_mime_type must be "
            "application/json when a response schema is set"
        )
    return None


def gemini_reply(request: dict[str, Any], response: dict[str, Any], key: str, broken: bool) -> None:
    """A GenerateContentResponse to a JSON Schema request: each candidate's text part is the JSON. In place."""
    config = request.get("generationConfig", request.get("generation_config"))
    schema = config.get("responseJsonSchema", config.get("response_json_schema")) if isinstance(config, dict) else None
    if schema is None:
        return
    for candidate in response.get("candidates") or ():
        candidate["content"]["parts"] = [{"text": text_answer(schema, key, broken)}]
        candidate["finishReason"] = "STOP"


def nova_problem(body: dict[str, Any]) -> str | None:
    """Bedrock's refusal of a Nova body's toolConfig (botocore bedrock-runtime ToolConfiguration: `tools`
    of `toolSpec` {name, inputSchema {json}}; ToolChoice: exactly one of auto, any, tool {name}), in its
    "Malformed input request" wording, or None."""
    config = body.get("toolConfig")
    if config is None:
        return None
    tools = config.get("tools") if isinstance(config, dict) else None
    if not isinstance(tools, list) or not tools:
        return _malformed("#/toolConfig: required key [tools] not found")
    names = set()
    for i, tool in enumerate(tools):
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            return _malformed(f"#/toolConfig/tools/{i}: required key [toolSpec] not found")
        if not isinstance(spec.get("inputSchema"), dict) or not isinstance(spec["inputSchema"].get("json"), dict):
            return _malformed(f"#/toolConfig/tools/{i}/toolSpec: required key [inputSchema] not found")
        names.add(spec["name"])
    choice = config.get("toolChoice")
    if choice is None:
        return None
    if not isinstance(choice, dict) or len(choice) != 1 or next(iter(choice)) not in ("auto", "any", "tool"):
        return _malformed("#/toolConfig/toolChoice: expected exactly one of [auto, any, tool]")
    forced = choice.get("tool")
    if forced is not None and (not isinstance(forced, dict) or forced.get("name") not in names):
        return "The tool named in toolChoice was not found in toolConfig.tools."
    return None


def _malformed(found: str) -> str:
    return f"Malformed input request: {found}, please reformat your input and try again."


def nova_reply(body: dict[str, Any], output: dict[str, Any], key: str, broken: bool) -> None:
    """Nova's answer to a forced tool: one `toolUse` content block and `stopReason: "tool_use"` (the Converse
    response shape, botocore bedrock-runtime ContentBlock.toolUse {toolUseId, name, input}). In place."""
    config = body.get("toolConfig")
    choice = config.get("toolChoice") if isinstance(config, dict) else None
    forced = choice.get("tool") if isinstance(choice, dict) else None
    if not isinstance(forced, dict):
        return
    for tool in config.get("tools") or ():  # type: ignore[union-attr]
        spec = tool.get("toolSpec") or {}
        if spec.get("name") == forced.get("name"):
            given = tool_answer(spec["inputSchema"]["json"], broken)
            use = {"toolUseId": tool_use_id(key), "name": spec["name"], "input": given}
            output["output"]["message"]["content"] = [{"toolUse": use}]
            output["stopReason"] = "tool_use"
            return
