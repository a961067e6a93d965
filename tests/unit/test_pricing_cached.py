"""Cached input and cache writes priced at their own rates, per provider, from the usage each reports
(docs/costs.md "Cached tokens"): each figure below is worked out by hand from the providers' list prices,
so a test fails if cached tokens were charged as input, or the batch discount applied twice or not at all."""

from __future__ import annotations

from typing import Any

import pytest

from batchdrop.outputs import extract
from batchdrop.pricing import ENV_PRICES, PRICES, CostMeter, Price, Usage, cost, price_table, realtime_price

M = 1_000_000


def priced(model: str, body: dict[str, Any], lane: str = "batch") -> dict[str, float | None]:
    """summary.json's cost_usd of one answer."""
    meter = CostMeter(PRICES)
    meter.add(model, extract(body)[1], lane)
    return meter.summary()


def chat(prompt: int, cached: int, completion: int, cache_write: int = 0) -> dict[str, Any]:
    details = {"cached_tokens": cached, "audio_tokens": 0, "cache_write_tokens": cache_write}
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "prompt_tokens_details": details}
    return {"object": "chat.completion", "choices": [{"message": {"content": "ok"}}], "usage": usage}


def message(input_tokens: int, read: int, written: int, output: int, written_1h: int = 0) -> dict[str, Any]:
    usage = {
        "input_tokens": input_tokens,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
        "cache_creation": {"ephemeral_5m_input_tokens": written - written_1h, "ephemeral_1h_input_tokens": written_1h},
        "output_tokens": output,
    }
    return {"type": "message", "content": [{"type": "text", "text": "ok"}], "usage": usage}


def test_openai_cached_tokens_are_a_part_of_the_prompt_at_the_cached_rate() -> None:
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output; 1M prompt tokens, 400k of them cached
    cost_usd = priced("gpt-4o-mini-2024-07-18", chat(M, 400_000, 0))
    realtime = 0.6 * 0.15 + 0.4 * 0.075  # 0.12; all of it as input would be 0.15
    assert cost_usd["realtime_equivalent"] == pytest.approx(realtime)
    assert cost_usd["batch"] == pytest.approx(realtime / 2)  # not 0.075 (all input), 0.03 (halved twice), 0.12
    assert cost_usd["saved"] == pytest.approx(realtime / 2)


def test_openai_cache_writes_cost_the_input_rate_on_models_that_bill_none() -> None:
    # "No additional cache-write fee" before GPT-5.6: written tokens are charged as any input
    assert priced("gpt-4.1", chat(M, 0, 0, cache_write=M))["batch"] == pytest.approx(2.00 / 2)


def test_the_responses_api_reports_cached_tokens_in_input_tokens_details() -> None:
    body = {
        "object": "response",
        "output": [],
        "usage": {"input_tokens": M, "input_tokens_details": {"cached_tokens": M}, "output_tokens": 0},
    }
    assert extract(body)[1] == Usage(M, 0, cached_input_tokens=M)
    # gpt-5: $1.25 input, $0.125 cached
    assert priced("gpt-5", body)["batch"] == pytest.approx(0.125 / 2)


def test_anthropic_cache_reads_and_writes_are_priced_apart_from_input_and_added_to_it() -> None:
    # claude-haiku-4-5: $1 input, $1.25 5-minute writes, $2 1-hour writes, $0.10 reads, $5 output
    body = message(input_tokens=100_000, read=800_000, written=100_000, output=10_000)
    assert extract(body)[1] == Usage(M, 10_000, cached_input_tokens=800_000, cache_write_input_tokens=100_000)
    realtime = 0.1 * 1.00 + 0.8 * 0.10 + 0.1 * 1.25 + 0.01 * 5.00  # 0.355
    cost_usd = priced("claude-haiku-4-5-20251001", body)
    assert cost_usd["realtime_equivalent"] == pytest.approx(realtime)
    # The caching multipliers stack with the Batch API discount: all of it halved, once.
    assert cost_usd["batch"] == pytest.approx(realtime / 2)


def test_anthropic_one_hour_cache_writes_cost_twice_the_input() -> None:
    body = message(input_tokens=0, read=0, written=M, output=0, written_1h=400_000)
    assert extract(body)[1].cache_write_1h_input_tokens == 400_000
    realtime = 0.6 * 1.25 + 0.4 * 2.00
    assert priced("claude-haiku-4-5", body, "realtime")["realtime"] == pytest.approx(realtime)


def test_claude_on_bedrock_prices_its_cache_as_anthropic_does() -> None:
    body = message(input_tokens=100_000, read=800_000, written=100_000, output=10_000)
    on_bedrock = priced("us.anthropic.claude-haiku-4-5-20251001-v1:0", body)
    assert on_bedrock == priced("claude-haiku-4-5", body)


def test_gemini_cached_content_is_a_part_of_the_prompt_at_the_cached_rate() -> None:
    # gemini-2.5-flash: $0.30 input, $0.03 cached, $2.50 output; thinking is output
    body = {
        "candidates": [{"content": {"parts": [{"text": "ok"}]}}],
        "usageMetadata": {
            "promptTokenCount": M,
            "cachedContentTokenCount": 500_000,
            "candidatesTokenCount": 60_000,
            "thoughtsTokenCount": 40_000,
        },
    }
    realtime = 0.5 * 0.30 + 0.5 * 0.03 + 0.1 * 2.50  # 0.415
    cost_usd = priced("models/gemini-2.5-flash", body)
    assert cost_usd["realtime_equivalent"] == pytest.approx(realtime)
    assert cost_usd["batch"] == pytest.approx(realtime / 2)


def test_the_realtime_lane_pays_every_kind_at_its_full_rate() -> None:
    cost_usd = priced("gpt-4o-mini", chat(M, 400_000, 0), lane="realtime")
    assert cost_usd["realtime"] == pytest.approx(0.12)
    assert cost_usd["batch"] == 0.0
    assert cost_usd["saved"] == pytest.approx(0.0)


def test_each_model_takes_its_own_batch_share() -> None:
    meter = CostMeter({"half": Price(1.0, 0.0), "tenth": Price(1.0, 0.0, batch=0.1)})
    meter.add("half", Usage(M))
    meter.add("tenth", Usage(M))
    assert meter.summary()["batch"] == pytest.approx(0.5 + 0.1)
    assert meter.summary()["realtime_equivalent"] == pytest.approx(2.0)


def test_a_price_without_cache_rates_charges_them_as_input() -> None:
    usage = Usage(M, 0, cached_input_tokens=300_000, cache_write_input_tokens=300_000, cache_write_1h_input_tokens=1)
    assert cost(Price(2.0, 8.0), usage) == pytest.approx(2.0)


def test_cache_figures_larger_than_the_input_are_held_to_it() -> None:
    # A malformed report never makes a negative part.
    assert cost(Price(1.0, 0.0, cached_input=0.5), Usage(M, 0, cached_input_tokens=3 * M)) == pytest.approx(0.5)


def test_a_line_shows_cache_figures_only_when_there_are_some_and_the_summary_always() -> None:
    assert Usage(10, 2).line() == {"input_tokens": 10, "output_tokens": 2}
    used = Usage(10, 2, cached_input_tokens=4)
    assert used.line() == {"input_tokens": 10, "output_tokens": 2, "cached_input_tokens": 4}
    assert Usage.of_line(used.line()) == used
    assert (used + used).summary() == {
        "input_tokens": 20,
        "output_tokens": 4,
        "cached_input_tokens": 8,
        "cache_write_input_tokens": 0,
    }
    assert Usage(cache_write_1h_input_tokens=1).summary()["cache_write_1h_input_tokens"] == 1


def test_prices_from_the_environment_take_the_cache_rates_in_a_longer_form() -> None:
    table = price_table(
        {
            ENV_PRICES: '{"pair": [1, 2], "cached": [1, 2, 0.1], "written": [1, 2, 0.1, 1.25],'
            ' "named": {"input": 3, "output": 15, "cached_input": 0.3, "cache_write_1h": 6, "batch": 0.5}}'
        }
    )
    assert table["pair"] == Price(1.0, 2.0)
    assert table["cached"] == Price(1.0, 2.0, cached_input=0.1)
    assert table["written"] == Price(1.0, 2.0, cached_input=0.1, cache_write=1.25)
    assert table["named"] == Price(3.0, 15.0, cached_input=0.3, cache_write_1h=6.0)
    assert realtime_price("cached-model-x", table) == table["cached"]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ('{"m": [1]}', "must be [input, output]"),
        ('{"m": [1, 2, 3, 4, 5]}', "must be [input, output]"),
        ('{"m": {"input": 1}}', "must be [input, output]"),
        ('{"m": {"input": 1, "output": 2, "cached": 1}}', "must be [input, output]"),
        ('{"m": [1, "2"]}', "'m''s output must be a number"),
        ('{"m": [1, -2]}', "at least 0"),
        ('[["m", 1, 2]]', "must be a JSON object"),
    ],
)
def test_a_malformed_price_is_refused_with_what_is_expected(raw: str, says: str) -> None:
    with pytest.raises(ValueError, match=ENV_PRICES) as refused:
        price_table({ENV_PRICES: raw})
    assert says in str(refused.value)


def test_every_spec_price_with_a_cache_rate_charges_less_for_a_read_than_for_input() -> None:
    for prefix, price in PRICES.items():
        if price.cached_input is not None:
            assert price.cached_input < price.input, prefix
        assert price.batch == 0.5, prefix
