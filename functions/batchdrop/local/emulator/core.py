"""The emulator's core: the HTTP server, the routing table, the one lock, the clock, ids, fault injection,
and the batches every provider's plugin registers with it.

A plugin (`Plugin`) serves one provider's API: it declares the paths it owns, its routes, how it
authenticates and how it shapes an error, and writes the results of its batches when they end. It
keeps its own records (files, jobs) and uses the core only through the public methods below, under
`emulator.lock` wherever it reads or changes shared state.

State lives in memory behind the lock; the server runs on a background thread (`start`) or in the
foreground (`serve`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from batchdrop.local.emulator.batches import Batch, BatchRequest
from batchdrop.local.emulator.canned import draw_batch_expires, draw_request_outcome, hex_id, unit
from batchdrop.local.emulator.web import ClientError

logger = logging.getLogger(__name__)

# A route: the HTTP method, the path pattern (matched whole; its named groups are the handler's
# keyword arguments) and the handler.
Route = tuple[str, re.Pattern[str], Callable[..., Response]]


@dataclass(frozen=True)
class EmulatorKnobs:
    """How the emulated providers behave.

    latency: seconds from batch creation until the batch has ended (0: ended on the first retrieve).
    failure_rate: per request, the probability it fails; half of those are refused (OpenAI 400 /
        Anthropic ``invalid_request_error``), half are server errors (OpenAI 500 / Anthropic ``api_error``).
    expire_rate: per batch, the probability it expires at ``latency``; requests whose finish fraction is
        <= 0.5 completed, the rest expired.
    transient_error_rate: per HTTP request, the probability of a 429 or 500 answered before doing
        anything (the SDKs retry these).
    seed: seeds every draw.
    queue_limits: by provider, its queue quota in its own unit (OpenAI, Azure, Gemini: input tokens
        enqueued per model; Anthropic: requests waiting; Bedrock: jobs in progress per model), for each
        plugin whose own quota setting is unset; a provider not named has none.
    realtime_rpm: by provider, the requests per minute its real-time endpoints take (a sliding window
        of 60 s); past it they answer 429 with the provider's own rate-limit headers. A provider not
        named has no limit.
    realtime_latency: seconds each real-time call takes before it is answered.
    schema_mismatch_rate: per answer to a request that asks for a JSON Schema (a structured output), the
        probability the answer deliberately does not match it (batchdrop.local.emulator.schemas).
    cached_input_rate: per answer, the share of its prompt tokens reported as read from the provider's
        prompt cache, rounded down (`canned.cached_part`), in each provider's own usage fields: the same
        answer reports the same figures every time.
    """

    latency: float = 0.0
    failure_rate: float = 0.0
    expire_rate: float = 0.0
    transient_error_rate: float = 0.0
    seed: int = 0
    queue_limits: Mapping[str, int] = field(default_factory=dict)
    realtime_rpm: Mapping[str, int] = field(default_factory=dict)
    realtime_latency: float = 0.0
    schema_mismatch_rate: float = 0.0
    cached_input_rate: float = 0.0


@dataclass(frozen=True)
class Admission:
    """The real-time rate limit's answer to one call: whether it runs, and what the provider's
    rate-limit headers say (the limit per minute, what is left of it, and the seconds until a call is
    let through again, or until the window is whole again when calls are left)."""

    allowed: bool
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float = 0.0


class Plugin(ABC):
    """One provider's API, served by the emulator: a subclass per provider sets these and serves them.

    provider: its name, which its batches carry (`Batch.provider`) and the stats count by.
    prefixes: the paths it owns: errors on them (transient, authentication, unknown route) take its
        shape. The longest matching prefix wins; a path nobody owns belongs to the first plugin.
    aliases: the path prefixes it rewrites before routing, (from, to) (Azure OpenAI's ``/openai/``).
    creates: the paths of the calls that create a batch, where the core injects refused, failed and
        (if `loses_create_answers`) lost creates.
    request_id_header: the header the core puts each answer's request id in.
    """

    provider: str
    prefixes: tuple[str, ...]
    aliases: tuple[tuple[str, str], ...] = ()
    creates: re.Pattern[str]
    loses_create_answers = True
    request_id_header = "x-request-id"

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    @abstractmethod
    def routes(self) -> list[Route]: ...

    @abstractmethod
    def authorised(self, request: Request) -> bool: ...

    @abstractmethod
    def error(self, problem: ClientError, headers: dict[str, str] | None = None) -> Response:
        """The problem in the provider's error shape."""

    @abstractmethod
    def write_results(self, batch: Batch) -> None:
        """Called once a batch has ended with its outcomes drawn (never for a failed batch)."""

    def reach(self, base_url: str) -> list[tuple[str, str]]:
        """How a client points at this plugin, for the `batchdrop emulator` command: (what, how)."""
        return []

    def workers(self) -> list[Callable[[], None]]:
        """What runs on background threads once the emulator `start`s (each returns when it stops serving)."""
        return []

    def queue_limit(self, own: int | None) -> int | None:
        """The provider's queue quota: the plugin's own setting, else the knob's for its provider (None:
        no quota)."""
        return own if own is not None else self.emulator.knobs.queue_limits.get(self.provider)


class _QuietHandler(WSGIRequestHandler):
    """Serves without writing a line per request to stderr."""

    def log(self, type: str, message: str, *args: Any) -> None:
        return


class Emulator:
    """The server and shared state the provider plugins run on (see the module)."""

    # How many batch creates, from now on, succeed but answer 500, as if the answer were lost.
    lost_create_responses = 0
    # How many batch creates, from now on, are refused with a 400 in the provider's own error shape (a
    # batch the provider judges invalid: OpenAI's invalid_request_error, Anthropic's, Gemini's
    # INVALID_ARGUMENT, Bedrock's ValidationException), and how many fail with a 500 without making the
    # batch (an outage): what a create must end on at once, or retry within a bound.
    refused_creates = 0
    failed_creates = 0

    def __init__(
        self,
        knobs: EmulatorKnobs = EmulatorKnobs(),
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.knobs = knobs
        self.host = host
        self.port = port
        self.clock = clock
        # The one lock: re-entrant, so a plugin holding it can call the methods below.
        self.lock = threading.RLock()
        # How many of each kind of id (and of transient-error draws) were made.
        self.counters: dict[str, int] = {}
        self.plugins: list[Plugin] = []
        self._batches: dict[str, Batch] = {}  # in creation order
        self._batches_created: dict[str, int] = {}
        self._requests_submitted: dict[str, int] = {}
        self._routes: list[Route] = []
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._workers_started = False
        self._serving = threading.Event()
        # The real-time endpoints: when each provider's recent calls were let through (the rate
        # limit's sliding window), and every call with its answer, for the stats.
        self._rt_window: dict[str, list[float]] = {}
        self._rt_calls: list[dict[str, Any]] = []

    def install(self, plugin: Plugin) -> None:
        """Serve a provider: its routes join the routing table and its batches the stats."""
        self.plugins.append(plugin)
        self._batches_created[plugin.provider] = 0
        self._routes.extend(plugin.routes())

    # -- lifecycle --------------------------------------------------------------------------------

    def bind(self) -> BaseWSGIServer:
        """Bind the port (0 picks a free one) without serving yet."""
        if self._server is None:
            self._server = make_server(self.host, self.port, self._wsgi, threaded=True, request_handler=_QuietHandler)
            self.port = self._server.server_port
        return self._server

    def start(self) -> Self:
        """Serve on a background thread, and start the plugins' workers."""
        self.bind()
        if self._thread is None:
            self._serving.set()
            self._thread = threading.Thread(target=self.serve, name="provider-emulator", daemon=True)
            self._thread.start()
        if not self._workers_started:
            self._workers_started = True
            for plugin in self.plugins:
                for work in plugin.workers():
                    threading.Thread(target=work, name=f"emulator-{plugin.provider}", daemon=True).start()
        return self

    def serve(self) -> None:
        """Serve in the foreground until `stop` (from another thread)."""
        server = self.bind()
        self._serving.set()
        try:
            # A short poll interval keeps `stop` quick (shutdown waits for the next poll).
            server.serve_forever(poll_interval=0.05)
        finally:
            self._serving.clear()

    def is_serving(self) -> bool:
        return self._serving.is_set()

    def stop(self) -> None:
        """Stop serving and release the port (also ends a foreground `serve`)."""
        server = self._server
        if server is None:
            return
        if self._serving.is_set():
            server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        server.server_close()
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"http://{self.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        """What was submitted: every batch with its custom_ids, and how often each custom_id was sent."""
        with self.lock:
            return {
                "batches": [
                    {
                        "provider": batch.provider,
                        "id": batch.id,
                        "request_count": batch.line_count,
                        "custom_ids": list(batch.custom_ids),
                        "metadata": dict(batch.metadata) if batch.metadata is not None else None,
                        "created_at": batch.created,
                        # Failed unrun because the model's enqueued-token quota was full (OpenAI): not billed.
                        "quota_refused": any(e.get("code") == "token_limit_exceeded" for e in batch.errors),
                    }
                    for batch in self._batches.values()
                ],
                "batches_created": dict(self._batches_created),
                "requests_submitted": dict(self._requests_submitted),
                # Every real-time call, with the status it was answered (429s included).
                "realtime_calls": [dict(c) for c in self._rt_calls],
            }

    # -- the real-time endpoints, for the plugins ----------------------------------------------------

    def admit(self, provider: str) -> Admission:
        """Count one real-time call against the provider's requests per minute (EmulatorKnobs.realtime_rpm),
        over a sliding window of 60 s of the emulator's clock; a call refused is not counted."""
        limit = self.knobs.realtime_rpm.get(provider)
        if limit is None:
            return Admission(True)
        with self.lock:
            now = self.now()
            window = [t for t in self._rt_window.get(provider, ()) if t > now - 60.0]
            allowed = len(window) < limit
            if allowed:
                window.append(now)
            self._rt_window[provider] = window
            remaining = max(0, limit - len(window))
            # The oldest call leaves the window first: then one more is let through.
            reset = max(0.0, window[0] + 60.0 - now) if window else 0.0
            return Admission(allowed, limit, remaining, reset)

    def record_call(self, provider: str, key: str, status: int) -> None:
        """Note one real-time call the provider answered: `key` names the request (a hash of its body,
        or its custom text), `status` the HTTP status answered (429 included)."""
        with self.lock:
            self._rt_calls.append({"provider": provider, "key": key, "status": status, "at": self.now()})

    def realtime_calls(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(c) for c in self._rt_calls]

    # -- the clock, ids and batches, for the plugins -----------------------------------------------

    def now(self) -> float:
        return float(self.clock())

    def next_id(self, kind: str, length: int = 24) -> str:
        """A deterministic id: the same seed and the same sequence of calls give the same ids."""
        with self.lock:
            n = self.counters.get(kind, 0)
            self.counters[kind] = n + 1
            return hex_id(self.knobs.seed, kind, n, length=length)

    def create_batch(
        self, provider: str, batch_id: str, requests: Iterable[tuple[str, dict[str, Any]]], **fields: Any
    ) -> Batch:
        """Make and register a batch created now, its requests' outcomes drawn with the current knobs.

        `fields` are the other `Batch` fields (custom_ids and line_count at least).
        """
        with self.lock:
            knobs = self.knobs
            batch = Batch(
                provider=provider,
                id=batch_id,
                created=self.now(),
                latency=max(0.0, knobs.latency),
                expires=draw_batch_expires(knobs.seed, batch_id, knobs.expire_rate),
                requests=[
                    BatchRequest(custom_id, body, outcome.finish_fraction, outcome.failure)
                    for custom_id, body in requests
                    for outcome in [draw_request_outcome(knobs.seed, batch_id, custom_id, knobs.failure_rate)]
                ],
                **fields,
            )
            self._batches[batch.id] = batch
            self._batches_created[provider] = self._batches_created.get(provider, 0) + 1
            for custom_id in batch.custom_ids:
                self._requests_submitted[custom_id] = self._requests_submitted.get(custom_id, 0) + 1
            return batch

    def find_batch(self, batch_id: str) -> Batch | None:
        with self.lock:
            return self._batches.get(batch_id)

    def batch(self, provider: str, batch_id: str) -> Batch:
        """The provider's batch, or a 404 (OpenAI's and Anthropic's message)."""
        batch = self.find_batch(batch_id)
        if batch is None or batch.provider != provider:
            raise ClientError(404, f"No batch found with id '{batch_id}'.", "batch_id")
        return batch

    def batches(self, provider: str) -> list[Batch]:
        """The provider's batches, newest first."""
        with self.lock:
            return [b for b in reversed(self._batches.values()) if b.provider == provider]

    def advance(self, batch: Batch, now: float) -> None:
        """End the batch if its time has come (its plugin then writes its results)."""
        with self.lock:
            if batch.advance(now):
                self._plugin(batch.provider).write_results(batch)

    def cancel(self, batch: Batch, now: float) -> None:
        """Ask for a batch to end; it ends cancelled at the next look. A 400 if it has already ended."""
        with self.lock:
            self.advance(batch, now)
            if batch.cancel_at is not None:
                return
            if batch.end_kind is not None:
                raise ClientError(400, f"Cannot cancel a batch that has already ended ({batch.end_kind}).")
            batch.cancel_at = now

    def _plugin(self, provider: str) -> Plugin:
        return next(p for p in self.plugins if p.provider == provider)

    # -- HTTP dispatch ----------------------------------------------------------------------------

    def plugin_for(self, path: str) -> Plugin:
        """The plugin that owns the path: the longest matching prefix, else the first plugin."""
        owners = [
            (len(prefix), n) for n, p in enumerate(self.plugins) for prefix in p.prefixes if path.startswith(prefix)
        ]
        return self.plugins[max(owners)[1] if owners else 0]

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        for alias, target in (pair for plugin in self.plugins for pair in plugin.aliases):
            if path.startswith(alias):
                environ["PATH_INFO"] = target + path[len(alias) :]
                break
        request = Request(environ)
        try:
            response = self._dispatch(request)
        except Exception:
            logger.exception("provider emulator: unexpected error on %s %s", request.method, request.path)
            response = self._error(request, 500, "The emulator failed on this request.", "server")
        return response(environ, start_response)

    def _error(
        self,
        request: Request,
        status: int,
        message: str,
        kind: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """An error in the shape of the provider the path belongs to."""
        return self.plugin_for(request.path).error(ClientError(status, message, param, kind), headers)

    def _dispatch(self, request: Request) -> Response:
        plugin = self.plugin_for(request.path)
        creates = request.method == "POST" and plugin.creates.fullmatch(request.path) is not None
        transient = self._transient_status()
        if transient is not None:
            message = "Rate limit reached (emulated)." if transient == 429 else "Server error (emulated)."
            response = self._error(request, transient, message, headers={"retry-after-ms": "10"})
        elif not plugin.authorised(request):
            response = self._error(request, 401, "Missing API key: send 'Authorization: Bearer' or 'x-api-key'.")
        elif creates and (injected := self._injected_create_error(request)) is not None:
            response = injected
        else:
            response = self._route(request)
            if response.status_code == 200 and creates and plugin.loses_create_answers:
                with self.lock:
                    lose = self.lost_create_responses > 0
                    self.lost_create_responses -= lose
                if lose:
                    # The batch exists, but the client never hears of it (a dropped connection, a
                    # gateway timeout): what must not lead to a second batch.
                    response = self._error(request, 500, "Server error after the batch was created (emulated).")
        response.headers[plugin.request_id_header] = f"req_{self.next_id('request')}"
        return response

    def _injected_create_error(self, request: Request) -> Response | None:
        with self.lock:
            refuse = self.refused_creates > 0
            fail = not refuse and self.failed_creates > 0
            self.refused_creates -= refuse
            self.failed_creates -= fail
        if refuse:
            return self._error(request, 400, "The batch was refused: its requests are invalid (emulated).")
        if fail:
            return self._error(request, 500, "Server error before the batch was created (emulated).")
        return None

    def _route(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        path_matched = False
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            path_matched = True
            if method != request.method:
                continue
            try:
                return handler(request, **match.groupdict())
            except ClientError as exc:
                return self.plugin_for(request.path).error(exc)
        if path_matched:
            return self._error(request, 405, f"Method {request.method} is not allowed on {path}.")
        return self._error(request, 404, f"Unknown path: {request.method} {path}.")

    def _transient_status(self) -> int | None:
        knobs = self.knobs
        if knobs.transient_error_rate <= 0:
            return None
        with self.lock:
            n = self.counters.get("transient", 0)
            self.counters["transient"] = n + 1
        if unit(knobs.seed, "transient", n) >= knobs.transient_error_rate:
            return None
        return 429 if unit(knobs.seed, "transient-kind", n) < 0.5 else 500
