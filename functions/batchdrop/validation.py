"""Validating and normalising input lines: the contract of docs/contract.md "Input lines", in one place.

Each non-blank line becomes a `Request` in its provider's own batch-line format, or an `Invalid`
whose message says what is wrong and how to fix it. This is the hot path of submit: one orjson parse
per line, no model objects, and a line already in its provider's format is passed through unchanged.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from batchdrop import models as m
from batchdrop.config import DEFAULT_ROUTES, BatchLimits
from batchdrop.planner import ENVELOPE_BYTES
from batchdrop.providers import SPECS
from batchdrop.providers.lines import (
    BODY_RULE,
    CUSTOM_ID,
    Reject,
    check_messages,
    json_type,
    model_name,
    names,
    short,
    shown,
)
from batchdrop.providers.spec import FastPath
from batchdrop.reader import LineTooLong

# A block's custom_ids joined by newlines, checked in one match instead of one per line.
_IDS_OK = re.compile(rf"(?:{CUSTOM_ID.pattern}\n)*{CUSTOM_ID.pattern}").fullmatch
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
NEUTRAL_KEYS = frozenset(
    {
        "custom_id",
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "response_format",
    }
)
# An input line longer than this cannot be a sensible request and is not held in memory.
DEFAULT_MAX_LINE = 32 * 1024 * 1024
# The deepest a line may nest arrays and objects. orjson reads 1023 levels, but writes only 254, and
# we re-encode every line that is not passed through (and `batchdrop validate` measures them); the
# providers' SDKs encode with the standard json module, which runs out of stack near 1,000. msgspec
# raises RecursionError (not a MsgspecError) on such lines: caught wherever it decodes.
MAX_DEPTH = 254

# Model names go into URL paths (Gemini: the SDK builds `models/<name>:batchGenerateContent`),
# DynamoDB items (400 KB at most) and job names, so each provider's are held to a length and a
# character set before anything else sees them: each spec's rule, or the rule for names that travel in
# a request body.
_MODEL_RULES: dict[str, tuple[Any, str]] = {s.name: s.model_rule or BODY_RULE for s in SPECS.values()}
# The provider line shapes, in the registry's order: (the keys that mark one, its owner, its check).
_SHAPES = tuple((s.line.markers, s.name, s.line.check) for s in SPECS.values() if s.line is not None)
_UNKNOWN_FORMAT = (
    "expected "
    + ", ".join(s.line.described for s in SPECS.values() if s.line is not None)
    + " or a neutral line {model, messages}; keys found: "
)


def _load(path: str) -> FastPath:
    """A spec's fast path, named as "module:NAME" (so that only the code that validates builds it)."""
    module, _, name = path.partition(":")
    fast: FastPath = getattr(importlib.import_module(module), name)
    return fast


# The fields a line may give itself an id in: ours, then each provider shape's.
_ID_FIELDS = tuple(dict.fromkeys(("custom_id", *(s.line.id_field for s in SPECS.values() if s.line is not None))))
# Names judged once per validator: a file repeats a handful of models.
_MODEL_CACHE = 256
# A neutral line's translation into each provider's line.
_TRANSLATE = {s.name: s.translate for s in SPECS.values() if s.translate is not None}
# The line shapes with a fast path, in the registry's order: (its owner, its fast path).
_FAST: tuple[tuple[str, FastPath], ...] = tuple((s.name, _load(s.fast)) for s in SPECS.values() if s.fast is not None)


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
        self._targets = {owner: self._target(owner) for _, owner, _ in _SHAPES}
        # Each fast path: (its marker, itself, where its lines go, the longest payload it may pass).
        self._fast = tuple(
            (fast.marker, fast, target, _max_payload(self.providers.get(target)))
            for owner, fast in _FAST
            for target in (self._target(owner),)
        )
        # The same for one line at a time, with what `fast` calls taken out: it may run once a line.
        self._fast_line = tuple(
            (marker, fast.line, fast.accept, target, limit) for marker, fast, target, limit in self._fast
        )
        # Whether `seen` remembers ids (read by the fast paths, as `models_ok` and `model_ok`).
        self.remember = not isinstance(self.seen, NoIds)
        self._block_skip = 0
        # Slices left to decode lines in a fast path's full schema first: set when a line needed it.
        self._full_body = 0
        # os.urandom, not secrets: that module would load OpenSSL (4 MB) into `batchdrop validate`.
        self._marker_value = int.from_bytes(os.urandom(8), "big") >> 2 | (1 << 61)  # always 19 digits
        self._marker = b",%d," % self._marker_value
        self.models_ok: dict[str, set[str]] = {}

    def _target(self, shape: str) -> str:
        """Where lines of a provider's shape go: that provider, or the folder's provider when it
        takes the same shape (OpenAI lines under inputs/azure/)."""
        folder = SPECS.get(self.folder_provider or "")
        return self.folder_provider if folder is not None and folder.shape == shape else shape  # type: ignore[return-value]

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
                f"expected a JSON object per line, got {json_type(obj)}",
            )
        # Only a line with more brackets than MAX_DEPTH can nest that deep: the others skip the probe.
        if len(raw) > 2 * MAX_DEPTH and raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(obj):
            return m.Invalid(number, _line_id(obj), m.INVALID_JSON, _TOO_DEEP)
        try:
            keys = obj.keys()
            for markers, owner, check in _SHAPES:
                if not keys.isdisjoint(markers):
                    return check(self, number, raw, obj, self._targets[owner])
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
        except Reject as reject:
            return m.Invalid(number, _line_id(obj), reject.code, reject.msg)
        custom_id = obj.get("custom_id")
        return m.Invalid(
            number,
            custom_id if isinstance(custom_id, str) else None,
            m.UNKNOWN_FORMAT,
            _UNKNOWN_FORMAT + _keys(obj),
        )

    # -- the fast path: blocks of provider batch lines --------------------------------------------

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
        for lane in self._fast:
            if lane[0] in head:  # type: ignore[operator]
                _, fast, target, limit = lane
                break
        else:
            return None
        decode = fast.lines if self._full_body or fast.narrow_lines is None else fast.narrow_lines
        # The brackets go on the end lines, not around the joined block: one copy of it, not two.
        parts = list(lines)
        parts[0] = b"[" + parts[0]  # type: ignore[operator]
        parts[-1] += b"]"  # type: ignore[operator]
        joined = self._marker.join(parts)  # type: ignore[arg-type]
        try:
            items = decode(joined)
        except (msgspec.MsgspecError, RecursionError):
            if decode is fast.lines:
                return None
            try:
                items = fast.lines(joined)
            except (msgspec.MsgspecError, RecursionError):
                return None
            self._full_body = BLOCK_RETRY
        decoded = items[::2]
        # Every marker where it was put, none taken into a string, an array or an extra item: each
        # line is then exactly one item (a line cannot hold the marker, unknown to whoever wrote it).
        if len(items) != 2 * len(lines) - 1 or items.count(self._marker_value) != len(lines) - 1:
            return None
        try:
            ids_ok = _ids_ok([line.custom_id for line in decoded])
        except AttributeError:  # a line that is a number
            return None
        return fast.accept(self, target, limit, first, lines, decoded, ids_ok, True)  # type: ignore[arg-type]

    def _each_line(self, first: int, lines: Sequence[bytes | LineTooLong]) -> list[m.Request | m.Invalid | None]:
        """`check_block` with one decode a line, in the schema of the block's first line."""
        head = lines[0]
        for lane in self._fast if head.__class__ is bytes else ():
            if lane[0] in head:  # type: ignore[operator]
                _, fast, target, limit = lane
                break
        else:
            check = self.check
            return [check(number, raw) for number, raw in enumerate(lines, first)]
        decode, other = fast.line, None  # other: the schema to try when `decode` fails
        if not self._full_body and fast.narrow_line is not None:
            decode, other = fast.narrow_line, fast.line
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
        return fast.accept(self, target, limit, first, lines, decoded, ids_ok, True)  # type: ignore[arg-type]

    def fast(self, number: int, raw: bytes) -> m.Request | None:
        """The common case, a well-formed provider batch line, checked by msgspec against a strict
        schema in one pass (in the full schema: the block paths try a narrower one first, as the
        chat schema of OpenAI lines).

        Returns None at the first doubt; `check` then runs the full check and says what is wrong.
        """
        for marker, decode, accept, target, limit in self._fast_line:
            if marker in raw:
                try:
                    line = decode(raw)
                except (msgspec.MsgspecError, RecursionError):
                    return None
                return accept(self, target, limit, number, [raw], [line], False, False)[0]  # type: ignore[return-value]
        return None

    def _neutral_line(self, number: int, obj: dict[str, Any]) -> m.Request:
        custom_id = self.take_id(obj, number, required=False)
        extra = obj.keys() - NEUTRAL_KEYS
        if extra:
            raise Reject(
                m.INVALID_REQUEST,
                f"field(s) {names(extra)} are not part of the neutral format (allowed: "
                f"{names(NEUTRAL_KEYS)}); for provider-specific fields use that provider's batch line",
            )
        model = model_name(obj.get("model"), '"model"')
        provider = self.folder_provider or _route(model, self.routes)
        if provider is None:
            raise Reject(
                m.UNKNOWN_PROVIDER,
                f"no provider is known for model {shown(model)}; put the file under inputs/<provider>/ "
                "or add a route (BATCHDROP_ROUTES=prefix=provider)",
            )
        provider = self.enabled(provider, model)
        messages: list[dict[str, Any]] = obj.get("messages")  # type: ignore[assignment]
        check_messages(messages, '"messages"')
        group, model, payload = _TRANSLATE[provider](obj, messages, custom_id, model, self.anthropic_default_max_tokens)
        return self.request(number, custom_id, provider, group, model, payload)

    # -- shared checks ----------------------------------------------------------------------------

    def take_id(self, obj: dict[str, Any], number: int, required: bool, field: str = "custom_id") -> str:
        """The line's id: "custom_id", or the field a provider's own line uses for it (Gemini "key",
        Bedrock "recordId"), held to the strictest provider's rule so it can go anywhere."""
        if field not in obj or obj[field] is None:
            if required:
                raise Reject(
                    m.MISSING_CUSTOM_ID,
                    f'a provider batch line needs a "{field}" (letters, digits, _ and -, up to 64)',
                )
            custom_id = f"line-{number}"
        else:
            custom_id = obj[field]
            if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
                raise Reject(
                    m.INVALID_CUSTOM_ID,
                    f'"{field}" {short(custom_id)} must be 1 to 64 letters, digits, _ or -',
                )
        if custom_id in self.seen:
            raise Reject(
                m.DUPLICATE_CUSTOM_ID,
                f'"custom_id" {custom_id!r} is used by an earlier line; each request needs its own',
            )
        return custom_id

    def enabled(self, provider: str, model: str) -> str:
        if provider not in self.providers:
            enabled = ", ".join(sorted(self.providers)) or "none"
            raise Reject(
                m.UNKNOWN_PROVIDER,
                f"provider {provider!r} (for model {shown(model)}) is not enabled in this deployment "
                f"(enabled: {enabled})",
            )
        if model not in self.models_ok.get(provider, ()) and not self.model_ok(provider, model):
            rule = _MODEL_RULES.get(provider, BODY_RULE)[1]
            raise Reject(
                m.INVALID_REQUEST,
                f"model name {shown(model)} ({len(model):,} characters) is not one {provider} takes: use {rule}",
            )
        return provider

    def model_ok(self, provider: str, model: str) -> bool:
        """Whether `model` is a name `provider` takes; a name found good is remembered."""
        if not _MODEL_RULES.get(provider, BODY_RULE)[0](model):
            return False
        ok = self.models_ok.setdefault(provider, set())
        if len(ok) < _MODEL_CACHE:
            ok.add(model)
        return True

    def request(self, number: int, custom_id: str, provider: str, group: str, model: str, payload: bytes) -> m.Request:
        """A request of a payload without its newline."""
        limit = self.providers[provider].max_bytes
        # The planner counts a batch's envelope against the same limit: a request must fit with it.
        if ENVELOPE_BYTES + len(payload) + 1 > limit:
            raise Reject(
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


def _line_id(obj: dict[str, Any]) -> str | None:
    """The id a line gave itself, for its error line, whichever format's field holds it."""
    for name in _ID_FIELDS:
        value = obj.get(name)
        if isinstance(value, str):
            return value
    return None


def _route(model: str, routes: tuple[tuple[str, str], ...]) -> str | None:
    for prefix, provider in routes:
        if model.startswith(prefix):
            return provider
    return None


def _keys(obj: dict[str, Any]) -> str:
    return names(obj.keys()) if obj else "none"
