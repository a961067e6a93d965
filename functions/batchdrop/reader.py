"""Streaming an uploaded file as numbered physical lines, never the whole file in memory."""

from __future__ import annotations

import io
import itertools
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

CHUNK = 1 << 20
BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
# The compression ratio of a gzip file is judged only past this many inflated bytes, where the first
# lines (a file's dearest to compress) no longer drown its ratio, and a bomb has cost a second at most.
# An honest file's ratio grows with its length, the first lines paid off: on its first 8 MB, one 20 KB
# prompt sent verbatim (the most repetitive honest file we could build) reaches 311x (315x over
# 100 MB), one 2 KB prompt 221x, varied prompts 3x; the bound is 500x (config.DEFAULT_MAX_GZIP_RATIO).
RATIO_AFTER = 8 << 20
_NO_BOUND = 1 << 62


class InputFileError(Exception):
    """The file cannot be read to its end (`cause`: a gzip stream cut short or corrupt, or inflating
    past a bound). `line` is the last line read in full; `partial` says whether a non-blank part of
    a line followed it, cut off where reading stopped (a line of the file that no verdict can cover).
    """

    def __init__(self, cause: Exception, line: int, partial: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.line = line
        self.partial = partial


class GzipTruncated(EOFError):
    """The gzip stream ends before its end. `trailer_only`: its compressed data is all there and only
    the 8-byte trailer (CRC32 and size) is missing or cut, so the content cannot be checked."""

    def __init__(self, message: str, trailer_only: bool) -> None:
        super().__init__(message)
        self.trailer_only = trailer_only


class InflateLimit(ValueError):
    """A gzip file inflates past a bound: more than `max_inflated` bytes, or more than `max_ratio`
    times the compressed bytes read (a compression bomb, refused before it outlasts the invocation)."""

    def __init__(self, message: str, inflated: int, compressed: int) -> None:
        super().__init__(message)
        self.inflated = inflated
        self.compressed = compressed


class LineTooLong:
    """Stands in for a line longer than the cap: its bytes were skipped, only its size is kept."""

    __slots__ = ("crs", "size")

    def __init__(self, size: int, crs: int = 0) -> None:
        self.size = size
        # Carriage returns in it, when known (a line held back across chunks): many of them and no
        # newline mean a file with CR-only line endings, read as one huge line.
        self.crs = crs


def iter_chunks(stream: BinaryIO, chunk_size: int = CHUNK) -> Iterator[bytes]:
    while chunk := stream.read(chunk_size):
        yield chunk


def decompressed(
    chunks: Iterable[bytes],
    max_inflated: int | None = None,
    max_ratio: int | None = None,
    ratio_after: int = RATIO_AFTER,
) -> Iterator[bytes]:
    """The file's content in chunks; gzip (by its magic bytes, concatenated members too) is inflated
    on the fly with bounded output. Raises GzipTruncated (an EOFError) for a truncated stream,
    zlib.error for a corrupt one, and InflateLimit once the inflated bytes pass `max_inflated`, or
    pass `max_ratio` times the compressed bytes read so far after the first `ratio_after` bytes.
    The bounds are checked before each inflated chunk is handed on, so a bomb costs at most one
    chunk (1 MB) past them.
    """
    it = iter(chunks)
    first = b""
    for chunk in it:  # the magic bytes may arrive split across (or after empty) chunks
        first += chunk
        if len(first) >= len(GZIP_MAGIC):
            break
    if not first.startswith(GZIP_MAGIC):
        if first:
            yield first
        yield from it
        return
    cap = _NO_BOUND if max_inflated is None else max_inflated
    ratio = _NO_BOUND if max_ratio is None else max_ratio
    inflated = compressed = 0
    inflater = zlib.decompressobj(wbits=31)
    fed = False
    for chunk in _prepend(first, it):
        compressed += len(chunk)
        data = chunk
        while data:
            fed = True
            out = inflater.decompress(data, CHUNK)
            if out:
                inflated += len(out)
                if inflated > cap or inflated > ratio_after:
                    # The input consumed so far: what was fed, less what zlib has not read yet.
                    used = compressed - len(inflater.unconsumed_tail)
                    if inflated > cap or inflated > ratio * used:
                        raise InflateLimit(
                            f"the gzip stream inflates to more than {inflated:,} bytes from {used:,}",
                            inflated,
                            used,
                        )
                yield out
            if inflater.eof:
                # Another member may follow; zero bytes after a member are padding (gunzip skips it).
                data = inflater.unused_data.lstrip(b"\x00")
                inflater = zlib.decompressobj(wbits=31)
                fed = False
            else:
                data = inflater.unconsumed_tail
    if fed:
        probe = None if inflater.eof else inflater.copy()
        tail = inflater.flush()
        if tail:
            yield tail
        if not inflater.eof:
            raise GzipTruncated(
                "the gzip stream ends before its end marker: the file is truncated", _trailer_only(probe)
            )


def _trailer_only(probe: zlib._Decompress | None) -> bool:
    """Whether a gzip stream that stopped short had all its compressed data: fed 8 zero bytes as its
    trailer, a finished stream fails its CRC or size check; one cut in its data reads them as more data
    (and too few of them are left over to be taken for a trailer)."""
    if probe is None:
        return False
    try:
        probe.decompress(bytes(8))
    except zlib.error as exc:
        return "incorrect data check" in str(exc) or "incorrect length check" in str(exc)
    return probe.eof


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def iter_lines(
    chunks: Iterable[bytes],
    max_line: int,
    first_number: int = 1,
    stop_at: int | None = None,
    position: list[int] | None = None,
) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """Yield (physical line number, line) for every line: `iter_line_blocks`, one line at a time."""
    for first, block in iter_line_blocks(chunks, max_line, first_number, stop_at, position):
        yield from enumerate(block, start=first)


def iter_line_blocks(
    chunks: Iterable[bytes],
    max_line: int,
    first_number: int = 1,
    stop_at: int | None = None,
    position: list[int] | None = None,
    skip_blank: bool = False,
    counted: list[int] | None = None,
) -> Iterator[tuple[int, list[bytes | LineTooLong]]]:
    """Yield (physical number of the first line, lines) a chunk's worth at a time, numbered from
    `first_number`. A line is its bytes as they are in the file, its ending ("\n", or "\r\n")
    included: only the file's last line may have none. JSON takes the ending as whitespace, and a
    request keeps it, so no line is copied again to drop it.

    A chunk's complete lines are cut in C, with no Python step a line, by `BytesIO.readlines`, which
    finds each newline with `memchr` (`bytes.split` looks for a one-byte separator a byte at a time:
    2.6x slower on 2 KB lines, 4x on 200-byte ones).

    A UTF-8 BOM at the start is dropped. A line whose bytes before its newline (a CR included) pass
    `max_line` is yielded as `LineTooLong` (that size) without being held in memory. With `stop_at`,
    it stops after the first line that ends at or past that many bytes of the stream; `position[0]`
    holds how many bytes the lines yielded so far took, updated before each block (so the next
    segment of a file starts there).

    With `skip_blank`, blank lines (only whitespace) may be left out of the blocks, the numbers of the
    lines around them unchanged: a chunk of only whitespace is counted, not cut, and a chunk of
    mostly blank lines is handed on as its runs of non-blank lines. A blank line then costs no Python
    step (a compression bomb inflates to a billion of them). `counted[0]` is then the number of the
    last line read, blank or not, once the lines are exhausted.

    If reading the chunks fails (a gzip stream cut short or corrupt, or past a bound), InputFileError
    says which line was the last read in full, and whether a part of a line followed it.
    """
    number = first_number - 1
    pending: list[bytes] = []
    pending_size = 0
    overflow = False
    overflow_crs = 0
    first = first_number == 1
    offset = 0  # where chunk[0] sits in the stream
    try:
        for chunk in chunks:
            if not chunk:
                continue
            if first:
                if pending:
                    chunk = b"".join(pending) + chunk
                    pending, pending_size = [], 0
                if len(chunk) < 3 and BOM.startswith(chunk):
                    pending.append(chunk)
                    pending_size += len(chunk)
                    continue
                first = False
                if chunk.startswith(BOM):
                    chunk = chunk[3:]
                    offset += 3
            end = chunk.find(b"\n")
            if end >= 0:
                # The line that completes what earlier chunks left pending.
                size = pending_size + end
                head: bytes | LineTooLong
                if overflow or size > max_line:
                    crs = overflow_crs if overflow else sum(p.count(b"\r") for p in pending)
                    head = LineTooLong(size, crs + chunk.count(b"\r", 0, end))
                else:
                    head = b"".join(pending) + chunk[: end + 1] if pending else chunk[: end + 1]
                pending, pending_size, overflow = [], 0, False
                block_first = number + 1
                number += 1
                block: list[bytes | LineTooLong] = [head]
                start = end + 1
                last = chunk.rfind(b"\n")
                if stop_at is not None and offset + last + 1 >= stop_at:
                    # The segment ends in this chunk, at the first line that reaches `stop_at`: line by line.
                    while offset + start < stop_at:
                        end = chunk.find(b"\n", start)
                        number += 1
                        block.append(LineTooLong(end - start) if end - start > max_line else chunk[start : end + 1])
                        start = end + 1
                    if position is not None:
                        position[0] = offset + start
                    if counted is not None:
                        counted[0] = number
                    yield block_first, block
                    return
                # (Only where no line of the chunk can pass the cap, as ever with 1 MB chunks and the
                # 32 MB cap: a blank line over it is an error, `request_too_large`, not a blank line.)
                if skip_blank and len(chunk) <= max_line and chunk.isspace():  # stops at the first non-space
                    number += chunk.count(b"\n", start)
                    start = last + 1
                    if position is not None:
                        position[0] = offset + start
                    if head.__class__ is not bytes or head.strip():
                        yield block_first, block
                elif last > end:
                    reader = io.BytesIO(chunk)  # shares the chunk's bytes, no copy
                    reader.seek(start)
                    lines = reader.readlines()
                    if last + 1 < len(chunk):
                        lines.pop()  # the start of a line the next chunk ends: kept pending below
                    number += len(lines)
                    if skip_blank and len(lines) > (last - start) >> 5 and last - start <= max_line:
                        # Lines under 32 bytes on average: no request is that short, so most are blank.
                        start = last + 1
                        if position is not None:
                            position[0] = offset + start
                        yield from _without_blanks(block_first, head, lines, max_line)
                    else:
                        if last - start > max_line and max(map(len, lines)) > max_line + 1:
                            block.extend(LineTooLong(len(x) - 1) if len(x) > max_line + 1 else x for x in lines)
                        else:
                            block.extend(lines)
                        start = last + 1
                        if position is not None:
                            position[0] = offset + start
                        yield block_first, block
                else:
                    if position is not None:
                        position[0] = offset + start
                    yield block_first, block
            else:
                start = 0
            piece = chunk[start:]
            if piece:
                pending_size += len(piece)
                if pending_size > max_line:
                    if not overflow:
                        overflow_crs = sum(p.count(b"\r") for p in pending)
                    overflow_crs += piece.count(b"\r")
                    overflow = True
                    pending = []
                elif not overflow:
                    pending.append(piece)
            offset += len(chunk)
    except (EOFError, zlib.error, InflateLimit) as exc:
        raise InputFileError(exc, number, overflow or bool(b"".join(pending).strip())) from exc
    if position is not None:
        # A file too short to tell whether it starts with a BOM was held back whole, uncounted.
        position[0] = offset + (pending_size if first else 0)
    if pending or overflow:
        number += 1
        if overflow or pending_size > max_line:
            yield number, [LineTooLong(pending_size, overflow_crs)]
        else:
            yield number, [b"".join(pending)]
    if counted is not None:
        counted[0] = number


def _without_blanks(
    head_number: int, head: bytes | LineTooLong, lines: list[bytes], max_line: int
) -> Iterator[tuple[int, list[bytes | LineTooLong]]]:
    """The runs of non-blank lines among `head` (line `head_number`) and `lines` (the lines after it),
    each with the number of its first line. The blank lines are found in C (`bytes.strip` mapped over
    them): a Python step is taken per non-blank line only."""
    run_first = head_number
    run: list[bytes | LineTooLong] = [head] if head.__class__ is not bytes or head.strip() else []
    previous = -1
    for index in itertools.compress(range(len(lines)), map(bytes.strip, lines)):
        if index != previous + 1 or not run:
            if run:
                yield run_first, _capped(run, max_line)
            run_first, run = head_number + 1 + index, []
        run.append(lines[index])
        previous = index
    if run:
        yield run_first, _capped(run, max_line)


def _capped(lines: list[bytes | LineTooLong], max_line: int) -> list[bytes | LineTooLong]:
    return [LineTooLong(len(x) - 1) if x.__class__ is bytes and len(x) > max_line + 1 else x for x in lines]
