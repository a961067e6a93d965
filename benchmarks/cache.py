"""The response cache (docs/cache.md): what `batchdrop-cache: read` adds to a large file's submission,
and how fast the cache answers lookups, against moto's server.

1. The submit handler as a process (moto's server and the emulator in their own processes, a fresh
   pair for each run), planning and submitting the same 1,000,000-request file: with the cache off,
   then with `batchdrop-cache: read` and the cache table holding answers for one request in ten, then
   off again (the faster off run is the baseline). Wall time, added time, ratio, hits (from the job's
   `cache_stats`, checked against the batches stored) and peak RSS.
2. `ResponseCache.lookup` over every request's key, 2,000 at a time as planning asks, against one
   GetItem per key, one after the other, on a sample: keys/s each.
3. Where the added time goes: computing the keys, the lookups (2.), and splitting the batch files,
   the last measured in this process with the lookups answered from memory.

python -m benchmarks --only cache            # 1,000,000 requests (about 11 minutes here)
python -m benchmarks --only cache --quick    # 100,000
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import orjson

from benchmarks.processes import FRESH, free_port, wait_for

REQUESTS = 1_000_000
QUICK_REQUESTS = 100_000
# One request in HIT_EVERY has an answer in the table (10%).
HIT_EVERY = 10
# Short prompts: 1,000,000 lines make about 250 MB, a file users send.
PROMPT_CHARS = 60
MODEL = "gpt-4o-mini"
# The naive baseline's sample: one GetItem per key is too slow to run over a million keys.
SAMPLE = 5_000
# The answers' TTL: far past the run.
TTL_SECONDS = 30 * 86400.0
# A batch's requests for the split measurement: OpenAI's largest batch.
SPLIT_BATCH = 50_000

CHILD = """
import json, os, resource, sys, time
os.environ.update(json.loads(sys.argv[1]))
from batchdrop.handlers.submit import handler
from batchdrop.local.dispatcher import LocalContext
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = handler(json.loads(sys.argv[2]), LocalContext("submit"))
seconds = time.perf_counter() - start
assert out["jobs"][0]["outcome"] == "submitted", out
print(json.dumps({"baseline_kb": baseline, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": seconds, "job_id": out["jobs"][0]["job_id"]}))
"""
# A small parent for the child: Linux carries a parent's peak RSS over into a child's ru_maxrss when
# the child is spawned directly from a large process (this one, after the lookups).


def request_line(i: int) -> bytes:
    text = (f"Question {i}: say it to a ten-year-old. " * (PROMPT_CHARS // 30 + 1))[:PROMPT_CHARS]
    return orjson.dumps(
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}],
                "max_tokens": 64,
            },
        }
    )


def answer(i: int) -> dict[str, Any]:
    """A chat completion as OpenAI's batch output carries it (the body of a response)."""
    return {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"Answer {i}: plants eat light, kind of."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
    }


def write_file(path: Path, requests: int) -> None:
    with path.open("wb") as f:
        for start in range(0, requests, 10_000):
            f.write(b"".join(request_line(i) + b"\n" for i in range(start, min(start + 10_000, requests))))


def lines_of(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from f


def blocks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while block := list(islice(it, size)):
        yield block


class Servers:
    """moto's server and the emulator in their own processes. The emulator ends no batch during the run
    (an hour's latency), so that making their outputs takes no CPU from the handler being timed."""

    def __enter__(self) -> Servers:
        self.aws_port, self.emulator_port = free_port(), free_port()
        python = sys.executable
        self.processes = [
            subprocess.Popen([python, "-m", "moto.server", "-p", str(self.aws_port)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL),
            subprocess.Popen([python, "-m", "batchdrop.cli", "emulator", "--port", str(self.emulator_port),
                              "--provider-latency", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]  # fmt: skip
        wait_for(self.aws_port)
        wait_for(self.emulator_port)
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=30)

    def options(self) -> Any:
        from batchdrop.local import stack as s
        from batchdrop.local.emulator import EmulatorKnobs

        return s.StackOptions(
            knobs=EmulatorKnobs(),
            providers=("openai", "anthropic"),
            external_aws=f"http://127.0.0.1:{self.aws_port}",
            external_emulator=f"http://127.0.0.1:{self.emulator_port}",
        )


def fill_cache(path: Path) -> tuple[int, float]:
    """Answers for every HIT_EVERY-th request, written as completion writes them (AnswerWriter); keys
    from the lines as the provider gets them, which for an OpenAI file are its own lines."""
    from batchdrop.cache import AnswerWriter, request_key
    from batchdrop.local import stack as s

    cache = _cache()
    writer = AnswerWriter(cache)
    start = time.perf_counter()
    expected = 0
    for i, raw in enumerate(lines_of(path)):
        if i % HIT_EVERY == 0:
            writer.add(request_key("openai", MODEL, raw), "openai", MODEL, "batch", answer(i))
            expected += 1
    writer.close()
    seconds = time.perf_counter() - start
    assert cache.stats.written == expected, (cache.stats, expected, s.CACHE_TABLE)
    return expected, seconds


def _cache() -> Any:
    from batchdrop.adapters.cache import ResponseCache
    from batchdrop.local import stack as s

    return ResponseCache(s.CACHE_TABLE, None, ttl_seconds=TTL_SECONDS)


def submit(local: Any, path: Path, key: str, metadata: dict[str, str] | None) -> dict[str, Any]:
    """Upload the file and run the submit handler on its S3 event as a process: wall seconds, peak RSS,
    and the job's cache_stats and stored batches."""
    from batchdrop.adapters import aws
    from batchdrop.adapters.store import JobStore
    from batchdrop.local import stack as s

    local.upload(str(path), key, metadata)
    sqs = aws.client("sqs")
    event: dict[str, Any] | None = None
    deadline = time.monotonic() + 120
    while event is None and time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=local.queue_urls[s.S3_EVENTS_QUEUE], WaitTimeSeconds=1).get(
            "Messages", []
        ):
            body = json.loads(message["Body"])
            # moto's events carry the key URL-encoded, as S3's do.
            if any(unquote_plus(r["s3"]["object"]["key"]) == key for r in body.get("Records", [])):
                event = body
    if event is None:
        raise RuntimeError(f"no S3 event for {key}")
    env = {
        **local.function_env(),
        **{k: os.environ[k] for k in os.environ if k.startswith(("AWS_", "POWERTOOLS_"))},
    }
    child = [sys.executable, "-c", CHILD, json.dumps(env), json.dumps(event)]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", FRESH, *child], capture_output=True, text=True, check=False,
                         env={**os.environ, **env})  # fmt: skip
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"the submit handler failed: {out.stderr[-3000:]}")
    figures = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    store = JobStore(s.TABLE)
    job = store.get_job(figures["job_id"]) or {}
    batches = store.get_batches(figures["job_id"])
    figures.update(
        wall=wall,
        cache_stats={k: int(v) for k, v in (job.get("cache_stats") or {}).items()},
        counts=job.get("counts"),
        sent=sum(int(b["requests"]) for b in batches if b.get("lane") != "cache"),
        answered=sum(int(b["requests"]) for b in batches if b.get("lane") == "cache"),
        batches=len(batches),
    )
    return figures


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lookup_throughput(path: Path, moto_pid: int) -> dict[str, float]:
    """Every request's key looked up as planning does (2,000 at a time), and the naive peer: one GetItem
    per key, one after another, on the first SAMPLE keys (a tenth of them hits, as in the whole). The
    CPU each side spent on the lookups says which one a faster table would relieve."""
    from batchdrop.adapters import aws
    from batchdrop.cache import BLOCK, request_key
    from batchdrop.local import stack as s

    cache = _cache()
    key_seconds = lookup_seconds = client_cpu = 0.0
    moto_before = cpu_seconds(moto_pid)
    keys = found = 0
    sample: list[str] = []
    for block in blocks(lines_of(path), BLOCK):
        start = time.perf_counter()
        block_keys = [request_key("openai", MODEL, raw) for raw in block]
        key_seconds += time.perf_counter() - start
        if len(sample) < SAMPLE:
            sample.extend(block_keys[: SAMPLE - len(sample)])
        start, cpu = time.perf_counter(), time.process_time()
        found += len(cache.lookup(block_keys))
        lookup_seconds += time.perf_counter() - start
        client_cpu += time.process_time() - cpu
        keys += len(block_keys)
    moto_cpu = cpu_seconds(moto_pid) - moto_before
    ddb = aws.client("dynamodb")
    start = time.perf_counter()
    naive_found = sum(1 for k in sample if "Item" in ddb.get_item(TableName=s.CACHE_TABLE, Key={"h": {"S": k}}))
    naive_seconds = time.perf_counter() - start
    assert cache.stats.errors == 0, cache.stats
    assert cache.stats.poisoned == 0, cache.stats
    return {
        "keys": keys,
        "found": found,
        "key_seconds": key_seconds,
        "lookup_seconds": lookup_seconds,
        "client_cpu": client_cpu,
        "moto_cpu": moto_cpu,
        "naive_keys": len(sample),
        "naive_found": naive_found,
        "naive_seconds": naive_seconds,
    }


class _Answers:
    """A cache answered from memory: what splitting costs without the table's calls."""

    def __init__(self, entries: dict[str, Any]) -> None:
        self.entries = entries

    def lookup(self, keys: Iterable[str]) -> dict[str, Any]:
        return {k: self.entries[k] for k in keys if k in self.entries}


def split_seconds(path: Path, tmp: Path, rounds: int = 3) -> dict[str, float]:
    """`cache.split_answered` on one OpenAI-sized batch (SPLIT_BATCH requests, a tenth answered), the
    lookups answered from memory, and the keys alone on the same lines: their difference is what
    rewriting the batch's files costs. Best of `rounds`: a difference of two close figures."""
    from batchdrop.adapters.cache import Entry
    from batchdrop.cache import request_key, split_answered
    from batchdrop.planner import PlannedBatch

    lines = list(islice(lines_of(path), SPLIT_BATCH))
    data = b"".join(lines)
    index = b"".join(f"req-{i}\t{i + 1}\n".encode() for i in range(len(lines)))
    entries = {
        request_key("openai", MODEL, raw): Entry(answer(i), "batch", MODEL)
        for i, raw in enumerate(lines)
        if i % HIT_EVERY == 0
    }
    keys = split = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for raw in lines:
            request_key("openai", MODEL, raw)
        keys = min(keys, time.perf_counter() - start)
        # The split takes the batch's files away: written anew each round.
        (tmp / "split.jsonl").write_bytes(data)
        (tmp / "split.idx").write_bytes(index)
        batch = PlannedBatch(
            "a1-openai-0001", "openai", "chat", MODEL, len(lines), len(data),
            str(tmp / "split.jsonl"), str(tmp / "split.idx"),
        )  # fmt: skip
        start = time.perf_counter()
        sent, hits = split_answered(batch, _Answers(entries), str(tmp))  # type: ignore[arg-type]
        split = min(split, time.perf_counter() - start)
        assert sent is not None, sent
        assert hits is not None, hits
        assert hits.requests == len(entries), (hits, len(entries))
        sent.discard()
        hits.discard()
    return {"requests": len(lines), "keys": keys, "split": split}


def bench_cache(rows: list[dict[str, Any]], tmp: Path, quick: bool) -> None:
    from batchdrop.local import stack as s
    from batchdrop.options import META_CACHE

    requests = QUICK_REQUESTS if quick else REQUESTS
    path = tmp / "cache-input.jsonl"
    write_file(path, requests)
    mb = path.stat().st_size / 1024 / 1024
    expected = len(range(0, requests, HIT_EVERY))
    runs: dict[str, dict[str, Any]] = {}
    with Servers() as servers, s.LocalStack(servers.options()) as local:
        runs["off"] = submit(local, path, "inputs/cache-off.jsonl", None)
    with Servers() as servers, s.LocalStack(servers.options()) as local:
        written, fill_seconds = fill_cache(path)
        print(f"  cache filled: {written:,} answers in {fill_seconds:.1f} s", file=sys.stderr, flush=True)
        runs["read"] = submit(local, path, "inputs/cache-read.jsonl", {META_CACHE: "read"})
        throughput = lookup_throughput(path, servers.processes[0].pid)
    # The run without the cache again, after: on a shared machine one short run can land in a busy
    # minute (42 s and 83 s were both seen), and the faster of two is the fairer baseline.
    with Servers() as servers, s.LocalStack(servers.options()) as local:
        runs["off again"] = submit(local, path, "inputs/cache-off.jsonl", None)
    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        split = split_seconds(path, Path(folder))
    path.unlink()
    for name, run in runs.items():
        print(f"  {name}: {json.dumps(run)}", file=sys.stderr, flush=True)
    off = min(runs["off"], runs["off again"], key=lambda run: float(run["wall"]))
    read = runs["read"]
    offs = f"{runs['off']['wall']:.1f} s and {runs['off again']['wall']:.1f} s"
    # A broken benchmark fails here, not in a table of figures that look fine.
    for run in (runs["off"], runs["off again"]):
        assert run["sent"] == requests, run
        assert run["answered"] == 0, run
        assert not run["cache_stats"], run
    assert read["cache_stats"].get("hits") == expected, (read["cache_stats"], expected)
    assert read["cache_stats"].get("misses") == requests - expected, (read["cache_stats"], expected)
    assert read["answered"] == expected, read
    assert read["sent"] == requests - expected, read
    assert throughput["found"] == expected, throughput
    assert throughput["naive_found"] == len(range(0, int(throughput["naive_keys"]), HIT_EVERY)), throughput

    added = read["wall"] - off["wall"]
    what = f"{requests:,} OpenAI requests, {mb:.0f} MB"
    rows.append(
        {
            "benchmark": f"submit handler as a process, {what}, `batchdrop-cache: read`, 1 in {HIT_EVERY} cached "
            f"({expected:,} hits)",
            "batchdrop": f"{read['wall']:.1f} s (+{added:.1f} s, {added / requests * 1e6:.1f} µs a request)",
            "baseline": f"the same file, cache off {off['wall']:.1f} s (the faster of {offs})",
            "ratio": f"{read['wall'] / off['wall']:.2f}x",
        }
    )
    rows.append(
        {
            "benchmark": f"peak RSS, submit handler, {what}, `batchdrop-cache: read`",
            "batchdrop": f"{read['peak_kb'] / 1024:.0f} MB",
            "baseline": f"cache off {off['peak_kb'] / 1024:.0f} MB",
            "ratio": f"{read['peak_kb'] / off['peak_kb']:.2f}x",
        }
    )
    rate = throughput["keys"] / throughput["lookup_seconds"]
    naive = throughput["naive_keys"] / throughput["naive_seconds"]
    rows.append(
        {
            "benchmark": f"cache lookups against moto's server, {throughput['keys']:,.0f} keys in blocks of 2,000 "
            f"(ResponseCache.lookup), {expected:,} found",
            "batchdrop": f"{rate:,.0f} keys/s ({throughput['lookup_seconds']:.1f} s; CPU a key: this process "
            f"{throughput['client_cpu'] / throughput['keys'] * 1e6:.0f} µs, moto's server "
            f"{throughput['moto_cpu'] / throughput['keys'] * 1e6:.0f} µs)",
            "baseline": f"one GetItem per key, serially, {throughput['naive_keys']:,.0f} keys: {naive:,.0f} keys/s",
            "ratio": f"{rate / naive:.1f}x",
        }
    )
    # The added time, part by part: keys and lookups as measured here, splitting scaled from one batch.
    splitting = (split["split"] - split["keys"]) / split["requests"] * requests
    key_rate = throughput["keys"] / throughput["key_seconds"]
    parts = throughput["key_seconds"] + throughput["lookup_seconds"] + splitting
    rows.append(
        {
            "benchmark": f"where the {added:.1f} s added go ({requests:,} requests)",
            "batchdrop": f"keys {throughput['key_seconds']:.1f} s ({key_rate:,.0f}/s); lookups "
            f"{throughput['lookup_seconds']:.1f} s; splitting the batch files {splitting:.1f} s "
            f"(from one {split['requests']:,}-request batch)",
            "baseline": f"the added time {added:.1f} s (the parts measured apart: {parts:.1f} s)",
            "ratio": f"{parts / added:.2f}x",
        }
    )
