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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import orjson
from aws_lambda_powertools import Logger

from batchdrop import budget, jobs
from batchdrop import models as m
from batchdrop.adapters.objects import ObjectMissing
from batchdrop.adapters.store import Conflict
from batchdrop.batches import ProviderBusy, cancel_unsent, drop_batch, record_batch, resize_batch, send_batch
from batchdrop.cache import CACHE_SUFFIX, open_cache, split_answered, split_known
from batchdrop.cancel import CancelError, cancel_running, carry_out, request_cancel
from batchdrop.complete import run_completion
from batchdrop.config import BUDGET_REFUSE, CACHE_OFF, CANCEL_PREFIX, INPUT_PREFIX, RETRY_PREFIX, tmpdir
from batchdrop.dedup import Duplicate, DuplicateFinder, duplicates_across
from batchdrop.escalation import replace
from batchdrop.options import (
    AUTO,
    JobOptions,
    LaneChoice,
    OptionError,
    choose_lanes,
    job_options,
    may_go_realtime,
)
from batchdrop.outputs import validation_error
from batchdrop.pipeline import (
    INPUT_SUFFIXES,
    Deps,
    answers_key,
    batch_data_key,
    batch_index_key,
    ids_key,
    invocation_id,
    job_id_for,
    output_prefix,
    refused_key,
    validation_errors_key,
)
from batchdrop.planner import ENVELOPE_BYTES, PlannedBatch
from batchdrop.planning import plan_segment, rejection, settle
from batchdrop.retry import RetryError, request_retry, retry_fields
from batchdrop.tables.manifest import is_manifest
from batchdrop.watchdog import over_attempts

if TYPE_CHECKING:
    from batchdrop.tables.job import TableJob

logger = Logger(service="batchdrop")


@dataclass
class SubmitResult:
    job_id: str | None
    outcome: str  # submitted | rejected | duplicate | busy | ignored | cancel-requested | held-sent | retry-*
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
        # The next segment of a large file, or held batches the poll found room for (the segments
        # queue); an error fails the record, and SQS redelivers it.
        bodies = [orjson.loads(r["body"]) for r in records]
        return [_segments_message(deps, body) for body in bodies]
    return [submit_object(deps, key, version_id) for _bucket, key, version_id, _etag, _size in s3_records(event)]


def _segments_message(deps: Deps, body: dict[str, Any]) -> SubmitResult:
    job_id = str(body["job_id"])
    if body.get("escalated"):
        keys = replace(deps, job_id, str(body["escalated"]))
        with contextlib.suppress(Conflict):
            jobs.hand_over_if_done(deps, job_id)  # the unfinished may have been none
        return SubmitResult(job_id, "escalated" if keys else "ignored")
    if body.get("held"):
        return send_held(deps, job_id)
    return resume_submission(deps, job_id)


def submit_object(deps: Deps, key: str, version_id: str | None = None) -> SubmitResult:
    if key.startswith(CANCEL_PREFIX):
        return _cancel_by_file(deps, key)
    if key.startswith(RETRY_PREFIX):
        return _retry_by_file(deps, key)
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
    jobs.create(deps, job_id, obj, output_prefix(key, job_id), {**_options(deps, obj), **retry_fields(obj)})
    return resume_submission(deps, job_id, obj)


def _options(deps: Deps, obj: m.InputObject) -> dict[str, Any]:
    """The file's lane and deadline as the job keeps them; a value that cannot be used is kept as the
    reason the job will be rejected (its lines are still planned, so each is accounted for)."""
    metadata = obj.metadata
    if is_manifest(obj.key):
        from batchdrop.tables import stages as table_stage

        metadata = table_stage.metadata(deps, obj)
    try:
        options = job_options(deps.settings, obj.key, metadata, obj.uploaded_at or deps.clock())
    except OptionError as exc:
        logger.warning("the file's options cannot be used", extra={"reason": str(exc)})
        return {"option_error": str(exc)}
    return {
        "lane_option": options.lane,
        "lane_from": options.lane_from,
        **({"deadline": options.deadline, "deadline_from": options.deadline_from} if options.deadline else {}),
        "cache": options.cache,
        "cache_from": options.cache_from,
        **(
            {"budget_usd": options.budget_usd, "budget_from": options.budget_from}
            if options.budget_usd is not None
            else {}
        ),
        "budget_policy": options.budget_policy,
        **({"monthly_caps": [[p, c] for p, c in options.monthly_caps]} if options.monthly_caps else {}),
    }


def options_of(job: dict[str, Any]) -> JobOptions:
    deadline = job.get("deadline")
    return JobOptions(
        lane=str(job.get("lane_option") or AUTO),
        deadline=float(deadline) if deadline is not None else None,
        lane_from=str(job.get("lane_from") or "default"),
        deadline_from=job.get("deadline_from"),
        cache=str(job.get("cache") or CACHE_OFF),
        cache_from=str(job.get("cache_from") or "default"),
        budget_usd=float(job["budget_usd"]) if job.get("budget_usd") is not None else None,
        budget_from=job.get("budget_from"),
        budget_policy=str(job.get("budget_policy") or BUDGET_REFUSE),
        monthly_caps=tuple((str(p), float(c)) for p, c in job.get("monthly_caps") or ()),
    )


def _cancel_by_file(deps: Deps, key: str) -> SubmitResult:
    """cancel/<job_id> in the bucket: the same as `batchdrop cancel`, for users with only S3 access."""
    job_id = key[len(CANCEL_PREFIX) :].strip("/")
    try:
        request_cancel(deps.store, job_id, deps.clock())
    except CancelError as exc:
        logger.warning("cancel file ignored", extra={"key": key, "reason": str(exc)})
        return SubmitResult(job_id or None, "ignored")
    return SubmitResult(job_id, "cancel-requested")


def _retry_by_file(deps: Deps, key: str) -> SubmitResult:
    """retry/<job_id> in the bucket: the same as `batchdrop retry`, for users with only S3 access. A
    duplicated event finds the retry written (or being written) and writes no other."""
    job_id = key[len(RETRY_PREFIX) :].strip("/")
    try:
        retry = request_retry(deps.objects, deps.store, job_id, deps.clock())
    except RetryError as exc:
        logger.warning("retry file ignored", extra={"key": key, "reason": str(exc)})
        return SubmitResult(job_id or None, "ignored")
    return SubmitResult(retry.retry_job, "retry-existed" if retry.existed else "retry-written")


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


def send_held(deps: Deps, job_id: str) -> SubmitResult:
    """Send the job's held batches that fit their pools now (the poll offered them), and finish any whose
    send died half-way; those that do not fit stay held. Each batch's own conditional writes and create
    mark keep two invocations from sending it twice."""
    job = deps.store.get_job(job_id)
    if job is None or job["status"] != m.JOB_SUBMITTED or job.get("cancel_requested"):
        # Submitting: its submission sends them; ended or being canceled: the poll ends them.
        return SubmitResult(job_id, "ignored")
    owner = invocation_id()
    sent: list[dict[str, Any]] = []
    blocked = False
    for batch in sorted(deps.store.get_batches(job_id), key=lambda b: b["sk"]):
        if batch.get("provider_batch_id") or batch.get("status") not in (m.HELD, m.PENDING, m.SUBMITTING):
            continue
        if blocked and m.lane_of(batch) == m.LANE_BATCH:
            continue  # the job's later batches wait behind one with no room, in order
        # Another invocation got to it first, or its create may still be under way elsewhere: the poll
        # offers it again after the backoff, so neither is worth failing this message over.
        with contextlib.suppress(Conflict, ProviderBusy):
            after = send_batch(deps, job_id, batch, owner)
            if after.get("status") == m.HELD:
                blocked = True  # no room (or "not now"); a real-time batch needs none
            else:
                sent.append(after)
    if sent:
        job = deps.store.get_job(job_id)
        if job is not None and job.get("cancel_requested"):
            # Canceled while these were being created (the poll's cancel saw them unsent): cancel them.
            cancel_running(deps, sent)
        with contextlib.suppress(Conflict):
            jobs.hand_over_if_done(deps, job_id)  # a batch may have ended at its create
    logger.info("sent held batches", extra={"sent": len(sent)})
    return SubmitResult(job_id, "held-sent")


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
        stored: list[str] = list(job.get("batch_keys", []))
        models = {p: set(ms) for p, ms in (job.get("models_by_provider") or {}).items()}
        requests = {p: int(n) for p, n in (job.get("requests_by_provider") or {}).items()}
        options = options_of(job)

        escalate_by = options.deadline if options.lane == AUTO else None
        answer = _CacheAnswers(deps, self.job_id) if options.cache != CACHE_OFF else None
        tally = budget.tally_for(job, options, tmpdir())  # None: no budget and no monthly cap

        def store_batch(batch: PlannedBatch) -> None:
            if answer is not None and batch.lane != m.LANE_CACHE:
                sending, answered = answer.split(batch)
                if answered is not None:
                    # Its answers first: a crash before the batch is stored leaves them for the re-run.
                    record_batch(deps, self.job_id, answered, attempt=1)
                    stored.append(answered.key)
                if sending is None:
                    return
                batch = sending
            record_batch(deps, self.job_id, batch, attempt=1, escalate_by=escalate_by)
            stored.append(batch.key)
            models.setdefault(batch.provider, set()).add(batch.model)
            requests[batch.provider] = requests.get(batch.provider, 0) + batch.requests

        prefix = "a1-" if segment == 0 else f"a1-s{segment:03d}-"
        segmented = segment > 0 or (self.obj.size or 0) > settings.segment_bytes
        errors_key = validation_errors_key(self.job_id, segment)
        table: TableJob | None = None
        table_refused: str | None = None
        reason: str | None = None
        verdict: budget.Verdict | None = None
        if is_manifest(self.obj.key):
            # A table job renders its rows into the request lines this scan reads, all in one go (like a
            # gzip file: a rendered stream cannot be entered half-way).
            segmented = False
            from batchdrop.tables import stages as table_stage  # Jinja2 and its kin: table jobs only
            from batchdrop.tables.job import TableJobError

            try:
                table = table_stage.open_for_plan(deps, self.obj)
            except TableJobError as exc:
                table_refused = str(exc)
                logger.warning("table job refused", extra={"reason": table_refused})
        with (
            tempfile.NamedTemporaryFile(dir=tmpdir(), suffix=".jsonl") as errors,
            DuplicateFinder(tmpdir=tmpdir()) as finder,
        ):

            def report(invalid: m.Invalid) -> None:
                errors.write(orjson.dumps(validation_error(invalid)) + b"\n")

            if table is not None:
                chunks: Iterable[bytes] = table.chunks(report)
            elif table_refused is not None:
                chunks = ()
            else:
                chunks = deps.objects.chunks(self.obj.key, self.obj.version_id, start=start)
            plan = plan_segment(
                chunks,
                settings,
                key=self.obj.key,
                store_batch=store_batch,
                report=report,
                key_prefix=prefix,
                tmpdir=tmpdir(),
                first_line=first_line,
                stop_at=settings.segment_bytes if segmented else None,
                finder=finder,
                invalid_before=int((job.get("scan_totals") or {}).get("invalid", 0)),
                small_realtime=may_go_realtime(options),
                estimate=tally,
            )
            result, refused = plan.result, plan.refused
            if refused:
                logger.warning("refused a batch under the provider's minimum", extra={"requests": len(refused)})
            last = result.exhausted or start + result.end_offset >= (self.obj.size or 0)
            totals = dict(job.get("scan_totals") or {"lines": 0, "valid": 0, "invalid": 0})
            totals = {k: totals[k] + getattr(result, k) for k in ("lines", "valid", "invalid")}
            if table is not None:
                # Rows that did not render stood in the stream as blank lines, which the scan skips.
                totals["lines"] += table.failed
                totals["invalid"] += table.failed
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
                stored, more = settle(
                    _StoredBatches(deps, self.job_id), stored, duplicates, settings, store_batch, report, prefix,
                    tmpdir(), small_realtime=may_go_realtime(options),
                )  # fmt: skip
                totals["valid"] -= more
                totals["invalid"] += more
                reason = (
                    table_refused
                    or (table.fatal if table is not None else None)
                    or job.get("option_error")
                    or rejection(totals["lines"], totals["invalid"], result.file_error, settings.on_invalid)
                )
                if tally is not None and not reason:
                    on = budget.Budget(
                        _StoredBatches(deps, self.job_id), functools.partial(_index_entries, deps, self.job_id),
                        store_batch, report, prefix, tmpdir(), small_realtime=may_go_realtime(options),
                    )  # fmt: skip
                    verdict = budget.check(deps, job, options, tally, segment, stored, on)
                    stored = verdict.kept
                    totals["valid"] -= verdict.cut + verdict.too_small
                    totals["invalid"] += verdict.cut + verdict.too_small
                    # What the cut left may be refused (a too-small batch took the rest): lines cut by the
                    # budget the user asked for are not invalid to on_invalid=reject.
                    asked = verdict.cut
                    reason = verdict.refusal or rejection(
                        totals["lines"] - asked, totals["invalid"] - asked, None, settings.on_invalid
                    )
                    for provider, cut in verdict.cut_by_provider.items():
                        requests[provider] -= cut
                if tally is not None:
                    tally.discard()
            errors.flush()
            deps.objects.upload_file(errors.name, errors_key)
        error_files = [*job.get("error_files", []), errors_key]
        if not last:
            self.job = jobs.save_segment(
                deps,
                job,
                {
                    **({"cache_stats": answer.totals(job.get("cache_stats"))} if answer is not None else {}),
                    "segment": segment + 1,
                    "next_offset": start + result.end_offset,
                    "next_line": result.last_line + 1,
                    "scan_totals": totals,
                    "batch_keys": stored,
                    "models_by_provider": {p: sorted(ms) for p, ms in models.items()},
                    "requests_by_provider": requests,
                    "error_files": error_files,
                    **(tally.save(deps, self.job_id, segment) if tally is not None else {}),
                },
            )
            logger.info("planned a segment", extra={"segment": segment, "next_offset": start + result.end_offset})
            return False
        lines, invalid, valid = totals["lines"], totals["invalid"], totals["valid"]
        lanes = {} if reason else self._choose_lanes(options, requests)
        changes: dict[str, Any] = {
            "planned": True,
            "counts": {"lines": lines, "invalid": invalid, "submitted": 0 if reason else valid},
            "providers": sorted(models),
            "models": sorted({m for ms in models.values() for m in ms}),
            "batch_count": len(stored),
            "error_files": error_files,
            "lanes": {p: c.lane for p, c in lanes.items()},
            "lane_reasons": {p: c.why for p, c in lanes.items()},
        }
        if answer is not None:
            changes["cache_stats"] = answer.totals(job.get("cache_stats"))
        if verdict is not None:
            changes["budget"] = verdict.record
        if table is not None:
            from batchdrop.tables import stages as table_stage

            changes["table_key"] = table_stage.save(deps, self.job_id, table)
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

    def _choose_lanes(self, options: JobOptions, requests: dict[str, int]) -> dict[str, LaneChoice]:
        """Each provider's lane (batchdrop.options.choose_lanes), written on its batches: a provider
        whose requests go real-time has every batch in the real-time lane (one under its provider's
        minimum is there already)."""
        chosen = choose_lanes(self.deps.settings, options, requests, self.deps.clock())
        for batch in self.deps.store.get_batches(self.job_id):
            lane = chosen.get(batch["provider"])
            if lane is not None and lane.lane == m.LANE_REALTIME and m.lane_of(batch) != m.LANE_REALTIME:
                self.deps.store.update(batch, {"lane": m.LANE_REALTIME}, when_status=(m.PENDING,))
        return chosen

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
                return cancel_unsent(self.deps, batch, self.owner)
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
                | ({"held": True} if b.get("status") == m.HELD else {})
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


class _CacheAnswers:
    """Answers a closed batch's requests from the response cache before it is stored (batchdrop.cache).

    What the cache answered of a batch is decided once, by the first planning to write its answers file
    (an S3 conditional write; an empty file when it answered none): any other planning of the same batch
    (a re-run after a crash, or one that overlaps it after a lease ran out) reads that decision and makes
    the same split, whatever the cache says by then, so no request is both answered and sent."""

    def __init__(self, deps: Deps, job_id: str) -> None:
        self.deps = deps
        self.job_id = job_id
        self.cache = open_cache(deps)

    def split(self, batch: PlannedBatch) -> tuple[PlannedBatch | None, PlannedBatch | None]:
        if self.cache is None:
            return batch, None
        objects = self.deps.objects
        decision = answers_key(self.job_id, batch.key + CACHE_SUFFIX)
        decided = objects.get_bytes(decision)
        if decided is None:
            sending, answered = split_answered(batch, self.cache, tmpdir(), self._minimum(batch))
            body = b"" if answered is None or answered.answers_path is None else _read(answered.answers_path)
            if objects.put_if_absent(decision, body):
                if answered is None:
                    return batch, None
                batch.discard()
                return sending, answered
            for planned in (sending, answered):
                if planned is not None:
                    planned.discard()
            decided = objects.get_bytes(decision) or b""
        if not decided:
            return batch, None
        sending, answered = split_known(batch, decided, tmpdir())
        batch.discard()
        return sending, answered

    def _minimum(self, batch: PlannedBatch) -> int:
        return self.deps.settings.providers[batch.provider].limits.min_requests

    def totals(self, before: dict[str, Any] | None) -> dict[str, int]:
        """This invocation's lookups added to those of the job's earlier segments."""
        now = self.cache.stats.as_dict() if self.cache is not None else {}
        keys = ("hits", "misses", "errors", "poisoned")
        return {k: int((before or {}).get(k, 0)) + now.get(k, 0) for k in keys}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _StoredBatches:
    """The batches of a job as the submit function keeps them: files on S3, an item each in DynamoDB."""

    def __init__(self, deps: Deps, job_id: str) -> None:
        self.deps = deps
        self.job_id = job_id
        self._records: dict[str, dict[str, Any]] | None = None

    def records(self) -> dict[str, dict[str, Any]]:
        if self._records is None:
            self._records = {b["batch_key"]: b for b in self.deps.store.get_batches(self.job_id)}
        return self._records

    def load(self, record: dict[str, Any], drop: set[int]) -> PlannedBatch:
        return _download_batch(self.deps, self.job_id, record, drop)

    def save(self, record: dict[str, Any], planned: PlannedBatch) -> None:
        key = record["batch_key"]
        _store_files(self.deps, planned, batch_data_key(self.job_id, key), batch_index_key(self.job_id, key))
        record.update(resize_batch(self.deps, record, planned))

    def delete(self, record: dict[str, Any]) -> None:
        drop_batch(self.deps, record)


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


def _index_entries(deps: Deps, job_id: str, item: dict[str, Any]) -> Iterable[tuple[str, int]]:
    """(custom_id, line) of each request of a stored batch, from its index."""
    for entry in deps.objects.lines(batch_index_key(job_id, item["batch_key"])):
        custom_id, _, line = entry.rpartition(b"\t")
        yield custom_id.decode(), int(line)


def _save_ids(deps: Deps, job_id: str, segment: int, finder: DuplicateFinder) -> None:
    with tempfile.NamedTemporaryFile(dir=tmpdir(), suffix=".ids") as export:
        finder.export(export.name)
        deps.objects.upload_file(export.name, ids_key(job_id, segment), "application/octet-stream")


def _all_duplicates(deps: Deps, job_id: str, last_segment: int) -> list[Duplicate]:
    """Duplicates across every segment's ids, one bucket at a time (flat memory, no disk)."""
    reads = [functools.partial(deps.objects.read_range, ids_key(job_id, s)) for s in range(last_segment + 1)]
    return duplicates_across(reads, DuplicateFinder.buckets)


def is_input_key(key: str) -> bool:
    return key.startswith(INPUT_PREFIX) and key.endswith(INPUT_SUFFIXES)
