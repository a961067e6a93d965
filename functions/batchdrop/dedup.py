"""Finding repeated customids in flat memory, whatever the size of the file.

A set of every custom_id would grow with the file (about 90 bytes an id: 270 MB for a 1 GB file of
short requests). Instead the ids are spilled, 64k at a time, into N bucket files on local disk by
their hash, and at the end each bucket is checked on its own, so memory holds one bucket at a time.
A file with fewer ids than one spill never touches the disk: they are checked where they are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from array import array
from collections.abc import Sequence
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
    # Per bucket: the ids, one a line, and their line numbers as 4-byte integers, in the same order.
    _files: list[tuple[IO[bytes], IO[bytes]] | None] = field(default_factory=list)
    _dir: str | None = None
    _opened: int = 0

    def __post_init__(self) -> None:
        if self.buckets & (self.buckets - 1):
            raise ValueError("buckets must be a power of two")
        self._files = [None] * self.buckets

    def add(self, custom_id: str, line: int) -> None:
        self.ids.append(custom_id)
        self.lines.append(line)
        if len(self.ids) >= self.spill_every:
            self.spill()

    def spill(self) -> None:
        mask = self.buckets - 1
        ids: list[list[str]] = [[] for _ in range(self.buckets)]
        lines: list[list[int]] = [[] for _ in range(self.buckets)]
        # A hash that is the same in every process: the segments of a large file are bucketed by
        # different invocations, and str's hash() is randomised per process (PYTHONHASHSEED).
        for custom_id, line in zip(self.ids, self.lines, strict=True):
            index = crc32(custom_id.encode()) & mask
            ids[index].append(custom_id)
            lines[index].append(line)
        for index, bucket in enumerate(ids):
            if not bucket:
                continue
            files = self._files[index]
            if files is None:
                files = self._files[index] = (self._temp(".ids"), self._temp(".lines"))
            files[0].write(("\n".join(bucket) + "\n").encode())
            array("I", lines[index]).tofile(files[1])
        self.ids.clear()
        self.lines.clear()

    def _temp(self, suffix: str) -> IO[bytes]:
        # Plain files in one private folder: NamedTemporaryFile costs far more per file.
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="batchdrop-ids-", dir=self.tmpdir)
        self._opened += 1
        return open(os.path.join(self._dir, f"{self._opened}{suffix}"), "w+b")

    def duplicates(self) -> list[Duplicate]:
        """Every line whose custom_id an earlier line already used, in line order."""
        if self._dir is None:
            # Never spilled: fewer ids than `spill_every`, checked where they are, with no disk.
            return _first_uses(self.ids, self.lines)
        return find_duplicates([[pair] for pair in self.bucket_files().values()])

    def bucket_files(self) -> dict[int, tuple[str, str]]:
        """Bucket → (ids file, line numbers file), everything added so far written out."""
        self.spill()
        out = {}
        for index, files in enumerate(self._files):
            if files is not None:
                for f in files:
                    f.flush()
                out[index] = (files[0].name, files[1].name)
        return out

    def close(self) -> None:
        for files in self._files:
            for f in files or ():
                f.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._files = [None] * self.buckets

    def __enter__(self) -> DuplicateFinder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def find_duplicates(buckets: list[list[tuple[str, str]]]) -> list[Duplicate]:
    """Duplicates within each bucket, whose parts (ids file, line numbers file) are in line order."""
    found: list[Duplicate] = []
    for parts in buckets:
        ids: list[bytes] = []
        for ids_path, _ in parts:
            with open(ids_path, "rb") as reader:
                ids.extend(reader.read().split(b"\n")[:-1])
        if len(set(ids)) == len(ids):
            continue  # the common case, decided at C speed
        numbers = array("I")
        for _, lines_path in parts:
            with open(lines_path, "rb") as reader:
                numbers.frombytes(reader.read())
        found.extend(_first_uses([custom_id.decode() for custom_id in ids], numbers))
    found.sort(key=lambda d: d.line)
    return found


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
