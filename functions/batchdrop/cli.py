"""The `batchdrop` command line (docs/contract.md "Command line")."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from batchdrop import models as m

# Progress lines are log lines: never wrapped, so they read the same in a terminal and in CI.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 130)

# Error lines `batchdrop validate` shows in its table (--json prints them all).
SHOWN = 200

KIND_STYLE = {
    "upload": "cyan",
    "job": "bold",
    "batch": "yellow",
    "notify": "magenta",
}


def _say(kind: str, text: str) -> None:
    console.print(f"[{KIND_STYLE.get(kind, '')}]{kind:>7}[/] {text}")


def _knob_options(f: Any) -> Any:
    """The emulator's knobs, shared by `local run` and `emulator`."""
    options = [
        click.option(
            "--provider-latency",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            help="Seconds from a batch's creation until the emulated provider has ended it.",
        ),
        click.option(
            "--failure-rate",
            type=click.FloatRange(0, 1),
            default=0.0,
            show_default=True,
            help="Share of requests the provider fails (half refused as bad requests, half server errors).",
        ),
        click.option(
            "--expire-rate",
            type=click.FloatRange(0, 1),
            default=0.0,
            show_default=True,
            help="Share of batches that expire before all their requests ran.",
        ),
        click.option(
            "--transient-error-rate",
            type=click.FloatRange(0, 1),
            default=0.0,
            show_default=True,
            help="Share of provider HTTP calls answered 429 or 500 (the SDKs retry them).",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for every random draw."),
        click.option(
            "--queue-limit",
            "queue_limits",
            multiple=True,
            callback=_provider_numbers,
            metavar="PROVIDER=N",
            help="The emulated provider's queue quota, in its unit (OpenAI, Azure, Gemini: input tokens "
            "enqueued per model; Anthropic: requests waiting; Bedrock: jobs per model). Repeatable.",
        ),
        click.option(
            "--realtime-rpm",
            "realtime_rpm",
            multiple=True,
            callback=_provider_numbers,
            metavar="PROVIDER=N",
            help="The emulated provider's real-time requests per minute; past it the real-time endpoints answer "
            "429 with the provider's rate-limit headers. Repeatable.",
        ),
        click.option(
            "--realtime-latency",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="Seconds each emulated real-time call takes.",
        ),
        # Kept in the context rather than passed as an argument, so that the commands that take the
        # knobs need no new parameter: `_knobs` reads it.
        click.option(
            "--schema-mismatch-rate",
            type=click.FloatRange(0, 1),
            default=0.0,
            show_default=True,
            expose_value=False,
            callback=lambda ctx, param, value: ctx.meta.__setitem__("schema_mismatch_rate", value),
            help="Share of structured answers (requests with a JSON Schema) that deliberately do not match it.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _provider_numbers(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    """PROVIDER=N options as {provider: N}, or a usage error that says which one is wrong and why."""
    from batchdrop.providers import SPECS

    out: dict[str, int] = {}
    for value in values:
        provider, _, number = value.partition("=")
        if provider not in SPECS or not number.strip().isdigit() or int(number) < 1:
            raise click.BadParameter(
                f"{value!r}: expected PROVIDER=N, with PROVIDER one of {', '.join(SPECS)} and N a whole number "
                "of at least 1"
            )
        out[provider] = int(number)
    return out


def _knobs(
    provider_latency: float,
    failure_rate: float,
    expire_rate: float,
    transient_error_rate: float,
    seed: int,
    queue_limits: dict[str, int] | None = None,
    realtime_rpm: dict[str, int] | None = None,
    realtime_latency: float = 0.0,
) -> Any:
    from batchdrop.local.emulator import EmulatorKnobs

    return EmulatorKnobs(
        latency=provider_latency,
        failure_rate=failure_rate,
        expire_rate=expire_rate,
        transient_error_rate=transient_error_rate,
        seed=seed,
        queue_limits=queue_limits or {},
        realtime_rpm=realtime_rpm or {},
        realtime_latency=realtime_latency,
        schema_mismatch_rate=float(
            getattr(click.get_current_context(silent=True), "meta", {}).get("schema_mismatch_rate", 0)
        ),
    )


def _lane_options(f: Any) -> Any:
    """A file's lane and deadline, set as the upload's S3 metadata (`local run`, `submit`)."""
    from batchdrop.config import LANES

    options = [
        click.option(
            "--deadline",
            default=None,
            metavar="TIME|DURATION",
            help="When the answers are needed: an ISO 8601 time, or a duration from the upload (90s, 30m, 8h). "
            "Set as the object's metadata batchdrop-deadline.",
        ),
        click.option(
            "--lane",
            type=click.Choice(LANES),
            default=None,
            help="auto (the stack's default: batch when it pays, real-time when it must), batch or realtime. "
            "Set as the object's metadata batchdrop-lane.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _cache_option(f: Any) -> Any:
    """A file's use of the response cache, set as the upload's S3 metadata (`local run`, `submit`)."""
    from batchdrop.config import CACHE_MODES

    return click.option(
        "--cache",
        type=click.Choice(CACHE_MODES),
        default=None,
        help="The response cache (docs/cache.md): read answers requests seen before from it, read-write also "
        "keeps this file's answers for later files; off (the stack's default) does neither. Set as the "
        "object's metadata batchdrop-cache. With local run, the files then run one after another, so a "
        "file reuses the answers of those before it.",
    )(f)


def _cache_reader(mode: str, stack_name: str | None) -> tuple[Any, str | None]:
    """(the cache `validate` asks, or None; why it asks none, when the file's cache is on)."""
    from batchdrop import ops
    from batchdrop.adapters.cache import ResponseCache
    from batchdrop.config import CACHE_OFF

    if mode == CACHE_OFF:
        return None, None
    try:
        table = ops.cache_table(stack_name)
        return ResponseCache(table, None, ttl_seconds=0), None
    except Exception as exc:
        return None, f"not checked: cannot reach the stack's cache table ({exc})"


def _cache_metadata(cache: str | None) -> dict[str, str]:
    from batchdrop.options import META_CACHE

    return {META_CACHE: cache} if cache is not None else {}


def _metadata(deadline: str | None, lane: str | None) -> dict[str, str]:
    """The per-file options as S3 user metadata, checked here so a typo fails before the upload."""
    import time

    from batchdrop.options import META_DEADLINE, META_LANE, OptionError, parse_deadline

    out: dict[str, str] = {}
    if deadline is not None:
        try:
            parse_deadline(deadline, time.time(), "--deadline")
        except OptionError as exc:
            raise click.BadParameter(str(exc), param_hint="--deadline") from None
        out[META_DEADLINE] = deadline
    if lane is not None:
        out[META_LANE] = lane
    return out


def _budget_options(f: Any) -> Any:
    """A file's budget and its policy, set as the upload's S3 metadata (`local run`, `submit`)."""
    from batchdrop.config import BUDGET_POLICIES

    f = click.option(
        "--budget-policy",
        type=click.Choice(BUDGET_POLICIES),
        default=None,
        help="Over the budget: refuse the job (the default), or truncate: send the first requests that fit and "
        "report the rest over_budget. Set as the object's metadata batchdrop-budget-policy.",
    )(f)
    return click.option(
        "--budget-usd",
        default=None,
        metavar="USD",
        help="The most the file may cost, checked against its upper-bound estimate before anything is sent "
        "(docs/budgets.md). Set as the object's metadata batchdrop-budget-usd.",
    )(f)


def _budget_metadata(budget_usd: str | None, budget_policy: str | None) -> dict[str, str]:
    from batchdrop.config import ConfigError, usd
    from batchdrop.options import META_BUDGET, META_BUDGET_POLICY

    out: dict[str, str] = {}
    if budget_usd is not None:
        try:
            usd("--budget-usd", budget_usd)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--budget-usd") from None
        out[META_BUDGET] = budget_usd
    if budget_policy is not None:
        out[META_BUDGET_POLICY] = budget_policy
    return out


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from batchdrop.config import parse_duration

    if value is not None and (parse_duration(value) is None or (parse_duration(value) or 0) < 0):
        raise click.BadParameter(f"{value!r}: expected a duration such as 30s, 10m or 1h")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """batchdrop: drop a JSONL file of LLM requests into S3, get batch results back at half price.

    The local commands run on an embedded stack (moto's server and a provider emulator) and need no
    AWS account and no API key.
    """


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="demo-output",
    show_default=True,
    help="Where to copy the outputs tree and notifications.jsonl.",
)
def demo(out_dir: str) -> None:
    """Run the sample files in events/ through submit → poll → complete on the embedded stack."""
    # The JSONL samples, and a table job's manifest (its CSV under events/data/).
    samples = sorted(str(p) for pattern in ("*.jsonl", "*.job.json") for p in _events_dir().glob(pattern))
    if not samples:
        raise click.ClickException(f"no sample files found in {_events_dir()}")
    console.print("[bold]batchdrop demo[/]: the sample files through the whole pipeline, locally\n")
    # The sample's few Claude-on-Bedrock lines are under Bedrock's minimum: show the fallback at work. Every
    # file keeps its answers in the response cache, and the first runs once more when all have ended: what
    # was answered the first time is answered from the cache, sent to no provider and paid for once.
    again = next(p for p in samples if p.endswith(".jsonl"))
    _run(
        samples, out_dir, _knobs(1.5, 0.05, 0.0, 0.05, 7), folder=None, bedrock_fallback="anthropic",
        metadata=_cache_metadata("read-write"), then=[again],
    )  # fmt: skip
    console.print(
        f"The last row is {os.path.basename(again)} uploaded again once every job had ended, with the response "
        "cache on (batchdrop-cache: read-write): what its first run was answered is answered from the cache, "
        'sent to no provider and free (`cached` column; `"cached": true` on its result lines). docs/cache.md'
    )


@main.group()
def local() -> None:
    """The pipeline on the embedded stack, for your own files."""


@local.command("run")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where to copy the bucket's outputs/ tree and write notifications.jsonl.",
)
@_knob_options
@click.option(
    "--folder",
    default=None,
    help="Upload under inputs/FOLDER/ (e.g. 'anthropic' routes neutral lines to Anthropic).",
)
@click.option(
    "--on-invalid",
    type=click.Choice(["skip", "reject"]),
    default="skip",
    show_default=True,
    help="skip: submit the valid lines and report the rest; reject: refuse a file with any invalid line.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Attempts per request; expired and retryable failures are resubmitted until then.",
)
@click.option(
    "--duplicate-events",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Chaos: deliver every S3 event N times (the first two at the same moment).",
)
@click.option(
    "--overlapping-polls",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Chaos: start N poll invocations at once on every tick of the schedule.",
)
@click.option(
    "--crash-rate",
    type=click.FloatRange(0, 0.9),
    default=0.0,
    show_default=True,
    help="Chaos: chance that a handler invocation dies at each step boundary it passes (after the provider "
    "accepted a batch and before the state write, half-way through the outputs, ...); the event is "
    "redelivered the way Lambda and SQS would.",
)
@click.option(
    "--cancel-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Chaos: on every tick, the chance that each unfinished job is canceled, at the same moment as the "
    "polls (cancels racing hand-overs, as `batchdrop cancel` or a cancel/ file can).",
)
@click.option(
    "--cache-error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Chaos: the chance that each call to the response cache's table fails (throttled, unreachable): "
    "lookups are sent as misses, writes are lost, and no job fails for it.",
)
@click.option(
    "--webhooks",
    is_flag=True,
    help="Have the emulator send signed OpenAI webhooks to the local webhook function, so OpenAI batches "
    "complete as soon as they end (the schedule still runs as the safety net).",
)
@click.option(
    "--bedrock-min-records",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Bedrock's minimum records per job (its quota per model; the emulator enforces it too).",
)
@click.option(
    "--bedrock-fallback",
    type=click.Choice(["anthropic"]),
    default=None,
    help="Send the Claude requests of a Bedrock job under the minimum to Anthropic instead of refusing them.",
)
@click.option(
    "--max-enqueued",
    "max_enqueued",
    multiple=True,
    callback=_provider_numbers,
    metavar="PROVIDER=N",
    help="batchdrop's own cap on what it keeps enqueued at the provider (BATCHDROP_<NAME>_MAX_ENQUEUED), "
    "in the provider's quota unit; batches past it wait and go out in waves. Repeatable.",
)
@_lane_options
@_cache_option
@_budget_options
@click.option(
    "--realtime-below",
    type=click.IntRange(min=0),
    default=None,
    help="The auto lane sends a provider's requests real-time when the file has fewer than N of them "
    "(BATCHDROP_REALTIME_BELOW; default 100).",
)
@click.option(
    "--min-batch-window",
    callback=_duration,
    default=None,
    metavar="DURATION",
    help="The auto lane goes real-time when the deadline is nearer than this (BATCHDROP_MIN_BATCH_WINDOW; default 1h).",
)
@click.option(
    "--escalation-margin",
    callback=_duration,
    default=None,
    metavar="DURATION",
    help="What an escalation keeps in hand before the deadline (BATCHDROP_ESCALATION_MARGIN; default 15m).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    help="Give up after this many seconds.",
)
@click.option(
    "--aws-cost",
    is_flag=True,
    help="Count the functions' AWS calls and print what the run would cost on AWS (us-east-1 list prices): "
    "per service, operation and function, per million requests, and the stack's fixed monthly costs.",
)
def local_run(
    files: tuple[str, ...],
    out_dir: str,
    provider_latency: float,
    failure_rate: float,
    expire_rate: float,
    transient_error_rate: float,
    seed: int,
    queue_limits: dict[str, int],
    realtime_rpm: dict[str, int],
    realtime_latency: float,
    max_enqueued: dict[str, int],
    deadline: str | None,
    lane: str | None,
    cache: str | None,
    realtime_below: int | None,
    min_batch_window: str | None,
    escalation_margin: str | None,
    folder: str | None,
    on_invalid: str,
    max_attempts: int,
    budget_usd: str | None,
    budget_policy: str | None,
    duplicate_events: int,
    overlapping_polls: int,
    crash_rate: float,
    cancel_rate: float,
    cache_error_rate: float,
    webhooks: bool,
    bedrock_min_records: int,
    bedrock_fallback: str | None,
    timeout: float,
    aws_cost: bool,
) -> None:
    """Upload each FILE under inputs/, drive the pipeline until every job has ended, copy the outputs.

    Exits 0 when every job ended, whatever its status; writes OUT/outputs/..., OUT/notifications.jsonl
    and OUT/provider_stats.json (batches created per provider, requests submitted per custom_id).
    """
    from batchdrop.local.dispatcher import Chaos

    knobs = _knobs(
        provider_latency,
        failure_rate,
        expire_rate,
        transient_error_rate,
        seed,
        queue_limits,
        realtime_rpm,
        realtime_latency,
    )
    chaos = Chaos(
        duplicate_events=duplicate_events,
        overlapping_polls=overlapping_polls,
        crash_rate=crash_rate,
        cancel_rate=cancel_rate,
        cache_error_rate=cache_error_rate,
        seed=seed,
    )
    _run(
        list(files),
        out_dir,
        knobs,
        folder=folder,
        on_invalid=on_invalid,
        max_attempts=max_attempts,
        timeout=timeout,
        chaos=chaos,
        webhooks=webhooks,
        bedrock_min_records=bedrock_min_records,
        bedrock_fallback=bedrock_fallback,
        env={f"BATCHDROP_{p.upper()}_MAX_ENQUEUED": str(n) for p, n in max_enqueued.items()},
        metadata={
            **_metadata(deadline, lane),
            **_cache_metadata(cache),
            **_budget_metadata(budget_usd, budget_policy),
        },
        in_turn=cache is not None and cache != "off",
        lanes={
            "realtime_below": realtime_below,
            "min_batch_window": min_batch_window,
            "escalation_margin": escalation_margin,
            # The functions count on the pace the emulated providers allow.
            "rpm": realtime_rpm,
        },
        aws_cost=aws_cost,
    )


def _run(
    files: list[str],
    out_dir: str,
    knobs: Any,
    folder: str | None,
    on_invalid: str = "skip",
    max_attempts: int = 2,
    timeout: float = 600,
    chaos: Any = None,
    webhooks: bool = False,
    bedrock_min_records: int = 100,
    bedrock_fallback: str | None = None,
    env: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    lanes: dict[str, Any] | None = None,
    aws_cost: bool = False,
    in_turn: bool = False,
    then: list[str] | None = None,
) -> None:
    from batchdrop.local.run import RunError, run_files
    from batchdrop.local.stack import StackOptions

    options = StackOptions(
        knobs=knobs,
        on_invalid=on_invalid,
        max_attempts=max_attempts,
        bedrock_min_records=bedrock_min_records,
        bedrock_fallback=bedrock_fallback,
        extra_env=env or {},
        **{k: v for k, v in (lanes or {}).items() if v is not None},
    )
    if chaos is not None and chaos.crash_rate > 0:
        # Crashed invocations hold their lease until it runs out: keep that short on the local clock.
        options.lease_seconds, options.completion_grace_seconds, options.create_lock_seconds = 5, 4, 4
        options.realtime_timeout = 15
    try:
        report = run_files(
            files,
            out_dir,
            options,
            folder=folder,
            say=_say,
            timeout=timeout,
            chaos=chaos,
            webhooks=webhooks,
            metadata=metadata,
            aws_bill=aws_cost,
            in_turn=in_turn,
            then=then or (),
        )
    except RunError as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title=f"\nAll jobs ended in {report.seconds:.1f}s", title_justify="left")
    columns = (
        "file", "status", "lines", "invalid", "ok", "failed", "batch/rt", "cached", "cost $", "saved $", "deadline",
    )  # fmt: skip
    for column in (*columns, "outputs"):
        table.add_column(column)
    for job in report.jobs:
        summary = job.summary or {}
        counts = summary.get("counts", {})
        cost = summary.get("cost_usd") or {}
        lanes = counts.get("by_lane") or {}
        met = summary.get("met_deadline")
        results = summary.get("results", "")
        table.add_row(
            os.path.basename(job.file),
            job.status,
            str(counts.get("lines", "")),
            str(counts.get("invalid", "")),
            str(counts.get("succeeded", "")),
            str(counts.get("failed", "")),
            f"{lanes.get('batch', 0)}/{lanes.get('realtime', 0)}",
            str(counts.get("cached", 0)),
            "n/a" if cost.get("total") is None else f"{cost['total']:.6f}",
            "n/a" if cost.get("saved") is None else f"{cost['saved']:.6f}",
            "" if met is None else ("met" if met else "missed"),
            results.rsplit("/", 1)[0] + "/" if results else "",
        )
    console.print(table)
    console.print(f"Outputs copied to [bold]{os.path.join(report.out_dir, 'outputs')}[/]")
    console.print(
        f"{len(report.notifications)} notifications in [bold]{os.path.join(report.out_dir, 'notifications.jsonl')}[/]"
    )
    if report.bill is not None:
        _print_bill(report.bill, report.saved_usd)


def _print_bill(bill: Any, saved: float | None) -> None:
    """The run's AWS bill: by service and operation, by function, and the fixed monthly costs."""
    from batchdrop.local import aws_prices

    per_m = bill.per_million
    table = Table(
        title=f"\nAWS cost of the run (us-east-1 list prices of {aws_prices.AS_OF}; {bill.requests:,} requests, "
        f"{bill.invocations:,} invocations)",
        title_justify="left",
    )
    for column in ("service", "operation", "calls", "calls / 1M requests", "$ / 1M requests"):
        table.add_column(column, justify="left" if column in ("service", "operation") else "right")
    for (service, operation), calls, usd in bill.by("service", "operation"):
        table.add_row(service, operation, f"{calls:,}", f"{per_m(calls):,.0f}", f"{per_m(usd):.5f}")
    console.print(table)
    functions = Table(title="By function", title_justify="left")
    for column in ("function", "$ in the run", "$ / 1M requests"):
        functions.add_column(column, justify="left" if column == "function" else "right")
    for (function,), _, usd in bill.by("function"):
        functions.add_row(function, f"{usd:.6f}", f"{per_m(usd):.5f}")
    console.print(functions)
    share = ""
    if saved:
        share = f"; the batch lane saved ${saved:.6f} on the providers' prices: this is {bill.total / saved:.1%} of it"
    console.print(
        f"Total [bold]${bill.total:.6f}[/] for the run, [bold]${per_m(bill.total):.4f} per million requests[/]"
        f" (Lambda durations as measured on this machine){share}."
    )
    fixed = Table(title="Fixed, per month (whatever the traffic)", title_justify="left")
    fixed.add_column("what")
    fixed.add_column("$ / month", justify="right")
    for item in bill.fixed:
        fixed.add_row(item.what, f"{item.usd_per_month:.2f}")
    fixed.add_row("total", f"{bill.fixed_total:.2f}")
    console.print(fixed)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--on-invalid", type=click.Choice(["skip", "reject"]), default="skip", show_default=True)
@click.option("--folder", default=None, help="Validate as if uploaded under inputs/FOLDER/ (provider routing).")
@click.option("--json", "as_json", is_flag=True, help="Print the error lines as JSONL instead of a table.")
@_lane_options
@_cache_option
@click.option(
    "--stack",
    "stack_name",
    default=None,
    envvar="BATCHDROP_STACK",
    help="With the cache on: the deployed stack whose cache table (output CacheTableName) to ask; "
    "BATCHDROP_CACHE_TABLE names the table instead [default: Batchdrop].",
)
def validate(
    files: tuple[str, ...],
    on_invalid: str,
    folder: str | None,
    as_json: bool,
    deadline: str | None,
    lane: str | None,
    cache: str | None,
    stack_name: str | None,
) -> None:
    """Validate FILES offline with the submit function's own code: counts, the error lines, and the lane
    each provider's requests would take (as if uploaded now, with --deadline and --lane as metadata).
    A table job's manifest (.job.json) renders every row of its data, read next to it, and reports the
    rows that do not render by row number. With the response cache on (--cache, or the stack's default),
    it also says how many requests the stack's cache would answer now, when it can reach the stack.

    Exits 1 when any line is invalid (or the file would be rejected), 0 otherwise.
    """
    import time

    from rich.markup import escape

    from batchdrop.cache import count_answered
    from batchdrop.config import ConfigError, tmpdir
    from batchdrop.estimate import EXACT_FIRST, SAMPLE_EVERY, Estimate
    from batchdrop.options import (
        AUTO,
        META_DEADLINE,
        META_LANE,
        OptionError,
        choose_lanes,
        job_options,
        may_go_realtime,
    )
    from batchdrop.outputs import validation_error
    from batchdrop.planning import LocalBatches, offline_settings, plan_segment, rejection, settle
    from batchdrop.pricing import CostMeter, price_table
    from batchdrop.reader import iter_chunks
    from batchdrop.tables.files import folder_of
    from batchdrop.tables.job import TableJobError, open_job
    from batchdrop.tables.manifest import is_manifest
    from batchdrop.tables.sources import Bounds, LocalObjects

    try:
        # The deployment's own settings, from the same variables (limits, minimums, fallbacks, bounds
        # on a gzip file and on invalid lines), so validate plans what the submit function would.
        settings = offline_settings(on_invalid=on_invalid)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    # Planned as if uploaded there: a folder named after a provider routes neutral lines to it.
    key = f"inputs/{folder.strip('/')}/file.jsonl" if folder else "inputs/file.jsonl"
    now = time.time()
    given_metadata = {**_metadata(deadline, lane), **_cache_metadata(cache)}
    try:
        options = job_options(settings, key, given_metadata, now)
    except OptionError as exc:
        raise click.ClickException(str(exc)) from None
    answers, unreachable = _cache_reader(options.cache, stack_name)
    bad = False
    for path in files:
        if not os.path.isfile(path):
            raise click.ClickException(f"{path}: no such file")
        errors: list[dict[str, Any]] = []
        # The table shows the first SHOWN errors: the scan reports them in line order, so those after
        # the first SHOWN are only counted (a file may hold up to a million); --json prints them all.
        keep_all = as_json
        shown = [0]

        def report(
            invalid: m.Invalid,
            errors: list[dict[str, Any]] = errors,
            shown: list[int] = shown,
            keep_all: bool = keep_all,
        ) -> None:
            shown[0] += 1
            if keep_all or len(errors) < SHOWN:
                errors.append(validation_error(invalid))

        batches = LocalBatches()
        estimate = Estimate(CostMeter(price_table()))
        requests: dict[str, int] = {}

        def store(batch: Any, requests: dict[str, int] = requests, keep: Any = batches.store) -> None:
            requests[batch.provider] = requests.get(batch.provider, 0) + batch.requests
            keep(batch)

        table_job = None
        file_options = options
        if is_manifest(path):
            # A table job: its rows rendered as the submit function renders them, the data and
            # template read next to the manifest (tables/files.py).
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                bounds = Bounds(settings.max_inflated_bytes, settings.max_gzip_ratio)
                local = LocalObjects(folder_of(path))
                table_job = open_job(local, os.path.basename(path), raw, settings.routes, bounds=bounds)
                manifest = table_job.manifest
                given = {META_LANE: manifest.lane or "", META_DEADLINE: manifest.deadline or ""}
                file_options = job_options(settings, key, {**given, **given_metadata}, now)
            except (TableJobError, OptionError) as exc:
                console.print(f"[bold]{path}[/]: [red]would be rejected[/]: {escape(str(exc))}")
                bad = True
                continue
        try:
            with open(path, "rb") as f:
                plan = plan_segment(
                    table_job.chunks(report) if table_job is not None else iter_chunks(f),
                    settings,
                    key=key,
                    store_batch=store,
                    report=report,
                    key_prefix="a1-",
                    tmpdir=tmpdir(),
                    estimate=estimate,
                    # The cache's keys are read from the requests themselves.
                    dry=answers is None,
                    small_realtime=may_go_realtime(file_options),
                )
            result = plan.result
            invalid = result.invalid + len(plan.refused)
            if table_job is not None:
                result.lines += table_job.failed  # rows that did not render (blank lines to the scan)
                invalid += table_job.failed
            refused = set(plan.refused)
            duplicates = [d for d in result.duplicates if d.line not in refused]
            _kept, more = settle(
                batches, list(batches.order), duplicates, settings, store, report, "a1-", tmpdir(),
                small_realtime=may_go_realtime(file_options),
            )  # fmt: skip
            invalid += more
            by_provider: dict[str, int] = {}
            for batch in batches.planned.values():
                by_provider[batch.provider] = by_provider.get(batch.provider, 0) + 1
            cached_note = unreachable
            if answers is not None:
                try:
                    hits = sum(count_answered(b, answers) for b in batches.planned.values() if b.path)
                    cached_note = (
                        f"{hits:,} of the {sum(b.requests for b in batches.planned.values()):,} requests would be "
                        f"answered from the cache now (table {answers.table}): not sent, and free"
                    )
                except Exception as exc:
                    cached_note = f"not checked: the cache table did not answer ({type(exc).__name__}: {exc})"
        finally:
            batches.close()
        lines = result.lines
        error_count = shown[0]
        valid = lines - invalid
        # As the submit function decides: a file that cannot be read to its end, that holds more
        # invalid lines than the cap, or nothing valid, is rejected whole (and with on_invalid=reject,
        # one with any invalid line).
        fatal = table_job.fatal if table_job is not None else None
        rejected = fatal is not None or rejection(lines, invalid, result.file_error, settings.on_invalid) is not None
        bad = bad or bool(invalid) or bool(rejected)
        errors.sort(key=lambda e: e["line"])
        batch_plan = (
            ", ".join(f"{n} {p} batch{'es' if n > 1 else ''}" for p, n in sorted(by_provider.items())) or "none"
        )
        verdict_text = "[red]would be rejected[/]" if rejected else "[green]ok[/]"
        chosen = choose_lanes(settings, file_options, requests, now)
        cost = estimate.summary({p: c.lane for p, c in chosen.items()})
        if cost["total"] is None:
            unknown = ", ".join(sorted(estimate.meter.unknown))
            priced = f"cost n/a (no price for {unknown}; add it with BATCHDROP_PRICES)"
        else:
            priced = f"cost ≤ ${cost['total']:.4f} (all real-time ${cost['realtime_equivalent']:.4f})"
        tokens = f"input ≈ {estimate.input_tokens:,} tokens, output ≤ {estimate.output_tokens:,} tokens"
        if estimate.sampled:
            tokens += f" (from the first {EXACT_FIRST:,} requests and 1 in {SAMPLE_EVERY} after them)"
        console.print(
            f"[bold]{path}[/]: {lines} lines, {valid} valid, {invalid} invalid · batches: {batch_plan} · "
            f"{verdict_text}\n  estimate: {tokens}, {priced}"
        )
        for provider, choice in sorted(chosen.items()):
            each = estimate.by_provider.get(provider)
            money = "n/a" if each is None else f"${each:.4f}"
            console.print(f"  lane: {provider} → [bold]{choice.lane}[/] ({escape(choice.why)}) · cost ≤ {money}")
        if cached_note:
            console.print(f"  cache ({file_options.cache}): {escape(cached_note)}")
        if file_options.deadline is not None and file_options.lane == AUTO:
            console.print(
                "  a batch still unfinished near the deadline is escalated: canceled, its rest sent real-time"
            )
        if result.file_error is not None:
            console.print(f"  [red]file error[/]: {escape(result.file_error.message)}")
        if fatal is not None:
            console.print(f"  [red]table error[/]: {escape(fatal)}")
        if as_json:
            for e in errors:
                sys.stdout.write(orjson.dumps(e).decode() + "\n")
        elif errors:
            table = Table(show_header=True)
            for column in ("line", "custom_id", "code", "message"):
                table.add_column(column, overflow="fold")
            for e in errors[:SHOWN]:
                table.add_row(str(e["line"]), e["custom_id"] or "", e["code"], e["message"])
            console.print(table)
            if error_count > SHOWN:
                console.print(f"... and {error_count - SHOWN:,} more (use --json for all)")
    sys.exit(1 if bad else 0)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8099, show_default=True)
@_knob_options
def emulator(
    host: str,
    port: int,
    provider_latency: float,
    failure_rate: float,
    expire_rate: float,
    transient_error_rate: float,
    seed: int,
    queue_limits: dict[str, int],
    realtime_rpm: dict[str, int],
    realtime_latency: float,
) -> None:
    """Serve the provider emulator alone: every provider's batch API (OpenAI's also as Azure OpenAI's),
    as the official SDKs call it."""
    from batchdrop.local.emulator import ProviderEmulator

    knobs = _knobs(
        provider_latency,
        failure_rate,
        expire_rate,
        transient_error_rate,
        seed,
        queue_limits,
        realtime_rpm,
        realtime_latency,
    )
    import signal
    import time

    # A process started in the background inherits an ignored or blocked SIGINT from its parent (a
    # shell's `&`, a test runner): this server runs until Ctrl-C, so it takes Ctrl-C back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    emu = ProviderEmulator(knobs, host=host, port=port).start()
    # From here on Ctrl-C must stop the server, even while the addresses are printed: its thread would
    # otherwise keep the process alive once the interrupt ended the main thread.
    try:
        reach = [line for plugin in emu.plugins for line in plugin.reach(emu.base_url)]
        width = max(len(what) for what, _ in reach) + 2
        for what, how in reach:
            base, _, note = how.partition(" ")
            console.print(f"{what + ':':<{width}}[bold]{base}[/]" + (f" {note}" if note else ""))
        console.print("Any non-empty API key is accepted. Ctrl-C to stop.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


def _stack_options(f: Any) -> Any:
    """How the operator commands find a deployed stack."""
    options = [
        click.option(
            "--stack",
            "stack_name",
            default=None,
            envvar="BATCHDROP_STACK",
            help="The CloudFormation stack whose outputs name the bucket and table [default: Batchdrop].",
        ),
        click.option("--bucket", default=None, help="The bucket, instead of reading the stack's outputs."),
        click.option("--table", default=None, help="The DynamoDB table, instead of reading the stack's outputs."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _ref(stack_name: str | None, bucket: str | None, table: str | None) -> Any:
    from batchdrop import ops

    try:
        return ops.resolve(stack_name, bucket, table)
    except ops.StackNotFound as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--folder", default=None, help="Upload under inputs/FOLDER/ (e.g. 'anthropic' routes neutral lines).")
@_lane_options
@_cache_option
@_budget_options
@_stack_options
def submit(
    files: tuple[str, ...],
    folder: str | None,
    deadline: str | None,
    lane: str | None,
    cache: str | None,
    budget_usd: str | None,
    budget_policy: str | None,
    stack_name: str | None,
    bucket: str | None,
    table: str | None,
) -> None:
    """Upload FILES to a deployed stack's inputs/ (multipart, with progress); prints each job id."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from batchdrop import ops
    from batchdrop.local.run import RunError, check_files
    from batchdrop.tables.files import companions
    from batchdrop.tables.manifest import is_manifest

    try:
        check_files(files)
    except RunError as exc:
        raise click.ClickException(str(exc)) from None
    metadata = {
        **_metadata(deadline, lane),
        **_cache_metadata(cache),
        **_budget_metadata(budget_usd, budget_policy),
    }
    ref = _ref(stack_name, bucket, table)
    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console) as bar:
        for path in files:
            if is_manifest(path):
                # A table job's data and template first, at the keys it names: a manifest that lands
                # before its data is refused.
                for local_path, data_key in companions(path):
                    task = bar.add_task(data_key, total=os.path.getsize(local_path))
                    ops.upload_key(ref, local_path, data_key, functools.partial(bar.advance, task))
            task = bar.add_task(os.path.basename(path), total=os.path.getsize(path))
            key, job_id = ops.upload(ref, path, folder, functools.partial(bar.advance, task), metadata)
            bar.console.print(f"{path} → s3://{ref.bucket}/{key} · job [bold]{job_id}[/]")
    console.print("Follow it with [bold]batchdrop status JOB[/].")


@main.command()
@click.argument("job_id", required=False)
@click.option("--watch", is_flag=True, help="Refresh every few seconds until interrupted (or the job ends).")
@click.option(
    "--interval", type=click.FloatRange(min=1), default=5, show_default=True, help="Seconds between refreshes."
)
@_stack_options
def status(
    job_id: str | None, watch: bool, interval: float, stack_name: str | None, bucket: str | None, table: str | None
) -> None:
    """A table of recent jobs, or one job's batches, counts and age."""
    import time

    from rich.live import Live

    from batchdrop import ops

    ref = _ref(stack_name, bucket, table)

    def render() -> tuple[Table, bool]:
        if job_id is None:
            table = Table(title="batchdrop jobs", title_justify="left")
            for column in ("job", "status", "input", "lines", "invalid", "ok", "failed", "age"):
                table.add_column(column)
            for item in ops.jobs(ref):
                counts = {**(item.get("counts") or {}), **(item.get("summary_counts") or {})}
                table.add_row(
                    item["job_id"],
                    item["status"],
                    item["input"]["key"],
                    str(counts.get("lines", "")),
                    str(counts.get("invalid", "")),
                    str(counts.get("succeeded", "")),
                    str(counts.get("failed", "")),
                    ops.age(item.get("received_at")),
                )
            return table, False
        try:
            item, batches = ops.job(ref, job_id)
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
        counts = {**(item.get("counts") or {}), **(item.get("summary_counts") or {})}
        title = (
            f"{job_id} · {item['status']} · {item['input']['key']} · "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f" · {ops.age(item.get('received_at'))} old"
            + "".join(
                f"\n{stage} failed {item.get(f'{stage}_failures')}x: {item[f'{stage}_error']}"
                for stage in ("submit", "completion")
                if item.get(f"{stage}_error")
            )
        )
        table = Table(title=title, title_justify="left")
        for column in ("batch", "provider", "provider batch id", "attempt", "requests", "state", "done", "age"):
            table.add_column(column)
        for b in batches:
            progress = b.get("progress") or {}
            table.add_row(
                b["batch_key"],
                b["provider"],
                b.get("provider_batch_id") or "",
                str(b.get("attempt", 1)),
                str(b["requests"]),
                b.get("status", ""),
                f"{progress.get('done') or 0}/{progress.get('total') or b['requests']}",
                ops.age(b.get("submitted_at")),
            )
        return table, item["status"] in m.FINAL_JOB_STATES

    view, ended = render()
    if not watch:
        console.print(view)
        return
    try:
        with Live(view, console=console, refresh_per_second=1) as live:
            while not ended:
                time.sleep(interval)
                view, ended = render()
                live.update(view)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("job_id")
@_stack_options
def cancel(job_id: str, stack_name: str | None, bucket: str | None, table: str | None) -> None:
    """Cancel a job: its provider batches are canceled at the next poll, and the job ends `canceled`
    with the results of the requests that had finished (dropping cancel/JOB_ID into the bucket does
    the same)."""
    from batchdrop import ops
    from batchdrop.cancel import CancelError

    ref = _ref(stack_name, bucket, table)
    try:
        was = ops.cancel(ref, job_id)
    except CancelError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"Cancel requested for {job_id} (it was {was}); the next poll cancels its batches.")


@main.command()
@click.argument("job_id")
@_stack_options
def retry(job_id: str, stack_name: str | None, bucket: str | None, table: str | None) -> None:
    """Re-run what the providers failed in an ended job (expired, server errors, failed batches, ...;
    not validation errors) as a new job: each line keeps its custom_id and line number, so
    `batchdrop results JOB --merged` gives one file across both (dropping retry/JOB_ID into the bucket
    does the same)."""
    from batchdrop import ops
    from batchdrop.retry import RetryError

    ref = _ref(stack_name, bucket, table)
    try:
        done = ops.retry(ref, job_id)
    except RetryError as exc:
        raise click.ClickException(str(exc)) from None
    if done.existed:
        console.print(f"{job_id} was retried already: job [bold]{done.retry_job}[/] (s3://{ref.bucket}/{done.key}).")
    else:
        console.print(
            f"Retrying {done.lines} line(s) of {job_id} as job [bold]{done.retry_job}[/] (s3://{ref.bucket}/{done.key})."
        )
    for note in done.notes:
        console.print(f"Note: {note}.")
    console.print(
        f"Follow it with [bold]batchdrop status {done.retry_job}[/]; what fails again can be retried in turn."
    )


@main.command()
@click.argument("job_id")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Where to write the files.")
@click.option(
    "--merged",
    is_flag=True,
    help="One results.jsonl and errors.jsonl across the job and its retries (every custom_id once, the latest "
    "attempt winning), and merged.json naming the jobs.",
)
@_stack_options
def results(
    job_id: str, out_dir: str, merged: bool, stack_name: str | None, bucket: str | None, table: str | None
) -> None:
    """Download a finished job's results.jsonl, errors.jsonl and summary.json into OUT."""
    from batchdrop import ops
    from batchdrop.retry import RetryError

    ref = _ref(stack_name, bucket, table)
    try:
        if merged:
            written, found = ops.download_merged(ref, job_id, out_dir)
            console.print("Merged " + " → ".join(j["job_id"] for j in found.chain))
            for left in found.left_out:
                console.print(f"Not merged: {left} has not ended; run this again once it has.")
        else:
            written = ops.download_results(ref, job_id, out_dir)
    except (LookupError, RetryError) as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        console.print(path)


def _events_dir() -> Path:
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "events", Path.cwd() / "events"):
        if candidate.is_dir():
            return candidate
    return Path.cwd() / "events"


if __name__ == "__main__":
    main()
