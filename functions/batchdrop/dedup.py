"""Finding repeated customids in flat memory, whatever the size of the file.

A set of every custom_id would grow with the file (about 90 bytes an id: 270 MB for a 1 GB file of
short requests). Instead the ids are spilled, 64k at a time, by their hash into N buckets, and at the
end each bucket is checked on its own, so memory holds one bucket at a time. A spill goes to one file
on local disk, each bucket's part of it one after the other (a file per bucket cost more to open and
remove than bucketing the ids). A file with fewer ids than one spill never touches the disk: they
are checked where they are.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO
from zlib import crc32


@dataclass(frozen=True)
class Duplicate:
    line: int
    custom_id: str
    first_line: int


@dataclass
class DuplicateFinder:
    buckets: int = 64
    tmpdir: str | None = None
    # Ids are gathered in memory and spilled to the buckets this many at a time: appending to a list
    # is what the hot path can afford per line; the bucketing runs in a tight loop per spill.
    spill_every: int = 65_536
    # Public so a hot loop can append to them directly (then call spill() past spill_every).
    ids: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    # The spill file, and per bucket where its parts are in it: (offset, size of the ids, one a line,
    # size of their line numbers, 4-byte integers in the same order).
    _file: IO[bytes] | None = None
    _parts: list[list[tuple[int, int, int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.buckets & (self.buckets - 1):
            raise ValueError("buckets must be a power of two")
        self._parts = [[] for _ in range(self.buckets)]

    def add(self, custom_id: str, line: int) -> None:
        self.ids.append(custom_id)
        self.lines.append(line)
        if len(self.ids) >= self.spill_every:
            self.spill()

    def spill(self) -> None:
        if not self.ids:
            return
        mask = self.buckets - 1
        ids: list[list[str]] = [[] for _ in range(self.buckets)]
        lines: list[list[int]] = [[] for _ in range(self.buckets)]
        # A hash that is the same in every process: the segments of a large file are bucketed by
        # different invocations, and str's hash() is randomised per process (PYTHONHASHSEED).
        for custom_id, line in zip(self.ids, self.lines, strict=True):
            index = crc32(custom_id.encode()) & mask
            ids[index].append(custom_id)
            lines[index].append(line)
        if self._file is None:
            # Removed when closed, in close().
            self._file = tempfile.NamedTemporaryFile(prefix="batchdrop-ids-", dir=self.tmpdir)  # noqa: SIM115
        out = self._file
        offset = out.seek(0, os.SEEK_END)
        for index, bucket in enumerate(ids):
            if bucket:
                data = ("\n".join(bucket) + "\n").encode()
                numbers = array("I", lines[index]).tobytes()
                out.write(data)
                out.write(numbers)
                self._parts[index].append((offset, len(data), len(numbers)))
                offset += len(data) + len(numbers)
        self.ids.clear()
        self.lines.clear()

    def duplicates(self) -> list[Duplicate]:
        """Every line whose custom_id an earlier line already used, in line order."""
        if self._file is None:
            # Never spilled: fewer ids than `spill_every`, checked where they are, with no disk.
            return _first_uses(self.ids, self.lines)
        self.spill()
        found: list[Duplicate] = []
        for index in range(self.buckets):
            found.extend(_bucket_duplicates(self._bucket(index)))
        found.sort(key=lambda d: d.line)
        return found

    def _bucket(self, index: int) -> list[tuple[bytes, bytes]]:
        """A bucket's parts, (ids, line numbers), read back from the spill file."""
        assert self._file is not None
        parts = []
        for offset, ids_size, numbers_size in self._parts[index]:
            self._file.seek(offset)
            parts.append((self._file.read(ids_size), self._file.read(numbers_size)))
        return parts

    def export(self, path: str) -> None:
        """Everything added so far, written to one file at `path`: how a segment of a large file
        leaves its ids for the last segment to check (`duplicates_across`). A header gives the size
        of each bucket's ids and line numbers; the buckets follow, each in one piece, so the last
        segment reads a bucket of a segment with one ranged GET."""
        self.spill()
        sizes = array("Q", bytes(_header_size(self.buckets)))
        with open(path, "wb") as out:
            out.write(sizes.tobytes())
            for index in range(self.buckets):
                parts = self._bucket(index) if self._file is not None else []
                ids = b"".join(part[0] for part in parts)
                numbers = b"".join(part[1] for part in parts)
                out.write(ids)
                out.write(numbers)
                sizes[2 * index], sizes[2 * index + 1] = len(ids), len(numbers)
            out.seek(0)
            out.write(sizes.tobytes())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._parts = [[] for _ in range(self.buckets)]

    def __enter__(self) -> DuplicateFinder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def duplicates_across(exports: Sequence[Callable[[int, int], bytes]], buckets: int = 64) -> list[Duplicate]:
    """Duplicates across the exports of several finders (the segments of a large file), one bucket
    at a time: memory holds one bucket of every segment. Each of `exports` reads the bytes
    [start, end) of one export (a ranged GET, say)."""
    header = _header_size(buckets)
    layouts = []
    for read in exports:
        sizes = array("Q")
        sizes.frombytes(read(0, header))
        layout, offset = [], header
        for index in range(buckets):
            ids_size, numbers_size = sizes[2 * index], sizes[2 * index + 1]
            layout.append((offset, ids_size, numbers_size))
            offset += ids_size + numbers_size
        layouts.append(layout)
    found: list[Duplicate] = []
    for index in range(buckets):
        parts = []
        for read, layout in zip(exports, layouts, strict=True):
            offset, ids_size, numbers_size = layout[index]
            if ids_size:
                data = read(offset, offset + ids_size + numbers_size)
                parts.append((data[:ids_size], data[ids_size:]))
        found.extend(_bucket_duplicates(parts))
    found.sort(key=lambda d: d.line)
    return found


def _header_size(buckets: int) -> int:
    return 2 * 8 * buckets  # per bucket, the sizes of its ids and of its line numbers, 8 bytes each


def _bucket_duplicates(parts: list[tuple[bytes, bytes]]) -> list[Duplicate]:
    """The duplicates among one bucket's ids, given in parts of (ids one a line, their line numbers
    as 4-byte integers)."""
    ids: list[bytes] = []
    for data, _ in parts:
        ids.extend(data.split(b"\n")[:-1])
    if len(set(ids)) == len(ids):
        return []  # the common case, decided at C speed
    numbers = array("I")
    for _, data in parts:
        numbers.frombytes(data)
    return _first_uses([custom_id.decode() for custom_id in ids], numbers)


def _first_uses(ids: Sequence[str], numbers: Sequence[int]) -> list[Duplicate]:
    """The later uses of ids (on lines `numbers`), each with the line of its first use, in line order."""
    if len(set(ids)) == len(ids):
        return []  # the common case, decided at C speed
    found = []
    first: dict[str, int] = {}
    for number, custom_id in sorted(zip(numbers, ids, strict=True)):
        earlier = first.setdefault(custom_id, number)
        if earlier != number:
            found.append(Duplicate(number, custom_id, earlier))
    return found
