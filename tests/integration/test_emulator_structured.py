"""The emulator's structured outputs through the official SDKs (docs/contract.md "Structured outputs"):
each provider's answer to its own mechanism parses as its SDK's type and matches the schema, a malformed
mechanism is refused as the provider's API refuses it, and `schema_mismatch_rate` breaks the answers."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import boto3
import openai
import orjson
import pytest
from botocore.exceptions import ClientError
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from jsonschema import Draft202012Validator

from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative"]},
        "reasons": {"type": "array", "items": {"type": "string"}, "minItems": 2},
    },
    "required": ["sentiment", "reasons"],
    "additionalProperties": False,
}
VALID = Draft202012Validator(SCHEMA).is_valid
# Typed Any: the SDKs' TypedDicts would not take these dicts, which are what the tests send.
MESSAGES: Any = [{"role": "user", "content": "How was the film?"}]
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA, "strict": True}}
TOOL: Any = {"name": "review", "description": "the review", "input_schema": SCHEMA}


def oa(emulator: ProviderEmulator) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url=emulator.openai_base_url, max_retries=0)


def claude(emulator: ProviderEmulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="k", base_url=emulator.anthropic_base_url, max_retries=0)


def gemini(emulator: ProviderEmulator) -> genai.Client:
    retry = types.HttpRetryOptions(attempts=1)
    options = types.HttpOptions(base_url=emulator.base_url, api_version="v1beta", retry_options=retry)
    return genai.Client(api_key="k", http_options=options)


def runtime(emulator: ProviderEmulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    return boto3.client("bedrock-runtime", endpoint_url=emulator.base_url)


def test_openai_answers_a_json_schema_with_json_that_matches_it(emulator: ProviderEmulator) -> None:
    client = oa(emulator)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, response_format=FORMAT
    )
    completion = openai.types.chat.ChatCompletion.model_validate(orjson.loads(raw.content))
    assert completion.choices[0].finish_reason == "stop"
    assert VALID(json.loads(completion.choices[0].message.content or ""))
    text_format: Any = {"type": "json_schema", "name": "review", "schema": SCHEMA}
    response = client.responses.create(model="gpt-4o-mini", input="How was it?", text={"format": text_format})
    assert VALID(json.loads(response.output_text))


@pytest.mark.parametrize(
    ("response_format", "param", "says"),
    [
        (
            {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
            "response_format.json_schema.name",
            "Missing required parameter: 'response_format.json_schema.name'.",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a review", "schema": SCHEMA}},
            "response_format.json_schema.name",
            "string does not match pattern",
        ),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "r", "strict": True, "schema": {**SCHEMA, "additionalProperties": True}},
            },
            "response_format",
            "Invalid schema for response_format 'r': In context=(), 'additionalProperties' is required",
        ),
        ({"type": "json"}, "response_format.type", "Invalid value for 'response_format.type'"),
    ],
)
def test_openai_refuses_a_malformed_response_format(
    emulator: ProviderEmulator, response_format: Any, param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oa(emulator).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, response_format=response_format)
    assert refused.value.status_code == 400
    assert refused.value.param == param
    assert says in refused.value.message


def test_anthropic_answers_a_forced_tool_with_a_tool_use_block(emulator: ProviderEmulator) -> None:
    raw = claude(emulator).messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=MESSAGES,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "review"},
    )
    message = anthropic.types.Message.model_validate(orjson.loads(raw.http_response.content))
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.name == "review"
    assert VALID(block.input)


@pytest.mark.parametrize(
    ("tools", "choice", "says"),
    [
        ([TOOL], {"type": "tool", "name": "other"}, "tool_choice: tool 'other' was not found in tools"),
        ([], {"type": "tool", "name": "review"}, "tool_choice: tool 'review' was not found in tools"),
        (
            [{**TOOL, "input_schema": {"type": "array"}}],
            {"type": "auto"},
            "input_schema.type: Input should be 'object'",
        ),
        ([{"name": "review"}], {"type": "auto"}, "tools.0.custom.input_schema: Field required"),
        ([TOOL], {"type": "tool"}, "tool_choice.tool.name: Field required"),
    ],
)
def test_anthropic_refuses_a_tool_choice_it_cannot_follow(
    emulator: ProviderEmulator, tools: Any, choice: Any, says: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude(emulator).messages.create(
            model="claude-haiku-4-5",
            max_tokens=64,
            messages=MESSAGES,
            tools=tools,
            tool_choice=choice,
        )
    assert refused.value.status_code == 400
    assert says in str(refused.value)


def test_gemini_answers_a_response_json_schema_with_json_text(emulator: ProviderEmulator) -> None:
    config = types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=SCHEMA)
    client = gemini(emulator)  # held: the SDK closes its HTTP client when the Client is collected
    response = client.models.generate_content(model="gemini-2.5-flash", contents="How was it?", config=config)
    assert VALID(json.loads(response.text or ""))


def test_gemini_refuses_a_response_json_schema_without_the_json_mime_type(emulator: ProviderEmulator) -> None:
    config = types.GenerateContentConfig(response_json_schema=SCHEMA)
    client = gemini(emulator)
    with pytest.raises(genai_errors.ClientError) as refused:
        client.models.generate_content(model="gemini-2.5-flash", contents="How was it?", config=config)
    assert refused.value.code == 400
    assert "response_mime_type" in str(refused.value)


def nova_body(choice: dict[str, Any]) -> dict[str, Any]:
    tool = {"toolSpec": {"name": "review", "description": "the review", "inputSchema": {"json": SCHEMA}}}
    return {
        "schemaVersion": "messages-v1",
        "messages": [{"role": "user", "content": [{"text": "How was it?"}]}],
        "toolConfig": {"tools": [tool], "toolChoice": choice},
    }


def test_bedrock_answers_a_forced_tool_in_each_familys_shape(
    emulator: ProviderEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = runtime(emulator, monkeypatch)
    answer = client.invoke_model(
        modelId="amazon.nova-lite-v1:0", body=orjson.dumps(nova_body({"tool": {"name": "review"}}))
    )
    nova = orjson.loads(answer["body"].read())
    assert nova["stopReason"] == "tool_use"
    (block,) = nova["output"]["message"]["content"]
    assert block["toolUse"]["name"] == "review"
    assert VALID(block["toolUse"]["input"])
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 64,
        "messages": MESSAGES,
        "tools": [TOOL],
        "tool_choice": {"type": "tool", "name": "review"},
    }
    answer = client.invoke_model(modelId="anthropic.claude-3-5-haiku-20241022-v1:0", body=orjson.dumps(body))
    message = anthropic.types.Message.model_validate(orjson.loads(answer["body"].read()))
    assert message.stop_reason == "tool_use"
    assert isinstance(message.content[0], anthropic.types.ToolUseBlock)
    assert VALID(message.content[0].input)


def test_bedrock_refuses_a_nova_tool_choice_naming_no_tool(
    emulator: ProviderEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = runtime(emulator, monkeypatch)
    with pytest.raises(ClientError) as refused:
        client.invoke_model(modelId="amazon.nova-lite-v1:0", body=orjson.dumps(nova_body({"tool": {"name": "other"}})))
    assert refused.value.response["Error"]["Code"] == "ValidationException"


def test_the_knob_breaks_structured_answers(emulator: ProviderEmulator) -> None:
    emulator.knobs = EmulatorKnobs(schema_mismatch_rate=1.0, seed=3)
    client = oa(emulator)
    texts = [
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, response_format=FORMAT)
        .choices[0]
        .message.content
        or ""
        for _ in range(6)
    ]

    def matches(text: str) -> bool:
        try:
            return VALID(json.loads(text))
        except ValueError:
            return False

    assert not any(map(matches, texts))
    message = claude(emulator).messages.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=MESSAGES,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "review"},
    )
    assert isinstance(message.content[0], anthropic.types.ToolUseBlock)
    assert not VALID(message.content[0].input)
