"""What a local run would cost on AWS: every call the functions make, counted and priced.

A `Meter`, while installed (`metering`), registers botocore handlers on every client
`batchdrop.adapters.aws.client` makes and counts each call by service, operation and function, with
what its price depends on (DynamoDB request units, the S3 request class and bytes stored, SQS and SNS
64 KB chunks). Only the handlers' own calls count: the dispatcher wraps each handler call in
`invocation`, which marks the thread (and the threads it hands work to) as that function's; the
local stack's calls (creating resources, receiving the queues' messages for the event sources,
downloading the outputs) run outside it. What the event sources and the platform add is priced from
each invocation: its duration and memory (Lambda), the SQS requests of an event source mapping,
Lambda's own log lines.

`Bill` turns the counts into dollars with `batchdrop.local.aws_prices`, per service, operation and
function, and per million requests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchdrop import blueprint, config
from batchdrop.adapters import aws
from batchdrop.local import aws_prices as p

# -- what a call costs ------------------------------------------------------------------------------


def item_size(item: Mapping[str, Any]) -> int:
    """An item's size as DynamoDB bills it, from its wire form ({"name": {"S": "..."}}): the UTF-8 length
    of each attribute name plus its value's size (https://docs.aws.amazon.com/amazondynamodb/latest/
    developerguide/CapacityUnitCalculations.html)."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def value_size(value: Mapping[str, Any]) -> int:
    kind, inner = next(iter(value.items()))
    if kind == "S":
        return len(str(inner).encode())
    if kind == "B":
        return len(inner)
    if kind == "N":
        # About one byte per two significant digits, plus one.
        digits = str(inner).lstrip("-").replace(".", "").strip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in inner)
    if kind == "NS":
        return sum(value_size({"N": n}) for n in inner)
    if kind == "BS":
        return sum(len(b) for b in inner)
    if kind == "L":
        # Three bytes for the list, one per element.
        return 3 + sum(1 + value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in inner.items())
    return 0


def index_write_units(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> int:
    """Write units a base-table write costs in the sparse `due` index (projection ALL, so every change to
    an indexed item is written there): an item entering or leaving it is one write, one whose index key
    changes is a delete and a put, and an item outside it before and after costs nothing."""
    keys = (blueprint.DUE.partition.name, blueprint.DUE.sort.name)

    def indexed(item: Mapping[str, Any] | None) -> bool:
        return item is not None and all(k in item for k in keys)

    was, now = indexed(before), indexed(after)
    if not was and not now:
        return 0
    if was and not now:
        return p.write_units(item_size(before or {}))
    if now and not was:
        return p.write_units(item_size(after or {}))
    before, after = before or {}, after or {}
    if any(before.get(k) != after.get(k) for k in keys):
        return p.write_units(item_size(before)) + p.write_units(item_size(after))
    return p.write_units(max(item_size(before), item_size(after)))


def body_size(body: Any) -> int:
    """The bytes of a request body botocore is given: bytes, s3transfer's file chunks, or a file."""
    if body is None:
        return 0
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    if isinstance(body, str):
        return len(body.encode())
    with contextlib.suppress(TypeError):
        return len(body)
    with contextlib.suppress(Exception):
        at = body.tell()
        end = body.seek(0, 2)
        body.seek(at)
        return int(end - at)
    return 0


def attributes_size(attributes: Mapping[str, Any] | None) -> int:
    """SQS and SNS count each message attribute's name, type and value against the payload."""
    total = 0
    for name, value in (attributes or {}).items():
        total += len(name.encode()) + len(str(value.get("DataType", "")).encode())
        for key in ("StringValue", "BinaryValue"):
            if key in value:
                total += body_size(value[key])
    return total


# S3's request classes: PUT, COPY, POST and LIST requests are the first; DELETE is free; GET and every
# other request the second (https://aws.amazon.com/s3/pricing/, "Requests & data retrievals").
S3_TIER1 = {
    "PutObject",
    "CopyObject",
    "UploadPartCopy",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "ListObjects",
    "ListObjectsV2",
    "ListObjectVersions",
    "ListMultipartUploads",
    "ListParts",
    "RestoreObject",
}
S3_FREE = {"DeleteObject", "DeleteObjects", "AbortMultipartUpload"}
S3_STORED = {"PutObject", "UploadPart"}
# How long what batchdrop writes under work/ is stored: the bucket's lifecycle rule expires it after 30
# days. outputs/ is kept until the user deletes it; the bill counts its first month.
WORK_DAYS = 30
OUTPUT_DAYS = 30.4


@dataclass
class Usage:
    """One (service, operation, function)'s calls and what they bill."""

    calls: int = 0
    units: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bytes: int = 0  # written (S3 puts, SQS sends, SNS publishes) or read (S3 gets)


@dataclass
class Scope:
    """One invocation in progress: the function, and time spent on the meter's own look-ups."""

    function: str
    overhead: float = 0.0


@dataclass
class Run:
    """One invocation, as Lambda bills it."""

    function: str
    trigger: str
    seconds: float
    ok: bool = True


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("batchdrop_bill_scope", default=None)
_meter: Meter | None = None


class Meter:
    """Counts the handlers' AWS calls while installed with `metering`."""

    def __init__(self, log_level: str = "INFO") -> None:
        self.usage: dict[tuple[str, str, str], Usage] = defaultdict(Usage)
        self.runs: list[Run] = []
        self.log_bytes: dict[str, int] = defaultdict(int)
        self.log_lines: dict[str, int] = defaultdict(int)
        self.metric_names: set[str] = set()
        self.log_level = log_level
        self._lock = threading.Lock()
        self._shadow: Any = None

    # -- the botocore handlers --------------------------------------------------------------------

    def register(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build", self._before)
        client.meta.events.register("after-call", self._after)

    def unregister(self, client: Any) -> None:
        client.meta.events.unregister("before-parameter-build", self._before)
        client.meta.events.unregister("after-call", self._after)

    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        scope = _scope.get()
        if scope is None:
            return
        service = model.service_model.service_name
        context["batchdrop_bill"] = {
            "params": params,
            "before": self._items_before(scope, service, model.name, params),
            # Measured now: once sent, a file-like body has been read to its end.
            "body": body_size(params.get("Body")) if service == "s3" else 0,
        }

    def _after(self, http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        scope = _scope.get()
        seen = context.get("batchdrop_bill")
        if scope is None or seen is None:
            return
        service, operation = model.service_model.service_name, model.name
        ok = http_response.status_code < 300
        usage = Usage()
        price = getattr(self, f"_price_{service.replace('-', '_')}", None)
        if price is None:
            usage.units["free"] += 1
        else:
            usage.bytes = seen["body"]
            price(scope, operation, seen["params"], parsed, ok, seen["before"], usage)
        with self._lock:
            total = self.usage[(service, operation, scope.function)]
            total.calls += 1
            total.bytes += usage.bytes
            for unit, quantity in usage.units.items():
                total.units[unit] += quantity

    # -- DynamoDB ---------------------------------------------------------------------------------

    def _items_before(self, scope: Scope, service: str, operation: str, params: dict[str, Any]) -> Any:
        """What a DynamoDB write replaces, read before it: its units depend on the larger of the item
        before and after (and moto's ConsumedCapacity is a constant, not the item's size)."""
        if service != "dynamodb":
            return None
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            return [self._shadow_get(scope, params["TableName"], self._key(params))]
        if operation == "TransactWriteItems":
            return [self._shadow_get(scope, *self._transact_key(entry)) for entry in params["TransactItems"]]
        return None

    @staticmethod
    def _key(params: Mapping[str, Any]) -> dict[str, Any]:
        if "Key" in params:
            return dict(params["Key"])
        names = (blueprint.TABLE_PARTITION_KEY.name, blueprint.TABLE_SORT_KEY.name)
        return {k: params["Item"][k] for k in names if k in params["Item"]}

    def _transact_key(self, entry: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        action = next(iter(entry.values()))
        return action["TableName"], self._key(action)

    def _shadow_get(self, scope: Scope, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """A consistent read through a client of our own (never counted), its time kept off the bill."""
        started = time.perf_counter()
        try:
            item: dict[str, Any] | None = self._shadow.get_item(TableName=table, Key=key, ConsistentRead=True).get(
                "Item"
            )
            return item
        finally:
            with self._lock:
                scope.overhead += time.perf_counter() - started

    def _price_dynamodb(
        self,
        scope: Scope,
        operation: str,
        params: dict[str, Any],
        parsed: dict[str, Any],
        ok: bool,
        before: list[dict[str, Any] | None] | None,
        usage: Usage,
    ) -> None:
        units = usage.units
        if operation == "GetItem":
            size = item_size(parsed.get("Item") or {})
            units["dynamodb.read_units"] += p.read_units(size, bool(params.get("ConsistentRead")))
        elif operation in ("Query", "Scan"):
            # Billed on the items read, summed before rounding to 4 KB; a filter does not lower it (our
            # one filtered scan is the operators' listing, which no function runs).
            size = sum(item_size(i) for i in parsed.get("Items") or [])
            units["dynamodb.read_units"] += p.read_units(size, bool(params.get("ConsistentRead")))
        elif operation in ("PutItem", "UpdateItem", "DeleteItem"):
            old = (before or [None])[0]
            if operation == "PutItem":
                new: dict[str, Any] | None = dict(params["Item"]) if ok else old
            elif operation == "DeleteItem":
                new = None if ok else old
            else:
                new = self._shadow_get(scope, params["TableName"], self._key(params)) if ok else old
            self._write(units, old, new, ok, transaction=False)
        elif operation == "TransactWriteItems":
            for entry, old in zip(params["TransactItems"], before or [], strict=False):
                kind = next(iter(entry))
                if not ok or kind == "ConditionCheck":
                    new = old
                elif kind == "Delete":
                    new = None
                elif kind == "Put":
                    new = dict(entry["Put"]["Item"])
                else:
                    new = self._shadow_get(scope, *self._transact_key(entry))
                self._write(units, old, new, ok and kind != "ConditionCheck", transaction=True)
        else:
            units["free"] += 1

    @staticmethod
    def _write(
        units: dict[str, float],
        old: dict[str, Any] | None,
        new: dict[str, Any] | None,
        applied: bool,
        transaction: bool,
    ) -> None:
        """A write's units: the larger of the item before and after, per KB started; a refused
        conditional write still costs the existing item's size (at least one unit) but touches no
        index; a transaction's writes cost twice (https://aws.amazon.com/dynamodb/pricing/on-demand/)."""
        size = max(item_size(old or {}), item_size(new or {}))
        units["dynamodb.write_units"] += p.write_units(size) * (2 if transaction else 1)
        if applied:
            units["dynamodb.write_units"] += index_write_units(old, new)

    # -- S3, SQS, SNS, Secrets Manager, Bedrock -----------------------------------------------------

    def _price_s3(
        self,
        scope: Scope,
        operation: str,
        params: dict[str, Any],
        parsed: dict[str, Any],
        ok: bool,
        before: Any,
        usage: Usage,
    ) -> None:
        if operation in S3_FREE:
            usage.units["free"] += 1
            return
        usage.units["s3.tier1" if operation in S3_TIER1 else "s3.tier2"] += 1
        if operation in S3_STORED and ok:
            # Stored for WORK_DAYS under work/ (the lifecycle rule), a month of outputs/ counted.
            work = str(params.get("Key", "")).startswith(config.WORK_PREFIX)
            days = WORK_DAYS if work else OUTPUT_DAYS
            unit = "s3.gb_months_work" if work else "s3.gb_months_outputs"
            usage.units[unit] += usage.bytes / p.GB * days * 24 / p.HOURS_PER_MONTH
        elif operation == "GetObject" and ok:
            usage.bytes = int(parsed.get("ContentLength") or 0)

    def _price_sqs(
        self,
        scope: Scope,
        operation: str,
        params: dict[str, Any],
        parsed: dict[str, Any],
        ok: bool,
        before: Any,
        usage: Usage,
    ) -> None:
        if operation == "SendMessage":
            size = body_size(params.get("MessageBody")) + attributes_size(params.get("MessageAttributes"))
        elif operation == "SendMessageBatch":
            size = sum(
                body_size(e.get("MessageBody")) + attributes_size(e.get("MessageAttributes"))
                for e in params.get("Entries", [])
            )
        else:
            size = 0
        usage.bytes = size
        usage.units["sqs.requests"] += p.chunks(size, p.SQS_CHUNK_BYTES)

    def _price_sns(
        self,
        scope: Scope,
        operation: str,
        params: dict[str, Any],
        parsed: dict[str, Any],
        ok: bool,
        before: Any,
        usage: Usage,
    ) -> None:
        size = body_size(params.get("Message")) + attributes_size(params.get("MessageAttributes"))
        usage.bytes = size
        usage.units["sns.publishes"] += p.chunks(size, p.SNS_CHUNK_BYTES)
        if operation == "Publish":
            # The topic is encrypted with a customer managed key: we assume SNS asks KMS for a data key
            # on every publish (no reuse), the most it can cost.
            usage.units["kms.requests"] += 1

    def _price_secretsmanager(
        self,
        scope: Scope,
        operation: str,
        params: dict[str, Any],
        parsed: dict[str, Any],
        ok: bool,
        before: Any,
        usage: Usage,
    ) -> None:
        usage.units["secretsmanager.calls"] += 1

    def end(self, scope: Scope, trigger: str, seconds: float, ok: bool) -> None:
        names, emf_bytes = _metrics_emitted()
        with self._lock:
            self.runs.append(Run(scope.function, trigger, seconds, ok))
            self.metric_names.update(names)
            # Powertools prints the invocation's metrics as one EMF line, ingested as a log.
            if emf_bytes:
                self.log_bytes[scope.function] += emf_bytes
                self.log_lines[scope.function] += 1

    # -- installing ---------------------------------------------------------------------------------

    def install(self) -> None:
        global _meter
        import boto3

        if _meter is not None:
            raise RuntimeError("a meter is already installed")
        # The same endpoint as the functions' clients (AWS_ENDPOINT_URL), never watched.
        self._shadow = boto3.session.Session().client("dynamodb", config=aws.RETRIES)
        _meter = self
        aws.watch(self.register)
        _carry_scope_into_pools(True)
        self._logs = _LogCounter(self)
        self._logs.attach()

    def uninstall(self) -> None:
        global _meter
        aws.unwatch(self.register)
        for client in list(aws._alive):
            with contextlib.suppress(Exception):
                self.unregister(client)
        _carry_scope_into_pools(False)
        self._logs.detach()
        _meter = None


@contextlib.contextmanager
def metering(meter: Meter | None = None) -> Iterator[Meter]:
    """Count the handlers' AWS calls while the block runs."""
    meter = meter or Meter()
    meter.install()
    try:
        yield meter
    finally:
        meter.uninstall()


def trigger_of(event: Mapping[str, Any]) -> str:
    """What invoked the function, as the bill prices it."""
    records = event.get("Records") or []
    if records and isinstance(records[0], Mapping):
        source = records[0].get("eventSource") or records[0].get("EventSource")
        if source == "aws:sqs":
            return "sqs"
        if source == "aws:s3":
            return "s3"
    if event.get("detail-type") == "Scheduled Event":
        return "schedule"
    if event.get("source") == "aws.bedrock":
        return "bedrock event"
    if "requestContext" in event:
        return "function url"
    return "direct"


@contextlib.contextmanager
def invocation(function: str, event: Mapping[str, Any]) -> Iterator[None]:
    """Around one handler call (the dispatcher's): its AWS calls count as `function`'s, and the
    invocation is billed. Does nothing when no meter is installed."""
    meter = _meter
    if meter is None:
        yield
        return
    scope = Scope(function)
    token = _scope.set(scope)
    started = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    finally:
        seconds = max(0.0, time.perf_counter() - started - scope.overhead)
        _scope.reset(token)
        meter.end(scope, trigger_of(event), seconds, ok)


def _metrics_emitted() -> tuple[set[str], int]:
    """The metrics the invocation recorded (the dispatcher clears them after), and the size of the
    EMF line Powertools would print for them."""
    try:
        from batchdrop.observability import metrics

        names = set(metrics.provider.metric_set)
        if not names:
            return set(), 0
        return names, len(orjson.dumps(metrics.serialize_metric_set())) + 1
    except Exception:  # the bill must never fail an invocation
        return set(), 0


# -- threads ----------------------------------------------------------------------------------------

_submit = concurrent.futures.ThreadPoolExecutor.submit


def _submit_in_context(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    return _submit(self, contextvars.copy_context().run, fn, *args, **kwargs)


def _carry_scope_into_pools(on: bool) -> None:
    """s3transfer uploads and downloads on a thread pool, and a pool's threads do not inherit the
    submitter's context: while a meter is installed, each task runs in a copy of it, so an upload's
    PutObject counts as the invocation's. (asyncio.to_thread already copies it.)"""
    concurrent.futures.ThreadPoolExecutor.submit = _submit_in_context if on else _submit  # type: ignore[method-assign]


# -- logs -------------------------------------------------------------------------------------------

# What Lambda itself writes per invocation: the START, END and REPORT lines (a REPORT line with its
# request id, durations and memory is about 170 bytes).
PLATFORM_LOG_BYTES = 66 + 52 + 170
PLATFORM_LOG_LINES = 3


class _LogCounter(logging.Handler):
    """Counts the bytes the functions log at the deployed level (INFO), formatted by Powertools as it
    prints them, while the local stack keeps printing only at its own level."""

    def __init__(self, meter: Meter) -> None:
        super().__init__(level=logging.getLevelName(meter.log_level))
        self.meter = meter
        self.logger = logging.getLogger(blueprint.SERVICE)
        self._saved: list[tuple[logging.Handler, int]] = []
        self._level = self.logger.level

    def attach(self) -> None:
        # Powertools takes the logger's first handler for its own: it must exist before ours.
        from batchdrop import observability  # noqa: F401

        shown = self.logger.getEffectiveLevel()
        for handler in self.logger.handlers:
            self._saved.append((handler, handler.level))
            handler.setLevel(max(handler.level, shown))
            if self.formatter is None:
                self.setFormatter(handler.formatter)
        self.logger.addHandler(self)
        self.logger.setLevel(min(shown, self.level))

    def detach(self) -> None:
        self.logger.removeHandler(self)
        for handler, level in self._saved:
            handler.setLevel(level)
        self.logger.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        scope = _scope.get()
        if scope is None:
            return
        try:
            size = len(self.format(record).encode()) + 1
        except Exception:
            return
        with self.meter._lock:
            self.meter.log_bytes[scope.function] += size
            self.meter.log_lines[scope.function] += 1


# -- the bill ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    service: str
    operation: str
    function: str
    calls: int
    units: Mapping[str, float]
    usd: float


@dataclass(frozen=True)
class FixedCost:
    what: str
    usd_per_month: float


@dataclass
class Bill:
    lines: list[Line]
    fixed: list[FixedCost]
    requests: int  # the requests of the run's files, the scale of "per million"
    invocations: int
    # Lambda duration as measured here, and as if every duration were CPU at Lambda's share of a core
    # (the memory over 1,769 MB): the two bounds of what the deployed functions would take.
    gb_seconds: float
    gb_seconds_cpu_bound: float
    log_bytes: int

    @property
    def total(self) -> float:
        return sum(line.usd for line in self.lines)

    def per_million(self, usd: float) -> float:
        return usd * 1e6 / self.requests if self.requests else 0.0

    def by(self, *fields: str) -> list[tuple[tuple[str, ...], int, float]]:
        """(key, calls, usd) grouped by the given Line fields, most expensive first."""
        groups: dict[tuple[str, ...], list[float]] = {}
        for line in self.lines:
            key = tuple(getattr(line, f) for f in fields)
            group = groups.setdefault(key, [0, 0.0])
            group[0] += line.calls
            group[1] += line.usd
        return sorted(((k, int(v[0]), v[1]) for k, v in groups.items()), key=lambda row: -row[2])

    @property
    def total_cpu_bound(self) -> float:
        """The total with Lambda's duration at its upper bound (`gb_seconds_cpu_bound`)."""
        measured = sum(line.usd for line in self.lines if (line.service, line.operation) == ("lambda", "duration"))
        return self.total - measured + price({"lambda.gb_seconds": self.gb_seconds_cpu_bound})

    @property
    def fixed_total(self) -> float:
        return sum(f.usd_per_month for f in self.fixed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prices_as_of": p.AS_OF,
            "requests": self.requests,
            "invocations": self.invocations,
            "usd": self.total,
            "usd_per_million_requests": self.per_million(self.total),
            "lambda_gb_seconds": self.gb_seconds,
            "lambda_gb_seconds_cpu_bound": self.gb_seconds_cpu_bound,
            "log_bytes": self.log_bytes,
            "lines": [
                {
                    "service": line.service,
                    "operation": line.operation,
                    "function": line.function,
                    "calls": line.calls,
                    "units": dict(line.units),
                    "usd": line.usd,
                }
                for line in self.lines
            ],
            "fixed_per_month": {f.what: f.usd_per_month for f in self.fixed},
        }


# Lambda's CPU share grows with memory: a full vCPU at 1,769 MB
# (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html).
FULL_VCPU_MB = 1769
# An SQS event source's requests for each batch it hands to the function: the ReceiveMessage that got
# it and the DeleteMessageBatch of the records that succeeded.
EVENT_SOURCE_REQUESTS = ("ReceiveMessage", "DeleteMessageBatch")
# Its idle polling: Lambda keeps five long polls (20 s) on a queue with no messages, about 648,000
# requests a month per queue (https://aws.amazon.com/blogs/compute/understanding-how-aws-lambda-scales-
# when-subscribed-to-amazon-sqs-queues/).
IDLE_POLLS_PER_MONTH = 5 * 3 * 60 * 24 * 30


# Storage is billed by the month, not by the call that wrote it: its own lines.
STORAGE = {
    "s3.gb_months_work": f"storage, work/ ({WORK_DAYS} days)",
    "s3.gb_months_outputs": "storage, outputs/ (first month)",
}


def price(units: Mapping[str, float]) -> float:
    return sum(p.PRICES[unit].usd * quantity for unit, quantity in units.items())


def bill(meter: Meter, requests: int, cpu_bound: bool = False, providers: tuple[str, ...] | None = None) -> Bill:
    """The meter's counts in dollars. `requests` scales the per-million figures; `cpu_bound` prices
    Lambda as if every measured second were CPU at Lambda's share of a core (an upper bound);
    `providers`, those deployed (their secrets), every one by default."""
    lines: list[Line] = []
    for (service, operation, function), usage in sorted(meter.usage.items()):
        units = {k: v for k, v in usage.units.items() if v and k not in STORAGE}
        lines.append(Line(service, operation, function, usage.calls, units, price(units)))
        for unit, what in STORAGE.items():
            if usage.units.get(unit):
                stored = {unit: usage.units[unit]}
                lines.append(Line(service, what, function, 0, stored, price(stored)))
    gb_s: dict[str, float] = defaultdict(float)
    gb_s_cpu: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    event_source: dict[str, int] = defaultdict(int)
    triggers: dict[tuple[str, str], int] = defaultdict(int)
    for run in meter.runs:
        memory = blueprint.FUNCTIONS[run.function].memory_mb if run.function in blueprint.FUNCTIONS else 1024
        gb_s[run.function] += p.lambda_gb_seconds(run.seconds, memory)
        gb_s_cpu[run.function] += p.lambda_gb_seconds(run.seconds * FULL_VCPU_MB / memory, memory)
        count[run.function] += 1
        triggers[(run.function, run.trigger)] += 1
        if run.trigger == "sqs":
            event_source[run.function] += 1
    for function in sorted(count):
        seconds = gb_s_cpu[function] if cpu_bound else gb_s[function]
        units = {"lambda.gb_seconds": seconds}
        lines.append(Line("lambda", "duration", function, count[function], units, price(units)))
        units = {"lambda.requests": float(count[function])}
        lines.append(Line("lambda", "requests", function, count[function], units, price(units)))
        ingested = meter.log_bytes.get(function, 0) + PLATFORM_LOG_BYTES * count[function]
        units = {"logs.gb_ingested": ingested / p.GB}
        calls = meter.log_lines.get(function, 0) + PLATFORM_LOG_LINES * count[function]
        lines.append(Line("logs", "ingestion", function, calls, units, price(units)))
    for function, batches in sorted(event_source.items()):
        for operation in EVENT_SOURCE_REQUESTS:
            units = {"sqs.requests": float(batches)}
            lines.append(Line("sqs", f"{operation} (event source)", function, batches, units, price(units)))
    for (function, trigger), n in sorted(triggers.items()):
        if trigger in ("schedule", "bedrock event"):
            units = {"events.free": float(n)}
            lines.append(Line("events", trigger, function, n, units, 0.0))
    return Bill(
        lines=lines,
        fixed=fixed_costs(meter, providers),
        requests=requests,
        invocations=len(meter.runs),
        gb_seconds=sum(gb_s.values()),
        gb_seconds_cpu_bound=sum(gb_s_cpu.values()),
        log_bytes=sum(meter.log_bytes.values()) + PLATFORM_LOG_BYTES * len(meter.runs),
    )


def fixed_costs(meter: Meter, providers: tuple[str, ...] | None = None) -> list[FixedCost]:
    """What the deployed stack costs each month whatever it runs (the default settings)."""
    from batchdrop.providers import SPECS

    providers = providers if providers is not None else tuple(SPECS)
    secrets = sum(1 for name in providers if SPECS[name].needs_key) + (1 if "openai" in providers else 0)
    dead_letters = sum(1 for q in blueprint.QUEUES.values() if q.id.endswith("DeadLetters"))
    # One per dead-letter queue and per function, the poll's throttles, stuck batches, timed-out jobs
    # (infra/constructs/monitoring.py).
    alarms = dead_letters + len(blueprint.FUNCTIONS) + 3
    event_sources = sum(1 for q in blueprint.QUEUES.values() if q.consumer is not None)
    metrics = len(deployed_metrics() | meter.metric_names)
    return [
        FixedCost("KMS key of the notification topic", p.KMS_KEY_MONTH),
        FixedCost(f"Secrets Manager, {secrets} secrets (the providers' keys, the webhook's)", secrets * p.SECRET_MONTH),
        FixedCost(f"CloudWatch, {alarms} alarms", alarms * p.ALARM_MONTH),
        FixedCost("CloudWatch dashboard (free within an account's first three)", p.DASHBOARD_MONTH),
        FixedCost(f"CloudWatch, {metrics} custom metrics (service dimension)", metrics * p.CUSTOM_METRIC_MONTH),
        FixedCost(
            f"SQS, the idle long polls of {event_sources} event sources",
            event_sources * IDLE_POLLS_PER_MONTH * p.PRICES["sqs.requests"].usd,
        ),
        FixedCost(f"the schedule's idle polls, every {POLL_RATE_MINUTES} minutes", idle_polls_per_month(meter)),
        FixedCost("DynamoDB storage and point-in-time recovery (per GB of table; KBs per job)", 0.0),
    ]


# cdk.json's poll_rate_minutes: the schedule runs the poll this often whether or not anything is due.
POLL_RATE_MINUTES = 5
IDLE_POLL_SECONDS = 0.05  # when the run measured no poll


def idle_polls_per_month(meter: Meter) -> float:
    """A month of polls with nothing due: each an invocation (the run's quickest poll), one Query of the
    empty index (half a read unit, eventually consistent) and Lambda's log lines."""
    polls = 30 * 24 * 60 / POLL_RATE_MINUTES
    seconds = min((r.seconds for r in meter.runs if r.function == "poll"), default=IDLE_POLL_SECONDS)
    memory = blueprint.POLL.memory_mb
    each = price(
        {
            "lambda.requests": 1,
            "lambda.gb_seconds": p.lambda_gb_seconds(seconds, memory),
            "dynamodb.read_units": 0.5,
            "logs.gb_ingested": PLATFORM_LOG_BYTES / p.GB,
        }
    )
    return polls * each


def deployed_metrics() -> set[str]:
    """The metrics the functions emit (batchdrop.observability), each a custom metric once seen."""
    from batchdrop import observability

    return {getattr(observability, name) for name in observability.__all__ if name.isupper()}
