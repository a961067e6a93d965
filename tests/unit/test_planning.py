"""The planning shared by submit and `batchdrop validate`: a block at a time gives what a line at a time
gives (the same batches, the same files), a dry plan the same batches as a full one, and the raw token
estimate what `pricing.estimate_tokens` says of each line."""

from __future__ import annotations

import random
from array import array
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchdrop import models as m
from batchdrop.config import BatchLimits
from batchdrop.estimate import Estimate
from batchdrop.planner import SIZES_INDEX, BatchPlanner, PlannedBatch
from batchdrop.planning import LocalBatches, offline_settings, plan_segment, settle
from batchdrop.pricing import CostMeter, Usage, estimate_tokens, price_table
from batchdrop.scan import ScanResult

LIMITS = {
    "openai": BatchLimits(max_requests=7, max_bytes=1500),
    "anthropic": BatchLimits(max_requests=5, max_bytes=900),
    "bedrock": BatchLimits(max_requests=6, max_bytes=5000, min_requests=3),
}


def request(n: int, provider: str, group: str, size: int) -> m.Request:
    payload = orjson.dumps({"custom_id": f"r{n}", "pad": "x" * size}) + b"\n"
    return m.Request(n, f"r{n}", provider, group, "model-" + group, payload)


def stream(seed: int, count: int) -> list[m.Request]:
    rng = random.Random(seed)
    slots = [("openai", "a"), ("openai", "b"), ("anthropic", ""), ("bedrock", "")]
    return [request(n, *rng.choice(slots), rng.randrange(10, 300)) for n in range(1, count + 1)]


def planned(tmp: Path, requests: list[m.Request], *, many: bool, sizes_only: frozenset[str] = frozenset()) -> list[Any]:
    batches: list[PlannedBatch] = []
    planner = BatchPlanner(LIMITS, batches.append, key_prefix="a1-", tmpdir=str(tmp), sizes_only=sizes_only)
    if many:
        for start in range(0, len(requests), 13):  # blocks that cut across batches
            planner.add_many(requests[start : start + 13])
    else:
        for r in requests:
            planner.add(r)
    planner.finish()
    out = []
    for b in batches:
        data = Path(b.path).read_bytes() if b.path else None
        index = Path(b.index_path).read_bytes()
        out.append((b.key, b.provider, b.group, b.model, b.requests, b.bytes, data, index))
        b.discard()
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), count=st.integers(0, 120))
def test_a_block_at_a_time_plans_what_a_line_at_a_time_plans(tmp_path: Path, seed: int, count: int) -> None:
    requests = stream(seed, count)
    assert planned(tmp_path, requests, many=True) == planned(tmp_path, requests, many=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), count=st.integers(1, 120))
def test_a_dry_plan_makes_the_same_batches_with_sizes_in_the_index(tmp_path: Path, seed: int, count: int) -> None:
    requests = stream(seed, count)
    full = planned(tmp_path, requests, many=True)
    dry = planned(tmp_path, requests, many=True, sizes_only=frozenset({"openai", "anthropic"}))
    assert [b[:6] for b in dry] == [b[:6] for b in full]
    for f, d in zip(full, dry, strict=True):
        if f[1] == "bedrock":  # a provider with a minimum keeps its data: it may lend or fall back
            assert d == f
            continue
        assert d[6] is None
        sizes = [len(line) for line in f[6].splitlines(keepends=True)]
        pairs = array(SIZES_INDEX, d[7])
        assert list(pairs[::2]) == [int(row.split(b"\t")[1]) for row in f[7].splitlines()]
        assert list(pairs[1::2]) == sizes


def test_dry_planning_drops_duplicates_from_sizes_alone(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(
            {"custom_id": f"c{i % 5}", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        )
        for i in range(8)
    ]
    data = b"\n".join(lines) + b"\n"
    found: list[m.Invalid] = []
    batches = LocalBatches()
    plan = plan_segment([data], offline_settings({}), key="inputs/x.jsonl", store_batch=batches.store,
                        report=found.append, key_prefix="a1-", tmpdir=str(tmp_path), dry=True)  # fmt: skip
    assert isinstance(plan.result, ScanResult)
    kept, invalid = settle(batches, list(batches.order), plan.result.duplicates, offline_settings({}), batches.store,
                           found.append, "a1-", str(tmp_path))  # fmt: skip
    assert invalid == 3
    assert sorted(i.line for i in found) == [6, 7, 8]
    assert {i.code for i in found} == {m.DUPLICATE_CUSTOM_ID}
    assert [batches.planned[k].requests for k in kept] == [5]
    batches.close()


def compact(line: dict[str, Any]) -> bytes:
    return orjson.dumps(line) + b"\n"


ESTIMATED: list[tuple[str, dict[str, Any]]] = [
    ("openai", {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}],
                         "max_tokens": 64}}),
    ("openai", {"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 999}],
                         "max_completion_tokens": 12, "tools": [{"type": "function"}]}}),
    ("openai", {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [], "max_tokens": "10", "max_output_tokens": 3}}),
    ("openai", {"custom_id": "d", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [], "max_tokens": True}}),
    ("openai", {"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": ["a", "bb", "ccc"]}}),
    ("openai", {"custom_id": "f", "method": "POST", "url": "/v1/responses",
                "body": {"model": "gpt-4o-mini", "input": "hi", "instructions": "be brief"}}),
    ("anthropic", {"custom_id": "g", "params": {"model": "claude-haiku-4-5", "max_tokens": 5, "system": "s",
                                                 "messages": [{"role": "user", "content": "yo"}]}}),
    ("gemini", {"key": "h", "request": {"contents": [{"parts": [{"text": "hi"}]}],
                                       "systemInstruction": {"parts": [{"text": "sys"}]},
                                       "generationConfig": {"maxOutputTokens": 77}}}),
    ("gemini", {"key": "i", "request": {"contents": [], "generationConfig": "not an object", "max_tokens": 9}}),
    ("bedrock", {"recordId": "j", "modelInput": {"messages": [{"role": "user", "content": [{"text": "a"}]}],
                                                "inferenceConfig": {"maxTokens": 33}, "max_tokens": 1000}}),
    ("bedrock", {"recordId": "k", "modelInput": {"prompt": "p", "max_gen_len": 0}}),
    ("anthropic", {"custom_id": "l", "params": "not an object"}),
    ("openai", {"custom_id": "m", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini",
                "messages": [], "max_tokens": -5, "maxTokens": 4}}),
]  # fmt: skip


@pytest.mark.parametrize("split", [1, 3, len(ESTIMATED)])
def test_the_raw_estimate_says_what_estimate_tokens_says_of_each_line(split: int) -> None:
    requests = [m.Request(n, f"r{n}", provider, "", f"model-{provider}", compact(line))
                for n, (provider, line) in enumerate(ESTIMATED, 1)]  # fmt: skip
    estimate = Estimate(CostMeter(price_table({})))
    for start in range(0, len(requests), split):
        estimate.add_many(requests[start : start + split])
    expected = [estimate_tokens(r.provider, r.payload) for r in requests]
    assert estimate.input_tokens == sum(e[0] for e in expected)
    assert estimate.output_tokens == sum(e[1] for e in expected)


def test_the_estimate_prices_each_model_once_and_is_null_for_an_unknown_one() -> None:
    line = ESTIMATED[0][1]
    known = m.Request(1, "a", "openai", "", "gpt-4o-mini", compact(line))
    estimate = Estimate(CostMeter(price_table({})))
    estimate.add_many([known, known])
    tokens_in, tokens_out = estimate_tokens("openai", known.payload)
    meter = CostMeter(price_table({}))
    meter.add("gpt-4o-mini", Usage(2 * tokens_in, 2 * tokens_out))
    assert estimate.summary() == meter.summary()
    unknown = Estimate(CostMeter(price_table({})))
    unknown.add_many([m.Request(1, "a", "openai", "", "no-such-model", compact(line))])
    assert unknown.summary()["batch"] is None


def test_past_its_first_requests_the_estimate_samples_and_says_so() -> None:
    lines = [
        compact({"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": "gpt-4o-mini", "max_tokens": 50,
                          "messages": [{"role": "user", "content": "q" * (100 + n % 7)}]}})
        for n in range(2000)
    ]  # fmt: skip
    requests = [m.Request(n, f"r{n}", "openai", "", "gpt-4o-mini", line) for n, line in enumerate(lines, 1)]
    exact = Estimate(CostMeter(price_table({})), exact_first=len(requests))
    sampled = Estimate(CostMeter(price_table({})), exact_first=100)
    for start in range(0, len(requests), 500):
        exact.add_many(requests[start : start + 500])
        sampled.add_many(requests[start : start + 500])
    assert not exact.sampled
    assert sampled.sampled
    assert sampled.output_tokens == exact.output_tokens == 50 * len(requests)
    assert abs(sampled.input_tokens - exact.input_tokens) <= exact.input_tokens * 0.01
