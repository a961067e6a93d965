"""The stack's one definition: what infra/ deploys and what batchdrop.local.stack creates locally.

Both read this module for the names, the functions' sizes, the queues between them (visibility, receives,
dead-letter queues, event sources), the job table's keys and index, the upload notifications, the rules
that run the poll function, and the functions' environment; infra/ also for the code asset (which of the
dependencies) each function takes, which the local stack, one process, has no use for (tests/infra checks
that a function without pyarrow can never touch a table). tests/infra/test_drift.py synthesizes the
template and checks the local stack against it resource by resource and variable by variable, so a
change made on one side only fails the suite.

Plain data and functions of plain values: the functions import it (the local stack runs inside them),
so nothing here may import the CDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchdrop import config
from batchdrop.providers.spec import provider_env

DEFAULT_STACK_NAME = "Batchdrop"

# Powertools: the service name and the namespace of the metrics the functions emit.
SERVICE = "batchdrop"
METRICS_NAMESPACE = "batchdrop"
# Emitted by the poll function (Powertools adds the dimension service=SERVICE) for batches that have
# outlived the provider's window; an alarm watches it.
STUCK_BATCHES_METRIC = config.STUCK_BATCHES

# glibc gives each thread its own malloc arena; s3transfer's upload threads then leave freed memory
# spread over many of them, and a long submit's RSS creeps up with the file size.
MALLOC_ARENA_MAX = "2"


# -- code assets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    """A Lambda code asset: our package and pyproject.toml's runtime dependencies, but those `without`
    (infra/bundling.py builds one per asset a deployed function takes)."""

    name: str
    without: tuple[str, ...] = ()  # distribution names, as pyproject.toml spells them


# Every runtime dependency. pyarrow (table jobs: reading the input table, writing results.parquet) is 105 of
# its 172 MB unzipped and 35 of its 55 MB zipped (docs/performance.md).
TABLES_ASSET = Asset("tables")
# For the functions that can never read or write a table: 0.36x the zip a cold start fetches. A function
# takes it only if its role can neither read inputs/ nor write outputs/ (tests/infra checks), so a table
# job cannot reach pyarrow there.
NO_TABLES_ASSET = Asset("no-tables", without=("pyarrow",))
ASSETS: Mapping[str, Asset] = {a.name: a for a in (TABLES_ASSET, NO_TABLES_ASSET)}


# -- functions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    name: str  # the module in batchdrop.handlers
    description: str
    memory_mb: int
    timeout_seconds: int
    ephemeral_storage_mb: int = 512
    reserved_concurrency: int | None = None
    # What its code is bundled with: every dependency unless the function provably needs less.
    asset: Asset = TABLES_ASSET

    @property
    def handler(self) -> str:
        """The Lambda handler string."""
        return f"batchdrop.handlers.{self.name}.handler"


SUBMIT = Function(
    "submit",
    "Validates an uploaded JSONL file, splits it into provider batches and submits them",
    memory_mb=1024,
    timeout_seconds=15 * 60,
    # It writes the planned batch files to /tmp before uploading them: room for multi-GB inputs.
    ephemeral_storage_mb=10240,
    asset=TABLES_ASSET,  # it reads a table job's input table
)
POLL = Function(
    "poll",
    "Checks the batches that are due with their providers and hands finished jobs to completion",
    memory_mb=512,
    timeout_seconds=5 * 60,
    # One poll at a time: overlapping polls would ask the providers twice for nothing.
    reserved_concurrency=1,
    # Every dependency: its watchdog writes a stuck job's outputs (results.write_outputs), a table job's
    # table among them. One invocation at a time every few minutes, it is mostly warm anyway.
    asset=TABLES_ASSET,
)
COMPLETE = Function(
    "complete",
    "Writes a finished job's results, errors and summary to outputs/ and publishes the notification",
    memory_mb=1024,
    timeout_seconds=15 * 60,
    # It writes results.jsonl and errors.jsonl to /tmp before uploading them.
    ephemeral_storage_mb=10240,
    asset=TABLES_ASSET,  # it writes a table job's results.parquet
)
WEBHOOK = Function(
    "webhook",
    "Receives OpenAI's signed batch webhooks and looks at the batch at once (the schedule is the safety net)",
    memory_mb=512,
    timeout_seconds=60,
    # Its URL is open to anyone (OpenAI cannot sign AWS requests): a flood of anonymous requests gets
    # these few executions and throttles beyond them, never the account's concurrency that the other
    # functions (and the account's other workloads) need. OpenAI retries a throttled delivery.
    reserved_concurrency=5,
    # It looks at a batch without the watchdog (look_at_batch(watchdog=False)) and hands a finished job
    # to completion: it never reads an input or writes an output, so never a table.
    asset=NO_TABLES_ASSET,
)
REALTIME = Function(
    "realtime",
    "Runs chunks of a real-time batch's requests on the providers' real-time APIs",
    memory_mb=1024,
    # One message's chunk of requests, run at once per provider: minutes at most (the realtime queue's
    # visibility timeout is six times this).
    timeout_seconds=3 * 60,
    # Its files are under work/; it ends a batch without the watchdog and hands the job to completion,
    # which writes the outputs. It scales out (up to realtime_invocations at once), each new invocation a
    # cold start: the smaller asset serves it best.
    asset=NO_TABLES_ASSET,
)
FUNCTIONS: Mapping[str, Function] = {f.name: f for f in (SUBMIT, POLL, COMPLETE, WEBHOOK, REALTIME)}

# Lambda's retries of a failed asynchronous submit (an upload's S3 event) before the event goes to the
# submit dead-letter queue.
SUBMIT_RETRY_ATTEMPTS = 2


# -- queues -----------------------------------------------------------------------------------------

# AWS's guidance for SQS event sources: a visibility timeout of at least six times the function's
# timeout (plus any batching window), so a message is not redelivered while an invocation still works
# on it, and a throttled invocation's retries fit in it.
VISIBILITY_TIMEOUT_FACTOR = 6
DLQ_RETENTION_DAYS = 14


@dataclass(frozen=True)
class Queue:
    id: str  # the construct id, and the local queue's name after "batchdrop-"
    consumer: Function | None = None  # the function an event source runs on its messages
    batch_size: int = 1  # messages per invocation
    # The event source reads the handler's partial batch response (only the failed messages come back).
    report_failures: bool = False
    dead_letter: Queue | None = None
    max_receives: int | None = None  # receives before a message goes to the dead-letter queue
    retention_days: int | None = None  # None: SQS's default (4 days)
    url_env: str | None = None  # the variable that gives the functions its URL

    @property
    def visibility_timeout_seconds(self) -> int | None:
        """The deployed visibility timeout: AWS's guidance for the consumer's timeout."""
        return None if self.consumer is None else self.consumer.timeout_seconds * VISIBILITY_TIMEOUT_FACTOR


COMPLETION_DLQ = Queue("CompletionDeadLetters", retention_days=DLQ_RETENTION_DAYS)
COMPLETION = Queue(
    "Completion",
    # One job per invocation, so a large job cannot time out its neighbours; an error fails the
    # invocation and SQS delivers the message again, then to the dead-letter queue (and an alarm).
    consumer=COMPLETE,
    batch_size=1,
    dead_letter=COMPLETION_DLQ,
    max_receives=3,
    url_env=config.ENV_COMPLETION_QUEUE_URL,
)
SEGMENTS_DLQ = Queue("SegmentsDeadLetters", retention_days=DLQ_RETENTION_DAYS)
# The next segment of a large file, handed from one submit invocation to the next (and a stalled
# submission, handed back by the poll).
SEGMENTS = Queue(
    "Segments",
    consumer=SUBMIT,
    batch_size=1,
    dead_letter=SEGMENTS_DLQ,
    max_receives=3,
    url_env=config.ENV_SUBMIT_QUEUE_URL,
)
REALTIME_DLQ = Queue("RealtimeDeadLetters", retention_days=DLQ_RETENTION_DAYS)
# Chunks of a real-time batch's requests, sent by submit and complete, run by the realtime function.
REALTIME_CHUNKS = Queue(
    "Realtime",
    consumer=REALTIME,
    # The most SQS gives without a batching window: each message is a chunk, and the function answers
    # which chunks failed, so one chunk's failure sends back only that chunk. No batching window: a
    # real-time chunk should not wait for company.
    batch_size=10,
    report_failures=True,
    dead_letter=REALTIME_DLQ,
    # A chunk comes back whenever its invocation reports it failed (cut short by the invocation's time
    # as a provider's 429s slow the lane, or still run by another invocation) or dies with it. Rate
    # limits pass, so a chunk gets more receives than a completion; past this many it goes to the
    # dead-letter queue (and an alarm) instead of coming back forever.
    max_receives=5,
    url_env=config.ENV_REALTIME_QUEUE_URL,
)
# Uploads whose submit invocation failed after Lambda's retries (the on-failure destination of its
# asynchronous invocations).
SUBMIT_DLQ = Queue("SubmitDeadLetters", retention_days=DLQ_RETENTION_DAYS)
QUEUES: Mapping[str, Queue] = {
    q.id: q for q in (COMPLETION_DLQ, COMPLETION, SEGMENTS_DLQ, SEGMENTS, REALTIME_DLQ, REALTIME_CHUNKS, SUBMIT_DLQ)
}


# -- the job table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    name: str
    type: str  # DynamoDB's attribute type: "S" or "N"


@dataclass(frozen=True)
class Index:
    name: str
    partition: Key
    sort: Key
    projection: str  # DynamoDB's ProjectionType


# One item per job and per provider batch (batchdrop.adapters.store writes them).
TABLE_PARTITION_KEY = Key("pk", "S")
TABLE_SORT_KEY = Key("sk", "S")
TABLE_TTL_ATTRIBUTE = "expires_at"
TABLE_BILLING_MODE = "PAY_PER_REQUEST"
# Only items that need a look carry DUE_PK/DUE_SK, so the index holds just the due work: the poll
# function queries it instead of scanning. ALL: poll needs the whole batch item.
DUE = Index(config.DUE_INDEX, Key(config.DUE_PK, "S"), Key(config.DUE_SK, "N"), "ALL")
TABLE_INDEXES = (DUE,)

# The response cache (docs/cache.md): one item per answer, keyed by its request's hash
# (batchdrop.adapters.cache), expired by DynamoDB's TTL. A table of its own, so that a million lookups
# never share a partition's throughput with the jobs' writes, and its cost shows apart.
CACHE_PARTITION_KEY = Key("h", "S")
CACHE_TTL_ATTRIBUTE = "expires_at"
CACHE_BILLING_MODE = "PAY_PER_REQUEST"


# -- what runs the functions ------------------------------------------------------------------------

UPLOAD_EVENTS = ("s3:ObjectCreated:*",)


def upload_filters() -> list[dict[str, str]]:
    """The notification filters that run submit: every new input file (inputs/ and a JSONL suffix),
    every cancel request (cancel/<job_id>) and every retry request (retry/<job_id>), the last two for
    users with only S3 access; nothing else. Each is a mapping of S3's filter rule names (prefix,
    suffix) to values."""
    inputs = [{"prefix": config.INPUT_PREFIX, "suffix": suffix} for suffix in sorted(config.INPUT_SUFFIXES)]
    return [*inputs, {"prefix": config.CANCEL_PREFIX}, {"prefix": config.RETRY_PREFIX}]


# Bedrock publishes every job state change to the default event bus; a rule sends them to the poll.
BEDROCK_RULE_PATTERN: Mapping[str, list[str]] = {
    "source": ["aws.bedrock"],
    "detail-type": ["Batch Inference Job State Change"],
}
BEDROCK_RULE_TARGET = POLL
# The schedule runs the poll every poll_rate_minutes (a deployment setting; cdk.json's default).
SCHEDULE_TARGET = POLL


# -- the functions' environment ---------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What the functions are told about the stack's resources (names, ARNs, URLs; CDK tokens in infra/)."""

    bucket: str
    table: str
    topic_arn: str
    queue_urls: Mapping[str, str]  # by Queue.id, every queue with a url_env
    cache_table: str


@dataclass(frozen=True)
class Options:
    """The deployment's settings the functions read."""

    on_invalid: str
    max_attempts: int
    providers: tuple[str, ...]
    # Per provider, {WHAT: value} set as BATCHDROP_<NAME>_<WHAT> (None: not set).
    provider_values: Mapping[str, Mapping[str, str | None]]
    lanes: Mapping[str, str]  # the real-time lane's settings, from lane_environment
    spending: Mapping[str, str] = field(default_factory=dict)  # the cache's and budgets', from spending_environment
    log_level: str = "INFO"
    tracing: bool = False


def environment(resources: Resources, options: Options) -> dict[str, str]:
    """What batchdrop.config.Settings.from_env reads, plus Powertools'. Secrets go by ARN only."""
    env = {
        config.ENV_BUCKET: resources.bucket,
        config.ENV_TABLE: resources.table,
        config.ENV_CACHE_TABLE: resources.cache_table,
        config.ENV_TOPIC_ARN: resources.topic_arn,
        **{q.url_env: resources.queue_urls[q.id] for q in QUEUES.values() if q.url_env},
        config.ENV_ON_INVALID: options.on_invalid,
        config.ENV_MAX_ATTEMPTS: str(options.max_attempts),
        config.ENV_PROVIDERS: ",".join(options.providers),
        "POWERTOOLS_SERVICE_NAME": SERVICE,
        "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        "POWERTOOLS_LOG_LEVEL": options.log_level,
        # Handler responses can hold request data; traces carry timings, not content.
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
        "POWERTOOLS_TRACE_DISABLED": "false" if options.tracing else "true",
        "MALLOC_ARENA_MAX": MALLOC_ARENA_MAX,
        **options.lanes,
        **options.spending,
    }
    for provider in options.providers:
        env.update(provider_env(provider, options.provider_values.get(provider, {})))
    return env


def lane_environment(
    *,
    lane: str,
    realtime_below: int,
    min_batch_window_seconds: float,
    realtime_chunk: int,
    realtime_concurrency: int,
    realtime_invocations: int,
    escalation_margin_seconds: float,
    deadline: str | None = None,
    prefix_defaults: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The real-time lane's settings, every one set, except a deadline and prefix defaults not given."""
    env = {
        config.ENV_LANE: lane,
        config.ENV_REALTIME_BELOW: str(realtime_below),
        config.ENV_MIN_BATCH_WINDOW: seconds(min_batch_window_seconds),
        config.ENV_REALTIME_CHUNK: str(realtime_chunk),
        config.ENV_REALTIME_CONCURRENCY: str(realtime_concurrency),
        config.ENV_REALTIME_INVOCATIONS: str(realtime_invocations),
        config.ENV_ESCALATION_MARGIN: seconds(escalation_margin_seconds),
    }
    if deadline is not None:
        env[config.ENV_DEADLINE] = deadline
    if prefix_defaults:
        env[config.ENV_PREFIX_DEFAULTS] = json.dumps(prefix_defaults, separators=(",", ":"), sort_keys=True)
    return env


def spending_environment(
    *,
    cache: str = config.CACHE_OFF,
    cache_ttl_seconds: float = config.DEFAULT_CACHE_TTL_SECONDS,
    budget_usd: float | None = None,
    budget_policy: str = config.BUDGET_REFUSE,
    monthly_budget_usd: float | None = None,
) -> dict[str, str]:
    """The response cache's and the budgets' stack-wide settings: the cache's mode and TTL and the budget
    policy always, a budget and a monthly cap only when given."""
    env = {
        config.ENV_CACHE: cache,
        config.ENV_CACHE_TTL: seconds(cache_ttl_seconds),
        config.ENV_BUDGET_POLICY: budget_policy,
    }
    if budget_usd is not None:
        env[config.ENV_BUDGET_USD] = repr(float(budget_usd))
    if monthly_budget_usd is not None:
        env[config.ENV_MONTHLY_BUDGET_USD] = repr(float(monthly_budget_usd))
    return env


def seconds(value: float) -> str:
    """A duration in seconds as batchdrop.config.parse_duration reads it: "3600", or "0.5"."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def secret_name(stack_name: str, provider: str) -> str:
    """The Secrets Manager name of a provider's API key: `batchdrop/openai-api-key` for the default stack."""
    return f"{stack_name.lower()}/{provider}-api-key"


def webhook_secret_name(stack_name: str) -> str:
    """The Secrets Manager name of OpenAI's webhook signing secret."""
    return f"{stack_name.lower()}/openai-webhook-secret"
