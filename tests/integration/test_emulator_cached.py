"""The emulator reports cached prompt tokens as each provider does, and the official SDKs parse them:
`cached_input_rate` makes a share of every answer's prompt tokens cached, and batchdrop's readers
(`outputs.extract`) read the same figures from the bodies (docs/contract.md "Outputs")."""

from __future__ import annotations

from typing import Any

import anthropic
import boto3
import openai
import orjson
import pytest
from google import genai
from google.genai import types

from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from batchdrop.outputs import extract
from batchdrop.providers.spec import Usage

# 400 characters: 100 prompt tokens at the emulator's four characters a token, half of them cached.
PROMPT = "x" * 400
PROMPT_TOKENS = 100
MESSAGES: Any = [{"role": "user", "content": PROMPT}]


@pytest.fixture
def cached(emulator: ProviderEmulator) -> ProviderEmulator:
    emulator.knobs = EmulatorKnobs(cached_input_rate=0.5, seed=7)
    return emulator


def oa(emulator: ProviderEmulator) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url=emulator.openai_base_url, max_retries=0)


def test_openai_reports_cached_tokens_as_a_part_of_the_prompt(cached: ProviderEmulator) -> None:
    client = oa(cached)
    # openai-python's CompletionUsage.prompt_tokens_details.cached_tokens
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == PROMPT_TOKENS // 2
    _, usage = extract(completion.model_dump(mode="json"))
    assert (usage.input_tokens, usage.cached_input_tokens) == (PROMPT_TOKENS, PROMPT_TOKENS // 2)
    # and ResponseUsage.input_tokens_details.cached_tokens
    response = client.responses.create(model="gpt-4o-mini", input=PROMPT)
    assert response.usage is not None
    assert response.usage.input_tokens == PROMPT_TOKENS
    assert response.usage.input_tokens_details.cached_tokens == PROMPT_TOKENS // 2
    assert extract(response.model_dump(mode="json"))[1].cached_input_tokens == PROMPT_TOKENS // 2


def test_anthropic_reports_cache_reads_apart_from_its_input_tokens(cached: ProviderEmulator) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=cached.anthropic_base_url, max_retries=0)
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES)
    # anthropic-python's Usage.cache_read_input_tokens, not counted in input_tokens
    assert message.usage.cache_read_input_tokens == PROMPT_TOKENS // 2
    assert message.usage.input_tokens == PROMPT_TOKENS - PROMPT_TOKENS // 2
    assert message.usage.cache_creation_input_tokens == 0
    # batchdrop's input is the whole prompt, the cache reads a part of it
    _, usage = extract(message.model_dump(mode="json"))
    assert usage == Usage(PROMPT_TOKENS, message.usage.output_tokens, cached_input_tokens=PROMPT_TOKENS // 2)


def test_claude_on_bedrock_reports_cache_reads_as_anthropic_does(
    cached: ProviderEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("bedrock-runtime", endpoint_url=cached.base_url)
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": MESSAGES}
    answer = client.invoke_model(modelId="anthropic.claude-3-5-haiku-20241022-v1:0", body=orjson.dumps(body))
    raw = orjson.loads(answer["body"].read())
    message = anthropic.types.Message.model_validate(raw)
    assert message.usage.cache_read_input_tokens == PROMPT_TOKENS // 2
    assert extract(raw)[1].input_tokens == PROMPT_TOKENS


def test_gemini_reports_cached_content_tokens_as_a_part_of_the_prompt(cached: ProviderEmulator) -> None:
    retry = types.HttpRetryOptions(attempts=1)
    options = types.HttpOptions(base_url=cached.base_url, api_version="v1beta", retry_options=retry)
    client = genai.Client(api_key="k", http_options=options)
    response = client.models.generate_content(model="gemini-2.5-flash", contents=PROMPT)
    # google-genai's GenerateContentResponseUsageMetadata.cached_content_token_count
    meta = response.usage_metadata
    assert meta is not None
    assert meta.prompt_token_count == PROMPT_TOKENS
    assert meta.cached_content_token_count == PROMPT_TOKENS // 2
    assert meta.cache_tokens_details is not None
    assert meta.cache_tokens_details[0].token_count == PROMPT_TOKENS // 2
    _, usage = extract(response.model_dump(mode="json", by_alias=True, exclude_none=True))
    assert (usage.input_tokens, usage.cached_input_tokens) == (PROMPT_TOKENS, PROMPT_TOKENS // 2)


def test_without_the_knob_nothing_is_cached(emulator: ProviderEmulator) -> None:
    completion = oa(emulator).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    assert extract(completion.model_dump(mode="json"))[1].cached_input_tokens == 0
