"""Costs from reported usage. Prices change: each provider's are in its spec, and only there.

USD per million tokens at real-time rates, by kind of token (input, output, cached input, cache
writes), and the share of them batch work costs (`Price`). Users extend or override the table with
BATCHDROP_PRICES (JSON: {"model-prefix": [input, output], ...}, or a longer form with the cache rates:
`price_table`). A model not in the table gets a null cost, never a guess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from batchdrop.providers import SPECS
from batchdrop.providers.spec import Price, Usage

__all__ = [
    "BATCH_DISCOUNT",
    "CAP_FIELDS",
    "CHARS_PER_TOKEN",
    "CONFIG_FIELDS",
    "DEFAULT_OUTPUT_CAP",
    "ENV_PRICES",
    "PRICES",
    "TEXT_FIELDS",
    "CostMeter",
    "Price",
    "Usage",
    "cost",
    "estimate_tokens",
    "price_table",
    "realtime_price",
]

# What batch work costs of the real-time price unless a model's Price says otherwise.
BATCH_DISCOUNT = Price._field_defaults["batch"]
ENV_PRICES = "BATCHDROP_PRICES"

# Real-time list prices per million tokens, from each provider's spec (its folder's __init__.py);
# longest prefix wins.
PRICES: dict[str, Price] = {prefix: price for s in SPECS.values() for prefix, price in s.prices.items()}
# How each provider's model names differ from the table's (Gemini's "models/", Bedrock's regions).
_PRICE_MODEL = tuple(s.price_model for s in SPECS.values() if s.price_model is not None)
# The rates BATCHDROP_PRICES may name, in the order its list form gives them (the first four).
_RATES = Price._fields
_LIST_RATES = _RATES[:4]


def price_table(env: Mapping[str, str] | None = None) -> dict[str, Price]:
    """The spec's table with BATCHDROP_PRICES over it. A price is `[input, output]`,
    `[input, output, cached_input]` or `[input, output, cached_input, cache_write]` (USD per million
    tokens at real-time rates), or an object of those names plus `cache_write_1h` and `batch` (the share
    of them batch work costs, 0.5 unless set); a rate left out is the input rate."""
    env = os.environ if env is None else env
    table = dict(PRICES)
    raw = env.get(ENV_PRICES, "").strip()
    if raw:
        given = orjson.loads(raw)
        if not isinstance(given, dict):
            raise ValueError(f'{ENV_PRICES} must be a JSON object {{"model-prefix": [input, output], ...}}')
        for prefix, price in given.items():
            table[str(prefix)] = _price(str(prefix), price)
    return table


def _price(prefix: str, given: Any) -> Price:
    rates: dict[str, Any]
    if isinstance(given, list) and 2 <= len(given) <= len(_LIST_RATES):
        rates = dict(zip(_LIST_RATES, given, strict=False))
    elif isinstance(given, dict) and {"input", "output"} <= given.keys() <= set(_RATES):
        rates = dict(given)
    else:
        raise ValueError(
            f"{ENV_PRICES}: the price of {prefix!r} must be [input, output], [input, output, cached_input] or "
            "[input, output, cached_input, cache_write] in USD per million tokens, or an object of input, output, "
            f"cached_input, cache_write, cache_write_1h and batch; got {given!r}"
        )
    for name, value in rates.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{ENV_PRICES}: {prefix!r}'s {name} must be a number of at least 0, got {value!r}")
    return Price(**{name: float(value) for name, value in rates.items()})


def realtime_price(model: str, table: Mapping[str, Price]) -> Price | None:
    for name in _PRICE_MODEL:
        model = name(model)
    best = None
    for prefix, price in table.items():
        if model.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, price)
    return best[1] if best else None


def cost(price: Price, usage: Usage, lane: str = "realtime") -> float:
    """What `usage` costs in USD at `price`: each kind of token at its own rate, then, in the batch lane,
    the batch share of all of it (once)."""
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    written = min(usage.cache_write_input_tokens, usage.input_tokens - cached)
    written_1h = min(usage.cache_write_1h_input_tokens, written)
    write = price.input if price.cache_write is None else price.cache_write
    usd = (
        (usage.input_tokens - cached - written) * price.input
        + cached * (price.input if price.cached_input is None else price.cached_input)
        + (written - written_1h) * write
        + written_1h * (write if price.cache_write_1h is None else price.cache_write_1h)
        + usage.output_tokens * price.output
    ) / 1_000_000
    return usd if lane == "realtime" else usd * price.batch


class CostMeter:
    """Adds up usage per model and lane; the cost is null as soon as one used model has no known price.

    What was answered in the batch lane costs the batch price, in the real-time lane the full price;
    `realtime_equivalent` is all of it at the full price, and `saved` what the lanes taken saved on it."""

    def __init__(self, table: Mapping[str, Price]) -> None:
        self.table = table
        self.realtime = 0.0
        self.realtime_lane = 0.0
        self.batch_lane = 0.0
        self.unknown: set[str] = set()
        # Each model's price, looked up once: a file names a few models on many lines.
        self._prices: dict[str, Price | None] = {}

    def add(self, model: str, usage: Usage, lane: str = "batch") -> None:
        try:
            price = self._prices[model]
        except KeyError:
            price = self._prices[model] = realtime_price(model, self.table)
        if price is None:
            self.unknown.add(model)
            return
        full = cost(price, usage)
        self.realtime += full
        if lane == "realtime":
            self.realtime_lane += full
        else:
            # The provider's batch share of each kind, not one discount over the job: models differ.
            self.batch_lane += full * price.batch

    def summary(self) -> dict[str, float | None]:
        if self.unknown:
            return {"batch": None, "realtime": None, "total": None, "realtime_equivalent": None, "saved": None}
        total = self.batch_lane + self.realtime_lane
        return {
            "batch": round(self.batch_lane, 6),
            "realtime": round(self.realtime_lane, 6),
            "total": round(total, 6),
            "realtime_equivalent": round(self.realtime, 6),
            "saved": round(self.realtime - total, 6),
        }


# Without the providers' tokenizers (they are not available offline), input is estimated at four
# characters a token; output at the request's own cap, or this when it sets none.
CHARS_PER_TOKEN = 4
DEFAULT_OUTPUT_CAP = 1024
# Where any provider's request keeps its text, its sampling settings and its output cap (each spec's
# TokenFields, together: a line is read for all of them whatever its provider).
TEXT_FIELDS = tuple(dict.fromkeys(k for s in SPECS.values() for k in s.tokens.text))
CONFIG_FIELDS = tuple(dict.fromkeys(k for s in SPECS.values() for k in s.tokens.configs))
CAP_FIELDS = tuple(dict.fromkeys(k for s in SPECS.values() for k in s.tokens.caps))


def estimate_tokens(provider: str, payload: bytes) -> tuple[int, int]:
    """(input tokens ≈, output tokens ≤) of one request in its provider's batch-line format.

    Never raises: it is an estimate, made for `batchdrop validate` on whatever validation accepted
    (fields it does not check may hold any JSON, nested as deep as orjson reads but deeper than it
    writes)."""
    try:
        line = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return len(payload) // CHARS_PER_TOKEN + 1, DEFAULT_OUTPUT_CAP
    if not isinstance(line, dict):
        return len(payload) // CHARS_PER_TOKEN + 1, DEFAULT_OUTPUT_CAP
    spec = SPECS.get(provider)
    body = line.get(spec.tokens.body if spec is not None else "body")
    body = body if isinstance(body, dict) else {}
    text = 0
    for key in TEXT_FIELDS:
        if key in body:
            try:
                text += len(orjson.dumps(body[key]))
            except TypeError:  # nested deeper than orjson writes: the whole line is an upper bound
                text += len(payload)
    caps = dict(body)
    for config in CONFIG_FIELDS:
        if isinstance(body.get(config), dict):
            caps.update(body[config])
    cap = next(
        (
            caps[k]
            for k in CAP_FIELDS
            if isinstance(caps.get(k), int) and not isinstance(caps[k], bool) and caps[k] >= 0
        ),
        DEFAULT_OUTPUT_CAP,
    )
    if "embeddings" in str(line.get("url", "")):
        cap = 0
    return text // CHARS_PER_TOKEN + 1, cap
