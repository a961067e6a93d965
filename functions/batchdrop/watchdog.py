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

from batchdrop import jobs
from batchdrop import models as m
from batchdrop.adapters.store import Conflict
from batchdrop.batches import clean_up
from batchdrop.cancel import cancel_running
from batchdrop.config import JOBS_TIMED_OUT
from batchdrop.observability import metrics
from batchdrop.pipeline import Deps, iso
from batchdrop.providers.spec import Usage
from batchdrop.results import write_outputs

logger = Logger(service="batchdrop")


def over_attempts(deps: Deps, job: dict[str, Any], stage: str, owner: str) -> bool:
    """After a claim that counted itself: True (and the job ended as failed) when the step has been
    taken up more than `max_stalls` times without progress. Counted at the claim, not only by the
    poll, because retries that come faster than the lease runs out keep the job from ever being due."""
    count = int(job.get(jobs.attempts(stage), 0))
    if count <= deps.settings.max_stalls:
        return False
    jobs.release(deps, job, owner)
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
    told = jobs.told_end(job)
    if told is not None:
        # Completion got as far as telling the user how the job ended (its outputs were written first):
        # that is the job's end; only the final transition it died before is left to make.
        with contextlib.suppress(Conflict):
            jobs.end(deps, job, told, iso(deps.clock()), when=jobs.OPEN_STATES)
        return told
    if not job.get("timed_out"):
        job = jobs.give_up(deps, job, stage, reason)
        logger.error("job made no progress; the watchdog ends it", extra={"stage": stage, "reason": reason[:500]})
        metrics.add_metric(name=JOBS_TIMED_OUT, unit="Count", value=1)
    # Stop paying for batches whose results nobody will read, and end those never sent.
    cancel_running(deps, deps.store.get_batches(job_id))
    batches = deps.store.get_batches(job_id)
    try:
        summary = write_outputs(deps, job, batches)
    except Exception as exc:  # the outputs are best effort here; the notification and the end are not
        logger.exception("could not write the outputs of a job the watchdog ended", extra={"error": str(exc)})
        summary = _bare_summary(deps, job, f"{job['reason']} (its outputs could not be written: {exc})"[:2000])
        with contextlib.suppress(Exception):
            deps.objects.put_json(f"{job['output_prefix']}summary.json", summary)
    if not jobs.notify_once(deps, job, summary["status"], summary):
        return None  # a completion is telling the job's end right now; the next poll finishes
    deps.checkpoint("after_publish")
    with contextlib.suppress(Conflict):
        jobs.end(deps, job, summary["status"], summary["timings"]["completed_at"])
    clean_up(deps, batches)  # what has ended; a batch still being canceled keeps its files to expire
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
        "usage": Usage().summary(),
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
