"""One pass over a file: its counts, requests, errors and duplicates are those of its lines checked one by one."""

from __future__ import annotations

import gzip
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from batchdrop import models as m
from batchdrop.dedup import Duplicate, DuplicateFinder
from batchdrop.scan import scan
from batchdrop.validation import NoIds
from tests.lines import anthropic_line, dumps, openai_line, validator

_LINES = [
    *(dumps(openai_line(f"o{i}")) for i in range(6)),
    *(dumps(anthropic_line(f"a{i}")) for i in range(3)),
    dumps(openai_line("long", text="words " * 400)),
    dumps(openai_line("o1")),  # a duplicate of an id above
    b"",
    b"not json",
    dumps(openai_line("bad id!")),
]


def _reference(lines: list[bytes]) -> tuple[list[int], list[int], list[Duplicate]]:
    """Line numbers of the requests and of the errors, and the duplicates, found a line at a time."""
    check = validator(seen=NoIds()).check
    requests: list[int] = []
    errors: list[int] = []
    first: dict[str, int] = {}
    duplicates = []
    for number, raw in enumerate(lines, 1):
        verdict = check(number, raw)
        if isinstance(verdict, m.Request):
            requests.append(number)
            if verdict.custom_id in first:
                duplicates.append(Duplicate(number, verdict.custom_id, first[verdict.custom_id]))
            else:
                first[verdict.custom_id] = number
        elif verdict is not None:
            errors.append(number)
    return requests, errors, duplicates


@settings(max_examples=150, deadline=None)
@given(
    picks=st.lists(st.sampled_from(range(len(_LINES))), min_size=1, max_size=60),
    chunk=st.integers(min_value=7, max_value=5000),
    gzipped=st.booleans(),
    spill_every=st.sampled_from([3, 65_536]),
)
def test_a_scan_counts_and_hands_on_what_its_lines_say_one_by_one(
    picks: list[int], chunk: int, gzipped: bool, spill_every: int
) -> None:
    # Given a file of valid, invalid, blank and repeated lines, read in chunks of any size
    lines = [_LINES[i] for i in picks]
    data = b"\n".join(lines) + b"\n"
    if gzipped:
        data = gzip.compress(data)
    requests: list[int] = []
    errors: list[int] = []
    # When it is scanned, its ids spilled to disk or kept in memory
    with DuplicateFinder(spill_every=spill_every) as finder:
        result = scan(
            [data[i : i + chunk] for i in range(0, len(data), chunk)],
            validator(seen=NoIds()),
            lambda request: requests.append(request.line),
            lambda invalid: errors.append(invalid.line),
            finder=finder,
        )
        duplicates = finder.duplicates()
    # Then every line is accounted for as the line-by-line check says
    want_requests, want_errors, want_duplicates = _reference(lines)
    assert requests == want_requests
    assert errors == want_errors
    assert duplicates == want_duplicates
    assert (result.lines, result.valid, result.invalid) == (
        len(want_requests) + len(want_errors),
        len(want_requests),
        len(want_errors),
    )
    assert result.last_line == len(lines)
    assert result.file_error is None
    assert result.gzipped == gzipped


def test_a_gzip_file_cut_short_counts_what_was_read_and_one_error_for_the_rest(tmp_path: Path) -> None:
    # Given a gzip file of 3,000 lines, cut off part-way
    lines = [dumps(openai_line(f"r{i}")) for i in range(3000)]
    data = gzip.compress(b"\n".join(lines) + b"\n")[:-4000]
    requests: list[int] = []
    errors: list[m.Invalid] = []
    # When it is scanned
    result = scan(
        [data[i : i + 4096] for i in range(0, len(data), 4096)],
        validator(seen=NoIds()),
        lambda request: requests.append(request.line),
        errors.append,
        tmpdir=str(tmp_path),
    )
    # Then the lines read are requests, and the file's error comes on the line after the last one read
    assert 0 < result.valid == len(requests) < 3000
    assert requests == list(range(1, result.valid + 1))
    assert [e.code for e in errors] == [m.INVALID_ENCODING]
    assert errors[0].line == result.last_line == result.valid + 1
    assert (result.lines, result.invalid) == (result.valid + 1, 1)
