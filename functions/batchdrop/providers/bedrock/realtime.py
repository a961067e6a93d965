"""Bedrock's real-time API: InvokeModel on ``bedrock-runtime``, through boto3 on worker threads.

A batch record's ``modelInput`` is an InvokeModel body, and a batch's ``modelOutput`` is the InvokeModel
answer's body, so a record is sent as it is and its answer kept as it comes: what the batch would have
written for it.

Retries are botocore's "standard" mode: throttling (ThrottlingException, any 429), 500/502/503/504 and
connection errors and timeouts, with exponential backoff and jitter, honouring ``x-amz-retry-after``. Not
"adaptive": its client-side token bucket would pace calls a second time behind the lane's own limiter,
asleep in a worker thread where the lane cannot see it. Every HTTP answer, each retry's included, reaches
`observe` through botocore's ``response-received`` event, which fires once an attempt.

boto3 is synchronous, so each call runs on a thread of the client's own pool: asyncio's default
executor has ``min(32, CPUs + 4)`` threads (6 in a 2-vCPU Lambda), shared with everything else that
runs there, and would cap the lane's concurrency below what it asks for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import orjson
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, ParamValidationError
from botocore.exceptions import ConnectionError as BotoConnectionError

from batchdrop import models as m
from batchdrop.config import ProviderSettings
from batchdrop.providers.base import BUILD_ERRORS, Observe, RateLimited

# Calls in flight at once, at most (threads, and the connections botocore keeps for them); threads start
# as calls need them.
MAX_THREADS = 64
CONNECT_TIMEOUT_SECONDS = 10
# One call may generate for minutes (botocore's default of 60 s cuts long answers; the Amazon Nova user
# guide advises raising it); past this the attempt counts as a timeout, which botocore retries.
READ_TIMEOUT_SECONDS = 300
# Answers that say "not now" rather than "never": a quota (botocore's model for ServiceQuotaExceededException:
# "You can resubmit your request later"); every 429 (ThrottlingException, ModelNotReadyException) is too.
NOT_NOW = frozenset({"ThrottlingException", "ServiceQuotaExceededException"})
# 4xx that are the model's or the network's trouble, not the request's: ModelTimeoutException (408) and
# ModelErrorException (424, "an error while processing the model").
SERVER_SIDE_4XX = frozenset({408, 424})
# A payload that is not a Bedrock batch line: it fails alike every time it is sent.
BAD_LINE: tuple[type[Exception], ...] = (*BUILD_ERRORS, KeyError)


class BedrockRealtime:
    """A `batchdrop.providers.base.RealtimeClient` for Bedrock (see the module). `observe` runs on the
    event loop's thread, before the call that got the answer resumes."""

    name = "bedrock"

    def __init__(self, settings: ProviderSettings, observe: Observe, max_retries: int) -> None:
        self.settings = settings
        self.observe = observe
        self.max_retries = max(0, max_retries)
        self._pool = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="bedrock-realtime")
        self._client: Any = None
        self._building = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def call(self, payload: bytes, model: str) -> m.Outcome:
        custom_id = ""
        try:
            line = orjson.loads(payload)
            custom_id = str(line["recordId"])
            model_input = line["modelInput"]
            if not isinstance(model_input, dict):
                raise TypeError(f"modelInput is a {type(model_input).__name__}, not an object")
            body = orjson.dumps(model_input)
        except BAD_LINE as exc:
            return _failed(custom_id, m.REQUEST_ERROR, f"the record cannot be sent to Bedrock: {exc}", None)
        self._loop = loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self._pool, self._invoke, model, body)
        except ClientError as exc:
            return _outcome_of_error(custom_id, exc)
        except ParamValidationError as exc:
            # botocore refused the parameters before sending (a model id it will not put in the path).
            return _failed(custom_id, m.REQUEST_ERROR, str(exc), None)
        except (HTTPClientError, BotoConnectionError) as exc:
            # Timeouts and connection errors that outlasted botocore's retries.
            return _failed(custom_id, m.SERVER_ERROR, f"Bedrock did not answer: {type(exc).__name__}: {exc}", None)
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            return _failed(custom_id, m.SERVER_ERROR, "Bedrock answered 200 without a JSON object body", None)
        return m.Outcome(custom_id, ok=True, response=answer)

    async def aclose(self) -> None:
        with self._building:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _invoke(self, model: str, body: bytes) -> bytes:
        """On a worker thread: one InvokeModel, its retries included, and its body read."""
        response = self._runtime().invoke_model(
            modelId=model, body=body, contentType="application/json", accept="application/json"
        )
        stream = response["body"]
        try:
            return bytes(stream.read())
        finally:
            stream.close()

    def _runtime(self) -> Any:
        with self._building:
            if self._client is None:
                config = Config(
                    retries={"mode": "standard", "total_max_attempts": self.max_retries + 1},
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    read_timeout=READ_TIMEOUT_SECONDS,
                    max_pool_connections=MAX_THREADS,
                )
                # boto3 finds the endpoint itself (AWS_ENDPOINT_URL_BEDROCK_RUNTIME: the emulator locally).
                client = boto3.session.Session().client("bedrock-runtime", config=config)
                client.meta.events.register("response-received.bedrock-runtime.InvokeModel", self._observed)
                self._client = client
            return self._client

    def _observed(self, response_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """botocore's handler for each attempt; no `response_dict` when no HTTP answer came (a timeout, a
        connection error)."""
        loop = self._loop
        if response_dict is None or loop is None:
            return
        headers = {str(k).lower(): str(v) for k, v in response_dict["headers"].items()}
        loop.call_soon_threadsafe(self.observe, int(response_dict["status_code"]), headers)


def _outcome_of_error(custom_id: str, exc: ClientError) -> m.Outcome:
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or code or "Bedrock refused the call")
    status = int(meta.get("HTTPStatusCode") or 0)
    if status == 429 or code in NOT_NOW:
        raise RateLimited(f"Bedrock: {code}: {message}", retry_after(meta.get("HTTPHeaders") or {})) from exc
    detail = {"type": code, "message": message, "status": status}
    if 400 <= status < 500 and status not in SERVER_SIDE_4XX:
        # ValidationException, ResourceNotFoundException, AccessDeniedException: the same answer every time.
        return _failed(custom_id, m.REQUEST_ERROR, message, detail)
    return _failed(custom_id, m.SERVER_ERROR, message, detail)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait an AWS answer asks for: x-amz-retry-after (milliseconds, what botocore reads), or an HTTP
    Retry-After in seconds. Bedrock's throttling answers carry neither today."""
    for name, scale in (("x-amz-retry-after", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue
        if value >= 0:
            return value
    return None


def _failed(custom_id: str, code: str, message: str, detail: Any) -> m.Outcome:
    return m.Outcome(custom_id, ok=False, code=code, message=message, detail=detail)
