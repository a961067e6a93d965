"""Files that must end in bounded time with a clear verdict (issue 13): gzip bombs, a gzip file missing
its trailer, floods of blank lines, floods of invalid lines, CR-only line endings, a generated id that
collides with a custom_id."""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Iterator

from batchdrop import models as m
from batchdrop.config import DEFAULT_MAX_GZIP_RATIO, DEFAULT_MAX_INVALID_LINES
from batchdrop.dedup import Duplicate
from batchdrop.scan import ScanResult, duplicate_error, scan
from batchdrop.validation import NoIds
from tests.lines import dumps, neutral_line, openai_line, validator

MB = 1024 * 1024


def scanned(chunks: list[bytes], **bounds: int) -> tuple[ScanResult, list[m.Request], list[m.Invalid]]:
    requests: list[m.Request] = []
    errors: list[m.Invalid] = []
    result = scan(chunks, validator(seen=NoIds()), requests.append, errors.append, **bounds)  # type: ignore[arg-type]
    return result, requests, errors


def in_chunks(data: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def gzip_stream(head: bytes, filler: bytes, total: int) -> Iterator[bytes]:
    """A gzip file of `head` then `filler` repeated to `total` bytes, compressed as it is made."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    yield packer.compress(head)
    piece = filler * (MB // len(filler))
    for _ in range(total // len(piece)):
        yield packer.compress(piece)
    yield packer.flush()


# -- gzip bombs ---------------------------------------------------------------------------------------


def test_a_gzip_bomb_past_the_size_bound_is_refused_with_a_file_error_and_no_invented_line() -> None:
    # Given a gzip file of one request and then 32 MB of newlines (32 KB compressed)
    bomb = b"".join(gzip_stream(dumps(openai_line("first")) + b"\n", b"\n", 32 * MB))
    # When it is scanned with its inflated size bounded to 8 MB
    started = time.monotonic()
    result, requests, errors = scanned(in_chunks(bomb), max_inflated=8 * MB)
    # Then it stops at the bound, quickly, with the file's error, and counts only its one real line
    assert time.monotonic() - started < 5
    assert result.file_error is not None
    assert "inflates to more than 8,388,608 bytes" in result.file_error.message
    assert "BATCHDROP_MAX_INFLATED_BYTES" in result.file_error.message
    assert [r.line for r in requests] == [1]
    assert errors == []  # the bomb's blank lines are no line of the file's to blame
    assert (result.lines, result.valid, result.invalid) == (1, 1, 0)
    assert 1 < result.last_line <= 9 * MB


def test_a_gzip_bomb_past_the_ratio_bound_is_refused_as_a_compression_bomb() -> None:
    # Given the classic bomb, 128 MB of newlines in 128 KB of gzip (batchdrop validate takes 1 GiB)
    # When it is scanned with the default bounds a deployment uses (500x, judged after 8 MB)
    started = time.monotonic()
    result, requests, errors = scanned(list(gzip_stream(b"", b"\n", 128 * MB)), max_inflated=32 << 30, max_ratio=500)
    # Then it is refused after its first 8 MB, in a second, naming the ratio and the setting
    assert time.monotonic() - started < 5
    assert result.file_error is not None
    assert "compression bomb" in result.file_error.message
    assert "BATCHDROP_MAX_GZIP_RATIO" in result.file_error.message
    assert (result.lines, requests, errors) == (0, [], [])
    assert 4 * MB < result.last_line <= 8 * MB


def test_a_gzip_bomb_of_valid_requests_is_refused_past_its_first_8_mb() -> None:
    # Given 256 MB of one neutral request of 10 KB without a custom_id (each line valid, each given
    # its own id), about 860x
    line = dumps(neutral_line(text="a" * 10_000)) + b"\n"
    bomb = list(gzip_stream(b"", line, 256 * MB))
    assert 256 * MB // sum(map(len, bomb)) > 800
    # When it is scanned with the default ratio bound
    started = time.monotonic()
    result, requests, errors = scanned(bomb, max_ratio=DEFAULT_MAX_GZIP_RATIO)
    # Then it is refused once past 8 MB, its lines read so far each valid (and the line cut where
    # reading stopped, if any, blamed with the file's error), none after
    assert time.monotonic() - started < 5
    assert result.file_error is not None
    assert "compression bomb" in result.file_error.message
    assert [r.line for r in requests] == list(range(1, len(requests) + 1))
    assert errors in ([], [result.file_error])
    assert result.lines == result.last_line == len(requests) + len(errors)
    assert 7 * MB < result.last_line * len(line) <= 9 * MB


def test_a_file_starting_with_the_most_repetitive_honest_lines_passes_the_ratio_judged_from_8_mb() -> None:
    # Given 16 MB of one 31 KB prompt (one sentence repeated) sent verbatim, gzipped at level 9: about
    # 325x on its first 8 MB, as close to 500x as an honest file comes (a longer prompt falls out of
    # deflate's 32 KB window, and its copies no longer compress against each other)
    prompt = ("Summarise the following report in three sentences. " * 600)[:31_000]
    lines = [dumps(openai_line(f"same-{i}", text=prompt)) for i in range(16 * MB // 31_000)]
    data = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=9)
    assert 300 < (len(lines) * 31_000) // len(data) < DEFAULT_MAX_GZIP_RATIO
    # When it is scanned with the default bounds
    result, requests, errors = scanned(in_chunks(data, MB), max_ratio=DEFAULT_MAX_GZIP_RATIO)
    # Then every line is read
    assert result.file_error is None
    assert (len(requests), errors) == (len(lines), [])


def test_an_honest_repetitive_gzip_file_passes_the_default_ratio_bound() -> None:
    # Given a file of one 2 KB prompt sent 40,000 times (about 225x: as repetitive as honest files get)
    prompt = "Summarise the following report in three sentences. " * 40
    lines = [dumps(openai_line(f"sample-{i}", text=prompt)) for i in range(40_000)]
    data = gzip.compress(b"\n".join(lines) + b"\n")
    # When it is scanned with the default bounds, the ratio judged from the first byte on
    result = scan(in_chunks(data, MB), validator(seen=NoIds()), lambda r: None, lambda i: None, max_ratio=500)
    # Then every line is read
    assert result.file_error is None
    assert result.valid == 40_000


# -- blank lines ----------------------------------------------------------------------------------------


def test_a_flood_of_blank_lines_is_skipped_without_a_python_step_a_line() -> None:
    # Given 64 million blank lines (newlines, CRLFs and spaces) around three requests; at the
    # 0.3 million lines a second of a Python step a line, this took three and a half minutes
    flood = b"\n" * (40 * MB) + b" \r\n" * (8 * MB)
    data = dumps(openai_line("a")) + b"\n" + flood + dumps(openai_line("b")) + b"\n" + flood + dumps(openai_line("c"))
    started = time.monotonic()
    result, requests, errors = scanned(in_chunks(data, MB))
    elapsed = time.monotonic() - started
    # Then it takes seconds, and the requests keep their physical line numbers
    assert elapsed < 5, elapsed
    flood_lines = 48 * MB
    assert [r.line for r in requests] == [1, 2 + flood_lines, 3 + 2 * flood_lines]
    assert errors == []
    assert (result.lines, result.last_line) == (3, 3 + 2 * flood_lines)


def test_blank_lines_between_requests_in_every_chunk_keep_the_numbers() -> None:
    # Given chunks each holding a request and many blank lines (no chunk is only whitespace)
    block = b"\n" * 5000 + b"   \n" * 3000 + dumps(openai_line("x")) + b"\n"
    data = b"".join(block.replace(b'"x"', f'"r{i}"'.encode()) for i in range(50))
    result, requests, errors = scanned(in_chunks(data, 8192))
    assert [r.line for r in requests] == [8001 * (i + 1) for i in range(50)]
    assert [r.custom_id for r in requests] == [f"r{i}" for i in range(50)]
    assert (result.lines, result.last_line, errors) == (50, 50 * 8001, [])


# -- floods of invalid lines -------------------------------------------------------------------------------


def test_a_flood_of_invalid_lines_stops_past_the_cap_with_a_file_error_that_says_what_to_do() -> None:
    # Given 4 million lines of `x` (8 MB): at about 6.4 µs a line, 26 s and 4 million error lines
    data = b"x\n" * (4 * MB)
    # When it is scanned with a cap of 1,000 invalid lines
    started = time.monotonic()
    result, requests, errors = scanned(in_chunks(data, MB), max_invalid=1000)
    # Then it stops at the 1,001st, each line read has its own error line, and the file is refused
    assert time.monotonic() - started < 2
    assert requests == []
    assert [e.line for e in errors] == list(range(1, 1002))
    assert {e.code for e in errors} == {m.INVALID_JSON}
    assert (result.lines, result.valid, result.invalid, result.last_line) == (1001, 0, 1001, 1001)
    assert result.capped
    assert result.exhausted
    assert result.file_error is not None
    assert result.file_error.message == (
        "more than 1,000 lines are invalid (first: line 1, invalid_json); the file is refused as a whole, and "
        "was read no further than line 1,001; fix the file's format, or raise BATCHDROP_MAX_INVALID_LINES"
    )


def test_a_file_with_exactly_the_cap_of_invalid_lines_is_read_to_its_end() -> None:
    data = b"\n".join([dumps(openai_line("ok1")), b"x", b"[]", dumps(openai_line("ok2")), b"{"]) + b"\n"
    result, requests, errors = scanned([data], max_invalid=3)
    assert result.file_error is None
    assert not result.capped
    assert ([r.line for r in requests], [e.line for e in errors]) == ([1, 4], [2, 3, 5])
    assert (result.lines, result.valid, result.invalid, result.last_line) == (5, 2, 3, 5)


def test_the_cap_stops_inside_a_block_counting_each_line_read_once_and_none_after() -> None:
    # Given valid and invalid lines mixed in one chunk (one block of verdicts), blank lines among them
    rows = [dumps(openai_line("v1")), b"x", b"", dumps(openai_line("v2")), b"[1]", b"y", dumps(openai_line("v3"))]
    rows += [b"z", dumps(openai_line("v4"))] * 1000
    data = b"\n".join(rows) + b"\n"
    # When it is scanned with a cap of 2: the third invalid line (line 6) passes it
    result, requests, errors = scanned([data], max_invalid=2)
    # Then lines 1 to 6 each have exactly one verdict, and nothing after line 6 is handed on
    assert [r.line for r in requests] == [1, 4]
    assert [(e.line, e.code) for e in errors] == [(2, m.INVALID_JSON), (5, m.NOT_AN_OBJECT), (6, m.INVALID_JSON)]
    assert (result.lines, result.valid, result.invalid, result.last_line) == (5, 2, 3, 6)
    assert result.file_error is not None
    assert "(first: line 2, invalid_json)" in result.file_error.message
    assert "no further than line 6" in result.file_error.message


def test_a_segment_counts_the_invalid_lines_of_the_segments_before_it_against_the_cap() -> None:
    # Given a segment of a plain file, from line 501, after segments that held 9 invalid lines
    rows = [dumps(openai_line(f"s{i}")) for i in range(20)]
    rows[3], rows[7], rows[12] = b"bad", b"bad", b"bad"
    data = b"\n".join(rows) + b"\n"
    # When it is scanned with a cap of 10 for the file, to a stop far past its end
    result, requests, errors = scanned([data], first_line=501, stop_at=len(data) // 2, max_invalid=10, invalid_before=9)
    # Then its second invalid line is the file's 11th: the scan stops there, and the job ends with this segment
    assert [e.line for e in errors] == [504, 508]
    assert [r.line for r in requests] == [501, 502, 503, 505, 506, 507]
    assert (result.lines, result.invalid, result.last_line) == (8, 2, 508)
    assert result.exhausted
    assert result.file_error is not None
    assert result.file_error.message.startswith(
        "more than 10 lines are invalid (9 in the lines before line 501, then first: line 504, invalid_json)"
    )


def test_a_gzip_bomb_of_invalid_lines_stops_at_the_default_cap_in_seconds() -> None:
    # Given a gzip bomb of `x` lines (256 MB in 256 KB; 1 GiB of it ran 3.5 minutes and wrote 33
    # million error lines before the ratio bound stopped it)
    bomb = list(gzip_stream(b"", b"x\n", 256 * MB))
    count = [0]

    def report(invalid: m.Invalid) -> None:
        count[0] += 1

    # When it is scanned with the default cap and ratio bound
    started = time.monotonic()
    result = scan(
        bomb, validator(seen=NoIds()), lambda r: None, report, max_ratio=DEFAULT_MAX_GZIP_RATIO,
        max_invalid=DEFAULT_MAX_INVALID_LINES,
    )  # fmt: skip
    # Then it stops at the cap (2 MB in, before the ratio is judged), in seconds
    assert time.monotonic() - started < 30
    assert count[0] == result.invalid == result.lines == DEFAULT_MAX_INVALID_LINES + 1
    assert result.file_error is not None
    assert "more than 1,000,000 lines are invalid" in result.file_error.message


# -- gzip cut short ---------------------------------------------------------------------------------------


def test_a_gzip_file_missing_its_trailer_counts_each_line_once_and_invents_none() -> None:
    # Given a gzip file of 200 requests whose last 8 bytes (CRC32 and size) are missing
    lines = [dumps(openai_line(f"t{i}")) for i in range(200)]
    data = gzip.compress(b"\n".join(lines) + b"\n")[:-8]
    # When it is scanned
    result, requests, errors = scanned(in_chunks(data, 1000))
    # Then every line was read once, no error line is made up for a 201st, and the file is refused
    assert [r.line for r in requests] == list(range(1, 201))
    assert errors == []
    assert (result.lines, result.valid, result.invalid, result.last_line) == (200, 200, 0, 200)
    assert result.file_error is not None
    assert "without its last 8 bytes" in result.file_error.message
    assert "after line 200" in result.file_error.message


def test_a_gzip_file_missing_its_trailer_after_an_unterminated_last_line_blames_that_line() -> None:
    lines = [dumps(openai_line(f"t{i}")) for i in range(5)]
    data = gzip.compress(b"\n".join(lines))[:-8]  # no newline after the last line
    result, requests, errors = scanned([data])
    assert [r.line for r in requests] == [1, 2, 3, 4]
    assert [(e.line, e.code) for e in errors] == [(5, m.INVALID_ENCODING)]
    assert (result.lines, result.invalid, result.last_line) == (5, 1, 5)


# -- CR-only line endings -------------------------------------------------------------------------------------


def test_a_file_with_cr_only_line_endings_is_one_line_whose_error_says_so() -> None:
    data = b"\r".join(dumps(openai_line(f"mac{i}")) for i in range(12)) + b"\r"
    _result, requests, errors = scanned(in_chunks(data, 100))
    assert requests == []
    [error] = errors
    assert error.code == m.INVALID_JSON
    assert "12 carriage returns" in error.message
    assert "CR-only line endings" in error.message
    assert "convert them to LF" in error.message


def test_a_huge_file_with_cr_only_line_endings_says_so_too() -> None:
    # Over the 32 MB a line may hold: the one line is too long, and its error says why
    line = dumps(openai_line("mac", text="y" * 1000))
    data = b"\r".join([line] * 40_000)  # 41 MB, 39,999 CRs
    _result, _requests, errors = scanned(in_chunks(data, MB))
    [error] = errors
    assert error.code == m.REQUEST_TOO_LARGE
    assert "39,999 carriage returns" in error.message


def test_crlf_and_cr_in_json_whitespace_get_no_such_hint() -> None:
    data = b'{"custom_id": 1,\r "x": }\r\n'
    _, _, [error] = scanned([data])
    assert error.code == m.INVALID_JSON
    assert "carriage return" in error.message  # a CR inside the line: worth the hint
    _, _, [plain] = scanned([b"{broken\r\n"])
    assert "carriage return" not in plain.message


# -- generated ids ------------------------------------------------------------------------------------------


def test_a_generated_id_that_collides_with_a_custom_id_names_both_lines_and_says_which_was_given() -> None:
    # Given line 3 that uses "line-5" as its custom_id, and line 5, a neutral line with none
    lines = [dumps(neutral_line(custom_id=f"n{i}")) for i in range(1, 5)]
    lines[2] = dumps(neutral_line(custom_id="line-5"))
    lines.append(dumps(neutral_line()))  # line 5: given "line-5"
    result, _requests, _ = scanned([b"\n".join(lines) + b"\n"])
    [dup] = result.duplicates
    assert dup == Duplicate(5, "line-5", 3)
    error = duplicate_error(dup)
    assert error.line == 5
    assert "line 5 has no custom_id, so it was given 'line-5'" in error.message
    assert "line 3 already uses" in error.message
    assert "give every line its own custom_id" in error.message


def test_a_custom_id_equal_to_an_earlier_generated_id_says_where_that_id_came_from() -> None:
    lines = [dumps(neutral_line()), dumps(neutral_line(custom_id="line-1"))]
    result, _, _ = scanned([b"\n".join(lines)])
    [dup] = result.duplicates
    error = duplicate_error(dup)
    assert (error.line, error.custom_id) == (2, "line-1")
    assert "the id line 1 was given, as it has no custom_id of its own" in error.message


def test_two_custom_ids_alike_keep_the_plain_message() -> None:
    error = duplicate_error(Duplicate(7, "q1", 2))
    assert error.message == "\"custom_id\" 'q1' is used by line 2 already; each request needs its own"
