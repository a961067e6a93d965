"""Planning a file: every line validated, valid requests split into provider batches, the verdict.

One set of functions, with no AWS in them, shared by the submit function and `batchdrop validate`, so
that the command line says what the pipeline will do: the same counts, the same codes on the same
lines, the same batches. Where the batches live is the caller's (`BatchFiles`): the submit function
keeps them on S3 with an item each in DynamoDB, `batchdrop validate` in local files.

A file is planned in one or more segments (`plan_segment`); once the last segment is planned,
`settle` takes out the lines whose custom_id an earlier line used and deals with batches that end up
under their provider's minimum; `rejection` says whether the file is refused as a whole.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchdrop import models as m
from batchdrop.config import (
    ENV_BUCKET,
    ENV_COMPLETION_QUEUE_URL,
    ENV_ON_INVALID,
    ENV_PROVIDERS,
    ENV_TABLE,
    ENV_TOPIC_ARN,
    INPUT_PREFIX,
    BatchLimits,
    Settings,
)
from batchdrop.dedup import Duplicate, DuplicateFinder
from batchdrop.planner import ENVELOPE_BYTES, SIZES_INDEX, BatchPlanner, PlannedBatch, rebalance
from batchdrop.providers import SPECS
from batchdrop.scan import ScanResult, duplicate_error, scan
from batchdrop.validation import NoIds, Validator

Report = Callable[[m.Invalid], None]
StoreBatch = Callable[[PlannedBatch], None]


class Tokens(Protocol):
    """What counts the requests planned (`batchdrop validate`'s Estimate, a budget's Tally)."""

    def add_many(self, requests: Sequence[m.Request]) -> None: ...


@dataclass
class SegmentPlan:
    """What planning one segment found: the scan's result, and the lines refused because their batch
    stayed under its provider's minimum (counted invalid here, valid in `result`)."""

    result: ScanResult
    refused: list[int] = field(default_factory=list)


def limits_of(settings: Settings) -> dict[str, BatchLimits]:
    return {name: p.limits for name, p in settings.providers.items()}


def folder_provider(key: str, providers: Mapping[str, Any]) -> str | None:
    """inputs/<provider>/... routes neutral lines to that provider."""
    parts = key[len(INPUT_PREFIX) :].split("/")
    if len(parts) > 1 and parts[0] in providers:
        return parts[0]
    return None


def plan_segment(
    chunks: Iterable[bytes],
    settings: Settings,
    *,
    key: str,
    store_batch: StoreBatch,
    report: Report,
    key_prefix: str,
    tmpdir: str | None,
    first_line: int = 1,
    stop_at: int | None = None,
    finder: DuplicateFinder | None = None,
    invalid_before: int = 0,
    estimate: Tokens | None = None,
    dry: bool = False,
    small_realtime: bool = False,
) -> SegmentPlan:
    """Validate the lines of `chunks` from `first_line` on, split the valid ones into batches (each
    closed batch goes to `store_batch`), report every invalid line, and deal with batches under their
    provider's minimum (Bedrock's records per job): their requests go to the configured fallback, or
    are refused as `batch_too_small`. With `estimate`, the requests' tokens and cost are added up.

    `dry` plans without writing the requests of a batch that can never be too small (only its index,
    with sizes): the same batches, for a plan that sends nothing (`batchdrop validate`).

    `small_realtime` (the file's lane is not `batch`): a batch under its provider's minimum runs on the
    real-time lane instead, which has no minimum."""
    limits = limits_of(settings)
    validator = Validator(
        providers=limits,
        routes=settings.routes,
        folder_provider=folder_provider(key, settings.providers),
        anthropic_default_max_tokens=settings.anthropic_default_max_tokens,
        seen=NoIds(),
    )
    undersized: list[PlannedBatch] = []

    def keep(batch: PlannedBatch) -> None:
        if batch.requests < limits[batch.provider].min_requests:
            undersized.append(batch)  # dealt with once the segment is planned
        else:
            store_batch(batch)

    sizes_only = frozenset(name for name, limit in limits.items() if dry and limit.min_requests <= 1)
    planner = BatchPlanner(limits=limits, on_batch=keep, key_prefix=key_prefix, tmpdir=tmpdir, sizes_only=sizes_only)
    on_requests = planner.add_many
    if estimate is not None:

        def on_requests(requests: Sequence[m.Request], add: Any = planner.add_many, count: Any = estimate) -> None:
            add(requests)
            count.add_many(requests)

    result = scan(
        chunks,
        validator,
        planner.add,
        report,
        tmpdir=tmpdir,
        first_line=first_line,
        stop_at=stop_at,
        finder=finder,
        max_inflated=settings.max_inflated_bytes,
        max_ratio=settings.max_gzip_ratio,
        max_invalid=settings.max_invalid_lines,
        invalid_before=invalid_before,
        on_requests=on_requests,
    )
    # Even a file that cannot be read whole keeps its valid lines in batch files: they are reported
    # as not submitted, so no line goes unaccounted for.
    planner.finish()
    plan = SegmentPlan(result)
    for batch in undersized:
        if small_realtime:
            batch.lane = m.LANE_REALTIME
            store_batch(batch)
            continue
        plan.refused.extend(too_small(batch, settings, store_batch, report, key_prefix, tmpdir))
    return plan


def too_small(
    batch: PlannedBatch, settings: Settings, store_batch: StoreBatch, report: Report, prefix: str, tmpdir: str | None
) -> list[int]:
    """A batch under its provider's minimum (Bedrock's records per job): its requests go to the
    configured fallback provider where they can, and are refused with a clear error otherwise.
    Returns the line numbers refused."""
    provider = settings.providers[batch.provider]
    fallback = provider.fallback
    convert = SPECS[batch.provider].fallbacks.get(fallback) if fallback else None
    refused: list[int] = []
    planner = BatchPlanner(
        limits=limits_of(settings),
        on_batch=store_batch,
        key_prefix=f"{prefix}{batch.provider}-fallback-{batch.key.rsplit('-', 1)[-1]}-",
        tmpdir=tmpdir,
    )
    try:
        with open(batch.path, "rb") as data, open(batch.index_path, "rb") as index:
            for payload, entry in zip(data, index, strict=True):
                custom_id, _, line_text = entry.rstrip(b"\n").partition(b"\t")
                line = int(line_text)
                moved = convert(payload.rstrip(b"\n"), batch.model) if convert is not None else None
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
                        f"{batch.provider} runs a batch of at least {provider.limits.min_requests} records for "
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
    return refused


class BatchFiles(Protocol):
    """Where the planned batches of a file are kept (S3 and DynamoDB for the submit function, local
    files for `batchdrop validate`), for taking duplicate lines out of them."""

    def records(self) -> dict[str, dict[str, Any]]:
        """Every stored batch by key: its `provider`, `group`, `model` and `requests`."""
        ...

    def load(self, record: dict[str, Any], drop: set[int]) -> PlannedBatch:
        """The batch in local files, without the lines in `drop`; sized as the planner sizes it."""
        ...

    def save(self, record: dict[str, Any], planned: PlannedBatch) -> None:
        """Store `planned` as the batch of `record` (its files and counts), and discard the local files."""
        ...

    def delete(self, record: dict[str, Any]) -> None: ...


def settle(
    batches: BatchFiles,
    stored: list[str],
    duplicates: list[Duplicate],
    settings: Settings,
    store_batch: StoreBatch,
    report: Report,
    prefix: str,
    tmpdir: str | None,
    small_realtime: bool = False,
) -> tuple[list[str], int]:
    """Take the lines whose custom_id an earlier line used out of the batches planned (rare: only when a
    file repeats an id), report them, and deal with a batch they took under its provider's minimum.
    Returns the batch keys kept and the number of lines that became invalid (the duplicates, and the
    lines of batches refused as too small)."""
    if not duplicates:
        return stored, 0
    kept, shrunk = drop_duplicates(batches, stored, duplicates, limits_of(settings), tmpdir)
    for dup in duplicates:
        report(duplicate_error(dup))
    invalid = len(duplicates)
    # A batch the duplicates took under its provider's minimum, and that no batch of the same model
    # could lend requests to, is dealt with like any other too-small batch.
    for batch in shrunk:
        if small_realtime:
            batch.lane = m.LANE_REALTIME
            store_batch(batch)
            kept.append(batch.key)
            continue
        invalid += len(too_small(batch, settings, store_batch, report, prefix, tmpdir))
    return kept, invalid


def drop_duplicates(
    batches: BatchFiles,
    stored: list[str],
    duplicates: list[Duplicate],
    limits: Mapping[str, BatchLimits],
    tmpdir: str | None,
) -> tuple[list[str], list[PlannedBatch]]:
    """Take the duplicate lines out of the batches stored. Counts are recomputed from what is kept, so
    a re-run after a crash lands on the same state.

    A batch the removal leaves under its provider's minimum (Bedrock's records per job) borrows what it
    lacks from another batch of the same model that can spare it, as the planner does for a last batch:
    the plan is as if the duplicates had never been there. Returns the batches kept, and those still
    too small: their records are deleted and their requests handed back in local files.
    """
    drop = {d.line for d in duplicates}
    records = batches.records()
    kept_keys: list[str] = []
    short: list[PlannedBatch] = []
    for key in stored:
        planned = batches.load(records[key], drop)
        removed = int(records[key]["requests"]) - planned.requests
        if not removed:
            planned.discard()
            kept_keys.append(key)
        elif planned.requests == 0:
            planned.discard()
            batches.delete(records[key])
        elif planned.requests < limits[planned.provider].min_requests and records[key].get("lane") != m.LANE_CACHE:
            # (answers from the cache are never sent: no minimum holds them)
            short.append(planned)
        else:
            batches.save(records[key], planned)
            kept_keys.append(key)
    shrunk: list[PlannedBatch] = []
    for planned in short:
        record = records[planned.key]
        if _borrow(batches, planned, [records[k] for k in kept_keys], limits[planned.provider], tmpdir):
            kept_keys.append(planned.key)
        else:
            batches.delete(record)
            shrunk.append(planned)
    return kept_keys, shrunk


def _borrow(
    batches: BatchFiles, short: PlannedBatch, kept: list[dict[str, Any]], limits: BatchLimits, tmpdir: str | None
) -> bool:
    """Fill `short` up to the minimum from a kept batch of the same provider and model that stays at
    the minimum itself; both are stored again. False (nothing changed) when no batch can lend."""
    need = limits.min_requests - short.requests
    records = batches.records()
    for record in kept:
        same = (record["provider"], record.get("group", ""), record.get("model", "")) == (
            short.provider, short.group, short.model,
        )  # fmt: skip
        if not same or int(record["requests"]) - need < limits.min_requests:
            continue
        lender = batches.load(record, set())
        rebalance(lender, short, limits.min_requests, limits, tmpdir)
        if short.requests < limits.min_requests:  # over the byte limit: try another
            lender.discard()
            continue
        # The borrower first: a crash before the lender is trimmed leaves the lines in both files, and
        # the re-run, which plans this segment again, recomputes both from the plan.
        batches.save(records[short.key], short)
        batches.save(record, lender)
        return True
    return False


def rejection(lines: int, invalid: int, file_error: m.Invalid | None, on_invalid: str) -> str | None:
    """Why a planned file is refused as a whole, or None when its valid requests are sent."""
    valid = lines - invalid
    if file_error is not None:
        return file_error.message
    if valid == 0:
        return "no valid request in the file" if lines else "the file holds no request (it is empty)"
    if invalid and on_invalid == "reject":
        return f"{invalid} of {lines} lines are invalid and the on_invalid policy is reject"
    return None


# -- planning offline (`batchdrop validate`) ----------------------------------------------------------


def offline_settings(env: Mapping[str, str] | None = None, on_invalid: str | None = None) -> Settings:
    """The settings a deployment with this environment plans with, for planning with no deployment:
    the same variables read by the same code (limits, routes, minimums, fallbacks, bounds), every
    provider enabled unless BATCHDROP_PROVIDERS says otherwise, and what only AWS needs stood in for."""
    env = dict(os.environ if env is None else env)
    env.setdefault(ENV_PROVIDERS, ",".join(SPECS))
    for name in (ENV_BUCKET, ENV_TABLE, ENV_TOPIC_ARN, ENV_COMPLETION_QUEUE_URL):
        env.setdefault(name, "offline")
    for spec in SPECS.values():
        for option in spec.options:
            if option.required:  # what the stack would set: any value of the right form does to plan
                env.setdefault(spec.env_var(option.what), f"{option.starts_with or ''}offline.invalid")
    if on_invalid is not None:
        env[ENV_ON_INVALID] = on_invalid
    return Settings.from_env(env)


class LocalBatches:
    """The batches of a file planned offline, kept in local files until `close`."""

    def __init__(self) -> None:
        self.planned: dict[str, PlannedBatch] = {}
        self.order: list[str] = []

    def store(self, batch: PlannedBatch) -> None:
        self.planned[batch.key] = batch
        self.order.append(batch.key)

    def records(self) -> dict[str, dict[str, Any]]:
        return {
            key: {"batch_key": key, "provider": b.provider, "group": b.group, "model": b.model, "requests": b.requests}
            for key, b in self.planned.items()
        }

    def load(self, record: dict[str, Any], drop: set[int]) -> PlannedBatch:
        batch = self.planned[record["batch_key"]]
        folder = os.path.dirname(batch.index_path)
        index_out = tempfile.NamedTemporaryFile(dir=folder, suffix=".idx", delete=False)  # noqa: SIM115
        requests, size = 0, ENVELOPE_BYTES
        if not batch.path:  # planned dry: (line, size) pairs in the index
            with open(batch.index_path, "rb") as index:
                pairs = array(SIZES_INDEX, index.read())
            kept = array(SIZES_INDEX)
            for line, length in zip(pairs[::2], pairs[1::2], strict=True):
                if line not in drop:
                    kept.extend((line, length))
                    requests += 1
                    size += length
            with index_out:
                index_out.write(kept.tobytes())
            return PlannedBatch(batch.key, batch.provider, batch.group, batch.model, requests, size, "", index_out.name)
        data_out = tempfile.NamedTemporaryFile(dir=folder, suffix=".jsonl", delete=False)  # noqa: SIM115
        with open(batch.path, "rb") as data, open(batch.index_path, "rb") as index, data_out, index_out:
            for payload, entry in zip(data, index, strict=True):
                if int(entry.rstrip(b"\n").rpartition(b"\t")[2]) in drop:
                    continue
                data_out.write(payload)
                index_out.write(entry)
                requests += 1
                size += len(payload)
        return PlannedBatch(
            batch.key, batch.provider, batch.group, batch.model, requests, size, data_out.name, index_out.name
        )

    def save(self, record: dict[str, Any], planned: PlannedBatch) -> None:
        old = self.planned[record["batch_key"]]
        if old.index_path != planned.index_path:
            old.discard()
        self.planned[record["batch_key"]] = planned

    def delete(self, record: dict[str, Any]) -> None:
        self.planned.pop(record["batch_key"]).discard()
        self.order.remove(record["batch_key"])

    def close(self) -> None:
        for batch in self.planned.values():
            batch.discard()
        self.planned.clear()
