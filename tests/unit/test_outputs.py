"""Text and usage from every response body we support, and the output lines of docs/contract.md "Outputs"."""

from __future__ import annotations

from typing import Any

import pytest

from batchdrop import models as m
from batchdrop.outputs import error_line, extract, result_line, validation_error
from batchdrop.providers.spec import Usage

CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}

RESPONSE: dict[str, Any] = {
    "id": "resp_abc",
    "object": "response",
    "created_at": 1_700_000_000,
    "status": "completed",
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": []},
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [
                {"type": "output_text", "text": "Hello, ", "annotations": []},
                {"type": "refusal", "refusal": "no"},
                {"type": "output_text", "text": "world.", "annotations": []},
            ],
        },
    ],
    "usage": {"input_tokens": 20, "output_tokens": 7, "total_tokens": 27},
}

EMBEDDINGS: dict[str, Any] = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}

COMPLETION: dict[str, Any] = {
    "id": "cmpl-abc",
    "object": "text_completion",
    "created": 1_700_000_000,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [{"text": " once upon a time", "index": 0, "logprobs": None, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9},
}

ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5-20251001",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "First part. "},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "text", "text": "Second part."},
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 30, "output_tokens": 11, "cache_read_input_tokens": 0},
}

MODERATION: dict[str, Any] = {
    "id": "modr-1",
    "model": "omni-moderation-latest",
    "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (CHAT_COMPLETION, ("Paris.", 12, 3)),
        (RESPONSE, ("Hello, world.", 20, 7)),
        (EMBEDDINGS, (None, 8, 0)),
        (COMPLETION, (" once upon a time", 4, 5)),
        (ANTHROPIC_MESSAGE, ("First part. Second part.", 30, 11)),
        (MODERATION, (None, 0, 0)),
    ],
    ids=["chat", "responses", "embeddings", "completions", "anthropic", "moderations"],
)
def test_extract_text_and_usage(body: dict[str, Any], expected: tuple[str | None, int, int]) -> None:
    text, tokens_in, tokens_out = expected
    assert extract(body) == (text, Usage(tokens_in, tokens_out))


def test_chat_completion_with_only_tool_calls_has_no_text() -> None:
    body = {
        **CHAT_COMPLETION,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    assert extract(body) == (None, Usage(12, 3))


def test_chat_completion_with_empty_text_keeps_the_empty_string() -> None:
    body = {**CHAT_COMPLETION, "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}}]}
    assert extract(body) == ("", Usage(12, 3))


def test_anthropic_message_with_only_tool_use_has_no_text() -> None:
    body = {**ANTHROPIC_MESSAGE, "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
    assert extract(body) == (None, Usage(30, 11))


def test_response_without_a_message_has_no_text() -> None:
    body = {**RESPONSE, "output": [{"id": "fc_1", "type": "function_call", "name": "f", "arguments": "{}"}]}
    assert extract(body) == (None, Usage(20, 7))


@pytest.mark.parametrize("body", [CHAT_COMPLETION, RESPONSE, ANTHROPIC_MESSAGE])
def test_missing_or_null_usage_counts_zero(body: dict[str, Any]) -> None:
    assert extract({**body, "usage": None})[1] == Usage()
    assert extract({k: v for k, v in body.items() if k != "usage"})[1] == Usage()


def test_chat_completion_without_choices_has_no_text() -> None:
    assert extract({**CHAT_COMPLETION, "choices": []}) == (None, Usage(12, 3))


def test_result_line_has_every_field_of_the_contract() -> None:
    line, usage = result_line("r-1", 4, "anthropic", "claude-haiku-4-5", "msgbatch_1", ANTHROPIC_MESSAGE)
    assert line == {
        "custom_id": "r-1",
        "line": 4,
        "provider": "anthropic",
        "model": "claude-haiku-4-5-20251001",
        "batch_id": "msgbatch_1",
        "status": "succeeded",
        "lane": "batch",
        "text": "First part. Second part.",
        "usage": {"input_tokens": 30, "output_tokens": 11},
        "response": ANTHROPIC_MESSAGE,
    }
    assert usage == Usage(30, 11)
    realtime, _ = result_line("r-1", 4, "anthropic", "claude-haiku-4-5", "realtime:j/k", ANTHROPIC_MESSAGE, "realtime")
    assert realtime["lane"] == "realtime"


def test_result_line_falls_back_to_the_requested_model() -> None:
    body = {k: v for k, v in EMBEDDINGS.items() if k != "model"}
    line, _ = result_line("e-1", 1, "openai", "text-embedding-3-small", "batch_1", body)
    assert line["model"] == "text-embedding-3-small"
    assert line["text"] is None
    assert line["usage"] == {"input_tokens": 8, "output_tokens": 0}


def test_error_line_has_every_field_of_the_contract() -> None:
    line = error_line(
        custom_id="r-2",
        line=9,
        stage="provider",
        code=m.EXPIRED,
        message="the batch expired before this request ran",
        provider="openai",
        batch_id="batch_9",
        attempts=2,
        detail={"code": "batch_expired"},
    )
    assert line == {
        "custom_id": "r-2",
        "line": 9,
        "stage": "provider",
        "code": "expired",
        "message": "the batch expired before this request ran",
        "provider": "openai",
        "batch_id": "batch_9",
        "attempts": 2,
        "detail": {"code": "batch_expired"},
    }


def test_validation_error_line() -> None:
    line = validation_error(m.Invalid(3, None, m.INVALID_JSON, "not valid JSON"))
    assert line == {
        "custom_id": None,
        "line": 3,
        "stage": "validation",
        "code": "invalid_json",
        "message": "not valid JSON",
        "provider": None,
        "batch_id": None,
        "attempts": 0,
        "detail": None,
    }
