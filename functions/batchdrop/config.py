"""Settings, read once at the handler boundary and passed down as a typed object.

Every environment variable batchdrop reads is named here and nowhere else. The CDK stack sets the
same names (infra/), and the embedded stack sets them for local runs (batchdrop.local.stack).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import orjson

from batchdrop.providers import SPECS, spec
from batchdrop.providers.spec import BatchLimits

MB = spec.MB

# The private prefix where batchdrop keeps what it needs between functions: the batch files it
# planned, their line indexes and the validation errors. Users read outputs/, never this.
WORK_PREFIX = "work/"
INPUT_PREFIX = "inputs/"
OUTPUT_PREFIX = "outputs/"
CANCEL_PREFIX = "cancel/"
# `retry/<job_id>` re-runs what the providers failed in an ended job (docs/contract.md, "Retries").
RETRY_PREFIX = "retry/"
# A table job's data and template objects (docs/contract.md, "Table jobs"): under prefixes of their own,
# so the functions that read them are granted those and not the whole bucket.
DATA_PREFIX = "data/"
TEMPLATES_PREFIX = "templates/"
# A table job's manifest (docs/contract.md, "Table jobs").
MANIFEST_SUFFIX = ".job.json"
# What batchdrop accepts in inputs/ (docs/contract.md, "Data flow"); the longer suffix first, as a key's
# name is what is left once its suffix is taken off.
INPUT_SUFFIXES = (".jsonl.gz", ".jsonl", MANIFEST_SUFFIX)

# The sparse index the poll function queries: only items that need a look carry these attributes.
DUE_INDEX = "due"
DUE_PK = "due_pk"
DUE_SK = "due_at"

ENV_BUCKET = "BATCHDROP_BUCKET"
ENV_TABLE = "BATCHDROP_TABLE"
ENV_TOPIC_ARN = "BATCHDROP_TOPIC_ARN"
ENV_COMPLETION_QUEUE_URL = "BATCHDROP_COMPLETION_QUEUE_URL"
# The queue that hands the next segment of a large file to a fresh submit invocation, and how many
# bytes of a plain file one invocation plans (gzip files are always read whole).
ENV_SUBMIT_QUEUE_URL = "BATCHDROP_SUBMIT_QUEUE_URL"
ENV_SEGMENT_BYTES = "BATCHDROP_SEGMENT_BYTES"
# Bounds on a gzip upload, which one invocation reads whole: the bytes it may inflate to, and its
# compression ratio (judged past its first 8 MB). Past either, the job is rejected as a compression
# bomb or as too large for one invocation, in seconds, instead of outlasting the function's timeout.
ENV_MAX_INFLATED_BYTES = "BATCHDROP_MAX_INFLATED_BYTES"
ENV_MAX_GZIP_RATIO = "BATCHDROP_MAX_GZIP_RATIO"
# 32 GiB: what one invocation can hope to plan and upload in its 15 minutes; whitespace is inflated
# and skipped at 4-5 s/GiB (2.5 min), but 1 MB chunks each mixing a line into blank runs cost up to
# 50 s/GiB, and tiny invalid lines about 1 hour/GiB (issue 13's report): this bound alone does not
# make every file end in time (the cap on invalid lines below stops the last). 500x: JSONL compresses
# 3-20x, and the most repetitive honest file we could build (a 20 KB prompt sent 20,000 times
# verbatim) 320x, and 311x on its first 8 MB (a file's ratio grows as its first lines are paid off);
# deflate's best is 1,032x, where a bomb of newlines or `{}` sits.
DEFAULT_MAX_INFLATED_BYTES = 32 * 1024 * MB
DEFAULT_MAX_GZIP_RATIO = 500
# Invalid lines one file may hold: past them the scan stops and the file is refused as a whole (a
# file of tiny invalid lines, plain or a gzip bomb, costs about 6.4 µs a line to check and report:
# without a cap, 2 GiB of `x\n` outlasts an invocation and writes a billion error lines). Counted over
# the whole file, across its segments. 1,000,000: far more than an honest file holds (a file with that
# many bad lines is in the wrong format, and its first error lines say why; a good file with 1% bad
# lines reaches it at 100 million lines), and few enough to check and report in
# about 7 s, into an error file of about 270 MB.
ENV_MAX_INVALID_LINES = "BATCHDROP_MAX_INVALID_LINES"
DEFAULT_MAX_INVALID_LINES = 1_000_000
# The secret holding the OpenAI webhook signing key ("whsec_..."), read by the webhook function.
ENV_OPENAI_WEBHOOK_SECRET_ARN = "BATCHDROP_OPENAI_WEBHOOK_SECRET_ARN"  # noqa: S105 — a variable's name
ENV_ON_INVALID = "BATCHDROP_ON_INVALID"
ENV_MAX_ATTEMPTS = "BATCHDROP_MAX_ATTEMPTS"
ENV_PROVIDERS = "BATCHDROP_PROVIDERS"
ENV_ROUTES = "BATCHDROP_ROUTES"
ENV_ANTHROPIC_DEFAULT_MAX_TOKENS = "BATCHDROP_ANTHROPIC_DEFAULT_MAX_TOKENS"
ENV_POLL_MIN_SECONDS = "BATCHDROP_POLL_MIN_SECONDS"
ENV_POLL_MAX_SECONDS = "BATCHDROP_POLL_MAX_SECONDS"
# How long an invocation owns a job (longer than the functions' 15-minute timeout), how long a job
# may sit in `completing` before the poll hands it over again, and how long one provider create may
# hold the create lock of a provider whose batches carry no metadata.
ENV_LEASE_SECONDS = "BATCHDROP_LEASE_SECONDS"
ENV_COMPLETION_GRACE_SECONDS = "BATCHDROP_COMPLETION_GRACE_SECONDS"
ENV_CREATE_LOCK_SECONDS = "BATCHDROP_CREATE_LOCK_SECONDS"
# How many times a batch's create may fail with an error worth another try before the batch ends as
# failed; and the watchdog: how many times a job may stall at the same step (a lease or a completion
# grace run out with no progress), and how long after submission a batch may still be running,
# past its provider's window, before the job is ended as failed (docs/guarantees.md, "Every job ends").
ENV_MAX_CREATE_ATTEMPTS = "BATCHDROP_MAX_CREATE_ATTEMPTS"
ENV_MAX_STALLS = "BATCHDROP_MAX_STALLS"
ENV_BATCH_TIMEOUT_SECONDS = "BATCHDROP_BATCH_TIMEOUT_SECONDS"
ENV_JOB_CHECK_SECONDS = "BATCHDROP_JOB_CHECK_SECONDS"
# The real-time lane (docs/realtime.md): the queue that hands chunks of a real-time batch to the
# `realtime` function, the stack-wide lane and deadline of a file without its own (S3 metadata
# batchdrop-lane, batchdrop-deadline), the defaults by key prefix (JSON: {"inputs/urgent/": {"lane":
# "realtime", "deadline": "2h"}}), the auto lane's rules (real-time under this many valid requests for a
# provider, or when the deadline is nearer than the minimum batch window), how many requests one
# message carries and one invocation runs at once per provider, how many invocations the queue's event
# source runs at most (the stack sets both from one value), and the margin an escalation keeps before
# the deadline.
ENV_REALTIME_QUEUE_URL = "BATCHDROP_REALTIME_QUEUE_URL"
ENV_LANE = "BATCHDROP_LANE"
ENV_DEADLINE = "BATCHDROP_DEADLINE"
ENV_PREFIX_DEFAULTS = "BATCHDROP_PREFIX_DEFAULTS"
ENV_REALTIME_BELOW = "BATCHDROP_REALTIME_BELOW"
ENV_MIN_BATCH_WINDOW = "BATCHDROP_MIN_BATCH_WINDOW"
ENV_REALTIME_CHUNK = "BATCHDROP_REALTIME_CHUNK"
ENV_REALTIME_CONCURRENCY = "BATCHDROP_REALTIME_CONCURRENCY"
ENV_REALTIME_INVOCATIONS = "BATCHDROP_REALTIME_INVOCATIONS"
ENV_ESCALATION_MARGIN = "BATCHDROP_ESCALATION_MARGIN"
LANES = ("auto", "batch", "realtime")
# The response cache (docs/cache.md): the table that holds it, the stack's mode for a file that sets
# none (S3 metadata batchdrop-cache, or its prefix's defaults), and how long an answer is kept.
ENV_CACHE_TABLE = "BATCHDROP_CACHE_TABLE"
ENV_CACHE = "BATCHDROP_CACHE"
ENV_CACHE_TTL = "BATCHDROP_CACHE_TTL"
CACHE_OFF, CACHE_READ, CACHE_READ_WRITE = "off", "read", "read-write"
# Where an answer too large for its table item is kept (batchdrop.adapters.cache), expired with its TTL.
CACHE_OBJECT_PREFIX = "cache/"
CACHE_MODES = (CACHE_OFF, CACHE_READ, CACHE_READ_WRITE)
DEFAULT_CACHE_TTL_SECONDS = 30 * 86400
# Budgets (docs/budgets.md): the most one file may cost (its upper-bound estimate), unless its metadata
# batchdrop-budget-usd or its prefix's defaults say otherwise; what happens to a file over it (refuse the
# job, or send the first requests that fit and report the rest `over_budget`); and a monthly cap on all
# jobs together (per prefix: prefix defaults' `monthly_budget_usd`).
ENV_BUDGET_USD = "BATCHDROP_BUDGET_USD"
ENV_BUDGET_POLICY = "BATCHDROP_BUDGET_POLICY"
ENV_MONTHLY_BUDGET_USD = "BATCHDROP_MONTHLY_BUDGET_USD"
BUDGET_REFUSE, BUDGET_TRUNCATE = "refuse", "truncate"
BUDGET_POLICIES = (BUDGET_REFUSE, BUDGET_TRUNCATE)
# What a prefix's defaults may set (BATCHDROP_PREFIX_DEFAULTS).
PREFIX_OPTIONS = ("lane", "deadline", "cache", "budget_usd", "budget_policy", "monthly_budget_usd")
# Where submit and complete spill batch, id and output files (the system's temp folder if unset).
ENV_TMPDIR = "BATCHDROP_TMPDIR"
# Per provider: BATCHDROP_<NAME>_SECRET_ARN, _BASE_URL, _MAX_REQUESTS, _MAX_BYTES, _MIN_RECORDS, and the
# options its spec names (Azure's _API_VERSION; Bedrock's _ROLE_ARN and _FALLBACK).
ENV_PROVIDER_TEMPLATE = spec.ENV_PROVIDER_TEMPLATE

# Metric names (namespace and service "batchdrop"), emitted by the handlers and graphed and
# alarmed on by infra/constructs/monitoring.py.
REQUESTS_SUBMITTED = "RequestsSubmitted"
LINES_INVALID = "LinesInvalid"
REQUESTS_SUCCEEDED = "RequestsSucceeded"
REQUESTS_FAILED = "RequestsFailed"
REQUESTS_EXPIRED = "RequestsExpired"
COST_SAVED_USD = "CostSavedUSD"
TIME_TO_COMPLETE = "TimeToCompleteSeconds"
BATCHES_CHECKED = "BatchesChecked"
BATCHES_ENDED = "BatchesEnded"
STUCK_BATCHES = "StuckBatches"
JOBS_ENDED = "JobsEnded"
# Jobs the watchdog ended as failed because they stopped making progress (alarmed on).
JOBS_TIMED_OUT = "JobsTimedOut"
# The real-time lane: requests answered, and 429s the providers answered (the lane slows down on them).
REALTIME_REQUESTS = "RealtimeRequests"
REALTIME_THROTTLED = "RealtimeThrottled"
JOBS_ESCALATED = "JobsEscalated"

ON_INVALID_CHOICES = ("skip", "reject")

# How a batch's input tokens are counted against a token quota (BATCHDROP_<NAME>_MAX_ENQUEUED): its
# bytes over 4. An upper bound in practice: JSON's keys, quotes and escapes count as text, and English
# runs about 4 characters a token.
BYTES_PER_TOKEN = 4

# Model-name prefixes → provider, from the specs. Users extend or override it with BATCHDROP_ROUTES
# ("prefix=provider,prefix=provider").
DEFAULT_ROUTES: tuple[tuple[str, str], ...] = tuple((prefix, s.name) for s in SPECS.values() for prefix in s.routes)

# The providers' documented maxima (docs/providers.md), and what a deployment uses unless it sets less.
PROVIDER_MAXIMA: dict[str, BatchLimits] = {s.name: s.maxima for s in SPECS.values()}
PROVIDER_DEFAULT_LIMITS: dict[str, BatchLimits] = {s.name: s.defaults for s in SPECS.values()}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and what it expects."""


@dataclass(frozen=True)
class ProviderSettings:
    name: str
    limits: BatchLimits
    secret_arn: str | None = None
    base_url: str | None = None
    # Azure OpenAI: the data-plane API version (the endpoint is `base_url`).
    api_version: str | None = None
    # Bedrock: the service role its jobs run as, and our bucket, where job input and output live.
    role_arn: str | None = None
    bucket: str | None = None
    # Bedrock: the provider that takes a batch under the minimum record count, if the user chose one.
    fallback: str | None = None
    # How long the provider lets a batch run (its spec's window, or BATCHDROP_<NAME>_WINDOW_HOURS; for
    # a provider whose batches run until cancelled, 24 h unless set).
    window_hours: float = 24
    # The most a deployment keeps enqueued at the provider, in the spec's quota unit: by model, and
    # under "" for every model without its own entry, together (BATCHDROP_<NAME>_MAX_ENQUEUED). Empty:
    # no cap of ours; the provider's own "not now" still holds a batch.
    max_enqueued: Mapping[str, int] = field(default_factory=dict)
    # The real-time requests per minute the account may make (BATCHDROP_<NAME>_RPM): the pace the
    # real-time lane starts at and never passes, and what an escalation counts on. None: unknown (the
    # lane learns it from the provider's answers, and escalation assumes DEFAULT_RPM).
    rpm: int | None = None

    @property
    def window_seconds(self) -> float:
        return self.window_hours * 3600

    def quota_pool(self, model: str) -> tuple[str, int] | None:
        """(pool, cap) that a batch for `model` counts against, or None when nothing caps it."""
        if model in self.max_enqueued:
            return model, self.max_enqueued[model]
        if "" in self.max_enqueued:
            return "", self.max_enqueued[""]
        return None


@dataclass(frozen=True)
class Settings:
    bucket: str
    table: str
    topic_arn: str
    completion_queue_url: str
    on_invalid: str = "skip"
    max_attempts: int = 2
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    routes: tuple[tuple[str, str], ...] = DEFAULT_ROUTES
    anthropic_default_max_tokens: int = 1024
    poll_min_seconds: int = 30
    poll_max_seconds: int = 1800
    lease_seconds: int = 16 * 60
    completion_grace_seconds: int = 20 * 60
    create_lock_seconds: int = 5 * 60
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES
    max_gzip_ratio: int = DEFAULT_MAX_GZIP_RATIO
    max_invalid_lines: int = DEFAULT_MAX_INVALID_LINES
    submit_queue_url: str | None = None
    segment_bytes: int = 2 * 1024 * MB
    max_create_attempts: int = 5
    # Above max_create_attempts: each failed create is one attempt at the submit step.
    max_stalls: int = 8
    # How long past its provider's window (ProviderSettings.window_hours) a batch may still be unended
    # before the watchdog ends its job: a day (batchdrop cancels it an hour past the window; the
    # provider normally expires it first).
    batch_timeout_seconds: int = 24 * 3600
    # How often a submitted job is looked at as a whole, whatever its batches say (hand-over missed, a
    # batch lost): the bound on how long a job can sit with nothing left to do.
    job_check_seconds: int = 3600
    realtime_queue_url: str | None = None
    lane: str = "auto"
    # A duration ("8h"), counted from each upload; None: no deadline unless the file or its prefix sets one.
    deadline: str | None = None
    prefix_defaults: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    realtime_below: int = 100
    min_batch_window_seconds: float = 3600.0
    realtime_chunk: int = 20
    realtime_concurrency: int = 16
    realtime_invocations: int = 10
    escalation_margin_seconds: float = 900.0
    cache_table: str | None = None
    cache: str = CACHE_OFF
    cache_ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS
    budget_usd: float | None = None
    budget_policy: str = BUDGET_REFUSE
    monthly_budget_usd: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def need(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name} is not set: the deployment (CDK stack or local stack) sets it")
            return value

        def integer(name: str, default: int, minimum: int = 1) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a whole number") from None
            if value < minimum:
                raise ConfigError(f"{name}={value} must be at least {minimum}")
            return value

        on_invalid = env.get(ENV_ON_INVALID, "skip").strip() or "skip"
        if on_invalid not in ON_INVALID_CHOICES:
            raise ConfigError(f"{ENV_ON_INVALID}={on_invalid!r}: expected one of {', '.join(ON_INVALID_CHOICES)}")

        enabled = [p.strip() for p in env.get(ENV_PROVIDERS, "openai,anthropic").split(",") if p.strip()]
        providers: dict[str, ProviderSettings] = {}
        for name in enabled:
            if name not in PROVIDER_MAXIMA:
                known = ", ".join(sorted(PROVIDER_MAXIMA))
                raise ConfigError(f"{ENV_PROVIDERS} names {name!r}: known providers are {known}")

            def var(what: str, name: str = name) -> str:
                return spec.env_var(name, what)

            maxima, defaults = PROVIDER_MAXIMA[name], PROVIDER_DEFAULT_LIMITS[name]
            max_enqueued = parse_enqueued(var("MAX_ENQUEUED"), env.get(var("MAX_ENQUEUED"), ""))
            limits = BatchLimits(
                max_requests=integer(var("MAX_REQUESTS"), defaults.max_requests),
                max_bytes=integer(var("MAX_BYTES"), defaults.max_bytes, minimum=1024),
                min_requests=integer(var("MIN_RECORDS"), defaults.min_requests),
                max_inputs=defaults.max_inputs,
            )
            limits = _within_quota(limits, SPECS[name].quota_unit, max_enqueued)
            if limits.min_requests > limits.max_requests:
                raise ConfigError(
                    f"{var('MIN_RECORDS')}={limits.min_requests} is more than {var('MAX_REQUESTS')}="
                    f"{limits.max_requests}: no batch could be sent"
                )
            if limits.max_requests > maxima.max_requests or limits.max_bytes > maxima.max_bytes:
                raise ConfigError(
                    f"{var('MAX_REQUESTS')}/{var('MAX_BYTES')} exceed {name}'s limits "
                    f"({maxima.max_requests} requests, {maxima.max_bytes} bytes): set them lower"
                )
            providers[name] = ProviderSettings(
                name=name,
                limits=limits,
                secret_arn=env.get(var("SECRET_ARN")) or None,
                base_url=env.get(var("BASE_URL")) or None,
                api_version=env.get(var("API_VERSION")) or None,
                role_arn=env.get(var("ROLE_ARN")) or None,
                bucket=env.get(ENV_BUCKET) or None,
                fallback=env.get(var("FALLBACK")) or None,
                window_hours=parse_hours(var("WINDOW_HOURS"), env.get(var("WINDOW_HOURS"), ""))
                or SPECS[name].window_hours
                or 24,
                max_enqueued=max_enqueued,
                rpm=integer(var("RPM"), 0, minimum=0) or None,
            )
            for option in SPECS[name].options:
                if option.required and not env.get(var(option.what)):
                    raise ConfigError(f"{var(option.what)} is not set: {option.required}")
            fallbacks = SPECS[name].fallbacks
            fallback = providers[name].fallback
            if fallbacks and fallback is not None and (fallback not in fallbacks or fallback not in enabled):
                none_enabled = f"({', '.join(fallbacks)}, not enabled)"
                raise ConfigError(
                    f"{var('FALLBACK')}={fallback!r}: expected one of the enabled providers "
                    f"{', '.join(p for p in fallbacks if p in enabled) or none_enabled}"
                )

        return cls(
            bucket=need(ENV_BUCKET),
            table=need(ENV_TABLE),
            topic_arn=need(ENV_TOPIC_ARN),
            completion_queue_url=need(ENV_COMPLETION_QUEUE_URL),
            on_invalid=on_invalid,
            max_attempts=integer(ENV_MAX_ATTEMPTS, 2),
            providers=providers,
            routes=parse_routes(env.get(ENV_ROUTES, "")),
            anthropic_default_max_tokens=integer(ENV_ANTHROPIC_DEFAULT_MAX_TOKENS, 1024),
            poll_min_seconds=integer(ENV_POLL_MIN_SECONDS, 30, minimum=0),
            poll_max_seconds=integer(ENV_POLL_MAX_SECONDS, 1800, minimum=0),
            lease_seconds=integer(ENV_LEASE_SECONDS, 16 * 60),
            completion_grace_seconds=integer(ENV_COMPLETION_GRACE_SECONDS, 20 * 60),
            create_lock_seconds=integer(ENV_CREATE_LOCK_SECONDS, 5 * 60),
            max_inflated_bytes=integer(ENV_MAX_INFLATED_BYTES, DEFAULT_MAX_INFLATED_BYTES),
            max_gzip_ratio=integer(ENV_MAX_GZIP_RATIO, DEFAULT_MAX_GZIP_RATIO),
            max_invalid_lines=integer(ENV_MAX_INVALID_LINES, DEFAULT_MAX_INVALID_LINES),
            submit_queue_url=env.get(ENV_SUBMIT_QUEUE_URL) or None,
            segment_bytes=integer(ENV_SEGMENT_BYTES, 2 * 1024 * MB, minimum=1024),
            max_create_attempts=integer(ENV_MAX_CREATE_ATTEMPTS, 5),
            max_stalls=integer(ENV_MAX_STALLS, 8),
            batch_timeout_seconds=integer(ENV_BATCH_TIMEOUT_SECONDS, 24 * 3600, minimum=60),
            job_check_seconds=integer(ENV_JOB_CHECK_SECONDS, 3600, minimum=1),
            realtime_queue_url=env.get(ENV_REALTIME_QUEUE_URL) or None,
            lane=_lane(ENV_LANE, env.get(ENV_LANE, "")),
            deadline=_default_deadline(ENV_DEADLINE, env.get(ENV_DEADLINE, "")),
            prefix_defaults=parse_prefix_defaults(env.get(ENV_PREFIX_DEFAULTS, "")),
            realtime_below=integer(ENV_REALTIME_BELOW, 100, minimum=0),
            min_batch_window_seconds=_duration_setting(ENV_MIN_BATCH_WINDOW, env.get(ENV_MIN_BATCH_WINDOW, ""), 3600.0),
            realtime_chunk=integer(ENV_REALTIME_CHUNK, 20),
            realtime_concurrency=integer(ENV_REALTIME_CONCURRENCY, 16),
            realtime_invocations=integer(ENV_REALTIME_INVOCATIONS, 10),
            escalation_margin_seconds=_duration_setting(
                ENV_ESCALATION_MARGIN, env.get(ENV_ESCALATION_MARGIN, ""), 900.0
            ),
            cache_table=env.get(ENV_CACHE_TABLE) or None,
            cache=choice(ENV_CACHE, env.get(ENV_CACHE, ""), CACHE_MODES) or CACHE_OFF,
            cache_ttl_seconds=cache_ttl(env.get(ENV_CACHE_TTL, "")),
            budget_usd=usd(ENV_BUDGET_USD, env.get(ENV_BUDGET_USD, "")),
            budget_policy=choice(ENV_BUDGET_POLICY, env.get(ENV_BUDGET_POLICY, ""), BUDGET_POLICIES) or BUDGET_REFUSE,
            monthly_budget_usd=usd(ENV_MONTHLY_BUDGET_USD, env.get(ENV_MONTHLY_BUDGET_USD, "")),
        )


def parse_routes(raw: str) -> tuple[tuple[str, str], ...]:
    """User routes ("prefix=provider,...") take precedence over the defaults."""
    extra: list[tuple[str, str]] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        prefix, sep, provider = part.partition("=")
        if not sep or not prefix.strip() or not provider.strip():
            raise ConfigError(f"{ENV_ROUTES}: {part!r} is not of the form model-prefix=provider")
        extra.append((prefix.strip(), provider.strip()))
    return (*extra, *DEFAULT_ROUTES)


def parse_enqueued(name: str, raw: str) -> dict[str, int]:
    """BATCHDROP_<NAME>_MAX_ENQUEUED: "N" (every model together), "model=N" (one model on its own), or
    several, comma-separated: "gpt-4o=90000,2000000"."""
    caps: dict[str, int] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        model, sep, number = part.rpartition("=")
        model = model.strip()
        if sep and not model:
            raise ConfigError(f"{name}: {part!r} names no model (expected model=N, or N for every model)")
        try:
            value = int(number.strip())
        except ValueError:
            raise ConfigError(f"{name}: {part!r} is not of the form model=N or N (a whole number)") from None
        if value < 1:
            raise ConfigError(f"{name}: {part!r} must be at least 1")
        caps[model] = value
    return caps


def _within_quota(limits: BatchLimits, unit: str, caps: Mapping[str, int]) -> BatchLimits:
    """Limits under which two batches fit the smallest pool of the provider's quota at once: a batch
    larger than the quota would be refused "for now" every time, and so never run; and one as large as
    the quota would wait for the pool to be empty, which the small batches of other jobs can keep it
    from ever being."""
    if not caps:
        return limits
    smallest = max(1, min(caps.values()) // 2)
    if unit == "tokens":
        return replace(limits, max_bytes=max(1024, min(limits.max_bytes, smallest * BYTES_PER_TOKEN)))
    if unit == "requests":
        return replace(limits, max_requests=max(limits.min_requests, min(limits.max_requests, smallest)))
    return limits


def parse_hours(name: str, raw: str) -> float | None:
    """BATCHDROP_<NAME>_WINDOW_HOURS: hours, more than 0 and at most 30 days; None when unset."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of hours") from None
    if not 0 < value <= 24 * 30:
        raise ConfigError(f"{name}={raw!r}: expected more than 0 and at most 720 hours")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str) -> float | None:
    """ "90s", "30m", "6h", "1.5h", "2d", or a number of seconds; None when it is none of these."""
    raw = raw.strip().lower()
    unit = _UNITS.get(raw[-1:]) if raw else None
    number = raw[:-1] if unit else raw
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _duration_setting(name: str, raw: str, default: float) -> float:
    if not raw.strip():
        return default
    value = parse_duration(raw)
    if value is None or value < 0:
        raise ConfigError(f"{name}={raw!r}: expected a duration such as 90s, 30m, 6h or 2d")
    return value


def choice(name: str, raw: str, choices: tuple[str, ...]) -> str | None:
    """One of `choices` (case and spaces aside), or None when unset."""
    value = raw.strip().lower()
    if not value:
        return None
    if value not in choices:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return value


def usd(name: str, raw: str) -> float | None:
    """An amount of US dollars ("25", "12.50", "$12.50"), at least 0; None when unset."""
    text = raw.strip().removeprefix("$").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an amount of US dollars such as 25 or 12.50") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r}: expected an amount of US dollars of 0 or more")
    return value


def cache_ttl(raw: str) -> float:
    value = _duration_setting(ENV_CACHE_TTL, raw, DEFAULT_CACHE_TTL_SECONDS)
    if value < 60:
        raise ConfigError(f"{ENV_CACHE_TTL}={raw!r}: keep answers at least a minute (e.g. 30d)")
    return value


def _lane(name: str, raw: str) -> str:
    lane = raw.strip() or "auto"
    if lane not in LANES:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(LANES)}")
    return lane


def _default_deadline(name: str, raw: str) -> str | None:
    """A stack-wide (or prefix) deadline is a duration from each upload: a fixed time would pass once."""
    if not raw.strip():
        return None
    value = parse_duration(raw)
    if value is None or value <= 0:
        raise ConfigError(f"{name}={raw!r}: expected a duration from the upload, such as 8h or 2d")
    return raw.strip()


def parse_prefix_defaults(raw: str) -> dict[str, dict[str, str]]:
    """BATCHDROP_PREFIX_DEFAULTS: {"inputs/urgent/": {"lane": "realtime", "deadline": "2h"}, ...}; the
    longest prefix of a key that is named gives the defaults of a file without its own metadata (and
    every prefix of a key with a `monthly_budget_usd` caps it)."""
    if not raw.strip():
        return {}
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{ENV_PREFIX_DEFAULTS} is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{ENV_PREFIX_DEFAULTS}: expected an object of prefix → options")
    out: dict[str, dict[str, str]] = {}
    for prefix, options in parsed.items():
        where = f"{ENV_PREFIX_DEFAULTS}[{prefix!r}]"
        if not isinstance(options, dict) or not options or not set(options) <= set(PREFIX_OPTIONS):
            raise ConfigError(f"{where}: expected an object with any of {', '.join(PREFIX_OPTIONS)}")
        if "lane" in options:
            _lane(f"{where}.lane", str(options["lane"]))
        if "deadline" in options:
            _default_deadline(f"{where}.deadline", str(options["deadline"]))
        if "cache" in options:
            choice(f"{where}.cache", str(options["cache"]), CACHE_MODES)
        if "budget_policy" in options:
            choice(f"{where}.budget_policy", str(options["budget_policy"]), BUDGET_POLICIES)
        for amount in ("budget_usd", "monthly_budget_usd"):
            if amount in options:
                usd(f"{where}.{amount}", str(options[amount]))
        out[str(prefix)] = {k: str(v) for k, v in options.items()}
    return out


def tmpdir() -> str | None:
    """The folder for spill files: BATCHDROP_TMPDIR, or None for the system's temp folder."""
    return os.environ.get(ENV_TMPDIR) or None
