"""The contract of docs/contract.md "Input lines": every validation code, the line shapes, neutral mapping, routing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchdrop import models as m
from batchdrop.config import PROVIDER_DEFAULT_LIMITS, BatchLimits, parse_routes
from batchdrop.planner import ENVELOPE_BYTES
from batchdrop.reader import BOM, LineTooLong, iter_lines
from batchdrop.validation import NoIds, Validator
from tests.lines import accept, anthropic_line, dumps, neutral_line, openai_line, payload, reject, validator

MB = 1024 * 1024


def verdicts(data: bytes, v: Validator | None = None) -> list[m.Request | m.Invalid]:
    return checked(iter_lines([data], 32 * MB), v)


def checked(
    lines: Iterable[tuple[int, bytes | LineTooLong]], v: Validator | None = None
) -> list[m.Request | m.Invalid]:
    """Every non-blank line's verdict, in order, as submit's scan sees them."""
    v = v or validator()
    return [verdict for number, raw in lines if (verdict := v.check(number, raw)) is not None]


# -- the line shapes, valid ------------------------------------------------------------------------


def test_openai_line_passes_through_byte_identical() -> None:
    # Given an OpenAI batch line with its own key order, spacing and surrounding whitespace
    raw = b'  {"custom_id": "q-1", "method": "POST", "url": "/v1/chat/completions",  "body": {"model": "gpt-4o-mini",'
    raw += b' "messages": [{"role": "user", "content": "caf\xc3\xa9"}], "max_tokens": 5}}\t'
    # When it is validated
    request = accept(validator(), raw, number=7)
    # Then its payload is the line itself, unchanged but for the stripped whitespace, with a newline
    assert request.payload == raw.strip() + b"\n"
    assert (request.line, request.custom_id, request.provider, request.model) == (7, "q-1", "openai", "gpt-4o-mini")
    assert request.group == "/v1/chat/completions gpt-4o-mini"


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/responses", {"model": "gpt-4.1", "input": "hello"}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hello"}),
        ("/v1/moderations", {"model": "omni-moderation-latest", "input": "hello"}),
    ],
)
def test_openai_line_accepts_every_supported_endpoint(url: str, body: dict[str, Any]) -> None:
    request = accept(validator(), {"custom_id": "e1", "method": "POST", "url": url, "body": body})
    assert request.provider == "openai"
    assert request.group == f"{url} {body['model']}"


def test_openai_line_routes_to_openai_whatever_the_model_name() -> None:
    # The shape decides the provider: an Azure-style deployment name needs no route.
    request = accept(validator(), openai_line("d1", model="my-deployment"))
    assert request.provider == "openai"


def test_anthropic_line_with_max_tokens_passes_through_byte_identical() -> None:
    raw = dumps(anthropic_line("a-1", max_tokens=200, temperature=0.2))
    request = accept(validator(), raw + b"\r")
    assert request.payload == raw + b"\n"
    assert (request.custom_id, request.provider, request.model, request.group) == (
        "a-1",
        "anthropic",
        "claude-haiku-4-5",
        "",
    )


def test_anthropic_line_without_max_tokens_gets_the_default() -> None:
    # Given an Anthropic batch line that leaves out max_tokens
    line = anthropic_line("a-2")
    del line["params"]["max_tokens"]
    # When it is validated with a configured default
    request = accept(validator(anthropic_default_max_tokens=777), line)
    # Then the request carries the default and is otherwise the same line
    out = payload(request)
    assert out["params"]["max_tokens"] == 777
    assert out["custom_id"] == "a-2"
    assert {k: v for k, v in out["params"].items() if k != "max_tokens"} == line["params"]


def test_mixed_shapes_in_one_file() -> None:
    data = b"\n".join([dumps(openai_line("o1")), dumps(anthropic_line("a1")), dumps(neutral_line("claude-sonnet-4-5"))])
    result = verdicts(data)
    assert all(isinstance(r, m.Request) for r in result)
    assert [(r.line, r.provider) for r in result if isinstance(r, m.Request)] == [
        (1, "openai"),
        (2, "anthropic"),
        (3, "anthropic"),
    ]


# -- neutral lines: mapping -----------------------------------------------------------------------


def test_neutral_to_openai_chat_maps_system_max_tokens_stop_and_tools() -> None:
    # Given a neutral line with every optional field, for an OpenAI model
    line = neutral_line(
        "gpt-4o-mini",
        text="What is the weather?",
        custom_id="n-1",
        system="Be brief.",
        max_tokens=100,
        temperature=1.5,
        top_p=0.9,
        stop="END",
        tools=[
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    )
    # When it is validated
    request = accept(validator(), line)
    # Then it is an OpenAI chat completions batch line
    out = payload(request)
    assert (out["custom_id"], out["method"], out["url"]) == ("n-1", "POST", "/v1/chat/completions")
    assert request.group == "/v1/chat/completions gpt-4o-mini"
    body = out["body"]
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the weather?"},
    ]
    assert body["max_completion_tokens"] == 100
    assert "max_tokens" not in body
    assert body["temperature"] == 1.5
    assert body["top_p"] == 0.9
    assert body["stop"] == ["END"]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]


def test_neutral_to_openai_without_max_tokens_sets_no_limit() -> None:
    body = payload(accept(validator(), neutral_line("gpt-4o-mini")))["body"]
    assert "max_completion_tokens" not in body
    assert "max_tokens" not in body


def test_neutral_to_anthropic_maps_system_max_tokens_stop_and_tools() -> None:
    line = neutral_line(
        "claude-sonnet-4-5",
        text="What is the weather?",
        custom_id="n-2",
        system="Be brief.",
        max_tokens=300,
        temperature=0.5,
        stop=["END", "STOP"],
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
    )
    request = accept(validator(), line)
    out = payload(request)
    assert out["custom_id"] == "n-2"
    assert request.provider == "anthropic"
    assert request.group == ""
    params = out["params"]
    assert params["model"] == "claude-sonnet-4-5"
    assert params["system"] == "Be brief."
    assert params["messages"] == [{"role": "user", "content": "What is the weather?"}]
    assert params["max_tokens"] == 300
    assert params["temperature"] == 0.5
    assert params["stop_sequences"] == ["END", "STOP"]
    assert "stop" not in params
    assert params["tools"] == [{"name": "get_weather", "description": "", "input_schema": {"type": "object"}}]


def test_neutral_to_anthropic_without_max_tokens_takes_the_configured_default() -> None:
    params = payload(accept(validator(anthropic_default_max_tokens=2048), neutral_line("claude-haiku-4-5")))["params"]
    assert params["max_tokens"] == 2048


def test_neutral_to_anthropic_moves_leading_system_messages_into_system() -> None:
    line = {
        "model": "claude-haiku-4-5",
        "system": "Rule one.",
        "messages": [
            {"role": "system", "content": "Rule two."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
        ],
    }
    params = payload(accept(validator(), line))["params"]
    assert params["system"] == "Rule one.\n\nRule two."
    assert [msg["role"] for msg in params["messages"]] == ["user", "assistant", "user"]
    assert params["messages"][2]["content"] == [{"type": "text", "text": "again"}]


def test_neutral_line_without_custom_id_gets_line_number_id() -> None:
    data = b"\n\n" + dumps(neutral_line("gpt-4o-mini")) + b"\n" + dumps(neutral_line("claude-haiku-4-5"))
    result = verdicts(data)
    assert [(r.line, r.custom_id) for r in result] == [(3, "line-3"), (4, "line-4")]
    assert all(isinstance(r, m.Request) for r in result)
    assert [orjson.loads(r.payload)["custom_id"] for r in result if isinstance(r, m.Request)] == ["line-3", "line-4"]


def test_neutral_line_with_null_custom_id_gets_line_number_id() -> None:
    assert accept(validator(), neutral_line(custom_id=None), number=5).custom_id == "line-5"


# -- routing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("claude-haiku-4-5", "anthropic"),
        ("claude-3-7-sonnet-latest", "anthropic"),
        ("gpt-4o-mini", "openai"),
        ("gpt-5", "openai"),
        ("o1-mini", "openai"),
        ("o3", "openai"),
        ("o4-mini", "openai"),
        ("chatgpt-4o-latest", "openai"),
    ],
)
def test_neutral_line_is_routed_by_model_prefix(model: str, provider: str) -> None:
    request = accept(validator(), neutral_line(model))
    assert request.provider == provider
    assert request.model == model


def test_folder_provider_overrides_the_prefix_table() -> None:
    # Given a file under inputs/anthropic/ naming a model no route knows (and one routed to OpenAI)
    v = validator(folder_provider="anthropic")
    # Then both go to Anthropic
    assert accept(v, neutral_line("my-fine-tuned-model", custom_id="a")).provider == "anthropic"
    assert accept(v, neutral_line("gpt-4o-mini", custom_id="b")).provider == "anthropic"


def test_folder_provider_does_not_reroute_provider_batch_lines() -> None:
    v = validator(folder_provider="anthropic")
    assert accept(v, openai_line("o-1")).provider == "openai"


def test_configured_routes_take_precedence_over_the_defaults() -> None:
    v = validator(routes=parse_routes("gpt-oss=anthropic,llama=openai"))
    assert accept(v, neutral_line("gpt-oss-120b", custom_id="a")).provider == "anthropic"
    assert accept(v, neutral_line("llama-3.3-70b", custom_id="b")).provider == "openai"
    assert accept(v, neutral_line("gpt-4o", custom_id="c")).provider == "openai"


# -- blank lines, BOM, CRLF, line numbers ---------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"   ", b"\t \t", b"\r"])
def test_blank_and_whitespace_only_lines_are_skipped(raw: bytes) -> None:
    assert validator().check(1, raw) is None


def test_line_numbers_count_blank_lines_bom_and_crlf() -> None:
    # Given a file with a BOM, CRLF endings and blank lines between requests
    data = BOM + b"\r\n".join(
        [
            dumps(openai_line("o1")),
            b"",
            b"   ",
            b"not json",
            dumps(anthropic_line("a1")),
            b"",
        ]
    )
    # When it is read and validated
    result = verdicts(data)
    # Then blank lines produce nothing but are counted in the physical line numbers
    assert [(r.line, type(r).__name__) for r in result] == [(1, "Request"), (4, "Invalid"), (5, "Request")]
    assert isinstance(result[0], m.Request)
    assert result[0].payload == dumps(openai_line("o1")) + b"\n"


# -- the twelve validation codes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe{}",
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "caf\xe9"}]}',
        b'{"custom_id": "x", "params": {"model": "claude-haiku-4-5", "system": "\x80"}}',
    ],
)
def test_invalid_encoding(raw: bytes) -> None:
    invalid = reject(validator(), raw, number=3)
    assert invalid.code == m.INVALID_ENCODING
    assert invalid.line == 3
    assert "UTF-8" in invalid.message
    assert f"byte {raw.index(next(bytes([b]) for b in raw if b >= 0x80)) + 1}" in invalid.message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "gpt-4o-mini", "temperature": NaN, "messages": []}',
        b'{"model": "gpt-4o-mini", "temperature": Infinity}',
        b"-Infinity",
        b'{"custom_id": "a", "params": {"model": "claude-haiku-4-5"',
        b"{'custom_id': 'single quotes'}",
        b'{"a": 1} {"b": 2}',
        b'{"a": 1,}',
    ],
)
def test_invalid_json(raw: bytes) -> None:
    invalid = reject(validator(), raw)
    assert invalid.code == m.INVALID_JSON
    assert invalid.custom_id is None
    assert "not valid JSON" in invalid.message
    assert "character" in invalid.message
    assert "one complete JSON object" in invalid.message


def test_invalid_json_message_points_at_the_truncation() -> None:
    raw = b'{"custom_id": "a", "params": {'
    invalid = reject(validator(), raw)
    assert f"character {len(raw) + 1}" in invalid.message


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'[{"custom_id": "a"}]', "an array"),
        (b"42", "a number"),
        (b"3.5", "a number"),
        (b'"hello"', "a string"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_not_an_object(raw: bytes, kind: str) -> None:
    invalid = reject(validator(), raw)
    assert invalid.code == m.NOT_AN_OBJECT
    assert "JSON object" in invalid.message
    assert invalid.message.endswith(kind)


@pytest.mark.parametrize(
    "obj",
    [{}, {"custom_id": "x"}, {"prompt": "hi", "engine": "davinci"}, {"contents": [{"parts": [{"text": "hi"}]}]}],
)
def test_unknown_format(obj: dict[str, Any]) -> None:
    invalid = reject(validator(), obj)
    assert invalid.code == m.UNKNOWN_FORMAT
    # The message names the accepted shapes and the keys it found.
    assert "OpenAI batch line" in invalid.message
    assert "Anthropic batch line" in invalid.message
    assert "neutral line" in invalid.message
    assert "keys found: " + (", ".join(sorted(obj)) or "none") in invalid.message


def test_unknown_format_keeps_a_valid_custom_id() -> None:
    assert reject(validator(), {"custom_id": "x", "prompt": "hi"}).custom_id == "x"


@pytest.mark.parametrize(
    "line",
    [
        {k: v for k, v in openai_line().items() if k != "custom_id"},
        openai_line(None),
        {k: v for k, v in anthropic_line().items() if k != "custom_id"},
        anthropic_line(None),
    ],
)
def test_missing_custom_id_for_provider_lines(line: dict[str, Any]) -> None:
    invalid = reject(validator(), line)
    assert invalid.code == m.MISSING_CUSTOM_ID
    assert "custom_id" in invalid.message
    assert "64" in invalid.message


@pytest.mark.parametrize(
    "custom_id",
    ["has space", "a" * 65, "", "naïve", "slash/id", "dot.id", 42, ["a"], True, {"id": "a"}],
)
@pytest.mark.parametrize("shape", ["openai", "anthropic", "neutral"])
def test_invalid_custom_id(custom_id: Any, shape: str) -> None:
    line = {
        "openai": openai_line(custom_id),
        "anthropic": anthropic_line(custom_id),
        "neutral": neutral_line(custom_id=custom_id),
    }[shape]
    invalid = reject(validator(), line)
    assert invalid.code == m.INVALID_CUSTOM_ID
    assert "letters, digits, _ or -" in invalid.message
    assert "64" in invalid.message
    # A custom_id that is a string is echoed back; anything else is not.
    assert invalid.custom_id == (custom_id if isinstance(custom_id, str) else None)


def test_custom_id_of_exactly_64_allowed_characters_is_valid() -> None:
    custom_id = "aZ09_-" * 10 + "abcd"
    assert len(custom_id) == 64
    assert accept(validator(), openai_line(custom_id)).custom_id == custom_id


def test_duplicate_custom_id_across_shapes() -> None:
    v = validator()
    accept(v, openai_line("same"), number=1)
    invalid = reject(v, anthropic_line("same"), number=2)
    assert invalid.code == m.DUPLICATE_CUSTOM_ID
    assert invalid.custom_id == "same"
    assert "'same'" in invalid.message
    assert "earlier line" in invalid.message


def test_generated_line_id_colliding_with_an_earlier_explicit_id_is_a_duplicate() -> None:
    # Given line 1 names its request "line-3", and line 3 is a neutral line without custom_id
    data = b"\n".join([dumps(openai_line("line-3")), b"", dumps(neutral_line("claude-haiku-4-5"))])
    # When the file is validated
    first, third = verdicts(data)
    # Then the generated id collides and line 3 is reported as a duplicate
    assert isinstance(first, m.Request)
    assert isinstance(third, m.Invalid)
    assert (third.line, third.code) == (3, m.DUPLICATE_CUSTOM_ID)
    assert "line-3" in third.message


def test_explicit_id_colliding_with_an_earlier_generated_id_is_a_duplicate() -> None:
    data = dumps(neutral_line()) + b"\n" + dumps(anthropic_line("line-1"))
    first, second = verdicts(data)
    assert isinstance(first, m.Request)
    assert first.custom_id == "line-1"
    assert isinstance(second, m.Invalid)
    assert second.code == m.DUPLICATE_CUSTOM_ID


def test_an_invalid_line_does_not_reserve_its_custom_id() -> None:
    # The first line is never submitted, so the id is still free for the corrected line below it.
    v = validator()
    assert reject(v, openai_line("fixme", stream=True), number=1).code == m.INVALID_REQUEST
    assert accept(v, openai_line("fixme"), number=2).custom_id == "fixme"


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}, "body.model"),
        (openai_line("a", model=""), "body.model"),
        ({"custom_id": "a", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}}, "params"),
        ({"messages": [{"role": "user", "content": "hi"}]}, '"model"'),
        ({"model": None, "messages": [{"role": "user", "content": "hi"}]}, '"model"'),
    ],
)
def test_missing_model(line: dict[str, Any], where: str) -> None:
    invalid = reject(validator(), line)
    assert invalid.code == m.MISSING_MODEL
    assert where in invalid.message
    assert "missing" in invalid.message


def test_model_that_is_not_a_string_is_an_invalid_request() -> None:
    invalid = reject(validator(), neutral_line(model=4))  # type: ignore[arg-type]
    assert invalid.code == m.INVALID_REQUEST
    assert "string" in invalid.message


def test_unknown_provider_for_an_unrouted_model() -> None:
    invalid = reject(validator(), neutral_line("llama-3.3-70b", custom_id="q"))
    assert invalid.code == m.UNKNOWN_PROVIDER
    assert invalid.custom_id == "q"
    assert "llama-3.3-70b" in invalid.message
    # How to fix it: a provider folder or a route.
    assert "inputs/<provider>/" in invalid.message
    assert "BATCHDROP_ROUTES" in invalid.message


@pytest.mark.parametrize(
    "line", [neutral_line("claude-haiku-4-5"), anthropic_line("a1"), neutral_line("my-model", custom_id="z")]
)
def test_unknown_provider_when_the_provider_is_not_enabled(line: dict[str, Any]) -> None:
    # Given a deployment with only OpenAI enabled (the last line is in an inputs/anthropic/ folder)
    v = validator(providers={"openai": PROVIDER_DEFAULT_LIMITS["openai"]})
    v.folder_provider = "anthropic" if line.get("model") == "my-model" else None
    invalid = reject(v, line)
    assert invalid.code == m.UNKNOWN_PROVIDER
    assert "'anthropic'" in invalid.message
    assert "not enabled" in invalid.message
    assert "enabled: openai" in invalid.message


def test_unknown_provider_for_an_openai_line_when_openai_is_not_enabled() -> None:
    invalid = reject(validator(providers={"anthropic": PROVIDER_DEFAULT_LIMITS["anthropic"]}), openai_line("o1"))
    assert invalid.code == m.UNKNOWN_PROVIDER
    assert "enabled: anthropic" in invalid.message


@pytest.mark.parametrize(
    "url", ["/v1/images/generations", "/v1/audio/speech", "/v1/chat/completions/", "v1/chat/completions", None, 3]
)
def test_unsupported_endpoint(url: Any) -> None:
    line = openai_line("o1")
    line["url"] = url
    invalid = reject(validator(), line)
    assert invalid.code == m.UNSUPPORTED_ENDPOINT
    assert invalid.custom_id == "o1"
    assert '"url"' in invalid.message
    # How to fix it: the supported endpoints are listed.
    assert "/v1/chat/completions" in invalid.message
    assert "/v1/embeddings" in invalid.message


def _with(line: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    line = orjson.loads(orjson.dumps(line))
    target = line
    *parents, last = path.split(".")
    for key in parents:
        target = target[key]
    target[last] = value
    return line


INVALID_REQUESTS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("openai method GET", _with(openai_line("a"), "method", "GET"), ['"method"', "POST", '"GET"']),
    ("openai body not an object", _with(openai_line("a"), "body", "hi"), ['"body"', "JSON object"]),
    ("openai body a list", _with(openai_line("a"), "body", [1]), ['"body"', "an array"]),
    ("openai stream", _with(openai_line("a"), "body.stream", True), ["stream", "false", "cannot stream"]),
    ("openai extra field", {**openai_line("a"), "priority": 1}, ["priority", "unexpected"]),
    (
        "anthropic stream",
        _with(anthropic_line("a"), "params.stream", True),
        ["params.stream", "cannot stream"],
    ),
    ("anthropic params not object", _with(anthropic_line("a"), "params", None), ['"params"', "null"]),
    ("anthropic extra field", {**anthropic_line("a"), "metadata": {}}, ["metadata", "Anthropic"]),
    (
        "anthropic messages empty",
        _with(anthropic_line("a"), "params.messages", []),
        ["params.messages", "non-empty"],
    ),
    (
        "anthropic max_tokens zero",
        _with(anthropic_line("a"), "params.max_tokens", 0),
        ["params.max_tokens", "at least 1", "got 0"],
    ),
    ("neutral extra field", neutral_line(response_format={"type": "json_object"}), ["response_format"]),
    ("neutral stream", neutral_line(stream=True), ["stream", "provider's batch line"]),
    (
        "neutral anthropic temperature 1.5",
        neutral_line("claude-haiku-4-5", temperature=1.5),
        ["temperature", "0 to 1", "1.5"],
    ),
    ("neutral openai temperature 2.5", neutral_line(temperature=2.5), ["temperature", "0 to 2"]),
    ("neutral temperature a string", neutral_line(temperature="hot"), ["temperature"]),
    ("neutral top_p 1.2", neutral_line(top_p=1.2), ["top_p", "0 to 1"]),
    ("neutral max_tokens negative", neutral_line(max_tokens=-3), ['"max_tokens"', "at least 1"]),
    ("neutral max_tokens float", neutral_line(max_tokens=1.5), ['"max_tokens"', "whole number"]),
    ("neutral max_tokens bool", neutral_line("claude-haiku-4-5", max_tokens=True), ['"max_tokens"']),
    (
        "neutral anthropic system after user",
        {
            "model": "claude-haiku-4-5",
            "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late rule"}],
        },
        ['"messages"[1]', "system message", '"system"'],
    ),
    (
        "neutral anthropic only system",
        {"model": "claude-haiku-4-5", "messages": [{"role": "system", "content": "rule"}]},
        ["only system", "user message"],
    ),
    (
        "neutral image content",
        neutral_line(
            "gpt-4o",
        )
        | {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    ],
                }
            ]
        },
        ['"messages"[0].content', "images", "provider's own batch line"],
    ),
    (
        "neutral anthropic image content",
        neutral_line("claude-haiku-4-5")
        | {
            "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "AAAA"}}]}]
        },
        ["images"],
    ),
    ("neutral messages missing", {"model": "gpt-4o"}, ['"messages"', "non-empty list"]),
    ("neutral messages empty", neutral_line() | {"messages": []}, ['"messages"', "non-empty list"]),
    ("neutral message not object", neutral_line() | {"messages": ["hi"]}, ['"messages"[0]', "role"]),
    ("neutral message no content", neutral_line() | {"messages": [{"role": "user"}]}, ["no", "content"]),
    ("neutral role tool", neutral_line() | {"messages": [{"role": "tool", "content": "x"}]}, ["'tool'"]),
    ("neutral stop a number", neutral_line(stop=3), ['"stop"', "list of strings"]),
    ("neutral tools not a list", neutral_line(tools={"name": "f"}), ['"tools"', "list"]),
    ("neutral tool without schema", neutral_line(tools=[{"name": "f"}]), ['"tools"[0]', "parameters"]),
    (
        "neutral system an image",
        neutral_line("claude-haiku-4-5", system=[{"type": "image"}]),
        ['"system"'],
    ),
]


@pytest.mark.parametrize(
    ("line", "words"), [case[1:] for case in INVALID_REQUESTS], ids=[case[0] for case in INVALID_REQUESTS]
)
def test_invalid_request(line: dict[str, Any], words: list[str]) -> None:
    invalid = reject(validator(), line, number=9)
    assert (invalid.line, invalid.code) == (9, m.INVALID_REQUEST)
    for word in words:
        assert word in invalid.message


def test_request_too_large_for_a_line_over_the_reader_cap() -> None:
    invalid = reject(validator(), LineTooLong(40 * MB), number=12)
    assert (invalid.line, invalid.code, invalid.custom_id) == (12, m.REQUEST_TOO_LARGE, None)
    assert "41,943,040 bytes" in invalid.message
    assert "shorten" in invalid.message


@pytest.mark.parametrize("shape", ["openai", "anthropic", "neutral-openai", "neutral-anthropic"])
def test_request_too_large_for_the_providers_byte_limit(shape: str) -> None:
    # Given providers whose batches hold at most 4 KB, and a 5 KB prompt
    small = {name: BatchLimits(max_requests=10, max_bytes=4096) for name in ("openai", "anthropic")}
    text = "x" * 5000
    line = {
        "openai": openai_line("big", text=text),
        "anthropic": anthropic_line("big", text=text),
        "neutral-openai": neutral_line("gpt-4o", text=text, custom_id="big"),
        "neutral-anthropic": neutral_line("claude-haiku-4-5", text=text, custom_id="big"),
    }[shape]
    # Then the line is refused before it reaches a batch
    invalid = reject(validator(providers=small), line)
    assert invalid.code == m.REQUEST_TOO_LARGE
    assert invalid.custom_id == "big"
    assert "4,096" in invalid.message
    assert "bytes" in invalid.message


def test_largest_request_that_fits_a_batch_with_its_envelope_is_accepted() -> None:
    # The planner counts the batch envelope and the newline against max_bytes: the validator must too,
    # or a request it accepts would make a batch over the limit.
    limit = 4096
    small = {"openai": BatchLimits(max_requests=10, max_bytes=limit)}
    base = len(dumps(openai_line("big", text="")))
    fits = openai_line("big", text="x" * (limit - ENVELOPE_BYTES - 1 - base))
    too_big = openai_line("big", text="x" * (limit - ENVELOPE_BYTES - base))
    assert len(accept(validator(providers=small), fits).payload) + ENVELOPE_BYTES == limit
    assert reject(validator(providers=small), too_big).code == m.REQUEST_TOO_LARGE
    # The same whether the line comes with its newline (as read from a file) or without (a last line)
    assert len(accept(validator(providers=small), dumps(fits) + b"\n").payload) + ENVELOPE_BYTES == limit
    assert reject(validator(providers=small), dumps(too_big) + b"\n").code == m.REQUEST_TOO_LARGE
    assert reject(validator(providers=small), dumps(too_big) + b"\r\n").code == m.REQUEST_TOO_LARGE


def test_messages_say_where_the_problem_is() -> None:
    # An error's line number and custom_id travel with it; the message names the offending field.
    invalid = reject(validator(), _with(openai_line("abc"), "body.stream", True), number=42)
    assert (invalid.line, invalid.custom_id) == (42, "abc")
    assert "body.stream" in invalid.message


def test_long_values_are_shortened_in_messages() -> None:
    invalid = reject(validator(), openai_line("x" * 500))
    assert invalid.code == m.INVALID_CUSTOM_ID
    assert len(invalid.message) < 200
    assert "..." in invalid.message


def test_blank_lines_have_no_verdict_and_the_rest_keep_their_order() -> None:
    lines: list[tuple[int, bytes | LineTooLong]] = [
        (1, b""),
        (2, dumps(openai_line("a"))),
        (3, LineTooLong(99)),
        (4, b"  "),
        (5, b"[]"),
    ]
    result = checked(lines)
    assert [(r.line, r.code if isinstance(r, m.Invalid) else "ok") for r in result] == [
        (2, "ok"),
        (3, m.REQUEST_TOO_LARGE),
        (5, m.NOT_AN_OBJECT),
    ]


# -- the fast path agrees with the full check ---------------------------------------------------

_IDS: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["a", "q-1", "x_y", "has space", "", "é", "a" * 64, "a" * 65, "a\n"]), st.integers(-5, 5)
)
_ANY: st.SearchStrategy[Any] = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.text(max_size=4), st.just([]))


@settings(max_examples=500)
@given(
    custom_id=_IDS,
    method=st.sampled_from(["POST", "GET", "post", 1]),
    url=st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v2/chat", None]),
    model=st.sampled_from(["gpt-4o-mini", "", None, 3]),
    stream=_ANY,
    extra=st.dictionaries(st.sampled_from(["x", "metadata"]), _ANY, max_size=1),
    params_shape=st.booleans(),
    max_tokens=_ANY,
    messages=st.sampled_from([[], [{"role": "user", "content": "hi"}], [{"role": "user"}], "hi", [1]]),
    padding=st.sampled_from(["", " ", "\t"]),
    ending=st.sampled_from(["", "\n", "\r\n", " \n"]),
)
def test_the_fast_path_accepts_only_what_the_full_check_accepts_and_alike(
    custom_id: Any,
    method: Any,
    url: Any,
    model: Any,
    stream: Any,
    extra: dict[str, Any],
    params_shape: bool,
    max_tokens: Any,
    messages: Any,
    padding: str,
    ending: str,
) -> None:
    # Given an OpenAI or Anthropic batch line with any of its checked fields right or wrong, and any
    # ending
    if params_shape:
        params: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream}
        line: dict[str, Any] = {"custom_id": custom_id, "params": params, **extra}
    else:
        body = {"model": model, "messages": messages, "stream": stream}
        line = {"custom_id": custom_id, "method": method, "url": url, "body": body, **extra}
    raw = padding.encode() + dumps(line) + padding.encode() + ending.encode()
    # When the fast path and the full check judge it
    fast = validator(seen=NoIds()).fast(5, raw)
    full = validator(seen=NoIds()).full(5, raw)
    # Then the fast path passes a line only when the full check accepts it, and builds the same request
    if fast is not None:
        assert isinstance(full, m.Request), (line, full)
        assert fast == full


# -- a block decoded whole says what its lines say one by one -------------------------------------

_POOL: list[bytes | LineTooLong] = [
    dumps(openai_line("a")),
    dumps(openai_line("b", text="é")),
    dumps(openai_line("c")) + b" ",
    dumps(openai_line("d", stream=True)),
    dumps(openai_line("e\nf")),  # a newline in an id, which must not pass as two right ids
    dumps(openai_line("g" * 65)),
    dumps(openai_line(7)),
    dumps(anthropic_line("a")),
    dumps(anthropic_line("h")),
    dumps({"custom_id": "i", "params": {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "x"}]}}),
    dumps(neutral_line()),
    b"",
    b"   ",
    b'{"custom_id": "j", "method": "POST"',
    b'{"custom_id":"k","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":"\xff"}}',
    LineTooLong(40_000_000),
    # Lines that are not one JSON value each, but that joined with their neighbours could read as a
    # well-formed array of lines: two objects on one line, and a string or an array left open on one
    # line and closed on the next.
    dumps(openai_line("m1")) + b"," + dumps(openai_line("m2")),
    b'{"custom_id":"n1","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[],"z":"}',
    b'{"}}',
    b'{"custom_id":"o1","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[1',
    b"2]}}",
    # Long lines: a block of them is decoded one line at a time.
    dumps(openai_line("p", text="long " * 600)),
    dumps(anthropic_line("q", text="long " * 600)),
    dumps(openai_line("r", text="é" * 1500)),
    # Lines that a block's schema reads where `fast` alone would leave them to the full check: a
    # "body" field inside Anthropic params, and a key spelt with an escape.
    dumps(anthropic_line("s", body=1)),
    b'{"custom_id":"t","method":"POST","url":"/v1/chat/completions","b\\u006fdy":{"model":"m","messages":[]}}',
]
# Lines as the reader yields them, with their endings ("\n", "\r\n"; a file's last line may have none).
_POOL += [line + b"\n" for line in _POOL if isinstance(line, bytes)]
_POOL += [dumps(openai_line("u")) + b"\r\n", dumps(anthropic_line("v", text="long " * 600)) + b" \r\n", b"\r\n"]


@settings(max_examples=400)
@given(
    blocks=st.lists(st.lists(st.sampled_from(range(len(_POOL))), min_size=1, max_size=8), min_size=1, max_size=12),
    same=st.sampled_from(range(len(_POOL))),
    remember=st.booleans(),
)
def test_a_block_checked_whole_gets_the_verdicts_of_its_lines_checked_one_by_one(
    blocks: list[list[int]], same: int, remember: bool
) -> None:
    # Given blocks of lines of every kind, valid or not, some runs of one line repeated (the case
    # decoded whole), read one after the other as from one file
    blocks = [*blocks, [same] * 5]
    whole = validator(seen=set() if remember else NoIds())
    each = validator(seen=set() if remember else NoIds())
    alone = validator(seen=set() if remember else NoIds())
    number = 1
    for picks in blocks:
        lines = [_POOL[i] for i in picks]
        # When a block is checked whole (or a decode a line, as long lines are) and its lines one by one
        got = whole.check_block(number, lines)
        got_each = each._each_line(number, lines)
        expected = [alone.check(n, raw) for n, raw in enumerate(lines, number)]
        # Then the verdicts are the same, duplicates found across blocks included
        assert got == expected, lines
        assert got_each == expected, lines
        number += len(lines)


def test_a_block_of_well_formed_lines_is_decoded_whole() -> None:
    v = validator(seen=NoIds())
    lines = [dumps(openai_line(f"r{i}")) for i in range(50)]
    verdicts = v._whole_block(1, lines)
    assert verdicts is not None
    assert [r.custom_id for r in verdicts if isinstance(r, m.Request)] == [f"r{i}" for i in range(50)]
    assert v._whole_block(1, [*lines, b""]) is None, "a blank line breaks the array: the block goes line by line"


def test_lines_that_only_joined_make_a_well_formed_array_are_each_refused() -> None:
    # Given two objects on one line, then a string left open on one line and closed on the next:
    # joined by commas, three items for three lines, each one a well-formed OpenAI batch line
    lines: list[bytes | LineTooLong] = [_POOL[16], _POOL[17], _POOL[18]]
    # When the block is checked
    verdicts = validator(seen=NoIds()).check_block(1, lines)
    # Then no line is taken for a request: each is refused as the broken JSON it is
    assert [v.code if isinstance(v, m.Invalid) else v for v in verdicts] == [m.INVALID_JSON] * 3


@pytest.mark.parametrize("remember", [True, False])
def test_a_block_judged_in_slices_gets_the_verdicts_of_its_lines_one_by_one(remember: bool) -> None:
    # Given a reader's block of ~1 MB of short lines (many slices), with a broken line, a line of
    # another shape, a line too long, and ids used again in a later slice
    lines: list[bytes | LineTooLong] = [dumps(openai_line(f"r{i}", text="x" * 300)) + b"\n" for i in range(3000)]
    lines[5] = b'{"custom_id":"r5","method":"POST"\n'
    lines[1500] = dumps(openai_line("r7")) + b"\n"
    lines[2000] = dumps(anthropic_line("a1")) + b"\n"
    lines[2500] = LineTooLong(40_000_000)
    lines[2999] = dumps(openai_line("r1")) + b"\n"
    whole = validator(seen=set() if remember else NoIds())
    slices: list[int] = []
    judge = whole._slice

    def counted(first: int, part: Sequence[bytes | LineTooLong]) -> list[m.Request | m.Invalid | None]:
        slices.append(len(part))
        return judge(first, part)

    whole._slice = counted  # type: ignore[method-assign,assignment]
    # When it is checked as a block, and line by line
    got = whole.check_block(1, lines)
    alone = validator(seen=set() if remember else NoIds())
    # Then the verdicts are the same (duplicates found across slices), in more than one slice
    assert got == [alone.check(n, raw) for n, raw in enumerate(lines, 1)]
    assert len(slices) > 1
    assert sum(slices) == len(lines)
    codes = [v.code for v in got if isinstance(v, m.Invalid)]
    dup = [m.DUPLICATE_CUSTOM_ID] if remember else []
    assert codes == [m.INVALID_JSON, *dup, m.REQUEST_TOO_LARGE, *dup]


@pytest.mark.parametrize("text", ["short", "long " * 600])
def test_lines_with_fields_beyond_the_chat_schema_get_the_verdicts_of_their_lines_one_by_one(text: str) -> None:
    # Given blocks of OpenAI lines, some with only the fields most chat lines set, some with fields
    # only the full schema names (valid or not), in runs and mixed
    def one(i: int, **body: Any) -> bytes:
        raw = dumps(openai_line(f"f{i}", text=text, **body)) + b"\n"
        return raw.replace(b'"HUGE_INT"', b"18446744073709551616").replace(b'"HUGE"', b"1e999")

    extras: list[dict[str, Any]] = [
        {},
        {"seed": 7, "user": "u"},
        {"n": 2, "stop": ["x"]},
        {"seed": "HUGE_INT"},
        {"presence_penalty": "HUGE"},
        {"max_tokens": 5, "temperature": 0.5},
    ]
    blocks = [
        [one(i) for i in range(40)],
        [one(100 + i, **extras[i % len(extras)]) for i in range(60)],
        [one(200 + i, seed=i) for i in range(40)],
        [one(300 + i) for i in range(40)],
    ]
    whole, alone = validator(seen=set()), validator(seen=set())
    number = 1
    for lines in blocks:
        # When each block is checked as a block and its lines one by one
        got = whole.check_block(number, lines)
        expected = [alone.check(n, raw) for n, raw in enumerate(lines, number)]
        # Then the verdicts are the same
        assert got == expected
        number += len(lines)
    huge = alone.check(1, one(999, presence_penalty="HUGE"))
    assert isinstance(huge, m.Invalid)
    assert huge.code == m.INVALID_JSON


_BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"]


@settings(max_examples=300, deadline=None)
@given(
    shape=st.sampled_from(["openai", "anthropic", "openai-parts", "anthropic-system"]),
    text=st.sampled_from(["hi", "é" * 3, "long " * 300]),
    bad=st.sampled_from(_BAD_UTF8),
    where=st.floats(0, 1),
    ending=st.sampled_from([b"", b"\n"]),
)
def test_invalid_utf8_anywhere_in_a_line_is_refused_on_every_path(
    shape: str, text: str, bad: bytes, where: float, ending: bytes
) -> None:
    # Given a well-formed line, with bytes that are not UTF-8 put anywhere in it (in a string, a
    # key, a value, between tokens): the fast paths no longer check the bytes themselves, msgspec
    # checks every string it decodes, and the strict schemas skip nothing
    if shape == "openai":
        line = openai_line("u1", text=text)
    elif shape == "openai-parts":
        line = openai_line("u1", text=text)
        line["body"]["messages"][0]["content"] = [{"type": "text", "text": text}]
    elif shape == "anthropic":
        line = anthropic_line("u1", text=text)
    else:
        line = anthropic_line("u1", text=text, system=text)
    good = dumps(line)
    at = int(where * len(good))
    raw = good[:at] + bad + good[at:] + ending
    # When every path judges it
    full = validator(seen=NoIds()).full(2, raw)
    # Then none passes it: it is refused as the full check refuses it
    assert isinstance(full, m.Invalid)
    assert validator(seen=NoIds()).fast(2, raw) is None
    twin = (dumps(anthropic_line("t1")) if shape.startswith("anthropic") else dumps(openai_line("t1"))) + b"\n"
    block: list[bytes | LineTooLong] = [twin, raw, twin.replace(b"t1", b"t2")]
    expected = [validator(seen=NoIds()).check(n, r) for n, r in enumerate(block, 1)]
    assert validator(seen=NoIds()).check_block(1, block) == expected
    assert validator(seen=NoIds())._each_line(1, block) == expected
    assert expected[1] == full


# -- hostile values (issue 13): the fast path and the block path agree with the full check -------

_HOSTILE_NUMBERS = [b"64", b"1e999", b"-1E+400", b"1" + b"0" * 400, b"123456789012345678901234567890", b"2147483648"]
_HOSTILE_MODELS = ["gpt-4o-mini", "claude-haiku-4-5", "gpt 4o", "gpt-4o#x", "x" * 300, "ft:gpt-4o-mini:org:n:1"]


@st.composite
def _hostile_line(draw: st.DrawFn) -> bytes:
    """An OpenAI or Anthropic batch line with one hostile value (a number beyond a double or 64 bits,
    nesting past the depth limit, an odd model name) where the fast paths look or where they skip."""
    number = draw(st.sampled_from(_HOSTILE_NUMBERS))
    model = draw(st.sampled_from(_HOSTILE_MODELS)).encode()
    depth = draw(st.sampled_from([1, 250, 255, 1000, 1100]))
    nest = b"[" * depth + b"]" * depth
    where = draw(st.sampled_from(["max_tokens", "content", "unknown", "nested", "temperature", "seed", "n"]))
    custom_id = draw(st.sampled_from([b'"h1"', b'"h2"']))
    if where == "max_tokens":
        extra = b',"max_tokens":' + number
    elif where == "temperature":
        extra = b',"temperature":' + number
    elif where in ("seed", "n"):  # fields only the full OpenAI schema names
        extra = b',"%s":' % where.encode() + number
    elif where == "unknown":
        extra = b',"metadata":{"n":' + number + b"}"
    elif where == "nested":
        extra = b',"metadata":' + nest
    else:
        extra = b""
    content = b'[{"type":"text","text":"x","n":' + number + b"}]" if where == "content" else b'"hi"'
    messages = b'[{"role":"user","content":' + content + b"}]"
    if draw(st.booleans()):
        inner = b'{"model":"' + model + b'","max_tokens":5,"messages":' + messages + extra + b"}"
        return (
            b'{"custom_id":'
            + custom_id
            + b',"params":'
            + inner.replace(b'"max_tokens":5,', b"", extra.startswith(b',"max_tokens"'))
            + b"}"
        )
    body = b'{"model":"' + model + b'","messages":' + messages + extra + b"}"
    return b'{"custom_id":' + custom_id + b',"method":"POST","url":"/v1/chat/completions","body":' + body + b"}"


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_hostile_line(), min_size=1, max_size=6), ending=st.sampled_from([b"", b"\n"]))
def test_hostile_values_get_the_verdict_of_the_full_check_on_every_path(lines: list[bytes], ending: bytes) -> None:
    raws: list[bytes | LineTooLong] = [raw + ending for raw in lines]
    for raw in raws:
        assert isinstance(raw, bytes)
        fast = validator(seen=NoIds()).fast(5, raw)
        full = validator(seen=NoIds()).full(5, raw)
        if fast is not None:
            assert fast == full, raw[:200]
    expected = [validator(seen=NoIds()).full(n, raw) for n, raw in enumerate(raws, 1)]  # type: ignore[arg-type]
    assert validator(seen=NoIds()).check_block(1, raws) == expected
    assert validator(seen=NoIds())._each_line(1, raws) == expected
