"""Anthropic's fast path (`FastPath` in batchdrop.providers.spec): the strict schema of its batch line
and the loop that makes requests of decoded lines.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Annotated

import msgspec

from batchdrop import models as m
from batchdrop.providers.fast import Content, Count, Int, Model
from batchdrop.providers.lines import CUSTOM_ID
from batchdrop.providers.spec import FastChecks, FastPath

_ID_OK = CUSTOM_ID.fullmatch


class _Message(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: str
    content: Content


class _AnthropicParams(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    model: Model
    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]
    max_tokens: Count | None = None
    stream: bool | None = None
    system: Content | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: Int | None = None
    stop_sequences: list[str] | None = None


class _AnthropicLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    custom_id: str
    params: _AnthropicParams


def requests(
    v: FastChecks,
    target: str,
    limit: int,
    first: int,
    raws: Sequence[bytes],
    lines: Sequence[_AnthropicLine | None],
    ids_ok: bool,
    settle: bool,
) -> list[m.Request | m.Invalid | None]:
    """The requests of decoded Anthropic batch lines (None: did not decode), numbered from `first`, to
    `target` (as `Accept` in batchdrop.providers.spec, which says why the loop is written as it is)."""
    seen, remember = v.seen, v.remember
    full, check, Request, id_ok = v.full, v.check, m.Request, _ID_OK
    models_ok, model_ok = v.models_ok.get(target) or set(), v.model_ok
    out: list[m.Request | m.Invalid | None] = []
    add = out.append
    for number, raw, line in zip(itertools.count(first), raws, lines):
        if line is not None:
            custom_id, params = line.custom_id, line.params
            payload = raw if raw[-1] == 10 and raw[-2] == 125 and raw[0] == 123 else raw.strip() + b"\n"
            if (
                params.max_tokens is not None
                and not params.stream
                and len(payload) <= limit
                and (not remember or custom_id not in seen)
                and (ids_ok or id_ok(custom_id))
                and (params.model in models_ok or model_ok(target, params.model))
            ):
                if remember:
                    seen.add(custom_id)
                add(Request(number, custom_id, target, "", params.model, payload))
                continue
            add(full(number, raw) if settle else None)
        else:
            add(check(number, raw) if settle else None)
    return out


FAST = FastPath(
    marker=b'"params"',
    line=msgspec.json.Decoder(_AnthropicLine).decode,
    lines=msgspec.json.Decoder(list[_AnthropicLine | int]).decode,
    accept=requests,
)
