"""Cost estimates: batch price is half the real-time one; an unknown model's cost is null, never a guess."""

from __future__ import annotations

import pytest

from batchdrop.pricing import ENV_PRICES, PRICES, CostMeter, Price, Usage, estimate_tokens, price_table, realtime_price


def test_known_model_costs_half_its_realtime_price() -> None:
    # Given 1M input and 1M output tokens of gpt-4o-mini ($0.15 and $0.60 per million in real time)
    meter = CostMeter(PRICES)
    meter.add("gpt-4o-mini", Usage(1_000_000, 1_000_000))
    # Then the batch cost is half of the real-time equivalent, and the rest is saved
    assert meter.summary() == {
        "batch": 0.375,
        "realtime": 0.0,
        "total": 0.375,
        "realtime_equivalent": 0.75,
        "saved": 0.375,
    }


def test_the_real_time_lane_costs_full_price_and_saves_nothing() -> None:
    meter = CostMeter(PRICES)
    meter.add("gpt-4o", Usage(1_000_000, 0), "realtime")
    meter.add("gpt-4o", Usage(1_000_000, 0), "batch")
    summary = meter.summary()
    full = PRICES["gpt-4o"].input
    assert summary["realtime"] == pytest.approx(full)
    assert summary["batch"] == pytest.approx(full / 2)
    assert summary["total"] == pytest.approx(full * 1.5)
    assert summary["realtime_equivalent"] == pytest.approx(full * 2)
    assert summary["saved"] == pytest.approx(full / 2)


def test_costs_add_up_across_models() -> None:
    meter = CostMeter({"a": Price(1.0, 2.0), "b": Price(10.0, 0.0)})
    meter.add("a-1", Usage(500_000, 250_000))  # 0.5 + 0.5
    meter.add("b-2", Usage(100_000, 999))  # 1.0 + 0
    meter.add("a-1", Usage(0, 0))
    assert meter.summary() == {
        "batch": 1.0,
        "realtime": 0.0,
        "total": 1.0,
        "realtime_equivalent": 2.0,
        "saved": 1.0,
    }


def test_unknown_model_makes_every_cost_null() -> None:
    # Given one known and one unknown model
    meter = CostMeter(PRICES)
    meter.add("gpt-4o-mini", Usage(1000, 1000))
    meter.add("llama-3.3-70b", Usage(1000, 1000))
    # Then no partial figure is given
    assert meter.summary() == {
        "batch": None,
        "realtime": None,
        "total": None,
        "realtime_equivalent": None,
        "saved": None,
    }
    assert meter.unknown == {"llama-3.3-70b"}


def test_unknown_model_with_no_tokens_still_makes_the_cost_null() -> None:
    meter = CostMeter(PRICES)
    meter.add("mystery", Usage(0, 0))
    assert meter.summary()["batch"] is None


def test_nothing_used_costs_zero() -> None:
    assert CostMeter(PRICES).summary() == {
        "batch": 0.0,
        "realtime": 0.0,
        "total": 0.0,
        "realtime_equivalent": 0.0,
        "saved": 0.0,
    }


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("gpt-4o-mini-2024-07-18", PRICES["gpt-4o-mini"]),
        ("gpt-4o-2024-08-06", PRICES["gpt-4o"]),
        ("gpt-4.1-nano", PRICES["gpt-4.1-nano"]),
        ("gpt-4.1-2025-04-14", PRICES["gpt-4.1"]),
        ("o3-mini", PRICES["o3-mini"]),
        ("claude-haiku-4-5-20251001", PRICES["claude-haiku-4-5"]),
    ],
)
def test_longest_matching_prefix_wins(model: str, price: Price) -> None:
    assert realtime_price(model, PRICES) == price


def test_model_matching_no_prefix_has_no_price() -> None:
    assert realtime_price("mistral-large", PRICES) is None
    assert realtime_price("cohere.command-r-v1:0", PRICES) is None
    assert realtime_price("", PRICES) is None


def test_bedrock_inference_profiles_and_gemini_resource_names_price_as_their_model() -> None:
    assert realtime_price("us.amazon.nova-lite-v1:0", PRICES) == PRICES["amazon.nova-lite"]
    assert realtime_price("eu.anthropic.claude-3-5-haiku-20241022-v1:0", PRICES) == PRICES["anthropic.claude-3-5-haiku"]
    assert realtime_price("models/gemini-2.5-flash-lite", PRICES) == PRICES["gemini-2.5-flash-lite"]


def test_estimates_read_each_providers_own_output_cap() -> None:
    gemini = (
        b'{"key":"a","request":{"contents":[{"parts":[{"text":"hello"}]}],"generationConfig":{"maxOutputTokens":7}}}'
    )
    nova = (
        b'{"recordId":"a","modelInput":{"messages":[{"role":"user","content":[{"text":"hi"}]}],'
        b'"inferenceConfig":{"maxTokens":9}}}'
    )
    llama = b'{"recordId":"a","modelInput":{"prompt":"hello there","max_gen_len":11}}'
    assert estimate_tokens("gemini", gemini)[1] == 7
    assert estimate_tokens("bedrock", nova)[1] == 9
    assert estimate_tokens("bedrock", llama) == (len(b'"hello there"') // 4 + 1, 11)


def test_prices_from_the_environment_extend_and_override_the_table() -> None:
    table = price_table({ENV_PRICES: '{"my-model": [1, 2], "gpt-4o-mini": [0.5, 1.5]}'})
    assert table["my-model"] == Price(1.0, 2.0)
    assert table["gpt-4o-mini"] == Price(0.5, 1.5)
    assert table["gpt-4o"] == PRICES["gpt-4o"]
    # The module table itself is left alone.
    assert PRICES["gpt-4o-mini"] == Price(0.15, 0.60, cached_input=0.075)


def test_empty_price_environment_gives_the_default_table() -> None:
    assert price_table({ENV_PRICES: "  "}) == PRICES
    assert price_table({}) == PRICES
