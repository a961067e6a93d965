"""The watchdog: every job ends, whatever wedges it (docs/guarantees.md, "Every job ends").

Each stage keeps its own promises, and a stage that fails is retried. The watchdog is the bound on those
retries: a job that stalls at the same step `max_stalls` times (its submission lease or completion grace
ran out with no progress), or whose batch is still running `batch_timeout_seconds` after submission, is
ended here as `failed`, with a job-level reason saying where it stuck, its outputs written with what is
known, its notification sent and the `JobsTimedOut` metric raised (an alarm fires on it). So no bug,
in our code or a provider's, can leave a job silently unfinished.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import NOT_DUE, Conflict, due_fields, release
from batchdrop.cancel import cancel_running
from batchdrop.config import JOBS_TIMED_OUT
from batchdrop.jobs import notify_once
from batchdrop.observability import metrics
from batchdrop.pipeline import Deps, iso
from batchdrop.results import write_outputs

logger = Logger(service="batchdrop")

OPEN_STATES = (m.JOB_SUBMITTING, m.JOB_SUBMITTED, m.JOB_COMPLETING)


def stall(deps: Deps, job: dict[str, Any], stage: str) -> tuple[dict[str, Any], int]:
    """Count one more hand-back of the job's step by the poll (its lease or grace ran out); returns the
    job and the count so far. The count starts again when the job's status changes, or when the step
    was taken up since the last hand-back (then the claims' own count bounds it): what it bounds is a
    step nobody even starts, such as a function that fails before it claims."""
    status = job["status"]
    tried = int(job.get(attempts(stage), 0))
    same = job.get("handbacks_in") == status and int(job.get("handbacks_tried", -1)) == tried
    count = int(job.get("handbacks", 0)) + 1 if same else 1
    updated = deps.store.update(
        job, {"handbacks": count, "handbacks_in": status, "handbacks_tried": tried}, when_status=(status,)
    )
    return updated, count


def attempts(stage: str) -> str:
    """The job attribute that counts the claims of a stage's step (JobStore.claim's `count`), set back
    to 0 by the stage's progress."""
    return f"{stage}_attempts"


def over_attempts(deps: Deps, job: dict[str, Any], stage: str, owner: str) -> bool:
    """After a claim that counted itself: True (and the job ended as failed) when the step has been
    taken up more than `max_stalls` times without progress. Counted at the claim, not only by the
    poll, because retries that come faster than the lease runs out keep the job from ever being due."""
    count = int(job.get(attempts(stage), 0))
    if count <= deps.settings.max_stalls:
        return False
    release(deps.store, job, owner)
    last = job.get(f"{stage}_error")
    reason = f"its {stage} was attempted {count - 1} times without finishing" + (
        f"; last error: {last}" if last else ""
    )
    end_stuck_job(deps, job["job_id"], stage, reason)
    return True


def end_stuck_job(deps: Deps, job_id: str, stage: str, reason: str) -> str | None:
    """End a job that cannot end on its own: `failed`, with `reason`; returns its status, or None if it
    had ended meanwhile. Safe to run again: a crash half-way leaves the job due, and the next poll
    finishes the same steps."""
    job = deps.store.get_job(job_id)
    if job is None or job["status"] in m.FINAL_JOB_STATES:
        return None
    logger.append_keys(job_id=job_id)
    told = next((status for status in sorted(m.FINAL_JOB_STATES) if job.get(f"notified_{status}")), None)
    if told is not None:
        # Completion got as far as telling the user how the job ended (its outputs were written first):
        # that is the job's end; only the final transition it died before is left to make.
        with contextlib.suppress(Conflict):
            deps.store.update(
                job,
                {"status": told, "completed_at": iso(deps.clock())},
                remove=("lease_owner", "lease_until", *NOT_DUE),
                when_status=OPEN_STATES,
            )
        return told
    if not job.get("timed_out"):
        now = deps.clock()
        job = deps.store.update(
            job,
            {
                "status": m.JOB_COMPLETING,
                "timed_out": True,
                "stuck_at": stage,
                "reason": f"batchdrop gave up on this job at its {stage} step: {reason}"[:2000],
                # Due again soon, so a watchdog that dies here is followed by another.
                **due_fields(now + deps.settings.completion_grace_seconds),
            },
            remove=("lease_owner", "lease_until"),
            when_status=OPEN_STATES,
        )
        logger.error("job made no progress; the watchdog ends it", extra={"stage": stage, "reason": reason[:500]})
        metrics.add_metric(name=JOBS_TIMED_OUT, unit="Count", value=1)
    batches = deps.store.get_batches(job_id)
    cancel_running(deps, batches)  # stop paying for batches whose results nobody will read
    try:
        summary = write_outputs(deps, job, batches)
    except Exception as exc:  # the outputs are best effort here; the notification and the end are not
        logger.exception("could not write the outputs of a job the watchdog ended", extra={"error": str(exc)})
        summary = _bare_summary(deps, job, f"{job['reason']} (its outputs could not be written: {exc})"[:2000])
        with contextlib.suppress(Exception):
            deps.objects.put_json(f"{job['output_prefix']}summary.json", summary)
    if not notify_once(deps, job, summary["status"], summary):
        return None  # a completion is telling the job's end right now; the next poll finishes
    deps.checkpoint("after_publish")
    with contextlib.suppress(Conflict):
        deps.store.update(
            job,
            {"status": summary["status"], "completed_at": summary["timings"]["completed_at"]},
            remove=("lease_owner", "lease_until", *NOT_DUE),
            when_status=(m.JOB_COMPLETING,),
        )
    return str(summary["status"])


def _bare_summary(deps: Deps, job: dict[str, Any], reason: str) -> dict[str, Any]:
    counts = dict(job.get("counts") or {})
    prefix = job["output_prefix"]
    return {
        "job_id": job["job_id"],
        "status": m.JOB_FAILED,
        "input": job.get("input"),
        "counts": {k: counts.get(k, 0) for k in ("lines", "invalid", "submitted", "succeeded", "failed")},
        "batches": [],
        "usage": {"input_tokens": 0, "output_tokens": 0},
        "cost_usd": {"batch": None, "realtime_equivalent": None, "saved": None},
        "timings": {
            "received_at": job.get("received_at"),
            "submitted_at": job.get("submitted_at"),
            "ended_at": None,
            "completed_at": iso(deps.clock()),
        },
        "results": deps.objects.uri(f"{prefix}results.jsonl"),
        "errors": deps.objects.uri(f"{prefix}errors.jsonl"),
        "reason": reason,
    }
