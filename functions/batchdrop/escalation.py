"""Escalation: a batch that will not finish by its job's deadline is canceled, and what it had not
finished is sent on the real-time lane (docs/contract.md "Lanes and deadlines").

The poll decides (`late_for_deadline`, `escalate`): when the time left is less than what the batch's
remaining requests need on the real-time lane (at the lane's measured pace) plus a margin, it marks the
batch escalated, asks its provider to cancel it, and tells the job's subscribers once (`escalated`).
Once the provider has ended it, the submit function (which has the grants to send) plans its
unfinished requests, exactly those, into real-time batches of the same attempt (`replace`). What the
provider finished before the cancel took effect is kept and wins: the real-time batches never hold it,
and the outputs take an escalated batch's answers only for the requests they do not hold.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from batchdrop import jobs
from batchdrop import models as m
from batchdrop.adapters.store import Conflict
from batchdrop.batches import record_batch, send_batch, stored_requests
from batchdrop.config import tmpdir
from batchdrop.pipeline import Deps, iso, replacement_prefix
from batchdrop.planner import BatchPlanner, PlannedBatch
from batchdrop.providers.base import Backend
from batchdrop.results import outcomes_with_missing

logger = Logger(service="batchdrop")

# Without a measured pace or a configured BATCHDROP_<NAME>_RPM, what one invocation of the real-time
# lane is assumed to sustain: a cautious figure (a new account's lowest tiers allow about this much).
DEFAULT_RPM = 60
# The answers that say a request was not run: these go real-time, everything else was finished.
UNFINISHED = frozenset({m.CANCELED, m.EXPIRED})


def lane_pace(deps: Deps, provider: str) -> float:
    """Requests per second the real-time lane can be counted on for `provider`: the pace one invocation
    last sustained (or the configured limit, or DEFAULT_RPM) times the invocations that may run at
    once, never above the provider's configured limit."""
    settings = deps.settings
    rpm = settings.providers[provider].rpm if provider in settings.providers else None
    measured = deps.store.lane_pace(provider)
    per_invocation = measured if measured is not None else (rpm or DEFAULT_RPM) / 60
    pace = per_invocation * settings.realtime_invocations
    return min(pace, rpm / 60) if rpm else pace


def _need(deps: Deps, batch: dict[str, Any], status: m.BatchStatus) -> tuple[int, float, float] | None:
    """(unfinished requests, the lane's pace, seconds the lane needs for them with the margin), or None
    for a batch that is not to be escalated (no deadline, not auto, in the real-time lane already,
    escalated already: unless the provider refused it for now since and it waits, held)."""
    if batch.get("escalate_by") is None or m.lane_of(batch) != m.LANE_BATCH:
        return None
    if batch.get("escalated") and batch.get("status") != m.HELD:
        return None
    total = status.total if status.total else int(batch["requests"])
    remaining = max(0, total - int(status.done or 0))
    if remaining == 0:
        return None
    pace = lane_pace(deps, batch["provider"])
    return remaining, pace, remaining / pace + deps.settings.escalation_margin_seconds


def look_by(deps: Deps, batch: dict[str, Any], status: m.BatchStatus) -> float | None:
    """The latest time the poll must look at the batch again, so that an escalation is not decided
    after it is due (the poll's backoff can be half an hour, more than the margin)."""
    need = _need(deps, batch, status)
    return None if need is None else float(batch["escalate_by"]) - need[2]


def late_for_deadline(deps: Deps, batch: dict[str, Any], status: m.BatchStatus, now: float) -> str | None:
    """Why the batch must be escalated now, or None while the real-time lane could still finish its
    remaining requests by the deadline with the margin."""
    found = _need(deps, batch, status)
    if found is None:
        return None
    remaining, pace, need = found
    left = float(batch["escalate_by"]) - now
    if left >= need:
        return None
    return (
        f"{remaining} requests unfinished {left / 60:.1f} min before the deadline; the real-time lane needs about "
        f"{need / 60:.1f} min for them (at {pace * 60:.0f} requests/min, with a margin of "
        f"{deps.settings.escalation_margin_seconds / 60:.0f} min)"
    )


def job_open(job: dict[str, Any] | None) -> bool:
    """Whether the job still wants its answers: submitted, neither canceled nor ended by the watchdog."""
    return (
        job is not None
        and job["status"] == m.JOB_SUBMITTED
        and not (job.get("cancel_requested") or job.get("timed_out"))
    )


def escalate(deps: Deps, runner: Backend, batch: dict[str, Any], reason: str) -> dict[str, Any] | None:
    """Mark the batch escalated (first, so a crash before the cancel still leads to it), ask its provider
    to cancel it, and tell the job's subscribers once; None (nothing done) for a job canceled or ended
    meanwhile, whose cancel or end takes its course."""
    if not job_open(deps.store.get_job(batch["job_id"])):
        return None
    now = deps.clock()
    logger.warning("escalating a batch late for its deadline", extra={"batch_key": batch["batch_key"], "why": reason})
    batch = deps.store.update(batch, {"escalated": reason[:1000], "escalated_at": iso(now)})
    try:
        runner.cancel(batch["provider_batch_id"])
    except Exception as exc:  # it may have ended meanwhile: its state says so at the next look
        logger.info("provider refused the cancel of an escalated batch", extra={"error": str(exc)[:300]})
    _tell(deps, batch, reason)
    return batch


def escalate_held(deps: Deps, batch: dict[str, Any], reason: str) -> dict[str, Any]:
    # (Its job is open: the poll ends a held batch of a canceled or ended job before this.)
    """A batch still held (never sent: the provider's queue is full) when the deadline nears: it moves to
    the real-time lane whole, and is sent as the held are, when the poll offers its job."""
    logger.warning("a held batch goes real-time for its deadline", extra={"batch_key": batch["batch_key"]})
    moved = deps.store.update(batch, {"lane": m.LANE_REALTIME, "escalated_held": reason[:1000]}, when_status=(m.HELD,))
    _tell(deps, moved, reason)
    return moved


def tell(deps: Deps, batch: dict[str, Any], reason: str) -> None:
    """The job's `escalated` notification, once (batchdrop.jobs.notify_once): called again at each look at
    an escalated batch, in case an invocation died between the mark and the notification."""
    _tell(deps, batch, reason)


def _tell(deps: Deps, batch: dict[str, Any], reason: str) -> None:
    job = deps.store.get_job(batch["job_id"])
    if job is not None:
        body = {
            "job_id": batch["job_id"],
            "status": "escalated",
            "deadline": iso(float(batch["escalate_by"])),
            "batch": {"provider": batch["provider"], "batch_id": batch.get("provider_batch_id"), "reason": reason},
            "output_prefix": deps.objects.uri(job["output_prefix"]),
        }
        jobs.notify_once(deps, job, "escalated", body)


def replace(deps: Deps, job_id: str, batch_key: str) -> list[str]:
    """Send the unfinished requests of an escalated batch that has ended on the real-time lane, once;
    returns the keys of its real-time batches. Safe to run again: the plan is the same every time, its
    items are created once, and a batch sent is not sent again."""
    batch = deps.store.get_batch(job_id, batch_key)
    if batch is None or not batch.get("escalated") or batch.get("replacement_planned"):
        return []
    if batch.get("status") not in m.TERMINAL_BATCH_STATES:
        return []
    if not job_open(deps.store.get_job(job_id)):
        # Canceled or ended meanwhile: nothing more is sent for it; its batch's answers stand as they are.
        _mark_replaced(deps, job_id, batch_key, [])
        return []
    unfinished = {
        custom_id
        for custom_id, _line, outcome in outcomes_with_missing(deps, batch)
        if not outcome.ok and outcome.code in UNFINISHED
    }
    keys: list[str] = []
    attempt = int(batch.get("attempt", 1))

    def store(planned: PlannedBatch) -> None:
        planned.lane = m.LANE_REALTIME
        record_batch(deps, job_id, planned, attempt)
        keys.append(planned.key)

    limits = {name: p.limits for name, p in deps.settings.providers.items()}
    planner = BatchPlanner(limits=limits, on_batch=store, key_prefix=replacement_prefix(batch_key), tmpdir=tmpdir())
    for request in stored_requests(deps, batch, unfinished):
        planner.add(request)
    planner.finish()
    owner = "escalation"
    for key in keys:
        planned_batch = deps.store.get_batch(job_id, key)
        if planned_batch is not None:
            send_batch(deps, job_id, planned_batch, owner)
    deps.checkpoint("after_escalation_sent")
    _mark_replaced(deps, job_id, batch_key, keys)
    logger.info("sent an escalated batch's unfinished requests real-time", extra={"requests": len(unfinished)})
    return keys


def _mark_replaced(deps: Deps, job_id: str, batch_key: str, keys: list[str]) -> None:
    """The escalated batch's rest is in real-time batches (`keys`; none for a job that wants no more):
    its job may be handed to completion once they end."""
    for _ in range(5):
        fresh = deps.store.get_batch(job_id, batch_key)
        if fresh is None or fresh.get("replacement_planned"):
            return
        try:
            deps.store.update(fresh, {"replacement_planned": True, "replaced_by": keys})
            return
        except Conflict:
            continue  # the poll looked at it meanwhile
