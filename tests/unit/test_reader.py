"""Reading an upload as numbered physical lines, each with its ending: gzip, BOM, CRLF, chunk boundaries,
over-long lines."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from batchdrop.reader import (
    BOM,
    RATIO_AFTER,
    GzipTruncated,
    InflateLimit,
    InputFileError,
    LineTooLong,
    decompressed,
    iter_chunks,
    iter_line_blocks,
    iter_lines,
)

MB = 1024 * 1024


def lines_of(data: bytes, max_line: int = 1000, chunk: int | None = None) -> list[tuple[int, bytes | LineTooLong]]:
    chunks = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return list(iter_lines(chunks, max_line))


def plain(result: list[tuple[int, bytes | LineTooLong]]) -> list[tuple[int, bytes]]:
    out = []
    for number, line in result:
        assert isinstance(line, bytes), (number, line)
        out.append((number, line))
    return out


def with_endings(data: bytes) -> list[bytes]:
    """The lines of a whole file, each with its newline (the last may have none)."""
    parts = [p + b"\n" for p in data.split(b"\n")]
    parts[-1] = parts[-1][:-1]
    if parts[-1] == b"":
        parts.pop()
    return parts


def reference_split(data: bytes) -> list[tuple[int, bytes]]:
    """What the reader must yield for a file with no over-long line: the obvious whole-file split."""
    if data.startswith(BOM):
        data = data[3:]
    return list(enumerate(with_endings(data), start=1))


def split_by(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        chunks.append(data[i : i + n])
        i += n
        k += 1
    return chunks


# -- line numbering, blanks, endings --------------------------------------------------------------


def test_lines_are_numbered_physically_from_one_with_blank_lines_counted() -> None:
    data = b'{"a":1}\n\n   \n{"b":2}\n'
    assert plain(lines_of(data)) == [(1, b'{"a":1}\n'), (2, b"\n"), (3, b"   \n"), (4, b'{"b":2}\n')]


def test_a_line_keeps_its_ending_crlf_too() -> None:
    # JSON reads the ending as whitespace; a request keeps it, so no line is copied to drop it.
    assert plain(lines_of(b"one\r\ntwo\r\n")) == [(1, b"one\r\n"), (2, b"two\r\n")]


def test_final_line_without_newline_is_still_yielded() -> None:
    assert plain(lines_of(b"one\ntwo")) == [(1, b"one\n"), (2, b"two")]
    assert plain(lines_of(b"one\r\ntwo\r")) == [(1, b"one\r\n"), (2, b"two\r")]


def test_trailing_newline_does_not_add_an_empty_line() -> None:
    assert plain(lines_of(b"one\n")) == [(1, b"one\n")]


def test_empty_file_yields_nothing() -> None:
    assert lines_of(b"") == []


def test_bom_at_file_start_is_dropped() -> None:
    assert plain(lines_of(BOM + b'{"a":1}\n{"b":2}\n')) == [(1, b'{"a":1}\n'), (2, b'{"b":2}\n')]


def test_bom_elsewhere_than_the_start_is_kept() -> None:
    # Only the byte-order mark at the very start of the file is ignored.
    assert plain(lines_of(b"x\n" + BOM + b"y\n")) == [(1, b"x\n"), (2, BOM + b"y\n")]


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_bom_split_across_small_chunks_is_dropped(size: int) -> None:
    # Given a file whose BOM arrives in chunks of `size` bytes
    data = BOM + b'{"a":1}\r\nlast'
    # Then it is dropped exactly as when it arrives whole
    assert plain(lines_of(data, chunk=size)) == [(1, b'{"a":1}\r\n'), (2, b"last")]


@pytest.mark.parametrize("data", [b"\xef", b"\xef\xbb", BOM])
def test_a_file_that_is_only_part_of_a_bom(data: bytes) -> None:
    expected = [] if data == BOM else [(1, data)]
    assert plain(lines_of(data)) == expected
    assert plain(lines_of(data, chunk=1)) == expected


def test_crlf_split_between_chunks_is_still_one_line_ending() -> None:
    assert plain(list(iter_lines([b"one\r", b"\ntwo\r", b"\n"], 100))) == [(1, b"one\r\n"), (2, b"two\r\n")]


def test_empty_chunks_change_nothing() -> None:
    chunks = [b"", b"on", b"", b"e\n", b"", b"two", b""]
    assert plain(list(iter_lines(chunks, 100))) == [(1, b"one\n"), (2, b"two")]


@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
            st.sampled_from([b"", b"  ", b'{"custom_id":"a"}', b"\r"]),
        ),
        max_size=12,
    ),
    crlf=st.booleans(),
    bom=st.booleans(),
    final_newline=st.booleans(),
    sizes=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=8),
)
def test_any_chunking_gives_the_reference_split(
    lines: list[bytes], crlf: bool, bom: bool, final_newline: bool, sizes: list[int]
) -> None:
    # Given a file cut into chunks of 1..7 bytes, boundaries falling inside lines, CRLFs and the BOM
    ending = b"\r\n" if crlf else b"\n"
    data = (BOM if bom else b"") + ending.join(lines) + (ending if final_newline and lines else b"")
    # When it is read line by line
    got = plain(list(iter_lines(split_by(data, sizes), 1000)))
    # Then the lines are those of a plain whole-file split
    assert got == reference_split(data)


@given(
    lines=st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=10),
    final_newline=st.booleans(),
    max_line=st.integers(min_value=1, max_value=12),
    sizes=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=8),
)
def test_any_chunking_marks_exactly_the_lines_over_the_cap(
    lines: list[bytes], final_newline: bool, max_line: int, sizes: list[int]
) -> None:
    # Given lines around a small cap, cut into chunks of 1..7 bytes
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    assume(not data.startswith(BOM))
    got = [
        (n, ("too long", line.size) if isinstance(line, LineTooLong) else line)
        for n, line in iter_lines(split_by(data, sizes), max_line)
    ]
    # Then a line is replaced by its size exactly when its bytes before the newline (a CR included)
    # pass the cap
    expected = [
        (n, ("too long", len(p.removesuffix(b"\n"))) if len(p.removesuffix(b"\n")) > max_line else p)
        for n, p in enumerate(with_endings(data), start=1)
    ]
    assert got == expected


def reference_lines(
    data: bytes, max_line: int, first_number: int, stop_at: int | None
) -> tuple[list[tuple[int, bytes | tuple[str, int]]], int]:
    """What the reader must yield, and where it must say it stopped, from the whole file at once."""
    start = 3 if first_number == 1 and data.startswith(BOM) else 0
    out: list[tuple[int, bytes | tuple[str, int]]] = []
    number = first_number
    while start < len(data):
        end = data.find(b"\n", start)
        stop = len(data) if end < 0 else end + 1
        size = len(data[start : stop if end < 0 else end])
        out.append((number, ("too long", size) if size > max_line else data[start:stop]))
        number += 1
        start = stop
        if end >= 0 and stop_at is not None and stop >= stop_at:
            return out, stop
    return out, len(data)


@settings(max_examples=400)
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=14).map(lambda b: b.replace(b"\n", b"")),
            st.sampled_from([b"", b"\r", b"ab\r", b'{"custom_id":"a"}']),
        ),
        max_size=14,
    ),
    head=st.sampled_from([b"", BOM, b"\xef", b"\xef\xbb"]),
    final_newline=st.booleans(),
    max_line=st.integers(min_value=1, max_value=16),
    sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8),
    first_number=st.sampled_from([1, 1, 7]),
    stop_at=st.one_of(st.none(), st.integers(min_value=0, max_value=200)),
)
def test_blocks_hold_exactly_the_lines_in_any_chunking_with_any_stop(
    lines: list[bytes],
    head: bytes,
    final_newline: bool,
    max_line: int,
    sizes: list[int],
    first_number: int,
    stop_at: int | None,
) -> None:
    # Given any file (a BOM or part of one, CRs, lines around the cap), cut anyhow, read from any line
    # number and stopped anywhere
    data = head + b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    assert_blocks_are_the_reference(data, max_line, sizes, first_number, stop_at)


@settings(max_examples=300)
@given(
    lines=st.lists(
        st.one_of(
            # Long lines, many to a chunk or over several, around the cap, next to short ones.
            st.tuples(st.sampled_from([b"x", b"{}", b"\xc3\xa9"]), st.integers(min_value=0, max_value=900)).map(
                lambda t: t[0] * t[1]
            ),
            st.sampled_from([b"", b"\r", b"ab\r", b'{"custom_id":"a"}', b"y" * 1300 + b"\r"]),
        ),
        max_size=14,
    ),
    head=st.sampled_from([b"", BOM]),
    final_newline=st.booleans(),
    max_line=st.sampled_from([100, 700, 1000, 2000, 32 * MB]),
    sizes=st.lists(st.integers(min_value=1, max_value=6000), min_size=1, max_size=8),
    first_number=st.sampled_from([1, 7]),
    stop_at=st.one_of(st.none(), st.integers(min_value=0, max_value=20_000)),
)
def test_long_lines_too_are_exactly_the_reference_in_any_chunking(
    lines: list[bytes],
    head: bytes,
    final_newline: bool,
    max_line: int,
    sizes: list[int],
    first_number: int,
    stop_at: int | None,
) -> None:
    data = head + b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    assert_blocks_are_the_reference(data, max_line, sizes, first_number, stop_at)


def assert_blocks_are_the_reference(
    data: bytes, max_line: int, sizes: list[int], first_number: int, stop_at: int | None
) -> None:
    position = [0]
    # When it is read in blocks
    got: list[tuple[int, bytes | tuple[str, int]]] = []
    for first, block in iter_line_blocks(split_by(data, sizes), max_line, first_number, stop_at, position):
        assert block, "a block is never empty"
        got.extend(
            (n, ("too long", x.size) if isinstance(x, LineTooLong) else x) for n, x in enumerate(block, start=first)
        )
    # Then the lines, their numbers and where reading stopped are those of the whole-file reference
    expected, stopped = reference_lines(data, max_line, first_number, stop_at)
    assert got == expected
    assert position == [stopped]


@settings(max_examples=400)
@given(
    lines=st.lists(
        st.one_of(
            st.sampled_from([b"", b"", b"", b" ", b"\r", b"\t \r", b"\x0b", b"\x0c"]).map(lambda b: b * 3),
            st.sampled_from([b"", b" ", b"\r", b"ab\r", b'{"custom_id":"a"}', b" x ", b"y" * 40]),
        ),
        max_size=60,
    ),
    runs=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=4),
    head=st.sampled_from([b"", BOM, b"\xef"]),
    final_newline=st.booleans(),
    max_line=st.sampled_from([3, 16, 1000]),
    sizes=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=8),
    first_number=st.sampled_from([1, 7]),
    stop_at=st.one_of(st.none(), st.integers(min_value=0, max_value=2000)),
)
def test_skipping_blank_lines_leaves_out_exactly_the_blank_ones(
    lines: list[bytes],
    runs: list[int],
    head: bytes,
    final_newline: bool,
    max_line: int,
    sizes: list[int],
    first_number: int,
    stop_at: int | None,
) -> None:
    # Given any file with runs of blank lines (newlines alone, or spaces, CRs, tabs), cut anyhow
    for i, run in enumerate(runs):
        lines[i * len(lines) // len(runs) : i * len(lines) // len(runs)] = [b""] * run
    data = head + b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    position = [0]
    counted = [0]
    # When it is read in blocks with blank lines skipped
    got: list[tuple[int, bytes | tuple[str, int]]] = []
    chunks = split_by(data, sizes)
    for first, block in iter_line_blocks(chunks, max_line, first_number, stop_at, position, True, counted):
        assert block, "a block is never empty"
        got.extend(
            (n, ("too long", x.size) if isinstance(x, LineTooLong) else x) for n, x in enumerate(block, start=first)
        )
    # Then they are the reference's lines, some blank ones left out, every other one kept, each with
    # its own number; the last line read and where reading stopped are the reference's
    expected, stopped = reference_lines(data, max_line, first_number, stop_at)
    assert [x for x in got if not isinstance(x[1], bytes) or x[1].strip()] == [
        x for x in expected if not isinstance(x[1], bytes) or x[1].strip()
    ]
    assert set(got) <= set(expected)
    assert counted == [expected[-1][0] if expected else first_number - 1]
    assert position == [stopped]


def test_a_chunk_of_only_whitespace_is_counted_without_a_line_object() -> None:
    data = b'{"a":1}\n' + b"\n" * (64 * MB) + b'{"b":2}\n'
    counted = [0]
    blocks = list(iter_line_blocks(iter_chunks(io.BytesIO(data)), 32 * MB, skip_blank=True, counted=counted))
    assert blocks == [(1, [b'{"a":1}\n']), (64 * MB + 2, [b'{"b":2}\n'])]
    assert counted == [64 * MB + 2]


# -- CR-only line endings --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 1000, 1 << 20])
def test_a_line_too_long_counts_the_carriage_returns_in_it(size: int) -> None:
    data = b"\r".join([b'{"k":"' + b"v" * 50 + b'"}'] * 400)  # 23 KB, 399 CRs, no newline
    [(number, line)] = list(iter_lines(split_by(data + b"\n{}", [size]), 1000))[:1]
    assert isinstance(line, LineTooLong)
    assert (number, line.crs, line.size) == (1, 399, len(data))


# -- over-long lines ------------------------------------------------------------------------------


def test_line_over_the_cap_becomes_line_too_long_with_its_size() -> None:
    result = lines_of(b"ok\n" + b"x" * 11 + b"\nafter\n", max_line=10)
    assert result[0] == (1, b"ok\n")
    number, big = result[1]
    assert number == 2
    assert isinstance(big, LineTooLong)
    assert big.size == 11
    assert result[2] == (3, b"after\n")


def test_line_exactly_at_the_cap_is_kept() -> None:
    assert plain(lines_of(b"x" * 10 + b"\n", max_line=10)) == [(1, b"x" * 10 + b"\n")]


def test_over_long_final_line_without_newline() -> None:
    result = lines_of(b"ok\n" + b"y" * 50, max_line=10, chunk=7)
    assert result[0] == (1, b"ok\n")
    number, big = result[1]
    assert number == 2
    assert isinstance(big, LineTooLong)
    assert big.size == 50


def test_ten_megabyte_line_with_one_megabyte_cap_is_skipped_not_held() -> None:
    # Given a 10 MB line streamed in 64 KB chunks, between two ordinary lines
    def chunks() -> Iterator[bytes]:
        yield b'{"first":1}\n'
        piece = b"z" * (64 * 1024)
        for _ in range(10 * MB // len(piece)):
            yield piece
        yield b'\n{"last":1}\n'

    # When it is read with a 1 MB cap
    result = list(iter_lines(chunks(), 1 * MB))
    # Then the big line is only its size, and the lines around it keep their numbers
    assert [n for n, _ in result] == [1, 2, 3]
    big = result[1][1]
    assert isinstance(big, LineTooLong)
    assert big.size == 10 * MB
    assert result[2] == (3, b'{"last":1}\n')


# -- gzip -----------------------------------------------------------------------------------------


def test_plain_content_passes_through_unchanged() -> None:
    assert b"".join(decompressed([b"abc\n", b"def"])) == b"abc\ndef"


def test_gzip_is_inflated() -> None:
    data = b'{"a":1}\n' * 1000
    assert b"".join(decompressed([gzip.compress(data)])) == data


def test_concatenated_gzip_members_are_all_read() -> None:
    data = gzip.compress(b"one\ntwo\n") + gzip.compress(b"three\n") + gzip.compress(b"four\n")
    assert b"".join(decompressed([data])) == b"one\ntwo\nthree\nfour\n"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 4096])
def test_gzip_split_at_odd_chunk_sizes(size: int) -> None:
    # Given a two-member gzip delivered in chunks of `size` bytes (so the magic bytes may be split)
    text = b"".join(b'{"custom_id":"r%d"}\r\n' % i for i in range(300))
    data = gzip.compress(text[:2000]) + gzip.compress(text[2000:])
    # Then the content is exactly the uncompressed text
    assert b"".join(decompressed(split_by(data, [size]))) == text


def test_gzip_after_empty_chunks_is_still_recognised() -> None:
    assert b"".join(decompressed([b"", b"", gzip.compress(b"hi\n")])) == b"hi\n"


def test_gzip_larger_than_one_inflate_step() -> None:
    # Highly compressible content inflates past the bounded output size of one step.
    text = b"a" * (3 * MB) + b"\nend\n"
    assert b"".join(decompressed(iter_chunks(io.BytesIO(gzip.compress(text)), 1000))) == text


def test_truncated_gzip_raises_eof_error() -> None:
    data = gzip.compress(b'{"a":1}\n' * 1000)
    with pytest.raises(EOFError):
        b"".join(decompressed([data[: len(data) // 2]]))


def test_gzip_truncated_in_its_second_member_raises_eof_error() -> None:
    data = gzip.compress(b"one\n") + gzip.compress(b"two\n" * 100)
    with pytest.raises(EOFError):
        b"".join(decompressed([data[:-5]]))


def test_corrupt_gzip_raises_zlib_error() -> None:
    data = bytearray(gzip.compress(b"hello world\n" * 50))
    data[12:20] = b"\xff" * 8
    with pytest.raises(zlib.error):
        b"".join(decompressed([bytes(data)]))


def gzip_bomb(inflated: int, filler: bytes = b"\n") -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    piece = filler * (MB // len(filler))
    return b"".join([*(packer.compress(piece) for _ in range(inflated // MB)), packer.flush()])


def test_gzip_inflating_past_the_size_bound_is_refused_within_a_chunk_of_it() -> None:
    handed_on: list[int] = []
    with pytest.raises(InflateLimit) as refused:
        handed_on.extend(map(len, decompressed(split_by(gzip_bomb(16 * MB), [4096]), max_inflated=4 * MB)))
    assert sum(handed_on) <= 4 * MB < refused.value.inflated <= 5 * MB


def test_gzip_inflating_past_the_ratio_bound_is_refused_only_past_its_first_bytes() -> None:
    bomb = gzip_bomb(16 * MB)  # about 1,000x
    assert b"".join(decompressed([bomb], max_ratio=500, ratio_after=32 * MB)) == b"\n" * (16 * MB)
    with pytest.raises(InflateLimit) as refused:
        b"".join(decompressed(split_by(bomb, [1000]), max_ratio=500, ratio_after=2 * MB))
    assert 2 * MB < refused.value.inflated <= 3 * MB
    assert refused.value.inflated > 500 * refused.value.compressed


def test_gzip_ratio_is_judged_by_default_past_the_first_8_mb() -> None:
    # A bomb stops a second in, whatever it holds; an honest file's ratio is lower there than over
    # the whole file (the measurements are in reader.RATIO_AFTER's comment)
    assert RATIO_AFTER == 8 * MB
    assert b"".join(decompressed([gzip_bomb(8 * MB)], max_ratio=500)) == b"\n" * (8 * MB)
    with pytest.raises(InflateLimit) as refused:
        b"".join(decompressed(split_by(gzip_bomb(16 * MB), [4096]), max_ratio=500))
    assert 8 * MB < refused.value.inflated <= 9 * MB


def test_gzip_within_its_bounds_is_read_whole() -> None:
    text = b"".join(b'{"n":%d}\n' % i for i in range(200_000))
    data = gzip.compress(text) + gzip.compress(text)
    got = b"".join(decompressed(split_by(data, [5000]), max_inflated=2 * len(text), max_ratio=20, ratio_after=0))
    assert got == text + text


@pytest.mark.parametrize("missing", [8, 5, 4, 1])
def test_gzip_missing_its_trailer_is_told_from_gzip_cut_in_its_data(missing: int) -> None:
    data = gzip.compress(b"".join(b'{"n":%d}\n' % i for i in range(5000)))
    with pytest.raises(GzipTruncated) as no_trailer:
        b"".join(decompressed([data[:-missing]]))
    assert no_trailer.value.trailer_only
    for cut in (len(data) // 3, len(data) // 2, len(data) - 9):
        with pytest.raises(GzipTruncated) as truncated:
            b"".join(decompressed([data[:cut]]))
        assert not truncated.value.trailer_only


def test_lines_read_from_a_cut_gzip_stop_with_the_last_whole_line_and_whether_a_part_followed() -> None:
    whole = gzip.compress(b"one\ntwo\nthree\n")
    with pytest.raises(InputFileError) as ended:
        list(iter_lines(decompressed([whole[:-8]]), 100))
    assert (ended.value.line, ended.value.partial) == (3, False)
    unterminated = gzip.compress(b"one\ntwo\nthree")
    with pytest.raises(InputFileError) as cut:
        list(iter_lines(decompressed([unterminated[:-8]]), 100))
    assert (cut.value.line, cut.value.partial) == (2, True)


def test_gzip_lines_end_to_end_with_bom_and_crlf() -> None:
    data = gzip.compress(BOM + b'{"a":1}\r\n\r\n{"b":2}')
    result = list(iter_lines(decompressed(iter_chunks(io.BytesIO(data), 3)), 100))
    assert plain(result) == [(1, b'{"a":1}\r\n'), (2, b"\r\n"), (3, b'{"b":2}')]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([b"", b"  ", b'{"a": 1}', b"x" * 50, b"\r", b"line\r"]), max_size=40),
    st.integers(1, 120),
    st.integers(1, 9),
    st.booleans(),
)
def test_reading_in_segments_gives_the_lines_and_numbers_of_one_pass(
    lines: list[bytes], segment: int, chunk_size: int, final_newline: bool
) -> None:
    # Given a file read whole, and the same file read in segments that each stop after `segment` bytes
    data = b"\n".join(lines) + (b"\n" if lines and final_newline else b"")
    whole = list(iter_lines([data], max_line=1 << 20))
    pieces: list[tuple[int, bytes | LineTooLong]] = []
    start, first = 0, 1
    while start < len(data):
        position = [0]
        rest = data[start:]
        chunks = [rest[i : i + chunk_size] for i in range(0, len(rest), chunk_size)]
        got = list(iter_lines(chunks, 1 << 20, first_number=first, stop_at=segment, position=position))
        pieces.extend(got)
        assert position[0] > 0, "every segment makes progress"
        start += position[0]
        first = (got[-1][0] + 1) if got else first
    # Then the segments, one after the other, are the single pass
    assert pieces == whole
