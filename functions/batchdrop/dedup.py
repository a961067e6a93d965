"""Finding repeated custom_ids in flat memory, whatever the size of the file.

A set of every custom_id would grow with the file (about 90 bytes an id: 270 MB for a 1 GB file of
short requests). Instead each id is appended to one of N bucket files on local disk by its hash,
and at the end each bucket is checked on its own, so memory holds one bucket at a time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import IO


@dataclass(frozen=True)
class Duplicate:
    line: int
    custom_id: str
    first_line: int


@dataclass
class DuplicateFinder:
    buckets: int = 256
    tmpdir: str | None = None
    _files: list[IO[bytes] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._files = [None] * self.buckets

    def add(self, custom_id: str, line: int) -> None:
        data = custom_id.encode()
        # crc32, not hash(): the same id must land in the same bucket in every process.
        index = zlib.crc32(data) % self.buckets
        f = self._files[index]
        if f is None:
            f = self._files[index] = tempfile.NamedTemporaryFile(  # noqa: SIM115 — closed in close()
                dir=self.tmpdir, prefix="ids-", suffix=".tsv", delete=False
            )
        f.write(b"%s\t%d\n" % (data, line))

    def duplicates(self) -> list[Duplicate]:
        """Every line whose custom_id an earlier line already used, in line order."""
        found: list[Duplicate] = []
        for f in self._files:
            if f is None:
                continue
            f.flush()
            first: dict[bytes, int] = {}
            with open(f.name, "rb") as reader:
                for record in reader:
                    custom_id, _, line = record.rstrip(b"\n").rpartition(b"\t")
                    number = int(line)
                    earlier = first.setdefault(custom_id, number)
                    if earlier != number:
                        found.append(Duplicate(number, custom_id.decode(), earlier))
        found.sort(key=lambda d: d.line)
        return found

    def close(self) -> None:
        for f in self._files:
            if f is not None:
                f.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f.name)
        self._files = [None] * self.buckets

    def __enter__(self) -> DuplicateFinder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
