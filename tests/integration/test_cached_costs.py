"""A job's summary.json prices cached input at each model's cached rate, with the batch discount applied
once (docs/contract.md "Outputs", docs/costs.md "Cached tokens"): the emulator reports half of every
prompt as read from the provider's cache, in each provider's own fields."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchdrop.adapters.store import JobStore
from batchdrop.handlers import use_deps
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from tests.helpers import all_jobs_final, assert_accounting, drive, jsonl, local_stack, neutral_line, outputs_of

# USD per million tokens at real-time rates (input, cached input, output), as the providers list them
# (the specs' sources); written out here so the test does not take them from the code it checks.
RATES = {
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "claude-haiku-4-5": (1.00, 0.10, 5.00),
    "gemini-2.5-flash": (0.30, 0.03, 2.50),
}
PROVIDERS = {"gpt-4o-mini": "openai", "claude-haiku-4-5": "anthropic", "gemini-2.5-flash": "gemini"}


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0, cached_input_rate=0.5))) as local:
        yield local
    use_deps(None)


def test_the_summary_prices_cached_tokens_at_the_cached_rate(stack: s.LocalStack) -> None:
    # A prompt of 400 characters is 100 tokens to the emulator, 50 of them cached.
    lines = [
        neutral_line(model, "x" * 400 + f" {n}", custom_id=f"{PROVIDERS[model]}-{n}", max_tokens=50)
        for model in RATES
        for n in range(2)
    ]
    stack.put("inputs/cached.jsonl", jsonl(lines))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    (job,) = store.list_jobs()
    results, errors, summary = outputs_of(stack, job)
    assert_accounting(set(range(1, len(lines) + 1)), results, errors, summary)
    assert {r["provider"] for r in results} == set(PROVIDERS.values())

    # Each line shows its cached part, inside input_tokens whatever the provider's own convention.
    for r in results:
        assert r["usage"]["cached_input_tokens"] == r["usage"]["input_tokens"] // 2 > 0, r["custom_id"]
        assert "cache_write_input_tokens" not in r["usage"]
    usage = summary["usage"]
    assert usage == {
        "input_tokens": sum(r["usage"]["input_tokens"] for r in results),
        "output_tokens": sum(r["usage"]["output_tokens"] for r in results),
        "cached_input_tokens": sum(r["usage"]["cached_input_tokens"] for r in results),
        "cache_write_input_tokens": 0,
    }

    realtime = at_full_input_rate = 0.0
    for r in results:
        rate_in, rate_cached, rate_out = RATES[next(m for m in RATES if r["model"].startswith(m))]
        tokens_in, cached, tokens_out = (
            r["usage"][k] for k in ("input_tokens", "cached_input_tokens", "output_tokens")
        )
        realtime += ((tokens_in - cached) * rate_in + cached * rate_cached + tokens_out * rate_out) / 1e6
        at_full_input_rate += (tokens_in * rate_in + tokens_out * rate_out) / 1e6
    cost = summary["cost_usd"]
    assert cost["realtime_equivalent"] == pytest.approx(realtime, abs=1e-6)
    # Batch work is half of every kind of token, once.
    assert cost["batch"] == pytest.approx(realtime / 2, abs=1e-6)
    assert cost["total"] == cost["batch"]
    assert cost["realtime"] == 0.0
    assert cost["saved"] == pytest.approx(realtime / 2, abs=1e-6)
    # Not the price of all of it as uncached input.
    assert cost["batch"] < at_full_input_rate / 2 - 1e-6
