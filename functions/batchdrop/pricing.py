"""Cost estimates from reported usage. Prices change: each provider's are in its spec, and only there.

USD per million tokens at real-time rates; batch work costs BATCH_DISCOUNT of that. Users extend
or override the table with BATCHDROP_PRICES (JSON: {"model-prefix": [input, output], ...}).
A model not in the table gets a null cost, never a guess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import orjson

from batchdrop.providers import SPECS

BATCH_DISCOUNT = 0.5
ENV_PRICES = "BATCHDROP_PRICES"

# Real-time list prices (input, output) per million tokens, from each provider's spec (its
# folder's __init__.py); longest prefix wins.
PRICES: dict[str, tuple[float, float]] = {prefix: price for s in SPECS.values() for prefix, price in s.prices.items()}
# How each provider's model names differ from the table's (Gemini's "models/", Bedrock's regions).
_PRICE_MODEL = tuple(s.price_model for s in SPECS.values() if s.price_model is not None)


def price_table(env: Mapping[str, str] | None = None) -> dict[str, tuple[float, float]]:
    env = os.environ if env is None else env
    table = dict(PRICES)
    raw = env.get(ENV_PRICES, "").strip()
    if raw:
        for prefix, pair in orjson.loads(raw).items():
            table[str(prefix)] = (float(pair[0]), float(pair[1]))
    return table


def realtime_price(model: str, table: Mapping[str, tuple[float, float]]) -> tuple[float, float] | None:
    for name in _PRICE_MODEL:
        model = name(model)
    best = None
    for prefix, price in table.items():
        if model.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, price)
    return best[1] if best else None


class CostMeter:
    """Adds up usage per model and lane; the cost is null as soon as one used model has no known price.

    What was answered in the batch lane costs the batch price, in the real-time lane the full price;
    `realtime_equivalent` is all of it at the full price, and `saved` what the lanes taken saved on it."""

    def __init__(self, table: Mapping[str, tuple[float, float]]) -> None:
        self.table = table
        self.realtime = 0.0
        self.realtime_lane = 0.0
        self.unknown: set[str] = set()
        # Each model's price, looked up once: a file names a few models on many lines.
        self._prices: dict[str, tuple[float, float] | None] = {}

    def add(self, model: str, input_tokens: int, output_tokens: int, lane: str = "batch") -> None:
        try:
            price = self._prices[model]
        except KeyError:
            price = self._prices[model] = realtime_price(model, self.table)
        if price is None:
            self.unknown.add(model)
            return
        cost = (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
        self.realtime += cost
        if lane == "realtime":
            self.realtime_lane += cost

    def summary(self) -> dict[str, float | None]:
        if self.unknown:
            return {"batch": None, "realtime": None, "total": None, "realtime_equivalent": None, "saved": None}
        batch = (self.realtime - self.realtime_lane) * BATCH_DISCOUNT
        total = batch + self.realtime_lane
        return {
            "batch": round(batch, 6),
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
