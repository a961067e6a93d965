"""The response cache (docs/cache.md): requests a file repeats from an earlier job are answered from what
that job was answered, and never sent again, when the file says so (`batchdrop-cache: read` or
`read-write`).

The key is the hash of the canonical request: provider, model and the request line as it goes to the
provider (endpoint and body) without its id, its keys sorted and its whitespace gone, so neither the
file's key order nor its custom_ids matter. It is taken from the planned batch's lines, the same bytes
the provider would be sent, whichever format the user wrote them in.

Planning looks a closed batch's requests up before the batch is stored: the answered ones go into an
item of their own (lane `cache`, ended as planned, its answers in a file beside its index), the rest
stay in the batch. A re-run of the same planning (after a crash) keeps what the first run found, so no
request is both answered from the cache and sent. Completion writes each successful, complete answer
of a `read-write` job back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson

from batchdrop import models as m
from batchdrop.adapters.cache import PUT_ITEMS, Entry, ResponseCache, logger
from batchdrop.pipeline import Deps, answers_key, batch_data_key, batch_index_key
from batchdrop.planner import ENVELOPE_BYTES, PlannedBatch
from batchdrop.providers import SPECS

# How many requests are looked up together: 20 BatchGetItem calls, side by side.
BLOCK = 2000
# A cached answer's item, beside the batch whose requests it answered.
CACHE_SUFFIX = "-cache"
KEY_FORMAT = 1
# The field of each provider's batch line that holds the request's id (Azure's lines are OpenAI's).
_ID_FIELDS = {name: spec.line.id_field for name, spec in SPECS.items() if spec.line is not None}


def request_key(provider: str, model: str, payload: bytes) -> str:
    """The cache key of a request line in its provider's batch format."""
    line = orjson.loads(payload)
    if isinstance(line, dict):
        line.pop(_ID_FIELDS.get(provider, "custom_id"), None)
    canonical = orjson.dumps(
        {"format": KEY_FORMAT, "provider": provider, "model": model, "request": line}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).hexdigest()


# Why an answer stopped, where each provider says it; the values that mean "cut short by the token limit".
# OpenAI chat: choices[].finish_reason "length" (openai.types.chat.chat_completion.Choice); Anthropic and
# Claude on Bedrock: stop_reason "max_tokens" (anthropic.types.Message); Nova on Bedrock: stopReason
# "max_tokens" (Bedrock's Converse StopReason); Llama on Bedrock: stop_reason "length"; Gemini:
# candidates[].finishReason "MAX_TOKENS" (google.genai.types.FinishReason).
_CUT = {"length", "max_tokens", "MAX_TOKENS"}


def complete(response: dict[str, Any]) -> bool:
    """Whether an answer is whole: not cut short by its token limit (such an answer is not cached)."""
    if response.get("stop_reason") in _CUT or response.get("stopReason") in _CUT:
        return False
    for choice in response.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason") in _CUT:
            return False
    for candidate in response.get("candidates") or ():
        if isinstance(candidate, dict) and candidate.get("finishReason") in _CUT:
            return False
    return True


def split_answered(
    batch: PlannedBatch, cache: ResponseCache, tmpdir: str | None, minimum: int = 1
) -> tuple[PlannedBatch | None, PlannedBatch | None]:
    """(the requests still to send, those the cache answered) of a closed batch, in new files; (None, None)
    when the cache answers none of it, and the batch is sent whole. `batch`'s own files are left as they are.

    A batch whose provider runs no batch under `minimum` requests (Bedrock) is sent whole when the
    cache would leave it fewer: paying for answers we have beats a batch the provider refuses."""
    out = _Split(batch, tmpdir)
    try:
        with open(batch.path, "rb") as data, open(batch.index_path, "rb") as index:
            block: list[tuple[bytes, bytes, str]] = []
            for payload, entry in zip(data, index, strict=True):
                block.append((payload, entry, request_key(batch.provider, batch.model, payload)))
                if len(block) == BLOCK:
                    out.add(block, cache.lookup(k for _, _, k in block))
                    block = []
            if block:
                out.add(block, cache.lookup(k for _, _, k in block))
    except BaseException:
        out.discard()
        raise
    if not out.hits or 0 < out.sent < minimum:
        out.discard()
        return None, None
    return out.finish()


def split_known(
    batch: PlannedBatch, answers: bytes, tmpdir: str | None
) -> tuple[PlannedBatch | None, PlannedBatch | None]:
    """The same split as the planning that wrote `answers` (the answers file it decided on) made: its
    answered lines with those answers, the rest to send. `batch`'s own files are left as they are."""
    answered = {int(orjson.loads(raw)["line"]) for raw in answers.splitlines() if raw.strip()}
    out = _Split(batch, tmpdir)
    with open(batch.path, "rb") as data, open(batch.index_path, "rb") as index:
        for payload, entry in zip(data, index, strict=True):
            if int(entry.rpartition(b"\t")[2]) in answered:
                out.hit(payload, entry)
            else:
                out.keep(payload, entry)
    out.answers.write(answers)
    return out.finish()


class _Split:
    def __init__(self, batch: PlannedBatch, tmpdir: str | None) -> None:
        self.batch = batch
        self.files = [
            tempfile.NamedTemporaryFile(dir=tmpdir, suffix=suffix, delete=False)  # noqa: SIM115
            for suffix in (".jsonl", ".idx", ".jsonl", ".idx", ".answers")
        ]
        self.sent_data, self.sent_index, self.hit_data, self.hit_index, self.answers = self.files
        self.sent = self.hits = 0
        self.sent_bytes = self.hit_bytes = ENVELOPE_BYTES

    def keep(self, payload: bytes, entry: bytes) -> None:
        self.sent_data.write(payload)
        self.sent_index.write(entry)
        self.sent += 1
        self.sent_bytes += len(payload)

    def hit(self, payload: bytes, entry: bytes) -> None:
        self.hit_data.write(payload)
        self.hit_index.write(entry)
        self.hits += 1
        self.hit_bytes += len(payload)

    def add(self, block: list[tuple[bytes, bytes, str]], found: dict[str, Entry]) -> None:
        for payload, entry, key in block:
            found_entry = found.get(key)
            if found_entry is None:
                self.keep(payload, entry)
                continue
            custom_id, _, line = entry.rstrip(b"\n").partition(b"\t")
            self.hit(payload, entry)
            self.answers.write(
                orjson.dumps(
                    {
                        "custom_id": custom_id.decode(),
                        "line": int(line),
                        "lane": found_entry.lane,
                        "model": found_entry.model,
                        "response": found_entry.response,
                    }
                )
                + b"\n"
            )

    def finish(self) -> tuple[PlannedBatch | None, PlannedBatch | None]:
        for f in self.files:
            f.close()
        b = self.batch
        sent = None
        if self.sent:
            sent = PlannedBatch(
                b.key, b.provider, b.group, b.model, self.sent, self.sent_bytes,
                self.sent_data.name, self.sent_index.name, b.lane,
            )  # fmt: skip
        else:
            _unlink(self.sent_data.name, self.sent_index.name)
        hits = None
        if self.hits:
            hits = PlannedBatch(
                b.key + CACHE_SUFFIX, b.provider, b.group, b.model, self.hits, self.hit_bytes,
                self.hit_data.name, self.hit_index.name, m.LANE_CACHE, answers_path=self.answers.name,
            )  # fmt: skip
        else:
            _unlink(self.hit_data.name, self.hit_index.name, self.answers.name)
        return sent, hits

    def discard(self) -> None:
        for f in self.files:
            f.close()
        _unlink(*(f.name for f in self.files))


def _unlink(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def count_answered(batch: PlannedBatch, cache: ResponseCache) -> int:
    """How many of a planned batch's requests the cache would answer now (`batchdrop validate`)."""
    with open(batch.path, "rb") as data:
        keys = [request_key(batch.provider, batch.model, payload) for payload in data]
    return cache.count(keys)


def cached_outcomes(deps: Deps, batch: dict[str, Any]) -> Iterator[tuple[str, int, m.Outcome, Entry]]:
    """The answers of a job's `cache` item, each for the request its index still holds (a line taken out
    as a duplicate after the lookup keeps no answer)."""
    job_id, key = batch["job_id"], batch["batch_key"]
    index: dict[str, int] = {}
    for raw in deps.objects.lines(batch_index_key(job_id, key)):
        custom_id, _, line = raw.partition(b"\t")
        index[custom_id.decode()] = int(line)
    for raw in deps.objects.lines(answers_key(job_id, key)):
        answer = orjson.loads(raw)
        custom_id, line = answer["custom_id"], answer["line"]
        if index.get(custom_id) != line:
            continue
        del index[custom_id]
        entry = Entry(answer["response"], answer["lane"], answer.get("model", ""))
        yield custom_id, line, m.Outcome(custom_id, ok=True, response=entry.response), entry


def request_keys(deps: Deps, batch: dict[str, Any]) -> dict[str, str]:
    """custom_id → cache key of a stored batch's requests (its data file read back beside its index)."""
    job_id, key = batch["job_id"], batch["batch_key"]
    provider, model = batch["provider"], batch.get("model", "")
    lines = zip(
        deps.objects.lines(batch_index_key(job_id, key)), deps.objects.lines(batch_data_key(job_id, key)), strict=True
    )
    return {entry.partition(b"\t")[0].decode(): request_key(provider, model, payload) for entry, payload in lines}


class AnswerWriter:
    """Writes a `read-write` job's answers back to the cache, 25 to a call, calls side by side in the
    background while completion reads on. `close` waits for them; nothing here ever raises."""

    def __init__(self, cache: ResponseCache, workers: int = 4) -> None:
        self.cache = cache
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers)
        self.pending: dict[str, dict[str, Any]] = {}
        self.futures: list[Future[None]] = []

    def add(self, key: str, provider: str, model: str, lane: str, response: dict[str, Any]) -> None:
        if not complete(response):
            return
        try:
            self.pending[key] = self.cache.item(key, provider, model, lane, response)
        except Exception as exc:  # a large answer's object could not be written: not cached
            self.cache.stats.add(write_errors=1)
            logger.warning("cache write failed: not cached", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            return
        if len(self.pending) >= PUT_ITEMS:
            self._flush()

    def _flush(self) -> None:
        items, self.pending = list(self.pending.values()), {}
        if items:
            self.futures.append(self.pool.submit(self.cache.put, items))
        # Done calls are dropped, so a million answers keep no million futures; and no more than a few
        # calls wait at once, so answers read faster than they are written do not pile up in memory.
        while len(self.futures) > 4 * self.workers:
            self.futures.pop(0).result()
        for f in [f for f in self.futures if f.done()]:
            self.futures.remove(f)
            f.result()  # `put` raises nothing but the invocation's own end (a crash), which goes on up

    def close(self) -> None:
        self._flush()
        for f in self.futures:
            f.result()
        self.pool.shutdown(wait=True)
        self.futures = []


def open_cache(deps: Deps) -> ResponseCache | None:
    """The deployment's cache, or None when it has no cache table."""
    settings = deps.settings
    if not settings.cache_table:
        return None
    return ResponseCache(
        settings.cache_table, deps.objects, ttl_seconds=settings.cache_ttl_seconds, clock=deps.clock,
        checkpoint=deps.checkpoint,
    )  # fmt: skip
