"""Complete: a job whose batches have all ended → resubmission, or the outputs and the notification.

Safe to run again from any point: outputs are written whole to fixed keys (summary.json last, by
batchdrop.results), the notification is recorded once sent (batchdrop.jobs.notify_once), and the final
state transition is conditional, so a re-run after a crash rewrites the same files and tells no one twice.

Its steps: `complete_message` reads a completion-queue message; `complete_job` checks that the job is
waiting for completion; `run_completion` takes the job's completion lease and runs it (submit calls it
too, for a file rejected as a whole); `_resubmit_or_end` resubmits what is worth another attempt, or
writes the outputs, tells the job's end and ends it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aws_lambda_powertools import Logger

from batchdrop import jobs
from batchdrop import models as m
from batchdrop.adapters.store import Conflict
from batchdrop.batches import clean_up, record_batch, send_batch, stored_requests
from batchdrop.config import tmpdir as spill_dir
from batchdrop.pipeline import (
    Deps,
    batch_index_key,
    invocation_id,
)
from batchdrop.planner import BatchPlanner, PlannedBatch
from batchdrop.results import outcomes_with_missing, replaced_ids, write_outputs
from batchdrop.watchdog import over_attempts

logger = Logger(service="batchdrop")


@dataclass(frozen=True)
class Completion:
    """What a completion did (`outcome`), and the summary of the job it ended, if it ended one (for the
    handler's metrics)."""

    outcome: str
    summary: dict[str, Any] | None = None


def complete_message(deps: Deps, body: str) -> Completion:
    """One completion-queue message: {"job_id": ...}."""
    try:
        job_id = orjson.loads(body)["job_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        logger.error("a completion message without a job id was dropped", extra={"body_size": len(body)})
        return Completion("malformed")
    return complete_job(deps, str(job_id))


def complete_job(deps: Deps, job_id: str) -> Completion:
    """Complete a job handed over through the queue, if it is still waiting for completion."""
    logger.append_keys(job_id=job_id)
    job = deps.store.get_job(job_id)
    if job is None:
        logger.warning("completion asked for an unknown job")
        return Completion("unknown")
    if job["status"] in m.FINAL_JOB_STATES:
        logger.info("job already complete (duplicate message)")
        return Completion("duplicate")
    if job["status"] != m.JOB_COMPLETING:
        logger.info("job is not ready for completion", extra={"status": job["status"]})
        return Completion("not-ready")
    return run_completion(deps, job_id, invocation_id())


def run_completion(deps: Deps, job_id: str, owner: str) -> Completion:
    """Take the job's completion lease as `owner` and complete it; whatever fails gives the lease back."""
    job = deps.store.get_job(job_id)
    if job is None or job["status"] != m.JOB_COMPLETING:
        return Completion("not-ready")
    try:
        job = jobs.claim_completion(deps, job, owner)
    except Conflict:
        logger.info("another invocation is completing this job")
        return Completion("busy")
    if not job.get("timed_out") and over_attempts(deps, job, "completion", owner):
        return Completion("timed-out")
    try:
        return _resubmit_or_end(deps, job, owner)
    except Exception as exc:
        # A crash cannot release; then the lease runs out and the poll hands the job over again.
        jobs.release(deps, job, owner)
        jobs.record_failure(deps, job_id, exc)
        raise


def _resubmit_or_end(deps: Deps, job: dict[str, Any], owner: str) -> Completion:
    job_id = job["job_id"]
    batches = deps.store.get_batches(job_id)
    ended_early = job.get("rejected") or job.get("canceled") or job.get("timed_out")
    if not ended_early and _resubmit(deps, job, batches):
        return Completion("resubmitted")
    summary = write_outputs(deps, job, batches)
    status = summary["status"]
    if not jobs.notify_once(deps, job, status, summary):
        jobs.release(deps, job, owner)
        return Completion("busy")
    deps.checkpoint("after_publish")
    jobs.end(deps, job, status, summary["timings"]["completed_at"], counts=summary["counts"])
    logger.info("job complete", extra={"status": status, "counts": summary["counts"]})
    # Only now: until the job has ended, a re-run of this step reads the results from the provider again.
    clean_up(deps, batches)
    return Completion(status, summary)


# -- resubmission ---------------------------------------------------------------------------------


def _resubmit(deps: Deps, job: dict[str, Any], batches: list[dict[str, Any]]) -> bool:
    """Put the expired and retryable failed requests of the latest attempt into new batches.

    True when there was anything to resubmit (the job goes back to `submitted`).
    """
    attempt = int(job.get("attempt", 1))
    if attempt >= deps.settings.max_attempts:
        return False
    job_id = job["job_id"]
    latest = [b for b in batches if int(b.get("attempt", 1)) == attempt]
    if job.get("resubmit_planned") != attempt + 1:
        limits = {name: p.limits for name, p in deps.settings.providers.items()}
        planned: list[str] = []
        deadline = float(job["deadline"]) if job.get("deadline") is not None else None
        auto = (job.get("lane_option") or "auto") == "auto"
        # Near the deadline, what goes again goes real-time: another batch would not be back in time.
        hurry = auto and deadline is not None and deadline - deps.clock() < deps.settings.min_batch_window_seconds

        def store(batch: PlannedBatch, lane: str) -> None:
            batch.lane = lane
            minimum = limits[batch.provider].min_requests
            if lane == m.LANE_BATCH and batch.requests < minimum and auto:
                batch.lane = m.LANE_REALTIME  # the provider would refuse it; the real-time lane has no minimum
            elif lane == m.LANE_BATCH and batch.requests < minimum:
                # The provider would refuse it (Bedrock's records per job), and the file's lane is batch:
                # those requests keep the error of their last attempt.
                logger.warning(
                    "not resubmitting a batch under the provider's minimum",
                    extra={"provider": batch.provider, "requests": batch.requests, "minimum": minimum},
                )
                batch.discard()
                return
            record_batch(deps, job_id, batch, attempt + 1, escalate_by=deadline if auto else None)
            planned.append(batch.key)

        # An escalated batch's rest was sent real-time in this attempt already: not again.
        moved = replaced_ids(deps, job_id, latest)

        planners = {
            lane: BatchPlanner(
                limits=limits,
                on_batch=functools.partial(store, lane=lane),
                key_prefix=f"a{attempt + 1}-" if lane == m.LANE_BATCH else f"a{attempt + 1}-rt-",
                tmpdir=spill_dir(),
            )
            for lane in (m.LANE_BATCH, m.LANE_REALTIME)
        }
        for batch in sorted(latest, key=lambda b: b["sk"]):
            retry = {cid for cid, _code in _retryable(deps, batch)} - moved.get(batch["batch_key"], frozenset())
            if not retry:
                continue
            realtime = m.lane_of(batch) == m.LANE_REALTIME or hurry
            planner = planners[m.LANE_REALTIME if realtime else m.LANE_BATCH]
            for request in stored_requests(deps, batch, retry):
                planner.add(request)
        for planner in planners.values():
            planner.finish()
        if not planned:
            return False
        job = jobs.plan_resubmission(deps, job, attempt + 1)
        deps.checkpoint("after_resubmit_planned")
        logger.info("resubmitting", extra={"attempt": attempt + 1, "batches": len(planned)})
    batches = deps.store.get_batches(job_id)
    retries = sorted((b for b in batches if int(b.get("attempt", 1)) == attempt + 1), key=lambda b: b["sk"])
    for batch in retries:
        send_batch(deps, job_id, batch, job.get("lease_owner", ""))
    jobs.resubmit(deps, job, attempt + 1)
    # A conflict leaves the hand-over to the poll's next look at the job.
    with contextlib.suppress(Conflict):
        jobs.hand_over_if_done(deps, job_id)
    return True


def _retryable(deps: Deps, batch: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(custom_id, code) of the batch's requests worth another attempt."""
    if batch.get("never_sent"):
        # Held until its bound ran out (the provider's queue quota stayed full): every request again.
        for entry in deps.objects.lines(batch_index_key(batch["job_id"], batch["batch_key"])):
            yield entry.partition(b"\t")[0].decode(), m.EXPIRED
        return
    if not batch.get("provider_batch_id"):
        return
    outcomes = outcomes_with_missing(deps, batch)
    for custom_id, _line, outcome in outcomes:
        if not outcome.ok and outcome.code in m.RETRYABLE_CODES:
            yield custom_id, outcome.code or ""
