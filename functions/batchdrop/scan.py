"""One pass over an uploaded file: every line validated, valid requests handed on, errors reported.

Shared by the submit function and `batchdrop validate`, so the command line says exactly what the
pipeline would do.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from batchdrop import models as m
from batchdrop.config import ENV_MAX_GZIP_RATIO, ENV_MAX_INFLATED_BYTES
from batchdrop.dedup import Duplicate, DuplicateFinder
from batchdrop.reader import (
    GZIP_MAGIC,
    GzipTruncated,
    InflateLimit,
    InputFileError,
    LineTooLong,
    decompressed,
    iter_line_blocks,
)
from batchdrop.validation import DEFAULT_MAX_LINE, Validator


@dataclass
class ScanResult:
    # Non-blank lines, plus one for a line cut off where a file that could not be read to its end stopped.
    lines: int = 0
    valid: int = 0
    invalid: int = 0
    file_error: m.Invalid | None = None
    # Lines whose custom_id an earlier line used; counted in `valid` until the caller drops them.
    # Left empty when the caller owns the DuplicateFinder (a file read in several segments).
    duplicates: list[Duplicate] = field(default_factory=list)
    last_line: int = 0  # the physical number of the last line read
    end_offset: int = 0  # bytes of the stream consumed, from where the scan started
    exhausted: bool = True  # False when it stopped at `stop_at` with more of the file to read
    gzipped: bool = False


def scan(
    chunks: Iterable[bytes],
    validator: Validator,
    on_request: Callable[[m.Request], None],
    on_invalid: Callable[[m.Invalid], None],
    tmpdir: str | None = None,
    first_line: int = 1,
    stop_at: int | None = None,
    finder: DuplicateFinder | None = None,
    max_inflated: int | None = None,
    max_ratio: int | None = None,
) -> ScanResult:
    """Scan from `first_line` on; with `stop_at`, stop after the line that passes that many bytes
    (a segment of a plain file: gzip cannot be entered half-way, so it is always read whole).

    A gzip file that inflates past `max_inflated` bytes, or past `max_ratio` times its compressed
    size (judged after its first 64 MB), is refused as a whole (`file_error`), as is one cut short or
    corrupt; the callers pass the deployment's bounds (Settings.max_inflated_bytes, max_gzip_ratio).
    """
    result = ScanResult()
    valid = 0
    check_block = validator.check_block
    Request = m.Request
    it = iter(chunks)
    head = next(it, b"")
    result.gzipped = head.startswith(GZIP_MAGIC)
    if result.gzipped:
        stop_at = None
    position = [0]
    counted = [first_line - 1]
    own = finder is None
    with contextlib.ExitStack() as stack:
        if finder is None:
            finder = stack.enter_context(DuplicateFinder(tmpdir=tmpdir))
        ids, numbers = finder.ids, finder.lines
        add_id, add_number = ids.append, numbers.append
        invalid = 0
        source = decompressed(itertools.chain([head], it), max_inflated, max_ratio)
        blocks = iter_line_blocks(source, DEFAULT_MAX_LINE, first_line, stop_at, position, True, counted)
        try:
            for block_first, block in blocks:
                before = len(ids)
                for verdict in check_block(block_first, block):
                    if verdict.__class__ is Request:
                        add_id(verdict.custom_id)
                        add_number(verdict.line)
                        on_request(verdict)
                    elif verdict is not None:
                        invalid += 1
                        on_invalid(_explained(verdict, block[verdict.line - block_first]))  # type: ignore[arg-type]
                # Counted a block at a time, not a line: the hot loop stays short.
                valid += len(ids) - before
                if len(ids) >= finder.spill_every:
                    finder.spill()
            lines = valid + invalid
            result.lines, result.valid, result.invalid = lines, valid, invalid
            result.exhausted = stop_at is None or position[0] < stop_at
            result.last_line = counted[0]
        except InputFileError as exc:
            result.lines, result.valid, result.invalid = valid + invalid, valid, invalid
            result.last_line = exc.line
            result.file_error = m.Invalid(exc.line + 1, None, m.INVALID_ENCODING, _unreadable(exc, max_inflated))
            cause = exc.cause
            # Where the data itself is cut or corrupt, reading stopped in a line of the file (or before
            # it): that line is counted, with the error. A file refused at a bound, or missing only its
            # trailer, has no such line unless a part of one was left over: none is made up.
            read_all = isinstance(cause, InflateLimit) or (isinstance(cause, GzipTruncated) and cause.trailer_only)
            if exc.partial or not read_all:
                result.last_line += 1
                result.lines += 1
                result.invalid += 1
                on_invalid(result.file_error)
        result.end_offset = position[0]
        if own:
            result.duplicates = finder.duplicates()
    return result


def _unreadable(exc: InputFileError, max_inflated: int | None) -> str:
    """Why a file cannot be read to its end, and what to do about it."""
    cause, line = exc.cause, exc.line
    if isinstance(cause, InflateLimit):
        if max_inflated is not None and cause.inflated > max_inflated:
            return (
                f"the gzip file inflates to more than {max_inflated:,} bytes ({ENV_MAX_INFLATED_BYTES}), found "
                f"after line {line}: more than one submit invocation can read, and a gzip file is read whole; "
                "upload it uncompressed (a plain file is read in segments) or split it into smaller files"
            )
        return (
            f"the gzip file inflates to {cause.inflated // max(cause.compressed, 1):,}x its compressed size "
            f"({cause.inflated:,} bytes from {cause.compressed:,}), found after line {line}: refused as a "
            f"compression bomb ({ENV_MAX_GZIP_RATIO}); if the file is genuine, upload it uncompressed"
        )
    if isinstance(cause, GzipTruncated) and cause.trailer_only:
        return (
            f"the gzip file ends without its last 8 bytes (the CRC32 and size of its content), after line "
            f"{line}: its lines cannot be checked for corruption; upload the complete file again "
            "(`gzip -t FILE` says whether a copy is whole)"
        )
    return f"the gzip file cannot be read past line {line} ({cause}); upload the complete file again"


def _explained(invalid: m.Invalid, raw: bytes | LineTooLong) -> m.Invalid:
    """The error of a line, with a hint when the line is really many lines ended by CRs alone."""
    if isinstance(raw, LineTooLong):
        crs = raw.crs
    elif invalid.code == m.INVALID_JSON:
        crs = raw.count(b"\r") - raw.endswith(b"\r\n")
    else:
        return invalid
    if crs <= 0:
        return invalid
    return m.Invalid(
        invalid.line,
        invalid.custom_id,
        invalid.code,
        f"{invalid.message}. The line holds {crs:,} carriage returns (\\r) and no newline after them: the file "
        "uses CR-only line endings (classic Mac); convert them to LF (\\n) or CRLF, e.g. with `tr '\\r' '\\n'`",
    )


def duplicate_error(dup: Duplicate) -> m.Invalid:
    """The error of a line whose id an earlier line used. A line without a custom_id is given
    `line-<n>`, which a custom_id of another line may equal: then say which id was given, or the
    message would blame a line for an id it never wrote."""
    custom_id, line, first = dup.custom_id, dup.line, dup.first_line
    if custom_id == f"line-{line}":
        message = (
            f"line {line} has no custom_id, so it was given {custom_id!r}, which line {first} already uses as its "
            "custom_id; give every line its own custom_id (or none the form line-<n>)"
        )
    elif custom_id == f"line-{first}":
        message = (
            f"custom_id {custom_id!r} is the id line {first} was given, as it has no custom_id of its own; give "
            "every line its own custom_id (or none the form line-<n>)"
        )
    else:
        message = f'"custom_id" {custom_id!r} is used by line {first} already; each request needs its own'
    return m.Invalid(line, custom_id, m.DUPLICATE_CUSTOM_ID, message)
