"""One pass over an uploaded file: every line validated, valid requests handed on, errors reported.

Shared by the submit function and `batchdrop validate`, so the command line says exactly what the
pipeline would do.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from batchdrop import models as m
from batchdrop.dedup import Duplicate, DuplicateFinder
from batchdrop.reader import decompressed, iter_lines
from batchdrop.validation import DEFAULT_MAX_LINE, Validator


@dataclass
class ScanResult:
    lines: int = 0  # non-blank lines, plus one for a file that could not be read to its end
    valid: int = 0
    invalid: int = 0
    file_error: m.Invalid | None = None
    # Lines whose custom_id an earlier line used; counted in `valid` until the caller drops them.
    duplicates: list[Duplicate] = field(default_factory=list)


def scan(
    chunks: Iterable[bytes],
    validator: Validator,
    on_request: Callable[[m.Request], None],
    on_invalid: Callable[[m.Invalid], None],
    tmpdir: str | None = None,
) -> ScanResult:
    result = ScanResult()
    last_line = 0
    lines = valid = 0
    check = validator.check
    Request = m.Request
    with DuplicateFinder(tmpdir=tmpdir) as finder:
        ids, numbers = finder.ids, finder.lines
        try:
            for number, raw in iter_lines(decompressed(chunks), DEFAULT_MAX_LINE):
                verdict = check(number, raw)
                if verdict is None:
                    continue
                lines += 1
                if verdict.__class__ is Request:
                    valid += 1
                    ids.append(verdict.custom_id)
                    numbers.append(number)
                    on_request(verdict)
                    if len(ids) >= finder.spill_every:
                        finder.spill()
                else:
                    on_invalid(verdict)  # type: ignore[arg-type]
                last_line = number
            result.lines, result.valid, result.invalid = lines, valid, lines - valid
        except (EOFError, zlib.error) as exc:
            result.lines, result.valid, result.invalid = lines, valid, lines - valid
            result.file_error = m.Invalid(
                last_line + 1,
                None,
                m.INVALID_ENCODING,
                f"the gzip file cannot be read past line {last_line} ({exc}); upload the complete file again",
            )
            result.lines += 1
            result.invalid += 1
            on_invalid(result.file_error)
        result.duplicates = finder.duplicates()
    return result


def duplicate_error(dup: Duplicate) -> m.Invalid:
    return m.Invalid(
        dup.line,
        dup.custom_id,
        m.DUPLICATE_CUSTOM_ID,
        f'"custom_id" {dup.custom_id!r} is used by line {dup.first_line} already; each request needs its own',
    )
