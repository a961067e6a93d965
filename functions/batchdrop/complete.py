"""Complete: a job whose batches have all ended → resubmission, or the outputs and the notification.

Safe to run again from any point: outputs are written whole to fixed keys (summary.json last), the
notification carries a stable id, and the final state transition is conditional, so a re-run after
a crash rewrites the same files and sends at most one duplicate notification.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from typing import Any

import orjson
from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import NOT_DUE, Conflict, due_fields, release
from batchdrop.config import tmpdir as spill_dir
from batchdrop.jobs import hand_over_if_done, notify_once
from batchdrop.outputs import error_line, result_line
from batchdrop.pipeline import (
    Deps,
    batch_data_key,
    batch_index_key,
    invocation_id,
    iso,
    validation_errors_key,
)
from batchdrop.planner import BatchPlanner, PlannedBatch
from batchdrop.pricing import CostMeter, price_table

logger = Logger(service="batchdrop")

# What a request that has no result line gets, by how its batch ended.
MISSING_BY_STATE = {
    m.FAILED: m.BATCH_FAILED,
    m.BATCH_EXPIRED: m.EXPIRED,
    m.BATCH_CANCELED: m.CANCELED,
    m.COMPLETED: m.SERVER_ERROR,
}


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
        job = store.claim(job, owner, deps.settings.lease_seconds, (m.JOB_COMPLETING,))
    except Conflict:
        logger.info("another invocation is completing this job")
        return "busy"
    if not job.get("timed_out"):
        from batchdrop.watchdog import attempt

        if attempt(deps, job, "completion", owner):
            return "timed-out"
        job = store.get_job(job_id) or job
    try:
        return _finish(deps, job, owner)
    except Exception as exc:
        # A crash cannot release; then the lease runs out and the poll hands the job over again.
        release(store, job, owner)
        record_failure(deps, job_id, exc)
        raise


def record_failure(deps: Deps, job_id: str, exc: BaseException, stage: str = "completion") -> None:
    """Keep why a stage failed on the job, for `batchdrop status` and whoever reads the DLQ.

    Best effort and version-free (like a cancel request), so it never collides with the pipeline.
    """
    from batchdrop.adapters.store import job_pk, serialize

    reason = f"{type(exc).__name__}: {exc}"[:1000]
    logger.exception(f"{stage} failed", extra={"reason": reason})
    try:
        deps.store.ddb.update_item(
            TableName=deps.store.table,
            Key=serialize({"pk": job_pk(job_id), "sk": "JOB"}),
            UpdateExpression=f"SET {stage}_error = :r, {stage}_failures = if_not_exists({stage}_failures, :z) + :one",
            ExpressionAttributeValues=serialize({":r": reason, ":z": 0, ":one": 1}),
        )
    except Exception:
        logger.warning("could not record the completion failure")


def _finish(deps: Deps, job: dict[str, Any], owner: str) -> str:
    store = deps.store
    job_id = job["job_id"]
    batches = store.get_batches(job_id)
    ended_early = job.get("rejected") or job.get("canceled") or job.get("timed_out")
    if not ended_early and _resubmit(deps, job, batches):
        return "resubmitted"
    summary = write_outputs(deps, job, batches)
    status = summary["status"]
    notify_once(deps, job, status, summary)
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
    from batchdrop.sending import submit_batch
    from batchdrop.submit import record_batch

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
    outcomes = _outcomes_with_missing(deps, batch)
    for custom_id, _line, outcome in outcomes:
        if not outcome.ok and outcome.code in m.RETRYABLE_CODES:
            yield custom_id, outcome.code or ""


# -- outputs --------------------------------------------------------------------------------------


def write_outputs(deps: Deps, job: dict[str, Any], batches: list[dict[str, Any]]) -> dict[str, Any]:
    job_id = job["job_id"]
    prefix = job["output_prefix"]
    counts = dict(job.get("counts") or {"lines": 0, "invalid": 0, "submitted": 0})
    succeeded = failed = 0
    tokens_in = tokens_out = 0
    meter = CostMeter(price_table())
    tmpdir = spill_dir()
    # The watchdog's reason when it ended the job: then whatever cannot be read is reported, not raised.
    given_up: str | None = job.get("reason") if job.get("timed_out") else None
    with (
        tempfile.NamedTemporaryFile(dir=tmpdir, suffix=".jsonl") as results,
        tempfile.NamedTemporaryFile(dir=tmpdir, suffix=".jsonl") as errors,
    ):
        invalid_written = 0
        for key in job.get("error_files") or [validation_errors_key(job_id)]:
            for raw in deps.objects.lines(key):
                errors.write(raw + b"\n")
                invalid_written += 1
        superseded: set[str] = set()
        by_attempt = sorted(batches, key=lambda b: (-int(b.get("attempt", 1)), b["sk"]))
        current_attempt = None
        later_ids: set[str] = set()
        for batch in by_attempt:
            attempt = int(batch.get("attempt", 1))
            if attempt != current_attempt:
                superseded |= later_ids
                later_ids = set()
                current_attempt = attempt
            provider = batch["provider"]
            batch_id = batch.get("provider_batch_id")
            if job.get("rejected") or not batch_id:
                if job.get("rejected"):
                    stage, code = "validation", m.FILE_REJECTED
                    reason = job.get("reason") or "the file was rejected"
                elif batch.get("create_refused"):
                    stage, code = "provider", m.BATCH_FAILED
                    reason = batch.get("error") or "the provider refused the batch"
                elif given_up:
                    stage, code, reason = "provider", m.BATCH_FAILED, given_up
                else:
                    stage, code = "provider", m.CANCELED
                    reason = "the job was canceled before this batch was sent"
                for custom_id, line in _index(deps, job_id, batch["batch_key"]).items():
                    if custom_id in superseded:
                        continue
                    if attempt > 1:
                        later_ids.add(custom_id)
                    if stage == "provider":
                        failed += 1
                    errors.write(
                        orjson.dumps(
                            error_line(
                                custom_id=custom_id,
                                line=line,
                                stage=stage,
                                code=code,
                                message=f"not submitted: {reason}",
                                provider=provider,
                                attempts=attempt if stage == "provider" else 0,
                            )
                        )
                        + b"\n"
                    )
                continue
            for custom_id, line, outcome in _outcomes_or_given_up(deps, batch, given_up):
                if custom_id in superseded:
                    continue
                if attempt > 1:
                    later_ids.add(custom_id)
                if outcome.ok:
                    record, t_in, t_out = result_line(
                        custom_id, line, provider, batch.get("model", ""), batch_id, outcome.response or {}
                    )
                    results.write(orjson.dumps(record) + b"\n")
                    succeeded += 1
                    tokens_in += t_in
                    tokens_out += t_out
                    meter.add(record["model"], t_in, t_out)
                else:
                    failed += 1
                    errors.write(
                        orjson.dumps(
                            error_line(
                                custom_id=custom_id,
                                line=line,
                                stage="provider",
                                code=outcome.code or m.SERVER_ERROR,
                                message=outcome.message or "",
                                provider=provider,
                                batch_id=batch_id,
                                attempts=attempt,
                                detail=outcome.detail,
                            )
                        )
                        + b"\n"
                    )
        results.flush()
        errors.flush()
        deps.objects.upload_file(results.name, f"{prefix}results.jsonl")
        deps.checkpoint("after_results")
        deps.objects.upload_file(errors.name, f"{prefix}errors.jsonl")

    if not job.get("counts"):
        # Ended by the watchdog before its plan was stored: count what the outputs hold.
        counts = {"lines": invalid_written + succeeded + failed, "invalid": invalid_written}
        counts["submitted"] = succeeded + failed
    counts.update({"succeeded": succeeded, "failed": failed})
    now = deps.clock()
    if job.get("rejected"):
        status = m.JOB_REJECTED
    elif given_up:
        status = m.JOB_FAILED
    elif job.get("canceled"):
        status = m.JOB_CANCELED
    elif succeeded == 0:
        status = m.JOB_FAILED
    elif failed == 0 and counts.get("invalid", 0) == 0:
        status = m.JOB_COMPLETED
    else:
        status = m.JOB_PARTIAL
    ended = [str(b["ended_at"]) for b in batches if b.get("ended_at")]
    summary: dict[str, Any] = {
        "job_id": job_id,
        "status": status,
        "input": job.get("input"),
        "counts": {k: counts.get(k, 0) for k in ("lines", "invalid", "submitted", "succeeded", "failed")},
        "batches": [
            {
                "provider": b["provider"],
                "batch_id": b.get("provider_batch_id"),
                "requests": b["requests"],
                "status": b.get("status"),
                "attempt": int(b.get("attempt", 1)),
                **({"error": b["error"]} if b.get("error") else {}),
            }
            for b in sorted(batches, key=lambda b: b["sk"])
        ],
        "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
        "cost_usd": meter.summary(),
        "timings": {
            "received_at": job.get("received_at"),
            "submitted_at": job.get("submitted_at"),
            "ended_at": max(ended) if ended else None,
            "completed_at": iso(now),
        },
        "results": deps.objects.uri(f"{prefix}results.jsonl"),
        "errors": deps.objects.uri(f"{prefix}errors.jsonl"),
    }
    if job.get("reason"):
        summary["reason"] = job["reason"]
    deps.objects.put_json(f"{prefix}summary.json", summary)
    return summary


def _index(deps: Deps, job_id: str, batch_key: str) -> dict[str, int]:
    index: dict[str, int] = {}
    for raw in deps.objects.lines(batch_index_key(job_id, batch_key)):
        custom_id, _, line = raw.partition(b"\t")
        index[custom_id.decode()] = int(line)
    return index


def _outcomes_or_given_up(
    deps: Deps, batch: dict[str, Any], given_up: str | None
) -> Iterator[tuple[str, int, m.Outcome]]:
    """The batch's outcomes; for a job the watchdog ended, a batch that has not ended, or whose results
    cannot be read, reports its remaining requests as failed with the watchdog's reason."""
    if given_up is None:
        yield from _outcomes_with_missing(deps, batch)
        return
    seen: set[str] = set()
    if batch.get("status") in m.TERMINAL_BATCH_STATES:
        try:
            for item in _outcomes_with_missing(deps, batch):
                seen.add(item[0])
                yield item
            return
        except Exception as exc:
            logger.warning("could not read a batch's results", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
    for custom_id, line in _index(deps, batch["job_id"], batch["batch_key"]).items():
        if custom_id not in seen:
            yield custom_id, line, m.Outcome(custom_id, ok=False, code=m.BATCH_FAILED, message=f"no result: {given_up}")


def _outcomes_with_missing(deps: Deps, batch: dict[str, Any]) -> Iterator[tuple[str, int, m.Outcome]]:
    """Every request of the batch exactly once: the provider's answer, or an error for its silence."""
    job_id = batch["job_id"]
    index = _index(deps, job_id, batch["batch_key"])
    provider = deps.provider(batch["provider"])
    batch_id = batch["provider_batch_id"]
    status = provider.status(batch_id)
    for outcome in provider.outcomes(batch_id, status):
        line = index.pop(outcome.custom_id, None)
        if line is None:
            # A result for an id we did not send, or a second one for the same id: never count it.
            logger.warning("ignored an unexpected result line", extra={"batch_id": batch_id})
            continue
        yield outcome.custom_id, line, outcome
    code = MISSING_BY_STATE.get(status.state, m.SERVER_ERROR)
    reason = batch.get("error") or status.error
    for custom_id, line in index.items():
        message = {
            m.BATCH_FAILED: f"the provider failed the whole batch: {reason or status.provider_status}",
            m.EXPIRED: "the batch expired before this request ran",
            m.CANCELED: "the batch was canceled before this request ran",
        }.get(code, "the provider returned no result for this request")
        yield custom_id, line, m.Outcome(custom_id, ok=False, code=code, message=message, detail=None)
