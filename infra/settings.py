"""The deployment's settings: CDK context values, read and checked once, then passed to the constructs.

Defaults live in cdk.json (the user-facing list); the defaults below are the same values, for apps
built without cdk.json (tests/infra checks that the two agree). The real-time lane's defaults below
are batchdrop.config.Settings' own, so cdk.json is checked against the functions' defaults. Values
given on the command line (`cdk deploy -c poll_rate_minutes=10`) arrive as strings, values from
cdk.json as JSON; both are accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from batchdrop import config
from batchdrop.blueprint import DEFAULT_STACK_NAME
from batchdrop.config import ON_INVALID_CHOICES, PROVIDER_MAXIMA, ConfigError, parse_enqueued, parse_hours
from batchdrop.providers import SPECS
from batchdrop.providers.spec import env_var

# The real-time lane's defaults are the functions' own (batchdrop.config.Settings): one source. The
# stack sets each of them in the environment (a deadline and prefix defaults only when given), so what
# a deployment runs is in its template.
_RUNTIME = config.Settings(bucket="", table="", topic_arn="", completion_queue_url="")

# What AWS accepts as an SQS event source's maximum concurrency (ScalingConfig.MaximumConcurrency):
# the real-time lane's bound on parallel invocations.
REALTIME_INVOCATIONS_RANGE = (2, 1000)

# A Bedrock model id ("amazon.nova-lite-v1:0"), or a cross-region inference profile's: the model id
# after a geography ("us.anthropic.claude-3-5-haiku-20241022-v1:0", "global.anthropic..."). The shape
# of botocore's ModelId without the ARN forms (the stack builds the ARNs).
BEDROCK_MODEL_ID = re.compile(
    r"(?:(?P<geography>[a-z0-9-]{1,63})\.)?(?P<model>[a-z0-9-]{1,63}\.[a-z0-9-]{1,63}(?::[a-z0-9-]{1,63}){0,2})"
)

# The retention periods CloudWatch Logs accepts (RetentionInDays).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
)  # fmt: skip

# The context keys a user sets; everything else in the context is CDK's own (feature flags). Per
# provider (from its spec): <name>_max_requests and <name>_max_bytes, and its options' keys.
_GENERAL_KEYS = (
    "stack_name",
    "poll_rate_minutes",
    "providers",
    "on_invalid",
    "max_attempts",
    "output_retention_days",
    "alarm_email",
    "log_retention_days",
    "deep_tracing",
)
# The real-time lane (docs/configuration.md): what chooses a file's lane, and how the lane runs.
_REALTIME_KEYS = (
    "lane",
    "deadline",
    "prefix_defaults",
    "realtime_below",
    "min_batch_window",
    "realtime_chunk",
    "realtime_concurrency",
    "realtime_invocations",
    "escalation_margin",
    # The models the realtime function may invoke on Bedrock (its IAM grant; the stack knows no other list).
    "bedrock_models",
)
# The response cache and budgets (docs/cache.md, docs/budgets.md): stack-wide defaults a file's metadata
# and prefix_defaults override.
_SPENDING_KEYS = ("cache", "cache_ttl", "budget_usd", "budget_policy", "monthly_budget_usd")
CONTEXT_KEYS = (
    *_GENERAL_KEYS,
    *_REALTIME_KEYS,
    *_SPENDING_KEYS,
    *(
        key
        for spec in SPECS.values()
        for key in (
            *(o.context for o in spec.options if o.context),
            f"{spec.name}_max_requests",
            f"{spec.name}_max_bytes",
            f"{spec.name}_max_enqueued",
            f"{spec.name}_window_hours",
            f"{spec.name}_rpm",
        )
    ),
)


class SettingsError(ValueError):
    """A context value is malformed; the message names the key and what it expects."""


@dataclass(frozen=True)
class LimitOverride:
    """Batch limits a deployment sets below the provider's defaults; None keeps the default."""

    max_requests: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class DeploySettings:
    stack_name: str = DEFAULT_STACK_NAME
    poll_rate_minutes: int = 5
    providers: tuple[str, ...] = ("openai", "anthropic")
    on_invalid: str = "skip"
    max_attempts: int = 2
    limits: Mapping[str, LimitOverride] = field(default_factory=dict)
    # None keeps outputs/ forever; work/ and noncurrent versions always expire (see storage.py).
    output_retention_days: int | None = None
    alarm_email: str | None = None
    log_retention_days: int = 30
    # Powertools' Tracer (boto3 and provider calls as X-Ray subsegments) costs ~100 ms of every cold
    # start; Lambda's active tracing records each invocation without it.
    deep_tracing: bool = False
    # Provider options set by context (each spec's `options`): provider → {WHAT: value}, for
    # BATCHDROP_<NAME>_<WHAT> (Azure's endpoint and API version, Bedrock's minimum and fallback, and
    # each provider's MAX_ENQUEUED, WINDOW_HOURS and RPM).
    options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # The real-time lane, as batchdrop.config.Settings reads it (durations in seconds).
    lane: str = _RUNTIME.lane
    deadline: str | None = _RUNTIME.deadline
    prefix_defaults: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    realtime_below: int = _RUNTIME.realtime_below
    min_batch_window_seconds: float = _RUNTIME.min_batch_window_seconds
    realtime_chunk: int = _RUNTIME.realtime_chunk
    realtime_concurrency: int = _RUNTIME.realtime_concurrency
    # Also the realtime queue's event source's maximum concurrency.
    realtime_invocations: int = _RUNTIME.realtime_invocations
    escalation_margin_seconds: float = _RUNTIME.escalation_margin_seconds
    # Bedrock model ids the realtime function may invoke (empty: none).
    bedrock_models: tuple[str, ...] = ()
    cache: str = _RUNTIME.cache
    cache_ttl_seconds: float = _RUNTIME.cache_ttl_seconds
    budget_usd: float | None = None
    budget_policy: str = _RUNTIME.budget_policy
    monthly_budget_usd: float | None = None

    @classmethod
    def from_context(cls, get: Callable[[str], Any]) -> DeploySettings:
        """Read the settings through `get` (a construct's `node.try_get_context`)."""

        def text(key: str) -> str | None:
            value = get(key)
            if value is None:
                return None
            value = str(value).strip()
            return value or None

        def whole(key: str, minimum: int, maximum: int | None = None, why: str = "") -> int | None:
            raw = text(key)
            if raw is None:
                return None
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"context {key}={raw!r} is not a whole number") from None
            if value < minimum or (maximum is not None and value > maximum):
                upper = f" and at most {maximum}" if maximum is not None else ""
                raise SettingsError(f"context {key}={value} must be at least {minimum}{upper}{why}")
            return value

        def seconds(
            key: str, *, positive: bool = False, expected: str = "a duration such as 90s, 30m, 6h or 2d"
        ) -> float | None:
            """A duration as the functions read it (batchdrop.config.parse_duration): "90s", "30m", "6h", "2d"."""
            raw = text(key)
            if raw is None:
                return None
            value = config.parse_duration(raw)
            if value is None or value < 0 or (positive and value == 0):
                raise SettingsError(f"context {key}={raw!r}: expected {expected}")
            return value

        defaults = cls()
        raw_providers = get("providers")
        if raw_providers is None:
            providers = defaults.providers
        else:
            parts = raw_providers if isinstance(raw_providers, list) else str(raw_providers).split(",")
            providers = tuple(dict.fromkeys(str(p).strip() for p in parts if str(p).strip()))
        known = ", ".join(sorted(PROVIDER_MAXIMA))
        if not providers:
            raise SettingsError(f"context providers is empty: enable at least one of {known}")
        for name in providers:
            if name not in PROVIDER_MAXIMA:
                raise SettingsError(f"context providers names {name!r}: known providers are {known}")

        limits: dict[str, LimitOverride] = {}
        for name in providers:
            maxima = PROVIDER_MAXIMA[name]
            override = LimitOverride(
                max_requests=whole(f"{name}_max_requests", 1, maxima.max_requests),
                max_bytes=whole(f"{name}_max_bytes", 1024, maxima.max_bytes),
            )
            if override != LimitOverride():
                limits[name] = override

        on_invalid = text("on_invalid") or defaults.on_invalid
        if on_invalid not in ON_INVALID_CHOICES:
            raise SettingsError(f"context on_invalid={on_invalid!r}: expected one of {', '.join(ON_INVALID_CHOICES)}")

        log_retention_days = whole("log_retention_days", 1) or defaults.log_retention_days
        if log_retention_days not in LOG_RETENTION_DAYS:
            allowed = ", ".join(map(str, LOG_RETENTION_DAYS))
            raise SettingsError(f"context log_retention_days={log_retention_days}: CloudWatch accepts {allowed}")

        options: dict[str, dict[str, str]] = {}
        for spec in SPECS.values():
            for option in spec.options:
                if option.context is None:
                    continue
                if option.whole:
                    number = whole(option.context, 1, spec.maxima.max_requests)
                    value = None if number is None else str(number)
                else:
                    value = text(option.context)
                if option.starts_with and spec.name in providers and not (value or "").startswith(option.starts_with):
                    raise SettingsError(
                        f"context {option.context} must be {option.described} when providers includes {spec.name}"
                    )
                if option.what == "MIN_RECORDS" and spec.name in providers:
                    minimum = int(value) if value else spec.defaults.min_requests
                    maximum = limits.get(spec.name, LimitOverride()).max_requests or spec.defaults.max_requests
                    if minimum > maximum:
                        # The functions would refuse to start (batchdrop.config checks the same).
                        raise SettingsError(
                            f"context {option.context} ({minimum}) is more than {spec.name}_max_requests ({maximum}): "
                            f"no {spec.title} job could be sent; lower the minimum or raise the maximum"
                        )
                if (
                    option.what == "FALLBACK"
                    and value is not None
                    and (value not in spec.fallbacks or value not in providers)
                ):
                    raise SettingsError(
                        f"context {option.context}={value!r}: expected an enabled provider among "
                        f"{', '.join(spec.fallbacks)} (add it to providers), or nothing"
                    )
                if value is not None:
                    options.setdefault(spec.name, {})[option.what] = value

        for name in providers:
            # The real-time requests per minute the account may make (BATCHDROP_<NAME>_RPM); unset: unknown.
            rpm = whole(f"{name}_rpm", 1)
            if rpm is not None:
                options.setdefault(name, {})["RPM"] = str(rpm)
            # What the functions read as BATCHDROP_<NAME>_MAX_ENQUEUED and _WINDOW_HOURS, checked as they do.
            for what in ("MAX_ENQUEUED", "WINDOW_HOURS"):
                key = f"{name}_{what.lower()}"
                value = text(key)
                if value is None:
                    continue
                try:
                    check = parse_enqueued if what == "MAX_ENQUEUED" else parse_hours
                    check(env_var(name, what), value)
                except ConfigError as exc:
                    raise SettingsError(f"context {key}={value!r}: {exc}") from None
                options.setdefault(name, {})[what] = value

        alarm_email = text("alarm_email")
        if alarm_email is not None and "@" not in alarm_email:
            raise SettingsError(f"context alarm_email={alarm_email!r} is not an email address")

        lane = text("lane") or defaults.lane
        if lane not in config.LANES:
            raise SettingsError(f"context lane={lane!r}: expected one of {', '.join(config.LANES)}")
        deadline = text("deadline")
        if deadline is not None:
            # A duration from each upload, as the functions check it (a fixed time would pass once).
            seconds("deadline", positive=True, expected="a duration from the upload, such as 8h or 2d")
        invocations = whole(
            "realtime_invocations",
            *REALTIME_INVOCATIONS_RANGE,
            why=" (it is also the realtime queue's event source maximum concurrency, which AWS bounds)",
        )

        return cls(
            stack_name=text("stack_name") or defaults.stack_name,
            poll_rate_minutes=whole("poll_rate_minutes", 1, 24 * 60) or defaults.poll_rate_minutes,
            providers=providers,
            on_invalid=on_invalid,
            max_attempts=whole("max_attempts", 1, 10) or defaults.max_attempts,
            limits=limits,
            output_retention_days=whole("output_retention_days", 1),
            alarm_email=alarm_email,
            log_retention_days=log_retention_days,
            deep_tracing=(text("deep_tracing") or "false").lower() in ("1", "true", "yes"),
            options=options,
            lane=lane,
            deadline=deadline,
            prefix_defaults=_prefix_defaults(get("prefix_defaults")),
            realtime_below=_or(whole("realtime_below", 0), defaults.realtime_below),
            min_batch_window_seconds=_or(seconds("min_batch_window"), defaults.min_batch_window_seconds),
            realtime_chunk=whole("realtime_chunk", 1) or defaults.realtime_chunk,
            realtime_concurrency=whole("realtime_concurrency", 1) or defaults.realtime_concurrency,
            realtime_invocations=invocations or defaults.realtime_invocations,
            escalation_margin_seconds=_or(seconds("escalation_margin"), defaults.escalation_margin_seconds),
            bedrock_models=_bedrock_models(get("bedrock_models")) if "bedrock" in providers else (),
            cache=_checked("cache", text("cache"), lambda v: config.choice("cache", v, config.CACHE_MODES))
            or defaults.cache,
            cache_ttl_seconds=_checked("cache_ttl", text("cache_ttl"), lambda v: config.cache_ttl(v))
            or defaults.cache_ttl_seconds,
            budget_usd=_checked("budget_usd", text("budget_usd"), lambda v: config.usd("budget_usd", v)),
            budget_policy=_checked(
                "budget_policy",
                text("budget_policy"),
                lambda v: config.choice("budget_policy", v, config.BUDGET_POLICIES),
            )
            or defaults.budget_policy,
            monthly_budget_usd=_checked(
                "monthly_budget_usd", text("monthly_budget_usd"), lambda v: config.usd("monthly_budget_usd", v)
            ),
        )


_T = TypeVar("_T")


def _checked(key: str, raw: str | None, check: Callable[[str], _T | None]) -> _T | None:
    """A context value read as the functions read its variable, their message naming the context key."""
    if raw is None:
        return None
    try:
        return check(raw)
    except ConfigError as exc:
        raise SettingsError(f"context {key}: {exc}") from None


def _or(value: _T | None, default: _T) -> _T:
    """`value` unless it is None (0 is a value: realtime_below=0 turns the size rule off)."""
    return default if value is None else value


def _prefix_defaults(raw: Any) -> dict[str, dict[str, str]]:
    """prefix_defaults: an object in cdk.json, or its JSON on the command line; checked by the
    functions' own parser, and every prefix must be able to match an upload (under inputs/)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    text = raw if isinstance(raw, str) else json.dumps(raw)
    try:
        parsed = config.parse_prefix_defaults(text)
    except ConfigError as exc:
        raise SettingsError(f"context {str(exc).replace(config.ENV_PREFIX_DEFAULTS, 'prefix_defaults')}") from None
    for prefix in parsed:
        if not (prefix.startswith(config.INPUT_PREFIX) or config.INPUT_PREFIX.startswith(prefix)):
            raise SettingsError(
                f"context prefix_defaults names {prefix!r}: only uploads under {config.INPUT_PREFIX} are read, "
                f"so a prefix must start with {config.INPUT_PREFIX}"
            )
    return parsed


def _bedrock_models(raw: Any) -> tuple[str, ...]:
    """bedrock_models: a list in cdk.json, or comma-separated on the command line."""
    if raw is None:
        return ()
    parts = raw if isinstance(raw, list) else str(raw).split(",")
    models = tuple(dict.fromkeys(str(p).strip() for p in parts if str(p).strip()))
    for model in models:
        if not BEDROCK_MODEL_ID.fullmatch(model):
            raise SettingsError(
                f"context bedrock_models names {model!r}: expected a Bedrock model id (amazon.nova-lite-v1:0) or a "
                "cross-region inference profile id (us.anthropic.claude-3-5-haiku-20241022-v1:0), not an ARN"
            )
    return models
