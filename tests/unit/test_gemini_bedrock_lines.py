"""Gemini and Bedrock input lines: their own batch-line shapes, neutral mapping per model family,
routing, the Bedrock→Anthropic fallback conversion, and text and usage from their responses."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchdrop import models as m
from batchdrop.outputs import extract
from batchdrop.providers.bedrock import ANTHROPIC_VERSION as BEDROCK_ANTHROPIC_VERSION
from batchdrop.providers.bedrock import bedrock_to_anthropic
from batchdrop.providers.spec import Usage
from tests.lines import accept, neutral_line, reject, validator


def body_of(request: m.Request) -> dict[str, Any]:
    line: dict[str, Any] = orjson.loads(request.payload)
    return line


# -- Gemini ---------------------------------------------------------------------------------------


def test_gemini_line_takes_its_key_as_custom_id_and_moves_the_model_to_the_batch() -> None:
    line = {
        "key": "q-1",
        "request": {"model": "models/gemini-2.5-flash", "contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    }
    request = accept(validator(), line)
    assert (request.custom_id, request.provider, request.model, request.group) == (
        "q-1",
        "gemini",
        "gemini-2.5-flash",
        "gemini-2.5-flash",
    )
    assert body_of(request) == {"key": "q-1", "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}}


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        ({"request": {"model": "gemini-2.5-flash", "contents": [{}]}}, m.MISSING_CUSTOM_ID, '"key"'),
        ({"key": "a b", "request": {"model": "gemini-2.5-flash", "contents": [{}]}}, m.INVALID_CUSTOM_ID, '"key"'),
        ({"key": "a", "request": {"contents": [{}]}}, m.MISSING_MODEL, "gemini-2.5-flash"),
        ({"key": "a", "request": {"model": "gemini-2.5-flash", "contents": []}}, m.INVALID_REQUEST, "contents"),
        ({"key": "a", "request": "hi"}, m.INVALID_REQUEST, '"request" must be a JSON object'),
        ({"key": "a", "request": {"model": "gemini-2.5-flash", "contents": [{}]}, "x": 1}, m.INVALID_REQUEST, "x"),
    ],
)
def test_bad_gemini_lines_say_what_is_wrong(line: dict[str, Any], code: str, message: str) -> None:
    invalid = reject(validator(), line)
    assert invalid.code == code
    assert message in invalid.message


def test_neutral_line_maps_to_a_generate_content_request() -> None:
    line = neutral_line(
        "gemini-2.5-flash",
        system="be brief",
        max_tokens=10,
        temperature=0.5,
        stop="END",
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            {"role": "user", "content": "again"},
        ],
        tools=[{"name": "f", "description": "d", "parameters": {"type": "object"}}],
    )
    request = accept(validator(), line, number=7)
    assert request.custom_id == "line-7"
    assert body_of(request)["request"] == {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "hello"}]},
            {"role": "user", "parts": [{"text": "again"}]},
        ],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"maxOutputTokens": 10, "temperature": 0.5, "stopSequences": ["END"]},
        "tools": [{"functionDeclarations": [{"name": "f", "description": "d", "parameters": {"type": "object"}}]}],
    }


def test_gemini_folder_routes_any_model_there() -> None:
    request = accept(validator(folder_provider="gemini"), neutral_line("my-tuned-model"))
    assert request.provider == "gemini"


# -- Bedrock --------------------------------------------------------------------------------------


def test_bedrock_line_takes_record_id_and_model_id() -> None:
    line = {"recordId": "r-1", "modelId": "amazon.nova-lite-v1:0", "modelInput": {"messages": [{"role": "user"}]}}
    request = accept(validator(), line)
    assert (request.custom_id, request.provider, request.model) == ("r-1", "bedrock", "amazon.nova-lite-v1:0")
    # The model goes with the job, not the record.
    assert body_of(request) == {"recordId": "r-1", "modelInput": {"messages": [{"role": "user"}]}}


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        ({"recordId": "r", "modelInput": {"a": 1}}, m.MISSING_MODEL, '"modelId" is missing'),
        ({"modelId": "amazon.nova-lite-v1:0", "modelInput": {"a": 1}}, m.MISSING_CUSTOM_ID, '"recordId"'),
        ({"recordId": "r", "modelId": "amazon.nova-lite-v1:0", "modelInput": []}, m.INVALID_REQUEST, "InvokeModel"),
        ({"recordId": "r", "modelId": "x", "modelInput": {"a": 1}, "extra": 1}, m.INVALID_REQUEST, "extra"),
    ],
)
def test_bad_bedrock_lines_say_what_is_wrong(line: dict[str, Any], code: str, message: str) -> None:
    invalid = reject(validator(), line)
    assert invalid.code == code
    assert message in invalid.message
    if "recordId" in line:
        assert invalid.custom_id == line["recordId"]


def test_neutral_claude_on_bedrock_is_an_anthropic_body_with_bedrocks_version() -> None:
    request = accept(validator(), neutral_line("us.anthropic.claude-3-5-haiku-20241022-v1:0", system="s"))
    assert request.provider == "bedrock"
    assert body_of(request)["modelInput"] == {
        "anthropic_version": BEDROCK_ANTHROPIC_VERSION,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hello"}],
        "system": "s",
    }


def test_neutral_nova_takes_content_blocks_and_an_inference_config() -> None:
    request = accept(validator(), neutral_line("amazon.nova-pro-v1:0", system="s", max_tokens=5, top_p=0.9))
    assert body_of(request)["modelInput"] == {
        "schemaVersion": "messages-v1",
        "messages": [{"role": "user", "content": [{"text": "hello"}]}],
        "system": [{"text": "s"}],
        "inferenceConfig": {"maxTokens": 5, "topP": 0.9},
    }


def test_neutral_llama_is_one_prompt_in_llama3s_chat_template() -> None:
    request = accept(validator(), neutral_line("meta.llama3-1-8b-instruct-v1:0", max_tokens=3))
    model_input = body_of(request)["modelInput"]
    assert model_input["max_gen_len"] == 3
    assert model_input["prompt"] == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_neutral_llama_refuses_what_it_cannot_express() -> None:
    invalid = reject(validator(), neutral_line("meta.llama3-1-8b-instruct-v1:0", stop="x"))
    assert (invalid.code, '"stop"' in invalid.message) == (m.INVALID_REQUEST, True)


def test_neutral_line_for_a_bedrock_model_of_another_family_is_refused_with_the_way_out() -> None:
    invalid = reject(validator(folder_provider="bedrock"), neutral_line("cohere.command-r-v1:0"))
    assert invalid.code == m.INVALID_REQUEST
    assert "{recordId, modelId, modelInput}" in invalid.message


def test_bedrock_claude_record_converts_to_an_anthropic_line() -> None:
    request = accept(validator(), {**neutral_line("anthropic.claude-3-5-haiku-20241022-v1:0"), "custom_id": "c"})
    converted = bedrock_to_anthropic(request.payload, request.model)
    assert converted is not None
    model, line = converted
    assert model == "claude-3-5-haiku-20241022"
    assert orjson.loads(line) == {
        "custom_id": "c",
        "params": {"model": model, "max_tokens": 1024, "messages": [{"role": "user", "content": "hello"}]},
    }
    # The result is a valid Anthropic batch line.
    assert accept(validator(), line).provider == "anthropic"


def test_only_claude_records_convert() -> None:
    request = accept(validator(), neutral_line("amazon.nova-lite-v1:0"))
    assert bedrock_to_anthropic(request.payload, request.model) is None


# -- responses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "candidates": [{"content": {"role": "model", "parts": [{"text": "Par"}, {"text": "is"}]}}],
                "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 3},
            },
            ("Paris", 4, 5),
        ),
        (
            {
                "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
                "usage": {"inputTokens": 3, "outputTokens": 1},
            },
            ("hi", 3, 1),
        ),
        ({"generation": "yo", "prompt_token_count": 6, "generation_token_count": 2}, ("yo", 6, 2)),
    ],
)
def test_text_and_usage_of_gemini_nova_and_llama(body: dict[str, Any], expected: tuple[str, int, int]) -> None:
    text, tokens_in, tokens_out = expected
    assert extract(body) == (text, Usage(tokens_in, tokens_out))
