"""The one set of input-line builders and file writers the tests use, and verdicts on single lines.

Builders return a line as a dict (a test can still break it); `jsonl` writes lines as a file's bytes.
Tests of one provider's own shapes (tests/unit/test_gemini_bedrock_lines.py, the emulator contract
tests) spell their lines out where the shape is what they test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from batchdrop import models as m
from batchdrop.config import PROVIDER_DEFAULT_LIMITS, BatchLimits
from batchdrop.reader import LineTooLong
from batchdrop.validation import Validator

# -- builders ---------------------------------------------------------------------------------------


def openai_line(
    custom_id: Any = "req-1", model: str = "gpt-4o-mini", text: str = "hello", **body: Any
) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def anthropic_line(
    custom_id: Any = "req-1", model: str = "claude-haiku-4-5", text: str = "hello", **params: Any
) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}], **params},
    }


def neutral_line(model: str = "gpt-4o-mini", text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


# -- files ------------------------------------------------------------------------------------------


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def jsonl(lines: Iterable[dict[str, Any] | str | bytes]) -> bytes:
    """A JSONL file: dicts serialised, str and bytes lines written as they are, each ended by a newline."""
    out = []
    for line in lines:
        if isinstance(line, bytes):
            out.append(line)
        elif isinstance(line, str):
            out.append(line.encode())
        else:
            out.append(orjson.dumps(line))
    return b"\n".join(out) + b"\n"


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


# -- verdicts on one line ---------------------------------------------------------------------------


def validator(
    providers: Mapping[str, BatchLimits] | None = None,
    folder_provider: str | None = None,
    **kwargs: Any,
) -> Validator:
    """A validator with the documented provider limits."""
    return Validator(
        providers=dict(PROVIDER_DEFAULT_LIMITS if providers is None else providers),
        folder_provider=folder_provider,
        **kwargs,
    )


def accept(v: Validator, line: Any, number: int = 1) -> m.Request:
    """The verdict on one line, which the test expects to be a valid request."""
    raw = line if isinstance(line, bytes | LineTooLong) else dumps(line)
    verdict = v.check(number, raw)
    assert isinstance(verdict, m.Request), verdict
    return verdict


def reject(v: Validator, line: Any, number: int = 1) -> m.Invalid:
    """The verdict on one line, which the test expects to be invalid."""
    raw = line if isinstance(line, bytes | LineTooLong) else dumps(line)
    verdict = v.check(number, raw)
    assert isinstance(verdict, m.Invalid), verdict
    return verdict


def payload(request: m.Request) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(request.payload)
    return out
