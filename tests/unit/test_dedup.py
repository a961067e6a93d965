from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from batchdrop.dedup import Duplicate, DuplicateFinder, duplicates_across


def test_later_uses_of_an_id_are_duplicates_of_the_first(tmp_path: Path) -> None:
    with DuplicateFinder(buckets=4, tmpdir=str(tmp_path)) as finder:
        for line, custom_id in enumerate(["x", "y", "x", "z", "y", "x"], start=1):
            finder.add(custom_id, line)
        found = finder.duplicates()
    assert found == [Duplicate(3, "x", 1), Duplicate(5, "y", 2), Duplicate(6, "x", 1)]
    # and its spill files are gone
    assert list(tmp_path.iterdir()) == []


def test_ids_fewer_than_a_spill_are_checked_without_the_disk(tmp_path: Path) -> None:
    with DuplicateFinder(buckets=4, tmpdir=str(tmp_path), spill_every=4) as finder:
        for line, custom_id in enumerate(["x", "y", "x"], start=1):
            finder.add(custom_id, line)
        assert finder.duplicates() == [Duplicate(3, "x", 1)]
        assert list(tmp_path.iterdir()) == []
        finder.add("y", 4)  # the fourth id spills them all to the buckets
        assert list(tmp_path.iterdir()) != []
        assert finder.duplicates() == [Duplicate(3, "x", 1), Duplicate(4, "y", 2)]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.text(alphabet="abc", min_size=1, max_size=2), max_size=200),
    st.sampled_from([1, 2, 4, 8]),
    st.sampled_from([7, 1000]),  # spilled to the buckets, or all in memory
)
def test_matches_a_set_whatever_the_number_of_buckets(ids: list[str], buckets: int, spill_every: int) -> None:
    expected = []
    first: dict[str, int] = {}
    for line, custom_id in enumerate(ids, start=1):
        if custom_id in first:
            expected.append(Duplicate(line, custom_id, first[custom_id]))
        else:
            first[custom_id] = line
    with DuplicateFinder(buckets=buckets, spill_every=spill_every) as finder:
        for line, custom_id in enumerate(ids, start=1):
            finder.add(custom_id, line)
        assert finder.duplicates() == expected


BUCKET_OF_IDS = """
import sys, tempfile
from batchdrop.dedup import DuplicateFinder
with DuplicateFinder(buckets=64) as finder, tempfile.NamedTemporaryFile() as out:
    for i, custom_id in enumerate(["req-1", "req-2", "alpha", "q_99"]):
        finder.add(custom_id, i + 1)
    finder.export(out.name)
    print(out.read().hex())
"""


def test_ids_fall_in_the_same_buckets_in_every_process() -> None:
    # The segments of a large file are bucketed by different invocations, each with its own str hash
    # seed: duplicates across segments are only found if an id lands in the same bucket in all of them.
    import os
    import subprocess
    import sys

    exports = {
        subprocess.run(
            [sys.executable, "-c", BUCKET_OF_IDS],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(exports) == 1, exports


def test_duplicates_come_in_line_order_and_a_first_use_is_the_earliest_line_in_memory_or_on_disk() -> None:
    # Ids added out of line order (as the segments of a file may reach a finder) are reported as the
    # file reads: the first use of an id is its earliest line, whichever came in first.
    added = [("a", 10), ("b", 1), ("a", 11), ("b", 2), ("a", 3)]
    for spill_every in (1, 100):
        with DuplicateFinder(buckets=4, spill_every=spill_every) as finder:
            for custom_id, line in added:
                finder.add(custom_id, line)
            assert finder.duplicates() == [Duplicate(2, "b", 1), Duplicate(10, "a", 3), Duplicate(11, "a", 3)]


def test_spills_go_to_one_file_however_many_buckets_and_spills(tmp_path: Path) -> None:
    with DuplicateFinder(buckets=64, tmpdir=str(tmp_path), spill_every=10) as finder:
        for line in range(1, 101):
            finder.add(f"req-{line % 90}", line)
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert len(files) == 1, files
        assert finder.duplicates() == [Duplicate(line, f"req-{line - 90}", line - 90) for line in range(90, 101)][1:]


def reader_of(path: Path) -> Callable[[int, int], bytes]:
    """What a ranged GET of an uploaded export does, on the local file."""

    def read(start: int, end: int) -> bytes:
        with path.open("rb") as f:
            f.seek(start)
            return f.read(end - start)

    return read


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.text(alphabet="abcd", min_size=1, max_size=2), max_size=120),
    st.integers(1, 4),
    st.sampled_from([1, 7, 1000]),  # spilled every id, spilled often, or never spilled before the export
)
def test_segments_exports_find_the_duplicates_of_the_whole(ids: list[str], cut: int, spill_every: int) -> None:
    # Given a file's ids added by several finders, as the segments of a large file are, each
    # exporting what it holds to one file
    numbered = list(enumerate(ids, start=1))
    segments = [numbered[i::cut] for i in range(cut)]
    with DuplicateFinder(buckets=8, spill_every=7) as whole:
        for line, custom_id in numbered:
            whole.add(custom_id, line)
        expected = whole.duplicates()
    with tempfile.TemporaryDirectory() as folder:
        reads = []
        for number, segment in enumerate(segments):
            path = Path(folder, f"{number}.ids")
            with DuplicateFinder(buckets=8, spill_every=spill_every) as finder:
                for line, custom_id in segment:
                    finder.add(custom_id, line)
                finder.export(str(path))
            reads.append(reader_of(path))
        # Then the exports, read a range at a time bucket by bucket, find what one finder finds
        assert duplicates_across(reads, buckets=8) == expected
