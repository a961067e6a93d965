"""The response cache's key, its table's reads and writes (moto in-process), and splitting a planned batch
into what is sent and what the cache answered (docs/cache.md)."""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from moto import mock_aws

from batchdrop import models as m
from batchdrop.adapters.cache import GET_KEYS, INLINE_BYTES, ResponseCache
from batchdrop.adapters.objects import ObjectStore
from batchdrop.cache import AnswerWriter, complete, request_key, split_answered, split_known
from batchdrop.planner import PlannedBatch

TABLE, BUCKET = "cache", "bucket"
NOW = 1_800_000_000.0


def chat(custom_id: str, text: str, **extra: Any) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 16, **extra}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def answer(text: str, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


# -- the key ----------------------------------------------------------------------------------------


def test_the_key_ignores_key_order_whitespace_and_the_custom_id() -> None:
    line = chat("a-1", "hello", temperature=0.5)
    reordered = (
        b'{ "url": "/v1/chat/completions", "body": {"temperature": 0.50, "max_tokens": 16, "messages": '
        b'[{"content": "hello", "role": "user"}], "model": "gpt-4o-mini"}, "method": "POST", "custom_id": "other"}'
    )
    assert request_key("openai", "gpt-4o-mini", line) == request_key("openai", "gpt-4o-mini", reordered)


@pytest.mark.parametrize(
    ("provider", "model", "payload"),
    [
        ("openai", "gpt-4o-mini", chat("a-1", "hello!")),  # the prompt
        ("openai", "gpt-4o-mini", chat("a-1", "hello", temperature=0.5001)),  # a setting
        ("openai", "gpt-4o", chat("a-1", "hello", temperature=0.5)),  # the model
        ("azure", "gpt-4o-mini", chat("a-1", "hello", temperature=0.5)),  # the provider
        (  # the endpoint
            "openai",
            "gpt-4o-mini",
            chat("a-1", "hello", temperature=0.5).replace(b"/v1/chat/completions", b"/v1/responses"),
        ),
    ],
)
def test_the_key_tells_apart_what_changes_the_answer(provider: str, model: str, payload: bytes) -> None:
    assert request_key(provider, model, payload) != request_key(
        "openai", "gpt-4o-mini", chat("a-1", "hello", temperature=0.5)
    )


def test_each_providers_own_id_field_is_left_out() -> None:
    gemini = [orjson.dumps({"key": k, "request": {"contents": [{"parts": [{"text": "hi"}]}]}}) for k in ("x", "y")]
    bedrock = [orjson.dumps({"recordId": k, "modelInput": {"messages": []}}) for k in ("x", "y")]
    assert request_key("gemini", "gemini-2.0-flash", gemini[0]) == request_key("gemini", "gemini-2.0-flash", gemini[1])
    assert request_key("bedrock", "m", bedrock[0]) == request_key("bedrock", "m", bedrock[1])


@pytest.mark.parametrize(
    ("response", "whole"),
    [
        (answer("hi"), True),
        (answer("hi", finish="length"), False),
        ({"type": "message", "stop_reason": "end_turn", "content": []}, True),
        ({"type": "message", "stop_reason": "max_tokens", "content": []}, False),
        ({"candidates": [{"finishReason": "STOP"}]}, True),
        ({"candidates": [{"finishReason": "MAX_TOKENS"}]}, False),
        ({"output": {}, "stopReason": "max_tokens"}, False),
        ({"generation": "x", "stop_reason": "length"}, False),
        ({"object": "list", "data": [{"embedding": [0.1]}]}, True),
    ],
)
def test_an_answer_cut_short_by_its_token_limit_is_not_whole(response: dict[str, Any], whole: bool) -> None:
    assert complete(response) is whole


# -- the table --------------------------------------------------------------------------------------


@pytest.fixture
def cache() -> Iterator[ResponseCache]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "h", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "h", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield ResponseCache(TABLE, ObjectStore(BUCKET, s3), ttl_seconds=3600, clock=lambda: NOW, ddb=ddb)


def put(cache: ResponseCache, key: str, response: dict[str, Any], lane: str = "batch") -> None:
    cache.put([cache.item(key, "openai", "gpt-4o-mini", lane, response)])


def test_an_answer_written_is_read_back_with_its_lane_and_a_miss_is_counted(cache: ResponseCache) -> None:
    put(cache, "k1", answer("one"), lane="realtime")
    found = cache.lookup(["k1", "k2", "k1"])
    assert set(found) == {"k1"}
    assert found["k1"].response == answer("one")
    assert found["k1"].lane == "realtime"
    assert (cache.stats.written, cache.stats.hits, cache.stats.misses) == (1, 1, 1)


def test_lookups_past_one_call_are_split_and_all_found(cache: ResponseCache) -> None:
    keys = [f"k{i}" for i in range(GET_KEYS * 3 + 7)]
    writer = AnswerWriter(cache)
    for key in keys:
        writer.add(key, "openai", "gpt-4o-mini", "batch", answer(key))
    writer.close()
    found = cache.lookup(keys)
    assert {k: v.response["choices"][0]["message"]["content"] for k, v in found.items()} == {k: k for k in keys}


def test_a_large_answer_goes_to_the_bucket_and_comes_back(cache: ResponseCache) -> None:
    # Random text does not compress: past the inline limit once packed.
    big = answer(os.urandom(INLINE_BYTES).hex())
    put(cache, "big", big)
    item = cache.ddb.get_item(TableName=TABLE, Key={"h": {"S": "big"}})["Item"]
    assert "body" not in item
    assert item["object"]["S"].startswith("cache/")
    assert cache.lookup(["big"])["big"].response == big


@pytest.mark.parametrize(
    "poison",
    [
        lambda item: item.update(body={"B": b"not zlib"}),
        lambda item: item.update(body={"B": zlib.compress(b'{"choices": "tampered"}')}),  # digest differs
        lambda item: item.update(
            body={"B": zlib.compress(b"[1, 2]")}, digest={"S": hashlib.sha256(b"[1, 2]").hexdigest()}
        ),
        lambda item: item.pop("lane"),
        lambda item: item.update(object={"S": "cache/gone.json.zz"}),
    ],
    ids=["not-compressed", "digest-mismatch", "not-an-object", "field-missing", "object-gone"],
)
def test_a_poisoned_entry_is_a_miss_counted_as_poisoned(cache: ResponseCache, poison: Any) -> None:
    item = cache.item("k", "openai", "gpt-4o-mini", "batch", answer("good"))
    poison(item)
    if "object" in item:
        item.pop("body", None)
    cache.ddb.put_item(TableName=TABLE, Item=item)
    assert cache.lookup(["k"]) == {}
    assert (cache.stats.poisoned, cache.stats.hits, cache.stats.misses) == (1, 0, 1)


def test_an_entry_past_its_ttl_is_a_miss_though_dynamodb_has_not_deleted_it_yet(cache: ResponseCache) -> None:
    put(cache, "k", answer("old"))
    later = ResponseCache(TABLE, cache.objects, ttl_seconds=3600, clock=lambda: NOW + 3601, ddb=cache.ddb)
    assert later.lookup(["k"]) == {}
    assert later.stats.misses == 1


def test_a_failing_table_is_misses_and_lost_writes_never_an_error(cache: ResponseCache) -> None:
    put(cache, "k", answer("kept"))

    def unreachable(step: str) -> None:
        raise ConnectionError(f"no route to the table ({step})")

    broken = ResponseCache(
        TABLE, cache.objects, ttl_seconds=3600, clock=lambda: NOW, ddb=cache.ddb, checkpoint=unreachable
    )
    assert broken.lookup(["k", "other"]) == {}
    assert (broken.stats.errors, broken.stats.hits) == (2, 0)
    broken.put([broken.item("new", "openai", "m", "batch", answer("x"))])
    assert (broken.stats.written, broken.stats.write_errors) == (0, 1)


def test_the_writer_keeps_only_whole_answers(cache: ResponseCache) -> None:
    writer = AnswerWriter(cache)
    writer.add("whole", "openai", "gpt-4o-mini", "batch", answer("done"))
    writer.add("cut", "openai", "gpt-4o-mini", "batch", answer("don", finish="length"))
    writer.close()
    assert set(cache.lookup(["whole", "cut"])) == {"whole"}


# -- splitting a planned batch ----------------------------------------------------------------------


def planned(tmp_path: Path, lines: list[bytes], provider: str = "openai") -> PlannedBatch:
    data, index = tmp_path / "b.jsonl", tmp_path / "b.idx"
    data.write_bytes(b"".join(line + b"\n" for line in lines))
    index.write_bytes(
        b"".join(f"{orjson.loads(line)['custom_id']}\t{i + 1}\n".encode() for i, line in enumerate(lines))
    )
    size = 64 + sum(len(line) + 1 for line in lines)
    return PlannedBatch("a1-openai-0", provider, "", "gpt-4o-mini", len(lines), size, str(data), str(index))


def test_a_batch_is_split_into_what_is_sent_and_what_the_cache_answered(cache: ResponseCache, tmp_path: Path) -> None:
    lines = [chat(f"c{i}", f"question {i}") for i in range(5)]
    for i in (1, 3):
        put(cache, request_key("openai", "gpt-4o-mini", lines[i]), answer(f"cached {i}"))
    sending, answered = split_answered(planned(tmp_path, lines), cache, str(tmp_path))
    assert sending is not None
    assert answered is not None
    assert Path(sending.index_path).read_text().split() == ["c0", "1", "c2", "3", "c4", "5"]
    assert Path(sending.path).read_bytes() == b"".join(lines[i] + b"\n" for i in (0, 2, 4))
    assert (sending.requests, answered.requests, answered.lane, answered.key) == (
        3,
        2,
        m.LANE_CACHE,
        "a1-openai-0-cache",
    )
    assert sending.bytes == 64 + sum(len(lines[i]) + 1 for i in (0, 2, 4))
    assert answered.answers_path is not None
    answers = [orjson.loads(a) for a in Path(answered.answers_path).read_bytes().splitlines()]
    assert [(a["custom_id"], a["line"], a["response"]["choices"][0]["message"]["content"]) for a in answers] == [
        ("c1", 2, "cached 1"),
        ("c3", 4, "cached 3"),
    ]


def test_a_batch_the_cache_would_leave_under_its_providers_minimum_is_sent_whole(
    cache: ResponseCache, tmp_path: Path
) -> None:
    lines = [chat(f"c{i}", f"question {i}") for i in range(5)]
    for i in range(4):
        put(cache, request_key("openai", "gpt-4o-mini", lines[i]), answer("x"))
    batch = planned(tmp_path, lines)
    assert split_answered(batch, cache, str(tmp_path), minimum=2) == (None, None)
    assert Path(batch.path).exists(), "the batch's own files are left for it to be sent whole"


def test_every_request_answered_leaves_nothing_to_send(cache: ResponseCache, tmp_path: Path) -> None:
    lines = [chat(f"c{i}", f"question {i}") for i in range(3)]
    for line in lines:
        put(cache, request_key("openai", "gpt-4o-mini", line), answer("x"))
    sending, answered = split_answered(planned(tmp_path, lines), cache, str(tmp_path), minimum=2)
    assert sending is None
    assert answered is not None
    assert answered.requests == 3


def test_a_re_run_makes_the_split_the_first_run_decided_whatever_the_cache_says_now(tmp_path: Path) -> None:
    lines = [chat(f"c{i}", f"question {i}") for i in range(4)]
    decided = b"".join(
        orjson.dumps({"custom_id": f"c{n - 1}", "line": n, "lane": "batch", "model": "", "response": answer("x")})
        + b"\n"
        for n in (2, 4)
    )
    sending, answered = split_known(planned(tmp_path, lines), decided, str(tmp_path))
    assert sending is not None
    assert answered is not None
    assert Path(sending.index_path).read_text().split() == ["c0", "1", "c2", "3"]
    assert Path(answered.index_path).read_text().split() == ["c1", "2", "c3", "4"]
    assert Path(answered.path).read_bytes() == lines[1] + b"\n" + lines[3] + b"\n"
    assert answered.answers_path is not None
    assert Path(answered.answers_path).read_bytes() == decided
    assert (sending.requests, answered.requests, answered.lane) == (2, 2, m.LANE_CACHE)
