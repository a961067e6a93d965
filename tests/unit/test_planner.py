"""Splitting requests into provider batches: limits, one endpoint and model per OpenAI batch, keys, index files."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchdrop import models as m
from batchdrop.config import BatchLimits
from batchdrop.planner import ENVELOPE_BYTES, BatchPlanner, PlannedBatch
from tests.lines import anthropic_line, neutral_line, openai_line, validator


def openai_request(n: int, model: str = "gpt-4o-mini", url: str = "/v1/chat/completions", size: int = 0) -> m.Request:
    payload = orjson.dumps({"custom_id": f"r{n}", "method": "POST", "url": url, "body": {"model": model}})
    payload += b" " * max(0, size - len(payload)) + b"\n"
    return m.Request(n, f"r{n}", "openai", f"{url} {model}", model, payload)


def anthropic_request(n: int, model: str = "claude-haiku-4-5", size: int = 0) -> m.Request:
    payload = orjson.dumps({"custom_id": f"r{n}", "params": {"model": model, "max_tokens": 5}})
    payload += b" " * max(0, size - len(payload)) + b"\n"
    return m.Request(n, f"r{n}", "anthropic", "", model, payload)


class Plan:
    """A planner writing into a temporary folder, with the batches it closed."""

    def __init__(self, tmp: Path, limits: dict[str, BatchLimits], key_prefix: str = "") -> None:
        self.batches: list[PlannedBatch] = []
        self.planner = BatchPlanner(limits=limits, on_batch=self.batches.append, key_prefix=key_prefix, tmpdir=str(tmp))

    def run(self, requests: list[m.Request]) -> list[PlannedBatch]:
        for request in requests:
            self.planner.add(request)
        self.planner.finish()
        return self.batches


def lines_in(batch: PlannedBatch) -> list[bytes]:
    return Path(batch.path).read_bytes().splitlines(keepends=True)


def index_of(batch: PlannedBatch) -> list[tuple[str, int]]:
    rows = Path(batch.index_path).read_text().splitlines()
    return [(cid, int(line)) for cid, line in (row.split("\t") for row in rows)]


def ids_in(batch: PlannedBatch) -> list[str]:
    return [orjson.loads(line)["custom_id"] for line in lines_in(batch)]


LIMITS = {"openai": BatchLimits(max_requests=50_000, max_bytes=10**9), "anthropic": BatchLimits(100_000, 10**9)}


def test_batch_file_holds_the_payloads_one_per_line_and_the_index_their_line_numbers(tmp_path: Path) -> None:
    requests = [openai_request(n) for n in (3, 5, 9)]
    (batch,) = Plan(tmp_path, LIMITS).run(requests)
    assert lines_in(batch) == [r.payload for r in requests]
    assert Path(batch.path).read_bytes().endswith(b"\n")
    assert index_of(batch) == [("r3", 3), ("r5", 5), ("r9", 9)]
    assert (batch.provider, batch.group, batch.model, batch.requests) == (
        "openai",
        "/v1/chat/completions gpt-4o-mini",
        "gpt-4o-mini",
        3,
    )
    assert batch.bytes == ENVELOPE_BYTES + sum(len(r.payload) for r in requests)


def test_max_requests_boundary(tmp_path: Path) -> None:
    # Given batches of at most 3 requests, and 7 requests
    limits = {"openai": BatchLimits(max_requests=3, max_bytes=10**9)}
    batches = Plan(tmp_path, limits).run([openai_request(n) for n in range(1, 8)])
    # Then batches are filled to exactly 3 and the 4th request opens a new one
    assert [b.requests for b in batches] == [3, 3, 1]
    assert [ids_in(b) for b in batches] == [["r1", "r2", "r3"], ["r4", "r5", "r6"], ["r7"]]


def test_exactly_max_requests_makes_one_batch(tmp_path: Path) -> None:
    limits = {"openai": BatchLimits(max_requests=4, max_bytes=10**9)}
    assert [b.requests for b in Plan(tmp_path, limits).run([openai_request(n) for n in range(4)])] == [4]


def test_max_bytes_boundary(tmp_path: Path) -> None:
    # Given requests of 100 bytes (101 with the newline) and room for exactly two after the envelope
    limit = ENVELOPE_BYTES + 2 * 101
    limits = {"anthropic": BatchLimits(max_requests=1000, max_bytes=limit)}
    requests = [anthropic_request(n, size=100) for n in range(5)]
    # When they are planned
    batches = Plan(tmp_path, limits).run(requests)
    # Then a batch fills up to the byte limit exactly, and the next request opens a new batch
    assert [b.requests for b in batches] == [2, 2, 1]
    assert [b.bytes for b in batches] == [limit, limit, ENVELOPE_BYTES + 101]
    assert all(b.bytes <= limit for b in batches)


def test_one_byte_over_the_limit_opens_a_new_batch(tmp_path: Path) -> None:
    limit = ENVELOPE_BYTES + 2 * 101 - 1
    limits = {"anthropic": BatchLimits(max_requests=1000, max_bytes=limit)}
    batches = Plan(tmp_path, limits).run([anthropic_request(n, size=100) for n in range(2)])
    assert [b.requests for b in batches] == [1, 1]


def test_openai_batches_are_split_by_endpoint_and_model(tmp_path: Path) -> None:
    # Given interleaved OpenAI requests for two models and two endpoints
    requests = [
        openai_request(1, "gpt-4o-mini"),
        openai_request(2, "gpt-4o"),
        openai_request(3, "gpt-4o-mini"),
        openai_request(4, "text-embedding-3-small", url="/v1/embeddings"),
        openai_request(5, "gpt-4o-mini", url="/v1/responses"),
        openai_request(6, "gpt-4o"),
    ]
    batches = Plan(tmp_path, LIMITS).run(requests)
    # Then each batch holds one endpoint and one model
    by_group = {b.group: ids_in(b) for b in batches}
    assert by_group == {
        "/v1/chat/completions gpt-4o-mini": ["r1", "r3"],
        "/v1/chat/completions gpt-4o": ["r2", "r6"],
        "/v1/embeddings text-embedding-3-small": ["r4"],
        "/v1/responses gpt-4o-mini": ["r5"],
    }
    for batch in batches:
        lines = [orjson.loads(line) for line in lines_in(batch)]
        assert len({(line["url"], line["body"]["model"]) for line in lines}) == 1
        assert f"{lines[0]['url']} {lines[0]['body']['model']}" == batch.group


def test_anthropic_models_share_a_batch(tmp_path: Path) -> None:
    requests = [anthropic_request(1, "claude-haiku-4-5"), anthropic_request(2, "claude-sonnet-4-5")]
    (batch,) = Plan(tmp_path, LIMITS).run(requests)
    assert ids_in(batch) == ["r1", "r2"]


def test_providers_are_planned_apart(tmp_path: Path) -> None:
    batches = Plan(tmp_path, LIMITS).run([openai_request(1), anthropic_request(2), openai_request(3)])
    assert sorted((b.provider, tuple(ids_in(b))) for b in batches) == [
        ("anthropic", ("r2",)),
        ("openai", ("r1", "r3")),
    ]


def test_keys_are_numbered_per_provider_with_the_prefix(tmp_path: Path) -> None:
    limits = {"openai": BatchLimits(2, 10**9), "anthropic": BatchLimits(2, 10**9)}
    requests = [openai_request(n, "gpt-4o-mini") for n in range(5)]
    requests += [openai_request(10, "gpt-4o"), anthropic_request(20), anthropic_request(21)]
    batches = Plan(tmp_path, limits, key_prefix="a1-").run(requests)
    assert sorted(b.key for b in batches) == [
        "a1-anthropic-0001",
        "a1-openai-0001",
        "a1-openai-0002",
        "a1-openai-0003",
        "a1-openai-0004",
    ]


def test_plan_is_deterministic(tmp_path: Path) -> None:
    # Given the same requests planned twice
    limits = {"openai": BatchLimits(3, 10**9), "anthropic": BatchLimits(2, 10**9)}
    requests = [openai_request(n, model) for n, model in enumerate(["gpt-4o", "gpt-4o-mini", "gpt-5", "gpt-4o"] * 3, 1)]
    requests += [anthropic_request(n) for n in range(100, 105)]

    def plan(folder: str) -> list[tuple[str, str, list[bytes], list[tuple[str, int]]]]:
        (tmp_path / folder).mkdir()
        return [(b.key, b.group, lines_in(b), index_of(b)) for b in Plan(tmp_path / folder, limits).run(requests)]

    # Then the keys, groups and contents are the same
    first = plan("one")
    assert first == plan("two")
    assert len({key for key, *_ in first}) == len(first)


def test_nothing_planned_makes_no_batch(tmp_path: Path) -> None:
    assert Plan(tmp_path, LIMITS).run([]) == []
    assert os.listdir(tmp_path) == []


def test_discard_removes_a_closed_batch_and_tolerates_a_second_call(tmp_path: Path) -> None:
    (batch,) = Plan(tmp_path, LIMITS).run([openai_request(1)])
    batch.discard()
    batch.discard()
    assert os.listdir(tmp_path) == []


def test_validated_lines_plan_into_their_provider_format(tmp_path: Path) -> None:
    # Given a mix of validated lines, as submit feeds them to the planner
    v = validator()
    lines = [
        openai_line("o1"),
        neutral_line("gpt-4o-mini", custom_id="n1"),
        anthropic_line("a1"),
        neutral_line("claude-sonnet-4-5"),
    ]
    requests = []
    for n, line in enumerate(lines, 1):
        verdict = v.check(n, orjson.dumps(line))
        assert isinstance(verdict, m.Request)
        requests.append(verdict)
    batches = Plan(tmp_path, dict(v.providers)).run(requests)
    by_key = {b.key: index_of(b) for b in batches}
    # Then the OpenAI shape and the neutral gpt line share a batch, and so do both Anthropic lines
    assert by_key == {"openai-0001": [("o1", 1), ("n1", 2)], "anthropic-0001": [("a1", 3), ("line-4", 4)]}


# -- the property ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    max_requests=st.integers(min_value=1, max_value=6),
    room=st.integers(min_value=0, max_value=600),
    specs=st.lists(
        st.tuples(st.sampled_from(["openai-a", "openai-b", "anthropic"]), st.integers(min_value=0, max_value=10**6)),
        max_size=40,
    ),
)
def test_every_request_lands_in_exactly_one_batch_within_the_limits(
    tmp_path_factory: pytest.TempPathFactory, max_requests: int, room: int, specs: list[tuple[str, int]]
) -> None:
    # Given limits with room for one 100-byte request plus `room` bytes, and requests of random sizes
    # that each fit an empty batch (larger ones are refused by the validator as request_too_large)
    limit = ENVELOPE_BYTES + 101 + room
    limits = {"openai": BatchLimits(max_requests, limit), "anthropic": BatchLimits(max_requests, limit)}
    requests = []
    for n, (kind, draw) in enumerate(specs, 1):
        size = 100 + draw % (room + 1)
        if kind == "anthropic":
            request = anthropic_request(n, size=size)
        else:
            request = openai_request(n, model="gpt-4o" if kind == "openai-a" else "gpt-5", size=size)
        assert ENVELOPE_BYTES + len(request.payload) <= limit
        requests.append(request)
    # When they are planned
    batches = Plan(tmp_path_factory.mktemp("plan"), limits).run(requests)
    # Then every request is in exactly one batch, of its own provider and group, in input order
    placed = [(cid, line) for b in batches for cid, line in index_of(b)]
    assert sorted(placed) == sorted((r.custom_id, r.line) for r in requests)
    by_id = {r.custom_id: r for r in requests}
    for batch in batches:
        index = index_of(batch)
        assert [line for _, line in index] == sorted(line for _, line in index)
        assert lines_in(batch) == [by_id[cid].payload for cid, _ in index]
        assert {(by_id[cid].provider, by_id[cid].group) for cid, _ in index} == {(batch.provider, batch.group)}
        # And no batch passes either limit, counting what is on disk
        assert 1 <= batch.requests <= max_requests
        assert batch.requests == len(index)
        assert batch.bytes == ENVELOPE_BYTES + os.path.getsize(batch.path)
        assert batch.bytes <= limit
    # And a batch was closed only when the next request of its group would not have fit in it
    assert len({b.key for b in batches}) == len(batches)
    by_slot: dict[tuple[str, str], list[PlannedBatch]] = {}
    for batch in batches:
        by_slot.setdefault((batch.provider, batch.group), []).append(batch)
    for slot_batches in by_slot.values():
        for earlier, later in itertools.pairwise(slot_batches):
            next_size = len(by_id[index_of(later)[0][0]].payload)
            assert earlier.requests == max_requests or earlier.bytes + next_size > limit


# -- providers with a minimum batch size (Bedrock) -------------------------------------------------


def bedrock_request(n: int, model: str = "amazon.nova-lite-v1:0") -> m.Request:
    payload = orjson.dumps(
        {"recordId": f"r{n}", "modelInput": {"messages": [{"role": "user", "content": "x"}]}},
        option=orjson.OPT_APPEND_NEWLINE,
    )
    return m.Request(n, f"r{n}", "bedrock", model, model, payload)


@pytest.mark.parametrize(
    ("n", "sizes"),
    [
        (10, [5, 5]),  # not 8 + 2: the last batch borrows what it lacks
        (12, [7, 5]),
        (13, [8, 5]),
        (16, [8, 8]),
        (9, [8, 1]),  # 4 + 5 would leave the first under the minimum: left for the caller to refuse
        (4, [4]),
        (20, [8, 7, 5]),
    ],
)
def test_a_last_batch_under_the_minimum_borrows_from_the_one_before(tmp_path: Path, n: int, sizes: list[int]) -> None:
    # Given Bedrock limits of 8 records per job and at least 5
    limits = {"bedrock": BatchLimits(max_requests=8, max_bytes=10_000, min_requests=5)}
    # When n requests for one model are planned
    batches = Plan(tmp_path, limits).run([bedrock_request(i) for i in range(1, n + 1)])
    # Then the batches have these sizes, and every request is in exactly one, with its index line
    assert [b.requests for b in batches] == sizes
    assert [b.key for b in batches] == [f"bedrock-{i:04d}" for i in range(1, len(sizes) + 1)]
    seen = []
    for batch in batches:
        data, index = lines_in(batch), Path(batch.index_path).read_bytes().splitlines()
        assert len(data) == len(index) == batch.requests
        assert batch.bytes == ENVELOPE_BYTES + sum(len(line) for line in data)
        for payload, entry in zip(data, index, strict=True):
            custom_id, _, line = entry.partition(b"\t")
            assert orjson.loads(payload)["recordId"] == custom_id.decode() == f"r{int(line)}"
            seen.append(int(line))
    assert sorted(seen) == list(range(1, n + 1))


def test_a_borrowing_that_would_pass_the_byte_limit_is_not_made(tmp_path: Path) -> None:
    # Given a byte limit that the full batch reaches with small requests and a tail of large ones
    limits = {"bedrock": BatchLimits(max_requests=8, max_bytes=ENVELOPE_BYTES + 8 * 120, min_requests=5)}
    small = [bedrock_request(i) for i in range(1, 9)]
    big = m.Request(9, "r9", "bedrock", small[0].group, small[0].model, small[0].payload[:-1] + b" " * 800 + b"\n")
    batches = Plan(tmp_path, limits).run([*small, big])
    # Then the tail stays as it is (the caller refuses it) rather than pass the limit
    assert [b.requests for b in batches] == [8, 1]
    assert all(b.bytes <= limits["bedrock"].max_bytes for b in batches)
