"""A batch's records: its item (created when planned, then every state it is recorded in), the registry
of provider batch ids, and sending it to its provider exactly once, whatever crashes in between.

The stages (submit, poll, complete, cancel) decide; this module writes, through the store
(batchdrop.adapters.store), and is the only place that writes a batch's item. It imports no stage.

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

A lease or lock can run out while its holder's create is still on its way (a slow provider, a busy
machine), and then another invocation reaches the same batch and finds nothing yet. So each create is
first marked on the batch (who, when): the other invocation waits the create out instead of making a
second one, and the batch's next attempt looks for what an earlier create made before it creates.

A create that fails does not fail forever: the provider's own refusal (a 4xx, or a request that cannot
be built) ends the batch at once as failed, with the provider's message; any other error is retried by
the invocation's retry, and after `max_create_attempts` failures the batch ends the same way. So a
batch, and its job, always ends.

A provider's "not now" is neither: its queue for the model is full (an enqueued-token or queue quota,
refused at create, or OpenAI's batch `failed` with token_limit_exceeded). The batch is *held*: due
for the poll again after a backoff, which offers it to the submit function when there is room, and
it is created again then, as often as it takes. Our own cap keeps most batches from being refused at
all: each batch takes its share (tokens, requests or one batch, in the provider's quota unit) of a
pool (BATCHDROP_<NAME>_MAX_ENQUEUED) before it is created, and gives it back when it ends, so a huge
file goes out in waves that fit.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Container, Iterator
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import (
    BATCH_SK,
    NOT_DUE,
    Conflict,
    JobStore,
    create_lock_pk,
    due_fields,
    job_pk,
    quota_pk,
)
from batchdrop.config import BYTES_PER_TOKEN, Settings, tmpdir
from batchdrop.pipeline import Deps, answers_key, batch_data_key, batch_index_key, iso
from batchdrop.providers import SPECS
from batchdrop.providers.base import Backend, BatchRef, Provider
from batchdrop.providers.structured import asks_any
from batchdrop.realtime import lane as realtime_lane

if TYPE_CHECKING:  # a type only: the poll and complete functions never plan
    from batchdrop.planner import PlannedBatch

logger = Logger(service="batchdrop")

LOCK_WAIT_SECONDS = 120
# How often a full pool is checked for shares left behind (a read of each holder's batch and job).
PRUNE_SECONDS = 600
# After this many "not now" answers for one batch, its hold reason and log say how a batch too large
# for the quota is fixed.
REFUSALS_BEFORE_HINT = 5
# States a batch can be held from: before any create, or after one the provider refused for now.
HOLDABLE = (m.PENDING, m.SUBMITTING, m.HELD)


class ProviderBusy(Exception):
    """The provider's create lock stayed taken; the invocation fails and is retried."""


class CreateFailed(Exception):
    """The provider's create raised; `permanent` when the provider will never take this batch, `quota`
    when it will later (its queue is full now)."""

    def __init__(self, cause: Exception, permanent: bool, quota: bool = False) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.permanent = permanent and not quota
        self.quota = quota


def send_batch(deps: Deps, job_id: str, batch: dict[str, Any], owner: str) -> dict[str, Any]:
    """Send one planned batch, or adopt the provider's copy if an earlier attempt got that far.

    Returns the batch as recorded: sent (with its provider batch id), or ended as failed when the
    provider refused it or its creates kept failing.
    """
    if batch.get("provider_batch_id") or batch.get("status") in m.TERMINAL_BATCH_STATES:
        return batch
    if m.lane_of(batch) == m.LANE_REALTIME:
        # No provider batch and no quota pool: its chunks go to the real-time queue.
        return realtime_lane.start(deps, batch)
    provider = deps.provider(batch["provider"])
    if batch["status"] in (m.PENDING, m.HELD):
        if not _take_room(deps, batch):
            return _hold(deps, batch, f"{_cap_name(batch)} is full: waiting for batches to end", owner, refused=False)
        now = deps.clock()
        changes: dict[str, Any] = {"status": m.SUBMITTING, "intent_at": now}
        if batch["status"] == m.HELD:
            # Still due (a send that dies is offered again by the poll), but not before this create has
            # had its time: a look while it is under way would only offer it again and move its version.
            changes.update(due_fields(now + _create_time(deps.settings)))
        batch = deps.store.update(batch, changes, when_status=(m.PENDING, m.HELD))
    try:
        if getattr(provider, "tags_batches", False):
            batch_id = _find_tagged(deps, provider, _ref(batch), frozenset(batch.get("quota_refused_ids") or ()))
            if batch_id is None:
                batch = _start_create(deps, batch, owner)
                batch_id = _create(deps, provider, batch)
            return _record(deps, batch, batch_id)
        return _submit_serialised(deps, provider, batch, owner)
    except CreateFailed as failure:
        if failure.quota:
            return _hold(deps, batch, f"{provider.name} said not now: {failure}", owner, refused=True)
        return _create_failed(deps, provider, batch, failure)


# -- held batches: a pool of what is enqueued, and "not now" ---------------------------------------


def quota_share(batch: dict[str, Any]) -> int:
    """What the batch counts for in its provider's quota unit."""
    unit = SPECS[batch["provider"]].quota_unit
    if unit == "tokens":
        return max(1, -(-int(batch.get("bytes", 0)) // BYTES_PER_TOKEN))
    if unit == "batches":
        return 1
    return int(batch["requests"])


def _pool(settings: Settings, batch: dict[str, Any]) -> tuple[str, int] | None:
    provider = settings.providers.get(batch["provider"])
    found = None if provider is None else provider.quota_pool(batch.get("model", ""))
    if found is None:
        return None
    pool, cap = found
    return quota_pk(batch["provider"], pool), cap


def _holder(batch: dict[str, Any]) -> str:
    return f"{batch['job_id']}/{batch['batch_key']}"


def _cap_name(batch: dict[str, Any]) -> str:
    return f"BATCHDROP_{batch['provider'].upper()}_MAX_ENQUEUED ({batch.get('model', '')})"


def _take_room(deps: Deps, batch: dict[str, Any]) -> bool:
    pool = _pool(deps.settings, batch)
    if pool is None:
        return True
    pk, cap = pool
    share = quota_share(batch)
    if deps.store.take_quota(pk, _holder(batch), share, cap):
        return True
    if prune(deps, batch):
        return deps.store.take_quota(pk, _holder(batch), share, cap)
    return False


def prune(deps: Deps, batch: dict[str, Any]) -> bool:
    """Give back the shares in the batch's pool whose batches will never give them back themselves: a
    batch ended (a crash came between its end and its give-back) or gone, or a job ended (the watchdog
    ends a job whose batches may never be looked at again). At most once per PRUNE_SECONDS a pool, so a
    full pool costs a read per holder only that often; True if any share was given back."""
    pool = _pool(deps.settings, batch)
    if pool is None or not deps.store.start_prune(pool[0], deps.clock(), PRUNE_SECONDS):
        return False
    pruned = False
    ended_jobs: dict[str, bool] = {}
    for holder in deps.store.quota(pool[0])["holders"]:
        job_id, _, key = holder.partition("/")
        held_by = deps.store.get_batch(job_id, key)
        if job_id not in ended_jobs:
            job = deps.store.get_job(job_id)
            ended_jobs[job_id] = job is None or job["status"] in m.FINAL_JOB_STATES or bool(job.get("timed_out"))
        if held_by is None or held_by.get("status") in m.TERMINAL_BATCH_STATES or ended_jobs[job_id]:
            deps.store.give_back_quota(pool[0], holder)
            pruned = True
    if pruned:
        logger.warning("gave back shares of a quota pool that their batches left behind", extra={"pool": pool[0]})
    return pruned


def pool_of(deps: Deps, batch: dict[str, Any]) -> str | None:
    """The key of the pool the batch counts against, or None when no cap of ours applies."""
    pool = _pool(deps.settings, batch)
    return None if pool is None else pool[0]


def has_room(deps: Deps, batch: dict[str, Any]) -> bool:
    """Whether the batch's share fits its pool now (a read: the poll asks before waking the submit
    function); True when no cap of ours applies."""
    pool = _pool(deps.settings, batch)
    if pool is None:
        return True
    pk, cap = pool
    now = deps.store.quota(pk)
    return now["total"] == 0 or now["total"] + quota_share(batch) <= cap or _holder(batch) in now["holders"]


def give_back_room(deps: Deps, batch: dict[str, Any]) -> None:
    """The batch no longer counts against its pool (it ended, or the provider did not take it)."""
    pool = _pool(deps.settings, batch)
    if pool is not None:
        deps.store.give_back_quota(pool[0], _holder(batch))


# A batch waiting for room in our own pool is looked at less often the longer it waits, up to this
# many doublings of the poll's shortest wait (8 min by default): a wave starts soon after room frees,
# and a file of thousands of waiting batches does not fill every poll with looks at full pools.
WAIT_DOUBLINGS = 4


def hold_wait(settings: Settings, batch: dict[str, Any]) -> float:
    """How long a held batch waits before it is offered again: doubling with the provider's refusals
    (and, a few times, with the looks that found its pool full), from the poll's shortest wait to its
    longest."""
    doublings = int(batch.get("refusals", 0)) + min(int(batch.get("waits", 0)), WAIT_DOUBLINGS)
    return float(min(settings.poll_max_seconds, max(settings.poll_min_seconds, 1) * 2 ** min(doublings, 16)))


def wait_for_room(deps: Deps, batch: dict[str, Any], offered: bool) -> None:
    """The poll looked at a held batch: offered to the submit function (due again after the backoff, in
    case the offer is lost), or its pool still full (one more wait counted)."""
    waits = int(batch.get("waits", 0)) + (not offered)
    at = deps.clock() + hold_wait(deps.settings, {**batch, "waits": waits})
    deps.store.update(batch, {"waits": waits, **due_fields(at)})


def _hold(deps: Deps, batch: dict[str, Any], reason: str, owner: str, refused: bool) -> dict[str, Any]:
    """Hold a batch that cannot be created now; `refused` when the provider said so (its share is given
    back, and its refusals count towards the backoff). A batch held for longer than its window and the
    watchdog's grace together ends as expired, never sent (`expire_held`)."""
    fresh = _reload(deps.store, batch)
    if fresh.get("provider_batch_id") or fresh.get("status") not in HOLDABLE:
        return fresh  # another invocation got further meanwhile
    other = fresh.get("create_owner")
    started = fresh.get("create_started_at")
    if other and other != owner and started is not None and deps.clock() - float(started) < _create_time(deps.settings):
        return fresh  # another invocation's create of it may be under way: never undo its mark
    now = deps.clock()
    refusals = int(fresh.get("refusals", 0)) + refused
    if refusals >= REFUSALS_BEFORE_HINT:
        # A batch refused again and again may be larger on its own than the provider's quota, which no
        # wait frees: only batches planned to fit it (our cap) will run.
        reason += (
            f" (refused {refusals} times: if this batch alone is more than {fresh['provider']}'s queue quota, "
            f"set {_cap_name(fresh).split(' ')[0]} to that quota, so that batches are planned to fit it)"
        )
    changes: dict[str, Any] = {
        "status": m.HELD,
        "hold_reason": reason[:1000],
        "held_since": fresh.get("held_since") or now,
        "create_owner": None,
        "create_started_at": None,
        **due_fields(now + hold_wait(deps.settings, {**fresh, "refusals": refusals})),
    }
    if refused:
        changes["refusals"] = refusals
        changes["refused_since"] = fresh.get("refused_since") or now
    expired = expire_held(deps, {**fresh, **changes}, reason, base=fresh)
    if expired is not None:
        return expired
    held = deps.store.update(fresh, changes, when_status=HOLDABLE)
    if refused:
        give_back_room(deps, held)
    log = logger.warning if refusals >= REFUSALS_BEFORE_HINT else logger.info
    log("batch held", extra={"batch_key": fresh["batch_key"], "reason": reason[:600], "refusals": refusals})
    return held


def expire_held(
    deps: Deps, batch: dict[str, Any], reason: str, base: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """End a batch held for longer than its provider's window and BATCHDROP_BATCH_TIMEOUT_SECONDS
    together (the provider kept refusing it for now, or our pool never had room for it) as expired,
    never sent: its requests are sent again in the job's next attempt (within BATCHDROP_MAX_ATTEMPTS),
    and its job ends. Returns it ended, or None while it is within the bound. `base` is the item as
    read, when `batch` carries changes not written yet."""
    since = batch.get("refused_since") or batch.get("held_since")
    limit = window(deps.settings, batch) + deps.settings.batch_timeout_seconds
    now = deps.clock()
    if batch.get("status") != m.HELD or since is None or now - float(since) <= limit:
        # Only a batch held (no create of it under way, none that reached the provider unrecorded).
        return None
    refusals = int(batch.get("refusals", 0))
    why = (
        f"{batch['provider']} refused the batch for now {refusals} times over {limit / 3600:g} h (its queue quota "
        "stayed full)"
        if refusals
        else f"it waited {limit / 3600:g} h for room under {_cap_name(batch)}"
    )
    ended = deps.store.update(
        base or batch,
        {
            "status": m.BATCH_EXPIRED,
            "never_sent": True,
            "error": f"{why}: {reason}"[:2000],
            "ended_at": iso(now),
            "create_owner": None,
            "refusals": refusals,
        },
        when_status=HOLDABLE,
    )
    give_back_room(deps, ended)
    logger.warning("a batch held past its bound ends as expired, never sent", extra={"batch_key": batch["batch_key"]})
    return ended


def _create_time(settings: Settings) -> float:
    """How long a create may still be under way after it started (its lock, or its invocation's lease)."""
    return float(max(settings.create_lock_seconds, settings.lease_seconds))


def hold_over_quota(deps: Deps, batch: dict[str, Any], status: m.BatchStatus) -> dict[str, Any]:
    """The provider ended a batch unrun because its queue quota was full (OpenAI's `failed` with
    token_limit_exceeded): forget that provider batch (kept aside, so that a search by tag never adopts
    it again) and hold the batch to be created again."""
    refused_ids = [*(batch.get("quota_refused_ids") or []), batch["provider_batch_id"]]
    moved = deps.store.update(
        batch,
        # Not sent any more: its submission time goes with the provider batch (the watchdog bounds a
        # batch sent from its submission, and a held one from when it was first held).
        {"provider_batch_id": None, "quota_refused_ids": refused_ids, "status": m.SUBMITTING, "submitted_ts": None},
        when_status=(m.VALIDATING, m.IN_PROGRESS, m.FINALIZING, m.CANCELLING),
    )
    return _hold(
        deps, moved, f"{batch['provider']} said not now: {status.error or status.provider_status}", "", refused=True
    )


# A real-time batch's window: an hour, or longer for a batch that needs it at a cautious pace (a second
# a request per invocation, three times over).
REALTIME_WINDOW_SECONDS = 3600.0


def window(settings: Settings, batch: dict[str, Any]) -> float:
    """Seconds the batch's provider lets it run (24 h for a provider no longer enabled); a real-time
    batch's own, after which batchdrop cancels it like any batch past its window (its answers kept, the
    rest sent again)."""
    if m.lane_of(batch) == m.LANE_REALTIME:
        return max(REALTIME_WINDOW_SECONDS, 3.0 * int(batch.get("requests", 0)) / max(1, settings.realtime_invocations))
    provider = settings.providers.get(batch["provider"])
    return provider.window_seconds if provider is not None else 24 * 3600.0


def cancel_unsent(deps: Deps, batch: dict[str, Any], owner: str) -> dict[str, Any]:
    """End a batch of a canceled job that was never recorded as sent. One whose create may have reached
    the provider (an intent recorded) is looked for first and, when found, recorded instead, so that the
    job's cancel reaches it rather than leaving it running unseen; one whose create may still be under
    way in another invocation is left to it (ProviderBusy), not ended under a batch it would make."""
    if batch["status"] == m.SUBMITTING and m.lane_of(batch) == m.LANE_REALTIME:
        # Some of its chunks may be on the queue already: recorded as sent and canceled, so that no chunk
        # starts a request now and whatever one answered meanwhile is read, never lost.
        sent = deps.store.update(
            batch,
            {"provider_batch_id": realtime_lane.batch_id(batch), "status": m.IN_PROGRESS, "rt_canceled": True,
             "submitted_ts": deps.clock(), **due_fields(deps.clock())},
            when_status=(m.SUBMITTING,),
        )  # fmt: skip
        return sent
    if batch["status"] == m.SUBMITTING:
        provider = deps.provider(batch["provider"])
        found = provider.find(_ref(batch), frozenset())
        if found and claim_provider_batch(deps.store, provider.name, found, batch):
            return _record(deps, batch, found)
        _check_no_create_under_way(deps, batch, owner)
    ended = deps.store.update(batch, {"status": m.BATCH_CANCELED, "ended_at": iso(deps.clock())}, when_status=HOLDABLE)
    give_back_room(deps, ended)
    return ended


def _create_failed(deps: Deps, provider: Provider, batch: dict[str, Any], failure: CreateFailed) -> dict[str, Any]:
    """Count a failed create; end the batch as failed when the provider refused it for good or the
    attempts are spent, and otherwise fail the invocation so that its retry tries again."""
    fresh = _reload(deps.store, batch)
    if fresh.get("provider_batch_id") or fresh.get("status") != m.SUBMITTING:
        return fresh  # another invocation got further meanwhile
    failures = int(fresh.get("create_failures", 0)) + 1
    message = str(failure)[:2000]
    if not failure.permanent and failures < deps.settings.max_create_attempts:
        # Our create is over (it failed): the next attempt need not wait for it, only look for it.
        deps.store.update(fresh, {"create_failures": failures, "last_error": message, "create_owner": None})
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
    give_back_room(deps, ended)
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


def _find_tagged(deps: Deps, provider: Provider, ref: BatchRef, exclude: frozenset[str]) -> str | None:
    batch_id = provider.find(ref, exclude)
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
            raise CreateFailed(exc, provider.refused(exc), quota=provider.over_quota(exc)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    deps.checkpoint("after_create")
    return batch_id


def _start_create(deps: Deps, batch: dict[str, Any], owner: str) -> dict[str, Any]:
    """Mark on the batch that `owner` is about to create it, unless another invocation's create of it
    may still be under way (ProviderBusy: the invocation fails and its retry looks again).

    A create can outlive the lease or lock it started under (a slow provider, a busy machine): then a
    second invocation can reach the same batch while the first create is still on its way, find
    nothing yet, and create it again. The mark is what it sees instead: it waits out the longer of the
    create lock and the job's lease (a crashed create's retry comes after the lease anyway), after which
    the batch is there to be found, and adopted, if it was made. A create that failed clears the mark
    (its retry need not wait, only look). The write is conditional on the version read, so two
    invocations cannot both start a create."""
    _check_no_create_under_way(deps, batch, owner)
    return deps.store.update(
        batch, {"create_started_at": deps.clock(), "create_owner": owner}, when_status=(m.SUBMITTING,)
    )


def _check_no_create_under_way(deps: Deps, batch: dict[str, Any], owner: str) -> None:
    started = batch.get("create_started_at")
    other = batch.get("create_owner")
    under_way = _create_time(deps.settings)
    if other and other != owner and started is not None and deps.clock() - float(started) < under_way:
        raise ProviderBusy(f"another invocation's create of batch {batch['batch_key']} may still be under way")


def _earlier_create(deps: Deps, provider: Provider, batch: dict[str, Any]) -> str | None:
    """The provider batch an earlier create of this batch made, if one did and nobody recorded it (its
    invocation died before the record, after its create lock ran out and another holder replaced the
    intent it left there); claimed for this batch."""
    started = batch.get("create_started_at")
    if started is None:
        return None
    ref = _ref({**batch, "intent_at": started})
    exclude: set[str] = set()
    while (candidate := provider.find(ref, frozenset(exclude))) is not None:
        if claim_provider_batch(deps.store, provider.name, candidate, batch):
            logger.info("adopted a batch an earlier create made", extra={"batch_id": candidate})
            return candidate
        exclude.add(candidate)
    return None


def _record(deps: Deps, batch: dict[str, Any], batch_id: str) -> dict[str, Any]:
    if not claim_provider_batch(deps.store, batch["provider"], batch_id, batch):
        # Another of our batches recorded this provider batch (an ambiguous adoption): never two.
        raise Conflict(f"provider batch {batch_id} is recorded by another batch")
    now = deps.clock()
    updated = deps.store.update(
        batch,
        {
            "provider_batch_id": batch_id,
            "create_owner": None,
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
    return store.register_provider_batch(provider, batch_id, f"{batch['job_id']}/{batch['batch_key']}")


def recorded_batch(store: JobStore, provider: str, batch_id: str) -> tuple[str, str] | None:
    """(job id, batch key) of our batch that recorded this provider batch id, or None if none has."""
    owner = store.provider_batch_owner(provider, batch_id)
    if owner is None:
        return None
    job_id, _, batch_key = owner.partition("/")
    return job_id, batch_key


# -- providers without tags: one create at a time, with the intent in the lock ----------------------


def _submit_serialised(deps: Deps, provider: Provider, batch: dict[str, Any], owner: str) -> dict[str, Any]:
    store = deps.store
    lock = create_lock_pk(provider.name)
    previous = _acquire(deps, lock, owner)
    # No `finally`: an invocation that dies (a timeout) cannot release anything either, and the lock
    # simply runs out; an error we can see releases it at once. The intent outlives both.
    try:
        if previous:
            _adopt_for(deps, provider, previous)
        fresh = _reload(store, batch)
        if fresh.get("provider_batch_id") or fresh.get("status") != m.SUBMITTING:
            store.release_lock(lock, owner)
            return fresh
        found = _earlier_create(deps, provider, fresh)
        if found is not None:
            recorded = _record(deps, fresh, found)
            store.release_lock(lock, owner)
            return recorded
        _set_intent(deps, lock, owner, _ref(fresh))
        fresh = _start_create(deps, fresh, owner)
        batch_id = _create(deps, provider, fresh)
        recorded = _record(deps, fresh, batch_id)
        store.clear_lock_intent(lock, owner)
    except Exception:
        store.release_lock(lock, owner)
        raise
    store.release_lock(lock, owner)
    return recorded


def _reload(store: JobStore, batch: dict[str, Any]) -> dict[str, Any]:
    fresh = store.get_batch(batch["job_id"], batch["batch_key"])
    if fresh is None:
        raise KeyError(f"batch {batch['sk']} of job {batch['job_id']} is gone")
    return fresh


def _acquire(deps: Deps, lock: str, owner: str) -> dict[str, Any] | None:
    """Take the lock, waiting for a live holder; return the intent a dead holder left behind."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    delay = 0.05
    while True:
        try:
            old = deps.store.take_lock(lock, owner, deps.settings.create_lock_seconds)
        except Conflict:
            if time.monotonic() > deadline:
                raise ProviderBusy("another invocation has held the provider's create lock too long") from None
            time.sleep(delay)
            delay = min(1.0, delay * 2)
            continue
        intent: dict[str, Any] | None = old.get("intent")
        return intent


def _set_intent(deps: Deps, lock: str, owner: str, ref: BatchRef) -> None:
    intent = {
        "job_id": ref.job_id,
        "batch_key": ref.key,
        "requests": ref.requests,
        "intent_at": str(deps.clock()),
    }
    deps.store.set_lock_intent(lock, owner, intent, deps.settings.create_lock_seconds)


def _adopt_for(deps: Deps, provider: Provider, intent: dict[str, Any]) -> None:
    """A holder died between create and record: find its batch and record it where it belongs."""
    store = deps.store
    target = store.get_batch(intent["job_id"], intent["batch_key"])
    if target is None:
        return
    if target.get("provider_batch_id") or target.get("status") != m.SUBMITTING:
        return
    # What the dead holder was creating: the batch, as its intent described it.
    ref = _ref({**target, "requests": intent["requests"], "intent_at": intent["intent_at"]})
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


def backend(deps: Deps, batch: dict[str, Any]) -> Backend:
    """What runs the sent batch: its provider's Batch API, or the real-time lane."""
    if m.lane_of(batch) == m.LANE_REALTIME:
        return realtime_lane.RealtimeLane(deps)
    return deps.provider(batch["provider"])


# -- a batch's item --------------------------------------------------------------------------------


def record_batch(deps: Deps, job_id: str, batch: PlannedBatch, attempt: int, escalate_by: float | None = None) -> None:
    """Store a planned batch's files and its item (once: a re-run plans the same batch again).
    `escalate_by`: the job's deadline, for a batch-lane batch that may be escalated to meet it."""
    try:
        # Looked for before the file goes: completion reads back only the batches that may ask for a schema.
        asks_schema = asks_any(batch.path)
        deps.objects.upload_file(batch.path, batch_data_key(job_id, batch.key))
        deps.objects.upload_file(batch.index_path, batch_index_key(job_id, batch.key), "text/plain")
        if batch.answers_path is not None:
            deps.objects.upload_file(batch.answers_path, answers_key(job_id, batch.key))
    finally:
        batch.discard()
    cached = batch.lane == m.LANE_CACHE
    deps.store.create(
        {
            "pk": job_pk(job_id),
            "sk": f"{BATCH_SK}{batch.key}",
            "job_id": job_id,
            "batch_key": batch.key,
            "provider": batch.provider,
            "group": batch.group,
            "model": batch.model,
            "requests": batch.requests,
            "bytes": batch.bytes,
            "attempt": attempt,
            # Answered from the cache as it was planned: ended, and never sent.
            "status": m.COMPLETED if cached else m.PENDING,
            "lane": batch.lane,
            **({"escalate_by": escalate_by} if escalate_by is not None and batch.lane == m.LANE_BATCH else {}),
            **({"structured": True} if asks_schema else {}),
        }
    )


def stored_requests(deps: Deps, batch: dict[str, Any], keep: Container[str]) -> Iterator[m.Request]:
    """The batch's requests whose custom_id is in `keep`, as planned (its provider's batch lines), for a
    new batch: a next attempt, or an escalated batch's real-time rest. The index lists the requests in
    the data file's order, whatever field of the provider's line holds the id (custom_id, Gemini's key,
    Bedrock's recordId)."""
    job_id, key = batch["job_id"], batch["batch_key"]
    lines = zip(
        deps.objects.lines(batch_index_key(job_id, key)), deps.objects.lines(batch_data_key(job_id, key)), strict=True
    )
    for entry, raw in lines:
        custom_id_bytes, _, line = entry.partition(b"\t")
        custom_id = custom_id_bytes.decode()
        if custom_id in keep:
            yield m.Request(
                int(line), custom_id, batch["provider"], batch.get("group", ""), batch.get("model", ""), raw + b"\n"
            )


def resize_batch(deps: Deps, item: dict[str, Any], planned: PlannedBatch) -> dict[str, Any]:
    """A planned batch whose files were stored again with other requests (duplicates taken out, some
    lent or borrowed): its item counts what they hold."""
    return deps.store.update(item, {"requests": planned.requests, "bytes": planned.bytes})


def drop_batch(deps: Deps, item: dict[str, Any]) -> None:
    """A planned batch left with no request to send (its requests were refused or moved)."""
    deps.store.delete(item)


def record_error(deps: Deps, batch: dict[str, Any], exc: Exception, look_at: float) -> dict[str, Any]:
    """The provider could not say how the batch is: keep why, and look again at `look_at`."""
    return deps.store.update(batch, {"last_error": f"{type(exc).__name__}: {exc}"[:500], **due_fields(look_at)})


def record_provider_status(deps: Deps, batch: dict[str, Any], status: m.BatchStatus, look_at: float) -> dict[str, Any]:
    """Only the provider's own word for the batch's state (a batch past its timeout, whose job the
    watchdog ends), and look again at `look_at`."""
    return deps.store.update(batch, {"provider_status": status.provider_status, **due_fields(look_at)})


def record_running(deps: Deps, batch: dict[str, Any], status: m.BatchStatus, look_at: float) -> dict[str, Any]:
    """What the provider says of a batch still running, and look again at `look_at` (with when it last
    made progress, `progressed_at`, if the look found some)."""
    moved = {"progressed_at": batch["progressed_at"]} if batch.get("progressed_at") else {}
    return deps.store.update(batch, {**_status_changes(batch, status), **moved, **due_fields(look_at)})


def record_ended(deps: Deps, batch: dict[str, Any], status: m.BatchStatus, now: float) -> dict[str, Any]:
    """The batch ended. It stays in the poll's index until its job has been looked at for hand-over
    (then `leave_due`), so a poll that dies in between leaves the step for the next one."""
    ended = deps.store.update(batch, {**_status_changes(batch, status), "ended_at": iso(now)})
    give_back_room(deps, ended)
    return ended


def _status_changes(batch: dict[str, Any], status: m.BatchStatus) -> dict[str, Any]:
    changes: dict[str, Any] = {
        "status": status.state,
        "provider_status": status.provider_status,
        "progress": {"total": status.total, "done": status.done, "failed": status.failed},
        "checks": int(batch.get("checks", 0)) + 1,
    }
    if status.error:
        changes["error"] = status.error
    return changes


def clean_up(deps: Deps, batches: list[dict[str, Any]]) -> None:
    """Delete what the providers keep of a job's ended batches (files, records) once its outputs are
    written and it has ended, so that a long-lived stack never reaches a provider's file or storage
    cap. Best effort: what is left behind expires on the provider's own terms."""
    for batch in batches:
        if batch.get("status") not in m.TERMINAL_BATCH_STATES:
            continue
        # Its provider copy, and those the provider failed unrun for its quota (their input files; the
        # provider's even for a batch that went real-time since).
        copies = [(False, batch_id) for batch_id in batch.get("quota_refused_ids") or []]
        for own, batch_id in [*copies, (True, batch.get("provider_batch_id"))]:
            if not batch_id:
                continue
            try:
                runner = backend(deps, batch) if own else deps.provider(batch["provider"])
                runner.cleanup(batch_id, runner.status(batch_id))
            except Exception as exc:
                logger.warning(
                    "could not delete a batch's provider files",
                    extra={"batch_id": batch_id, "error": f"{type(exc).__name__}: {exc}"[:300]},
                )


def mark_overdue(deps: Deps, batch: dict[str, Any], reason: str) -> dict[str, Any]:
    """batchdrop canceled the batch past its provider's window: its unrun requests are `expired`."""
    return deps.store.update(batch, {"overdue": reason, **due_fields(deps.clock() + deps.settings.poll_min_seconds)})


def look_soon(deps: Deps, batch: dict[str, Any], at: float) -> None:
    """Due for the poll's look at `at` (a cancel was asked for)."""
    deps.store.update(batch, due_fields(at))


def leave_due(deps: Deps, batch: dict[str, Any]) -> None:
    """Out of the poll's index: the batch ended and its job was looked at for hand-over."""
    deps.store.update(batch, {}, remove=NOT_DUE)
