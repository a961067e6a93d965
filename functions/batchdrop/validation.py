"""Validating and normalising input lines: the contract of docs/contract.md "Input lines", in one place.

Each non-blank line becomes a `Request` in its provider's own batch-line format, or an `Invalid`
whose message says what is wrong and how to fix it. This is the hot path of submit: one orjson parse
per line, no model objects, and a line already in its provider's format is passed through unchanged.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import msgspec
import orjson

from batchdrop import models as m
from batchdrop.config import DEFAULT_ROUTES, OPENAI_COMPATIBLE, BatchLimits
from batchdrop.planner import ENVELOPE_BYTES
from batchdrop.reader import LineTooLong

CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ID_OK = CUSTOM_ID.fullmatch
# A block's custom_ids joined by newlines, checked in one match instead of one per line.
_IDS_OK = re.compile(r"(?:[A-Za-z0-9_-]{1,64}\n)*[A-Za-z0-9_-]{1,64}").fullmatch


# The schemas of the fast path: only the fields we check, and the checks msgspec makes in C for free
# while it decodes (methods, endpoints, non-empty models). Every value a schema admits is typed and
# every object forbids fields it does not name: msgspec range-checks the numbers it decodes, but not
# those it skips, so a skipped `1e999` (which orjson, the providers and our own sending refuse) would
# pass. A line with any other field or shape (content blocks, tools, images) goes to the full check,
# which is slower but sees everything. A byte-level pre-check for such numbers was measured instead: a
# regex costs 10 to 50 times the whole validation of a 2 KB line, `bytes.translate` about as much as
# the validation itself. Typed, nothing can nest deeper than a few levels, so msgspec never recurses
# far. The id pattern is checked in Python: msgspec's `pattern` costs more than a compiled fullmatch.
# As nothing is skipped, msgspec also checks the UTF-8 of the whole line (it checks every string it
# decodes; keys and literals must match ASCII names): the lines need no UTF-8 check of their own, a
# pass over every byte (6% of the instructions on a 2 KB line, 2% on a 400-byte one, by cachegrind).
# A prompt is decoded into a str. Held as msgspec.Raw instead (not copied), with a check that it starts
# with a quote (a JSON string hides no number), it cost more than it saved: the str of a 2 KB prompt
# costs about 425 instructions, reading the first byte of a Raw (struct.unpack_from, memoryview) 600
# to 1,400 a message.
_Model = Annotated[str, msgspec.Meta(min_length=1)]
_Endpoint = Literal["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions", "/v1/moderations"]
# The largest max_tokens (or max_completion_tokens, maxOutputTokens...) we pass: Gemini reads it as a
# protobuf int32 (GenerationConfig.max_output_tokens), and no model's output cap comes near it. Larger
# integers also lose their value in orjson beyond 64 bits (read as a float), which the provider refuses.
MAX_TOKENS = 2**31 - 1
_Count = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Strings = str | list[str]


class _TextPart(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    type: Literal["text"]
    text: str


_Content = str | list[_TextPart]


class _OpenAIMessage(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: str
    content: _Content | None = None
    name: str | None = None


class _OpenAIBody(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    model: _Model
    stream: bool | None = None
    messages: list[_OpenAIMessage] | None = None
    input: _Strings | None = None
    prompt: _Strings | None = None
    instructions: str | None = None
    max_tokens: _Count | None = None
    max_completion_tokens: _Count | None = None
    max_output_tokens: _Count | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: _Count | None = None
    seed: _Int | None = None
    stop: _Strings | None = None
    user: str | None = None
    logprobs: bool | None = None
    top_logprobs: _Int | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    dimensions: _Count | None = None
    encoding_format: str | None = None


class _OpenAILine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    custom_id: str
    method: Literal["POST"]
    url: _Endpoint
    body: _OpenAIBody


class _OpenAIChat(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The fields of `_OpenAIBody` a chat line mostly sets, tried first by the block paths: msgspec
    fills in and frees every field a struct has, set or not."""

    model: _Model
    stream: bool | None = None
    messages: list[_OpenAIMessage] | None = None
    max_tokens: _Count | None = None
    max_completion_tokens: _Count | None = None
    temperature: float | None = None
    top_p: float | None = None


class _OpenAIChatLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    custom_id: str
    method: Literal["POST"]
    url: _Endpoint
    body: _OpenAIChat


class _Message(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: str
    content: _Content


class _AnthropicParams(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    model: _Model
    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]
    max_tokens: _Count | None = None
    stream: bool | None = None
    system: _Content | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: _Int | None = None
    stop_sequences: list[str] | None = None


class _AnthropicLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    custom_id: str
    params: _AnthropicParams


_OPENAI_LINE = msgspec.json.Decoder(_OpenAILine).decode
_ANTHROPIC_LINE = msgspec.json.Decoder(_AnthropicLine).decode
_OPENAI_LINES = msgspec.json.Decoder(list[_OpenAILine | int]).decode
_CHAT_LINE = msgspec.json.Decoder(_OpenAIChatLine).decode
_CHAT_LINES = msgspec.json.Decoder(list[_OpenAIChatLine | int]).decode
_ANTHROPIC_LINES = msgspec.json.Decoder(list[_AnthropicLine | int]).decode
# After a block that could not be decoded whole (a mixed or damaged file), this many blocks are
# checked line by line before trying again: a failed try costs at most a partial decode.
BLOCK_RETRY = 8
# Lines longer than this on average are checked one by one: the decode of a long line costs far more
# than the Python around it, and a line decodes while it is still in the CPU's cache (measured equal
# or faster from 2 KB a line).
BLOCK_MEAN_LINE = 1024
# A block is judged in slices of about this many bytes (at least SLICE_LINES lines): see check_block.
SLICE_BYTES = 64 * 1024
SLICE_LINES = 16
OPENAI_ENDPOINTS = frozenset(get_args(_Endpoint))
ANTHROPIC_ENDPOINT = "/v1/messages"
OPENAI_LINE_KEYS = frozenset({"custom_id", "method", "url", "body"})
ANTHROPIC_LINE_KEYS = frozenset({"custom_id", "params"})
GEMINI_LINE_KEYS = frozenset({"key", "request"})
BEDROCK_LINE_KEYS = frozenset({"recordId", "modelId", "modelInput"})
# The Anthropic Messages version Bedrock's Claude models take in the request body.
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
# Bedrock model ids by family, after an optional cross-region geography ("us.", "eu.", ...).
_BEDROCK_FAMILY = re.compile(r"^(?:[a-z]+\.)?(anthropic\.claude-|amazon\.nova-|meta\.llama)")
_BEDROCK_CLAUDE = re.compile(r"^(?:[a-z]+\.)?anthropic\.(claude-.+?)(?:-v\d+(?::\d+)?)?$")
NEUTRAL_KEYS = frozenset(
    {"custom_id", "model", "messages", "system", "max_tokens", "temperature", "top_p", "stop", "tools"}
)
ROLES = frozenset({"system", "user", "assistant"})
# An input line longer than this cannot be a sensible request and is not held in memory.
DEFAULT_MAX_LINE = 32 * 1024 * 1024
# The deepest a line may nest arrays and objects. orjson reads 1023 levels, but writes only 254, and
# we re-encode every line that is not passed through (and `batchdrop validate` measures them); the
# providers' SDKs encode with the standard json module, which runs out of stack near 1,000. msgspec
# raises RecursionError (not a MsgspecError) on such lines: caught wherever it decodes.
MAX_DEPTH = 254

# Model names go into URL paths (Gemini: the SDK builds `models/<name>:batchGenerateContent`),
# DynamoDB items (400 KB at most) and job names, so each provider's are held to a length and a
# character set before anything else sees them.
# Bedrock: the `ModelId` shape of CreateModelInvocationJob in botocore's service model
# (botocore/data/bedrock/2023-04-20/service-2.json: 1 to 2048 characters, this pattern).
_BEDROCK_MODEL = re.compile(
    r"(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:(([0-9]{12}:custom-model/[a-z0-9-]{1,63}[.]{1}[a-z0-9-:]{1,63}"
    r"/[a-z0-9]{12}$)|(:foundation-model/([a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}([.]?[a-z0-9-]{1,63})"
    r"([:][a-z0-9-]{1,63}){0,2})|(([0-9a-zA-Z][_-]?)+)$)|([0-9]{12}:(inference-profile|"
    r"application-inference-profile)/[a-zA-Z0-9-:.]+$)))|([a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}"
    r"([.]?[a-z0-9-]{1,63})([:][a-z0-9-]{1,63}){0,2})|(([0-9a-zA-Z][_-]?)+)"
).fullmatch
# Gemini: google-genai's `t_model` (_transformers.py) refuses "..", "?" and "&", and puts the rest
# into the URL path as `models/<name>`: a "/" would add path segments and a "#" cut the path there
# (the request then runs the model named before it). Model ids are letters, digits, ".", "-", "_"
# (gemini-2.5-flash-preview-05-20); the "models/" prefix is taken off before this check.
_GEMINI_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}").fullmatch
# OpenAI, Azure OpenAI, Anthropic: the name travels in the request body, never a path, so the rule is
# only conservative: the characters real ids use (gpt-4o-mini, claude-3-5-haiku-20241022, fine-tunes
# "ft:gpt-4o-mini:org:name:id", Azure deployment names of letters, digits, "-", "_" and "."), up to 256.
_BODY_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}").fullmatch
_MODEL_RULES: dict[str, tuple[Any, str]] = {
    "bedrock": (
        _BEDROCK_MODEL,
        "a Bedrock model id, inference profile or model ARN of up to 2048 characters "
        "(e.g. amazon.nova-lite-v1:0, us.anthropic.claude-3-5-haiku-20241022-v1:0)",
    ),
    "gemini": (
        lambda name: ".." not in name and _GEMINI_MODEL(name.removeprefix("models/")),
        'up to 128 letters, digits, ".", "-" and "_", after an optional "models/" (e.g. gemini-2.5-flash)',
    ),
}
_BODY_RULE = (_BODY_MODEL, 'up to 256 letters, digits, ".", "-", "_", ":" and "/", starting with a letter or digit')
# Names judged once per validator: a file repeats a handful of models.
_MODEL_CACHE = 256


@dataclass
class Validator:
    """Validates the lines of one file; remembers custom_ids to catch duplicates across the file."""

    providers: Mapping[str, BatchLimits]
    routes: tuple[tuple[str, str], ...] = DEFAULT_ROUTES
    folder_provider: str | None = None
    anthropic_default_max_tokens: int = 1024
    # Ids met so far, to report a duplicate at once. Callers that cannot afford a set the size of
    # the file pass `NoIds()` and find duplicates with batchdrop.dedup instead.
    seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Read once per file rather than per line: the fast path runs a million times on a large one.
        self._openai = self.openai_target
        self._openai_max = _max_payload(self.providers.get(self._openai))
        self._anthropic_max = _max_payload(self.providers.get("anthropic"))
        self._remember = not isinstance(self.seen, NoIds)
        self._block_skip = 0
        # Slices left to decode OpenAI lines in the full schema first: set when a line needed it.
        self._full_body = 0
        # os.urandom, not secrets: that module would load OpenSSL (4 MB) into `batchdrop validate`.
        self._marker_value = int.from_bytes(os.urandom(8), "big") >> 2 | (1 << 61)  # always 19 digits
        self._marker = b",%d," % self._marker_value
        self._models_ok: dict[str, set[str]] = {}

    @property
    def openai_target(self) -> str:
        """Where OpenAI batch lines go: OpenAI, or Azure OpenAI for files under inputs/azure/."""
        return self.folder_provider if self.folder_provider in OPENAI_COMPATIBLE else "openai"

    def check(self, number: int, raw: bytes | LineTooLong) -> m.Request | m.Invalid | None:
        """The verdict on one physical line; None for a blank line."""
        if not isinstance(raw, bytes):
            return m.Invalid(
                number,
                None,
                m.REQUEST_TOO_LARGE,
                f"line is {raw.size:,} bytes, more than any provider accepts for one request; "
                "shorten the request or split it",
            )
        return self.fast(number, raw) or self.full(number, raw)

    def full(self, number: int, raw: bytes) -> m.Request | m.Invalid | None:
        """The verdict on a line `fast` did not pass: the whole check, with a precise message."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if not raw.strip():
                return None
            return self._bad_json(number, raw, exc)
        if type(obj) is not dict:
            return m.Invalid(
                number,
                None,
                m.NOT_AN_OBJECT,
                f"expected a JSON object per line, got {_json_type(obj)}",
            )
        # Only a line with more brackets than MAX_DEPTH can nest that deep: the others skip the probe.
        if len(raw) > 2 * MAX_DEPTH and raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(obj):
            return m.Invalid(number, _line_id(obj), m.INVALID_JSON, _TOO_DEEP)
        try:
            if "body" in obj or "url" in obj or "method" in obj:
                return self._openai_line(number, raw, obj)
            if "params" in obj:
                return self._anthropic_line(number, raw, obj)
            if "request" in obj:
                return self._gemini_line(number, obj)
            if "modelInput" in obj:
                return self._bedrock_line(number, obj)
            if "messages" in obj or "model" in obj:
                return self._neutral_line(number, obj)
        except TypeError:
            # A line within MAX_DEPTH that mapping to the provider's shape took past the 254 levels
            # orjson writes (a neutral tool schema is 4 levels deeper in a Bedrock Nova body).
            custom_id = obj.get("custom_id")
            return m.Invalid(
                number,
                custom_id if isinstance(custom_id, str) else None,
                m.INVALID_REQUEST,
                "the request is nested more than 254 levels deep; flatten it",
            )
        except _Reject as reject:
            return m.Invalid(number, _line_id(obj), reject.code, reject.msg)
        custom_id = obj.get("custom_id")
        return m.Invalid(
            number,
            custom_id if isinstance(custom_id, str) else None,
            m.UNKNOWN_FORMAT,
            "expected an OpenAI batch line {custom_id, method, url, body}, an Anthropic batch line "
            "{custom_id, params}, a Gemini batch line {key, request}, a Bedrock batch line "
            "{recordId, modelId, modelInput} or a neutral line {model, messages}; keys found: " + _keys(obj),
        )

    # -- the three shapes -------------------------------------------------------------------------

    def check_block(self, first: int, lines: Sequence[bytes | LineTooLong]) -> list[m.Request | m.Invalid | None]:
        """The verdicts of `check` on consecutive lines numbered from `first`, found in the common
        case (a run of well-formed batch lines of one shape) by a loop that leaves per line only
        what msgspec cannot check: one decode for the whole block when lines are short, one per
        line when they are long.

        A block of short lines (a reader's chunk, about 1 MB) is judged a slice of about SLICE_BYTES
        at a time: what a slice decodes to is freed before the next is decoded, so its memory is
        reused while it is still in the CPU's cache, instead of a whole block's worth of objects
        being allocated (fresh pages) and freed each time. Long lines, decoded one a line, measured
        no faster sliced."""
        try:
            size = sum(map(len, lines))  # type: ignore[arg-type]
        except TypeError:  # a LineTooLong
            size = len(lines) * BLOCK_MEAN_LINE
        step = max(SLICE_LINES, SLICE_BYTES * len(lines) // (size or 1))
        if step >= len(lines) or size > BLOCK_MEAN_LINE * len(lines):
            return self._slice(first, lines)
        out: list[m.Request | m.Invalid | None] = []
        for start in range(0, len(lines), step):
            out += self._slice(first + start, lines[start : start + step])
        return out

    def _slice(self, first: int, lines: Sequence[bytes | LineTooLong]) -> list[m.Request | m.Invalid | None]:
        """`check_block` on a slice of a block."""
        verdicts = None
        if self._full_body:
            self._full_body -= 1
        if self._block_skip:
            self._block_skip -= 1
        else:
            verdicts = self._whole_block(first, lines)
            if verdicts is None:
                self._block_skip = BLOCK_RETRY
        return self._each_line(first, lines) if verdicts is None else verdicts

    def _whole_block(
        self, first: int, lines: Sequence[bytes | LineTooLong]
    ) -> list[m.Request | m.Invalid | None] | None:
        """`check_block` by one decode of the block as a JSON array; None if it is not one shape of
        well-formed lines (a blank line, a line too long, a line of another shape or broken JSON), or
        if its lines are long.

        The lines are joined with a marker between them, a number drawn at random per validator,
        and each line must decode to exactly one item between two markers. Joined by commas alone,
        a line holding two objects and a line leaving a string open for the next to close could
        read together as a well-formed array, each item then taken for the wrong line.
        """
        try:
            size = sum(map(len, lines))  # type: ignore[arg-type]
        except TypeError:  # a LineTooLong
            return None
        if size > BLOCK_MEAN_LINE * len(lines):
            return None
        head = lines[0]
        if b'"body"' in head:  # type: ignore[operator]
            decode, accept = _OPENAI_LINES if self._full_body else _CHAT_LINES, self._openai_requests
        elif b'"params"' in head:  # type: ignore[operator]
            decode, accept = _ANTHROPIC_LINES, self._anthropic_requests  # type: ignore[assignment]
        else:
            return None
        # The brackets go on the end lines, not around the joined block: one copy of it, not two.
        parts = list(lines)
        parts[0] = b"[" + parts[0]  # type: ignore[operator]
        parts[-1] += b"]"  # type: ignore[operator]
        joined = self._marker.join(parts)  # type: ignore[arg-type]
        try:
            items = decode(joined)
        except (msgspec.MsgspecError, RecursionError):
            if decode is not _CHAT_LINES:
                return None
            try:
                items = _OPENAI_LINES(joined)
            except (msgspec.MsgspecError, RecursionError):
                return None
            self._full_body = BLOCK_RETRY
        decoded = items[::2]
        # Every marker where it was put, none taken into a string, an array or an extra item: each
        # line is then exactly one item (a line cannot hold the marker, unknown to whoever wrote it).
        if len(items) != 2 * len(lines) - 1 or items.count(self._marker_value) != len(lines) - 1:
            return None
        try:
            ids_ok = _ids_ok([line.custom_id for line in decoded])  # type: ignore[union-attr]
        except AttributeError:  # a line that is a number
            return None
        return accept(first, lines, decoded, ids_ok, True)  # type: ignore[arg-type]

    def _each_line(self, first: int, lines: Sequence[bytes | LineTooLong]) -> list[m.Request | m.Invalid | None]:
        """`check_block` with one decode a line, in the schema of the block's first line."""
        head = lines[0]
        other = None  # the schema to try when `decode` fails
        if head.__class__ is bytes and b'"body"' in head:
            decode, accept = _OPENAI_LINE, self._openai_requests
            if not self._full_body:
                decode, other = _CHAT_LINE, _OPENAI_LINE  # type: ignore[assignment]
        elif head.__class__ is bytes and b'"params"' in head:
            decode, accept = _ANTHROPIC_LINE, self._anthropic_requests  # type: ignore[assignment]
        else:
            check = self.check
            return [check(number, raw) for number, raw in enumerate(lines, first)]
        decoded: list[Any] = []
        add = decoded.append
        Error = (msgspec.MsgspecError, RecursionError, TypeError)  # TypeError: a LineTooLong
        for raw in lines:
            try:
                add(decode(raw))  # type: ignore[arg-type]
            except Error:
                if other is None:
                    add(None)
                    continue
                try:
                    add(other(raw))  # type: ignore[arg-type]
                except Error:
                    add(None)
                    continue
                # A line with more fields: the next lines, likely the same, go to the full schema.
                decode, other = other, None
                self._full_body = BLOCK_RETRY
        try:
            ids_ok = _ids_ok([line.custom_id for line in decoded])
        except AttributeError:  # a line that did not decode: its id is checked on its own
            ids_ok = False
        return accept(first, lines, decoded, ids_ok, True)  # type: ignore[arg-type]

    def fast(self, number: int, raw: bytes) -> m.Request | None:
        """The common case, a well-formed provider batch line, checked by msgspec against a strict
        schema in one pass (in the full OpenAI schema: the block paths try the chat one first).

        Returns None at the first doubt; `check` then runs the full check and says what is wrong.
        """
        if b'"body"' in raw:
            try:
                line = _OPENAI_LINE(raw)
            except (msgspec.MsgspecError, RecursionError):
                return None
            return self._openai_requests(number, [raw], [line], False, False)[0]  # type: ignore[return-value]
        if b'"params"' in raw:
            try:
                a_line = _ANTHROPIC_LINE(raw)
            except (msgspec.MsgspecError, RecursionError):
                return None
            return self._anthropic_requests(number, [raw], [a_line], False, False)[0]  # type: ignore[return-value]
        return None

    # The two loops below run once for every line of a file, the hot path of submit: what they use is
    # bound to locals first, and each shape has its own loop rather than one loop calling a
    # per-shape function a line (a call costs a tenth of what a line may take).

    def _openai_requests(
        self,
        first: int,
        raws: Sequence[bytes],
        lines: Sequence[_OpenAILine | _OpenAIChatLine | None],
        ids_ok: bool,
        settle: bool,
    ) -> list[m.Request | m.Invalid | None]:
        """The requests of decoded OpenAI batch lines (None: did not decode), numbered from `first`.

        A line that fails a check msgspec cannot make gets None, or with `settle` the verdict of the
        full check (of `check` for a line that did not decode: it may be of another shape). `ids_ok`:
        every custom_id is known to match the pattern."""
        seen, remember, limit, target = self.seen, self._remember, self._openai_max, self._openai
        full, check, Request, id_ok = self.full, self.check, m.Request, _ID_OK
        models_ok, model_ok = self._models_ok.get(target) or set(), self._model_ok
        out: list[m.Request | m.Invalid | None] = []
        add = out.append
        for number, raw, line in zip(itertools.count(first), raws, lines):
            if line is not None:
                custom_id, body = line.custom_id, line.body
                # The payload is the line as it came, "{...}\n", unless it has other whitespace around.
                payload = raw if raw[-1] == 10 and raw[-2] == 125 and raw[0] == 123 else raw.strip() + b"\n"
                if (
                    not body.stream
                    and len(payload) <= limit
                    and (not remember or custom_id not in seen)
                    and (ids_ok or id_ok(custom_id))
                    and (body.model in models_ok or model_ok(target, body.model))
                ):
                    if remember:
                        seen.add(custom_id)
                    model = body.model
                    add(Request(number, custom_id, target, f"{line.url} {model}", model, payload))
                    continue
                add(full(number, raw) if settle else None)
            else:
                add(check(number, raw) if settle else None)
        return out

    def _anthropic_requests(
        self,
        first: int,
        raws: Sequence[bytes],
        lines: Sequence[_AnthropicLine | None],
        ids_ok: bool,
        settle: bool,
    ) -> list[m.Request | m.Invalid | None]:
        """The requests of decoded Anthropic batch lines (as `_openai_requests`)."""
        seen, remember, limit = self.seen, self._remember, self._anthropic_max
        full, check, Request, id_ok = self.full, self.check, m.Request, _ID_OK
        models_ok, model_ok = self._models_ok.get("anthropic") or set(), self._model_ok
        out: list[m.Request | m.Invalid | None] = []
        add = out.append
        for number, raw, line in zip(itertools.count(first), raws, lines):
            if line is not None:
                custom_id, params = line.custom_id, line.params
                payload = raw if raw[-1] == 10 and raw[-2] == 125 and raw[0] == 123 else raw.strip() + b"\n"
                if (
                    params.max_tokens is not None
                    and not params.stream
                    and len(payload) <= limit
                    and (not remember or custom_id not in seen)
                    and (ids_ok or id_ok(custom_id))
                    and (params.model in models_ok or model_ok("anthropic", params.model))
                ):
                    if remember:
                        seen.add(custom_id)
                    add(Request(number, custom_id, "anthropic", "", params.model, payload))
                    continue
                add(full(number, raw) if settle else None)
            else:
                add(check(number, raw) if settle else None)
        return out

    def _openai_line(self, number: int, raw: bytes, obj: dict[str, Any]) -> m.Request:
        custom_id = self._custom_id(obj, number, required=True)
        extra = obj.keys() - OPENAI_LINE_KEYS
        if extra:
            raise _Reject(m.INVALID_REQUEST, f"unexpected field(s) {_names(extra)} in an OpenAI batch line")
        if obj.get("method") != "POST":
            raise _Reject(m.INVALID_REQUEST, f'"method" must be "POST", got {_short(obj.get("method"))}')
        url = obj.get("url")
        if url not in OPENAI_ENDPOINTS:
            raise _Reject(
                m.UNSUPPORTED_ENDPOINT,
                f'"url" {_short(url)} is not a batch endpoint we support; use one of '
                + ", ".join(sorted(OPENAI_ENDPOINTS)),
            )
        body = obj.get("body")
        if not isinstance(body, dict):
            raise _Reject(m.INVALID_REQUEST, f'"body" must be a JSON object, got {_json_type(body)}')
        model = _model(body.get("model"), '"body.model"')
        if body.get("stream"):
            raise _Reject(m.INVALID_REQUEST, '"body.stream" must be false: batch requests cannot stream')
        provider = self._provider(self.openai_target, model)
        payload = raw.strip()
        return self._request(number, custom_id, provider, f"{url} {model}", model, payload)

    def _anthropic_line(self, number: int, raw: bytes, obj: dict[str, Any]) -> m.Request:
        custom_id = self._custom_id(obj, number, required=True)
        extra = obj.keys() - ANTHROPIC_LINE_KEYS
        if extra:
            raise _Reject(m.INVALID_REQUEST, f"unexpected field(s) {_names(extra)} in an Anthropic batch line")
        params = obj.get("params")
        if not isinstance(params, dict):
            raise _Reject(m.INVALID_REQUEST, f'"params" must be a JSON object, got {_json_type(params)}')
        model = _model(params.get("model"), '"params.model"')
        _check_messages(params.get("messages"), '"params.messages"')
        if params.get("stream"):
            raise _Reject(m.INVALID_REQUEST, '"params.stream" must be false: batch requests cannot stream')
        provider = self._provider("anthropic", model)
        if "max_tokens" not in params:
            params = {**params, "max_tokens": self.anthropic_default_max_tokens}
            payload = orjson.dumps({"custom_id": custom_id, "params": params})
        else:
            _positive_int(params["max_tokens"], '"params.max_tokens"')
            payload = raw.strip()
        return self._request(number, custom_id, provider, "", model, payload)

    def _gemini_line(self, number: int, obj: dict[str, Any]) -> m.Request:
        """{"key", "request": GenerateContentRequest}; the model is the request's own `model` field,
        which we move to the batch (Gemini takes one model per batch job)."""
        custom_id = self._custom_id(obj, number, required=True, field="key")
        extra = obj.keys() - GEMINI_LINE_KEYS
        if extra:
            raise _Reject(m.INVALID_REQUEST, f"unexpected field(s) {_names(extra)} in a Gemini batch line")
        request = obj.get("request")
        if not isinstance(request, dict):
            raise _Reject(m.INVALID_REQUEST, f'"request" must be a JSON object, got {_json_type(request)}')
        model = _model(request.get("model"), '"request.model"', "gemini-2.5-flash").removeprefix("models/")
        contents = request.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _Reject(m.INVALID_REQUEST, '"request.contents" must be a non-empty list of {role, parts}')
        provider = self._provider("gemini", model)
        body = {k: v for k, v in request.items() if k != "model"}
        payload = orjson.dumps({"key": custom_id, "request": body})
        return self._request(number, custom_id, provider, model, model, payload)

    def _bedrock_line(self, number: int, obj: dict[str, Any]) -> m.Request:
        """{"recordId", "modelId", "modelInput"}: Bedrock's record, plus the model, which Bedrock takes
        per job and we therefore need on each line."""
        custom_id = self._custom_id(obj, number, required=True, field="recordId")
        extra = obj.keys() - BEDROCK_LINE_KEYS
        if extra:
            raise _Reject(m.INVALID_REQUEST, f"unexpected field(s) {_names(extra)} in a Bedrock batch line")
        model = _model(obj.get("modelId"), '"modelId"', "amazon.nova-lite-v1:0")
        model_input = obj.get("modelInput")
        if not isinstance(model_input, dict) or not model_input:
            raise _Reject(
                m.INVALID_REQUEST,
                '"modelInput" must be the model\'s InvokeModel request body (a JSON object), got '
                + _json_type(model_input),
            )
        provider = self._provider("bedrock", model)
        payload = orjson.dumps({"recordId": custom_id, "modelInput": model_input})
        return self._request(number, custom_id, provider, model, model, payload)

    def _neutral_line(self, number: int, obj: dict[str, Any]) -> m.Request:
        custom_id = self._custom_id(obj, number, required=False)
        extra = obj.keys() - NEUTRAL_KEYS
        if extra:
            raise _Reject(
                m.INVALID_REQUEST,
                f"field(s) {_names(extra)} are not part of the neutral format (allowed: "
                f"{_names(NEUTRAL_KEYS)}); for provider-specific fields use that provider's batch line",
            )
        model = _model(obj.get("model"), '"model"')
        provider = self.folder_provider or _route(model, self.routes)
        if provider is None:
            raise _Reject(
                m.UNKNOWN_PROVIDER,
                f"no provider is known for model {_shown(model)}; put the file under inputs/<provider>/ "
                "or add a route (BATCHDROP_ROUTES=prefix=provider)",
            )
        provider = self._provider(provider, model)
        messages: list[dict[str, Any]] = obj.get("messages")  # type: ignore[assignment]
        _check_messages(messages, '"messages"')
        if provider == "anthropic":
            params = _to_anthropic(obj, messages, self.anthropic_default_max_tokens)
            payload = orjson.dumps({"custom_id": custom_id, "params": params})
            return self._request(number, custom_id, provider, "", model, payload)
        if provider == "gemini":
            model = model.removeprefix("models/")
            payload = orjson.dumps({"key": custom_id, "request": _to_gemini(obj, messages)})
            return self._request(number, custom_id, provider, model, model, payload)
        if provider == "bedrock":
            model_input = _to_bedrock(obj, messages, model, self.anthropic_default_max_tokens)
            payload = orjson.dumps({"recordId": custom_id, "modelInput": model_input})
            return self._request(number, custom_id, provider, model, model, payload)
        body = _to_openai_chat(obj, messages)
        url = "/v1/chat/completions"
        line = {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
        return self._request(number, custom_id, provider, f"{url} {model}", model, orjson.dumps(line))

    # -- shared checks ----------------------------------------------------------------------------

    def _custom_id(self, obj: dict[str, Any], number: int, required: bool, field: str = "custom_id") -> str:
        """The line's id: "custom_id", or the field a provider's own line uses for it (Gemini "key",
        Bedrock "recordId"), held to the strictest provider's rule so it can go anywhere."""
        if field not in obj or obj[field] is None:
            if required:
                raise _Reject(
                    m.MISSING_CUSTOM_ID,
                    f'a provider batch line needs a "{field}" (letters, digits, _ and -, up to 64)',
                )
            custom_id = f"line-{number}"
        else:
            custom_id = obj[field]
            if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
                raise _Reject(
                    m.INVALID_CUSTOM_ID,
                    f'"{field}" {_short(custom_id)} must be 1 to 64 letters, digits, _ or -',
                )
        if custom_id in self.seen:
            raise _Reject(
                m.DUPLICATE_CUSTOM_ID,
                f'"custom_id" {custom_id!r} is used by an earlier line; each request needs its own',
            )
        return custom_id

    def _provider(self, provider: str, model: str) -> str:
        if provider not in self.providers:
            enabled = ", ".join(sorted(self.providers)) or "none"
            raise _Reject(
                m.UNKNOWN_PROVIDER,
                f"provider {provider!r} (for model {_shown(model)}) is not enabled in this deployment "
                f"(enabled: {enabled})",
            )
        if model not in self._models_ok.get(provider, ()) and not self._model_ok(provider, model):
            rule = _MODEL_RULES.get(provider, _BODY_RULE)[1]
            raise _Reject(
                m.INVALID_REQUEST,
                f"model name {_shown(model)} ({len(model):,} characters) is not one {provider} takes: use {rule}",
            )
        return provider

    def _model_ok(self, provider: str, model: str) -> bool:
        """Whether `model` is a name `provider` takes; a name found good is remembered."""
        if not _MODEL_RULES.get(provider, _BODY_RULE)[0](model):
            return False
        ok = self._models_ok.setdefault(provider, set())
        if len(ok) < _MODEL_CACHE:
            ok.add(model)
        return True

    def _request(self, number: int, custom_id: str, provider: str, group: str, model: str, payload: bytes) -> m.Request:
        """A request of a payload without its newline."""
        limit = self.providers[provider].max_bytes
        # The planner counts a batch's envelope against the same limit: a request must fit with it.
        if ENVELOPE_BYTES + len(payload) + 1 > limit:
            raise _Reject(
                m.REQUEST_TOO_LARGE,
                f"the request is {len(payload):,} bytes; one {provider} batch holds at most {limit:,}",
            )
        payload += b"\n"
        self.seen.add(custom_id)
        return m.Request(number, custom_id, provider, group, model, payload)

    def _bad_json(self, number: int, raw: bytes, exc: orjson.JSONDecodeError) -> m.Invalid:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return m.Invalid(
                number,
                None,
                m.INVALID_ENCODING,
                f"byte {err.start + 1} of the line is not valid UTF-8; save the file as UTF-8",
            )
        reason = str(exc).split(":", 1)[0]
        if reason.startswith("number is infinity"):
            return m.Invalid(
                number,
                None,
                m.INVALID_JSON,
                f"a number near character {exc.pos + 1} is too large for a 64-bit float (above about "
                "1.8e308), which JSON parsers and the providers cannot represent; write it smaller or as a string",
            )
        if reason.startswith("depth limit exceeded"):
            return m.Invalid(number, None, m.INVALID_JSON, _TOO_DEEP)
        return m.Invalid(
            number,
            None,
            m.INVALID_JSON,
            f"not valid JSON ({reason} at character {exc.pos + 1}); each line must be one complete JSON object",
        )


_TOO_DEEP = (
    f"not valid JSON for a request: arrays and objects nested more than {MAX_DEPTH} levels deep "
    "(the depth limit); flatten the request"
)


def _too_deep(obj: Any) -> bool:
    """Whether `obj` nests deeper than MAX_DEPTH: orjson writes exactly that deep and no deeper."""
    try:
        orjson.dumps(obj)
    except TypeError:
        return True
    return False


def _ids_ok(ids: list[str]) -> bool:
    """Whether every id matches the custom_id pattern: one regex match over them all."""
    joined = "\n".join(ids)
    # An id with a newline in it is wrong, and would look like two right ones: count them.
    return _IDS_OK(joined) is not None and joined.count("\n") == len(ids) - 1


def _max_payload(limits: BatchLimits | None) -> int:
    """The longest payload, newline included, the fast path may pass for a provider (-1: the
    provider is not enabled); the planner counts a batch's envelope against the same limit, so a
    request must fit with it."""
    return -1 if limits is None else limits.max_bytes - ENVELOPE_BYTES


class NoIds(set[str]):
    """A `seen` that remembers nothing: duplicates are left to batchdrop.dedup."""

    def add(self, element: str) -> None:
        return None


class _Reject(Exception):
    def __init__(self, code: str, msg: str) -> None:
        self.code = code
        self.msg = msg


def _line_id(obj: dict[str, Any]) -> str | None:
    """The id a line gave itself, for its error line, whichever format's field holds it."""
    for name in ("custom_id", "key", "recordId"):
        value = obj.get(name)
        if isinstance(value, str):
            return value
    return None


def _route(model: str, routes: tuple[tuple[str, str], ...]) -> str | None:
    for prefix, provider in routes:
        if model.startswith(prefix):
            return provider
    return None


def _model(value: Any, where: str, example: str = "gpt-4o-mini") -> str:
    if value is None or value == "":
        raise _Reject(m.MISSING_MODEL, f"{where} is missing: name the model to run, e.g. {example}")
    if not isinstance(value, str):
        raise _Reject(m.INVALID_REQUEST, f"{where} must be a string, got {_json_type(value)}")
    return value


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise _Reject(m.INVALID_REQUEST, f"{where} must be a non-empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _Reject(m.INVALID_REQUEST, f'{where}[{i}] must be an object with a "role" and a "content"')
        if "content" not in message:
            raise _Reject(m.INVALID_REQUEST, f'{where}[{i}] has no "content"')


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
        raise _Reject(
            m.INVALID_REQUEST,
            f"{where} must be a whole number of at least 1 and at most {MAX_TOKENS:,}, got {_short(value)}",
        )
    return value


def _text_content(content: Any, where: str) -> Any:
    """Neutral content is a string or a list of text parts: the part both providers read alike."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return [{"type": "text", "text": p["text"]} for p in content]
    raise _Reject(
        m.INVALID_REQUEST,
        f"{where} must be a string or a list of {{type: text, text}} parts in the neutral format; "
        "for images or other parts use the provider's own batch line",
    )


def _stop_list(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise _Reject(m.INVALID_REQUEST, '"stop" must be a string or a list of strings')


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Neutral tools: [{name, description?, parameters|input_schema}] (a JSON Schema for the input)."""
    if not isinstance(tools, list):
        raise _Reject(m.INVALID_REQUEST, '"tools" must be a list of {name, description, parameters}')
    out = []
    for i, tool in enumerate(tools):
        schema = tool.get("parameters", tool.get("input_schema")) if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not isinstance(schema, dict):
            raise _Reject(
                m.INVALID_REQUEST,
                f'"tools"[{i}] must be {{"name", "description"?, "parameters": JSON Schema}}',
            )
        out.append({"name": tool["name"], "description": tool.get("description", ""), "schema": schema})
    return out


def _to_openai_chat(obj: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    out_messages: list[dict[str, Any]] = []
    if obj.get("system") is not None:
        out_messages.append({"role": "system", "content": _text_content(obj["system"], '"system"')})
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role not in ROLES:
            raise _Reject(m.INVALID_REQUEST, f'"messages"[{i}].role {role!r} must be system, user or assistant')
        out_messages.append({"role": role, "content": _text_content(msg["content"], f'"messages"[{i}].content')})
    body: dict[str, Any] = {"model": obj["model"], "messages": out_messages}
    if obj.get("max_tokens") is not None:
        body["max_completion_tokens"] = _positive_int(obj["max_tokens"], '"max_tokens"')
    for key in ("temperature", "top_p"):
        if obj.get(key) is not None:
            body[key] = _number(obj[key], key, 0, 2 if key == "temperature" else 1)
    if obj.get("stop") is not None:
        body["stop"] = _stop_list(obj["stop"])
    if obj.get("tools") is not None:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t["name"], "description": t["description"], "parameters": t["schema"]},
            }
            for t in _tools(obj["tools"])
        ]
    return body


def _to_anthropic(obj: dict[str, Any], messages: list[dict[str, Any]], default_max_tokens: int) -> dict[str, Any]:
    system_parts: list[Any] = []
    if obj.get("system") is not None:
        system_parts.append(_text_content(obj["system"], '"system"'))
    out_messages: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role = msg["role"]
        content = _text_content(msg["content"], f'"messages"[{i}].content')
        if role == "system":
            # Anthropic takes the system prompt apart; only leading system messages can move there.
            if out_messages:
                raise _Reject(
                    m.INVALID_REQUEST,
                    f'"messages"[{i}] is a system message after the conversation started, which '
                    'Anthropic cannot take; move it into "system"',
                )
            system_parts.append(content)
            continue
        if role not in ("user", "assistant"):
            raise _Reject(m.INVALID_REQUEST, f'"messages"[{i}].role {role!r} must be system, user or assistant')
        out_messages.append({"role": role, "content": content})
    if not out_messages:
        raise _Reject(m.INVALID_REQUEST, '"messages" holds only system messages; add a user message')
    params: dict[str, Any] = {"model": obj["model"]}
    max_tokens = obj.get("max_tokens")
    params["max_tokens"] = default_max_tokens if max_tokens is None else _positive_int(max_tokens, '"max_tokens"')
    params["messages"] = out_messages
    if system_parts:
        params["system"] = _join_system(system_parts)
    if obj.get("temperature") is not None:
        params["temperature"] = _number(obj["temperature"], "temperature", 0, 1)
    if obj.get("top_p") is not None:
        params["top_p"] = _number(obj["top_p"], "top_p", 0, 1)
    if obj.get("stop") is not None:
        params["stop_sequences"] = _stop_list(obj["stop"])
    if obj.get("tools") is not None:
        params["tools"] = [
            {"name": t["name"], "description": t["description"], "input_schema": t["schema"]}
            for t in _tools(obj["tools"])
        ]
    return params


def _plain_text(content: Any) -> str:
    """Neutral content (a string or text parts, already checked) as one string."""
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def _split_system(obj: dict[str, Any], messages: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str]]]:
    """(system texts, [(role, text)]) for providers that take the system prompt apart; as for
    Anthropic, only leading system messages can move there."""
    system = [_plain_text(_text_content(obj["system"], '"system"'))] if obj.get("system") is not None else []
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        role = msg["role"]
        text = _plain_text(_text_content(msg["content"], f'"messages"[{i}].content'))
        if role == "system":
            if turns:
                raise _Reject(
                    m.INVALID_REQUEST,
                    f'"messages"[{i}] is a system message after the conversation started; move it into "system"',
                )
            system.append(text)
        elif role in ("user", "assistant"):
            turns.append((role, text))
        else:
            raise _Reject(m.INVALID_REQUEST, f'"messages"[{i}].role {role!r} must be system, user or assistant')
    if not turns:
        raise _Reject(m.INVALID_REQUEST, '"messages" holds only system messages; add a user message')
    return system, turns


def _sampling(obj: dict[str, Any], *, max_tokens: str, max_temperature: float) -> dict[str, Any]:
    """The neutral sampling fields in the camelCase of Gemini's generationConfig and Nova's
    inferenceConfig, which differ only in the name of the token cap and the temperature range."""
    config: dict[str, Any] = {}
    if obj.get("max_tokens") is not None:
        config[max_tokens] = _positive_int(obj["max_tokens"], '"max_tokens"')
    if obj.get("temperature") is not None:
        config["temperature"] = _number(obj["temperature"], "temperature", 0, max_temperature)
    if obj.get("top_p") is not None:
        config["topP"] = _number(obj["top_p"], "top_p", 0, 1)
    if obj.get("stop") is not None:
        config["stopSequences"] = _stop_list(obj["stop"])
    return config


def _to_gemini(obj: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A GenerateContentRequest (without the model, which the batch carries)."""
    system, turns = _split_system(obj, messages)
    request: dict[str, Any] = {
        "contents": [{"role": "model" if role == "assistant" else "user", "parts": [{"text": t}]} for role, t in turns]
    }
    if system:
        request["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = _sampling(obj, max_tokens="maxOutputTokens", max_temperature=2)
    if config:
        request["generationConfig"] = config
    if obj.get("tools") is not None:
        request["tools"] = [
            {
                "functionDeclarations": [
                    {"name": t["name"], "description": t["description"], "parameters": t["schema"]}
                    for t in _tools(obj["tools"])
                ]
            }
        ]
    return request


def _to_bedrock(
    obj: dict[str, Any], messages: list[dict[str, Any]], model: str, default_max_tokens: int
) -> dict[str, Any]:
    """The InvokeModel body of the model's family: Claude (Anthropic Messages), Nova or Llama."""
    family = _BEDROCK_FAMILY.match(model)
    kind = family.group(1) if family else ""
    if kind == "anthropic.claude-":
        params = _to_anthropic(obj, messages, default_max_tokens)
        del params["model"]
        return {"anthropic_version": BEDROCK_ANTHROPIC_VERSION, **params}
    if kind == "amazon.nova-":
        system, turns = _split_system(obj, messages)
        body: dict[str, Any] = {
            "schemaVersion": "messages-v1",
            "messages": [{"role": role, "content": [{"text": t}]} for role, t in turns],
        }
        if system:
            body["system"] = [{"text": t} for t in system]
        config = _sampling(obj, max_tokens="maxTokens", max_temperature=1)
        if config:
            body["inferenceConfig"] = config
        if obj.get("tools") is not None:
            body["toolConfig"] = {
                "tools": [
                    {
                        "toolSpec": {
                            "name": t["name"],
                            "description": t["description"],
                            "inputSchema": {"json": t["schema"]},
                        }
                    }
                    for t in _tools(obj["tools"])
                ]
            }
        return body
    if kind == "meta.llama":
        for unsupported in ("tools", "stop"):
            if obj.get(unsupported) is not None:
                raise _Reject(
                    m.INVALID_REQUEST,
                    f'Llama on Bedrock takes no "{unsupported}"; remove it or use a Bedrock batch line',
                )
        system, turns = _split_system(obj, messages)
        llama: dict[str, Any] = {"prompt": _llama3_prompt(system, turns)}
        if obj.get("max_tokens") is not None:
            llama["max_gen_len"] = _positive_int(obj["max_tokens"], '"max_tokens"')
        if obj.get("temperature") is not None:
            llama["temperature"] = _number(obj["temperature"], "temperature", 0, 1)
        if obj.get("top_p") is not None:
            llama["top_p"] = _number(obj["top_p"], "top_p", 0, 1)
        return llama
    raise _Reject(
        m.INVALID_REQUEST,
        "neutral lines reach Bedrock for anthropic.claude-*, amazon.nova-* and meta.llama* models, "
        f"not {_shown(model)}; "
        "write a Bedrock batch line {recordId, modelId, modelInput} for it",
    )


def _llama3_prompt(system: list[str], turns: list[tuple[str, str]]) -> str:
    """Llama 3's chat template: Bedrock's Llama models take one prompt string, not messages."""
    parts = ["<|begin_of_text|>"]
    if system:
        parts.append("<|start_header_id|>system<|end_header_id|>\n\n" + "\n\n".join(system) + "<|eot_id|>")
    for role, text in turns:
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def bedrock_to_anthropic(payload: bytes, model: str) -> tuple[str, bytes] | None:
    """(Anthropic model, Anthropic batch line) for a Bedrock Claude record (the fallback for a job
    under Bedrock's minimum), or None if the model is not Claude or the body is not one Anthropic
    takes as it is."""
    match = _BEDROCK_CLAUDE.match(model)
    if match is None:
        return None
    record = orjson.loads(payload)
    body = dict(record["modelInput"])
    body.pop("anthropic_version", None)
    if not isinstance(body.get("messages"), list) or not isinstance(body.get("max_tokens"), int):
        return None
    anthropic_model = match.group(1)
    return anthropic_model, orjson.dumps(
        {"custom_id": record["recordId"], "params": {"model": anthropic_model, **body}}
    )


def _join_system(parts: list[Any]) -> Any:
    if all(isinstance(p, str) for p in parts):
        return "\n\n".join(parts)
    blocks: list[dict[str, Any]] = []
    for part in parts:
        blocks.extend([{"type": "text", "text": part}] if isinstance(part, str) else part)
    return blocks


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _Reject(
            m.INVALID_REQUEST,
            f'"{name}" must be a number from {low:g} to {high:g} for this provider, got {_short(value)}',
        )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(value), "an object"
    )


def _short(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode() if not isinstance(value, bytes) else repr(value)
    except TypeError:  # nested deeper than orjson writes (254 levels)
        text = f"{_json_type(value)} nested too deeply to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _shown(name: str) -> str:
    """A model name for a message: a hostile one may be hundreds of KB."""
    return repr(name if len(name) <= 60 else name[:57] + "...")


def _keys(obj: dict[str, Any]) -> str:
    return _names(obj.keys()) if obj else "none"


def _names(keys: Iterable[str]) -> str:
    return ", ".join(sorted(keys))
