"""Structured outputs (docs/contract.md "Structured outputs"): the neutral `response_format` checked with
precise messages, its translation into each provider's mechanism, what completion reads back from each
provider's batch line, an answer checked against its schema, and the emulator's generated answers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from batchdrop import models as m
from batchdrop import structured as so
from batchdrop.local.emulator import schemas
from batchdrop.providers import SPECS
from batchdrop.validation import Validator

SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"enum": ["positive", "negative"]}, "score": {"type": "integer"}},
    "required": ["sentiment", "score"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA}}
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "nova": "amazon.nova-lite-v1:0",
    "claude": "anthropic.claude-3-5-haiku-20241022-v1:0",
}


def check(line: dict[str, Any], folder: str | None = None) -> m.Request | m.Invalid:
    validator = Validator(providers={name: spec.defaults for name, spec in SPECS.items()}, folder_provider=folder)
    verdict = validator.check(1, orjson.dumps(line))
    assert verdict is not None
    return verdict


def neutral(model: str, response_format: Any = FORMAT, **more: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "response_format": response_format, **more}


def payload(line: dict[str, Any], folder: str | None = None) -> dict[str, Any]:
    verdict = check(line, folder)
    assert isinstance(verdict, m.Request), verdict
    sent: dict[str, Any] = orjson.loads(verdict.payload)
    return sent


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("json", '"response_format" must be an object {"type": "json_schema"'),
        ({"type": "json_object"}, '"response_format.type" must be "json_schema", got "json_object"'),
        ({"type": "json_schema", "schema": SCHEMA}, 'unexpected field(s) schema in "response_format"'),
        ({"type": "json_schema"}, '"response_format.json_schema" must be an object'),
        ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, '"response_format.json_schema.name" is missing'),
        (
            {"type": "json_schema", "json_schema": {"name": "a review", "schema": SCHEMA}},
            '"response_format.json_schema.name" "a review" must be 1 to 64 letters',
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x" * 65, "schema": SCHEMA}},
            "must be 1 to 64 letters, digits, _ or -",
        ),
        ({"type": "json_schema", "json_schema": {"name": "r"}}, '"response_format.json_schema.schema" is missing'),
        (
            {"type": "json_schema", "json_schema": {"name": "r", "schema": [SCHEMA]}},
            '"response_format.json_schema.schema" must be a JSON Schema object, got an array',
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "objekt"}}},
            "is not a valid JSON Schema: $.type: 'objekt' is not valid under any of the given schemas",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "r", "schema": {"properties": {"a": {"minLength": -1}}}}},
            "is not a valid JSON Schema: $.properties.a.minLength: -1 is less than the minimum of 0",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA, "strict": "yes"}},
            '"response_format.json_schema.strict" must be true or false',
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA, "title": "x"}},
            'unexpected field(s) title in "response_format.json_schema"',
        ),
    ],
)
@pytest.mark.parametrize("model", MODELS.values())
def test_a_bad_response_format_is_refused_with_what_is_wrong(model: str, given: Any, says: str) -> None:
    verdict = check(neutral(model, given))
    assert isinstance(verdict, m.Invalid)
    assert verdict.code == m.INVALID_REQUEST
    assert says in verdict.message


@pytest.mark.parametrize("model", [MODELS["anthropic"], MODELS["claude"], MODELS["nova"]])
def test_a_forced_tool_needs_an_object_at_the_schema_root(model: str) -> None:
    given = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "array"}}}
    verdict = check(neutral(model, given))
    assert isinstance(verdict, m.Invalid)
    assert 'must have "type": "object" at its root' in verdict.message
    # Gemini and OpenAI (not strict) take any root.
    assert isinstance(check(neutral(MODELS["gemini"], given)), m.Request)
    assert isinstance(check(neutral(MODELS["openai"], given)), m.Request)


def test_tools_and_a_response_format_together_are_refused() -> None:
    tool = {"name": "lookup", "parameters": {"type": "object"}}
    verdict = check(neutral(MODELS["anthropic"], tools=[tool]))
    assert isinstance(verdict, m.Invalid)
    assert 'takes "tools" or "response_format", not both' in verdict.message


def test_llama_on_bedrock_refuses_a_response_format_by_name() -> None:
    verdict = check(neutral("meta.llama3-1-8b-instruct-v1:0"))
    assert isinstance(verdict, m.Invalid)
    assert verdict.message.startswith('Llama on Bedrock takes no "response_format"')


def test_openai_strict_mode_refuses_what_openai_refuses() -> None:
    strict: dict[str, Any] = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA, "strict": True}}
    verdict = check(neutral(MODELS["openai"], strict))
    assert isinstance(verdict, m.Invalid)
    assert "'additionalProperties' is required to be supplied and to be false" in verdict.message
    fixed = {**SCHEMA, "additionalProperties": False}
    body = payload(
        neutral(MODELS["openai"], {"type": "json_schema", "json_schema": {**strict["json_schema"], "schema": fixed}})
    )
    assert body["body"]["response_format"]["json_schema"]["strict"] is True


def test_each_provider_gets_its_own_mechanism() -> None:
    openai = payload(neutral(MODELS["openai"]))
    assert openai["url"] == "/v1/chat/completions"
    assert openai["body"]["response_format"] == FORMAT
    azure = payload(neutral("my-deployment"), folder="azure")
    assert azure["body"]["response_format"] == FORMAT
    forced = {"type": "tool", "name": "review"}
    anthropic = payload(neutral(MODELS["anthropic"]))["params"]
    assert anthropic["tool_choice"] == forced
    assert [(t["name"], t["input_schema"]) for t in anthropic["tools"]] == [("review", SCHEMA)]
    claude = payload(neutral(MODELS["claude"]))["modelInput"]
    assert claude["tool_choice"] == forced
    assert claude["tools"] == anthropic["tools"]
    nova = payload(neutral(MODELS["nova"]))["modelInput"]["toolConfig"]
    assert nova["toolChoice"] == {"tool": {"name": "review"}}
    assert nova["tools"][0]["toolSpec"]["inputSchema"] == {"json": SCHEMA}
    gemini = payload(neutral(MODELS["gemini"]))["request"]["generationConfig"]
    assert gemini == {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA}
    described = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA, "description": "A review"}}
    assert payload(neutral(MODELS["anthropic"], described))["params"]["tools"][0]["description"] == "A review"


@pytest.mark.parametrize("model", MODELS.values())
def test_what_a_translated_line_asks_for_is_read_back_from_it(model: str) -> None:
    verdict = check(neutral(model))
    assert isinstance(verdict, m.Request)
    wanted = so.wanted(verdict.provider, orjson.loads(verdict.payload))
    assert wanted is not None
    assert wanted.validator.schema == SCHEMA
    assert wanted.tool == (None if verdict.provider in ("openai", "gemini") else "review")


def test_provider_lines_of_their_own_ask_by_their_mechanism() -> None:
    chat = {"model": "gpt-4o", "messages": [], "response_format": FORMAT}
    assert so.wanted("openai", {"url": "/v1/chat/completions", "body": chat}) is not None
    responses = {
        "model": "gpt-4o",
        "input": "x",
        "text": {"format": {"type": "json_schema", "name": "r", "schema": SCHEMA}},
    }
    assert so.wanted("azure", {"url": "/v1/responses", "body": responses}) is not None
    tool = {"name": "t", "input_schema": SCHEMA}
    found = so.wanted("anthropic", {"params": {"tools": [tool], "tool_choice": {"type": "tool", "name": "t"}}})
    assert found is not None
    assert found.tool == "t"
    # A tool the model may or may not call asks for nothing; nor does JSON mode without a schema.
    assert so.wanted("anthropic", {"params": {"tools": [tool], "tool_choice": {"type": "auto"}}}) is None
    assert (
        so.wanted("openai", {"url": "/v1/chat/completions", "body": {"response_format": {"type": "json_object"}}})
        is None
    )
    # Gemini's responseSchema is OpenAPI's dialect, not JSON Schema: not checked.
    openapi = {"responseMimeType": "application/json", "responseSchema": {"type": "OBJECT"}}
    assert so.wanted("gemini", {"request": {"generationConfig": openapi}}) is None
    # A provider line's schema that is not valid JSON Schema asks for nothing rather than failing completion.
    bad = {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": 5}}}}
    assert so.wanted("openai", {"url": "/v1/chat/completions", "body": bad}) is None


def test_an_openai_line_of_its_own_with_a_bad_schema_is_refused_at_validation() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
    bad = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"required": "sentiment"}}}
    verdict = check({**line, "body": {**body, "response_format": bad}})
    assert isinstance(verdict, m.Invalid)
    assert verdict.message.startswith(
        '"body.response_format.json_schema.schema" is not a valid JSON Schema: $.required'
    )
    assert isinstance(check({**line, "body": {**body, "response_format": FORMAT}}), m.Request)


def test_an_answer_is_parsed_or_named_a_mismatch_with_the_validators_path() -> None:
    wanted = so.wanted("openai", {"url": "/v1/chat/completions", "body": {"response_format": FORMAT}})
    assert wanted is not None
    assert so.answer(wanted, "openai", {}, '{"sentiment": "positive", "score": 3}') == (
        {"sentiment": "positive", "score": 3},
        '{"sentiment": "positive", "score": 3}',
    )
    with pytest.raises(so.Mismatch) as wrong:
        so.answer(wanted, "openai", {}, '{"sentiment": "meh", "score": 3}')
    assert wrong.value.message == (
        "the answer does not match the schema: $.sentiment: 'meh' is not one of ['positive', 'negative']"
    )
    assert wrong.value.raw == '{"sentiment": "meh", "score": 3}'
    with pytest.raises(so.Mismatch) as not_json:
        so.answer(wanted, "openai", {}, "Sure! positive")
    assert not_json.value.message.startswith("the answer is not JSON")
    refused = {"choices": [{"message": {"content": None, "refusal": "I can't help with that."}}]}
    with pytest.raises(so.Mismatch) as no_text:
        so.answer(wanted, "openai", refused, None)
    assert no_text.value.message == "the answer has no text to read as JSON; the model refused: I can't help with that."


def test_a_forced_tools_answer_is_its_input_and_its_text_that_inputs_json() -> None:
    tool = {"name": "review", "input_schema": SCHEMA}
    wanted = so.wanted("anthropic", {"params": {"tools": [tool], "tool_choice": {"type": "tool", "name": "review"}}})
    assert wanted is not None
    given = {"sentiment": "negative", "score": 1}
    message = {"type": "message", "content": [{"type": "tool_use", "id": "t", "name": "review", "input": given}]}
    assert so.answer(wanted, "anthropic", message, None) == (given, orjson.dumps(given).decode())
    nova = {"output": {"message": {"content": [{"toolUse": {"toolUseId": "t", "name": "review", "input": given}}]}}}
    assert so.answer(wanted, "bedrock", nova, None)[0] == given
    with pytest.raises(so.Mismatch) as missing:
        so.answer(wanted, "anthropic", {"type": "message", "content": [{"type": "text", "text": "hi"}]}, "hi")
    assert missing.value.message == "the answer has no call of the tool 'review' that carries the schema"


SCHEMAS = [
    SCHEMA,
    {
        "type": "object",
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"n": {"type": "number", "exclusiveMinimum": 2}},
                "required": ["n"],
            }
        },
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 3},
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "code": {"type": "string", "minLength": 8, "maxLength": 10},
            "kind": {"const": "fixed"},
            "maybe": {"type": ["null", "boolean"]},
            "either": {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "string"}]},
            "both": {"allOf": [{"type": "object"}, {"properties": {"a": {"type": "string"}}, "required": ["a"]}]},
            "distinct": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 3, "uniqueItems": True},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]},
        },
        "required": ["items", "when", "id", "code", "kind", "maybe", "either", "both", "distinct", "pair", "extra"],
    },
    {"type": "array", "items": {"type": "string"}, "maxItems": 0},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_emulators_answers_match_the_schemas_subset_it_supports(schema: dict[str, Any]) -> None:
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    assert validator.is_valid(orjson.loads(schemas.text_answer(schema, "k", broken=False)))
    if schema.get("type") == "object":
        assert validator.is_valid(schemas.tool_answer(schema, broken=False))
        assert not validator.is_valid(schemas.tool_answer(schema, broken=True))
