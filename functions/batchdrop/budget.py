"""Budgets (docs/budgets.md): a file's cost estimate checked against its budget and the monthly caps
before anything is sent, and what a job spent recorded against the caps once it ends.

The estimate is an upper bound on what the provider will bill, not a guess: each request's input at
CHARS_PER_TOKEN characters a token (as `batchdrop validate` counts it) and its whole output cap, at the
price of the lane it may take. It is counted request by request as planning hands requests on
(`Tally`, the `estimate` hook of `plan_segment`), never sampled: the truncate policy needs to know
which request is the first that does not fit. A segment's counts are spilled to a file (32 bytes a
request: its line, its model, its tokens) and kept on S3 between the invocations that plan a large
file; the last segment reads them back in line order.

The monthly caps are counters in the jobs table (batchdrop.adapters.store, `SPEND#<prefix>`, one item a
UTC month): a job reserves its estimate on each of its caps in the transaction that marks it reserved,
and moves the reservation to what it spent in the transaction that marks it settled, so neither can
happen twice and two jobs can never both pass a cap.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import tempfile
from array import array
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import Conflict, OverCap, record_spend, reserve_spend, spend
from batchdrop.config import BUDGET_TRUNCATE, Settings
from batchdrop.estimate import request_tokens
from batchdrop.options import AUTO, JobOptions, choose_lanes
from batchdrop.pipeline import Deps, work_prefix
from batchdrop.planner import PlannedBatch
from batchdrop.planning import BatchFiles, Report, StoreBatch, too_small
from batchdrop.pricing import CHARS_PER_TOKEN, Price, price_table, realtime_price

# A request's record in the tally: its line, its model's index, its input and output tokens.
FIELDS = 4
TYPECODE = "q"
# Records kept in memory before they go to the segment's file: what a plan holds stays flat.
SPILL_EVERY = 65_536
# How many times a truncated job computes what fits again when another job took the room first.
RESERVE_TRIES = 5
MICRO = Decimal("0.000001")

logger = Logger(service="batchdrop")


def month_of(now: float) -> str:
    """The UTC month a job's spend counts in ("2026-12"): the month it was planned."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


def usd(value: float, up: bool = True) -> Decimal:
    """USD to the micro-dollar, as the counters keep it: an estimate rounds up (it stays a bound)."""
    return Decimal(repr(value)).quantize(MICRO, rounding=ROUND_CEILING if up else ROUND_HALF_UP)


def applies(options: JobOptions) -> bool:
    """Whether the file has anything to be checked against (a budget of its own, or a monthly cap)."""
    return options.budget_usd is not None or bool(options.monthly_caps)


def cap_name(prefix: str) -> str:
    if not prefix:
        return "the stack's monthly cap (BATCHDROP_MONTHLY_BUDGET_USD)"
    return f"the monthly cap of prefix {prefix} (its monthly_budget_usd in BATCHDROP_PREFIX_DEFAULTS)"


# -- counting: each request's tokens, as planning hands them on -----------------------------------------


class Tally:
    """Each planned request's tokens, in line order, in a local file (`plan_segment`'s `estimate` hook).

    `models`: "provider<TAB>model" of the indices earlier segments used (the job item keeps them)."""

    def __init__(self, models: Sequence[str] = (), tmpdir: str | None = None) -> None:
        self.models = list(models)
        self._index = {name: i for i, name in enumerate(self.models)}
        self._records = array(TYPECODE)
        # Removed when closed, or when the tally is dropped: a plan that fails leaves no file behind in
        # the container's /tmp, which the next invocations share.
        self._file = tempfile.NamedTemporaryFile(dir=tmpdir, suffix=".budget")  # noqa: SIM115
        self.path = self._file.name

    def _model(self, provider: str, model: str) -> int:
        name = f"{provider}\t{model}"
        index = self._index.get(name)
        if index is None:
            index = self._index[name] = len(self.models)
            self.models.append(name)
        return index

    def add_many(self, requests: Sequence[m.Request]) -> None:
        kinds = set(map(_PROVIDER_MODEL, requests))
        if len(kinds) == 1:  # a block of one model: the common case, no Python loop a request
            provider, model = kinds.pop()
            tokens_in, tokens_out = request_tokens(provider, requests)
            models: Iterable[int] = itertools.repeat(self._model(provider, model))
        else:
            groups: dict[tuple[str, str], list[int]] = {}
            for position, kind in enumerate(map(_PROVIDER_MODEL, requests)):
                groups.setdefault(kind, []).append(position)
            indices = [0] * len(requests)
            tokens_in = [0] * len(requests)
            tokens_out = [0] * len(requests)
            for (provider, model), positions in groups.items():
                index = self._model(provider, model)
                each_in, each_out = request_tokens(provider, [requests[p] for p in positions])
                for position, t_in, t_out in zip(positions, each_in, each_out, strict=True):
                    indices[position], tokens_in[position], tokens_out[position] = index, t_in, t_out
            models = indices
        lines = map(_LINE, requests)
        # Not strict: `models` may repeat one index for ever; the lines end it.
        self._records.extend(itertools.chain.from_iterable(zip(lines, models, tokens_in, tokens_out, strict=False)))
        if len(self._records) >= SPILL_EVERY * FIELDS:
            self._spill()

    def _spill(self) -> None:
        self._records.tofile(self._file)
        self._records = array(TYPECODE)

    def flush(self) -> str:
        """Everything counted so far, in the file at `path` (until `discard`)."""
        self._spill()
        self._file.flush()
        return self.path

    def discard(self) -> None:
        self._file.close()

    def save(self, deps: Deps, job_id: str, segment: int) -> dict[str, Any]:
        """Keep a segment's counts on S3 for the last segment; what the job item keeps of them."""
        try:
            deps.objects.upload_file(self.flush(), tally_key(job_id, segment), "application/octet-stream")
        finally:
            self.discard()
        return {"budget_models": self.models}


_PROVIDER_MODEL = operator.attrgetter("provider", "model")
_LINE = operator.attrgetter("line")


def tally_key(job_id: str, segment: int) -> str:
    return f"{work_prefix(job_id)}budget/s{segment:03d}.tally"


def tally_for(job: Mapping[str, Any], options: JobOptions, tmpdir: str | None) -> Tally | None:
    """The tally of a file with a budget or a monthly cap (None: nothing to check, nothing counted)."""
    if job.get("option_error") or not applies(options):
        return None
    return Tally(job.get("budget_models") or (), tmpdir)


def _local_tallies(deps: Deps, job_id: str, segment: int, tally: Tally) -> list[str]:
    """The earlier segments' tallies from S3, in line order (this one's is `tally.flush()`)."""
    paths = []
    for earlier in range(segment):
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(tally.path), suffix=".tally", delete=False) as spill:
            paths.append(spill.name)
        deps.objects.download(tally_key(job_id, earlier), spill.name)
    return paths


def _blocks(paths: Sequence[str]) -> Iterator[array[int]]:
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(SPILL_EVERY * FIELDS * 8):
                records = array(TYPECODE)
                records.frombytes(block)
                yield records


# -- the check: what fits, at which price ----------------------------------------------------------------


@dataclass
class Fit:
    """A pass over the records at the given lanes: what the requests up to `cutoff` cost."""

    estimate: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    requests: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # requests kept, by provider
    cutoff: int | None = None  # the last line kept; None: every request fits
    unknown: set[str] = field(default_factory=set)  # models without a price


def priced_lanes(settings: Settings, options: JobOptions, counts: Mapping[str, int], now: float) -> dict[str, str]:
    """The lane each provider's requests are priced in: the lane they will take, or the real-time lane
    wherever some of them might still go real-time (an upper bound): under `auto`, every request of a
    file with a deadline (escalation sends a late batch's rest real-time) and of a provider with a
    minimum batch size (a batch under it runs real-time)."""
    out = {}
    for provider, choice in choose_lanes(settings, options, counts, now).items():
        lane = choice.lane
        if options.lane == AUTO and (
            options.deadline is not None or settings.providers[provider].limits.min_requests > 1
        ):
            lane = m.LANE_REALTIME
        out[provider] = lane
    return out


def fit(
    blocks: Iterable[array[int]],
    models: Sequence[str],
    lanes: Mapping[str, str],
    prices: Mapping[str, Price | None],
    limit: float | None,
    skip: Container[int] = frozenset(),
) -> Fit:
    """Add the requests up in line order at their lanes' prices until the next would pass `limit`: it
    and every later request are cut (a prefix of the file, never a request picked further on)."""
    units: list[tuple[float, float] | None] = []
    for name in models:
        provider, _, model = name.partition("\t")
        price = prices.get(model)
        if price is None:
            units.append(None)
            continue
        # The upper bound takes no prompt-cache discount: every input token at the uncached rate.
        share = price.batch if lanes.get(provider, m.LANE_BATCH) == m.LANE_BATCH else 1.0
        units.append((price.input * share / 1e6, price.output * share / 1e6))
    out = Fit()
    counts = [0] * len(models)
    for records in blocks:
        for line, model, t_in, t_out in zip(*(records[i::FIELDS] for i in range(FIELDS)), strict=True):
            if line in skip:
                continue
            unit = units[model]
            if unit is None:
                out.unknown.add(models[model].partition("\t")[2])
                continue
            cost = t_in * unit[0] + t_out * unit[1]
            if limit is not None and out.estimate + cost > limit:
                out.cutoff = line - 1
                break
            out.estimate += cost
            out.tokens_in += t_in
            out.tokens_out += t_out
            out.requests += 1
            counts[model] += 1
        else:
            continue
        break
    for name, count in zip(models, counts, strict=True):
        provider = name.partition("\t")[0]
        if count:
            out.counts[provider] = out.counts.get(provider, 0) + count
    return out


# -- planning's end: refuse, cut, reserve ----------------------------------------------------------------


@dataclass
class Verdict:
    """What the budget made of a planned file: a reason to refuse it, or the requests cut."""

    refusal: str | None = None
    cut: int = 0  # lines reported over_budget
    cut_by_provider: dict[str, int] = field(default_factory=dict)
    too_small: int = 0  # lines the cut left in a batch under its provider's minimum (batch_too_small)
    kept: list[str] = field(default_factory=list)  # the batch keys still planned
    record: dict[str, Any] = field(default_factory=dict)  # the job's `budget`, for the summary


@dataclass
class Budget:
    """What planning's end needs of the submit function to cut requests out of stored batches."""

    batches: BatchFiles
    index: Callable[[dict[str, Any]], Iterable[tuple[str, int]]]  # (custom_id, line) of a stored batch
    store_batch: StoreBatch
    report: Report
    prefix: str
    tmpdir: str | None
    small_realtime: bool


def check(
    deps: Deps,
    job: Mapping[str, Any],
    options: JobOptions,
    tally: Tally,
    segment: int,
    stored: list[str],
    on: Budget,
) -> Verdict:
    """Check the planned file's estimate against its budget and monthly caps: refuse it, or cut the
    requests that do not fit (policy truncate), and reserve what is sent on each cap."""
    job_id = str(job["job_id"])
    records = on.batches.records()
    # Answered from the response cache: free, so neither estimated nor cut.
    cached = {
        line
        for record in records.values()
        if record.get("lane") == m.LANE_CACHE
        for _custom_id, line in on.index(record)
    }
    table = price_table()
    prices = {name.partition("\t")[2]: realtime_price(name.partition("\t")[2], table) for name in tally.models}

    paths = _local_tallies(deps, job_id, segment, tally)
    try:
        return _check(deps, job, options, tally, stored, on, records, cached, prices, [*paths, tally.flush()])
    finally:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _check(
    deps: Deps,
    job: Mapping[str, Any],
    options: JobOptions,
    tally: Tally,
    stored: list[str],
    on: Budget,
    records: dict[str, dict[str, Any]],
    cached: set[int],
    prices: Mapping[str, Price | None],
    paths: Sequence[str],
) -> Verdict:
    settings, now = deps.settings, deps.clock()
    job_id = str(job["job_id"])
    models = tally.models

    def blocks() -> Iterator[array[int]]:
        return _blocks(paths)

    counted = fit(blocks(), models, {}, prices, None, cached)  # every request (lanes come next)
    lanes = priced_lanes(settings, options, counted.counts, now)
    whole = fit(blocks(), models, lanes, prices, None, cached)
    budget = options.budget_usd
    record: dict[str, Any] = {
        "budget_usd": budget,
        "from": options.budget_from,
        "policy": options.budget_policy,
        "file_estimate_usd": float(usd(whole.estimate)),
        "lanes_priced": lanes,
    }
    verdict = Verdict(kept=list(stored), record=record)
    if whole.unknown:
        verdict.refusal = (
            f"the cost of {', '.join(sorted(whole.unknown))} is not known (no price for the model), so the file "
            f"cannot be checked against {_limits(options)}; nothing was sent. Give the model's price in "
            "BATCHDROP_PRICES, or send the file where no budget applies"
        )
        return _done(verdict, whole, None)
    marker = job.get("budget_reserved")
    if marker is not None:
        # A re-run after the reservation was made: the same cut, never a second reservation.
        cutoff = marker.get("cutoff")
        chosen = (
            whole
            if cutoff is None
            else _fit_at(blocks, models, prices, settings, options, now, None, cached, int(cutoff))
        )
        return _cut(deps, job_id, verdict, chosen, options, on, records, cached, marker.get("limit_from"))
    month = month_of(now)
    caps = [(prefix, usd(cap, up=False)) for prefix, cap in options.monthly_caps]
    truncate = options.budget_policy == BUDGET_TRUNCATE
    for _ in range(RESERVE_TRIES):
        state = [spend(deps.store, prefix, month) for prefix, _cap in caps]
        # A micro-dollar less than the room: the reservation rounds the estimate up to one.
        rooms = [float(cap - s["committed"] - MICRO) for (_prefix, cap), s in zip(caps, state, strict=True)]
        limit, limit_from = budget, "budget"
        if truncate:
            for (prefix, _cap), room in zip(caps, rooms, strict=True):
                if limit is None or room < limit:
                    limit, limit_from = max(room, 0.0), prefix
        if not truncate and budget is not None and usd(whole.estimate) > usd(budget, up=False):
            verdict.refusal = (
                f"the estimate of its cost, up to ${whole.estimate:.6f} ({_tokens(whole)}), is over its budget of "
                f"${budget:.6f} ({options.budget_from}); nothing was sent. Raise the budget (S3 metadata "
                "batchdrop-budget-usd), set batchdrop-budget-policy to truncate to send the first requests "
                "that fit, or split the file"
            )
            return _done(verdict, whole, None)
        chosen = whole
        if limit is not None and usd(whole.estimate) > usd(limit, up=False):
            chosen = _fit_at(blocks, models, prices, settings, options, now, limit, cached, None)
            if chosen.requests == 0:
                verdict.refusal = (
                    f"not even its first request fits: the estimate of the whole file is up to "
                    f"${whole.estimate:.6f} ({_tokens(whole)}), and {_limit_text(options, limit_from, limit, month)}; "
                    "nothing was sent. Raise the budget (S3 metadata batchdrop-budget-usd) or the cap, or wait "
                    "for the month's spend to settle"
                )
                return _done(verdict, whole, None)
        if not caps:
            return _cut(deps, job_id, verdict, chosen, options, on, records, cached, limit_from)
        amount = usd(chosen.estimate)
        over = next((i for i, (_p, cap) in enumerate(caps) if amount > cap), None)
        marker = {
            "month": month,
            "usd": amount,
            "caps": [[prefix, cap] for prefix, cap in caps],
            "cutoff": chosen.cutoff,
            "limit_from": limit_from if chosen.cutoff is not None else None,
        }
        try:
            if over is not None:
                raise OverCap(over)
            reserve_spend(deps.store, job_id, marker, month, caps, amount)
        except OverCap as exc:
            if exc.index is None:  # reserved by a run that died since: its cut stands
                fresh = deps.store.get_job(job_id) or {}
                if fresh.get("budget_reserved") is None:
                    raise Conflict(f"job {job_id} is no longer submitting: nothing reserved") from None
                return _check(deps, fresh, options, tally, stored, on, records, cached, prices, paths)
            if truncate and over is None:
                continue  # another job took the room meanwhile: what fits now
            prefix, cap = caps[exc.index]
            now_state = spend(deps.store, prefix, month)
            verdict.refusal = (
                f"the estimate of its cost, up to ${amount:.6f} ({_tokens(chosen)}), does not fit "
                f"{cap_name(prefix)} of ${cap:.6f} for {month}: ${now_state['spent']:.6f} spent and "
                f"${now_state['reserved']:.6f} reserved by jobs still running; nothing was sent. Wait for the "
                "month's running jobs to report what they spent, raise the cap, or send fewer requests"
            )
            verdict.record["monthly_caps"] = [
                {
                    "prefix": prefix,
                    "month": month,
                    "cap_usd": float(cap),
                    "spent_usd": float(now_state["spent"]),
                    "reserved_usd": float(now_state["reserved"]),
                    "job_reserved_usd": 0.0,
                    "job_spent_usd": 0.0,
                }
            ]
            return _done(verdict, whole, None)
        deps.checkpoint("after_budget_reserved")
        return _cut(deps, job_id, verdict, chosen, options, on, records, cached, marker["limit_from"])
    verdict.refusal = (
        f"other jobs kept taking the room of its monthly caps while it was being checked ({RESERVE_TRIES} tries); "
        "nothing was sent. Upload the file again"
    )
    return _done(verdict, whole, None)


def _fit_at(
    blocks: Callable[[], Iterator[array[int]]],
    models: Sequence[str],
    prices: Mapping[str, Price | None],
    settings: Settings,
    options: JobOptions,
    now: float,
    limit: float | None,
    cached: Container[int],
    cutoff: int | None,
) -> Fit:
    """What fits `limit` (or what is kept up to `cutoff`), priced at the lanes of what is kept: fewer
    requests may move a provider to the real-time lane (and never back), so this settles in a pass or
    two."""
    counted = fit(blocks(), models, {}, prices, None, cached)
    lanes = priced_lanes(settings, options, counted.counts, now)
    while True:
        if cutoff is not None:
            chosen = fit(blocks(), models, lanes, prices, None, _Skip(cached, cutoff))
            chosen.cutoff = cutoff
        else:
            chosen = fit(blocks(), models, lanes, prices, limit, cached)
        moved = priced_lanes(settings, options, chosen.counts, now)
        if all(lanes.get(p) == lane for p, lane in moved.items()):
            return chosen
        lanes.update(moved)


@dataclass(frozen=True)
class _Skip:
    """The lines not estimated: those answered from the cache, and those past the cut."""

    cached: Container[int]
    cutoff: int

    def __contains__(self, line: object) -> bool:
        return isinstance(line, int) and (line > self.cutoff or line in self.cached)


def _cut(
    deps: Deps,
    job_id: str,
    verdict: Verdict,
    chosen: Fit,
    options: JobOptions,
    on: Budget,
    records: dict[str, dict[str, Any]],
    cached: Container[int],
    limit_from: str | None,
) -> Verdict:
    """Take the lines past the cut out of the stored batches and report each `over_budget`."""
    _done(verdict, chosen, chosen.cutoff)
    if chosen.cutoff is None:
        return verdict
    cutoff = chosen.cutoff
    why = (
        f"the file's budget of ${options.budget_usd} ({options.budget_from})"
        if limit_from in (None, "budget")
        else cap_name(limit_from) + " (what was left of it this month)"
    )
    message = (
        f"not sent: the requests before it used {why}; the requests up to line {cutoff}, estimated up to "
        f"${chosen.estimate:.6f}, were sent (budget policy truncate)"
    )
    limits = {name: p.limits for name, p in deps.settings.providers.items()}
    kept: list[str] = []
    stored = set(verdict.kept)
    # Every batch the plan stored, not only those `stored` lists: a batch a fallback made is planned too.
    for key in dict.fromkeys([*verdict.kept, *sorted(records)]):
        record = records[key]
        if record.get("lane") == m.LANE_CACHE or int(record.get("attempt", 1)) != 1:
            if key in stored:
                kept.append(key)
            continue
        past = [(cid, line) for cid, line in on.index(record) if line > cutoff and line not in cached]
        if not past:
            if key in stored:
                kept.append(key)
            continue
        planned: PlannedBatch = on.batches.load(record, {line for _cid, line in past})
        for custom_id, line in past:
            on.report(m.Invalid(line, custom_id, m.OVER_BUDGET, message))
        verdict.cut += len(past)
        provider = str(record["provider"])
        verdict.cut_by_provider[provider] = verdict.cut_by_provider.get(provider, 0) + len(past)
        if planned.requests == 0:
            planned.discard()
            on.batches.delete(record)
        elif planned.requests < limits[planned.provider].min_requests:
            on.batches.delete(record)
            if on.small_realtime:
                planned.lane = m.LANE_REALTIME
                on.store_batch(planned)
                kept.append(planned.key)
            else:
                verdict.too_small += len(
                    too_small(planned, deps.settings, on.store_batch, on.report, on.prefix, on.tmpdir)
                )
        else:
            on.batches.save(record, planned)
            if key in stored:
                kept.append(key)
    verdict.kept = kept
    verdict.record["cut"] = verdict.cut
    logger.info("cut to the budget", extra={"cut": verdict.cut, "cutoff": cutoff, "job_id": job_id})
    return verdict


def _done(verdict: Verdict, chosen: Fit, cutoff: int | None) -> Verdict:
    verdict.record.update(
        {
            "estimate_usd": 0.0 if verdict.refusal else float(usd(chosen.estimate)),
            "input_tokens": chosen.tokens_in,
            "output_tokens": chosen.tokens_out,
            "cut": verdict.cut,
            "cut_after_line": cutoff,
        }
    )
    if verdict.refusal:
        verdict.record["refused"] = verdict.refusal
    return verdict


def _tokens(chosen: Fit) -> str:
    return (
        f"{chosen.requests:,} requests: input ≈ {chosen.tokens_in:,} tokens at {CHARS_PER_TOKEN} characters a token, "
        f"output ≤ {chosen.tokens_out:,} tokens at each request's own cap"
    )


def _limits(options: JobOptions) -> str:
    named = []
    if options.budget_usd is not None:
        named.append(f"its budget of ${options.budget_usd} ({options.budget_from})")
    named.extend(f"{cap_name(prefix)} of ${cap}" for prefix, cap in options.monthly_caps)
    return " and ".join(named)


def _limit_text(options: JobOptions, limit_from: str | None, limit: float | None, month: str) -> str:
    if limit_from in (None, "budget"):
        return f"its budget is ${options.budget_usd} ({options.budget_from})"
    return f"{cap_name(limit_from)} has ${limit:.6f} left for {month}"


# -- completion: what was spent ----------------------------------------------------------------------------


def settle(deps: Deps, job: Mapping[str, Any], total: float | None) -> dict[str, Any] | None:
    """Record what the job spent (`total`, the summary's cost_usd.total) on its monthly caps, once, and
    give the summary's `budget`: the file's budget, the estimate, what was cut, and each cap's month.
    None for a job with neither a budget nor a cap."""
    plan = job.get("budget")
    marker = job.get("budget_reserved")
    if plan is None and marker is None:
        return None
    out: dict[str, Any] = {
        key: (plan or {}).get(key)
        for key in ("budget_usd", "from", "policy", "estimate_usd", "file_estimate_usd", "cut", "cut_after_line")
    }
    # A job refused by a cap keeps that cap's state as it found it; nothing of its own was counted.
    out["monthly_caps"] = list((plan or {}).get("monthly_caps") or [])
    if marker is None:
        return out
    month = str(marker["month"])
    reserved = Decimal(str(marker["usd"]))
    # A cost that could not be priced counts as what was reserved for it: never less than the bound.
    spent = reserved if total is None else usd(total, up=False)
    if job.get("budget_spent") is None:
        deps.checkpoint("before_spend")
        record_spend(deps.store, str(job["job_id"]), month, [p for p, _c in marker["caps"]], reserved, spent)
        deps.checkpoint("after_spend")
    out["monthly_caps"] = []
    for prefix, cap in marker["caps"]:
        state = spend(deps.store, str(prefix), month)
        out["monthly_caps"].append(
            {
                "prefix": prefix,
                "month": month,
                "cap_usd": float(cap),
                "spent_usd": float(state["spent"]),
                "reserved_usd": float(state["reserved"]),
                "job_reserved_usd": float(reserved),
                "job_spent_usd": float(spent),
            }
        )
    return out
