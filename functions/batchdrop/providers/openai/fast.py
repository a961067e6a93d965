"""OpenAI's fast path (`FastPath` in batchdrop.providers.spec): the strict schemas of its batch line
and the loop that makes requests of decoded lines. Azure OpenAI's lines take it too (the line shape
is OpenAI's; they go to Azure by the file's folder).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import msgspec

from batchdrop import models as m
from batchdrop.providers.fast import Content, Count, Int, Model, Strings
from batchdrop.providers.lines import CUSTOM_ID
from batchdrop.providers.openai import EMBEDDINGS_URL, Endpoint, embedding_inputs
from batchdrop.providers.spec import FastChecks, FastPath

_ID_OK = CUSTOM_ID.fullmatch


class _OpenAIMessage(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: str
    content: Content | None = None
    name: str | None = None


class _OpenAIBody(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    model: Model
    stream: bool | None = None
    messages: list[_OpenAIMessage] | None = None
    input: Strings | None = None
    prompt: Strings | None = None
    instructions: str | None = None
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    max_output_tokens: Count | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: Count | None = None
    seed: Int | None = None
    stop: Strings | None = None
    user: str | None = None
    logprobs: bool | None = None
    top_logprobs: Int | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    dimensions: Count | None = None
    encoding_format: str | None = None


class _OpenAILine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    custom_id: str
    method: Literal["POST"]
    url: Endpoint
    body: _OpenAIBody


class _OpenAIChat(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The fields of `_OpenAIBody` a chat line mostly sets, tried first by the block paths: msgspec
    fills in and frees every field a struct has, set or not."""

    model: Model
    stream: bool | None = None
    messages: list[_OpenAIMessage] | None = None
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: float | None = None
    top_p: float | None = None


class _OpenAIChatLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    custom_id: str
    method: Literal["POST"]
    url: Endpoint
    body: _OpenAIChat


def requests(
    v: FastChecks,
    target: str,
    limit: int,
    first: int,
    raws: Sequence[bytes],
    lines: Sequence[_OpenAILine | _OpenAIChatLine | None],
    ids_ok: bool,
    settle: bool,
) -> list[m.Request | m.Invalid | None]:
    """The requests of decoded OpenAI batch lines (None: did not decode), numbered from `first`, to
    `target`: OpenAI, or Azure OpenAI for files under inputs/azure/ (as `Accept` in
    batchdrop.providers.spec, which says why the loop is written as it is)."""
    seen, remember = v.seen, v.remember
    full, check, Request, id_ok = v.full, v.check, m.Request, _ID_OK
    models_ok, model_ok = v.models_ok.get(target) or set(), v.model_ok
    out: list[m.Request | m.Invalid | None] = []
    add = out.append
    for number, raw, line in zip(itertools.count(first), raws, lines):
        if line is not None:
            custom_id, body = line.custom_id, line.body
            # The payload is the line as it came, "{...}\n", unless it has other whitespace around.
            payload = raw if raw[-1] == 10 and raw[-2] == 125 and raw[0] == 123 else raw.strip() + b"\n"
            if (
                not body.stream
                and len(payload) <= limit
                and (not remember or custom_id not in seen)
                and (ids_ok or id_ok(custom_id))
                and (body.model in models_ok or model_ok(target, body.model))
            ):
                if remember:
                    seen.add(custom_id)
                model, url = body.model, line.url
                if url != EMBEDDINGS_URL:
                    add(Request(number, custom_id, target, f"{url} {model}", model, payload))
                else:
                    # Only the full body has `input`: a line with it never decodes as the narrow one.
                    inputs = embedding_inputs(body.input)  # type: ignore[union-attr]
                    add(Request(number, custom_id, target, f"{url} {model}", model, payload, inputs))
                continue
            add(full(number, raw) if settle else None)
        else:
            add(check(number, raw) if settle else None)
    return out


FAST = FastPath(
    marker=b'"body"',
    line=msgspec.json.Decoder(_OpenAILine).decode,
    lines=msgspec.json.Decoder(list[_OpenAILine | int]).decode,
    accept=requests,
    narrow_line=msgspec.json.Decoder(_OpenAIChatLine).decode,
    narrow_lines=msgspec.json.Decoder(list[_OpenAIChatLine | int]).decode,
)
