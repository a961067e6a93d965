"""The local dispatcher: delivers to the handlers the events AWS would, and is the schedule's clock.

- S3 notifications: moto's server puts them on an SQS queue; we drain it into the submit handler
  (as Lambda's asynchronous invocation would, retrying an invocation that raised).
- The schedule: each tick invokes the poll handler with an EventBridge "Scheduled Event".
- The completion queue: drained into the complete handler as Lambda's SQS event source mapping
  does (batches of records; the records the handler reports as failed are left for redelivery, and
  SQS's redrive policy parks a poison message in the dead-letter queue).
- The real-time queue: drained into the realtime handler as its event source does, batches of up to
  ten records, at most `StackOptions.realtime_invocations` invocations at once, each on its own thread
  (so the schedule keeps ticking while they run, as in AWS); the records reported as failed come back
  after the visibility timeout, and the redrive policy parks one that keeps failing.
- Bedrock's job state changes: the events the emulator's Bedrock puts on the default bus, matched
  against the deployed rule's pattern (`BEDROCK_RULE`) and delivered to the function it targets (poll).
"""

from __future__ import annotations

import functools
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from batchdrop import blueprint
from batchdrop.adapters import aws
from batchdrop.local import stack as s

Listener = Callable[[str, dict[str, Any]], None]

# The deployed EventBridge rule for Bedrock's job state changes (infra/constructs/bedrock.py,
# BedrockBatch.on_state_change): its event pattern, and the function it targets. The infra tests check
# the synthesized rule against these, so the local route cannot drift from the deployed one.
BEDROCK_RULE_PATTERN: dict[str, Any] = dict(blueprint.BEDROCK_RULE_PATTERN)
BEDROCK_RULE_TARGET = blueprint.BEDROCK_RULE_TARGET.name


def matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """EventBridge's match of an event against a pattern of exact values: each field of the pattern is
    in the event, with one of the listed values (a nested object is matched the same way, field by
    field). Content filters (prefix, numeric, exists) are not needed by our rules and never match."""
    for name, wanted in pattern.items():
        if name not in event:
            return False
        value = event[name]
        if isinstance(wanted, dict):
            if not isinstance(value, dict) or not matches(wanted, value):
                return False
            continue
        values = value if isinstance(value, list) else [value]
        if not any(v == w for v in values for w in wanted if not isinstance(w, dict)):
            return False
    return True


class LocalContext:
    """The parts of Lambda's context object that Powertools and our handlers read."""

    def __init__(self, function_name: str, timeout_seconds: int | None = None) -> None:
        self.function_name = f"batchdrop-{function_name}"
        self.function_version = "$LATEST"
        spec = blueprint.FUNCTIONS.get(function_name)
        self.memory_limit_in_mb = spec.memory_mb if spec else 1024
        if timeout_seconds is None:
            timeout_seconds = spec.timeout_seconds if spec else 900
        self.invoked_function_arn = f"arn:aws:lambda:{s.REGION}:123456789012:function:{self.function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class Invocation:
    function: str
    ok: bool
    result: Any = None
    error: str | None = None
    seconds: float = 0.0  # how long the handler ran (wall clock), as Lambda bills it


# The checkpoints of the response cache's table calls (batchdrop.adapters.cache).
CACHE_CALLS = ("cache_lookup", "cache_write")


class CacheFault(Exception):
    """A call to the response cache's table that failed (Chaos.cache_error_rate)."""


class LambdaCrash(BaseException):
    """An invocation killed at a step boundary (timeout, out of memory): no `except Exception` in
    our code sees it, so nothing is cleaned up, exactly as when Lambda stops a function."""


@dataclass
class Chaos:
    """Faults the dispatcher injects, on top of the emulator's provider faults."""

    duplicate_events: int = 1  # every S3 event delivered this many times, the first two at once
    overlapping_polls: int = 1  # poll invocations started together on each tick
    crash_rate: float = 0.0  # chance that an invocation dies at each step boundary it passes
    # On each tick, the chance that each unfinished job is canceled, at the same moment as the polls
    # (so cancels race hand-overs, as `batchdrop cancel` or a `cancel/` file can).
    cancel_rate: float = 0.0
    # The chance that each call to the response cache's table fails, as a throttled or unreachable table
    # does past botocore's retries: the lookups are sent as misses, the writes are lost (docs/cache.md).
    cache_error_rate: float = 0.0
    seed: int = 0


@dataclass
class Dispatcher:
    stack: s.LocalStack
    chaos: Chaos = field(default_factory=Chaos)
    listeners: list[Listener] = field(default_factory=list)
    invocations: list[Invocation] = field(default_factory=list)
    crashes: dict[str, int] = field(default_factory=dict)
    # The invocations the chaos killed, by function (a real-time one loses the answers it had not written).
    crashed: dict[str, int] = field(default_factory=dict)
    # The cache calls the chaos failed, by step.
    cache_faults: dict[str, int] = field(default_factory=dict)
    _webhook_server: Any = None
    _realtime: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.chaos.seed)
        self._lock = threading.Lock()
        if self.chaos.crash_rate > 0 or self.chaos.cache_error_rate > 0:
            self._wire_crashes()

    def _wire_crashes(self) -> None:
        """Give the handlers Deps whose checkpoints may kill the invocation (dependency injection)."""
        from batchdrop.config import Settings
        from batchdrop.handlers import use_deps
        from batchdrop.pipeline import Deps

        deps = Deps.from_settings(Settings.from_env())

        def checkpoint(step: str) -> None:
            with self._lock:
                crash = self._rng.random() < self.chaos.crash_rate
                if crash:
                    self.crashes[step] = self.crashes.get(step, 0) + 1
                fault = step in CACHE_CALLS and self._rng.random() < self.chaos.cache_error_rate
                if fault:
                    self.cache_faults[step] = self.cache_faults.get(step, 0) + 1
            if crash:
                raise LambdaCrash(step)
            if fault:
                raise CacheFault(f"chaos: the cache table did not answer ({step})")

        deps.checkpoint = checkpoint
        use_deps(lambda: deps)

    def close(self) -> None:
        from batchdrop.handlers import use_deps

        for thread in self._realtime:
            thread.join(timeout=60)
        self._realtime.clear()
        use_deps(None)
        if self._webhook_server is not None:
            self._webhook_server.shutdown()
            self._webhook_server.server_close()
            self._webhook_server = None

    def start_webhooks(self) -> str:
        """Serve the webhook function's URL locally and have the emulator send its webhooks there.

        Each POST becomes the event a Lambda function URL delivers (payload format 2.0)."""
        from werkzeug.serving import make_server
        from werkzeug.wrappers import Request, Response

        from batchdrop.handlers.webhook import handler

        @Request.application
        def app(request: Request) -> Response:
            event = {
                "version": "2.0",
                "rawPath": request.path,
                "headers": dict(request.headers.items()),
                "body": request.get_data().decode(),
                "isBase64Encoded": False,
                "requestContext": {"http": {"method": request.method, "path": request.path}},
            }
            invocation = self._invoke("webhook", handler, event)
            if not invocation.ok:
                return Response("internal error", status=500)
            out = invocation.result
            return Response(out.get("body", ""), status=out.get("statusCode", 200))

        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._webhook_server = server
        url = f"http://127.0.0.1:{server.server_port}/"
        self.stack.emulator.openai.webhook_url = url
        return url

    # -- the three event sources ----------------------------------------------------------------

    def deliver_uploads(self) -> int:
        """Drain the S3 notification queue into the submit handler; returns events delivered."""
        from batchdrop.handlers.submit import handler

        delivered = self.deliver_segments()
        for message in self._receive(s.S3_EVENTS_QUEUE):
            event = orjson.loads(message["Body"])
            copies = max(1, self.chaos.duplicate_events)
            # S3 delivers at least once: duplicates, the first two of them at the same moment.
            deliver = functools.partial(self._invoke, "submit", handler, event)
            outcomes = self._parallel([deliver] * min(2, copies))
            outcomes += [self._invoke("submit", handler, event) for _ in range(copies - 2)]
            # The copies are one message here: it is done once one of them is (a retry of a copy that
            # failed would find the job that another copy submitted).
            if any(o.ok for o in outcomes):
                self._delete(s.S3_EVENTS_QUEUE, message)
            # A failed invocation stays on the queue and comes back, as Lambda retries it.
            delivered += 1
        return delivered

    def deliver_segments(self) -> int:
        """The segments queue into the submit handler, as Lambda's SQS event source would."""
        from batchdrop.handlers.submit import handler

        return self._deliver(blueprint.SEGMENTS, handler)

    def _deliver(self, queue: blueprint.Queue, handler: Callable[[dict[str, Any], Any], Any]) -> int:
        """What the deployed event source does with the queue's waiting messages: hand them to its
        consumer in batches of its size, then delete what the invocation took (all of a batch when it
        succeeds, unless it reports some failed; none when it fails). Returns the messages handed out."""
        assert queue.consumer is not None
        name = s.queue_name(queue)
        messages = self._receive(name, attributes=True)
        for batch in (messages[i : i + queue.batch_size] for i in range(0, len(messages), queue.batch_size)):
            event = {"Records": [self._sqs_record(m, name) for m in batch]}
            invocation = self._invoke(queue.consumer.name, handler, event)
            self._settle(name, queue, batch, invocation)
        return len(messages)

    def _settle(self, name: str, queue: blueprint.Queue, batch: list[dict[str, Any]], invocation: Invocation) -> None:
        failed: set[str] = set()
        if not invocation.ok:
            failed = {m["MessageId"] for m in batch}
        elif queue.report_failures and isinstance(invocation.result, dict):
            failed = {f["itemIdentifier"] for f in invocation.result.get("batchItemFailures", [])}
        for message in batch:
            if message["MessageId"] not in failed:
                self._delete(name, message)

    def _parallel(self, calls: list[Callable[[], Invocation]]) -> list[Invocation]:
        if len(calls) == 1:
            return [calls[0]()]
        results: list[Invocation | None] = [None] * len(calls)

        def run(i: int) -> None:
            results[i] = calls[i]()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [r for r in results if r is not None]

    def tick(self) -> Invocation:
        """One scheduled poll; with overlapping_polls > 1, that many at the same moment. Then the Bedrock
        state changes since the last tick, through the deployed rule's route, as the default bus sends
        them alongside the schedule."""
        calls = [self._poll_once] * max(1, self.chaos.overlapping_polls)
        if self.chaos.cancel_rate > 0:
            calls.append(self._cancel_some)
        invocations = self._parallel(calls)
        if self.stack.options.external_emulator is None:
            self.deliver_bedrock_events()
        return invocations[0]

    def _cancel_some(self) -> Invocation:
        """Cancel each unfinished job with the chaos' cancel rate (what `batchdrop cancel` does)."""
        from batchdrop.adapters.store import JobStore
        from batchdrop.cancel import CancelError, request_cancel
        from batchdrop.models import FINAL_JOB_STATES

        store = JobStore(s.TABLE)
        canceled = []
        for job in store.list_jobs(limit=10_000):
            if job["status"] in FINAL_JOB_STATES or job.get("cancel_requested"):
                continue
            with self._lock:
                draw = self._rng.random()
            if draw < self.chaos.cancel_rate:
                try:
                    request_cancel(store, job["job_id"], time.time())
                    canceled.append(job["job_id"])
                except CancelError:
                    continue  # it moved on meanwhile
        return Invocation("cancel", True, canceled)

    def _poll_once(self) -> Invocation:
        from batchdrop.handlers.poll import handler

        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": now,
            "region": s.REGION,
            "resources": [f"arn:aws:events:{s.REGION}:123456789012:rule/batchdrop-poll"],
            "detail": {},
        }
        return self._invoke("poll", handler, event)

    def deliver_completions(self) -> int:
        from batchdrop.handlers.complete import handler

        return self._deliver(blueprint.COMPLETION, handler)

    def deliver_realtime(self, wait: bool = False) -> int:
        """Start realtime invocations for the chunks waiting on the real-time queue, up to the event
        source's cap on concurrent invocations; returns the messages handed out. `wait`: return only
        once the invocations started have ended."""
        from batchdrop.handlers.realtime import handler

        self._realtime = [t for t in self._realtime if t.is_alive()]
        handed = 0
        while len(self._realtime) < max(1, self.stack.options.realtime_invocations):
            # Visible again after the queue's visibility timeout if the invocation reports it failed
            # (or dies): short here, as the local clock runs fast (LocalStack.visibility_timeout).
            messages = self._receive(s.REALTIME_QUEUE, attributes=True, limit=blueprint.REALTIME_CHUNKS.batch_size)
            if not messages:
                break
            handed += len(messages)
            thread = threading.Thread(target=self._run_realtime, args=(handler, messages), daemon=True)
            thread.start()
            self._realtime.append(thread)
        if wait:
            for thread in self._realtime:
                thread.join()
        return handed

    def realtime_busy(self) -> bool:
        return any(t.is_alive() for t in self._realtime)

    def _run_realtime(self, handler: Callable[[dict[str, Any], Any], Any], messages: list[dict[str, Any]]) -> None:
        event = {"Records": [self._sqs_record(msg, s.REALTIME_QUEUE) for msg in messages]}
        invocation = self._invoke("realtime", handler, event, timeout_seconds=self.stack.options.realtime_timeout)
        self._settle(s.REALTIME_QUEUE, blueprint.REALTIME_CHUNKS, messages, invocation)

    def deliver_bedrock_events(self) -> int:
        """The Bedrock job state changes since the last call, each delivered to the rule's target when
        it matches the rule's pattern, as EventBridge's default bus does; returns events delivered."""
        from batchdrop.handlers.poll import handler

        if "bedrock" not in self.stack.options.providers:
            return 0
        delivered = 0
        for event in self.stack.emulator.bedrock.state_changes():
            if matches(BEDROCK_RULE_PATTERN, event):
                self._invoke(BEDROCK_RULE_TARGET, handler, event)
                delivered += 1
        return delivered

    def notifications(self) -> list[dict[str, Any]]:
        """Drain the SNS capture queue: each message's event, attributes and parsed body."""
        out = []
        for message in self._receive(s.NOTIFICATIONS_QUEUE, attributes=True):
            attrs = {k: v.get("StringValue") for k, v in (message.get("MessageAttributes") or {}).items()}
            out.append({"attributes": attrs, "message": orjson.loads(message["Body"])})
            self._delete(s.NOTIFICATIONS_QUEUE, message)
        return out

    # -- plumbing -------------------------------------------------------------------------------

    def _invoke(
        self,
        function: str,
        handler: Callable[[dict[str, Any], Any], Any],
        event: dict[str, Any],
        timeout_seconds: int | None = None,
    ) -> Invocation:
        from batchdrop.local import bill

        started = time.perf_counter()
        try:
            # Only the handler's own AWS calls go on the local bill (when one is counted).
            with bill.invocation(function, event):
                result = handler(event, LocalContext(function, timeout_seconds))
            invocation = Invocation(function, True, result)
        except (Exception, LambdaCrash) as exc:  # a failed invocation is an outcome, as in Lambda
            invocation = Invocation(function, False, error=f"{type(exc).__name__}: {exc}")
            if isinstance(exc, LambdaCrash):
                with self._lock:
                    self.crashed[function] = self.crashed.get(function, 0) + 1
        finally:
            elapsed = time.perf_counter() - started
            # Metrics are off locally, and Powertools then never empties its buffer (it prints it
            # once it holds 100 values): drop what each invocation recorded, as a flush would.
            from batchdrop.observability import metrics

            metrics.clear_metrics()
        invocation.seconds = elapsed
        with self._lock:
            self.invocations.append(invocation)
        for listener in self.listeners:
            listener(function, {"ok": invocation.ok, "result": invocation.result, "error": invocation.error})
        return invocation

    def _receive(self, queue: str, attributes: bool = False, limit: int = 10) -> list[dict[str, Any]]:
        """Up to `limit` messages, hidden for the queue's visibility timeout (LocalStack sets them)."""
        kwargs: dict[str, Any] = {
            "QueueUrl": self.stack.queue_urls[queue],
            "MaxNumberOfMessages": limit,
            "WaitTimeSeconds": 0,
        }
        if attributes:
            kwargs["MessageAttributeNames"] = ["All"]
            kwargs["AttributeNames"] = ["All"]
        messages: list[dict[str, Any]] = aws.client("sqs").receive_message(**kwargs).get("Messages", [])
        return messages

    def _delete(self, queue: str, message: dict[str, Any]) -> None:
        aws.client("sqs").delete_message(QueueUrl=self.stack.queue_urls[queue], ReceiptHandle=message["ReceiptHandle"])

    def _sqs_record(self, message: dict[str, Any], queue: str) -> dict[str, Any]:
        """The record Lambda's SQS event source builds from a received message."""
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.stack.queue_arn(queue),
            "awsRegion": s.REGION,
        }
