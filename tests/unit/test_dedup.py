from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from batchdrop.dedup import Duplicate, DuplicateFinder


def test_later_uses_of_an_id_are_duplicates_of_the_first(tmp_path: Path) -> None:
    with DuplicateFinder(buckets=4, tmpdir=str(tmp_path)) as finder:
        for line, custom_id in enumerate(["x", "y", "x", "z", "y", "x"], start=1):
            finder.add(custom_id, line)
        found = finder.duplicates()
    assert found == [Duplicate(3, "x", 1), Duplicate(5, "y", 2), Duplicate(6, "x", 1)]
    # and its spill files are gone
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="abc", min_size=1, max_size=2), max_size=200), st.sampled_from([1, 2, 4, 8]))
def test_matches_a_set_whatever_the_number_of_buckets(ids: list[str], buckets: int) -> None:
    expected = []
    first: dict[str, int] = {}
    for line, custom_id in enumerate(ids, start=1):
        if custom_id in first:
            expected.append(Duplicate(line, custom_id, first[custom_id]))
        else:
            first[custom_id] = line
    with DuplicateFinder(buckets=buckets, spill_every=7) as finder:
        for line, custom_id in enumerate(ids, start=1):
            finder.add(custom_id, line)
        assert finder.duplicates() == expected
