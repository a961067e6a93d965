"""Issue 13: hostile lines that our own code or a provider would choke on after validation (deep
nesting, numbers beyond a double or 64 bits, model names no provider takes) are refused by
validation itself, with a precise error line, whichever path (one line, a block, the full check)
judges them, and never crash it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchdrop import models as m
from batchdrop.pricing import estimate_tokens
from batchdrop.providers.lines import MAX_TOKENS
from batchdrop.scan import scan
from batchdrop.validation import MAX_DEPTH, NoIds, Validator
from tests.lines import anthropic_line, dumps, neutral_line, openai_line, reject, validator

MSGS = b'[{"role":"user","content":"hi"}]'


def openai_raw(custom_id: str, rest: bytes) -> bytes:
    """An OpenAI batch line for gpt-4o-mini whose body goes on with `rest` after the model."""
    head = b'{"custom_id":"%s","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini",'
    return head % custom_id.encode() + rest


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_lines(depth: int) -> dict[str, bytes]:
    d = nested(depth)
    return {
        "neutral-messages": b'{"custom_id":"a","model":"gpt-4o-mini","messages":' + d + b"}",
        "openai-body": openai_raw("b", b'"messages":' + MSGS + b',"x":' + d + b"}}"),
        "openai-content": openai_raw("c", b'"messages":[{"role":"user","content":' + d + b"}]}}"),
        "anthropic-content": b'{"custom_id":"d","params":{"model":"claude-haiku-4-5","max_tokens":5,'
        b'"messages":[{"role":"user","content":' + d + b"}]}}",
        "anthropic-params": b'{"custom_id":"e","params":{"model":"claude-haiku-4-5","max_tokens":5,"messages":'
        + MSGS
        + b',"metadata":'
        + d
        + b"}}",
        "gemini": b'{"key":"f","request":{"model":"gemini-2.5-flash","contents":[{"role":"user","parts":' + d + b"}]}}",
    }


def all_paths(raw: bytes) -> list[m.Request | m.Invalid | None]:
    """The verdict on `raw` from every path that judges a line, each on a fresh validator: `check`
    (fast, then full), `full` alone, a block decoded whole, a block a line at a time, and a scan."""
    out: list[m.Request | m.Invalid | None] = [validator(seen=NoIds()).check(3, raw)]
    out.append(validator(seen=NoIds()).full(3, raw))
    # Line 3 of a block of well-formed lines of its shape around it, so the block path is tried
    twin = dumps(anthropic_line("z1")) if b'"params"' in raw else dumps(openai_line("z1"))
    twin2 = dumps(anthropic_line("z2")) if b'"params"' in raw else dumps(openai_line("z2"))
    block: list[Any] = [twin, twin2, raw]
    out.append(validator(seen=NoIds()).check_block(1, block)[2])
    out.append(validator(seen=NoIds())._each_line(1, block)[2])
    got: list[Any] = []
    scan([b"\n".join(block) + b"\n"], validator(), got.append, got.append)
    out.append(next(v for v in got if v.line == 3))
    return out


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 1023, 1024, 5000])
@pytest.mark.parametrize("shape", list(deep_lines(2)))
def test_a_line_nested_too_deep_is_invalid_json_on_every_path(shape: str, depth: int) -> None:
    raw = deep_lines(depth)[shape]
    for verdict in all_paths(raw):
        assert isinstance(verdict, m.Invalid), verdict
        assert verdict.code == m.INVALID_JSON
        assert f"nested more than {MAX_DEPTH} levels" in verdict.message


def test_a_line_nested_to_the_limit_is_still_judged_on_its_merits() -> None:
    # Given an OpenAI line whose unknown body field nests exactly MAX_DEPTH levels in all
    raw = deep_lines(MAX_DEPTH - 4)["openai-body"]
    # Then it passes (the provider judges the field), and every path agrees
    assert all(isinstance(v, m.Request) for v in all_paths(raw))


HUGE = [b"1e999", b"-1E+400", b"9.9e308", b"1" + b"0" * 400, b"-" + b"9" * 320 + b".5"]


def huge_number_lines(number: bytes) -> dict[str, bytes]:
    return {
        "openai-content-part": openai_raw(
            "a", b'"messages":[{"role":"user","content":[{"type":"text","text":"x","n":' + number + b"}]}]}}"
        ),
        "openai-unknown-field": openai_raw("b", b'"messages":' + MSGS + b',"logit_bias":{"1":' + number + b"}}}"),
        "openai-temperature": openai_raw("c", b'"messages":' + MSGS + b',"temperature":' + number + b"}}"),
        "anthropic-content": b'{"custom_id":"d","params":{"model":"claude-haiku-4-5","max_tokens":5,'
        b'"messages":[{"role":"user","content":[{"type":"text","text":"x","n":' + number + b"}]}]}}",
        "anthropic-metadata": b'{"custom_id":"e","params":{"model":"claude-haiku-4-5","max_tokens":5,"messages":'
        + MSGS
        + b',"metadata":{"n":'
        + number
        + b"}}}",
        "neutral-tools": b'{"model":"gpt-4o-mini","messages":'
        + MSGS
        + b',"tools":[{"name":"t","parameters":{"maximum":'
        + number
        + b"}}]}",
    }


@pytest.mark.parametrize("number", HUGE, ids=lambda n: n[:12].decode())
@pytest.mark.parametrize("shape", list(huge_number_lines(b"1")))
def test_a_number_beyond_a_double_anywhere_is_invalid_json_on_every_path(shape: str, number: bytes) -> None:
    raw = huge_number_lines(number)[shape]
    for verdict in all_paths(raw):
        assert isinstance(verdict, m.Invalid), verdict
        assert verdict.code == m.INVALID_JSON
        assert "too large for a 64-bit float" in verdict.message


@pytest.mark.parametrize(
    ("line", "where"),
    [
        (
            b'{"custom_id":"a","params":{"model":"claude-haiku-4-5","max_tokens":123456789012345678901234567890,'
            b'"messages":' + MSGS + b"}}",
            '"params.max_tokens"',
        ),
        (
            b'{"custom_id":"b","params":{"model":"claude-haiku-4-5","max_tokens":18446744073709551616,'
            b'"messages":' + MSGS + b"}}",
            '"params.max_tokens"',
        ),
        (
            b'{"custom_id":"c","params":{"model":"claude-haiku-4-5","max_tokens":2147483648,"messages":' + MSGS + b"}}",
            '"params.max_tokens"',
        ),
        (
            b'{"model":"claude-haiku-4-5","max_tokens":123456789012345678901234567890,"messages":' + MSGS + b"}",
            '"max_tokens"',
        ),
        (b'{"model":"gemini-2.5-flash","max_tokens":99999999999999999999,"messages":' + MSGS + b"}", '"max_tokens"'),
    ],
)
def test_max_tokens_beyond_its_range_is_an_invalid_request_naming_the_field_and_range(line: bytes, where: str) -> None:
    for verdict in all_paths(line):
        assert isinstance(verdict, m.Invalid), verdict
        assert verdict.code == m.INVALID_REQUEST
        assert where in verdict.message
        assert f"at most {MAX_TOKENS:,}" in verdict.message


def test_max_tokens_at_the_top_of_its_range_passes() -> None:
    raw = dumps(anthropic_line("a", max_tokens=MAX_TOKENS))
    assert all(isinstance(v, m.Request) for v in all_paths(raw))


# -- model names --------------------------------------------------------------------------------

BIG = "gpt-" + "x" * 300_000


def gemini(model: str) -> dict[str, Any]:
    return {"key": "g", "request": {"model": model, "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}}


def bedrock(model: str) -> dict[str, Any]:
    return {"recordId": "b", "modelId": model, "modelInput": {"messages": []}}


@pytest.mark.parametrize(
    ("line", "provider"),
    [
        (gemini("gemini-2.5-flash#evil"), "gemini"),
        (gemini("gemini-2.5-flash/../../files"), "gemini"),
        (gemini("gemini-2.5-flash?alt=sse"), "gemini"),
        (gemini("gemini..flash"), "gemini"),
        (gemini("tunedModels/x"), "gemini"),
        (gemini("gemini-" + "x" * 200), "gemini"),
        (neutral_line("gemini-2.5-flash#x"), "gemini"),
        (neutral_line("models/gemini-2.5/flash"), "gemini"),
        (bedrock("not a model"), "bedrock"),
        (bedrock("amazon.nova-lite-v1:0#x"), "bedrock"),
        (bedrock("amazon." + "n" * 3000), "bedrock"),
        (neutral_line("amazon.nova-lite v1"), "bedrock"),
        (openai_line("o", model=BIG), "openai"),
        (openai_line("o", model="gpt 4o"), "openai"),
        (openai_line("o", model="gpt-4o\n"), "openai"),
        (anthropic_line("a", model="claude-haiku-4-5?x"), "anthropic"),
        (anthropic_line("a", model="claude-" + "x" * 300), "anthropic"),
        (neutral_line(BIG), "openai"),
        (neutral_line("claude-" + "é"), "anthropic"),
    ],
)
def test_a_model_name_its_provider_does_not_take_is_refused_on_every_path(line: dict[str, Any], provider: str) -> None:
    raw = dumps(line)
    for verdict in all_paths(raw):
        assert isinstance(verdict, m.Invalid), verdict
        assert verdict.code == m.INVALID_REQUEST
        assert f"is not one {provider} takes" in verdict.message
        assert len(verdict.message) < 400  # a 300 KB name is not copied into the error line


@pytest.mark.parametrize(
    ("line", "provider", "model"),
    [
        (gemini("gemini-2.5-flash-preview-05-20"), "gemini", "gemini-2.5-flash-preview-05-20"),
        (gemini("models/gemini-2.0-flash-001"), "gemini", "gemini-2.0-flash-001"),
        (neutral_line("models/gemini-2.5-flash"), "gemini", "gemini-2.5-flash"),
        (bedrock("amazon.nova-lite-v1:0"), "bedrock", "amazon.nova-lite-v1:0"),
        (bedrock("us.anthropic.claude-3-5-haiku-20241022-v1:0"), "bedrock", None),
        (
            bedrock("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-lite-v1:0"),
            "bedrock",
            None,
        ),
        (neutral_line("meta.llama3-1-8b-instruct-v1:0"), "bedrock", None),
        (openai_line("o", model="ft:gpt-4o-mini-2024-07-18:my-org:custom:9abc12"), "openai", None),
        (anthropic_line("a", model="claude-3-5-haiku-20241022"), "anthropic", None),
        (neutral_line("o3-mini"), "openai", None),
    ],
)
def test_real_model_names_still_route_and_pass(line: dict[str, Any], provider: str, model: str | None) -> None:
    for verdict in all_paths(dumps(line)):
        assert isinstance(verdict, m.Request), verdict
        assert verdict.provider == provider
        assert verdict.model == (model or verdict.model)


def test_an_azure_deployment_name_passes_in_the_azure_folder() -> None:
    v = Validator(providers={"azure": validator().providers["openai"]}, folder_provider="azure")
    verdict = v.check(1, dumps(openai_line("z", model="my_deployment.v2-east")))
    assert isinstance(verdict, m.Request)
    assert verdict.provider == "azure"
    assert reject(v, openai_line("y", model="my deployment")).code == m.INVALID_REQUEST


# -- the token estimate of `batchdrop validate` never fails on an accepted line ---------------------


@pytest.mark.parametrize(
    ("provider", "line"),
    [
        ("openai", openai_line("a", temperature=0.5, max_tokens=10)),
        ("gemini", {"key": "g", "request": {"contents": [{}], "generationConfig": [1, 2]}}),
        ("bedrock", {"recordId": "b", "modelInput": {"inferenceConfig": "x", "messages": []}}),
        ("anthropic", {"custom_id": "a", "params": {"max_tokens": True, "messages": []}}),
    ],
)
def test_estimate_tokens_takes_any_accepted_shape(provider: str, line: dict[str, Any]) -> None:
    tokens_in, cap = estimate_tokens(provider, dumps(line) + b"\n")
    assert tokens_in >= 1
    assert cap >= 0


def test_estimate_tokens_of_a_line_nested_deeper_than_orjson_writes() -> None:
    # Given an OpenAI line that passes through as it came, nesting 300 levels in a field we do not
    # read (orjson reads it; it writes only 254 levels)
    raw = (
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":'
        + nested(300)
        + b"}}\n"
    )
    tokens_in, cap = estimate_tokens("openai", raw)
    assert tokens_in >= len(raw) // 4
    assert cap == 1024


def test_batchdrop_validate_reports_a_number_beyond_a_double_instead_of_crashing(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        dumps(openai_line("ok1"))
        + b"\n"
        + huge_number_lines(b"1e999")["openai-content-part"]
        + b"\n"
        + deep_lines(1000)["anthropic-content"]
        + b"\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "batchdrop.cli", "validate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    report = done.stdout + done.stderr
    assert "64-bit float" in report
    assert "levels deep" in report
