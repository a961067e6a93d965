"""Amazon Bedrock batch inference (model invocation jobs), emulated in the provider emulator.

boto3's ``bedrock`` client reaches it through ``endpoint_url`` (``AWS_ENDPOINT_URL_BEDROCK`` in the
local stack): the REST-JSON control plane of CreateModelInvocationJob, GetModelInvocationJob,
ListModelInvocationJobs and StopModelInvocationJob, with the paths, shapes and error codes of
botocore's service model. The data plane is S3, as with Bedrock: the input JSONL is read from S3 when
the job is created and the output (``<output uri>/<job id>/<input file>.out`` and
``manifest.json.out``) is written to S3 when it ends, through a boto3 S3 client built from the
environment (``AWS_ENDPOINT_URL`` points it at moto's server locally).

Jobs run on the emulator's shared `Batch` state machine, so the clock, the knobs (latency,
failure_rate, expire_rate, transient_error_rate, seed) and the deterministic draws behave as for the
other providers. How the lifecycle maps onto Bedrock's statuses, over the latency L:

- ``Submitted`` (until 0.02 L), ``Validating`` (until 0.05 L), ``Scheduled`` (until 0.1 L), then
  ``InProgress`` while records finish (between 0.1 L and 0.9 L) and the job ends at L.
- ``Completed`` when every record ran, whether it succeeded or errored: the Bedrock user guide says
  PartiallyCompleted means "not all of your records could be processed in time", and errored
  records are reported as lines with an ``error`` object in the output of a Completed job.
- A job drawn to expire (expire_rate) hits its timeout: with a probability of
  ``expire_before_start_rate`` it never left the queue and ends ``Expired`` with no output (AWS:
  "scheduled but didn't begin before the set timeout duration"); otherwise it was cut while running
  and ends ``PartiallyCompleted`` with the output of the records that finished.
- StopModelInvocationJob answers at once; the job is ``Stopping`` for ``stopping_seconds``, then
  ``Stopped``, with the output of the records finished before the stop. Stopping a job that has
  ended is a ValidationException.
- ``Failed`` with a ``message`` when the input does not pass validation (see below), or when the
  output cannot be written to S3.

Validation. The user guide says the ``Validating`` status checks "Your IAM service role has access to
the Amazon S3 buckets containing your files", the JSONL format of each record, the file sizes and the
record counts (GetModelInvocationJob's `status` in botocore's model). So by default the job is
accepted and ends ``Failed`` with a ``message`` naming the problem while ``Validating``; with
``validate_at_create = True`` the same checks answer a ValidationException at create instead. The input
is read as the job's service role would read it: the role must exist in IAM (moto's, locally) and a
policy of it must allow s3:GetObject on each input object (``check_role``), or the job fails with an
access-denied message. Request parameters (names, ARNs, URIs, model id, timeout, tags) are always
checked at create.

Quota. ``max_concurrent_jobs`` (None: no limit) is the per-model quota of batch inference jobs in
progress (Submitted to InProgress, and Stopping): a create past it answers
ServiceQuotaExceededException, the error botocore's model lists for CreateModelInvocationJob.

Events. Bedrock publishes each job state change to EventBridge's default bus (source aws.bedrock,
detail-type "Batch Inference Job State Change"; docs.aws.amazon.com/bedrock/latest/userguide/
monitoring-eventbridge-how-it-works.html). `state_changes()` returns those events for the jobs whose
status changed since it was last called (the latest status of each, as a look at that moment sees
it), for the local dispatcher to route as the deployed rule would.

Creates are idempotent by ``clientRequestToken`` (the same token returns the same job ARN, whatever
else the request says); a new token with a job name already in use is a ConflictException. Per
record, failure_rate gives output lines with ``error: {errorCode: 400|500, errorMessage}``; a record whose
modelInput the job's model would refuse (`model_input_problem`, as InvokeModel refuses it) always gets a
400 line with Bedrock's message.

Real time. The ``bedrock-runtime`` client reaches the same server (``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` in
the local stack): InvokeModel (``POST /model/{modelId}/invoke``, the body a model's request as a batch
record's ``modelInput`` is) and Converse (``POST /model/{modelId}/converse``), with the paths, shapes and
error codes of botocore's ``bedrock-runtime`` service model. A body is checked as a batch record's
modelInput is (`model_input_problem`), and answered as a batch record's modelOutput is (`invoke_output`).
Past the ``realtime_rpm`` knob a call is a 429 ThrottlingException.

Quotas and switches are attributes of the `BedrockEmulation` instance (``min_records``,
``max_records``, ``max_file_bytes``, ``validate_at_create``, ``expire_before_start_rate``,
``stopping_seconds``), the ``bedrock`` of a `ProviderEmulator`. It is one of the emulator's plugins
(`batchdrop.local.emulator.core.Plugin`).
"""

from __future__ import annotations

import base64
import fnmatch
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import orjson
from werkzeug.wrappers import Request, Response

from batchdrop.local.emulator import schemas
from batchdrop.local.emulator.batches import Batch, BatchRequest
from batchdrop.local.emulator.canned import (
    REFUSED,
    SERVER_ERROR,
    anthropic_message,
    call_key,
    draw_call_failure,
    echo,
    hex_id,
    iso,
    messages_text,
    positive,
    text_of,
    tokens,
    unit,
)
from batchdrop.local.emulator.core import Emulator, Plugin, Route
from batchdrop.local.emulator.web import MB, ClientError, json_response

# Patterns and bounds from botocore's service model (bedrock 2023-04-20).
JOB_NAME = re.compile(r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}")
JOB_IDENTIFIER = re.compile(
    r"((arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-invocation-job/)?[a-z0-9]{12})"
)
IDEMPOTENCY_TOKEN = re.compile(r"[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}")
ROLE_ARN = re.compile(r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+")
S3_URI = re.compile(r"s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](?:/[-!_*'().a-z0-9A-Z]+(?:/[-!_*'().a-z0-9A-Z]+)*)?/?")
TAG_TEXT = re.compile(r"[a-zA-Z0-9\s._:/=+@-]*")
# CreateModelInvocationJob's `ModelId` (1 to 2048 characters): a model id, an inference profile or an ARN.
MODEL_ID = re.compile(
    r"(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:(([0-9]{12}:custom-model/[a-z0-9-]{1,63}[.]{1}[a-z0-9-:]{1,63}"
    r"/[a-z0-9]{12}$)|(:foundation-model/([a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}([.]?[a-z0-9-]{1,63})"
    r"([:][a-z0-9-]{1,63}){0,2})|(([0-9a-zA-Z][_-]?)+)$)|([0-9]{12}:(inference-profile|"
    r"application-inference-profile)/[a-zA-Z0-9-:.]+$)))|([a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}"
    r"([.]?[a-z0-9-]{1,63})([:][a-z0-9-]{1,63}){0,2})|(([0-9a-zA-Z][_-]?)+)"
)
# bedrock-runtime's `InvokeModelIdentifier` (InvokeModel's and Converse's modelId, 1 to 2048 characters) in
# botocore's service model (bedrock-runtime 2023-09-30).
INVOKE_MODEL_ID = re.compile(
    r"(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:(([0-9]{12}:custom-model/[a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}"
    r"/[a-z0-9]{12})|(:foundation-model/[a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}([.:]?[a-z0-9-]{1,63}))|"
    r"([0-9]{12}:imported-model/[a-z0-9]{12})|([0-9]{12}:provisioned-model/[a-z0-9]{12})|"
    r"([0-9]{12}:custom-model-deployment/[a-z0-9]{12})|([0-9]{12}:(inference-profile|"
    r"application-inference-profile)/[a-zA-Z0-9-:.]+)))|([a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}"
    r"([.:]?[a-z0-9-]{1,63}))|(([0-9a-zA-Z][_-]?)+)|([a-zA-Z0-9-:.]+)$|(^(arn:aws(-[^:]+)?:bedrock:"
    r"[a-z0-9-]{1,20}:[0-9]{12}:prompt/[0-9a-zA-Z]{10}(?::[0-9]{1,5})?))$|(^arn:aws:sagemaker:[a-z0-9-]+:"
    r"[0-9]{12}:endpoint/[a-zA-Z0-9-]+$)|(^arn:aws(-[^:]+)?:bedrock:([0-9a-z-]{1,20}):([0-9]{12}):"
    r"(default-)?prompt-router/[a-zA-Z0-9-:.]+$)"
)
# Each family's InvokeModel body: the keys it requires and the keys it takes, from the Bedrock user guide's
# inference parameters (model-parameters-anthropic-claude-messages-request-response.html, the Amazon Nova
# user guide's complete request schema, model-parameters-meta.html). Bedrock checks a body against the
# model's JSON schema and refuses it with a ValidationException "Malformed input request: #: required key
# [max_tokens_to_sample] not found" or "#: extraneous key [top_p] is not permitted, please reformat your
# input and try again", or "N schema violations found" for several (github.com/langgenius/dify/issues/2942,
# rollwagen/bods/issues/51, langchain-ai/langchain/issues/2828).
_BODY_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "anthropic.claude-": (
        frozenset({"anthropic_version", "max_tokens", "messages"}),
        frozenset(
            {
                "anthropic_version",
                "anthropic_beta",
                "max_tokens",
                "system",
                "messages",
                "temperature",
                "top_p",
                "top_k",
                "tools",
                "tool_choice",
                "stop_sequences",
                "thinking",
            }
        ),
    ),
    "amazon.nova-": (
        frozenset({"messages"}),
        frozenset({"schemaVersion", "system", "messages", "inferenceConfig", "toolConfig"}),
    ),
    "meta.llama": (frozenset({"prompt"}), frozenset({"prompt", "temperature", "top_p", "max_gen_len", "images"})),
}
# A throttled call's answer as Bedrock's runtime sends it: 429, the error type with its Coral namespace in
# x-amzn-ErrorType (botocore keeps what is before the ":"), and this message; no Retry-After or
# x-amz-retry-after header (the answers quoted in github.com/aws-samples/amazon-bedrock-client-for-mac/
# issues/99 and 102, i-dot-ai/caddy-chatbot/issues/97).
_THROTTLED_MESSAGE = "Too many requests, please wait before trying again."
_RUNTIME_ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
STATUSES = (
    "Submitted",
    "InProgress",
    "Completed",
    "Failed",
    "Stopping",
    "Stopped",
    "PartiallyCompleted",
    "Expired",
    "Validating",
    "Scheduled",
)
INVOCATION_TYPES = ("InvokeModel", "Converse")
MIN_TIMEOUT_HOURS, MAX_TIMEOUT_HOURS, DEFAULT_TIMEOUT_HOURS = 24, 168, 24
MAX_TAGS = 200
MAX_NAME = 63
# The model families we answer for, after an optional cross-region geography ("us.", "eu.", ...).
MODEL_FAMILY = re.compile(r"^(?:[a-z]+\.)?(anthropic\.claude-|amazon\.nova-|meta\.llama)")
ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"
_CREDENTIAL_REGION = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/")
# Where the phases of a job fall, as fractions of the latency (records run from 0.1 to 0.9).
_VALIDATING_AT, _SCHEDULED_AT, _RUNNING_AT = 0.02, 0.05, 0.1
_MAX_MESSAGE = 2048
_MAX_LINE_PROBLEMS = 5
# Per-record errors, as Bedrock words them in an output line's "error".
_REFUSED_MESSAGE = "Malformed input request, please reformat your input and try again (emulated failure)."
_SERVER_ERROR_MESSAGE = (
    "The system encountered an unexpected error during processing. Try your request again (emulated failure)."
)
_ERROR_TYPES = {
    400: "ValidationException",
    401: "AccessDeniedException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    405: "ValidationException",
    409: "ConflictException",
    413: "ValidationException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_LLAMA_USER_TURN = re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\s*(.*?)<\|eot_id\|>", re.DOTALL)


class _AwsError(Exception):
    """A request answered with an AWS error: its code (x-amzn-ErrorType) and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _validation(message: str) -> _AwsError:
    return _AwsError("ValidationException", message)


@dataclass
class _InputFile:
    bucket: str
    key: str

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass
class _Job:
    """What Bedrock keeps of a job beyond the shared batch state."""

    batch: Batch
    arn: str
    name: str
    token: str
    role_arn: str
    model_id: str
    input_config: dict[str, Any]
    output_config: dict[str, Any]
    timeout_hours: int
    invocation_type: str | None
    vpc_config: dict[str, Any] | None
    tags: list[dict[str, str]]
    files: list[_InputFile]
    record_files: list[int]  # per request, its index in `files`
    never_starts: bool  # an expiring job that times out before it leaves the queue
    # The status the last state-change event carried (None: none sent yet).
    announced: str | None = None
    # Filled when the job ends.
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.batch.id


@dataclass
class _Records:
    """An input read from S3: its files, its records, and the first problems found in it."""

    files: list[_InputFile] = field(default_factory=list)
    records: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)  # (recordId, line, file)
    problems: list[str] = field(default_factory=list)


def _parse_s3_uri(uri: str) -> tuple[str, str]:
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    return bucket, key


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def _record_id(seed: str, n: int) -> str:
    """An 11-character id for a record that came without one (Bedrock adds its own)."""
    return hex_id(seed, "record", n, length=11).upper()


def _timestamp(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _validation(f"1 validation error detected: Value '{raw}' at '{name}' is not a valid timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class BedrockEmulation(Plugin):
    """Bedrock's batch inference control plane, served by the provider emulator (see the module)."""

    provider = "bedrock"
    # The control plane's jobs, and the runtime's models (InvokeModel, Converse).
    prefixes = ("/model-invocation-job", "/model/")
    # CreateModelInvocationJob (botocore's service model: POST /model-invocation-job). Its answer is
    # never lost: Bedrock's creates are idempotent by token.
    creates = re.compile(r"/model-invocation-job")
    loses_create_answers = False

    def __init__(self, emulator: Emulator) -> None:
        super().__init__(emulator)
        # Bedrock's per-model quota of records per job (the local stack sets it with the functions').
        self.min_records = 100
        # Bedrock's quotas and rules, as instance attributes so tests and the local stack can change them.
        self.max_records = 50_000
        self.max_file_bytes = 1024 * MB
        self.validate_at_create = False
        self.check_role = True
        self.max_concurrent_jobs: int | None = None
        self.expire_before_start_rate = 0.5
        # How long a stopped job shows `Stopping` before it is `Stopped` (in the emulator's clock).
        self.stopping_seconds = 1.0
        self.account_id = ACCOUNT_ID
        self._jobs: dict[str, _Job] = {}  # by job id, in creation order
        self._by_token: dict[str, str] = {}
        self._s3_lock = threading.Lock()
        self._s3_clients: dict[tuple[str | None, ...], Any] = {}

    # -- the plugin -----------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            ("POST", re.compile(r"/model-invocation-job"), self._handled(self._create)),
            ("GET", re.compile(r"/model-invocation-jobs"), self._handled(self._list)),
            ("POST", re.compile(r"/model-invocation-job/(?P<identifier>.+)/stop"), self._handled(self._stop)),
            ("GET", re.compile(r"/model-invocation-job/(?P<identifier>.+)"), self._handled(self._get)),
            ("POST", re.compile(r"/model/(?P<model_id>.+)/invoke"), self._invoke),
            ("POST", re.compile(r"/model/(?P<model_id>.+)/converse"), self._converse),
        ]

    def reach(self, base_url: str) -> list[tuple[str, str]]:
        return [
            (
                "Bedrock endpoint",
                f"{base_url} (AWS_ENDPOINT_URL_BEDROCK; job files go to the S3 that AWS_ENDPOINT_URL names)",
            ),
            ("Bedrock runtime endpoint", f"{base_url} (AWS_ENDPOINT_URL_BEDROCK_RUNTIME: InvokeModel, Converse)"),
        ]

    def authorised(self, request: Request) -> bool:
        """boto3 signs with SigV4 (any signature passes), or sends a Bedrock API key as a bearer token."""
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("AWS4-HMAC-SHA256 ") and "Credential=" in authorization:
            return True
        return authorization.startswith("Bearer ") and bool(authorization[len("Bearer ") :].strip())

    def error(self, problem: ClientError, headers: dict[str, str] | None = None) -> Response:
        status, message = problem.status, problem.message
        code = _ERROR_TYPES.get(status, "InternalServerException" if status >= 500 else "ValidationException")
        if status == 401:
            # AWS answers a missing or bad signature with 403.
            status = 403
            message = "Missing Authentication Token: sign the request with SigV4 (any credentials pass here)."
        return self._aws_error(code, message, status, headers)

    def write_results(self, batch: Batch) -> None:
        """Write the output of a job that has ended to S3: one .out file per input file, and the manifest."""
        job = self._jobs[batch.id]
        if job.never_starts:
            # It stayed in the queue until it timed out (or was stopped there): no record ran.
            unrun = "expired" if batch.end_kind == "expired" else "canceled"
            for custom_id in batch.outcomes:
                batch.outcomes[custom_id] = unrun
        per_file: list[list[bytes]] = [[] for _ in job.files]
        success = errors = in_total = out_total = 0
        for index, request in enumerate(batch.requests):
            outcome = batch.outcomes[request.custom_id]
            line: dict[str, Any] = {"recordId": request.body["recordId"], "modelInput": request.body["modelInput"]}
            if outcome == "succeeded":
                output, in_tokens, out_tokens = self._model_output(job, request)
                line["modelOutput"] = output
                success += 1
                in_total += in_tokens
                out_total += out_tokens
            elif outcome in (REFUSED, SERVER_ERROR):
                code, message = (400, _REFUSED_MESSAGE) if outcome == REFUSED else (500, _SERVER_ERROR_MESSAGE)
                problem = self._record_problem(job, request.body["modelInput"])
                if outcome == REFUSED and problem is not None:
                    message = problem
                line["error"] = {"errorCode": code, "errorMessage": message}
                errors += 1
            else:
                continue  # expired or stopped before it ran: Bedrock writes no line for it
            per_file[job.record_files[index]].append(orjson.dumps(line))
        batch.usage = (in_total, out_total)
        job.counts = {
            "totalRecordCount": len(batch.requests),
            "processedRecordCount": success + errors,
            "successRecordCount": success,
            "errorRecordCount": errors,
        }
        if success + errors == 0 and batch.end_kind != "completed":
            return  # nothing ran: no output at all
        bucket, prefix = _parse_s3_uri(job.output_config["s3OutputDataConfig"]["s3Uri"])
        prefix = f"{prefix.rstrip('/')}/{job.id}/" if prefix.strip("/") else f"{job.id}/"
        manifest = {**job.counts, "inputTokenCount": in_total, "outputTokenCount": out_total}
        try:
            s3 = self._s3()
            for number, (file, lines) in enumerate(zip(job.files, per_file, strict=True)):
                # Bedrock does not keep the input order: shuffle deterministically.
                random.Random(hex_id(job.id, "shuffle", number)).shuffle(lines)
                body = b"".join(line + b"\n" for line in lines)
                s3.put_object(Bucket=bucket, Key=f"{prefix}{file.name}.out", Body=body)
            s3.put_object(Bucket=bucket, Key=f"{prefix}manifest.json.out", Body=orjson.dumps(manifest))
        except Exception as exc:
            batch.end_kind = "failed"
            batch.errors = [{"message": f"Could not write the output to s3://{bucket}/{prefix}: {exc}"}]
            job.counts = {}

    # -- HTTP plumbing ----------------------------------------------------------------------------

    def _aws_error(self, code: str, message: str, status: int = 400, headers: dict[str, str] | None = None) -> Response:
        response = Response(
            orjson.dumps({"message": message}), status=status, mimetype="application/json", headers=headers
        )
        response.headers["x-amzn-ErrorType"] = code
        response.headers["x-amzn-RequestId"] = self._request_id()
        return response

    def _ok(self, payload: dict[str, Any]) -> Response:
        response = Response(orjson.dumps(payload), status=200, mimetype="application/json")
        response.headers["x-amzn-RequestId"] = self._request_id()
        return response

    def _request_id(self) -> str:
        with self.emulator.lock:
            raw = self.emulator.next_id("bedrock-request", 32)
        return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:32]}"

    def _handled(self, handler: Callable[..., Response]) -> Callable[..., Response]:
        def run(request: Request, **groups: str) -> Response:
            try:
                return handler(request, **groups)
            except _AwsError as exc:
                return self._aws_error(exc.code, exc.message, exc.status)
            except ClientError as exc:  # raised by the shared state machine
                return self.error(exc)

        return run

    def _s3(self) -> Any:
        """A boto3 S3 client from the environment (AWS_ENDPOINT_URL: moto's server locally)."""
        return self._client("s3")

    def _client(self, service: str) -> Any:
        names = ("AWS_ENDPOINT_URL", f"AWS_ENDPOINT_URL_{service.upper()}", "AWS_ACCESS_KEY_ID")
        key = (service, *(os.environ.get(name) for name in names))
        with self._s3_lock:
            client = self._s3_clients.get(key)
            if client is None:
                client = boto3.session.Session().client(service)  # type: ignore[call-overload]
                self._s3_clients[key] = client
            return client

    def state_changes(self) -> list[dict[str, Any]]:
        """The "Batch Inference Job State Change" events of every job whose status changed since the last
        call, in the shape AWS documents (monitoring-eventbridge-how-it-works, its batch inference sample)."""
        events: list[dict[str, Any]] = []
        with self.emulator.lock:
            now = self.emulator.now()
            for job in self._jobs.values():
                self._advance(job, now)
                status = self._status(job, now)
                if status == job.announced:
                    continue
                job.announced = status
                counts = self._counts(job, now, status)
                message = "; ".join(str(e.get("message")) for e in job.batch.errors) if status == "Failed" else ""
                region = job.arn.split(":")[3]
                events.append(
                    {
                        "version": "0",
                        "id": str(uuid.UUID(hex_id("bedrock-event", job.id, status, length=32))),
                        "detail-type": "Batch Inference Job State Change",
                        "source": "aws.bedrock",
                        "account": self.account_id,
                        "time": datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "region": region,
                        "resources": [job.arn],
                        "detail": {
                            "version": "0.0",
                            "accountId": self.account_id,
                            "batchJobName": job.name,
                            "batchJobArn": job.arn,
                            "batchModelId": job.model_id,
                            "status": status,
                            "failureMessage": message[:_MAX_MESSAGE],
                            "processedRecordCount": counts["processedRecordCount"],
                            "successRecordCount": counts["successRecordCount"],
                            "errorRecordCount": counts["errorRecordCount"],
                        },
                    }
                )
        return events

    # -- CreateModelInvocationJob -----------------------------------------------------------------

    def _create(self, request: Request) -> Response:
        try:
            payload = orjson.loads(request.get_data() or b"{}")
        except orjson.JSONDecodeError:
            raise _AwsError("SerializationException", "The request body is not valid JSON.") from None
        if not isinstance(payload, dict):
            raise _AwsError("SerializationException", "The request body must be a JSON object.")
        params = self._check_params(payload)
        token = params["token"]
        with self.emulator.lock:
            known = self._by_token.get(token)
            if known is not None:
                # Idempotent: the same token is the same job, whatever else the request says.
                return self._ok({"jobArn": self._jobs[known].arn})
            self._check_name_free(params["name"])
        records = self._read_input(params["input_uri"], params["role_arn"])
        problem = self._problem(records)
        if problem is not None and self.validate_at_create:
            raise _validation(problem)
        submitted_ids = self._submitted_ids(records)
        region = self._region(request)
        with self.emulator.lock:
            known = self._by_token.get(token)
            if known is not None:
                return self._ok({"jobArn": self._jobs[known].arn})
            self._check_name_free(params["name"])
            self._check_quota(params["model_id"])
            emulator = self.emulator
            job_id = emulator.next_id("bedrock-job", 12)
            batch = emulator.create_batch(
                self.provider,
                job_id,
                [(f"{n}:{record_id}", line) for n, (record_id, line, _) in enumerate(records.records)]
                if problem is None
                else [],
                custom_ids=submitted_ids,
                line_count=len(records.records),
                metadata={tag["key"]: tag["value"] for tag in params["tags"]} or None,
                model=params["model_id"],
                errors=[{"message": problem}] if problem is not None else [],
            )
            job = _Job(
                batch=batch,
                arn=f"arn:aws:bedrock:{region}:{self.account_id}:model-invocation-job/{job_id}",
                name=params["name"],
                token=token,
                role_arn=params["role_arn"],
                model_id=params["model_id"],
                input_config=params["input_config"],
                output_config=params["output_config"],
                timeout_hours=params["timeout_hours"],
                invocation_type=params["invocation_type"],
                vpc_config=params["vpc_config"],
                tags=params["tags"],
                files=records.files,
                record_files=[file for _, _, file in records.records] if problem is None else [],
                never_starts=batch.expires
                and unit(emulator.knobs.seed, job_id, "never-starts") < self.expire_before_start_rate,
            )
            for item in batch.requests:
                if self._record_problem(job, item.body["modelInput"]) is not None:
                    item.failure = REFUSED  # Bedrock refuses the record, whatever was drawn
            self._jobs[job_id] = job
            self._by_token[token] = job_id
            return self._ok({"jobArn": job.arn})

    def _check_params(self, payload: dict[str, Any]) -> dict[str, Any]:
        problems: list[str] = []

        def string(name: str, value: Any, pattern: re.Pattern[str] | None, low: int, high: int) -> str:
            if not isinstance(value, str):
                problems.append(f"Value at '{name}' failed to satisfy constraint: Member must not be null")
                return ""
            if not low <= len(value) <= high:
                problems.append(
                    f"Value '{value[:80]}' at '{name}' failed to satisfy constraint: Member must have length "
                    f"between {low} and {high}"
                )
            elif pattern is not None and not pattern.fullmatch(value):
                problems.append(
                    f"Value '{value[:80]}' at '{name}' failed to satisfy constraint: Member must satisfy regular "
                    f"expression pattern: {pattern.pattern}"
                )
            return value

        name = string("jobName", payload.get("jobName"), JOB_NAME, 1, MAX_NAME)
        role_arn = string("roleArn", payload.get("roleArn"), ROLE_ARN, 0, 2048)
        model_id = string("modelId", payload.get("modelId"), MODEL_ID, 1, 2048)
        token_value = payload.get("clientRequestToken")
        token = (
            string("clientRequestToken", token_value, IDEMPOTENCY_TOKEN, 1, 256)
            if token_value is not None
            else hex_id("bedrock-token", len(self._by_token), self.emulator.now(), length=32)
        )
        input_config = payload.get("inputDataConfig")
        output_config = payload.get("outputDataConfig")
        input_uri = ""
        s3_input: dict[str, Any] = {}
        s3_output: dict[str, Any] = {}
        if isinstance(input_config, dict) and isinstance(input_config.get("s3InputDataConfig"), dict):
            s3_input = input_config["s3InputDataConfig"]
        if isinstance(output_config, dict) and isinstance(output_config.get("s3OutputDataConfig"), dict):
            s3_output = output_config["s3OutputDataConfig"]
        if not s3_input:
            problems.append(
                "Value at 'inputDataConfig.s3InputDataConfig' failed to satisfy constraint: Member must not be null"
            )
        else:
            input_uri = string("inputDataConfig.s3InputDataConfig.s3Uri", s3_input.get("s3Uri"), S3_URI, 1, 1024)
            if s3_input.get("s3InputFormat", "JSONL") != "JSONL":
                problems.append("Value at 'inputDataConfig.s3InputDataConfig.s3InputFormat' must be 'JSONL'")
        if not s3_output:
            problems.append(
                "Value at 'outputDataConfig.s3OutputDataConfig' failed to satisfy constraint: Member must not be null"
            )
        else:
            string("outputDataConfig.s3OutputDataConfig.s3Uri", s3_output.get("s3Uri"), S3_URI, 1, 1024)
        timeout = payload.get("timeoutDurationInHours", DEFAULT_TIMEOUT_HOURS)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int)
            or not MIN_TIMEOUT_HOURS <= timeout <= MAX_TIMEOUT_HOURS
        ):
            problems.append(
                f"Value '{timeout}' at 'timeoutDurationInHours' failed to satisfy constraint: Member must have value "
                f"between {MIN_TIMEOUT_HOURS} and {MAX_TIMEOUT_HOURS}"
            )
        invocation_type = payload.get("modelInvocationType")
        if invocation_type is not None and invocation_type not in INVOCATION_TYPES:
            problems.append(
                f"Value '{invocation_type}' at 'modelInvocationType' failed to satisfy constraint: Member must "
                f"satisfy enum value set: [{', '.join(INVOCATION_TYPES)}]"
            )
        tags = payload.get("tags") or []
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            problems.append(
                "Value at 'tags' failed to satisfy constraint: Member must have length less than or equal to "
                f"{MAX_TAGS}"
            )
            tags = []
        for number, tag in enumerate(tags, start=1):
            if not isinstance(tag, dict):
                problems.append(f"Value at 'tags.{number}' failed to satisfy constraint: Member must not be null")
                continue
            string(f"tags.{number}.member.key", tag.get("key"), TAG_TEXT, 1, 128)
            string(f"tags.{number}.member.value", tag.get("value"), TAG_TEXT, 0, 256)
        if problems:
            count = len(problems)
            raise _validation(f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(problems))
        if MODEL_FAMILY.match(model_name(model_id)) is None:
            raise _validation(
                f"The provided model identifier is invalid: {model_id!r}. The emulator runs batch inference for "
                "anthropic.claude-*, amazon.nova-* and meta.llama* models (optionally with a geography prefix)."
            )
        vpc_config = payload.get("vpcConfig") if isinstance(payload.get("vpcConfig"), dict) else None
        return {
            "name": name,
            "role_arn": role_arn,
            "model_id": model_id,
            "token": token,
            "input_uri": input_uri,
            "input_config": {"s3InputDataConfig": {"s3InputFormat": "JSONL", **s3_input}},
            "output_config": {"s3OutputDataConfig": dict(s3_output)},
            "timeout_hours": timeout,
            "invocation_type": invocation_type,
            "vpc_config": vpc_config,
            "tags": [{"key": t["key"], "value": t["value"]} for t in tags],
        }

    def _check_quota(self, model_id: str) -> None:
        limit = self.queue_limit(self.max_concurrent_jobs)
        if limit is None:
            return
        now = self.emulator.now()
        running = 0
        for job in self._jobs.values():
            self._advance(job, now)
            if job.model_id == model_id and job.batch.end_kind is None:
                running += 1
        if running >= limit:
            raise _AwsError(
                "ServiceQuotaExceededException",
                f"The number of batch inference jobs in progress for {model_id} ({running}) is at your "
                f"account's quota of {limit}. Resubmit the job when one has ended.",
            )

    def _role_denial(self, role_arn: str, bucket: str, keys: list[str]) -> str | None:
        """Why the service role may not read the input objects, or None: the role must exist and a policy
        of it allow s3:GetObject on each (an explicit Deny wins), as IAM evaluates a role's policies."""
        if not self.check_role:
            return None
        name = role_arn.rsplit("/", 1)[-1]
        try:
            documents = self._role_policies(name)
        except Exception as exc:
            return f"Access denied: the service role {role_arn} cannot be assumed ({_s3_reason(exc)})."
        for key in keys:
            resource = f"arn:aws:s3:::{bucket}/{key}"
            verdicts = [
                _statement_verdict(st, "s3:GetObject", resource) for doc in documents for st in _statements(doc)
            ]
            if "Deny" in verdicts or "Allow" not in verdicts:
                return (
                    f"Access denied: the service role {role_arn} is not allowed s3:GetObject on s3://{bucket}/{key}. "
                    "Grant the role read access to the input."
                )
        return None

    def _role_policies(self, name: str) -> list[Any]:
        iam = self._client("iam")
        iam.get_role(RoleName=name)
        documents: list[Any] = []
        for policy in iam.list_role_policies(RoleName=name).get("PolicyNames", []):
            documents.append(iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"])
        for attached in iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies", []):
            arn = attached["PolicyArn"]
            version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
            documents.append(iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"])
        return documents

    def _check_name_free(self, name: str) -> None:
        if any(job.name == name for job in self._jobs.values()):
            raise _AwsError(
                "ConflictException",
                f"A batch inference job with the name {name} already exists. Use a different job name.",
            )

    @staticmethod
    def _region(request: Request) -> str:
        match = _CREDENTIAL_REGION.search(request.headers.get("Authorization", ""))
        return match.group(1) if match else DEFAULT_REGION

    def _read_input(self, uri: str, role_arn: str) -> _Records:
        """Read every record of the input: one .jsonl object, or every .jsonl object under a prefix."""
        result = _Records()
        bucket, key = _parse_s3_uri(uri)
        s3 = self._s3()
        objects: list[tuple[str, int]] = []
        try:
            if key.endswith(".jsonl"):
                head = s3.head_object(Bucket=bucket, Key=key)
                objects.append((key, int(head["ContentLength"])))
            else:
                paginator = s3.get_paginator("list_objects_v2")
                for page in paginator.paginate(Bucket=bucket, Prefix=key):
                    for obj in page.get("Contents", []):
                        if obj["Key"].endswith(".jsonl"):
                            objects.append((obj["Key"], int(obj["Size"])))
        except Exception as exc:
            result.problems.append(f"Could not read the input data at {uri}: {_s3_reason(exc)}")
            return result
        if not objects:
            result.problems.append(f"No .jsonl input file was found at {uri}.")
            return result
        denial = self._role_denial(role_arn, bucket, [object_key for object_key, _ in objects])
        if denial is not None:
            result.problems.append(denial)
            return result
        for object_key, size in objects:
            if size > self.max_file_bytes:
                result.problems.append(
                    f"The input file s3://{bucket}/{object_key} is {size} bytes, over the maximum of "
                    f"{self.max_file_bytes} bytes per input file."
                )
                return result
        total = 0
        for file_index, (object_key, _) in enumerate(objects):
            result.files.append(_InputFile(bucket, object_key))
            try:
                body = s3.get_object(Bucket=bucket, Key=object_key)["Body"]
                lines = list(_lines(body.iter_chunks(1 << 20)))
            except Exception as exc:
                result.problems.append(f"Could not read the input file s3://{bucket}/{object_key}: {_s3_reason(exc)}")
                return result
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                total += 1
                if len(result.problems) >= _MAX_LINE_PROBLEMS:
                    continue
                where = f"{object_key.rsplit('/', 1)[-1]} line {number}"
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    result.problems.append(f"{where}: the record is not valid JSON.")
                    continue
                if not isinstance(line, dict):
                    result.problems.append(f"{where}: the record is not a JSON object.")
                    continue
                model_input = line.get("modelInput")
                if not isinstance(model_input, dict):
                    result.problems.append(f"{where}: the record has no modelInput object.")
                    continue
                record_id = line.get("recordId")
                if record_id is None:
                    record_id = _record_id(object_key, number)
                elif not isinstance(record_id, str) or not record_id:
                    result.problems.append(f"{where}: recordId must be a non-empty string.")
                    continue
                result.records.append((record_id, {"recordId": record_id, "modelInput": model_input}, file_index))
        if total > self.max_records:
            result.problems.insert(
                0,
                f"The input has {total} records, more than the maximum of {self.max_records} records per "
                "batch inference job.",
            )
        elif total < self.min_records:
            result.problems.insert(
                0,
                f"The input has {total} records, fewer than the minimum of {self.min_records} records per batch "
                "inference job for this model.",
            )
        return result

    def _submitted_ids(self, records: _Records) -> list[str]:
        """The ids the emulator's stats count submissions by: the recordIds, or, for one input file with
        batchdrop's `ids.txt` beside it (BedrockProvider sends positional recordIds), the custom_ids it
        lists, so that the stats say which of the user's requests were sent, as for the other providers."""
        record_ids = [record_id for record_id, _, _ in records.records]
        if len(records.files) != 1 or not record_ids:
            return record_ids
        file = records.files[0]
        folder = file.key.rsplit("/", 1)[0] + "/" if "/" in file.key else ""
        try:
            body = self._s3().get_object(Bucket=file.bucket, Key=f"{folder}ids.txt")["Body"].read()
        except Exception:
            return record_ids
        ids = body.decode().splitlines()
        return ids if len(ids) == len(record_ids) else record_ids

    @staticmethod
    def _problem(records: _Records) -> str | None:
        if not records.problems:
            return None
        message = " ".join(records.problems)
        return message[: _MAX_MESSAGE - 3] + "..." if len(message) > _MAX_MESSAGE else message

    # -- GetModelInvocationJob, ListModelInvocationJobs, StopModelInvocationJob -----------------

    def _job(self, identifier: str) -> _Job:
        if not JOB_IDENTIFIER.fullmatch(identifier):
            raise _validation(
                f"1 validation error detected: Value '{identifier[:200]}' at 'jobIdentifier' failed to satisfy "
                f"constraint: Member must satisfy regular expression pattern: {JOB_IDENTIFIER.pattern}"
            )
        job = self._jobs.get(identifier.rsplit("/", 1)[-1])
        if job is None or (identifier.startswith("arn:") and identifier != job.arn):
            raise _AwsError("ResourceNotFoundException", f"The batch inference job {identifier} was not found.", 404)
        return job

    def _advance(self, job: _Job, now: float) -> None:
        """Let the shared state machine move the job on; a stop shows `Stopping` for a moment first."""
        cancel_at = job.batch.cancel_at
        if cancel_at is not None and job.batch.end_kind is None and now < cancel_at + self.stopping_seconds:
            return
        self.emulator.advance(job.batch, now)

    def _get(self, request: Request, identifier: str) -> Response:
        with self.emulator.lock:
            job = self._job(identifier)
            now = self.emulator.now()
            self._advance(job, now)
            return self._ok(self._job_json(job, now))

    def _stop(self, request: Request, identifier: str) -> Response:
        with self.emulator.lock:
            job = self._job(identifier)
            now = self.emulator.now()
            self._advance(job, now)
            if job.batch.cancel_at is not None:
                return self._ok({})  # already stopping
            if job.batch.end_kind is not None:
                raise _validation(
                    f"The batch inference job {job.arn} cannot be stopped: it is {self._status(job, now)}."
                )
            self.emulator.cancel(job.batch, now)
            return self._ok({})

    def _list(self, request: Request) -> Response:
        args = request.args
        raw_max = args.get("maxResults")
        max_results = 1000
        if raw_max is not None:
            if not raw_max.isdigit() or not 1 <= int(raw_max) <= 1000:
                raise _validation(
                    f"1 validation error detected: Value '{raw_max}' at 'maxResults' failed to satisfy constraint: "
                    "Member must have value between 1 and 1000"
                )
            max_results = int(raw_max)
        status_equals = args.get("statusEquals")
        if status_equals is not None and status_equals not in STATUSES:
            raise _validation(
                f"1 validation error detected: Value '{status_equals}' at 'statusEquals' failed to satisfy "
                f"constraint: Member must satisfy enum value set: [{', '.join(STATUSES)}]"
            )
        sort_by = args.get("sortBy", "CreationTime")
        sort_order = args.get("sortOrder", "Descending")
        if sort_by != "CreationTime" or sort_order not in ("Ascending", "Descending"):
            raise _validation("sortBy must be CreationTime and sortOrder Ascending or Descending.")
        after = _timestamp(args["submitTimeAfter"], "submitTimeAfter") if "submitTimeAfter" in args else None
        before = _timestamp(args["submitTimeBefore"], "submitTimeBefore") if "submitTimeBefore" in args else None
        name_contains = args.get("nameContains")
        # The token carries the filters it was made for, so a token cannot page another query.
        query = "\x1f".join(str(v) for v in (status_equals, sort_order, after, before, name_contains))
        start = 0
        token = args.get("nextToken")
        if token is not None:
            try:
                offset, _, signature = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
                start = int(offset)
            except ValueError:
                raise _validation("The nextToken is not valid.") from None
            if signature != hex_id("list", query, length=16):
                raise _validation("The nextToken does not belong to this query.")
        with self.emulator.lock:
            now = self.emulator.now()
            jobs = list(self._jobs.values())
            if sort_order == "Descending":
                jobs.reverse()
            matched = []
            for job in jobs:
                self._advance(job, now)
                if name_contains is not None and name_contains not in job.name:
                    continue
                if status_equals is not None and self._status(job, now) != status_equals:
                    continue
                if after is not None and job.batch.created <= after:
                    continue
                if before is not None and job.batch.created >= before:
                    continue
                matched.append(job)
            page = matched[start : start + max_results]
            payload: dict[str, Any] = {"invocationJobSummaries": [self._job_json(job, now) for job in page]}
        if start + max_results < len(matched):
            raw = f"{start + max_results}:{hex_id('list', query, length=16)}"
            payload["nextToken"] = base64.urlsafe_b64encode(raw.encode()).decode()
        return self._ok(payload)

    # -- the job as Bedrock shows it --------------------------------------------------------------

    def _status(self, job: _Job, now: float) -> str:
        batch = job.batch
        kind = batch.end_kind
        if kind == "failed":
            return "Failed"
        if kind == "cancelled":
            return "Stopped"
        if kind == "completed":
            return "Completed"
        if kind == "expired":
            processed = job.counts.get("processedRecordCount", 0)
            if processed == 0:
                return "Expired"
            return "Completed" if processed == len(batch.requests) else "PartiallyCompleted"
        if batch.cancel_at is not None:
            return "Stopping"
        if now < batch.phase_time(_VALIDATING_AT):
            return "Submitted"
        if now < batch.phase_time(_SCHEDULED_AT):
            return "Validating"
        if now < batch.phase_time(_RUNNING_AT) or job.never_starts or batch.errors:
            return "Validating" if batch.errors else "Scheduled"
        return "InProgress"

    def _last_modified(self, job: _Job, now: float, status: str) -> float:
        batch = job.batch
        if batch.ended_at is not None:
            return batch.ended_at
        if batch.cancel_at is not None:
            return batch.cancel_at
        fraction = {"Validating": _VALIDATING_AT, "Scheduled": _SCHEDULED_AT, "InProgress": _RUNNING_AT}.get(status)
        return batch.created if fraction is None else batch.phase_time(fraction)

    def _counts(self, job: _Job, now: float, status: str) -> dict[str, int]:
        batch = job.batch
        if job.counts:
            return job.counts  # the job has ended and its output is written
        success = errors = 0
        total = len(batch.requests)
        if status in ("Submitted", "Validating", "Failed"):
            total = 0  # Bedrock reports zeros until the input is validated
        elif not job.never_starts:
            success, errors = batch.finished(batch.cancel_at if batch.cancel_at is not None else now)
        return {
            "totalRecordCount": total,
            "processedRecordCount": success + errors,
            "successRecordCount": success,
            "errorRecordCount": errors,
        }

    def _job_json(self, job: _Job, now: float) -> dict[str, Any]:
        batch = job.batch
        status = self._status(job, now)
        payload: dict[str, Any] = {
            "jobArn": job.arn,
            "jobName": job.name,
            "modelId": job.model_id,
            "clientRequestToken": job.token,
            "roleArn": job.role_arn,
            "status": status,
            "submitTime": iso(batch.created),
            "lastModifiedTime": iso(self._last_modified(job, now, status)),
            "inputDataConfig": job.input_config,
            "outputDataConfig": job.output_config,
            "timeoutDurationInHours": job.timeout_hours,
            "jobExpirationTime": iso(batch.created + job.timeout_hours * 3600),
            **self._counts(job, now, status),
        }
        if status == "Failed" and batch.errors:
            message = "; ".join(str(e.get("message")) for e in batch.errors)
            payload["message"] = message[:_MAX_MESSAGE]
        if batch.end_kind is not None:
            payload["endTime"] = iso(batch.ended_at)
        if job.invocation_type is not None:
            payload["modelInvocationType"] = job.invocation_type
        if job.vpc_config is not None:
            payload["vpcConfig"] = job.vpc_config
        return payload

    # -- model outputs ----------------------------------------------------------------------------

    def _model_output(self, job: _Job, request: BatchRequest) -> tuple[dict[str, Any], int, int]:
        """The InvokeModel (or Converse) response body of the job's model for one record."""
        body = request.body["modelInput"]
        key = f"{job.id}/{request.custom_id}"
        if job.invocation_type == "Converse":
            return _converse_output(body, key)
        knobs = self.emulator.knobs
        broken = schemas.mismatch(knobs.seed, key, knobs.schema_mismatch_rate)
        return invoke_output(job.model_id, body, key, broken, knobs.cached_input_rate)

    def _record_problem(self, job: _Job, body: dict[str, Any]) -> str | None:
        """Why Bedrock would refuse one record of the job (a Converse job's records are Converse bodies,
        which botocore's own parameter checks shape)."""
        return None if job.invocation_type == "Converse" else model_input_problem(job.model_id, body)

    # -- the runtime: InvokeModel, Converse -------------------------------------------------------

    def _invoke(self, request: Request, model_id: str) -> Response:
        return self._call(request, model_id, converse=False)

    def _converse(self, request: Request, model_id: str) -> Response:
        return self._call(request, model_id, converse=True)

    def _call(self, request: Request, model_id: str, converse: bool) -> Response:
        """One runtime call: the rate limit, the knobs' latency, then the model's answer or Bedrock's error."""
        emulator = self.emulator
        raw = request.get_data()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        key = call_key(raw if body is None else body)
        admission = emulator.admit(self.provider)
        if admission.allowed:
            # Outside the lock: calls run side by side, as at Bedrock.
            time.sleep(max(0.0, emulator.knobs.realtime_latency))
            try:
                response = self._run(request, model_id, body, key, converse)
            except _AwsError as exc:
                response = self._runtime_error(exc.code, exc.message, exc.status)
        else:
            response = self._runtime_error("ThrottlingException", _THROTTLED_MESSAGE, 429)
        emulator.record_call(self.provider, key, response.status_code)
        return response

    def _run(self, request: Request, model_id: str, body: Any, key: str, converse: bool) -> Response:
        if not 1 <= len(model_id) <= 2048 or not INVOKE_MODEL_ID.fullmatch(model_id):
            raise _validation(
                f"1 validation error detected: Value '{model_id[:200]}' at 'modelId' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: " + INVOKE_MODEL_ID.pattern
            )
        if MODEL_FAMILY.match(model_name(model_id)) is None:
            raise _validation("The provided model identifier is invalid.")
        content_type = request.mimetype
        if not converse and content_type and content_type != "application/json":
            # InvokeModel's contentType: "You must specify application/json" (botocore's service model).
            raise _validation(f"The Content-Type {content_type} is not supported: send application/json.")
        if not isinstance(body, dict):
            found = "nothing" if body is None else type(body).__name__
            raise _validation(
                f"Malformed input request: #: expected type: JSONObject, found: {found}, please reformat your "
                "input and try again."
            )
        problem = None if converse else model_input_problem(model_id, body)
        if problem is not None:
            raise _validation(problem)
        knobs = self.emulator.knobs
        failure = draw_call_failure(knobs.seed, self.provider, key, knobs.failure_rate)
        if failure == REFUSED:
            raise _validation(_REFUSED_MESSAGE)
        if failure == SERVER_ERROR:
            raise _AwsError("InternalServerException", _SERVER_ERROR_MESSAGE, 500)
        answer_key = f"call/{self.emulator.next_id('bedrock-call')}"
        output, in_tokens, out_tokens = (
            _converse_output(body, answer_key)
            if converse
            else invoke_output(
                model_id,
                body,
                answer_key,
                schemas.mismatch(knobs.seed, answer_key, knobs.schema_mismatch_rate),
                knobs.cached_input_rate,
            )
        )
        response = json_response(output)
        response.headers["x-amzn-RequestId"] = self._request_id()
        if not converse:
            # What InvokeModel's answers carry besides the body (the headers github.com/aws/aws-sdk-js-v3/
            # issues/5917 and boto/boto3/issues/3884 read the token counts from).
            response.headers["X-Amzn-Bedrock-Invocation-Latency"] = str(100 + int(unit(answer_key, "latency") * 900))
            response.headers["X-Amzn-Bedrock-Input-Token-Count"] = str(in_tokens)
            response.headers["X-Amzn-Bedrock-Output-Token-Count"] = str(out_tokens)
        return response

    def _runtime_error(self, code: str, message: str, status: int) -> Response:
        """A runtime error as botocore's rest-json parser reads it: the type in x-amzn-ErrorType (with the
        namespace the runtime appends), {"message"} as the body."""
        response = self._aws_error(code, message, status)
        response.headers["x-amzn-ErrorType"] = code + _RUNTIME_ERROR_NAMESPACE
        return response


def model_name(model_id: str) -> str:
    """The model id without an ARN's prefix (foundation-model/..., inference-profile/...)."""
    return model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id


def model_input_problem(model_id: str, body: dict[str, Any]) -> str | None:
    """Why Bedrock would refuse `body` as the model's InvokeModel body (a batch record's modelInput), in
    its words (see _BODY_KEYS), or None."""
    family = MODEL_FAMILY.match(model_name(model_id))
    if family is None:
        return "The provided model identifier is invalid."
    required, allowed = _BODY_KEYS[family.group(1)]
    problems = [f"#: required key [{key}] not found" for key in sorted(required - body.keys())]
    problems += [f"#: extraneous key [{key}] is not permitted" for key in sorted(body.keys() - allowed)]
    if not problems:
        if family.group(1) == "anthropic.claude-":
            return schemas.anthropic_problem(body)
        return schemas.nova_problem(body) if family.group(1) == "amazon.nova-" else None
    found = problems[0] if len(problems) == 1 else f"{len(problems)} schema violations found"
    return f"Malformed input request: {found}, please reformat your input and try again."


def invoke_output(
    model_id: str, body: dict[str, Any], key: str, broken: bool = False, cached_rate: float = 0.0
) -> tuple[dict[str, Any], int, int]:
    """The model's InvokeModel response body for `body` (what a batch's modelOutput holds), with its input
    and output tokens; `broken`: a structured answer that deliberately breaks its schema; `cached_rate`:
    the share of a Claude prompt reported as cache reads (Nova and Llama report none)."""
    name = model_name(model_id)
    family = MODEL_FAMILY.match(name)
    kind = family.group(1) if family else ""
    if kind == "anthropic.claude-":
        message, in_tokens, out_tokens = anthropic_message(body, key, cached_rate)
        schemas.anthropic_reply(body, message, key, broken)
        message["id"] = "msg_bdrk_" + message["id"].removeprefix("msg_")
        message["model"] = re.sub(r"^(?:[a-z]+\.)?anthropic\.", "", name).split(":")[0]
        for part in message["content"]:
            part.pop("citations", None)
        message["usage"].pop("service_tier", None)
        return message, in_tokens, out_tokens
    if kind == "amazon.nova-":
        output, in_tokens, out_tokens = _converse_output(body, key, nova=True)
        schemas.nova_reply(body, output, key, broken)
        return output, in_tokens, out_tokens
    return _llama_output(body)


def _statements(document: Any) -> list[dict[str, Any]]:
    if isinstance(document, str):
        document = orjson.loads(document)
    found = document.get("Statement", []) if isinstance(document, dict) else []
    return [found] if isinstance(found, dict) else [st for st in found if isinstance(st, dict)]


def _statement_verdict(statement: dict[str, Any], action: str, resource: str) -> str | None:
    """ "Allow" or "Deny" when the statement covers the action on the resource, else None. A conditional
    Allow is not counted (the emulator cannot tell whether its condition holds): stricter, never looser."""

    def listed(value: Any) -> list[str]:
        return [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]

    actions = listed(statement.get("Action"))
    resources = listed(statement.get("Resource"))
    if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
        return None
    if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
        return None
    effect = statement.get("Effect")
    if effect == "Allow" and statement.get("Condition"):
        return None
    return effect if effect in ("Allow", "Deny") else None


def _s3_reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        return f"{error.get('Code', 'Error')}: {error.get('Message') or 'access failed'}"
    return str(exc)


def _converse_text(body: dict[str, Any]) -> tuple[str, int]:
    """The last user text of a Converse/Nova body, and the characters of every message and system part."""
    user_text, chars = messages_text(body.get("messages"))
    system = body.get("system")
    chars += len(text_of(system)) if isinstance(system, list) else len(system) if isinstance(system, str) else 0
    return user_text, chars


def _converse_output(body: dict[str, Any], key: str, nova: bool = False) -> tuple[dict[str, Any], int, int]:
    """Nova's InvokeModel body, which is also the Converse API's response shape."""
    user_text, chars = _converse_text(body)
    config = body.get("inferenceConfig") if isinstance(body.get("inferenceConfig"), dict) else {}
    text, out_tokens, cut = echo(user_text, positive(config or {}, "maxTokens", "max_new_tokens"))
    in_tokens = tokens(chars)
    usage: dict[str, Any] = {
        "inputTokens": in_tokens,
        "outputTokens": out_tokens,
        "totalTokens": in_tokens + out_tokens,
    }
    if nova:
        usage.update(cacheReadInputTokenCount=0, cacheWriteInputTokenCount=0)
    output: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "max_tokens" if cut else "end_turn",
        "usage": usage,
    }
    if not nova:
        output["metrics"] = {"latencyMs": 100 + int(unit(key, "latency") * 900)}
    return output, in_tokens, out_tokens


def _llama_output(body: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    assert isinstance(prompt, str)
    turns = _LLAMA_USER_TURN.findall(prompt)
    user_text = turns[-1].strip() if turns else prompt
    text, out_tokens, cut = echo(user_text, positive(body, "max_gen_len"))
    in_tokens = tokens(len(prompt))
    output = {
        "generation": text,
        "prompt_token_count": in_tokens,
        "generation_token_count": out_tokens,
        "stop_reason": "length" if cut else "stop",
    }
    return output, in_tokens, out_tokens
