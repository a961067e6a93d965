"""A file's options, in the S3 way: the uploaded object's user metadata, else its prefix's defaults, else
the stack's (docs/contract.md "Lanes and deadlines").

    aws s3 cp run.jsonl s3://BUCKET/inputs/run.jsonl --metadata batchdrop-deadline=8h,batchdrop-lane=auto

and which lane each provider's requests take: the decision `lanes` makes once a file is planned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from batchdrop import models as m
from batchdrop.config import (
    BUDGET_POLICIES,
    BUDGET_REFUSE,
    CACHE_MODES,
    CACHE_OFF,
    LANES,
    ConfigError,
    Settings,
    choice,
    parse_duration,
    usd,
)

# S3 user metadata: `x-amz-meta-batchdrop-deadline` on the wire, this name in HeadObject's Metadata.
META_DEADLINE = "batchdrop-deadline"
META_LANE = "batchdrop-lane"
META_CACHE = "batchdrop-cache"
META_BUDGET = "batchdrop-budget-usd"
META_BUDGET_POLICY = "batchdrop-budget-policy"
AUTO = "auto"


class OptionError(ValueError):
    """A file's option is malformed: the message says which, what was given and what is expected."""


@dataclass(frozen=True)
class JobOptions:
    lane: str = AUTO  # auto, batch or realtime
    deadline: float | None = None  # epoch seconds
    # Where each came from ("metadata", "prefix inputs/urgent/", "stack"), for the summary and the logs.
    lane_from: str = "default"
    deadline_from: str | None = None
    # The response cache: off, read or read-write (docs/cache.md).
    cache: str = CACHE_OFF
    cache_from: str = "default"
    # The most the file may cost, in USD (its upper-bound estimate), and what happens over it
    # (docs/budgets.md); None: no budget of its own.
    budget_usd: float | None = None
    budget_from: str | None = None
    budget_policy: str = BUDGET_REFUSE
    # The monthly caps the file counts against: (prefix, USD) for each prefix of its key that has one
    # ("" for the stack's cap on every file).
    monthly_caps: tuple[tuple[str, float], ...] = ()


def job_options(settings: Settings, key: str, metadata: Mapping[str, str], uploaded_at: float) -> JobOptions:
    """The options of the file at `key` uploaded at `uploaded_at`; OptionError for a value that cannot be
    used (nothing is sent for such a file: its job is rejected with the message)."""
    prefix = max((p for p in settings.prefix_defaults if key.startswith(p)), key=len, default=None)
    defaults = settings.prefix_defaults.get(prefix, {}) if prefix is not None else {}

    def pick(meta: str, name: str, stack: str | None) -> tuple[str | None, str]:
        if metadata.get(meta, "").strip():
            return metadata[meta].strip(), f"the object's metadata {meta}"
        if name in defaults:
            return defaults[name], f"the defaults of prefix {prefix}"
        return stack, "the stack's setting"

    lane, lane_from = pick(META_LANE, "lane", settings.lane)
    lane = (lane or AUTO).lower()
    if lane not in LANES:
        raise OptionError(f"{lane_from} says lane {lane!r}: expected one of {', '.join(LANES)}")
    raw, deadline_from = pick(META_DEADLINE, "deadline", settings.deadline)
    deadline = None if raw is None else parse_deadline(raw, uploaded_at, deadline_from)
    cache, cache_from = pick(META_CACHE, "cache", settings.cache)
    budget, budget_from = pick(
        META_BUDGET, "budget_usd", None if settings.budget_usd is None else str(settings.budget_usd)
    )
    policy, policy_from = pick(META_BUDGET_POLICY, "budget_policy", settings.budget_policy)
    try:
        cache = choice("cache", cache or CACHE_OFF, CACHE_MODES) or CACHE_OFF
        budget_usd = usd("budget", budget or "")
        policy = choice("budget policy", policy or BUDGET_REFUSE, BUDGET_POLICIES) or BUDGET_REFUSE
    except ConfigError as exc:
        where = {"cache": cache_from, "budget": budget_from}.get(str(exc).partition("=")[0], policy_from)
        raise OptionError(f"{where} says {exc}") from None
    caps = tuple(
        (prefix, float(defaults_["monthly_budget_usd"]))
        for prefix, defaults_ in sorted(settings.prefix_defaults.items())
        if key.startswith(prefix) and "monthly_budget_usd" in defaults_
    )
    if settings.monthly_budget_usd is not None:
        caps = (("", settings.monthly_budget_usd), *caps)
    return JobOptions(
        lane,
        deadline,
        lane_from,
        deadline_from if raw is not None else None,
        cache=cache,
        cache_from=cache_from,
        budget_usd=budget_usd,
        budget_from=budget_from if budget is not None else None,
        budget_policy=policy,
        monthly_caps=caps,
    )


def parse_deadline(raw: str, uploaded_at: float, where: str = "the deadline") -> float:
    """An ISO 8601 time ("2026-12-02T08:00:00Z"; one without a zone is UTC), or a duration counted from
    the upload ("90s", "30m", "8h", "2d"). A deadline at or before the upload is an error: it cannot
    be met, and sending would spend money on answers nobody is waiting for."""
    text = raw.strip()
    seconds = parse_duration(text)
    if seconds is not None:
        if seconds <= 0:
            raise OptionError(f"{where} says deadline {raw!r}: a duration must be more than 0 (e.g. 8h)")
        return uploaded_at + seconds
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise OptionError(
            f"{where} says deadline {raw!r}: expected an ISO 8601 time such as 2026-12-02T08:00:00Z, or a "
            "duration from the upload such as 90s, 30m, 8h or 2d"
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    deadline = at.timestamp()
    if deadline <= uploaded_at:
        upload = datetime.fromtimestamp(uploaded_at, UTC).isoformat(timespec="seconds")
        raise OptionError(f"{where} says deadline {raw!r}, which is not after the upload ({upload})")
    return deadline


@dataclass(frozen=True)
class LaneChoice:
    lane: str
    why: str


def choose_lanes(
    settings: Settings, options: JobOptions, requests: Mapping[str, int], now: float
) -> dict[str, LaneChoice]:
    """Each provider's lane for a file whose valid requests per provider are `requests`: the file's lane
    when it names one; else (auto) real-time for a provider with fewer than BATCHDROP_REALTIME_BELOW
    requests (batching a handful saves cents and costs hours) or for all when the deadline is nearer
    than BATCHDROP_MIN_BATCH_WINDOW; else batch."""
    chosen: dict[str, LaneChoice] = {}
    left = None if options.deadline is None else options.deadline - now
    for provider, count in requests.items():
        if options.lane != AUTO:
            chosen[provider] = LaneChoice(options.lane, f"the file's lane is {options.lane} ({options.lane_from})")
        elif left is not None and left < settings.min_batch_window_seconds:
            chosen[provider] = LaneChoice(
                m.LANE_REALTIME,
                f"the deadline is {left / 60:.0f} min away, nearer than the minimum batch window "
                f"({settings.min_batch_window_seconds / 60:.0f} min)",
            )
        elif count < settings.realtime_below:
            chosen[provider] = LaneChoice(
                m.LANE_REALTIME, f"{count} requests, fewer than {settings.realtime_below}: batching saves too little"
            )
        else:
            chosen[provider] = LaneChoice(m.LANE_BATCH, f"{count} requests: batch at half price")
    return chosen


def may_go_realtime(options: JobOptions) -> bool:
    """Whether any of the file's requests may run real-time (its lane is not `batch`): a batch under its
    provider's minimum, or one late for the deadline, then goes real-time instead."""
    return options.lane != m.LANE_BATCH
