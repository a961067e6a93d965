"""Complete: a job whose batches have all ended → resubmission, or the outputs and the notification.

Safe to run again from any point: outputs are written whole to fixed keys (summary.json last, by
batchdrop.results), the notification is recorded once sent (batchdrop.jobs.notify_once), and the final
state transition is conditional, so a re-run after a crash rewrites the same files and tells no one twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import NOT_DUE, Conflict, due_fields, release
from batchdrop.config import tmpdir as spill_dir
from batchdrop.jobs import hand_over_if_done, notify_once, record_failure
from batchdrop.pipeline import (
    Deps,
    batch_data_key,
    batch_index_key,
    invocation_id,
)
from batchdrop.planner import BatchPlanner, PlannedBatch
from batchdrop.results import outcomes_with_missing, write_outputs
from batchdrop.sending import record_batch, submit_batch
from batchdrop.watchdog import attempts, over_attempts

logger = Logger(service="batchdrop")


def complete_message(deps: Deps, body: str) -> str:
    """One completion-queue message: {"job_id": ...}."""
    try:
        job_id = orjson.loads(body)["job_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        logger.error("a completion message without a job id was dropped", extra={"body_size": len(body)})
        return "malformed"
    return complete_job(deps, str(job_id))


def complete_job(deps: Deps, job_id: str) -> str:
    logger.append_keys(job_id=job_id)
    job = deps.store.get_job(job_id)
    if job is None:
        logger.warning("completion asked for an unknown job")
        return "unknown"
    if job["status"] in m.FINAL_JOB_STATES:
        logger.info("job already complete (duplicate message)")
        return "duplicate"
    if job["status"] != m.JOB_COMPLETING:
        logger.info("job is not ready for completion", extra={"status": job["status"]})
        return "not-ready"
    return finish_job(deps, job_id, invocation_id())


def finish_job(deps: Deps, job_id: str, owner: str) -> str:
    store = deps.store
    job = store.get_job(job_id)
    if job is None or job["status"] != m.JOB_COMPLETING:
        return "not-ready"
    try:
        job = store.claim(job, owner, deps.settings.lease_seconds, (m.JOB_COMPLETING,), count=attempts("completion"))
    except Conflict:
        logger.info("another invocation is completing this job")
        return "busy"
    if not job.get("timed_out") and over_attempts(deps, job, "completion", owner):
        return "timed-out"
    try:
        return _finish(deps, job, owner)
    except Exception as exc:
        # A crash cannot release; then the lease runs out and the poll hands the job over again.
        release(store, job, owner)
        record_failure(deps, job_id, exc)
        raise


def _finish(deps: Deps, job: dict[str, Any], owner: str) -> str:
    store = deps.store
    job_id = job["job_id"]
    batches = store.get_batches(job_id)
    ended_early = job.get("rejected") or job.get("canceled") or job.get("timed_out")
    if not ended_early and _resubmit(deps, job, batches):
        return "resubmitted"
    summary = write_outputs(deps, job, batches)
    status = summary["status"]
    if not notify_once(deps, job, status, summary):
        release(store, job, owner)
        return "busy"
    deps.last_summary = summary
    deps.checkpoint("after_publish")
    store.update(
        job,
        {
            "status": status,
            "completed_at": summary["timings"]["completed_at"],
            "summary_counts": summary["counts"],
        },
        remove=("lease_owner", "lease_until", *NOT_DUE),
        when_status=(m.JOB_COMPLETING,),
    )
    logger.info("job complete", extra={"status": status, "counts": summary["counts"]})
    return status


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

        def store(batch: PlannedBatch) -> None:
            minimum = limits[batch.provider].min_requests
            if batch.requests < minimum:
                # The provider would refuse it (Bedrock's records per job): those requests keep the
                # error of their last attempt.
                logger.warning(
                    "not resubmitting a batch under the provider's minimum",
                    extra={"provider": batch.provider, "requests": batch.requests, "minimum": minimum},
                )
                batch.discard()
                return
            record_batch(deps, job_id, batch, attempt + 1)
            planned.append(batch.key)

        planner = BatchPlanner(
            limits=limits,
            on_batch=store,
            key_prefix=f"a{attempt + 1}-",
            tmpdir=spill_dir(),
        )
        for batch in sorted(latest, key=lambda b: b["sk"]):
            retry = {cid for cid, _code in _retryable(deps, batch)}
            if not retry:
                continue
            # The index lists the batch's requests in the data file's order, whatever field of the
            # provider's line holds the id (custom_id, Gemini's key, Bedrock's recordId).
            key = batch["batch_key"]
            lines = zip(
                deps.objects.lines(batch_index_key(job_id, key)),
                deps.objects.lines(batch_data_key(job_id, key)),
                strict=True,
            )
            for entry, raw in lines:
                custom_id_bytes, _, line = entry.partition(b"\t")
                custom_id = custom_id_bytes.decode()
                if custom_id in retry:
                    planner.add(
                        m.Request(
                            int(line),
                            custom_id,
                            batch["provider"],
                            batch.get("group", ""),
                            batch.get("model", ""),
                            raw + b"\n",
                        )
                    )
        planner.finish()
        if not planned:
            return False
        job = deps.store.update(job, {"resubmit_planned": attempt + 1}, when_status=(m.JOB_COMPLETING,))
        deps.checkpoint("after_resubmit_planned")
        logger.info("resubmitting", extra={"attempt": attempt + 1, "batches": len(planned)})
    batches = deps.store.get_batches(job_id)
    retries = sorted((b for b in batches if int(b.get("attempt", 1)) == attempt + 1), key=lambda b: b["sk"])
    for batch in retries:
        submit_batch(deps, job_id, batch, job.get("lease_owner", ""))
    deps.store.update(
        job,
        {
            "status": m.JOB_SUBMITTED,
            "attempt": attempt + 1,
            # A round resubmitted is progress: the next completion counts its attempts afresh.
            attempts("completion"): 0,
            # Looked at soon as a whole, in case this invocation dies before the hand-over below.
            **due_fields(deps.clock() + deps.settings.poll_min_seconds),
        },
        remove=("lease_owner", "lease_until"),
        when_status=(m.JOB_COMPLETING,),
    )
    # A conflict leaves the hand-over to the poll's next look at the job.
    with contextlib.suppress(Conflict):
        hand_over_if_done(deps, job_id)
    return True


def _retryable(deps: Deps, batch: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(custom_id, code) of the batch's requests worth another attempt."""
    if not batch.get("provider_batch_id"):
        return
    outcomes = outcomes_with_missing(deps, batch)
    for custom_id, _line, outcome in outcomes:
        if not outcome.ok and outcome.code in m.RETRYABLE_CODES:
            yield custom_id, outcome.code or ""
