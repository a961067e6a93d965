"""Driving files through the whole pipeline on the embedded stack (`batchdrop local run`, the demo)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchdrop import models as m
from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.config import INPUT_SUFFIXES
from batchdrop.local import bill as b
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Chaos, Dispatcher
from batchdrop.pipeline import job_id_for
from batchdrop.tables.files import companions
from batchdrop.tables.manifest import ManifestError, is_manifest

Say = Callable[[str, str], None]


class RunError(Exception):
    """The run could not finish: a precise message for the user, no traceback."""


@dataclass
class JobView:
    file: str
    key: str
    job_id: str
    status: str = "uploaded"
    batches: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] | None = None


@dataclass
class RunReport:
    jobs: list[JobView]
    notifications: list[dict[str, Any]]
    out_dir: str
    provider_stats: dict[str, Any]
    seconds: float
    # The invocations the chaos harness killed, by the step they died at, and by function.
    crashes: dict[str, int] = field(default_factory=dict)
    crashed: dict[str, int] = field(default_factory=dict)
    # What the run's AWS calls would cost (`aws_bill=True`), per million of the files' requests.
    bill: b.Bill | None = None

    @property
    def requests(self) -> int:
        """The lines of every file, as its summary counts them."""
        return sum(int(((j.summary or {}).get("counts") or {}).get("lines") or 0) for j in self.jobs)

    @property
    def saved_usd(self) -> float | None:
        """What the batch lane saved on the providers' real-time prices, over every job (None when a
        job's model has no price)."""
        saved = [((j.summary or {}).get("cost_usd") or {}).get("saved") for j in self.jobs]
        return None if any(v is None for v in saved) else float(sum(saved))  # type: ignore[arg-type]


def input_key(path: str, folder: str | None) -> str:
    name = os.path.basename(path)
    return f"inputs/{folder.strip('/')}/{name}" if folder else f"inputs/{name}"


def _companions(path: str) -> list[tuple[str, str]]:
    try:
        return companions(path)
    except ManifestError as exc:
        raise RunError(str(exc)) from None


def check_files(files: Sequence[str]) -> None:
    for path in files:
        if not os.path.isfile(path):
            raise RunError(f"{path}: no such file")
        if not path.endswith(INPUT_SUFFIXES):
            raise RunError(
                f"{path}: batchdrop takes .jsonl or .jsonl.gz files (rename it if it is JSONL), "
                "or a table job's manifest (.job.json)"
            )
        if is_manifest(path):
            _companions(path)


def run_files(
    files: Sequence[str],
    out_dir: str,
    options: s.StackOptions | None = None,
    folder: str | None = None,
    say: Say | None = None,
    tick_seconds: float = 0.2,
    timeout: float = 600.0,
    keys: Sequence[str] | None = None,
    chaos: Chaos | None = None,
    webhooks: bool = False,
    metadata: Mapping[str, str] | None = None,
    aws_bill: bool = False,
    in_turn: bool = False,
    then: Sequence[str] = (),
) -> RunReport:
    """Upload each file under inputs/, drive the pipeline until every job has ended, copy outputs/.

    `aws_bill`: count the functions' AWS calls and put what they would cost in the report's `bill`.
    `in_turn`: upload each file once the job of the one before it has ended (so that, with the response
    cache on, a file reuses the answers of those before it), rather than all at once; `then`: files
    uploaded in turn once every job of `files` has ended."""
    check_files([*files, *then])
    say = say or (lambda kind, text: None)
    started = time.monotonic()
    os.makedirs(out_dir, exist_ok=True)
    with s.LocalStack(options) as stack:
        # Installed once the stack's resources exist: creating them is not on the bill.
        meter = b.Meter() if aws_bill else None
        with b.metering(meter) if meter else contextlib.nullcontext():
            dispatcher = Dispatcher(stack, chaos or Chaos())
            if webhooks:
                dispatcher.start_webhooks()
            try:
                report = _drive(
                    stack, dispatcher, [*files, *then], out_dir, folder, say, tick_seconds, timeout, keys, started,
                    metadata, [[i] for i in range(len(files))] if in_turn else [list(range(len(files)))],
                )  # fmt: skip
            finally:
                dispatcher.close()
        if meter is not None:
            report.bill = b.bill(meter, report.requests, providers=stack.options.providers)
        return report


def _drive(
    stack: s.LocalStack,
    dispatcher: Dispatcher,
    files: Sequence[str],
    out_dir: str,
    folder: str | None,
    say: Say,
    tick_seconds: float,
    timeout: float,
    keys: Sequence[str] | None,
    started: float,
    metadata: Mapping[str, str] | None = None,
    first: Sequence[Sequence[int]] = (),
) -> RunReport:
    """`first`: the files (by index) uploaded together, turn by turn; those after them go one at a time."""
    store = JobStore(s.TABLE)
    jobs: list[JobView] = []
    notifications: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    taken = sum(len(turn) for turn in first)
    turns = [*first, *([i] for i in range(taken, len(files)))]
    for turn in turns:
        for i in turn:
            path = files[i]
            key = keys[i] if keys else input_key(path, folder)
            if is_manifest(path):
                # The data and template first: a manifest that lands before its data is refused.
                for local_path, data_key in _companions(path):
                    stack.upload(local_path, data_key, None)
                    say("upload", f"{local_path} → s3://{s.BUCKET}/{data_key}")
            stack.upload(path, key, metadata)
            head = aws.client("s3").head_object(Bucket=s.BUCKET, Key=key)
            obj = m.InputObject(s.BUCKET, key, head.get("VersionId"), head["ETag"].strip('"'), head["ContentLength"])
            jobs.append(JobView(path, key, job_id_for(obj)))
            say("upload", f"{path} → s3://{s.BUCKET}/{key}")
        _until_ended(stack, dispatcher, store, jobs, notifications, say, tick_seconds, deadline, timeout)
    # A last drain: the terminal notification may land just after the state we saw.
    for note in dispatcher.notifications():
        notifications.append(note)
    stack.download_tree("outputs/", out_dir)
    with open(os.path.join(out_dir, "notifications.jsonl"), "wb") as f:
        for note in notifications:
            f.write(orjson.dumps(note) + b"\n")
    stats = stack.emulator.stats()
    with open(os.path.join(out_dir, "provider_stats.json"), "wb") as f:
        f.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2))
    for job in jobs:
        prefix = (store.get_job(job.job_id) or {}).get("output_prefix")
        if prefix:
            job.summary = orjson.loads(stack.get(f"{prefix}summary.json"))
    return RunReport(
        jobs,
        notifications,
        out_dir,
        stats,
        time.monotonic() - started,
        dict(dispatcher.crashes),
        dict(dispatcher.crashed),
    )


def _until_ended(
    stack: s.LocalStack,
    dispatcher: Dispatcher,
    store: JobStore,
    jobs: list[JobView],
    notifications: list[dict[str, Any]],
    say: Say,
    tick_seconds: float,
    deadline: float,
    timeout: float,
) -> None:
    while True:
        dispatcher.deliver_uploads()
        dispatcher.deliver_realtime()
        dispatcher.tick()
        dispatcher.deliver_completions()
        for note in dispatcher.notifications():
            notifications.append(note)
            attrs = note["attributes"]
            say(
                "notify",
                f"SNS {attrs.get('event')} · {attrs.get('job_id')} · provider={attrs.get('provider')}",
            )
        _refresh(store, jobs, say)
        if all(j.status in m.FINAL_JOB_STATES for j in jobs):
            break
        _check_submit_dead_letters(stack, dispatcher, jobs)
        if time.monotonic() > deadline:
            pending = ", ".join(f"{j.file} ({j.status})" for j in jobs if j.status not in m.FINAL_JOB_STATES)
            raise RunError(f"gave up after {timeout:.0f}s waiting for: {pending}")
        time.sleep(tick_seconds)


def _check_submit_dead_letters(stack: s.LocalStack, dispatcher: Dispatcher, jobs: list[JobView]) -> None:
    """An upload whose submit failed every retry is in the submit dead-letter queue, as in AWS: if its
    job was never created, nothing more will happen to it, so say so now rather than wait for the
    timeout. (A job that exists is resumed by the poll.)"""
    if all(j.status != "uploaded" for j in jobs):
        return
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_urls[s.SUBMIT_DLQ], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    if int(attributes["ApproximateNumberOfMessages"]) == 0:
        return
    errors = [i.error for i in dispatcher.invocations if i.function == "submit" and i.error]
    last = f"; the last error: {errors[-1]}" if errors else ""
    raise RunError(
        "an upload's submit failed on every retry and its event went to the submit dead-letter queue "
        f"({s.SUBMIT_DLQ}), where a deployed stack would raise an alarm{last}"
    )


def _refresh(store: JobStore, jobs: list[JobView], say: Say) -> None:
    for job in jobs:
        if job.status in m.FINAL_JOB_STATES:
            continue
        item = store.get_job(job.job_id)
        if item is None:
            continue
        for batch in store.get_batches(job.job_id):
            progress = batch.get("progress") or {}
            state = batch.get("status", "")
            shown = f"{state} {progress.get('done') or 0}/{progress.get('total') or batch['requests']}"
            if job.batches.get(batch["batch_key"]) != shown:
                job.batches[batch["batch_key"]] = shown
                bid = batch.get("provider_batch_id") or (
                    "(answered from the cache)" if m.lane_of(batch) == m.LANE_CACHE else "(not sent yet)"
                )
                say("batch", f"{os.path.basename(job.file)} · {batch['provider']} {bid} · {shown}")
        if item["status"] != job.status:
            job.status = item["status"]
            counts = item.get("counts") or {}
            detail = ""
            if counts:
                detail = f" · {counts.get('lines', 0)} lines, {counts.get('invalid', 0)} invalid"
            say("job", f"{os.path.basename(job.file)} · {job.job_id} · {job.status}{detail}")
