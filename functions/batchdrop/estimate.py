"""The token and cost estimate of `batchdrop validate`, added up as the planning hands requests on.

Without the providers' tokenizers (not available offline), input is the JSON of a request's prompt
fields at CHARS_PER_TOKEN characters a token, output the request's own cap: the fields each
provider's spec names (TokenFields), read as `pricing.estimate_tokens` reads one line.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import orjson

from batchdrop import models as m
from batchdrop.pricing import (
    CAP_FIELDS,
    CHARS_PER_TOKEN,
    CONFIG_FIELDS,
    DEFAULT_OUTPUT_CAP,
    TEXT_FIELDS,
    CostMeter,
    Usage,
    estimate_tokens,
)
from batchdrop.providers import SPECS

# Requests counted one by one before the estimate samples, and the sampling rate past them.
EXACT_FIRST = 10_000
SAMPLE_EVERY = 32

# What a field the line does not set reads as (an empty Raw: no JSON value is empty).
_ABSENT = msgspec.Raw(b"")
# The fields of a request the estimate reads (every provider's, from the specs), each as its raw JSON:
# nothing under them is built into Python objects.
_Body = msgspec.defstruct(
    "_Body", [(name, msgspec.Raw, _ABSENT) for name in dict.fromkeys((*TEXT_FIELDS, *CAP_FIELDS, *CONFIG_FIELDS))]
)


def _lines_decoder(field_name: str) -> Callable[[bytes], Any]:
    """A decoder of a JSON array of batch lines that hold their request in `field_name`."""
    line = msgspec.defstruct(f"_Line_{field_name}", [(field_name, _Body), ("url", str, "")])
    return msgspec.json.Decoder(list[line]).decode  # type: ignore[valid-type]


_SHAPES = {name: (_lines_decoder(spec.tokens.body), spec.tokens.body) for name, spec in SPECS.items()}


def _cap(body: Any) -> int:
    """The request's own output cap, read as `pricing.estimate_tokens` reads it: a config object's
    value over the body's (the last config over the others), the first of the cap fields that is a
    whole number, at least 0."""
    configs = []
    for raw in map(getattr, itertools.repeat(body), reversed(CONFIG_FIELDS)):
        if raw:
            config = orjson.loads(bytes(raw))
            if isinstance(config, dict):
                configs.append(config)
    for name in CAP_FIELDS:
        for config in configs:
            if name in config:
                value = config[name]
                break
        else:
            raw = getattr(body, name)
            if not raw:
                continue
            value = orjson.loads(bytes(raw))
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return int(value)
    return DEFAULT_OUTPUT_CAP


class Estimate:
    """Tokens (input ≈, output ≤) and cost of the requests planned, added up a block at a time.

    Each request counts as `pricing.estimate_tokens` counts it (the JSON of its prompt fields at
    CHARS_PER_TOKEN characters a token, and its own output cap), except that the JSON is measured as
    the line wrote it (spaces after `:` and `,` included), not written again compactly. The fields are
    read raw, by one decode of a block's requests of one provider and model, and summed by C loops
    (map, Counter): no line is built into Python objects and no Python loop runs a line.

    The first `exact_first` requests are each counted; past them, one request in SAMPLE_EVERY of each
    block and model is, and the rest are taken to be like them: input in proportion to their bytes,
    output caps in proportion to their number (`sampled` is then True). A file of a million requests is
    estimated about as fast as it is validated; its figures are within a few percent of counting each,
    well inside what four characters a token is worth."""

    def __init__(self, meter: CostMeter, exact_first: int = EXACT_FIRST) -> None:
        self.meter = meter
        self.input_tokens = 0
        self.output_tokens = 0
        self.sampled = False
        self._exact_left = exact_first
        self._by_model: dict[tuple[str, str], list[int]] = {}
        # Each provider's estimated cost in the lane it would take (None: a model without a price),
        # filled in by `summary`.
        self.by_provider: dict[str, float | None] = {}

    def add_many(self, requests: Sequence[m.Request]) -> None:
        kinds = set(map(_PROVIDER_MODEL, requests))
        if len(kinds) == 1:
            provider, model = kinds.pop()
            self._add(provider, model, requests)
            return
        groups: dict[tuple[str, str], list[m.Request]] = {}
        for request in requests:
            groups.setdefault((request.provider, request.model), []).append(request)
        for (provider, model), group in groups.items():
            self._add(provider, model, group)

    def _add(self, provider: str, model: str, requests: Sequence[m.Request]) -> None:
        exact = min(self._exact_left, len(requests))
        self._exact_left -= exact
        tokens_in, tokens_out = self._each(provider, requests[:exact])
        rest = requests[exact:]
        if rest:
            self.sampled = True
            sample = rest[::SAMPLE_EVERY]
            sample_in, sample_out = self._each(provider, sample)
            sample_bytes = sum(map(len, map(_PAYLOAD, sample)))
            rest_bytes = sum(map(len, map(_PAYLOAD, rest)))
            tokens_in += round(sample_in * rest_bytes / sample_bytes)
            tokens_out += round(sample_out * len(rest) / len(sample))
        self.input_tokens += tokens_in
        self.output_tokens += tokens_out
        totals = self._by_model.setdefault((provider, model), [0, 0])
        totals[0] += tokens_in
        totals[1] += tokens_out

    def _each(self, provider: str, requests: Sequence[m.Request]) -> tuple[int, int]:
        """(input, output) tokens of `requests`, each counted."""
        if not requests:
            return 0, 0
        tokens_in, tokens_out = request_tokens(provider, requests)
        return sum(tokens_in), sum(tokens_out)

    def summary(self, lanes: Mapping[str, str] | None = None) -> dict[str, float | None]:
        """The cost with each provider's requests in its lane (`lanes`; batch when not named)."""
        lanes = lanes or {}
        meters: dict[str, CostMeter] = {}
        for (provider, model), (tokens_in, tokens_out) in self._by_model.items():
            lane = lanes.get(provider, "batch")
            # No cache is known before the answers come: all of it is priced as uncached input.
            usage = Usage(input_tokens=tokens_in, output_tokens=tokens_out)
            self.meter.add(model, usage, lane)
            meters.setdefault(provider, CostMeter(self.meter.table)).add(model, usage, lane)
        self.by_provider = {provider: meter.summary()["total"] for provider, meter in meters.items()}
        self._by_model = {}
        return self.meter.summary()


_PROVIDER_MODEL = operator.attrgetter("provider", "model")
_PAYLOAD = operator.attrgetter("payload")
_TEXT_GETTERS = [operator.attrgetter(name) for name in TEXT_FIELDS]
_FIRST_CAP = operator.attrgetter(CAP_FIELDS[0])
_CONFIG_GETTERS = [operator.attrgetter(name) for name in CONFIG_FIELDS]


def _caps(lines: Sequence[Any], bodies: Sequence[Any]) -> int:
    """The sum of the requests' output caps (`_cap` of each), by distinct first cap field (max_tokens)
    in the common case: no config object, no embeddings."""
    if any("embeddings" in url for url in {getattr(line, "url", "") for line in lines}):
        return sum(
            0 if "embeddings" in getattr(line, "url", "") else _cap(body)
            for line, body in zip(lines, bodies, strict=True)
        )
    if any(any(map(len, map(getter, bodies))) for getter in _CONFIG_GETTERS):
        return sum(map(_cap, bodies))
    total = 0
    for raw, count in Counter(map(bytes, map(_FIRST_CAP, bodies))).items():
        if raw.isdigit():  # digits alone: a whole number, at least 0, and the first cap field
            total += int(raw) * count
        else:
            total += sum(_cap(body) for body in bodies if bytes(_FIRST_CAP(body)) == raw)
    return total


def request_tokens(provider: str, requests: Sequence[m.Request]) -> tuple[list[int], list[int]]:
    """(input ≈, output ≤) tokens of each of `requests`, in its provider's batch-line format: one decode
    of the block and C loops in the common case. What `Estimate` adds up, and what a budget counts a
    request at (batchdrop.budget), so the two never disagree."""
    shape = _SHAPES.get(provider)
    lines = None
    if shape is not None:
        with contextlib.suppress(msgspec.MsgspecError, RecursionError):
            lines = shape[0](b"[" + b",".join(map(_PAYLOAD, requests)) + b"]")
    if shape is None or lines is None:
        # A block with a line the raw shape does not fit (a body that is not an object, say): each line
        # on its own, and the lines that still do not fit as pricing.estimate_tokens reads them.
        ins: list[int] = []
        outs: list[int] = []
        for request in requests:
            one: list[Any] | None = None
            if shape is not None:
                with contextlib.suppress(msgspec.MsgspecError, RecursionError):
                    one = shape[0](b"[" + request.payload + b"]")
            if one is None or shape is None:
                one_in, one_out = estimate_tokens(provider, request.payload)
            else:
                body = getattr(one[0], shape[1])
                one_in = sum(len(getter(body)) for getter in _TEXT_GETTERS) // CHARS_PER_TOKEN + 1
                one_out = _caps(one, [body])
            ins.append(one_in)
            outs.append(one_out)
        return ins, outs
    bodies = list(map(operator.attrgetter(shape[1]), lines))
    texts: list[int] | None = None
    for getter in _TEXT_GETTERS:
        lengths = list(map(len, map(getter, bodies)))
        if any(lengths):  # most lines set one or two of the fields
            texts = lengths if texts is None else list(map(operator.add, texts, lengths))
    tokens_in = list(map(operator.add, map(operator.floordiv, texts or [0] * len(bodies), _FOURS), _ONES))
    if any("embeddings" in url for url in set(map(_URL, lines))) or any(
        any(map(len, map(getter, bodies))) for getter in _CONFIG_GETTERS
    ):
        tokens_out = [
            0 if "embeddings" in getattr(line, "url", "") else _cap(body)
            for line, body in zip(lines, bodies, strict=True)
        ]
        return tokens_in, tokens_out
    # The common case: the first cap field (max_tokens) written as digits, a few distinct values a block.
    raws = list(map(bytes, map(_FIRST_CAP, bodies)))
    caps = {raw: int(raw) for raw in set(raws) if raw.isdigit()}
    if len(caps) == len(set(raws)):
        return tokens_in, list(map(caps.__getitem__, raws))
    return tokens_in, [caps[raw] if raw in caps else _cap(body) for raw, body in zip(raws, bodies, strict=True)]


_FOURS = itertools.repeat(CHARS_PER_TOKEN)
_ONES = itertools.repeat(1)
_URL = operator.attrgetter("url")
