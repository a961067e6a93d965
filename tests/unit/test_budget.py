"""Budget arithmetic (batchdrop.budget, docs/budgets.md): each request's tokens as the estimate counts
them, the prefix that fits a limit, the lane each provider is priced in, the tally kept in a file, and
the monthly counters' transactions (one thread: what a condition lets through, and what it does not)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import boto3
import pytest
from moto import mock_aws

from batchdrop import budget
from batchdrop import models as m
from batchdrop.adapters.store import JobStore, OverCap, job_pk, record_spend, reserve_spend, spend
from batchdrop.estimate import Estimate, request_tokens
from batchdrop.options import JobOptions
from batchdrop.planning import offline_settings
from batchdrop.pricing import BATCH_DISCOUNT, CostMeter, Price, price_table
from tests.lines import anthropic_line, dumps, openai_line


def request(line: int, payload: dict[str, object], provider: str = "openai", model: str = "gpt-4o-mini") -> m.Request:
    return m.Request(line, f"r{line}", provider, "", model, dumps(payload) + b"\n")


def test_each_request_is_counted_as_the_estimate_counts_the_block() -> None:
    requests = [
        request(1, openai_line("a", text="hello there", max_tokens=50)),
        request(2, openai_line("b", text="x" * 400, max_tokens=7)),
        request(3, openai_line("c", text="no cap")),  # the default output cap
        request(4, openai_line("d", text="cfg", max_completion_tokens=12)),
    ]
    tokens_in, tokens_out = request_tokens("openai", requests)
    estimate = Estimate(CostMeter(price_table()))
    estimate.add_many(requests)
    assert sum(tokens_in) == estimate.input_tokens
    assert sum(tokens_out) == estimate.output_tokens
    assert tokens_out[:3] == [50, 7, 1024]
    assert tokens_in[1] > 100  # 400 characters at 4 a token


def test_a_block_of_mixed_providers_keeps_its_line_order(tmp_path: object) -> None:
    tally = budget.Tally(tmpdir=str(tmp_path))
    block = [
        request(3, openai_line("a", max_tokens=10)),
        request(5, anthropic_line("b"), provider="anthropic", model="claude-haiku-4-5"),
        request(9, openai_line("c", max_tokens=30)),
    ]
    tally.add_many(block)
    path = tally.flush()
    (records,) = list(budget._blocks([path]))
    assert list(records[0::4]) == [3, 5, 9]
    models = ["openai\tgpt-4o-mini", "anthropic\tclaude-haiku-4-5", "openai\tgpt-4o-mini"]
    assert [tally.models[i] for i in records[1::4]] == models
    assert list(records[3::4]) == [10, 64, 30]
    tally.discard()


def test_the_tally_spills_and_reads_back_every_record(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "SPILL_EVERY", 3)
    tally = budget.Tally(tmpdir=str(tmp_path))
    for start in range(1, 20, 4):
        tally.add_many([request(line, openai_line(f"r{line}", max_tokens=line)) for line in range(start, start + 4)])
    lines = [line for records in budget._blocks([tally.flush()]) for line in records[0::4]]
    assert lines == list(range(1, 21))
    tally.discard()


def records_of(*requests: tuple[int, int, int, int]) -> list[object]:
    from array import array

    out = array(budget.TYPECODE)
    for r in requests:
        out.extend(r)
    return [out]


MODELS = ["openai\tgpt-4o-mini", "openai\tmystery-model"]
PRICES = {"gpt-4o-mini": Price(1.0, 2.0), "mystery-model": None}  # USD per million tokens


def test_fit_keeps_the_first_requests_in_line_order_and_cuts_the_rest() -> None:
    # Each costs (100 * 1 + 1000 * 2) / 1e6 = 0.0021 real-time, half in the batch lane.
    blocks = records_of((1, 0, 100, 1000), (2, 0, 100, 1000), (4, 0, 100, 1000), (6, 0, 1, 1))
    whole = budget.fit(blocks, MODELS[:1], {"openai": "realtime"}, PRICES, None)  # type: ignore[arg-type]
    assert whole.estimate == pytest.approx(3 * 0.0021 + 3e-6)
    assert whole.requests == 4
    assert whole.cutoff is None
    cut = budget.fit(blocks, MODELS[:1], {"openai": "realtime"}, PRICES, 0.005)  # type: ignore[arg-type]
    assert (cut.requests, cut.cutoff) == (2, 3), "line 4 does not fit: it and every later line are cut"
    assert cut.estimate == pytest.approx(0.0042)
    batch = budget.fit(blocks, MODELS[:1], {"openai": "batch"}, PRICES, 0.005)  # type: ignore[arg-type]
    assert batch.estimate == pytest.approx(3 * 0.0021 * BATCH_DISCOUNT + 3e-6 * BATCH_DISCOUNT)
    assert batch.cutoff is None
    # The cache's lines are free: skipped, never cut.
    skipped = budget.fit(blocks, MODELS[:1], {"openai": "realtime"}, PRICES, 0.005, {2})  # type: ignore[arg-type]
    assert (skipped.requests, skipped.cutoff) == (3, None)


def test_a_model_without_a_price_is_named() -> None:
    blocks = records_of((1, 0, 10, 10), (2, 1, 10, 10))
    out = budget.fit(blocks, MODELS, {}, PRICES, None)  # type: ignore[arg-type]
    assert out.unknown == {"mystery-model"}


def test_the_lane_priced_is_an_upper_bound_on_the_lane_taken() -> None:
    settings = offline_settings({})
    auto = JobOptions(lane="auto")
    counts = {"openai": 500, "anthropic": 3, "bedrock": 500}
    assert budget.priced_lanes(settings, auto, counts, 0.0) == {
        "openai": "batch",
        "anthropic": "realtime",  # a handful goes real-time
        "bedrock": "realtime",  # a batch under Bedrock's minimum may go real-time
    }
    due = JobOptions(lane="auto", deadline=10 * 86400.0)
    assert set(budget.priced_lanes(settings, due, counts, 0.0).values()) == {"realtime"}, "escalation may come"
    batch = JobOptions(lane="batch", deadline=10 * 86400.0)
    assert set(budget.priced_lanes(settings, batch, counts, 0.0).values()) == {"batch"}


def test_amounts_are_kept_to_the_micro_dollar_and_an_estimate_rounds_up() -> None:
    assert budget.usd(0.0000011) == Decimal("0.000002")
    assert budget.usd(0.0000011, up=False) == Decimal("0.000001")
    assert budget.usd(12.5) == Decimal("12.500000")
    assert budget.month_of(1_796_083_200.0) == "2026-12"  # 2026-12-01T00:00:00Z


# -- the counters (one thread; many at once: tests/integration/test_budgets.py) ---------------------------


@pytest.fixture
def store() -> Iterator[JobStore]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        store = JobStore("t", ddb)
        for job_id in ("a", "b", "c"):
            store.create({"pk": job_pk(job_id), "sk": "JOB", "job_id": job_id, "status": "submitting"})
        yield store


MONTH = "2026-12"
CAPS = [("", Decimal("10")), ("inputs/evals/", Decimal("4"))]


def test_a_reservation_counts_on_every_cap_or_on_none(store: JobStore) -> None:
    reserve_spend(store, "a", {"usd": Decimal("3")}, MONTH, CAPS, Decimal("3"))
    with pytest.raises(OverCap) as over:
        reserve_spend(store, "b", {"usd": Decimal("2")}, MONTH, CAPS, Decimal("2"))
    assert over.value.index == 1, "the prefix's cap has 1 left"
    # Nothing of b's counted on the stack's cap either, and b holds no reservation.
    assert spend(store, "", MONTH)["committed"] == Decimal("3")
    assert "budget_reserved" not in (store.get_job("b") or {})
    reserve_spend(store, "b", {"usd": Decimal("1")}, MONTH, CAPS, Decimal("1"))
    assert spend(store, "inputs/evals/", MONTH) == {
        "committed": Decimal("4"),
        "reserved": Decimal("4"),
        "spent": Decimal("0"),
    }


def test_a_job_reserves_once_and_settles_once(store: JobStore) -> None:
    reserve_spend(store, "a", {"usd": Decimal("3")}, MONTH, CAPS, Decimal("3"))
    with pytest.raises(OverCap) as again:
        reserve_spend(store, "a", {"usd": Decimal("3")}, MONTH, CAPS, Decimal("3"))
    assert again.value.index is None, "reserved already: a re-run"
    assert record_spend(store, "a", MONTH, ["", "inputs/evals/"], Decimal("3"), Decimal("0.25"))
    assert not record_spend(store, "a", MONTH, ["", "inputs/evals/"], Decimal("3"), Decimal("0.25"))
    assert not record_spend(store, "c", MONTH, [""], Decimal("1"), Decimal("1")), "c never reserved"
    assert spend(store, "", MONTH) == {"committed": Decimal("0.25"), "reserved": Decimal("0"), "spent": Decimal("0.25")}


def test_what_was_spent_counts_even_past_the_cap(store: JobStore) -> None:
    reserve_spend(store, "a", {"usd": Decimal("4")}, MONTH, CAPS, Decimal("4"))
    assert record_spend(store, "a", MONTH, ["inputs/evals/"], Decimal("4"), Decimal("4.5"))
    assert spend(store, "inputs/evals/", MONTH)["committed"] == Decimal("4.5")
    with pytest.raises(OverCap):
        reserve_spend(store, "b", {"usd": Decimal("0.000001")}, MONTH, CAPS, Decimal("0.000001"))
