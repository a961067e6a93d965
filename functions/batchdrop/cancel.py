"""Cancelling a job: asked for by `batchdrop cancel JOB` or by dropping `cancel/<job_id>` in the bucket;
carried out by the poll, which alone talks to the providers on a schedule.

The request is a flag on the job that does not bump its version, so it never collides with the
pipeline's own optimistic writes. The poll then cancels every provider batch still running; each
ends as the provider reports it (finished requests are kept and billed), and the job completes as
`canceled` with its partial results.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aws_lambda_powertools import Logger

from batchdrop import jobs
from batchdrop import models as m
from batchdrop.adapters.store import Conflict, JobStore
from batchdrop.batches import ProviderBusy, backend, cancel_unsent, look_soon
from batchdrop.pipeline import Deps

logger = Logger(service="batchdrop")


class CancelError(Exception):
    """The job cannot be canceled (unknown, or already ending); the message says which."""


def request_cancel(store: JobStore, job_id: str, now: float) -> str:
    """Flag the job for cancellation; returns its status at the time."""
    job = store.get_job(job_id)
    if job is None:
        raise CancelError(f"no job {job_id!r}: see `batchdrop status` for the job ids")
    status = job["status"]
    if status in m.FINAL_JOB_STATES or status == m.JOB_COMPLETING:
        raise CancelError(f"job {job_id} is {status}: its batches have all ended, nothing is left to cancel")
    if not jobs.ask_cancel(store, job, now):
        raise CancelError(f"job {job_id} changed state while canceling; run the command again")
    logger.info("cancel requested", extra={"job_id": job_id, "status": status})
    return str(status)


def carry_out(deps: Deps, job: dict[str, Any]) -> int:
    """Cancel the job's running provider batches (from the poll); returns how many were asked."""
    asked = cancel_running(deps, deps.store.get_batches(job["job_id"]))
    jobs.mark_canceled(deps, job)
    logger.info("canceled provider batches", extra={"job_id": job["job_id"], "batches": asked})
    return asked


def cancel_running(deps: Deps, batches: list[dict[str, Any]]) -> int:
    """Ask the provider to cancel each batch still running, and look at each soon; returns how many
    were asked."""
    asked = 0
    now = deps.clock()
    for batch in batches:
        if not batch.get("provider_batch_id") and batch.get("status") in (m.PENDING, m.SUBMITTING, m.HELD):
            # Never recorded as sent: it ends canceled here, its share given back; unless its create had
            # reached the provider (found, and recorded now: canceled there below), or may still be under
            # way in another invocation (left to it: the poll looks at it again).
            try:
                batch = cancel_unsent(deps, batch, "cancel")
            except (Conflict, ProviderBusy):
                continue
        if batch.get("status") in m.TERMINAL_BATCH_STATES or not batch.get("provider_batch_id"):
            continue
        try:
            backend(deps, batch).cancel(batch["provider_batch_id"])
            asked += 1
        except Exception as exc:  # a batch that ended meanwhile cannot be canceled: its state says so
            logger.info(
                "provider refused the cancel", extra={"batch_id": batch["provider_batch_id"], "error": str(exc)}
            )
        with contextlib.suppress(Conflict):
            look_soon(deps, batch, now)
    return asked
