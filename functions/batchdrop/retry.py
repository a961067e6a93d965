"""Re-running what the providers failed: `batchdrop retry JOB`, or `retry/<job_id>` dropped in the bucket
(docs/contract.md, "Retries").

A retry is a new job made of the lines of an ended job that ended in errors.jsonl at the provider stage
(expired, server_error, batch_failed, canceled, schema_mismatch, ...). Validation errors are left out:
the same line would fail the same way.

The retry's input is written under inputs/ and becomes a job through the ordinary S3 event, so it runs
exactly as an upload does. It is the original file (read at the version the job pinned) with every line
that is not retried replaced by an empty line: each retried line keeps its physical line number, and so
its `line` in the outputs and its `line-<n>` custom_id when it had none; the scan skips the empty lines
and counts none of them (`counts.lines` is the number of lines retried). A table job's rows are rendered
again from the data versions it pinned (work/<job_id>/table.json), each row retried as the neutral line
it was sent as, the others empty: the retry is a JSONL job (its row n is its line n), without a results
table of its own.

One retry per job, and the chain is linear: a job that has a retry says so, and what failed in the retry
is retried by retrying the retry. The claim on the original's item (batchdrop.jobs.claim_retry) makes a
duplicated event, or two requests at once, write one input, so one job.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aws_lambda_powertools import Logger

from batchdrop import jobs
from batchdrop import models as m
from batchdrop.adapters.objects import ObjectMissing, ObjectStore
from batchdrop.adapters.store import JobStore
from batchdrop.config import CACHE_OFF, INPUT_PREFIX, INPUT_SUFFIXES, tmpdir
from batchdrop.options import META_BUDGET, META_BUDGET_POLICY, META_CACHE, META_DEADLINE, META_LANE
from batchdrop.pipeline import MAX_KEY_BYTES, job_id_for
from batchdrop.reader import LineTooLong, decompressed, iter_line_blocks
from batchdrop.validation import DEFAULT_MAX_LINE

logger = Logger(service="batchdrop")

# S3 user metadata on a retry's input: the job it retries (HeadObject's Metadata name).
META_RETRY_OF = "batchdrop-retry-of"
STAGE_PROVIDER = "provider"
# `<name>.retry-<n>-<job_id>` at the end of a retry input's name (without its suffix).
_RETRY_NAME = re.compile(r"\.retry-(\d+)-(job-[0-9a-f]{20})$")
_JOB_ID = re.compile(r"^job-[0-9a-f]{20}$")
# A deadline this close (or past) is not carried to a retry: the retry could not meet it either.
DEADLINE_MARGIN_SECONDS = 60.0


class RetryError(Exception):
    """The job cannot be retried (unknown, not ended, nothing to retry, already being retried): the
    message says why and what to do."""


@dataclass(frozen=True)
class Retry:
    job_id: str  # the job retried
    retry_job: str  # the retry's own job id
    key: str  # the retry's input
    lines: int  # how many lines it retries (0 when it existed already and was not read again)
    existed: bool = False  # written by an earlier request (a duplicate, or a second `batchdrop retry`)
    notes: tuple[str, ...] = ()  # what of the original's options was not carried, and why


# -- the request ------------------------------------------------------------------------------------


def request_retry(
    objects: ObjectStore,
    store: JobStore,
    job_id: str,
    now: float,
    *,
    wait: float = 0.0,
) -> Retry:
    """Write the retry of ended job `job_id` (once: a repeated request gets the same retry), or
    RetryError. `wait`: how long to wait for another request writing it at the same time."""
    job = _ended_job(store, job_id)
    if job.get("retry_job"):
        return _existing(job)
    wanted = _lines_to_retry(objects, job)
    key = retry_key(job)
    if not jobs.claim_retry(store, job):
        return _wait_for_other(store, job_id, wait)
    try:
        found = _written_earlier(objects, key, job_id)
        if found is not None:
            # An earlier writer put it and died before recording it.
            jobs.record_retry(store, job, job_id_for(found), key, found.version_id)
            return Retry(job_id, job_id_for(found), key, 0, existed=True)
        metadata, notes = retry_metadata(job, now)
        written = _write_input(objects, job, wanted, key, metadata)
        obj = objects.head(key)
        jobs.record_retry(store, job, job_id_for(obj), key, obj.version_id)
    except Exception:
        # An error we can see lets the claim go at once; a crash (a timeout) cannot, and it runs out.
        jobs.give_up_retry(store, job)
        raise
    logger.info("retry written", extra={"job_id": job_id, "key": key, "lines": written})
    return Retry(job_id, job_id_for(obj), key, written, notes=notes)


def _ended_job(store: JobStore, job_id: str) -> dict[str, Any]:
    job = store.get_job(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise RetryError(f"no job {job_id!r}: see `batchdrop status` for the job ids")
    status = job["status"]
    if status not in m.FINAL_JOB_STATES:
        raise RetryError(
            f"job {job_id} is {status}: only an ended job can be retried (its errors are known once it ends); "
            f"follow it with `batchdrop status {job_id}` and retry it then"
        )
    if status == m.JOB_REJECTED:
        raise RetryError(
            f"job {job_id} was rejected ({job.get('reason') or 'see its summary.json'}): nothing was sent, so nothing "
            "failed at a provider; fix the file and upload it again"
        )
    return job


def _existing(job: dict[str, Any]) -> Retry:
    return Retry(job["job_id"], str(job["retry_job"]), str(job.get("retry_key", "")), 0, existed=True)


def _wait_for_other(store: JobStore, job_id: str, wait: float) -> Retry:
    """Another request holds the claim: its retry, once it has recorded it."""
    until = time.monotonic() + wait
    while True:
        job = store.get_job(job_id) or {}
        if job.get("retry_job"):
            return _existing(job)
        if time.monotonic() >= until:
            raise RetryError(
                f"job {job_id} is being retried by another request right now; run `batchdrop status` in a "
                "minute to find its retry (a writer that died lets go after 15 minutes)"
            )
        time.sleep(0.5)


def _written_earlier(objects: ObjectStore, key: str, job_id: str) -> m.InputObject | None:
    try:
        obj = objects.head(key)
    except ObjectMissing:
        return None
    return obj if obj.metadata.get(META_RETRY_OF) == job_id else None


# -- which lines ------------------------------------------------------------------------------------


@dataclass
class LineSet:
    """Line numbers, a bit each: a job's errors can be millions of lines, read in any order."""

    bits: bytearray = field(default_factory=bytearray)
    count: int = 0

    def add(self, line: int) -> None:
        byte, bit = divmod(line, 8)
        if byte >= len(self.bits):
            self.bits.extend(bytes(max(byte + 1 - len(self.bits), len(self.bits))))
        if not self.bits[byte] >> bit & 1:
            self.bits[byte] |= 1 << bit
            self.count += 1

    def __contains__(self, line: object) -> bool:
        if not isinstance(line, int):
            return False
        byte, bit = divmod(line, 8)
        return byte < len(self.bits) and bool(self.bits[byte] >> bit & 1)


def retryable(error: dict[str, Any]) -> bool:
    """An error line the provider gave (or batchdrop on its behalf: expired, canceled): sending the line
    again may succeed. A validation error would fail the same way."""
    return error.get("stage") == STAGE_PROVIDER and isinstance(error.get("line"), int)


def _lines_to_retry(objects: ObjectStore, job: dict[str, Any]) -> LineSet:
    job_id = job["job_id"]
    key = f"{job['output_prefix']}errors.jsonl"
    wanted = LineSet()
    others = 0
    try:
        for raw in objects.lines(key):
            error = orjson.loads(raw)
            if retryable(error):
                wanted.add(int(error["line"]))
            else:
                others += 1
    except ObjectMissing:
        raise RetryError(
            f"job {job_id} has no errors.jsonl at {objects.uri(key)}: its outputs are gone (expired or deleted), "
            "so there is nothing to read the failures from"
        ) from None
    if not wanted.count:
        why = (
            f"its {others} error line(s) are validation errors, which would fail again: fix those lines and upload "
            "the file again"
            if others
            else "every line succeeded"
        )
        raise RetryError(f"job {job_id} has nothing to retry: {why}")
    return wanted


# -- where, and with which options ------------------------------------------------------------------


def retry_key(job: dict[str, Any]) -> str:
    """inputs/<path>.retry-<n>-<job_id>.jsonl[.gz]: next to the original (so a provider folder and a
    prefix's defaults apply alike), numbered along the chain, and named after the job retried, so the
    same job always gets the same key and two jobs never share one."""
    key = str(job["input"]["key"])
    rest = key.removeprefix(INPUT_PREFIX)
    suffix = next((s for s in INPUT_SUFFIXES if rest.endswith(s)), "")
    base = rest[: len(rest) - len(suffix)]
    number = 1
    found = _RETRY_NAME.search(base)
    if found and job.get("retry_of"):
        base, number = base[: found.start()], int(found.group(1)) + 1
    # A table job's retry is its rendered lines: JSONL. A gzip file's, gzip again.
    out_suffix = ".jsonl.gz" if suffix == ".jsonl.gz" else ".jsonl"
    tail = f".retry-{number}-{job['job_id']}{out_suffix}"
    room = MAX_KEY_BYTES - len(INPUT_PREFIX.encode()) - len(tail.encode())
    if len(base.encode()) > room:
        # Keep the head (its folders route and take defaults), a hash of the whole in place of the tail.
        digest = "~" + hashlib.sha256(base.encode()).hexdigest()[:12]
        base = base.encode()[: room - len(digest)].decode(errors="ignore") + digest
    return f"{INPUT_PREFIX}{base}{tail}"


def retry_metadata(job: dict[str, Any], now: float) -> tuple[dict[str, str], tuple[str, ...]]:
    """The original's options as a file's metadata (the values it ran with, wherever they came from), and
    `batchdrop-retry-of`. A deadline is carried only while it is still ahead: a passed one cannot be met
    and would reject the retry; the retry then has none of its own (a note says so)."""
    metadata = {
        META_RETRY_OF: job["job_id"],
        META_LANE: str(job.get("lane_option") or "auto"),
        META_CACHE: str(job.get("cache") or CACHE_OFF),
    }
    if job.get("budget_usd") is not None:
        metadata[META_BUDGET] = str(job["budget_usd"])
    if job.get("budget_policy"):
        metadata[META_BUDGET_POLICY] = str(job["budget_policy"])
    notes: list[str] = []
    deadline = job.get("deadline")
    if deadline is not None:
        when = datetime.fromtimestamp(float(deadline), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if float(deadline) > now + DEADLINE_MARGIN_SECONDS:
            metadata[META_DEADLINE] = when
        else:
            notes.append(f"the original's deadline {when} has passed: the retry runs without one")
    return metadata, tuple(notes)


def retry_fields(obj: m.InputObject) -> dict[str, Any]:
    """What a retry's job item keeps of it: the job it retries (`retry_of`)."""
    retry_of = (obj.metadata or {}).get(META_RETRY_OF, "")
    return {"retry_of": retry_of} if _JOB_ID.match(retry_of) else {}


# -- writing the input ------------------------------------------------------------------------------


def _write_input(
    objects: ObjectStore,
    job: dict[str, Any],
    wanted: LineSet,
    key: str,
    metadata: dict[str, str],
) -> int:
    source = m.InputObject(**job["input"])
    with tempfile.TemporaryDirectory(dir=tmpdir()) as work:
        path = os.path.join(work, "retry.jsonl")
        out = gzip.GzipFile(path, "wb", compresslevel=6) if key.endswith(".gz") else open(path, "wb")  # noqa: SIM115
        with out:
            if job.get("table_key"):
                written = keep_lines(_table_chunks(objects, job), wanted, out.write)
            else:
                try:
                    chunks = objects.chunks(source.key, source.version_id)
                    written = keep_lines(chunks, wanted, out.write)
                except ObjectMissing:
                    raise RetryError(
                        f"job {job['job_id']}'s input {source.key} (version {source.version_id}) is gone from the "
                        "bucket: upload the failed lines as a new file instead"
                    ) from None
        if written != wanted.count:
            logger.warning("retried lines not found in the input", extra={"wanted": wanted.count, "found": written})
        objects.upload_file(
            path, key, "application/gzip" if key.endswith(".gz") else "application/x-ndjson", metadata=metadata
        )
    return written


def keep_lines(chunks: Iterable[bytes], wanted: LineSet, write: Callable[[bytes], object]) -> int:
    """The file's lines numbered as the scan numbers them (physical lines, blank ones counted, a BOM
    dropped, gzip inflated), those in `wanted` as they are and every other one empty; returns how many
    were kept."""
    kept = 0
    for first, block in iter_line_blocks(decompressed(chunks), DEFAULT_MAX_LINE):
        for number, line in enumerate(block, first):
            if number in wanted and not isinstance(line, LineTooLong):
                write(line if line.endswith(b"\n") else line + b"\n")
                kept += 1
            else:
                write(b"\n")
    return kept


def _table_chunks(objects: ObjectStore, job: dict[str, Any]) -> Iterator[bytes]:
    """A table job's rows rendered again, as they were sent: the manifest it resolved (its template
    inlined, so a template changed since does not change the retry) over the data versions it pinned.
    No routes: the manifest's model was checked against the stack's when the job ran, and the command
    line does not know the stack's."""
    from batchdrop.tables.job import TableJobError, open_job
    from batchdrop.tables.s3 import S3Objects
    from batchdrop.tables.sources import Bounds, DataObject

    raw = objects.get_bytes(str(job["table_key"]))
    if raw is None:
        raise RetryError(
            f"job {job['job_id']} is a table job whose description {job['table_key']} is gone (work/ expires): "
            "upload the manifest again instead"
        )
    resolved = orjson.loads(raw)
    manifest = {k: v for k, v in resolved["manifest"].items() if v is not None and k != "template"}
    pinned = [DataObject.from_json(o) for o in resolved["objects"]]
    try:
        table = open_job(
            S3Objects(objects),
            str(resolved["manifest_key"]),
            orjson.dumps(manifest),
            (),
            pinned=pinned,
            bounds=Bounds(*resolved.get("bounds", ())),
        )
    except TableJobError as exc:
        raise RetryError(f"job {job['job_id']}'s table cannot be read again: {exc}") from None
    yield from table.chunks(lambda _invalid: None)
    if table.fatal:
        raise RetryError(f"job {job['job_id']}'s table cannot be read again: {table.fatal}")


# -- the merged view of a chain ---------------------------------------------------------------------


@dataclass
class Merged:
    chain: list[dict[str, Any]]  # the jobs merged, the original first
    results: list[bytes]
    errors: list[bytes]
    left_out: list[str]  # retries not merged (not ended yet)


def chain_of(store: JobStore, job_id: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The job's chain, from the original to its latest retry, and the retries left out as not ended.
    A link counts only when the parent names the child (a file's `batchdrop-retry-of` alone is a claim)."""
    job = store.get_job(job_id)
    if job is None:
        raise RetryError(f"no job {job_id!r}: see `batchdrop status` for the job ids")
    seen = {job_id}
    while job.get("retry_of") and job["retry_of"] not in seen:
        parent = store.get_job(str(job["retry_of"]))
        if parent is None or parent.get("retry_job") != job["job_id"]:
            break
        seen.add(parent["job_id"])
        job = parent
    chain = [job]
    left_out: list[str] = []
    while job.get("retry_job") and job["retry_job"] not in {j["job_id"] for j in chain}:
        child = store.get_job(str(job["retry_job"]))
        if child is None or child["status"] not in m.FINAL_JOB_STATES:
            left_out.append(str(job["retry_job"]))
            break
        chain.append(child)
        job = child
    if chain[0]["status"] not in m.FINAL_JOB_STATES:
        raise RetryError(f"job {chain[0]['job_id']} is {chain[0]['status']}: its outputs are written when it ends")
    return chain, left_out


def merge(outputs: Iterable[tuple[Iterable[bytes], Iterable[bytes]]]) -> tuple[list[bytes], list[bytes]]:
    """One results file and one errors file across attempts, oldest first (each: its results.jsonl and
    errors.jsonl lines): every custom_id once, a later attempt's line replacing an earlier one's (so an
    error a retry answered disappears, and the latest error of a line that kept failing stays), both
    sorted by line. A validation error is never retried, so never replaced: it is kept by its line
    number (a `duplicate_custom_id` names an id that has its own outcome)."""
    results: dict[str, tuple[int, bytes]] = {}
    errors: dict[str, tuple[int, bytes]] = {}

    def keyed(raw: bytes) -> tuple[str, int]:
        line = orjson.loads(raw)
        number = int(line.get("line") or 0)
        cid = line.get("custom_id")
        if cid is None or line.get("stage", STAGE_PROVIDER) != STAGE_PROVIDER:
            return f"line:{number}", number
        return f"id:{cid}", number

    for result_lines, error_lines in outputs:
        for raw in result_lines:
            name, number = keyed(raw)
            results[name] = (number, raw)
            errors.pop(name, None)
        for raw in error_lines:
            name, number = keyed(raw)
            if name not in results:
                errors[name] = (number, raw)

    def ordered(found: dict[str, tuple[int, bytes]]) -> list[bytes]:
        return [raw for _n, raw in sorted(found.values(), key=lambda pair: pair[0])]

    return ordered(results), ordered(errors)


def merged(objects: ObjectStore, store: JobStore, job_id: str) -> Merged:
    """The merged outputs of the chain `job_id` belongs to (batchdrop.retry.merge). Held in memory, a
    line per custom_id: the command runs on the operator's machine, never in a function."""
    chain, left_out = chain_of(store, job_id)

    def files(job: dict[str, Any]) -> tuple[Iterable[bytes], Iterable[bytes]]:
        prefix = job["output_prefix"]
        return objects.lines(f"{prefix}results.jsonl"), objects.lines(f"{prefix}errors.jsonl")

    results, errors = merge(files(job) for job in chain)
    return Merged(chain, results, errors, left_out)


def describe(chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chain as merged.json lists it."""
    return [
        {
            "job_id": j["job_id"],
            "status": j["status"],
            "input": j["input"]["key"],
            "retry_of": j.get("retry_of"),
            "completed_at": j.get("completed_at"),
        }
        for j in chain
    ]
