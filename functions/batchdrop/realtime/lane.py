"""Sending a real-time batch (its chunks, to the real-time queue) and answering for it as a provider
answers for a batch: its status from its chunks' count, its outcomes from their files, its cancel.

Sending is safe to repeat: the chunks are cut the same way every time, and the worker claims each
chunk before it runs it (batchdrop.adapters.store.claim_chunk), so a message sent twice runs once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import due_fields, set_flag
from batchdrop.config import ENV_REALTIME_QUEUE_URL, ConfigError
from batchdrop.pipeline import Deps, batch_data_key, batch_index_key, iso, realtime_prefix

logger = Logger(service="batchdrop")

ID_PREFIX = "realtime:"
# How long after sending a real-time batch the poll first looks at it (the worker ends it itself when
# its last chunk is done; the poll is the safety net for a worker that died).
FIRST_LOOK_SECONDS = 60


def batch_id(batch: dict[str, Any]) -> str:
    """The id a real-time batch is recorded under: its job and key, so its status needs no registry."""
    return f"{ID_PREFIX}{batch['job_id']}/{batch['batch_key']}"


def parse_id(provider_batch_id: str) -> tuple[str, str]:
    job_id, _, batch_key = provider_batch_id[len(ID_PREFIX) :].partition("/")
    return job_id, batch_key


def chunk_key(job_id: str, batch_key: str, chunk: int) -> str:
    return f"{realtime_prefix(job_id, batch_key)}{chunk:06d}.jsonl"


def start(deps: Deps, batch: dict[str, Any]) -> dict[str, Any]:
    """Send a planned real-time batch: intent, its chunks on the queue, then recorded as running."""
    if deps.realtime is None:
        raise ConfigError(f"{ENV_REALTIME_QUEUE_URL} is not set: the deployment (CDK stack or local stack) sets it")
    if batch["status"] in (m.PENDING, m.HELD):
        batch = deps.store.update(
            batch, {"status": m.SUBMITTING, "intent_at": deps.clock()}, when_status=(m.PENDING, m.HELD)
        )
    messages = list(_chunks(deps, batch, deps.settings.realtime_chunk))
    deps.realtime.send_many(messages)
    deps.checkpoint("after_create")
    now = deps.clock()
    sent = deps.store.update(
        batch,
        {
            "provider_batch_id": batch_id(batch),
            "status": m.IN_PROGRESS,
            "chunks": len(messages),
            "submitted_at": iso(now),
            "submitted_ts": now,
            **due_fields(
                now + max(deps.settings.poll_min_seconds, min(FIRST_LOOK_SECONDS, deps.settings.lease_seconds))
            ),
        },
        when_status=(m.SUBMITTING,),
    )
    logger.info("real-time batch sent", extra={"batch_key": batch["batch_key"], "chunks": len(messages)})
    deps.checkpoint("after_record")
    return sent


def stalled(deps: Deps, batch: dict[str, Any], status: m.BatchStatus) -> bool:
    """Whether a running real-time batch has made no progress for longer than a chunk's run may take and
    its message come back (a chunk whose messages all ended in the dead-letter queue, or were lost): its
    unfinished chunks are sent again then (`redrive`): after the lease (an invocation's longest run), at
    least 10 s."""
    if status.terminal or batch.get("rt_canceled"):
        return False
    quiet = max(10.0, float(deps.settings.lease_seconds))
    last = max(
        float(batch.get("submitted_ts") or 0),
        float(batch.get("progressed_at") or 0),
        float(batch.get("redriven_at") or 0),
    )
    return deps.clock() - last > quiet


def redrive(deps: Deps, batch: dict[str, Any]) -> int:
    """Send again the messages of the batch's chunks that are not done; returns how many. A chunk that is
    done, or that another invocation runs, takes its copy without running it again (its claim)."""
    if deps.realtime is None:
        return 0
    done = deps.store.chunks_done(batch["job_id"], batch["batch_key"])
    messages = [msg for msg in _chunks(deps, batch, deps.settings.realtime_chunk) if msg["chunk"] not in done]
    set_flag(deps.store, batch, "redriven_at", deps.clock())
    deps.realtime.send_many(messages)
    logger.warning("sent a stalled real-time batch's unfinished chunks again", extra={"chunks": len(messages)})
    return len(messages)


def _chunks(deps: Deps, batch: dict[str, Any], size: int) -> Iterator[dict[str, Any]]:
    """The batch's requests `size` at a time, as byte ranges of its data and index files (the files are
    ours: one request a line, in the same order)."""
    job_id, key = batch["job_id"], batch["batch_key"]
    data = deps.objects.lines(batch_data_key(job_id, key))
    index = deps.objects.lines(batch_index_key(job_id, key))
    chunk = count = 0
    data_at = index_at = data_start = index_start = 0
    for payload, entry in zip(data, index, strict=True):
        data_at += len(payload) + 1
        index_at += len(entry) + 1
        count += 1
        if count == size:
            yield _message(batch, chunk, (data_start, data_at), (index_start, index_at), count)
            chunk, count, data_start, index_start = chunk + 1, 0, data_at, index_at
    if count:
        yield _message(batch, chunk, (data_start, data_at), (index_start, index_at), count)


def _message(
    batch: dict[str, Any], chunk: int, data: tuple[int, int], index: tuple[int, int], requests: int
) -> dict[str, Any]:
    return {
        "job_id": batch["job_id"],
        "batch_key": batch["batch_key"],
        "provider": batch["provider"],
        "model": batch.get("model", ""),
        "chunk": chunk,
        "requests": requests,
        "data": list(data),
        "index": list(index),
    }


class RealtimeLane:
    """A real-time batch, looked at and read as a provider's batch is (batchdrop.providers.base.Provider:
    status, outcomes, cancel, cleanup), from what its chunks left in DynamoDB and on S3."""

    name = "realtime"

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def _batch(self, provider_batch_id: str) -> dict[str, Any]:
        job_id, key = parse_id(provider_batch_id)
        batch = self.deps.store.get_batch(job_id, key)
        if batch is None:
            raise KeyError(f"real-time batch {provider_batch_id} is gone")
        return batch

    def status(self, provider_batch_id: str) -> m.BatchStatus:
        batch = self._batch(provider_batch_id)
        chunks, done = int(batch.get("chunks") or 0), int(batch.get("chunks_done") or 0)
        if batch.get("rt_canceled"):
            state = m.BATCH_CANCELED
        elif chunks and done >= chunks:
            state = m.COMPLETED
        else:
            state = m.IN_PROGRESS
        return m.BatchStatus(
            state=state,
            provider_status=f"{done}/{chunks} chunks done",
            total=int(batch["requests"]),
            done=int(batch.get("requests_done") or 0),
        )

    def outcomes(self, provider_batch_id: str, status: m.BatchStatus) -> Iterator[m.Outcome]:
        """Every answer its chunks wrote, a chunk's partial file included (a chunk cut short by a
        cancel or the invocation's time keeps what it answered)."""
        job_id, key = parse_id(provider_batch_id)
        for name in sorted(self.deps.objects.keys(realtime_prefix(job_id, key))):
            for raw in self.deps.objects.lines(name):
                yield outcome_from_line(raw)

    def cancel(self, provider_batch_id: str) -> None:
        """No chunk starts a request after this; what runs finishes and is kept. Version-free, like a
        cancel request, so it never collides with the pipeline's writes of the batch."""
        set_flag(self.deps.store, self._batch(provider_batch_id), "rt_canceled")

    def cleanup(self, provider_batch_id: str, status: m.BatchStatus) -> None:
        """Nothing at a provider: the chunk files live under work/, which expires with the job's."""


def outcome_line(outcome: m.Outcome) -> bytes:
    if outcome.ok:
        return orjson.dumps({"custom_id": outcome.custom_id, "ok": True, "response": outcome.response})
    return orjson.dumps(
        {
            "custom_id": outcome.custom_id,
            "ok": False,
            "code": outcome.code,
            "message": outcome.message,
            "detail": outcome.detail,
        }
    )


def outcome_from_line(raw: bytes) -> m.Outcome:
    line = orjson.loads(raw)
    if line.get("ok"):
        return m.Outcome(line["custom_id"], ok=True, response=line.get("response"))
    return m.Outcome(
        line["custom_id"], ok=False, code=line.get("code"), message=line.get("message"), detail=line.get("detail")
    )
