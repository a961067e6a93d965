"""One pass over an uploaded file: every line validated, valid requests handed on, errors reported.

Shared by the submit function and `batchdrop validate`, so the command line says exactly what the
pipeline would do.
"""

from __future__ import annotations

import contextlib
import itertools
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from batchdrop import models as m
from batchdrop.dedup import Duplicate, DuplicateFinder
from batchdrop.reader import GZIP_MAGIC, decompressed, iter_line_blocks
from batchdrop.validation import DEFAULT_MAX_LINE, Validator


@dataclass
class ScanResult:
    lines: int = 0  # non-blank lines, plus one for a file that could not be read to its end
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
) -> ScanResult:
    """Scan from `first_line` on; with `stop_at`, stop after the line that passes that many bytes
    (a segment of a plain file: gzip cannot be entered half-way, so it is always read whole)."""
    result = ScanResult()
    last_line = first_line - 1
    valid = 0
    check_block = validator.check_block
    Request = m.Request
    it = iter(chunks)
    head = next(it, b"")
    result.gzipped = head.startswith(GZIP_MAGIC)
    if result.gzipped:
        stop_at = None
    position = [0]
    own = finder is None
    with contextlib.ExitStack() as stack:
        if finder is None:
            finder = stack.enter_context(DuplicateFinder(tmpdir=tmpdir))
        ids, numbers = finder.ids, finder.lines
        add_id, add_number = ids.append, numbers.append
        invalid = 0
        source = decompressed(itertools.chain([head], it))
        try:
            for block_first, block in iter_line_blocks(source, DEFAULT_MAX_LINE, first_line, stop_at, position):
                before = len(ids)
                for verdict in check_block(block_first, block):
                    if verdict.__class__ is Request:
                        add_id(verdict.custom_id)
                        add_number(verdict.line)
                        on_request(verdict)
                    elif verdict is not None:
                        invalid += 1
                        on_invalid(verdict)  # type: ignore[arg-type]
                # Counted a block at a time, not a line: the hot loop stays short.
                valid += len(ids) - before
                last_line = block_first + len(block) - 1
                if len(ids) >= finder.spill_every:
                    finder.spill()
            lines = valid + invalid
            result.lines, result.valid, result.invalid = lines, valid, invalid
            result.exhausted = stop_at is None or position[0] < stop_at
        except (EOFError, zlib.error) as exc:
            result.lines, result.valid, result.invalid = valid + invalid, valid, invalid
            result.file_error = m.Invalid(
                last_line + 1,
                None,
                m.INVALID_ENCODING,
                f"the gzip file cannot be read past line {last_line} ({exc}); upload the complete file again",
            )
            result.lines += 1
            result.invalid += 1
            on_invalid(result.file_error)
        result.last_line = last_line if result.file_error is None else last_line + 1
        result.end_offset = position[0]
        if own:
            result.duplicates = finder.duplicates()
    return result


def duplicate_error(dup: Duplicate) -> m.Invalid:
    return m.Invalid(
        dup.line,
        dup.custom_id,
        m.DUPLICATE_CUSTOM_ID,
        f'"custom_id" {dup.custom_id!r} is used by line {dup.first_line} already; each request needs its own',
    )
