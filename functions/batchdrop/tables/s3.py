"""A table job's data in the bucket, read through our own S3 client (its retries, its endpoint).

Parquet needs random access: `RangeFile` is a seekable file over ranged GETs of one pinned object
version, with a small read-ahead so the footer's many small reads are a few requests. pyarrow reads
a row group's column chunks through it, so memory holds one row group's columns, whatever the file's
size, and no /tmp copy is made.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, BinaryIO

from batchdrop.adapters.objects import ObjectMissing, ObjectStore
from batchdrop.tables.sources import DataObject

READ_AHEAD = 256 * 1024


class S3Objects:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def head(self, key: str) -> DataObject | None:
        try:
            found = self.store.head(key)
        except ObjectMissing:
            return None
        return DataObject(key, found.version_id, found.etag, int(found.size or 0))

    def list(self, prefix: str) -> list[DataObject]:
        # Pinned one by one: a listing gives no version ids, and the join must read what was rendered.
        return [obj for key in sorted(self.store.keys(prefix)) if (obj := self.head(key)) is not None]

    def chunks(self, obj: DataObject) -> Iterator[bytes]:
        return self.store.chunks(obj.key, obj.version_id)

    def open(self, obj: DataObject) -> BinaryIO:
        return io.BufferedReader(RangeFile(self.store, obj), buffer_size=READ_AHEAD)

    def read(self, key: str) -> bytes | None:
        return self.store.get_bytes(key)


class RangeFile(io.RawIOBase):
    def __init__(self, store: ObjectStore, obj: DataObject) -> None:
        self.store, self.obj = store, obj
        self.size = obj.size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self.size, self.position + len(view))
        if end <= self.position:
            return 0
        kwargs: dict[str, Any] = {
            "Bucket": self.store.bucket,
            "Key": self.obj.key,
            "Range": f"bytes={self.position}-{end - 1}",
        }
        if self.obj.version_id:
            kwargs["VersionId"] = self.obj.version_id
        body = self.store.s3.get_object(**kwargs)["Body"]
        done = 0
        try:
            while done < end - self.position:
                got = body.read(end - self.position - done)
                if not got:
                    break
                view[done : done + len(got)] = got
                done += len(got)
        finally:
            body.close()
        self.position += done
        return done
