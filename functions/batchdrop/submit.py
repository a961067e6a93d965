"""Submit: one uploaded file → a job with provider batches (docs/contract.md "Data flow" 1–2).

Every step is safe to run again: the job id comes from the object version, the plan is
deterministic, items are created conditionally, and a batch's intent is recorded before the provider
is called, so a retried or duplicated invocation adopts what the provider accepted instead of
submitting it twice.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import orjson
from aws_lambda_powertools import Logger

from batchdrop import jobs
from batchdrop import models as m
from batchdrop.adapters.objects import ObjectMissing
from batchdrop.adapters.store import Conflict
from batchdrop.batches import cancel_unsent, drop_batch, record_batch, resize_batch, send_batch
from batchdrop.cancel import CancelError, carry_out, request_cancel
from batchdrop.complete import run_completion
from batchdrop.config import CANCEL_PREFIX, INPUT_PREFIX, BatchLimits, tmpdir
from batchdrop.dedup import Duplicate, DuplicateFinder, duplicates_across
from batchdrop.outputs import validation_error
from batchdrop.pipeline import (
    INPUT_SUFFIXES,
    Deps,
    batch_data_key,
    batch_index_key,
    ids_key,
    invocation_id,
    job_id_for,
    output_prefix,
    refused_key,
    validation_errors_key,
)
from batchdrop.planner import ENVELOPE_BYTES, BatchPlanner, PlannedBatch, rebalance
from batchdrop.scan import duplicate_error, scan
from batchdrop.validation import NoIds, Validator, bedrock_to_anthropic
from batchdrop.watchdog import over_attempts

logger = Logger(service="batchdrop")


@dataclass
class SubmitResult:
    job_id: str | None
    outcome: str  # submitted | rejected | duplicate | busy | ignored | cancel-requested
    counts: dict[str, int] | None = None  # lines, invalid, submitted: for this invocation's metrics


def s3_records(event: dict[str, Any]) -> list[tuple[str, str, str | None, str | None, int | None]]:
    """(bucket, key, version_id, etag, size) of each ObjectCreated record; keys arrive URL-encoded."""
    out = []
    for record in event.get("Records") or []:
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record.get("s3") or {}
        obj = s3.get("object") or {}
        out.append(
            (
                (s3.get("bucket") or {}).get("name", ""),
                unquote_plus(obj.get("key", "")),
                obj.get("versionId") or None,
                obj.get("eTag") or None,
                obj.get("size"),
            )
        )
    return out


def submit_event(deps: Deps, event: dict[str, Any]) -> list[SubmitResult]:
    if event.get("Event") == "s3:TestEvent":
        return []
    records = event.get("Records") or []
    if records and records[0].get("eventSource") == "aws:sqs":
        # The next segment of a large file (the segments queue); an error fails the record, and SQS
        # redelivers it.
        return [resume_submission(deps, str(orjson.loads(r["body"])["job_id"])) for r in records]
    return [submit_object(deps, key, version_id) for _bucket, key, version_id, _etag, _size in s3_records(event)]


def submit_object(deps: Deps, key: str, version_id: str | None = None) -> SubmitResult:
    if key.startswith(CANCEL_PREFIX):
        return _cancel_by_file(deps, key)
    if not is_input_key(key):
        # The bucket notification only sends these; anything else is not ours to read.
        logger.info("ignoring an object that is not inputs/*.jsonl or inputs/*.jsonl.gz", extra={"key": key})
        return SubmitResult(None, "ignored")
    try:
        obj = deps.objects.head(key, version_id)
    except ObjectMissing:
        logger.warning("the uploaded object is gone (deleted before we read it)", extra={"key": key})
        return SubmitResult(None, "ignored")
    job_id = job_id_for(obj)
    logger.append_keys(job_id=job_id)
    jobs.create(deps, job_id, obj, output_prefix(key, job_id))
    return resume_submission(deps, job_id, obj)


def _cancel_by_file(deps: Deps, key: str) -> SubmitResult:
    """cancel/<job_id> in the bucket: the same as `batchdrop cancel`, for users with only S3 access."""
    job_id = key[len(CANCEL_PREFIX) :].strip("/")
    try:
        request_cancel(deps.store, job_id, deps.clock())
    except CancelError as exc:
        logger.warning("cancel file ignored", extra={"key": key, "reason": str(exc)})
        return SubmitResult(job_id or None, "ignored")
    return SubmitResult(job_id, "cancel-requested")


def resume_submission(deps: Deps, job_id: str, obj: m.InputObject | None = None) -> SubmitResult:
    """Carry a job's submission as far as it goes, from wherever an earlier invocation stopped."""
    store = deps.store
    job = store.get_job(job_id)
    if job is None or job["status"] != m.JOB_SUBMITTING:
        logger.info("duplicate delivery of an upload already submitted")
        return SubmitResult(job_id, "duplicate")
    owner = invocation_id()
    try:
        current = jobs.claim_submission(deps, job, owner)
    except Conflict:
        logger.info("another invocation is submitting this job")
        return SubmitResult(job_id, "busy")
    if over_attempts(deps, current, "submit", owner):
        return SubmitResult(job_id, "timed-out")
    obj = obj or m.InputObject(**current["input"])
    try:
        return _Submission(deps, current, obj, owner).run()
    except Exception as exc:
        # An error we can see gives the job back at once; a crash (timeout, out of memory) cannot,
        # and the lease runs out instead.
        jobs.release(deps, current, owner)
        jobs.record_failure(deps, job_id, exc, stage="submit")
        raise


class _Submission:
    def __init__(self, deps: Deps, job: dict[str, Any], obj: m.InputObject, owner: str) -> None:
        self.deps = deps
        self.job = job
        self.obj = obj
        self.owner = owner
        self.job_id: str = job["job_id"]

    def run(self) -> SubmitResult:
        if not self.job.get("planned"):
            if not self._plan():
                self._hand_on()
                return SubmitResult(self.job_id, "continued")
            self.deps.checkpoint("after_plan")
        if self.job.get("rejected"):
            run_completion(self.deps, self.job_id, self.owner)
            return SubmitResult(self.job_id, "rejected", self.job.get("counts"))
        batches = sorted(self.deps.store.get_batches(self.job_id), key=lambda b: b["sk"])
        submitted = []
        for batch in batches:
            sent = self._send(batch)
            if sent.get("status") != batch.get("status") and self.job.get(jobs.attempts("submit")):
                # A batch sent or ended is progress: the watchdog counts attempts from here.
                jobs.made_progress(self.deps, self.job, "submit")
            submitted.append(sent)
        self._announce(submitted)
        return SubmitResult(self.job_id, "submitted", self.job.get("counts"))

    # -- planning: stream, validate, split, store ---------------------------------------------------

    def _plan(self) -> bool:
        """Plan the next segment of the file; True once the whole file is planned.

        A plain file larger than one segment (BATCHDROP_SEGMENT_BYTES) is planned one segment per
        invocation, handed on through the segments queue, so no invocation outgrows Lambda's limits:
        each segment starts at a line boundary with the line count so far, closes its own batches,
        and leaves its custom_ids on S3; the last one finds duplicates across all of them.
        """
        deps, settings = self.deps, self.deps.settings
        job = self.job
        segment = int(job.get("segment", 0))
        start = int(job.get("next_offset", 0))
        first_line = int(job.get("next_line", 1))
        validator = Validator(
            providers={name: p.limits for name, p in settings.providers.items()},
            routes=settings.routes,
            folder_provider=_folder_provider(self.obj.key, settings.providers),
            anthropic_default_max_tokens=settings.anthropic_default_max_tokens,
            seen=NoIds(),
        )
        stored: list[str] = list(job.get("batch_keys", []))
        models = {p: set(ms) for p, ms in (job.get("models_by_provider") or {}).items()}

        undersized: list[PlannedBatch] = []

        def store_batch(batch: PlannedBatch) -> None:
            if batch.requests < validator.providers[batch.provider].min_requests:
                undersized.append(batch)  # dealt with once the segment is planned
                return
            record_batch(deps, self.job_id, batch, attempt=1)
            stored.append(batch.key)
            models.setdefault(batch.provider, set()).add(batch.model)

        prefix = "a1-" if segment == 0 else f"a1-s{segment:03d}-"
        planner = BatchPlanner(limits=validator.providers, on_batch=store_batch, key_prefix=prefix, tmpdir=tmpdir())
        segmented = segment > 0 or (self.obj.size or 0) > settings.segment_bytes
        errors_key = validation_errors_key(self.job_id, segment)
        with (
            tempfile.NamedTemporaryFile(dir=tmpdir(), suffix=".jsonl") as errors,
            DuplicateFinder(tmpdir=tmpdir()) as finder,
        ):

            def report(invalid: m.Invalid) -> None:
                errors.write(orjson.dumps(validation_error(invalid)) + b"\n")

            chunks = deps.objects.chunks(self.obj.key, self.obj.version_id, start=start)
            result = scan(
                chunks,
                validator,
                planner.add,
                report,
                tmpdir=tmpdir(),
                first_line=first_line,
                stop_at=settings.segment_bytes if segmented else None,
                finder=finder,
                max_inflated=settings.max_inflated_bytes,
                max_ratio=settings.max_gzip_ratio,
                max_invalid=settings.max_invalid_lines,
                invalid_before=int((job.get("scan_totals") or {}).get("invalid", 0)),
            )
            # Even a file that cannot be read whole keeps its valid lines in batch files: they are
            # reported as not submitted, so no line goes unaccounted for.
            planner.finish()
            refused: list[int] = []
            for batch in undersized:
                refused.extend(self._undersized(batch, store_batch, prefix, report))
            last = result.exhausted or start + result.end_offset >= (self.obj.size or 0)
            totals = dict(job.get("scan_totals") or {"lines": 0, "valid": 0, "invalid": 0})
            totals = {k: totals[k] + getattr(result, k) for k in ("lines", "valid", "invalid")}
            totals["valid"] -= len(refused)
            totals["invalid"] += len(refused)
            if segment > 0 or not last:
                _save_ids(deps, self.job_id, segment, finder)
                # With the ids, the lines refused as too few: the last segment must not count them
                # again as duplicates. On S3, not on the job item, which they could outgrow.
                deps.objects.put_json(refused_key(self.job_id, segment), refused)
            if last:
                duplicates = _all_duplicates(deps, self.job_id, segment) if segment > 0 else finder.duplicates()
                # A line already refused as part of a too-small batch is counted once, as that.
                refused_lines = set(refused)
                for earlier in range(segment):
                    refused_lines.update(orjson.loads(b"".join(deps.objects.lines(refused_key(self.job_id, earlier)))))
                duplicates = [d for d in duplicates if d.line not in refused_lines]
                if duplicates:
                    limits = {name: p.limits for name, p in settings.providers.items()}
                    stored, shrunk = _drop_duplicates(deps, self.job_id, stored, duplicates, limits)
                    for dup in duplicates:
                        report(duplicate_error(dup))
                    totals["valid"] -= len(duplicates)
                    totals["invalid"] += len(duplicates)
                    # A batch the duplicates took under its provider's minimum, and that no batch of
                    # the same model could lend requests to, is dealt with like any other too-small batch.
                    for batch in shrunk:
                        too_small = self._undersized(batch, store_batch, prefix, report)
                        totals["valid"] -= len(too_small)
                        totals["invalid"] += len(too_small)
            errors.flush()
            deps.objects.upload_file(errors.name, errors_key)
        error_files = [*job.get("error_files", []), errors_key]
        if not last:
            self.job = jobs.save_segment(
                deps,
                job,
                {
                    "segment": segment + 1,
                    "next_offset": start + result.end_offset,
                    "next_line": result.last_line + 1,
                    "scan_totals": totals,
                    "batch_keys": stored,
                    "models_by_provider": {p: sorted(ms) for p, ms in models.items()},
                    "error_files": error_files,
                },
            )
            logger.info("planned a segment", extra={"segment": segment, "next_offset": start + result.end_offset})
            return False
        lines, invalid, valid = totals["lines"], totals["invalid"], totals["valid"]
        reason = None
        if result.file_error is not None:
            reason = result.file_error.message
        elif valid == 0:
            reason = "no valid request in the file" if lines else "the file holds no request (it is empty)"
        elif invalid and settings.on_invalid == "reject":
            reason = f"{invalid} of {lines} lines are invalid and the on_invalid policy is reject"
        changes: dict[str, Any] = {
            "planned": True,
            "counts": {"lines": lines, "invalid": invalid, "submitted": 0 if reason else valid},
            "providers": sorted(models),
            "models": sorted({m for ms in models.values() for m in ms}),
            "batch_count": len(stored),
            "error_files": error_files,
        }
        if reason:
            changes["counts"] = {"lines": lines, "invalid": lines, "submitted": 0}
        # A rejected file is `completing` only as long as it takes to write its outputs (run() does).
        self.job = jobs.record_plan(deps, job, changes, rejected=reason)
        logger.info(
            "planned",
            extra={
                "lines": lines,
                "invalid": invalid,
                "valid": valid,
                "batches": len(stored),
                "rejected": bool(reason),
            },
        )
        return True

    def _undersized(
        self,
        batch: PlannedBatch,
        store_batch: Callable[[PlannedBatch], None],
        prefix: str,
        report: Callable[[m.Invalid], None],
    ) -> list[int]:
        """A batch under its provider's minimum (Bedrock's records per job): its requests go to the
        configured fallback provider where they can, and are refused with a clear error otherwise.
        Returns the line numbers refused."""
        settings = self.deps.settings.providers[batch.provider]
        fallback = settings.fallback
        refused: list[int] = []
        planner = BatchPlanner(
            limits={name: p.limits for name, p in self.deps.settings.providers.items()},
            on_batch=store_batch,
            key_prefix=f"{prefix}{batch.provider}-fallback-{batch.key.rsplit('-', 1)[-1]}-",
            tmpdir=tmpdir(),
        )
        try:
            with open(batch.path, "rb") as data, open(batch.index_path, "rb") as index:
                for payload, entry in zip(data, index, strict=True):
                    custom_id, _, line_text = entry.rstrip(b"\n").partition(b"\t")
                    line = int(line_text)
                    moved = bedrock_to_anthropic(payload.rstrip(b"\n"), batch.model) if fallback else None
                    if moved is not None and fallback is not None:
                        model, converted = moved
                        planner.add(m.Request(line, custom_id.decode(), fallback, "", model, converted + b"\n"))
                        continue
                    refused.append(line)
                    report(
                        m.Invalid(
                            line,
                            custom_id.decode(),
                            m.BATCH_TOO_SMALL,
                            f"{batch.provider} runs a batch of at least {settings.limits.min_requests} records for "
                            f"{batch.model}, and only {batch.requests} of this file's requests for it were left for "
                            "one; add requests, lower "
                            f"BATCHDROP_{batch.provider.upper()}_MIN_RECORDS if your account's quota allows, or "
                            f"set BATCHDROP_{batch.provider.upper()}_FALLBACK=anthropic to send Claude requests to "
                            "Anthropic instead",
                        )
                    )
            planner.finish()
        finally:
            batch.discard()
        if refused:
            logger.warning("refused a batch under the provider's minimum", extra={"requests": len(refused)})
        return refused

    def _hand_on(self) -> None:
        """Give the next segment to a fresh invocation, through the segments queue."""
        jobs.release(self.deps, self.job, self.owner)
        self.deps.checkpoint("before_hand_on")
        self.deps.segments.send(self.job_id)

    # -- submission: intent, create (or adopt), record ---------------------------------------------

    def _send(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Send a batch, unless the job was canceled meanwhile and the batch has not been sent: then it
        ends canceled (so a cancel ends a job whose creates keep failing)."""
        if batch["status"] in (m.PENDING, m.SUBMITTING) and not batch.get("provider_batch_id"):
            job = self.deps.store.get_job(self.job_id)
            if job is not None and job.get("cancel_requested"):
                return cancel_unsent(self.deps, batch)
        return send_batch(self.deps, self.job_id, batch, self.owner)

    def _announce(self, batches: list[dict[str, Any]]) -> None:
        deps = self.deps
        now = deps.clock()
        job = self.job
        body = {
            "job_id": self.job_id,
            "status": m.JOB_SUBMITTED,
            "input": self.obj.as_dict(),
            "counts": job.get("counts"),
            "batches": [
                {"provider": b["provider"], "batch_id": b.get("provider_batch_id"), "requests": b["requests"]}
                for b in batches
            ],
            "output_prefix": deps.objects.uri(job["output_prefix"]),
        }
        # Publish first: a crash after it re-runs and re-publishes (same notification id) rather
        # than marking the job submitted and never telling anyone.
        jobs.notify_once(deps, job, "submitted", body)
        deps.checkpoint("after_publish")
        updated = jobs.mark_submitted(deps, job, now)
        if updated.get("cancel_requested"):
            # Canceled while it was being submitted: its batches are canceled now (the poll would only
            # get to them on its next tick), so that the job ends `canceled` even if none was sent.
            carry_out(deps, updated)
        # A conflict leaves the hand-over to the poll's next look at the job.
        with contextlib.suppress(Conflict):
            jobs.hand_over_if_done(deps, self.job_id)


def _drop_duplicates(
    deps: Deps, job_id: str, stored: list[str], duplicates: list[Duplicate], limits: dict[str, BatchLimits]
) -> tuple[list[str], list[PlannedBatch]]:
    """Take the duplicate lines out of the batches already planned (rare: only when a file repeats
    an id). Counts are recomputed from what is kept, so a re-run after a crash lands on the same state.

    A batch the removal leaves under its provider's minimum (Bedrock's records per job) borrows what it
    lacks from another batch of the same model that can spare it, as the planner does for a last batch:
    the plan is as if the duplicates had never been there. Returns the batches kept, and those still
    too small: their items are deleted and their requests handed back in local files.
    """
    drop = {d.line for d in duplicates}
    items = {b["batch_key"]: b for b in deps.store.get_batches(job_id)}
    kept_keys: list[str] = []
    short: list[PlannedBatch] = []
    for key in stored:
        index_key, data_key = batch_index_key(job_id, key), batch_data_key(job_id, key)
        planned = _download_batch(deps, job_id, items[key], drop)
        removed = int(items[key]["requests"]) - planned.requests
        if not removed:
            planned.discard()
            kept_keys.append(key)
        elif planned.requests == 0:
            planned.discard()
            drop_batch(deps, items[key])
        elif planned.requests < limits[planned.provider].min_requests:
            short.append(planned)
        else:
            _store_files(deps, planned, data_key, index_key)
            resize_batch(deps, items[key], planned)
            kept_keys.append(key)
    shrunk: list[PlannedBatch] = []
    for planned in short:
        item = items[planned.key]
        if _borrow(deps, job_id, planned, [items[k] for k in kept_keys], limits[planned.provider]):
            resize_batch(deps, item, planned)
            kept_keys.append(planned.key)
        else:
            drop_batch(deps, item)
            shrunk.append(planned)
    return kept_keys, shrunk


def _download_batch(deps: Deps, job_id: str, item: dict[str, Any], drop: set[int]) -> PlannedBatch:
    """A stored batch in local files, without the lines in `drop`; sized as the planner sizes it."""
    key = item["batch_key"]
    index_out = tempfile.NamedTemporaryFile(dir=tmpdir(), suffix=".idx", delete=False)  # noqa: SIM115
    data_out = tempfile.NamedTemporaryFile(dir=tmpdir(), suffix=".jsonl", delete=False)  # noqa: SIM115
    with index_out, data_out:
        requests = 0
        size = ENVELOPE_BYTES  # counted as the planner counts a batch
        index_lines = deps.objects.lines(batch_index_key(job_id, key))
        for entry, payload in zip(index_lines, deps.objects.lines(batch_data_key(job_id, key)), strict=True):
            if int(entry.rpartition(b"\t")[2]) in drop:
                continue
            index_out.write(entry + b"\n")
            data_out.write(payload + b"\n")
            requests += 1
            size += len(payload) + 1
    return PlannedBatch(
        key, item["provider"], item.get("group", ""), item.get("model", ""), requests, size,
        data_out.name, index_out.name,
    )  # fmt: skip


def _store_files(deps: Deps, planned: PlannedBatch, data_key: str, index_key: str) -> None:
    try:
        deps.objects.upload_file(planned.path, data_key)
        deps.objects.upload_file(planned.index_path, index_key, "text/plain")
    finally:
        planned.discard()


def _borrow(deps: Deps, job_id: str, short: PlannedBatch, kept: list[dict[str, Any]], limits: BatchLimits) -> bool:
    """Fill `short` up to the minimum from a kept batch of the same provider and model that stays at
    the minimum itself; both are stored again. False (nothing changed) when no batch can lend."""
    need = limits.min_requests - short.requests
    for item in kept:
        same = (item["provider"], item.get("group", ""), item.get("model", "")) == (
            short.provider, short.group, short.model,
        )  # fmt: skip
        if not same or int(item["requests"]) - need < limits.min_requests:
            continue
        lender = _download_batch(deps, job_id, item, set())
        rebalance(lender, short, limits.min_requests, limits, tmpdir())
        if short.requests < limits.min_requests:  # over the byte limit: try another
            lender.discard()
            continue
        # The borrower first: a crash before the lender is trimmed leaves the lines in both files, and
        # the re-run, which plans this segment again, recomputes both from the plan.
        data_key, index_key = batch_data_key(job_id, short.key), batch_index_key(job_id, short.key)
        _store_files(deps, short, data_key, index_key)
        _store_files(deps, lender, batch_data_key(job_id, lender.key), batch_index_key(job_id, lender.key))
        resize_batch(deps, item, lender)
        item["requests"], item["bytes"] = lender.requests, lender.bytes
        return True
    return False


def _save_ids(deps: Deps, job_id: str, segment: int, finder: DuplicateFinder) -> None:
    with tempfile.NamedTemporaryFile(dir=tmpdir(), suffix=".ids") as export:
        finder.export(export.name)
        deps.objects.upload_file(export.name, ids_key(job_id, segment), "application/octet-stream")


def _all_duplicates(deps: Deps, job_id: str, last_segment: int) -> list[Duplicate]:
    """Duplicates across every segment's ids, one bucket at a time (flat memory, no disk)."""
    reads = [functools.partial(deps.objects.read_range, ids_key(job_id, s)) for s in range(last_segment + 1)]
    return duplicates_across(reads, DuplicateFinder.buckets)


def _folder_provider(key: str, providers: Any) -> str | None:
    """inputs/<provider>/... routes neutral lines to that provider."""
    parts = key[len(INPUT_PREFIX) :].split("/")
    if len(parts) > 1 and parts[0] in providers:
        return parts[0]
    return None


def is_input_key(key: str) -> bool:
    return key.startswith(INPUT_PREFIX) and key.endswith(INPUT_SUFFIXES)
