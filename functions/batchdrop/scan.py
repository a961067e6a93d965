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
from batchdrop.config import ENV_MAX_GZIP_RATIO, ENV_MAX_INFLATED_BYTES, ENV_MAX_INVALID_LINES
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

_NO_CAP = 1 << 62
# Lines checked at a time once a file nears its cap on invalid lines.
_SLICE = 4096


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
    # Set when the scan stopped because more than `max_invalid` lines were invalid (then `file_error`
    # says so, and `exhausted` is True: nothing more of the file is read).
    capped: bool = False
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
    max_invalid: int | None = None,
    invalid_before: int = 0,
    on_requests: Callable[[list[m.Request]], None] | None = None,
) -> ScanResult:
    """Scan from `first_line` on; with `stop_at`, stop after the line that passes that many bytes
    (a segment of a plain file: gzip cannot be entered half-way, so it is always read whole).

    A gzip file that inflates past `max_inflated` bytes, or past `max_ratio` times its compressed
    size (judged after its first 8 MB, reader.RATIO_AFTER), is refused as a whole (`file_error`), as is one cut short or
    corrupt; the callers pass the deployment's bounds (Settings.max_inflated_bytes, max_gzip_ratio).

    A file with more than `max_invalid` invalid lines (Settings.max_invalid_lines; `invalid_before` of
    them in earlier segments) is refused as a whole too: the scan stops at the line that passes the
    cap, so a file of tiny invalid lines ends in seconds. As with a gzip file refused at a bound, the
    lines read so far each have their verdict (that line too), the lines after it are not read, and
    `file_error` is no line's error.

    With `on_requests`, the valid requests are handed on a block at a time (in line order) instead of
    one at a time to `on_request`: what takes them then runs a loop of its own, not a call a line.
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
        hand_on = on_requests or (lambda requests: [on_request(r) for r in requests])  # type: ignore[func-returns-value]
        invalid = 0
        # Invalid lines this scan may see before it stops; a file may hold `max_invalid` in all.
        room = _NO_CAP if max_invalid is None else max_invalid - invalid_before
        first_invalid: m.Invalid | None = None
        stopped = 0  # the line past the cap, where the scan stopped
        source = decompressed(itertools.chain([head], it), max_inflated, max_ratio)
        blocks = iter_line_blocks(source, DEFAULT_MAX_LINE, first_line, stop_at, position, True, counted)
        try:
            for whole_first, whole in blocks:
                done, size = 0, len(whole)
                while done < size:
                    if done == 0 and size <= room - invalid:
                        block_first, block, done = whole_first, whole, size
                    else:
                        # Near the cap, the block (up to a chunk's 500,000 lines) is checked in slices,
                        # so that few lines past the cap are checked for nothing.
                        end = done + max(room - invalid + 1, _SLICE)
                        block_first, block, done = whole_first + done, whole[done:end], end
                    requests: list[m.Request] = []
                    take = requests.append
                    for verdict in check_block(block_first, block):
                        if verdict.__class__ is Request:
                            take(verdict)
                        elif verdict is not None:
                            invalid += 1
                            on_invalid(_explained(verdict, block[verdict.line - block_first]))  # type: ignore[arg-type]
                            if first_invalid is None:
                                first_invalid = verdict  # type: ignore[assignment]
                            if invalid > room:
                                stopped = verdict.line
                                break  # the lines after this one, in this block or later, are not read
                    # Counted and handed on a block at a time, not a line: the hot loop stays short.
                    if requests:
                        ids += [r.custom_id for r in requests]
                        numbers += [r.line for r in requests]
                        valid += len(requests)
                        hand_on(requests)
                    if stopped:
                        break
                if stopped:
                    break
                if len(ids) >= finder.spill_every:
                    finder.spill()
            lines = valid + invalid
            result.lines, result.valid, result.invalid = lines, valid, invalid
            if first_invalid is not None and stopped:
                result.capped = True
                result.last_line = stopped
                message = _too_many_invalid(max_invalid or 0, invalid_before, first_line, first_invalid, stopped)
                result.file_error = m.Invalid(stopped, None, m.FILE_REJECTED, message)
            else:
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


def _too_many_invalid(cap: int, before: int, first_line: int, first: m.Invalid, stopped: int) -> str:
    """Why a file with too many invalid lines is refused, and what to do about it."""
    where = "first" if before == 0 else f"{before:,} in the lines before line {first_line:,}, then first"
    return (
        f"more than {cap:,} lines are invalid ({where}: line {first.line:,}, {first.code}); the file is "
        f"refused as a whole, and was read no further than line {stopped:,}; fix the file's format, or "
        f"raise {ENV_MAX_INVALID_LINES}"
    )


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
