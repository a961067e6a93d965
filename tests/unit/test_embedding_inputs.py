"""OpenAI counts /v1/embeddings batches in embedding inputs too (at most 50,000 across a batch's
requests): validation counts each request's inputs on every path, and the planner closes a batch
before they would pass the limit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchdrop import models as m
from batchdrop.config import BatchLimits
from batchdrop.planner import BatchPlanner, PlannedBatch
from batchdrop.providers.openai import MAX_EMBEDDING_INPUTS
from tests.lines import accept, openai_line, validator

MODEL = "text-embedding-3-small"
GROUP = f"/v1/embeddings {MODEL}"


def embedding_line(custom_id: str, given: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": given}}


@pytest.mark.parametrize(
    ("given", "inputs"),
    [
        ("one text", 1),
        (["a", "b", "c"], 3),
        ([f"t{i}" for i in range(100)], 100),
        ([1, 2, 3], 1),  # one token array (the full check's path: the fast schema takes strings only)
        ([[1, 2], [3, 4]], 2),  # token arrays, one input each
    ],
)
def test_a_line_carries_its_embedding_inputs(given: Any, inputs: int) -> None:
    assert accept(validator(), embedding_line("e", given)).inputs == inputs


def test_the_block_paths_count_inputs_as_the_line_path_does() -> None:
    lines = [orjson.dumps(embedding_line(f"e{i}", ["x"] * (i + 1))) + b"\n" for i in range(40)]
    lines += [orjson.dumps(openai_line(f"c{i}")) + b"\n" for i in range(5)]
    verdicts = validator().check_block(1, lines)
    assert [v.inputs for v in verdicts if isinstance(v, m.Request)] == [i + 1 for i in range(40)] + [0] * 5


def test_other_requests_carry_none() -> None:
    assert accept(validator(), openai_line("c")).inputs == 0


def request(n: int, inputs: int, count: bool = True) -> m.Request:
    payload = orjson.dumps(embedding_line(f"r{n}", ["x"] * inputs)) + b"\n"
    return m.Request(n, f"r{n}", "openai", GROUP, MODEL, payload, inputs if count else 0)


LIMITS = {"openai": BatchLimits(max_requests=50_000, max_bytes=10**9, max_inputs=MAX_EMBEDDING_INPUTS)}


def plan(tmp: Path, requests: list[m.Request], many: bool, max_inputs: int | None = None) -> list[PlannedBatch]:
    batches: list[PlannedBatch] = []
    limits = LIMITS if max_inputs is None else {"openai": replace(LIMITS["openai"], max_inputs=max_inputs)}
    planner = BatchPlanner(limits=limits, on_batch=batches.append, tmpdir=str(tmp))
    if many:
        planner.add_many(requests)
    else:
        for r in requests:
            planner.add(r)
    planner.finish()
    return batches


@pytest.mark.parametrize("many", [False, True])
def test_a_batch_closes_before_its_inputs_pass_the_limit(tmp_path: Path, many: bool) -> None:
    assert LIMITS["openai"].max_inputs == MAX_EMBEDDING_INPUTS == 50_000
    # 600 requests of 100 inputs: 60,000 inputs, far under 50,000 requests.
    batches = plan(tmp_path, [request(n, 100) for n in range(1, 601)], many)
    assert [b.requests for b in batches] == [500, 100]


@pytest.mark.parametrize("many", [False, True])
def test_the_limit_is_the_planners_to_lower(tmp_path: Path, many: bool) -> None:
    batches = plan(tmp_path, [request(n, 3) for n in range(1, 11)], many, max_inputs=10)
    assert [b.requests for b in batches] == [3, 3, 3, 1]


@pytest.mark.parametrize("many", [False, True])
def test_a_request_sent_again_without_its_count_is_counted_from_its_line(tmp_path: Path, many: bool) -> None:
    # Requests made from a stored batch (complete's retries, fallbacks) carry no count.
    batches = plan(tmp_path, [request(n, 3, count=False) for n in range(1, 11)], many, max_inputs=10)
    assert [b.requests for b in batches] == [3, 3, 3, 1]


@pytest.mark.parametrize("many", [False, True])
def test_chat_requests_are_not_held_to_the_inputs_limit(tmp_path: Path, many: bool) -> None:
    chat = [
        m.Request(n, f"c{n}", "openai", "/v1/chat/completions gpt-4o-mini", "gpt-4o-mini", b"{}\n")
        for n in range(1, 21)
    ]
    assert [b.requests for b in plan(tmp_path, chat, many, max_inputs=10)] == [20]
