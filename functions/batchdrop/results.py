"""A job's outputs: every request's outcome read from its provider (or reported for its silence), and
results.jsonl, errors.jsonl and summary.json written from them.

Used by completion and by the watchdog, which ends a stuck job with the same files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import orjson
from aws_lambda_powertools import Logger

from batchdrop import budget
from batchdrop import models as m
from batchdrop import structured as so
from batchdrop.adapters.cache import Entry
from batchdrop.batches import backend
from batchdrop.cache import AnswerWriter, cached_outcomes, open_cache, request_keys
from batchdrop.config import CACHE_OFF, CACHE_READ_WRITE
from batchdrop.config import tmpdir as spill_dir
from batchdrop.outputs import error_line, extract, result_line
from batchdrop.pipeline import Deps, batch_index_key, iso, replacement_prefix, validation_errors_key
from batchdrop.pricing import CostMeter, Usage, price_table

logger = Logger(service="batchdrop")

# What a request that has no result line gets, by how its batch ended.
MISSING_BY_STATE = {
    m.FAILED: m.BATCH_FAILED,
    m.BATCH_EXPIRED: m.EXPIRED,
    m.BATCH_CANCELED: m.CANCELED,
    m.COMPLETED: m.SERVER_ERROR,
}


def write_outputs(deps: Deps, job: dict[str, Any], batches: list[dict[str, Any]]) -> dict[str, Any]:
    job_id = job["job_id"]
    prefix = job["output_prefix"]
    counts = dict(job.get("counts") or {"lines": 0, "invalid": 0, "submitted": 0})
    succeeded = failed = 0
    usage = Usage()
    meter = CostMeter(price_table())
    tmpdir = spill_dir()
    # The watchdog's reason when it ended the job: then whatever cannot be read is reported, not raised.
    given_up: str | None = job.get("reason") if job.get("timed_out") else None
    # Answers from the response cache: what they would have cost in the lane that first answered them.
    cached = 0
    cache_meter = CostMeter(price_table())
    writer = _answer_writer(deps, job) if given_up is None else None
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
        by_lane: dict[str, int] = {}
        # An escalated batch's unfinished requests were sent again real-time: those answers count.
        replaced = replaced_ids(deps, job_id, batches)
        by_attempt = sorted(batches, key=lambda b: (-int(b.get("attempt", 1)), b["sk"]))
        # A batch may hold requests that ask for a schema when it or any batch of its provider says so:
        # planning moves requests between a provider's batches without looking at them.
        asking = {b["provider"] for b in batches if b.get("structured")}
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
            lane = m.lane_of(batch)
            moved = replaced.get(batch["batch_key"], frozenset())
            if job.get("rejected"):
                # Refused as a whole: its valid lines were never sent (validation stage, not failed).
                reason = job.get("reason") or "the file was rejected"
                for custom_id, line in _index(deps, job_id, batch["batch_key"]).items():
                    rejected = error_line(
                        custom_id=custom_id,
                        line=line,
                        stage="validation",
                        code=m.FILE_REJECTED,
                        message=f"not submitted: {reason}",
                        provider=provider,
                    )
                    errors.write(orjson.dumps(rejected) + b"\n")
                continue
            wants = so.batch_wants(deps, batch) if provider in asking else {}
            if lane == m.LANE_CACHE:
                for custom_id, line, outcome, answer, entry in _cached(deps, batch, wants, provider):
                    if not outcome.ok:
                        # Kept when it matched its schema, read now by a stricter check: the request's
                        # error, as any answer's (it cost nothing, and a retry sends it).
                        failed += 1
                        errors.write(
                            orjson.dumps(
                                error_line(
                                    custom_id=custom_id, line=line, stage="provider",
                                    code=outcome.code or m.SERVER_ERROR, message=outcome.message or "",
                                    provider=provider, detail=outcome.detail, lane=entry.lane,
                                )
                            )
                            + b"\n"
                        )  # fmt: skip
                        continue
                    record, used = result_line(
                        custom_id, line, provider, entry.model or batch.get("model", ""), "",
                        outcome.response or {}, entry.lane, answer,
                    )  # fmt: skip
                    record["batch_id"] = None
                    record["cached"] = True
                    results.write(orjson.dumps(record) + b"\n")
                    succeeded += 1
                    cached += 1
                    cache_meter.add(record["model"], used, entry.lane)
                continue
            keys = request_keys(deps, batch) if writer is not None else None
            for custom_id, line, outcome, answer in so.checked(_outcomes(deps, batch, given_up), wants, provider):
                if custom_id in superseded or custom_id in moved:
                    continue
                if attempt > 1:
                    later_ids.add(custom_id)
                by_lane[lane] = by_lane.get(lane, 0) + 1
                if outcome.ok:
                    record, used = result_line(
                        custom_id,
                        line,
                        provider,
                        batch.get("model", ""),
                        batch_id or "",
                        outcome.response or {},
                        lane,
                        answer,
                    )
                    results.write(orjson.dumps(record) + b"\n")
                    succeeded += 1
                    usage += used
                    meter.add(record["model"], used, lane)
                    if writer is not None and keys is not None and custom_id in keys:
                        writer.add(keys[custom_id], provider, batch.get("model", ""), lane, outcome.response or {})
                else:
                    failed += 1
                    if outcome.code == m.SCHEMA_MISMATCH and outcome.response:
                        # Answered, so billed: its tokens count in usage and cost like a result's.
                        _, used = extract(outcome.response)
                        usage += used
                        meter.add(outcome.response.get("model") or batch.get("model", ""), used, lane)
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
                                lane=lane,
                            )
                        )
                        + b"\n"
                    )
        results.flush()
        errors.flush()
        if writer is not None:
            # Before the outputs: a crash from here on runs completion again, and it writes them again.
            deps.checkpoint("before_cache_written")
            writer.close()
        deps.objects.upload_file(results.name, f"{prefix}results.jsonl")
        deps.checkpoint("after_results")
        deps.objects.upload_file(errors.name, f"{prefix}errors.jsonl")
        table = None
        if job.get("table_key"):
            from batchdrop.tables.stages import write_results_table  # pyarrow: table jobs only

            table = write_results_table(deps, job, results.name, errors.name)
            deps.checkpoint("after_table")

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
    deadline = float(job["deadline"]) if job.get("deadline") is not None else None
    summary: dict[str, Any] = {
        "job_id": job_id,
        "status": status,
        "input": job.get("input"),
        "counts": {
            **{k: counts.get(k, 0) for k in ("lines", "invalid", "submitted", "succeeded", "failed")},
            "cached": cached,
            "by_lane": {lane: by_lane.get(lane, 0) for lane in (m.LANE_BATCH, m.LANE_REALTIME)},
        },
        "deadline": iso(deadline),
        # Whether the job ended (its outputs written now) by its deadline; null without one.
        "met_deadline": None if deadline is None else now <= deadline,
        "lanes": job.get("lanes") or {},
        "batches": [
            {
                "provider": b["provider"],
                "batch_id": b.get("provider_batch_id"),
                "requests": b["requests"],
                "status": b.get("status"),
                "attempt": int(b.get("attempt", 1)),
                "lane": m.lane_of(b),
                **({"escalated": True} if b.get("escalated") else {}),
                **({"error": b["error"]} if b.get("error") else {}),
            }
            for b in sorted(batches, key=lambda b: b["sk"])
            if m.lane_of(b) != m.LANE_CACHE
        ],
        "usage": usage.summary(),
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
    summary["cost_usd"]["cache_saved"] = cache_meter.summary()["total"]
    summary["cache"] = _cache_summary(job, cached, writer)
    if table is not None:
        summary["table"] = table
    if job.get("reason"):
        summary["reason"] = job["reason"]
    # Recorded on the monthly caps once, before the summary that reports them (docs/budgets.md).
    summary["budget"] = budget.settle(deps, job, summary["cost_usd"]["total"])
    deps.objects.put_json(f"{prefix}summary.json", summary)
    return summary


def _answer_writer(deps: Deps, job: dict[str, Any]) -> AnswerWriter | None:
    """Where a `read-write` job's answers go back to the cache; None for any other job."""
    if job.get("cache") != CACHE_READ_WRITE or job.get("rejected"):
        return None
    cache = open_cache(deps)
    return AnswerWriter(cache) if cache is not None else None


def _cached(
    deps: Deps, batch: dict[str, Any], wants: dict[str, so.Wanted], provider: str
) -> Iterator[tuple[str, int, m.Outcome, tuple[Any, str | None] | None, Entry]]:
    """A cache item's answers, with `parsed` for those that asked for a schema (a cached answer matched
    it when it was first given: only answers that did are kept)."""
    entries: dict[str, Entry] = {}

    def outcomes() -> Iterator[tuple[str, int, m.Outcome]]:
        for custom_id, line, outcome, entry in cached_outcomes(deps, batch):
            entries[custom_id] = entry
            yield custom_id, line, outcome

    for custom_id, line, outcome, answer in so.checked(outcomes(), wants, provider):
        yield custom_id, line, outcome, answer, entries.pop(custom_id)


def _cache_summary(job: dict[str, Any], cached: int, writer: AnswerWriter | None) -> dict[str, Any]:
    """summary.json's `cache`: the job's mode, what planning's lookups found, and what completion wrote."""
    looked = {k: int(v) for k, v in (job.get("cache_stats") or {}).items()}
    out: dict[str, Any] = {"mode": job.get("cache") or CACHE_OFF, "answered": cached, **looked}
    if writer is not None:
        out["written"] = writer.cache.stats.written
        out["write_errors"] = writer.cache.stats.write_errors
    return out


def replaced_ids(deps: Deps, job_id: str, batches: list[dict[str, Any]]) -> dict[str, frozenset[str]]:
    """For each escalated batch, the custom_ids its real-time batches took over: what the provider had
    not finished when it was canceled. Its answers for them (canceled, or any it finished after all)
    give way; what it finished before stays its. Its real-time batches are found by their keys (the
    prefix `escalation.replace` plans them under), not by the list written once they are sent, so a
    crash in between cannot make a request count twice."""
    out: dict[str, frozenset[str]] = {}
    for batch in batches:
        if not batch.get("escalated"):
            continue
        prefix = replacement_prefix(batch["batch_key"])
        keys = [b["batch_key"] for b in batches if b["batch_key"].startswith(prefix)]
        if keys:
            out[batch["batch_key"]] = frozenset(cid for key in keys for cid in _index(deps, job_id, key))
    return out


def _index(deps: Deps, job_id: str, batch_key: str) -> dict[str, int]:
    index: dict[str, int] = {}
    for raw in deps.objects.lines(batch_index_key(job_id, batch_key)):
        custom_id, _, line = raw.partition(b"\t")
        index[custom_id.decode()] = int(line)
    return index


def _outcomes(deps: Deps, batch: dict[str, Any], given_up: str | None) -> Iterator[tuple[str, int, m.Outcome]]:
    """Every request of the batch once: its outcome, or, for a batch never sent, why not."""
    if batch.get("provider_batch_id"):
        yield from _outcomes_or_given_up(deps, batch, given_up)
        return
    if batch.get("create_refused"):
        code, reason = m.BATCH_FAILED, batch.get("error") or "the provider refused the batch"
    elif batch.get("never_sent"):
        # Held past its bound by a provider whose queue quota stayed full: not run in time.
        code, reason = m.EXPIRED, batch.get("error") or "the provider's queue quota stayed full"
    elif given_up:
        code, reason = m.BATCH_FAILED, given_up
    else:
        code, reason = m.CANCELED, "the job was canceled before this batch was sent"
    for custom_id, line in _index(deps, batch["job_id"], batch["batch_key"]).items():
        yield custom_id, line, m.Outcome(custom_id, ok=False, code=code, message=f"not submitted: {reason}")


def _outcomes_or_given_up(
    deps: Deps, batch: dict[str, Any], given_up: str | None
) -> Iterator[tuple[str, int, m.Outcome]]:
    """The batch's outcomes; for a job the watchdog ended, a batch that has not ended, or whose results
    cannot be read, reports its remaining requests as failed with the watchdog's reason."""
    if given_up is None:
        yield from outcomes_with_missing(deps, batch)
        return
    seen: set[str] = set()
    try:
        if batch.get("status") in m.TERMINAL_BATCH_STATES:
            for item in outcomes_with_missing(deps, batch):
                seen.add(item[0])
                yield item
            return
        if m.lane_of(batch) == m.LANE_REALTIME:
            # Its chunks' answers are ours to read whatever its state: every one paid for is reported.
            for item in _answered(deps, batch):
                seen.add(item[0])
                yield item
    except Exception as exc:
        logger.warning("could not read a batch's results", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
    for custom_id, line in _index(deps, batch["job_id"], batch["batch_key"]).items():
        if custom_id not in seen:
            yield custom_id, line, m.Outcome(custom_id, ok=False, code=m.BATCH_FAILED, message=f"no result: {given_up}")


def _answered(deps: Deps, batch: dict[str, Any]) -> Iterator[tuple[str, int, m.Outcome]]:
    """The answers a batch has so far (a real-time batch's chunk files), each once."""
    index = _index(deps, batch["job_id"], batch["batch_key"])
    runner = backend(deps, batch)
    status = runner.status(batch["provider_batch_id"])
    for outcome in runner.outcomes(batch["provider_batch_id"], status):
        line = index.pop(outcome.custom_id, None)
        if line is not None:
            yield outcome.custom_id, line, outcome


def outcomes_with_missing(deps: Deps, batch: dict[str, Any]) -> Iterator[tuple[str, int, m.Outcome]]:
    """Every request of the batch exactly once: the provider's answer, or an error for its silence."""
    job_id = batch["job_id"]
    index = _index(deps, job_id, batch["batch_key"])
    provider = backend(deps, batch)
    batch_id = batch["provider_batch_id"]
    status = provider.status(batch_id)
    overdue = batch.get("overdue")
    for outcome in provider.outcomes(batch_id, status):
        line = index.pop(outcome.custom_id, None)
        if line is None:
            # A result for an id we did not send, or a second one for the same id: never count it.
            logger.warning("ignored an unexpected result line", extra={"batch_id": batch_id})
            continue
        if overdue and outcome.code == m.CANCELED:
            # Canceled by us past the provider's window: not the user's cancel, so sent again.
            outcome = m.Outcome(
                outcome.custom_id, ok=False, code=m.EXPIRED, message=str(overdue), detail=outcome.detail
            )
        yield outcome.custom_id, line, outcome
    code = MISSING_BY_STATE.get(status.state, m.SERVER_ERROR)
    if overdue and code == m.CANCELED:
        code = m.EXPIRED
    reason = batch.get("error") or status.error
    for custom_id, line in index.items():
        message = {
            m.BATCH_FAILED: f"the provider failed the whole batch: {reason or status.provider_status}",
            m.EXPIRED: "the batch expired before this request ran",
            m.CANCELED: "the batch was canceled before this request ran",
        }.get(code, "the provider returned no result for this request")
        yield custom_id, line, m.Outcome(custom_id, ok=False, code=code, message=message, detail=None)
