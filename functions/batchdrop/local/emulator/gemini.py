"""Gemini Batch Mode (the Gemini Developer API, ``v1beta``) for the provider emulator.

The official ``google-genai`` SDK talks to it through ``HttpOptions(base_url=..., api_version="v1beta")``:

- Files: the resumable upload (``POST /upload/v1beta/files`` with ``X-Goog-Upload-Protocol: resumable`` and
  ``X-Goog-Upload-Command: start`` answers an ``x-goog-upload-url``; the SDK then POSTs the bytes there in
  ``upload`` / ``upload, finalize`` chunks), ``GET/DELETE /v1beta/files/{id}``, ``GET /v1beta/files`` and
  ``GET /v1beta/files/{id}:download?alt=media`` (generated files only, as at Google).
- Batches: ``POST /v1beta/models/{model}:batchGenerateContent`` with ``{"batch": {"displayName", "inputConfig":
  {"fileName"}}}``, ``GET /v1beta/batches/{id}``, ``GET /v1beta/batches`` (``pageSize``/``pageToken``, newest
  first), ``POST /v1beta/batches/{id}:cancel`` and ``DELETE /v1beta/batches/{id}``. A batch is a
  long-running Operation: ``{"name": "batches/…", "metadata": GenerateContentBatch, "done", "response" |
  "error"}``.

- Real time: ``POST /v1beta/models/{model}:generateContent`` with a GenerateContentRequest, answered with a
  GenerateContentResponse built as a batch's result is (`_generate_content_response`), after the checks the
  batch side applies to each request (`_request_problem`) and Google's refusal of unknown fields. Past the
  ``realtime_rpm`` knob it answers 429 RESOURCE_EXHAUSTED with Google's QuotaFailure, Help and RetryInfo
  details (`_rate_limited`).

Only ``v1beta`` is served: the SDK's default ``v1`` paths (``/v1/files/…``, ``/v1/batches/…``) are the OpenAI
emulation's, and Google documents Batch Mode under ``v1beta``.

Shapes follow the REST reference (ai.google.dev/api/batch-mode: GenerateContentBatch, BatchStats, BatchState)
and what the SDK's converters read (``google/genai/batches.py`` ``_BatchJob_from_mldev``: ``metadata.state``,
``metadata.displayName``, ``metadata.createTime``/``endTime``/``updateTime``, ``metadata.output.responsesFile``).
int64 fields (``batchStats.*``, ``sizeBytes``) are JSON strings and zero counts are omitted, as proto3 JSON does.

Output lines are ``{"key", "response": GenerateContentResponse}`` or ``{"key", "error": google.rpc.Status}``
(gRPC code 3 INVALID_ARGUMENT / 13 INTERNAL and a message; the shape of the gemini-rust crate's
``BatchResponseFileItem``/``IndividualRequestError``, which were written against the live API). Requests a
batch never ran (expired, cancelled) get no line. The reference says lines are "in the same order as the input
requests", but users report otherwise (googleapis/python-genai#1909), so they are shuffled deterministically:
readers must match on ``key``.

Quotas and the window, as Google documents them (ai.google.dev/gemini-api/docs/batch-mode,
ai.google.dev/gemini-api/docs/rate-limits, ai.google.dev/gemini-api/docs/files):

- ``window_seconds``: "Batch jobs ... expire after 48 hours": a batch still pending or running 48 h
  after its creation (the emulator's clock) ends BATCH_STATE_EXPIRED with no responses file at all.
  (The ``expire_rate`` knob still models an expiry at the latency that keeps what finished.)
- ``max_enqueued_tokens``: the per-model "Batch Enqueued Tokens" limit: a create whose input would
  put the model's unended batches past it is a 429 RESOURCE_EXHAUSTED. Off (None) unless set; its
  value depends on the project's tier.
- ``max_storage_bytes``: "You can store up to 20 GB of files per project": an upload that would pass
  it is a 429 RESOURCE_EXHAUSTED until files are deleted (uploaded and generated files both count).

It is one of the emulator's plugins (`batchdrop.local.emulator.core.Plugin`).
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from batchdrop.local.emulator import schemas
from batchdrop.local.emulator.batches import Batch
from batchdrop.local.emulator.canned import (
    REFUSED,
    SERVER_ERROR,
    cached_part,
    call_key,
    draw_call_failure,
    echo,
    hex_id,
    iso,
    positive,
    text_of,
    tokens,
)
from batchdrop.local.emulator.core import Admission, Emulator, Plugin, Route
from batchdrop.local.emulator.web import ClientError, json_response, parse_json_body, stream

API_VERSION = "v1beta"
_PREFIXES = (f"/{API_VERSION}/", f"/upload/{API_VERSION}/", f"/download/{API_VERSION}/")
# Models the emulator runs; any other is accepted at create and fails the batch (not found).
KNOWN_MODEL = re.compile(r"gemini-[a-z0-9][a-z0-9.-]*")
# Not documented by Google; our provider keeps display names within it.
MAX_DISPLAY_NAME = 128
MAX_FILE_BYTES = 2 * 1024**3  # Batch Mode input files: up to 2 GB
MAX_STORAGE_BYTES = 20 * 1024**3  # Files API: up to 20 GB per project
WINDOW_SECONDS = 48 * 3600  # Batch Mode: jobs pending or running for 48 hours expire
FILE_TTL_SECONDS = 48 * 3600  # Files API: files are deleted after 48 hours (not enforced here)
FILES_PAGE_DEFAULT, FILES_PAGE_MAX = 10, 100
BATCHES_PAGE_DEFAULT, BATCHES_PAGE_MAX = 50, 1000
_MAX_REPORTED_ERRORS = 5

PENDING = "BATCH_STATE_PENDING"
RUNNING = "BATCH_STATE_RUNNING"
SUCCEEDED = "BATCH_STATE_SUCCEEDED"
FAILED = "BATCH_STATE_FAILED"
CANCELLED = "BATCH_STATE_CANCELLED"
EXPIRED = "BATCH_STATE_EXPIRED"
_END_STATES = {"completed": SUCCEEDED, "failed": FAILED, "expired": EXPIRED, "cancelled": CANCELLED}

_BATCH_TYPE = f"type.googleapis.com/google.ai.generativelanguage.{API_VERSION}.GenerateContentBatch"
_OUTPUT_TYPE = f"type.googleapis.com/google.ai.generativelanguage.{API_VERSION}.GenerateContentBatchOutput"

# HTTP status → the canonical status Google puts in its error bodies.
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Per-request failures in the output file (google.rpc.Status: gRPC code and message).
_REFUSED_LINE = (3, "Request contains an invalid argument. (emulated failure)")
_FAILED_LINE = (13, "Internal error encountered. (emulated failure)")
# GenerateContentRequest's fields (ai.google.dev/api/generate-content#request-body: contents, tools,
# toolConfig, safetySettings, systemInstruction, generationConfig, cachedContent; `model` is the path's),
# by their JSON names and their proto names: Google's JSON parser takes both, and refuses any other with
# 400 'Invalid JSON payload received. Unknown name "x": Cannot find field.' and a BadRequest detail
# (the answer quoted in github.com/Alishahryar1/free-claude-code/issues/542).
_REQUEST_FIELDS = frozenset(
    {
        "model",
        "contents",
        "tools",
        "toolConfig",
        "tool_config",
        "safetySettings",
        "safety_settings",
        "systemInstruction",
        "system_instruction",
        "generationConfig",
        "generation_config",
        "cachedContent",
        "cached_content",
    }
)
# A requests-per-minute quota's 429, as the Gemini API words it and details it (QuotaFailure, Help,
# RetryInfo: the answers quoted in github.com/RooCodeInc/Roo-Code/issues/3883,
# googleapis/python-genai/issues/2044 and continuedev/continue/issues/12744). RetryInfo's retryDelay is
# a google.protobuf.Duration in JSON ("26s"); Google sends no Retry-After header.
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, "
    "head to: https://ai.dev/rate-limit. \n* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}"
    "\nPlease retry in {delay:.6f}s."
)
# The paid tier's metric (google-gemini/deprecated-generative-ai-python/issues/206) and the per-minute quota
# id that python-genai/issues/2044 shows with a "-FreeTier" suffix.
_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_requests"
_QUOTA_ID = "GenerateRequestsPerMinutePerProjectPerModel"
_UNREGISTERED = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)


@dataclass
class _GeminiFile:
    id: str
    mime_type: str
    created: float
    data: bytes
    source: str  # UPLOADED | GENERATED
    display_name: str | None = None

    @property
    def name(self) -> str:
        return f"files/{self.id}"

    def to_json(self, host_url: str) -> dict[str, Any]:
        base = host_url.rstrip("/")
        file: dict[str, Any] = {
            "name": self.name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": iso(self.created),
            "updateTime": iso(self.created),
            "expirationTime": iso(self.created + FILE_TTL_SECONDS),
            "sha256Hash": base64.b64encode(hashlib.sha256(self.data).hexdigest().encode()).decode(),
            "uri": f"{base}/{API_VERSION}/files/{self.id}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.display_name:
            file["displayName"] = self.display_name
        if self.source == "GENERATED":
            file["downloadUri"] = f"{base}/download/{API_VERSION}/files/{self.id}:download?alt=media"
        return file


@dataclass
class _Upload:
    """A resumable upload session: what the start request declared, and the bytes received so far."""

    id: str
    size: int
    mime_type: str
    display_name: str | None
    received: bytearray = field(default_factory=bytearray)


@dataclass
class _Lines:
    requests: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)  # key, request, valid
    errors: list[dict[str, Any]] = field(default_factory=list)
    line_count: int = 0


class GeminiEmulation(Plugin):
    """The Gemini Files API and Batch Mode, served by the emulator and sharing its batches."""

    provider = "gemini"
    prefixes = _PREFIXES
    creates = re.compile(rf"/{API_VERSION}/models/[^/]+:batchGenerateContent")

    def __init__(self, emulator: Emulator) -> None:
        super().__init__(emulator)
        self.max_file_bytes = MAX_FILE_BYTES
        self.max_storage_bytes = MAX_STORAGE_BYTES
        self.window_seconds = WINDOW_SECONDS
        # A model's unended batches may hold this many input tokens (None: no limit).
        self.max_enqueued_tokens: int | None = None
        self._tokens: dict[str, int] = {}  # batch id → the input tokens it enqueued
        self._files: dict[str, _GeminiFile] = {}  # in creation order
        self._uploads: dict[str, _Upload] = {}
        self._deleted_batches: set[str] = set()

    # -- the plugin -----------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        v = API_VERSION
        file_id = r"(?P<file_id>[a-z0-9-]+)"
        batch_id = r"(?P<batch_id>[a-z0-9-]+)"
        return [
            ("POST", re.compile(rf"/upload/{v}/files"), self._upload),
            ("GET", re.compile(rf"/{v}/files"), self._list_files),
            ("GET", re.compile(rf"/{v}/files/{file_id}"), self._get_file),
            ("DELETE", re.compile(rf"/{v}/files/{file_id}"), self._delete_file),
            ("GET", re.compile(rf"/{v}/files/{file_id}:download"), self._download),
            ("GET", re.compile(rf"/download/{v}/files/{file_id}:download"), self._download),
            ("POST", re.compile(rf"/{v}/models/(?P<model>[^/:]+):batchGenerateContent"), self._create_batch),
            ("POST", re.compile(rf"/{v}/models/(?P<model>[^/:]+):generateContent"), self._generate_content),
            ("GET", re.compile(rf"/{v}/batches"), self._list_batches),
            ("GET", re.compile(rf"/{v}/batches/{batch_id}"), self._get_batch_route),
            ("DELETE", re.compile(rf"/{v}/batches/{batch_id}"), self._delete_batch),
            ("POST", re.compile(rf"/{v}/batches/{batch_id}:cancel"), self._cancel_batch),
        ]

    def reach(self, base_url: str) -> list[tuple[str, str]]:
        return [("Gemini base URL", f"{base_url} (genai.Client(http_options={{'base_url': ...}}))")]

    def authorised(self, request: Request) -> bool:
        # The upload URL carries the session (`upload_id`): the SDK sends the chunks without the key.
        if request.path.startswith(f"/upload/{API_VERSION}/files") and request.args.get("upload_id"):
            return True
        return bool(request.headers.get("x-goog-api-key", "").strip() or request.args.get("key", "").strip())

    def error(self, problem: ClientError, headers: dict[str, str] | None = None) -> Response:
        status, message = problem.status, problem.message
        if status == 401:
            # Google answers a call without an API key with 403 PERMISSION_DENIED.
            status, message = 403, _UNREGISTERED
        return _google_error(status, message, headers=headers)

    def write_results(self, batch: Batch) -> None:
        """The responses file: a line per request that ran, shuffled."""
        lines: list[bytes] = []
        in_total = out_total = 0
        for request in batch.requests:
            outcome = batch.outcomes[request.custom_id]
            key = f"{batch.id}/{request.custom_id}"
            line: dict[str, Any]
            if outcome == "succeeded":
                knobs = self.emulator.knobs
                response, in_tokens, out_tokens = _generate_content_response(
                    request.body, key, batch.model or "", knobs.cached_input_rate
                )
                broken = schemas.mismatch(knobs.seed, key, knobs.schema_mismatch_rate)
                schemas.gemini_reply(request.body, response, key, broken)
                in_total += in_tokens
                out_total += out_tokens
                line = {"key": request.custom_id, "response": response}
            elif outcome in (REFUSED, SERVER_ERROR):
                code, message = _REFUSED_LINE if outcome == REFUSED else _FAILED_LINE
                problem = _request_problem(request.body)
                if outcome == REFUSED and problem:
                    message = problem
                line = {"key": request.custom_id, "error": {"code": code, "message": message}}
            else:
                continue  # expired or cancelled before it ran: Gemini writes nothing for it
            lines.append(orjson.dumps(line))
        random.Random(hex_id(batch.id, "shuffle")).shuffle(lines)
        batch.usage = (in_total, out_total)
        if lines:
            file = _GeminiFile(
                id=self.emulator.next_id("gemini-file", 16),
                mime_type="application/jsonl",
                created=batch.ended_at or batch.created,
                data=b"".join(line + b"\n" for line in lines),
                source="GENERATED",
                display_name=f"batches/{batch.id} responses",
            )
            self._files[file.id] = file
            batch.output_file_id = file.name

    # -- real time --------------------------------------------------------------------------------

    def _generate_content(self, request: Request, model: str) -> Response:
        """models.generateContent: one request, run at once (after the rate limit and the knobs' latency)."""
        emulator = self.emulator
        raw = request.get_data()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        key = call_key(raw if body is None else body)
        admission = emulator.admit(self.provider)
        if admission.allowed:
            # Outside the lock: calls run side by side, as at Google.
            time.sleep(max(0.0, emulator.knobs.realtime_latency))
            response = self._run(model, body, key)
        else:
            response = _rate_limited(model, admission)
        emulator.record_call(self.provider, key, response.status_code)
        return response

    def _run(self, model: str, body: Any, key: str) -> Response:
        if not KNOWN_MODEL.fullmatch(model):
            # The batch side's message for an unknown model, for this method.
            return _google_error(
                404,
                f"models/{model} is not found for API version {API_VERSION}, or is not supported for "
                "generateContent. Call ListModels to see the list of available models and their supported methods.",
            )
        if not isinstance(body, dict):
            return _google_error(400, "Invalid JSON payload received. The request body must be a JSON object.")
        unknown = sorted(body.keys() - _REQUEST_FIELDS)
        if unknown:
            problems = [f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.' for name in unknown]
            violations = [{"description": problem} for problem in problems]
            details = [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}]
            return _google_error(400, "\n".join(problems), details)
        problem = _request_problem(body)
        if problem is not None:
            return _google_error(400, problem)
        knobs = self.emulator.knobs
        failure = draw_call_failure(knobs.seed, self.provider, key, knobs.failure_rate)
        if failure is not None:
            # The messages of a batch's failed lines (_REFUSED_LINE, _FAILED_LINE), as HTTP answers.
            return _google_error(400, _REFUSED_LINE[1]) if failure == REFUSED else _google_error(500, _FAILED_LINE[1])
        # Each answer has its own responseId, as each call at Google does.
        answer_key = f"call/{self.emulator.next_id('gemini-call')}"
        response, _, _ = _generate_content_response(body, answer_key, model, knobs.cached_input_rate)
        broken = schemas.mismatch(knobs.seed, answer_key, knobs.schema_mismatch_rate)
        schemas.gemini_reply(body, response, answer_key, broken)
        return json_response(response)

    # -- files ------------------------------------------------------------------------------------

    def _upload(self, request: Request) -> Response:
        upload_id = request.args.get("upload_id")
        if upload_id:
            return self._upload_chunk(request, upload_id)
        if request.headers.get("X-Goog-Upload-Protocol", "").lower() != "resumable":
            raise ClientError(400, "The emulator supports only the resumable upload protocol.")
        if request.headers.get("X-Goog-Upload-Command", "").lower() != "start":
            raise ClientError(400, "A resumable upload starts with 'X-Goog-Upload-Command: start'.")
        try:
            size = int(request.headers.get("X-Goog-Upload-Header-Content-Length", ""))
        except ValueError:
            raise ClientError(400, "Missing or invalid X-Goog-Upload-Header-Content-Length.") from None
        if size > self.max_file_bytes:
            raise ClientError(400, f"File is too large: {size} bytes; the limit is {self.max_file_bytes} bytes.")
        with self.emulator.lock:
            stored = self.stored_bytes()
        if stored + size > self.max_storage_bytes:
            raise ClientError(
                429,
                f"Resource has been exhausted: the project stores {stored} bytes of files and this upload of "
                f"{size} bytes would pass the limit of {self.max_storage_bytes} bytes. Delete files first.",
            )
        body = parse_json_body(request) if request.get_data() else {}
        given = body.get("file")
        meta: dict[str, Any] = given if isinstance(given, dict) else {}
        mime_type = (
            request.headers.get("X-Goog-Upload-Header-Content-Type")
            or meta.get("mimeType")
            or meta.get("mime_type")
            or "application/octet-stream"
        )
        display_name = meta.get("displayName") or meta.get("display_name")
        with self.emulator.lock:
            upload = _Upload(
                id=self.emulator.next_id("gemini-upload", 32),
                size=size,
                mime_type=str(mime_type),
                display_name=str(display_name) if display_name else None,
            )
            self._uploads[upload.id] = upload
        base = request.host_url.rstrip("/")
        url = f"{base}/upload/{API_VERSION}/files?upload_id={upload.id}&upload_protocol=resumable"
        response = Response(b"", status=200, mimetype="application/json")
        response.headers["x-goog-upload-url"] = url
        response.headers["x-goog-upload-status"] = "active"
        response.headers["x-goog-upload-chunk-granularity"] = str(256 * 1024)
        return response

    def _upload_chunk(self, request: Request, upload_id: str) -> Response:
        command = {part.strip().lower() for part in request.headers.get("X-Goog-Upload-Command", "").split(",")}
        data = request.get_data()
        with self.emulator.lock:
            upload = self._uploads.get(upload_id)
            if upload is None:
                return self._upload_error(404, f"No upload session {upload_id!r}.")
            offset = request.headers.get("X-Goog-Upload-Offset")
            if "upload" in command:
                if offset is None or not offset.isdigit() or int(offset) != len(upload.received):
                    expected = len(upload.received)
                    return self._upload_error(400, f"Invalid X-Goog-Upload-Offset {offset!r}: expected {expected}.")
                if len(upload.received) + len(data) > upload.size:
                    return self._upload_error(400, "The upload is larger than its declared size.")
                upload.received += data
            if "finalize" not in command:
                response = Response(b"", status=200)
                response.headers["x-goog-upload-status"] = "active"
                response.headers["x-goog-upload-size-received"] = str(len(upload.received))
                return response
            if len(upload.received) != upload.size:
                return self._upload_error(
                    400, f"Finalized after {len(upload.received)} bytes, but {upload.size} were declared."
                )
            del self._uploads[upload_id]
            file = _GeminiFile(
                id=self.emulator.next_id("gemini-file", 16),
                mime_type=upload.mime_type,
                created=self.emulator.now(),
                data=bytes(upload.received),
                source="UPLOADED",
                display_name=upload.display_name,
            )
            self._files[file.id] = file
        response = json_response({"file": file.to_json(request.host_url)})
        response.headers["x-goog-upload-status"] = "final"
        return response

    def stored_bytes(self) -> int:
        """What the project's files hold, the uploaded and the generated (under the emulator's lock)."""
        return sum(len(f.data) for f in self._files.values())

    def file_names(self) -> list[str]:
        """The project's files (`files/…`), oldest first."""
        with self.emulator.lock:
            return [f.name for f in self._files.values()]

    def _upload_error(self, status: int, message: str) -> Response:
        # `final`: the SDK retries chunk requests that carry no upload status, so a refusal carries one.
        response = self.error(ClientError(status, message))
        response.headers["x-goog-upload-status"] = "final"
        return response

    def _file(self, file_id: str) -> _GeminiFile:
        with self.emulator.lock:
            file = self._files.get(file_id)
        if file is None:
            raise ClientError(403, f"You do not have permission to access the File {file_id} or it may not exist.")
        return file

    def _list_files(self, request: Request) -> Response:
        size = _page_size(request, FILES_PAGE_DEFAULT, FILES_PAGE_MAX)
        with self.emulator.lock:
            files = list(reversed(self._files.values()))
        start = _page_start(request, [f.id for f in files])
        page = files[start : start + size]
        body: dict[str, Any] = {"files": [f.to_json(request.host_url) for f in page]}
        if start + size < len(files):
            body["nextPageToken"] = _token(files[start + size].id)
        return json_response(body)

    def _get_file(self, request: Request, file_id: str) -> Response:
        return json_response(self._file(file_id).to_json(request.host_url))

    def _delete_file(self, request: Request, file_id: str) -> Response:
        file = self._file(file_id)
        with self.emulator.lock:
            self._files.pop(file.id, None)
        return json_response({})

    def _download(self, request: Request, file_id: str) -> Response:
        file = self._file(file_id)
        if file.source != "GENERATED":
            raise ClientError(400, f"Only generated files can be downloaded; {file.name} was uploaded.")
        return stream(file.data, "application/octet-stream")

    # -- batches ----------------------------------------------------------------------------------

    def _create_batch(self, request: Request, model: str) -> Response:
        payload = parse_json_body(request)
        spec = payload.get("batch")
        if not isinstance(spec, dict):
            raise ClientError(400, "batch: field is required and must be an object.")
        display_name = spec.get("displayName", spec.get("display_name"))
        if not isinstance(display_name, str) or not display_name.strip():
            raise ClientError(400, "batch.display_name: field is required.")
        if len(display_name) > MAX_DISPLAY_NAME:
            raise ClientError(400, f"batch.display_name: must be at most {MAX_DISPLAY_NAME} characters.")
        config = spec.get("inputConfig", spec.get("input_config"))
        if not isinstance(config, dict):
            raise ClientError(400, "batch.input_config: field is required.")
        if "requests" in config:
            raise ClientError(400, "The emulator does not run inlined requests: upload a JSONL file instead.")
        file_name = config.get("fileName", config.get("file_name"))
        if not isinstance(file_name, str) or not file_name.startswith("files/"):
            raise ClientError(400, "batch.input_config.file_name: must be a file name like 'files/abc'.")
        file = self._file(file_name.removeprefix("files/"))
        model_name = f"models/{model.removeprefix('models/')}"
        lines = _read_lines(file.data)
        if not KNOWN_MODEL.fullmatch(model_name.removeprefix("models/")):
            lines.errors.insert(
                0,
                {
                    "line": None,
                    "message": f"{model_name} is not found for API version {API_VERSION}, "
                    "or is not supported for batchGenerateContent.",
                },
            )
        emulator = self.emulator
        with emulator.lock:
            enqueued = tokens(len(file.data))
            self._check_enqueued(model_name, enqueued)
            batch = emulator.create_batch(
                self.provider,
                emulator.next_id("gemini-batch", 32),
                [] if lines.errors else [(key, body) for key, body, _ in lines.requests],
                custom_ids=[key for key, _, _ in lines.requests],
                line_count=lines.line_count,
                metadata={"displayName": display_name},
                input_file_id=file.name,
                model=model_name,
                errors=lines.errors,
            )
            self._tokens[batch.id] = enqueued
            for item, (_, _, valid) in zip(batch.requests, lines.requests, strict=False):
                if not valid:
                    item.failure = REFUSED  # Gemini refuses it, whatever was drawn
            return json_response(self._operation(batch, batch.created, creating=True))

    def _check_enqueued(self, model: str, adding: int) -> None:
        """A 429 when the model's unended batches and this one would hold more input tokens than allowed."""
        limit = self.queue_limit(self.max_enqueued_tokens)
        if limit is None:
            return
        now = self.emulator.now()
        enqueued = 0
        for batch in self.emulator.batches(self.provider):
            self._advance(batch, now)
            if batch.model == model and batch.end_kind is None:
                enqueued += self._tokens.get(batch.id, 0)
        if enqueued + adding > limit:
            raise ClientError(
                429,
                f"You exceeded your current quota: batch enqueued tokens for {model} ({enqueued} enqueued, "
                f"{adding} more) would pass the limit of {limit}. Wait for batches to finish.",
            )

    def _advance(self, batch: Batch, now: float) -> None:
        """Move the batch on; one still pending or running at the end of its window expires, unanswered."""
        deadline = batch.created + self.window_seconds
        ends_at = batch.phase_time(0.1 if batch.errors else 1.0)
        if batch.end_kind is None and batch.cancel_at is None and now >= deadline and ends_at > deadline:
            # Whatever had run is dropped with it: an expired job has no responses file.
            batch.end_kind = "expired"
            batch.ended_at = deadline
            batch.outcomes = {request.custom_id: "expired" for request in batch.requests}
            return
        self.emulator.advance(batch, now)

    def _batch(self, batch_id: str) -> Batch:
        """The batch, under the emulator's lock."""
        batch = self.emulator.find_batch(batch_id)
        if batch is None or batch.provider != self.provider or batch_id in self._deleted_batches:
            raise ClientError(404, f"Batch batches/{batch_id} not found.")
        return batch

    def _get_batch_route(self, request: Request, batch_id: str) -> Response:
        with self.emulator.lock:
            batch = self._batch(batch_id)
            now = self.emulator.now()
            self._advance(batch, now)
            return json_response(self._operation(batch, now))

    def _list_batches(self, request: Request) -> Response:
        size = _page_size(request, BATCHES_PAGE_DEFAULT, BATCHES_PAGE_MAX)
        emulator = self.emulator
        with emulator.lock:
            batches = [b for b in emulator.batches(self.provider) if b.id not in self._deleted_batches]
            start = _page_start(request, [b.id for b in batches])
            page = batches[start : start + size]
            now = emulator.now()
            operations = []
            for batch in page:
                self._advance(batch, now)
                operations.append(self._operation(batch, now))
            body: dict[str, Any] = {"operations": operations}
            if start + size < len(batches):
                body["nextPageToken"] = _token(batches[start + size].id)
        return json_response(body)

    def _cancel_batch(self, request: Request, batch_id: str) -> Response:
        with self.emulator.lock:
            batch = self._batch(batch_id)
            now = self.emulator.now()
            self._advance(batch, now)
            self.emulator.cancel(batch, now)
        return json_response({})  # google.protobuf.Empty

    def _delete_batch(self, request: Request, batch_id: str) -> Response:
        # Like Google's: the client loses interest in the operation; deleting does not cancel it.
        with self.emulator.lock:
            self._batch(batch_id)
            self._deleted_batches.add(batch_id)
        return json_response({})

    def _operation(self, batch: Batch, now: float, creating: bool = False) -> dict[str, Any]:
        """The batch as Google's long-running Operation, with a GenerateContentBatch as its metadata."""
        name = f"batches/{batch.id}"
        kind = batch.end_kind
        if creating or (kind is None and (batch.errors or now < batch.phase_time(0.1))):
            state = PENDING
        elif kind is None:
            state = RUNNING
        else:
            state = _END_STATES[kind]
        updated = batch.ended_at if batch.ended_at is not None else batch.created
        if kind is None and not creating and not batch.errors and now >= batch.phase_time(0.1):
            updated = batch.phase_time(0.1)
        metadata: dict[str, Any] = {
            "@type": _BATCH_TYPE,
            "model": batch.model,
            "displayName": (batch.metadata or {}).get("displayName", ""),
            "inputConfig": {"fileName": batch.input_file_id},
            "createTime": iso(batch.created),
            "updateTime": iso(updated),
            "batchStats": self._stats(batch, now, creating),
            "state": state,
            "name": name,
        }
        if batch.ended_at is not None:
            metadata["endTime"] = iso(batch.ended_at)
        if batch.output_file_id:
            metadata["output"] = {"responsesFile": batch.output_file_id}
        operation: dict[str, Any] = {"name": name, "metadata": metadata}
        if kind is not None:
            operation["done"] = True
            if kind == "failed":
                operation["error"] = {"code": 3, "message": _failure_message(batch)}
            else:
                response: dict[str, Any] = {"@type": _OUTPUT_TYPE}
                if batch.output_file_id:
                    response["responsesFile"] = batch.output_file_id
                operation["response"] = response
        return operation

    @staticmethod
    def _stats(batch: Batch, now: float, creating: bool) -> dict[str, str]:
        total = len(batch.requests) if not batch.errors else batch.line_count
        succeeded = failed = 0
        if batch.end_kind is not None and batch.end_kind != "failed":
            for outcome in batch.outcomes.values():
                if outcome == "succeeded":
                    succeeded += 1
                elif outcome in (REFUSED, SERVER_ERROR):
                    failed += 1
        elif batch.end_kind is None and not creating and not batch.errors:
            succeeded, failed = batch.finished(now if batch.cancel_at is None else batch.cancel_at)
        pending = 0 if batch.end_kind == "failed" else total - succeeded - failed
        counts = {
            "requestCount": total,
            "successfulRequestCount": succeeded,
            "failedRequestCount": failed,
            "pendingRequestCount": pending,
        }
        # int64 as strings, zero values omitted (proto3 JSON); the total is always given.
        return {k: str(v) for k, v in counts.items() if v or k == "requestCount"}


# ---------------------------------------------------------------------------------------------------
# Input lines and answers


def _read_lines(data: bytes) -> _Lines:
    """Read a Batch Mode input file: one ``{"key": str, "request": GenerateContentRequest}`` a line."""
    result = _Lines()
    seen: set[str] = set()

    def fail(line: int | None, message: str) -> None:
        result.errors.append({"line": line, "message": message})

    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        result.line_count += 1
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            fail(number, "the line is not valid JSON")
            continue
        if not isinstance(line, dict):
            fail(number, "the line is not a JSON object")
            continue
        key = line.get("key")
        request = line.get("request")
        if not isinstance(key, str) or not key:
            fail(number, "missing 'key' (a non-empty string)")
        elif not isinstance(request, dict):
            fail(number, "missing 'request' (a GenerateContentRequest object)")
        elif key in seen:
            fail(number, f"duplicate key {key!r}")
        else:
            seen.add(key)
            result.requests.append((key, request, _request_problem(request) is None))
    if result.line_count == 0:
        fail(None, "the input file is empty")
    return result


def _failure_message(batch: Batch) -> str:
    errors = batch.errors
    shown = "; ".join(
        (f"line {e['line']}: " if e.get("line") else "") + str(e["message"]) for e in errors[:_MAX_REPORTED_ERRORS]
    )
    more = f" (and {len(errors) - _MAX_REPORTED_ERRORS} more)" if len(errors) > _MAX_REPORTED_ERRORS else ""
    return f"The batch failed: {shown}{more}."


def _google_error(
    status: int, message: str, details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
) -> Response:
    """Google's error body: {"error": {code, message, status, details?}} (google.rpc.Status as JSON)."""
    error: dict[str, Any] = {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return json_response({"error": error}, status, headers)


def _rate_limited(model: str, admission: Admission) -> Response:
    """The 429 of a requests-per-minute quota (see _QUOTA_MESSAGE)."""
    limit = admission.limit or 0
    # Whole seconds, rounded up, so that a client waiting this long is let through.
    delay = max(1, math.ceil(admission.reset_seconds))
    message = _QUOTA_MESSAGE.format(metric=_QUOTA_METRIC, limit=limit, model=model, delay=admission.reset_seconds)
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": _QUOTA_METRIC,
                    "quotaId": _QUOTA_ID,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": str(limit),
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"},
    ]
    return _google_error(429, message, details)


def _request_problem(request: dict[str, Any]) -> str | None:
    """Why Gemini would refuse the request, if it would."""
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    if not all(isinstance(c, dict) and isinstance(c.get("parts"), list) and c["parts"] for c in contents):
        return "* GenerateContentRequest.contents.parts: contents.parts must not be empty."
    return schemas.gemini_problem(request)


def _generate_content_response(
    request: dict[str, Any], key: str, model: str, cached_rate: float = 0.0
) -> tuple[dict[str, Any], int, int]:
    """An echo-like GenerateContentResponse (camelCase, as in the responses file). `cached_rate` of its
    prompt tokens are reported as cached, a part of promptTokenCount (google-genai's
    GenerateContentResponseUsageMetadata.cached_content_token_count and cache_tokens_details)."""
    given = request.get("contents")
    contents: list[Any] = given if isinstance(given, list) else []
    user_text = ""
    chars = 0
    for content in contents:
        if not isinstance(content, dict):
            continue
        text = text_of(content.get("parts"))
        chars += len(text)
        if content.get("role", "user") == "user":
            user_text = text
    system = request.get("systemInstruction", request.get("system_instruction"))
    if isinstance(system, dict):
        chars += len(text_of(system.get("parts")))
    config = request.get("generationConfig", request.get("generation_config"))
    config = config if isinstance(config, dict) else {}
    text, out_tokens, cut = echo(user_text, positive(config, "maxOutputTokens", "max_output_tokens"))
    n = min(positive(config, "candidateCount", "candidate_count") or 1, 8)
    in_tokens = tokens(chars)
    response: dict[str, Any] = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "MAX_TOKENS" if cut else "STOP",
                "index": i,
            }
            for i in range(n)
        ],
        "usageMetadata": {
            "promptTokenCount": in_tokens,
            "candidatesTokenCount": out_tokens * n,
            "totalTokenCount": in_tokens + out_tokens * n,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": in_tokens}],
        },
        "modelVersion": model.removeprefix("models/"),
        "responseId": hex_id(key, "gemini-response", length=24),
    }
    cached = cached_part(in_tokens, cached_rate)
    if cached:
        # Left out when there are none, as the API leaves out every count that is 0.
        response["usageMetadata"]["cachedContentTokenCount"] = cached
        response["usageMetadata"]["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    return response, in_tokens, out_tokens * n


# ---------------------------------------------------------------------------------------------------
# Paging


def _page_size(request: Request, default: int, maximum: int) -> int:
    raw = request.args.get("pageSize")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ClientError(400, f"Invalid page_size {raw!r}.") from None
    if value < 0:
        raise ClientError(400, "page_size must not be negative.")
    return min(value, maximum) if value else default


def _token(item_id: str) -> str:
    return base64.urlsafe_b64encode(item_id.encode()).decode()


def _page_start(request: Request, ids: list[str]) -> int:
    """Where the page starts: the item the token names (the first of the next page)."""
    token = request.args.get("pageToken")
    if not token:
        return 0
    try:
        item_id = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise ClientError(400, "Invalid page_token.") from None
    if item_id not in ids:
        raise ClientError(400, "Invalid page_token.")
    return ids.index(item_id)
