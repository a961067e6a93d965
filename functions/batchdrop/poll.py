"""Poll: look at the batches that are due, record their state, hand finished jobs to completion.

Reads only the sparse `due` index (never a scan), so an idle poll costs one query and no provider
call. Every write is conditional on the version read, so overlapping polls record each change once
and move a job to `completing` exactly once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger

from batchdrop import jobs
from batchdrop import models as m
from batchdrop.adapters.store import JOB_SK, Conflict
from batchdrop.batches import (
    ProviderBusy,
    backend,
    cancel_unsent,
    expire_held,
    has_room,
    hold_over_quota,
    leave_due,
    look_soon,
    mark_overdue,
    pool_of,
    prune,
    record_ended,
    record_error,
    record_provider_status,
    record_running,
    recorded_batch,
    wait_for_room,
    window,
)
from batchdrop.cancel import cancel_running, carry_out
from batchdrop.escalation import escalate, escalate_held, late_for_deadline, look_by, tell
from batchdrop.pipeline import Deps
from batchdrop.realtime.lane import redrive, stalled
from batchdrop.watchdog import end_stuck_job

logger = Logger(service="batchdrop")

# How long past its provider's window a batch may still be running before batchdrop cancels it (its
# finished requests are kept, the rest sent again): the provider's own expiry normally comes first.
OVERDUE_GRACE_SECONDS = 3600


@dataclass
class PollReport:
    looked_at: int = 0
    changed: int = 0
    ended: int = 0
    handed_over: list[str] = field(default_factory=list)
    stuck: int = 0
    errors: int = 0
    # Jobs the watchdog ended (JobsTimedOut).
    timed_out: int = 0
    # Jobs whose held batches were offered to the submit function in this run (once a job: its
    # invocation sends every held batch of the job that fits).
    offered: list[str] = field(default_factory=list)
    # Jobs with a batch escalated in this run (canceled before its deadline, finished real-time).
    escalated: list[str] = field(default_factory=list)


@dataclass
class _Seen:
    """What one poll run has read already, for the held batches it looks at: their jobs' items, and the
    pools it found full. A job or pool that changes during the run is seen as it was (an offer to a job
    that moved on is ignored by the submit function; a pool that frees up is seen at the next look)."""

    jobs: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    full: set[str] = field(default_factory=set)

    def job(self, deps: Deps, job_id: str) -> dict[str, Any] | None:
        if job_id not in self.jobs:
            self.jobs[job_id] = deps.store.get_job(job_id)
        return self.jobs[job_id]


def poll(deps: Deps) -> PollReport:
    report = PollReport()
    now = deps.clock()
    seen = _Seen()
    for item in deps.store.due(now):
        report.looked_at += 1
        try:
            if item["sk"] == JOB_SK:
                _job_due(deps, item, report)
            else:
                look_at_batch(deps, item, report, seen=seen)
        except Conflict:
            # Another poll got there first; it has recorded the change.
            continue
        except Exception:
            # One item a provider or a bug keeps failing must not stop the poll for every other: it is
            # logged, and a batch is looked at again later rather than first in the next run.
            report.errors += 1
            logger.exception("could not look at a due item; looking at the others", extra={"sk": item["sk"]})
            if item["sk"] != JOB_SK:
                with contextlib.suppress(Exception):
                    look_soon(deps, item, now + max(deps.settings.poll_min_seconds, 60))
    return report


def look_at_batch(
    deps: Deps, batch: dict[str, Any], report: PollReport, watchdog: bool = True, seen: _Seen | None = None
) -> None:
    """Ask the provider about one batch, record what it says, and hand its job over if it ended.

    `watchdog=False` (the webhook function, whose role cannot write outputs or publish) leaves a batch
    past its timeout due, for the scheduled poll to end its job."""
    now = deps.clock()
    logger.append_keys(job_id=batch["job_id"], batch_id=batch.get("provider_batch_id"))
    if batch.get("status") in m.TERMINAL_BATCH_STATES:
        # Recorded as ended by a poll that died before handing its job over: finish that step.
        _after_end(deps, batch, report, watchdog)
        return
    if not batch.get("provider_batch_id"):
        # Held, or a held batch whose send died half-way (its job is submitted, so no submission will
        # take it up): offered to the submit function again.
        if watchdog:
            _offer_held(deps, batch, report, seen or _Seen())
        return
    provider = backend(deps, batch)
    submitted = float(batch.get("submitted_ts") or now)
    late = now - submitted > _late_after(deps, batch)
    try:
        status = provider.status(batch["provider_batch_id"])
    except Exception as exc:
        report.errors += 1
        logger.warning("provider status failed; will look again", extra={"error": type(exc).__name__})
        batch = record_error(deps, batch, exc, _next_look(deps, batch, now))
        if watchdog and late:
            end_stuck_job(deps, batch["job_id"], "provider", _late_reason(deps, batch))
            report.timed_out += 1
        return
    if watchdog and not status.terminal and late:
        batch = record_provider_status(deps, batch, status, _next_look(deps, batch, now))
        end_stuck_job(deps, batch["job_id"], "provider", _late_reason(deps, batch))
        report.timed_out += 1
        return
    overdue = now - submitted > window(deps.settings, batch) + OVERDUE_GRACE_SECONDS
    if not status.terminal and overdue:
        report.stuck += 1
        if watchdog and status.state != m.CANCELLING:
            batch = _cancel_overdue(deps, provider, batch, now)
    if watchdog and not status.terminal:
        if batch.get("escalated"):
            # Asked again until the provider says it is cancelling (the first ask may have been lost), and
            # told (once) in case the invocation that marked it died first.
            if status.state != m.CANCELLING:
                with contextlib.suppress(Exception):
                    provider.cancel(batch["provider_batch_id"])
            tell(deps, batch, str(batch["escalated"]))
        elif (why := late_for_deadline(deps, batch, status, now)) is not None:
            escalated = escalate(deps, provider, batch, why)
            if escalated is not None:
                batch = escalated
                report.escalated.append(batch["job_id"])
    if status.terminal and status.over_quota:
        # Refused for now by the provider's queue quota: not a failed batch; created again later.
        hold_over_quota(deps, batch, status)
        report.changed += 1
        return
    if not status.terminal:
        if status.state != batch.get("status") or status.done != (batch.get("progress") or {}).get("done"):
            report.changed += 1
        look_at = _next_look(deps, batch, now, status)
        latest = look_by(deps, batch, status)
        if status.done != (batch.get("progress") or {}).get("done"):
            batch = {**batch, "progressed_at": now}  # written with the look below
        if watchdog and m.lane_of(batch) == m.LANE_REALTIME and stalled(deps, batch, status):
            redrive(deps, batch)
            batch = {**batch, "redriven_at": now}
        record_running(deps, batch, status, look_at if latest is None else max(now, min(look_at, latest)))
        return
    # The batch stays in the index until its job has been looked at for hand-over, so a poll that
    # dies in between leaves the step for the next one rather than losing it.
    batch = record_ended(deps, batch, status, now)
    report.changed += 1
    report.ended += 1
    logger.info("batch ended", extra={"state": status.state})
    deps.checkpoint("after_batch_ended")
    _after_end(deps, batch, report, watchdog)


def look_at_provider_batch(deps: Deps, provider: str, batch_id: str) -> PollReport | None:
    """Look at once at the batch a provider event names (an OpenAI webhook, a Bedrock state change);
    None if it is not one of ours, or not recorded yet (the schedule finds it then)."""
    ours = recorded_batch(deps.store, provider, batch_id)
    if ours is None:
        return None
    job_id, batch_key = ours
    logger.append_keys(job_id=job_id, batch_id=batch_id)
    batch = deps.store.get_batch(job_id, batch_key)
    if batch is None or batch.get("provider_batch_id") != batch_id:
        # Not (or no longer) the batch's provider copy: one its provider refused for now, held since.
        return None
    report = PollReport()
    look_at_batch(deps, batch, report, watchdog=False)
    return report


def _after_end(deps: Deps, batch: dict[str, Any], report: PollReport, watchdog: bool = True) -> None:
    if batch.get("escalated") and not batch.get("replacement_planned"):
        # Its unfinished requests go real-time: the submit function (which has the grants to send)
        # plans and sends them; offered again at each look until it has (by the scheduled poll: the
        # webhook function may not send to the segments queue).
        if not watchdog:
            return
        deps.segments.send(batch["job_id"], escalated=batch["batch_key"])
        look_soon(deps, batch, deps.clock() + max(deps.settings.poll_min_seconds, min(60, deps.settings.lease_seconds)))
        return
    if jobs.hand_over_if_done(deps, batch["job_id"]):
        report.handed_over.append(batch["job_id"])
    leave_due(deps, batch)


def _offer_held(deps: Deps, batch: dict[str, Any], report: PollReport, seen: _Seen) -> None:
    """A held (or half-sent) batch is due: end it if its job will never send it; else, when its share
    fits its pool, offer it to the submit function (which has the grants to create it) through the
    segments queue, and look again after the backoff in case that offer is lost or the pool fills."""
    now = deps.clock()
    job = seen.job(deps, batch["job_id"])
    if job is None or job["status"] in m.FINAL_JOB_STATES or job.get("cancel_requested") or job.get("timed_out"):
        try:
            ended = cancel_unsent(deps, batch, "poll")
        except ProviderBusy:
            # A create of it may still be under way: looked at again once that has had its time.
            look_soon(deps, batch, now + deps.settings.create_lock_seconds)
            return
        report.changed += 1
        if ended.get("status") in m.TERMINAL_BATCH_STATES:
            _after_end(deps, ended, report)
        else:
            # Its create had reached the provider after all (found and recorded): cancel it there, and
            # watch it to its end like any other.
            cancel_running(deps, [ended])
        return
    if expire_held(deps, batch, str(batch.get("hold_reason", ""))) is not None:
        report.changed += 1
        report.ended += 1
        with contextlib.suppress(Conflict):
            if jobs.hand_over_if_done(deps, batch["job_id"]):
                report.handed_over.append(batch["job_id"])
        return
    if batch.get("status") == m.HELD and m.lane_of(batch) == m.LANE_BATCH:
        waiting = m.BatchStatus(m.HELD, m.HELD, total=int(batch["requests"]), done=0)
        if (why := late_for_deadline(deps, batch, waiting, now)) is not None:
            batch = escalate_held(deps, batch, why)
            report.escalated.append(batch["job_id"])
    room = m.lane_of(batch) == m.LANE_REALTIME  # no pool: the real-time lane takes it now
    pool = pool_of(deps, batch)
    if not room and job["status"] == m.JOB_SUBMITTED and pool not in seen.full:
        room = has_room(deps, batch) or (prune(deps, batch) and has_room(deps, batch))
        if not room and pool is not None:
            seen.full.add(pool)  # the other batches waiting on it this run wait too, unread
    offered = room and batch["job_id"] not in report.offered
    if offered:
        deps.segments.send(batch["job_id"], held=True)
        report.offered.append(batch["job_id"])
        logger.info("offered a job's held batches to the submit function", extra={"batch_key": batch["batch_key"]})
    wait_for_room(deps, batch, room)


def _cancel_overdue(deps: Deps, provider: Any, batch: dict[str, Any], now: float) -> dict[str, Any]:
    """Cancel a batch past its provider's window: what it finished is kept, and its unfinished requests
    are reported `expired` (so they are sent again within BATCHDROP_MAX_ATTEMPTS), not `canceled`. Marked
    first, so that a crash before the cancel still reports them so; asked again at each look until the
    provider says it is cancelling."""
    if not batch.get("overdue"):
        hours = (now - float(batch.get("submitted_ts") or now)) / 3600
        logger.warning("canceling a batch past its provider's window", extra={"hours": round(hours, 1)})
        batch = mark_overdue(
            deps, batch, f"canceled by batchdrop {hours:.1f} h after submission, past {batch['provider']}'s window"
        )
    try:
        provider.cancel(batch["provider_batch_id"])
    except Exception as exc:  # it may have ended meanwhile; its state says so at the next look
        logger.info("provider refused the cancel of an overdue batch", extra={"error": str(exc)[:300]})
    return batch


def _late_after(deps: Deps, batch: dict[str, Any]) -> float:
    """How long after submission a batch may be unended before the watchdog ends its job: its provider's
    window and BATCHDROP_BATCH_TIMEOUT_SECONDS more (the overdue cancel comes an hour into those)."""
    return window(deps.settings, batch) + deps.settings.batch_timeout_seconds


def _next_look(deps: Deps, batch: dict[str, Any], now: float, status: m.BatchStatus | None = None) -> float:
    """Back off with the batch's age; look sooner once it is finalizing or has moved."""
    settings = deps.settings
    age = now - float(batch.get("submitted_ts") or now)
    wait = min(settings.poll_max_seconds, max(settings.poll_min_seconds, age / 4))
    if status is not None and (status.state in (m.FINALIZING, m.CANCELLING)):
        wait = settings.poll_min_seconds
    return now + wait


def _job_due(deps: Deps, job: dict[str, Any], report: PollReport) -> None:
    now = deps.clock()
    status = job["status"]
    if job.get("timed_out") and status not in m.FINAL_JOB_STATES:
        # The watchdog ended it but died before it was done: finish its steps.
        end_stuck_job(deps, job["job_id"], str(job.get("stuck_at", "")), str(job.get("reason", "")))
        report.timed_out += 1
    elif status == m.JOB_COMPLETING:
        handed = _hand_back(deps, job, "completion", report)
        if handed is None:
            return
        job = handed
        jobs.hand_over_again(deps, job, now)
        report.handed_over.append(job["job_id"])
        logger.warning("completion overdue; handed over again", extra={"job_id": job["job_id"]})
    elif status == m.JOB_SUBMITTED and job.get("cancel_requested") and not job.get("canceled"):
        carry_out(deps, job)
    elif status == m.JOB_SUBMITTED:
        _check_submitted(deps, job, report)
    elif status == m.JOB_SUBMITTING:
        # Its submitter's lease ran out without a retry finishing the work: hand it back to the submit
        # function (through the segments queue, which it consumes), which has the grants for it.
        handed = _hand_back(deps, job, "submit", report)
        if handed is None:
            return
        job = handed
        logger.warning("submission stalled; handed back to submit", extra={"job_id": job["job_id"]})
        jobs.hand_back_to_submit(deps, job, now)
    else:
        # Nothing else should be due; take it out of the index rather than look at it forever.
        jobs.leave_due(deps, job)


def _hand_back(deps: Deps, job: dict[str, Any], stage: str, report: PollReport) -> dict[str, Any] | None:
    """Count a hand-back of the job's overdue step; the job as now written, to hand back, or None when
    it has been handed back too often and the watchdog ended it."""
    job, count = jobs.count_handback(deps, job, stage)
    if count < deps.settings.max_stalls:
        return job
    reason = f"its {stage} step was handed back {count} times without finishing" + _last_error(job, stage)
    end_stuck_job(deps, job["job_id"], stage, reason)
    report.timed_out += 1
    return None


def _check_submitted(deps: Deps, job: dict[str, Any], report: PollReport) -> None:
    """A submitted job's own periodic look, whatever its batches say: hand it over if every batch has
    ended (a hand-over that was missed), end it if a batch has outlived its timeout, else look again
    later. This is what bounds how long a submitted job can sit with nothing due."""
    now = deps.clock()
    batches = deps.store.get_batches(job["job_id"])
    running = [b for b in batches if not m.batch_done(b)]
    if not running:
        if jobs.hand_over_if_done(deps, job["job_id"]):
            report.handed_over.append(job["job_id"])
            logger.warning("a finished job had not been handed over; handed over now", extra={"job_id": job["job_id"]})
        return
    # Only batches at a provider: a held one has its own bound (batches.expire_held).
    late = [
        b
        for b in running
        if b.get("provider_batch_id") and now - float(b.get("submitted_ts") or now) > _late_after(deps, b)
    ]
    if late:
        end_stuck_job(deps, job["job_id"], "provider", _late_reason(deps, late[0]))
        report.timed_out += 1
        return
    jobs.look_again(deps, job, now + deps.settings.job_check_seconds)


def _late_reason(deps: Deps, batch: dict[str, Any]) -> str:
    hours = _late_after(deps, batch) / 3600
    where = f"{batch['provider']} batch {batch.get('provider_batch_id') or batch['batch_key']}"
    state = batch.get("provider_status") or batch.get("status")
    last = f"; last error: {batch['last_error']}" if batch.get("last_error") else ""
    return f"{where} had not ended {hours:g} h after it was submitted (last status: {state}{last})"


def _last_error(job: dict[str, Any], stage: str) -> str:
    error = job.get(f"{stage}_error")
    return f"; last error: {error}" if error else ""
