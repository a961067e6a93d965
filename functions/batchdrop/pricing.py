"""Cost estimates from reported usage. Prices change: keep them here, and only here.

USD per million tokens at real-time rates; batch work costs BATCH_DISCOUNT of that. Users extend
or override the table with BATCHDROP_PRICES (JSON: {"model-prefix": [input, output], ...}).
A model not in the table gets a null cost, never a guess.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import orjson

BATCH_DISCOUNT = 0.5
ENV_PRICES = "BATCHDROP_PRICES"

# Real-time list prices (input, output) per million tokens, late 2026; longest prefix wins.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-pro": (1.25, 10.00),
    # Bedrock on-demand prices in us-east-1 (batch inference is half of these).
    "anthropic.claude-3-haiku": (0.25, 1.25),
    "anthropic.claude-3-5-haiku": (0.80, 4.00),
    "anthropic.claude-haiku-4-5": (1.00, 5.00),
    "anthropic.claude-3-7-sonnet": (3.00, 15.00),
    "anthropic.claude-sonnet-4": (3.00, 15.00),
    "amazon.nova-micro": (0.035, 0.14),
    "amazon.nova-lite": (0.06, 0.24),
    "amazon.nova-pro": (0.80, 3.20),
    "meta.llama3-1-8b-instruct": (0.22, 0.22),
    "meta.llama3-1-70b-instruct": (0.72, 0.72),
    "meta.llama3-3-70b-instruct": (0.72, 0.72),
}
# Bedrock's cross-region inference profiles ("us.amazon.nova-lite-v1:0") cost what the model does.
_GEOGRAPHY = re.compile(r"^[a-z]+\.(?=(?:anthropic|amazon|meta)\.)")


def price_table(env: Mapping[str, str] | None = None) -> dict[str, tuple[float, float]]:
    env = os.environ if env is None else env
    table = dict(PRICES)
    raw = env.get(ENV_PRICES, "").strip()
    if raw:
        for prefix, pair in orjson.loads(raw).items():
            table[str(prefix)] = (float(pair[0]), float(pair[1]))
    return table


def realtime_price(model: str, table: Mapping[str, tuple[float, float]]) -> tuple[float, float] | None:
    model = _GEOGRAPHY.sub("", model.removeprefix("models/"))
    best = None
    for prefix, price in table.items():
        if model.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, price)
    return best[1] if best else None


class CostMeter:
    """Adds up usage per model; the cost is null as soon as one used model has no known price."""

    def __init__(self, table: Mapping[str, tuple[float, float]]) -> None:
        self.table = table
        self.realtime = 0.0
        self.unknown: set[str] = set()

    def add(self, model: str, input_tokens: int, output_tokens: int) -> None:
        price = realtime_price(model, self.table)
        if price is None:
            self.unknown.add(model)
            return
        self.realtime += (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000

    def summary(self) -> dict[str, float | None]:
        if self.unknown:
            return {"batch": None, "realtime_equivalent": None, "saved": None}
        batch = self.realtime * BATCH_DISCOUNT
        return {
            "batch": round(batch, 6),
            "realtime_equivalent": round(self.realtime, 6),
            "saved": round(self.realtime - batch, 6),
        }


# Without the providers' tokenizers (they are not available offline), input is estimated at four
# characters a token; output at the request's own cap, or this when it sets none.
CHARS_PER_TOKEN = 4
DEFAULT_OUTPUT_CAP = 1024


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
    body = line.get({"anthropic": "params", "gemini": "request", "bedrock": "modelInput"}.get(provider, "body"))
    body = body if isinstance(body, dict) else {}
    text = 0
    for key in ("system", "messages", "input", "prompt", "instructions", "tools", "contents", "systemInstruction"):
        if key in body:
            try:
                text += len(orjson.dumps(body[key]))
            except TypeError:  # nested deeper than orjson writes: the whole line is an upper bound
                text += len(payload)
    caps = dict(body)
    for config in ("generationConfig", "inferenceConfig"):
        if isinstance(body.get(config), dict):
            caps.update(body[config])
    cap = next(
        (
            caps[k]
            for k in (
                "max_tokens",
                "max_completion_tokens",
                "max_output_tokens",
                "maxOutputTokens",
                "maxTokens",
                "max_gen_len",
            )
            if isinstance(caps.get(k), int) and not isinstance(caps[k], bool) and caps[k] >= 0
        ),
        DEFAULT_OUTPUT_CAP,
    )
    if "embeddings" in str(line.get("url", "")):
        cap = 0
    return text // CHARS_PER_TOKEN + 1, cap
