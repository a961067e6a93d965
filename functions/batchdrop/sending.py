"""Recording a planned batch, and sending it to its provider exactly once, whatever crashes in between.

The order is always: record the intent, create at the provider, record the provider's batch id. A
crash between the last two leaves a batch the provider accepted (and will bill) that we have not
recorded; the next attempt must adopt it, never create a second one.

- Providers that tag batches (OpenAI: metadata with our job id and batch key) are searched by tag.
- Providers that do not (Anthropic) can only be matched by time and request count, which is
  ambiguous when two jobs create same-sized batches at once. So their creates are serialised by a
  lock item that also holds the intent: at most one unrecorded batch can exist, and whoever takes
  the lock next adopts it on behalf of the batch that created it.

Every provider batch id we record is also claimed in a registry item, so one provider batch can
never be adopted by two of our batches.

A create that fails does not fail forever: the provider's own refusal (a 4xx, or a request that cannot
be built) ends the batch at once as failed, with the provider's message; any other error is retried by
the invocation's retry, and after `max_create_attempts` failures the batch ends the same way. So a
batch, and its job, always ends.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Any

from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import Conflict, JobStore, deserialize, due_fields, job_pk, serialize
from batchdrop.config import tmpdir
from batchdrop.pipeline import Deps, batch_data_key, batch_index_key, iso
from batchdrop.planner import PlannedBatch
from batchdrop.providers.base import BatchRef, Provider

logger = Logger(service="batchdrop")

LOCK_WAIT_SECONDS = 120


class ProviderBusy(Exception):
    """The provider's create lock stayed taken; the invocation fails and is retried."""


class CreateFailed(Exception):
    """The provider's create raised; `permanent` when the provider will never take this batch."""

    def __init__(self, cause: Exception, permanent: bool) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.permanent = permanent


def submit_batch(deps: Deps, job_id: str, batch: dict[str, Any], owner: str) -> dict[str, Any]:
    """Send one planned batch, or adopt the provider's copy if an earlier attempt got that far.

    Returns the batch as recorded: sent (with its provider batch id), or ended as failed when the
    provider refused it or its creates kept failing.
    """
    if batch.get("provider_batch_id") or batch.get("status") in m.TERMINAL_BATCH_STATES:
        return batch
    provider = deps.provider(batch["provider"])
    if batch["status"] == m.PENDING:
        batch = deps.store.update(batch, {"status": m.SUBMITTING, "intent_at": deps.clock()})
    try:
        if getattr(provider, "tags_batches", False):
            batch_id = _find_tagged(deps, provider, _ref(batch)) or _create(deps, provider, batch)
            return _record(deps, batch, batch_id)
        return _submit_serialised(deps, provider, batch, owner)
    except CreateFailed as failure:
        return _create_failed(deps, provider, batch, failure)


def cancel_unsent(deps: Deps, batch: dict[str, Any]) -> dict[str, Any]:
    """End a batch of a canceled job that was never recorded as sent. One whose create may have reached
    the provider (an intent recorded) is looked for first and, when found, recorded instead, so that the
    job's cancel reaches it rather than leaving it running unseen."""
    if batch["status"] == m.SUBMITTING:
        provider = deps.provider(batch["provider"])
        found = provider.find(_ref(batch), frozenset())
        if found and claim_provider_batch(deps.store, provider.name, found, batch):
            return _record(deps, batch, found)
    return deps.store.update(
        batch, {"status": m.BATCH_CANCELED, "ended_at": iso(deps.clock())}, when_status=(m.PENDING, m.SUBMITTING)
    )


def _create_failed(deps: Deps, provider: Provider, batch: dict[str, Any], failure: CreateFailed) -> dict[str, Any]:
    """Count a failed create; end the batch as failed when the provider refused it for good or the
    attempts are spent, and otherwise fail the invocation so that its retry tries again."""
    fresh = _reload(deps.store, batch)
    if fresh.get("provider_batch_id") or fresh.get("status") != m.SUBMITTING:
        return fresh  # another invocation got further meanwhile
    failures = int(fresh.get("create_failures", 0)) + 1
    message = str(failure)[:2000]
    if not failure.permanent and failures < deps.settings.max_create_attempts:
        deps.store.update(fresh, {"create_failures": failures, "last_error": message})
        logger.warning(
            "provider create failed; the invocation's retry tries again",
            extra={"batch_key": fresh["batch_key"], "failures": failures, "error": message[:300]},
        )
        raise failure
    if not failure.permanent:
        # The last attempt's answer may have been lost after the provider made the batch: look once more
        # before giving up on it, so that nothing the provider bills goes untracked.
        with contextlib.suppress(Exception):
            found = provider.find(_ref(fresh), frozenset())
            if found and claim_provider_batch(deps.store, provider.name, found, fresh):
                return _record(deps, fresh, found)
    why = "refused the batch" if failure.permanent else f"failed to create the batch {failures} times"
    now = deps.clock()
    ended = deps.store.update(
        fresh,
        {
            "status": m.FAILED,
            "create_failures": failures,
            "create_refused": True,
            "error": f"{provider.name} {why}: {message}",
            "ended_at": iso(now),
        },
        when_status=(m.SUBMITTING,),
    )
    logger.warning(
        "batch ended as failed at create",
        extra={"batch_key": fresh["batch_key"], "permanent": failure.permanent, "failures": failures},
    )
    return ended


def _ref(batch: dict[str, Any]) -> BatchRef:
    return BatchRef(
        job_id=batch["job_id"],
        key=batch["batch_key"],
        group=batch.get("group", ""),
        model=batch.get("model", ""),
        requests=int(batch["requests"]),
        intent_at=float(batch["intent_at"]),
    )


def _find_tagged(deps: Deps, provider: Provider, ref: BatchRef) -> str | None:
    batch_id = provider.find(ref, frozenset())
    if batch_id:
        logger.info("adopted a batch the provider accepted before a crash", extra={"batch_id": batch_id})
    return batch_id


def _create(deps: Deps, provider: Provider, batch: dict[str, Any]) -> str:
    fd, path = tempfile.mkstemp(dir=tmpdir(), suffix=".jsonl")
    os.close(fd)
    try:
        deps.objects.download(batch_data_key(batch["job_id"], batch["batch_key"]), path)
        try:
            batch_id = provider.create(_ref(batch), path)
        except Exception as exc:
            raise CreateFailed(exc, provider.refused(exc)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    deps.checkpoint("after_create")
    return batch_id


def _record(deps: Deps, batch: dict[str, Any], batch_id: str) -> dict[str, Any]:
    claim_provider_batch(deps.store, batch["provider"], batch_id, batch)
    now = deps.clock()
    updated = deps.store.update(
        batch,
        {
            "provider_batch_id": batch_id,
            "status": m.VALIDATING,
            "submitted_at": iso(now),
            "submitted_ts": now,
            **due_fields(now + deps.settings.poll_min_seconds),
        },
        when_status=(m.SUBMITTING,),
    )
    logger.info("batch submitted", extra={"batch_id": batch_id, "batch_key": batch["batch_key"]})
    deps.checkpoint("after_record")
    return updated


def claim_provider_batch(store: JobStore, provider: str, batch_id: str, batch: dict[str, Any]) -> bool:
    """Register `batch_id` as ours for this batch; False if another of our batches has it already."""
    owner = f"{batch['job_id']}/{batch['batch_key']}"
    try:
        store.ddb.put_item(
            TableName=store.table,
            Item={"pk": {"S": f"PBATCH#{provider}#{batch_id}"}, "sk": {"S": "PBATCH"}, "owner": {"S": owner}},
            ConditionExpression="attribute_not_exists(pk) OR #o = :o",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":o": {"S": owner}},
        )
    except store.ddb.exceptions.ConditionalCheckFailedException:
        return False
    return True


# -- providers without tags: one create at a time, with the intent in the lock ----------------------


def _submit_serialised(deps: Deps, provider: Provider, batch: dict[str, Any], owner: str) -> dict[str, Any]:
    store = deps.store
    lock_key = {"pk": {"S": f"LOCK#create#{provider.name}"}, "sk": {"S": "LOCK"}}
    previous = _acquire(deps, lock_key, owner)
    # No `finally`: an invocation that dies (a timeout) cannot release anything either, and the lock
    # simply runs out; an error we can see releases it at once. The intent outlives both.
    try:
        if previous:
            _adopt_for(deps, provider, previous)
        fresh = _reload(store, batch)
        if fresh.get("provider_batch_id"):
            _release(deps, lock_key, owner)
            return fresh
        _set_intent(deps, lock_key, owner, _ref(fresh))
        batch_id = _create(deps, provider, fresh)
        recorded = _record(deps, fresh, batch_id)
        _clear_intent(deps, lock_key, owner)
    except Exception:
        _release(deps, lock_key, owner)
        raise
    _release(deps, lock_key, owner)
    return recorded


def _reload(store: JobStore, batch: dict[str, Any]) -> dict[str, Any]:
    out = store.ddb.get_item(
        TableName=store.table,
        Key={"pk": {"S": job_pk(batch["job_id"])}, "sk": {"S": batch["sk"]}},
        ConsistentRead=True,
    )
    return deserialize(out["Item"])


def _acquire(deps: Deps, key: dict[str, Any], owner: str) -> dict[str, Any] | None:
    """Take the lock, waiting for a live holder; return the intent a dead holder left behind."""
    store = deps.store
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    delay = 0.05
    while True:
        now = time.time()
        try:
            out = store.ddb.update_item(
                TableName=store.table,
                Key=key,
                UpdateExpression="SET #o = :me, #l = :until",
                ConditionExpression="attribute_not_exists(#o) OR #l < :now OR #o = :me",
                ExpressionAttributeNames={"#o": "owner", "#l": "lease_until"},
                ExpressionAttributeValues={
                    ":me": {"S": owner},
                    ":until": {"N": str(now + deps.settings.create_lock_seconds)},
                    ":now": {"N": str(now)},
                },
                ReturnValues="ALL_OLD",
            )
        except store.ddb.exceptions.ConditionalCheckFailedException:
            if time.monotonic() > deadline:
                raise ProviderBusy("another invocation has held the provider's create lock too long") from None
            time.sleep(delay)
            delay = min(1.0, delay * 2)
            continue
        old = out.get("Attributes") or {}
        if "intent" in old:
            intent: dict[str, Any] = deserialize({"intent": old["intent"]})["intent"]
            return intent
        return None


def _set_intent(deps: Deps, key: dict[str, Any], owner: str, ref: BatchRef) -> None:
    intent = {
        "job_id": ref.job_id,
        "batch_key": ref.key,
        "requests": ref.requests,
        "intent_at": str(deps.clock()),
    }
    deps.store.ddb.update_item(
        TableName=deps.store.table,
        Key=key,
        UpdateExpression="SET intent = :i",
        ConditionExpression="#o = :me",
        ExpressionAttributeNames={"#o": "owner"},
        ExpressionAttributeValues=serialize({":i": intent, ":me": owner}),
    )


def _clear_intent(deps: Deps, key: dict[str, Any], owner: str) -> None:
    with contextlib.suppress(deps.store.ddb.exceptions.ConditionalCheckFailedException):
        deps.store.ddb.update_item(
            TableName=deps.store.table,
            Key=key,
            UpdateExpression="REMOVE intent",
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":me": {"S": owner}},
        )


def _release(deps: Deps, key: dict[str, Any], owner: str) -> None:
    # The intent stays if the create may have happened: the next holder resolves it.
    with contextlib.suppress(deps.store.ddb.exceptions.ConditionalCheckFailedException):
        deps.store.ddb.update_item(
            TableName=deps.store.table,
            Key=key,
            UpdateExpression="REMOVE #o, #l",
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "owner", "#l": "lease_until"},
            ExpressionAttributeValues={":me": {"S": owner}},
        )


def _adopt_for(deps: Deps, provider: Provider, intent: dict[str, Any]) -> None:
    """A holder died between create and record: find its batch and record it where it belongs."""
    store = deps.store
    sk = f"BATCH#{intent['batch_key']}"
    out = store.ddb.get_item(
        TableName=store.table,
        Key={"pk": {"S": job_pk(intent["job_id"])}, "sk": {"S": sk}},
        ConsistentRead=True,
    )
    if "Item" not in out:
        return
    target = deserialize(out["Item"])
    if target.get("provider_batch_id") or target.get("status") != m.SUBMITTING:
        return
    ref = BatchRef(
        job_id=intent["job_id"],
        key=intent["batch_key"],
        group=target.get("group", ""),
        model=target.get("model", ""),
        requests=int(intent["requests"]),
        intent_at=float(intent["intent_at"]),
    )
    exclude: set[str] = set()
    while True:
        candidate = provider.find(ref, frozenset(exclude))
        if candidate is None:
            logger.info("the previous create left no batch behind", extra={"batch_key": ref.key})
            return
        if claim_provider_batch(store, provider.name, candidate, target):
            break
        exclude.add(candidate)
    with contextlib.suppress(Conflict):
        _record(deps, target, candidate)
        logger.info("adopted a batch a crashed create left behind", extra={"batch_id": candidate})


def record_batch(deps: Deps, job_id: str, batch: PlannedBatch, attempt: int) -> None:
    """Store a planned batch's files and its item (once: a re-run plans the same batch again)."""
    try:
        deps.objects.upload_file(batch.path, batch_data_key(job_id, batch.key))
        deps.objects.upload_file(batch.index_path, batch_index_key(job_id, batch.key), "text/plain")
    finally:
        batch.discard()
    deps.store.create(
        {
            "pk": job_pk(job_id),
            "sk": f"BATCH#{batch.key}",
            "job_id": job_id,
            "batch_key": batch.key,
            "provider": batch.provider,
            "group": batch.group,
            "model": batch.model,
            "requests": batch.requests,
            "bytes": batch.bytes,
            "attempt": attempt,
            "status": m.PENDING,
        }
    )
