"""Reading a table job's data as a stream of rows: CSV and TSV with the csv module, JSONL of records a
line at a time, Parquet a row group at a time with pyarrow (only the columns asked for). gzip is
inflated on the fly (by its magic bytes), through the same bounded inflater as JSONL uploads.

Where the objects live is behind `Objects`: S3 (the functions, pinned to the versions the job saw) or
a folder (`batchdrop validate`, offline). Nothing here holds more than one block of rows.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import orjson

from batchdrop.reader import BOM, decompressed

if TYPE_CHECKING:
    import pyarrow as pa

# Rows handed on at a time (CSV and JSONL).
BLOCK_ROWS = 8192
# Parquet: rows decoded at a time, and the buffer each column chunk is streamed through. pyarrow's
# defaults (pre-buffering a row group's whole column chunks, threads, 8,192-row batches) made memory
# follow the row-group size: 967 MB for a 1 GB file of pyarrow's default 1M-row groups, 173 MB
# with these (benchmarks, "Table jobs" in docs/performance.md). 4 MB streams keep a gigabyte to some
# 250 ranged GETs a column.
PARQUET_BATCH_ROWS = 1024
PARQUET_BUFFER = 4 << 20
FORMATS = ("csv", "tsv", "parquet", "jsonl")
# A data object's format by its name, gzip (".gz") taken off first.
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}
PARQUET_MAGIC = b"PAR1"
# A CSV field may be as long as a line may be (validation.DEFAULT_MAX_LINE); the csv module's default
# of 128 KB would refuse a long document in a cell.
csv.field_size_limit(32 * 1024 * 1024)


def arrow_pool() -> None:
    """Arrow's allocations from the C library's malloc, not the wheel's mimalloc, which keeps freed pages:
    the submit handler peaked at 232 MB against 255, the join at 210 against 263 on the same 96 MB table
    (benchmarks, "Table jobs" in docs/performance.md). Lambda's MALLOC_ARENA_MAX (blueprint) bounds it."""
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


class TableError(Exception):
    """The table cannot be read as the manifest says: which object, which row, and what to do."""


@dataclass(frozen=True)
class DataObject:
    key: str
    version_id: str | None
    etag: str | None
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "version_id": self.version_id, "etag": self.etag, "size": self.size}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DataObject:
        return cls(raw["key"], raw.get("version_id"), raw.get("etag"), int(raw["size"]))


class Objects(Protocol):
    """What a table job reads its data through."""

    def head(self, key: str) -> DataObject | None: ...

    def list(self, prefix: str) -> list[DataObject]: ...

    def chunks(self, obj: DataObject) -> Iterator[bytes]: ...

    def open(self, obj: DataObject) -> BinaryIO: ...

    def read(self, key: str) -> bytes | None: ...


def format_of(key: str, given: str | None) -> str:
    if given:
        return given
    name = key.lower().removesuffix(".gz")
    for suffix, fmt in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise TableError(
        f'cannot tell the format of {key!r} from its name: set the manifest\'s "format" to one of {", ".join(FORMATS)}'
    )


class BadRow(dict[str, Any]):
    """A row that could not be read into cells (a CSV line of the wrong width): no values, a message."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message


class Rows:
    """One data object's rows: `columns` (known once opened; for JSONL, those of its first record) and
    `blocks()`, lists of rows as dicts of the columns asked for (all of them when None)."""

    columns: list[str]

    def blocks(self, wanted: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        raise NotImplementedError

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows as Arrow record batches of every column, for the results table."""
        raise NotImplementedError


@dataclass(frozen=True)
class Bounds:
    """How far a gzipped object may inflate (Settings.max_inflated_bytes, max_gzip_ratio), as for a
    gzipped JSONL upload: a compression bomb is refused before it outlasts the invocation."""

    max_inflated: int | None = None
    max_ratio: int | None = None


def open_rows(
    objects: Objects, obj: DataObject, fmt: str, delimiter: str | None = None, bounds: Bounds = Bounds()
) -> Rows:
    if fmt == "parquet":
        return ParquetRows(objects, obj)
    if fmt == "jsonl":
        return JsonRows(objects, obj, bounds)
    return CsvRows(objects, obj, delimiter or ("\t" if fmt == "tsv" else ","), bounds)


def _text(objects: Objects, obj: DataObject, bounds: Bounds) -> Iterator[str]:
    """The object's text, inflated if gzipped, decoded as UTF-8 (a BOM dropped); bad bytes name the object."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    first = True
    done = 0
    try:
        for chunk in decompressed(objects.chunks(obj), bounds.max_inflated, bounds.max_ratio):
            if first:
                chunk = chunk.removeprefix(BOM)
                first = False
            yield decoder.decode(chunk)
            done += len(chunk)
        yield decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise TableError(
            f"{obj.key} is not UTF-8 text (bad byte near byte {done + exc.start} of its content): save it as UTF-8"
        ) from None
    except (EOFError, OSError, ValueError) as exc:
        raise TableError(f"{obj.key} cannot be read to its end: {exc}") from None


# A line and its end (\r\n, \r or \n), or the text after the last end. Not str.splitlines, which also
# breaks at \x0b, \x0c, \x1c-\x1e, \x85, U+2028 and U+2029: characters a CSV cell or a JSON string
# may hold, which neither the csv module nor JSON Lines take for a line's end.
_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")


class _TextStream:
    """Chunks of text as the lines csv.reader wants, a line at a time."""

    def __init__(self, parts: Iterator[str]) -> None:
        self._parts = parts
        self._buffer = ""

    def __iter__(self) -> Iterator[str]:
        for part in self._parts:
            self._buffer += part
            if "\n" not in self._buffer and "\r" not in self._buffer:
                continue
            lines = _LINE.findall(self._buffer)
            # The last piece may be a line cut off mid-way (or a CR whose LF comes next): kept back.
            self._buffer = lines.pop() if not lines[-1].endswith("\n") else ""
            yield from lines
        if self._buffer:
            yield self._buffer


class CsvRows(Rows):
    def __init__(self, objects: Objects, obj: DataObject, delimiter: str, bounds: Bounds = Bounds()) -> None:
        self.objects, self.obj, self.delimiter = objects, obj, delimiter
        self._reader = csv.reader(iter(_TextStream(_text(objects, obj, bounds))), delimiter=delimiter, strict=True)
        try:
            header = next(self._reader)
        except StopIteration:
            raise TableError(f"{obj.key} is empty: a CSV table starts with a header row naming its columns") from None
        except csv.Error as exc:
            raise TableError(f"{obj.key}, header row: {exc}") from None
        self.columns = [name.strip() for name in header]
        seen: set[str] = set()
        for i, name in enumerate(self.columns, start=1):
            if not name:
                raise TableError(f"{obj.key}, header row: column {i} has no name; name every column")
            if name in seen:
                raise TableError(f"{obj.key}, header row: column {name!r} appears twice; column names must differ")
            seen.add(name)

    def blocks(self, wanted: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        names = self.columns
        width = len(names)
        picks = (
            [(n, names.index(n)) for n in wanted] if wanted is not None else list(zip(names, range(width), strict=True))
        )
        block: list[dict[str, Any]] = []
        try:
            for cells in self._reader:
                if not cells:
                    continue  # a blank line is no row
                if len(cells) != width:
                    block.append(
                        BadRow(
                            f"{self.obj.key}, line {self._reader.line_num}: {len(cells)} fields where the header "
                            f"has {width}; quote fields that hold the delimiter {self.delimiter!r}"
                        )
                    )
                else:
                    block.append({n: cells[i] for n, i in picks})
                if len(block) >= BLOCK_ROWS:
                    yield block
                    block = []
        except csv.Error as exc:
            raise TableError(f"{self.obj.key}, line {self._reader.line_num}: {exc}") from None
        if block:
            yield block

    def batches(self) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        schema = pa.schema([(n, pa.string()) for n in self.columns])
        for block in self.blocks():
            # A bad row (no cells) is a row of nulls, so the results keep every row in its place.
            yield pa.RecordBatch.from_pylist(block, schema=schema)


class JsonRows(Rows):
    """JSON Lines of records: one object a line; a column is a key (a missing key is a null cell)."""

    def __init__(self, objects: Objects, obj: DataObject, bounds: Bounds = Bounds()) -> None:
        self.objects, self.obj = objects, obj
        self._lines = iter(_TextStream(_text(objects, obj, bounds)))
        self._number = 0
        self._first = self._next()
        self.columns = list(self._first) if self._first is not None else []

    def _next(self) -> dict[str, Any] | None:
        for line in self._lines:
            self._number += 1
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise TableError(f"{self.obj.key}, line {self._number}: not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise TableError(f"{self.obj.key}, line {self._number}: a record must be a JSON object")
            return record
        return None

    def records(self) -> Iterator[dict[str, Any]]:
        record = self._first
        while record is not None:
            yield record
            record = self._next()

    def blocks(self, wanted: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        block: list[dict[str, Any]] = []
        for record in self.records():
            block.append(record if wanted is None else {n: record[n] for n in wanted if n in record})
            if len(block) >= BLOCK_ROWS:
                yield block
                block = []
        if block:
            yield block


class ParquetRows(Rows):
    def __init__(self, objects: Objects, obj: DataObject) -> None:
        import pyarrow.parquet as pq

        arrow_pool()
        self.obj = obj
        self._file = objects.open(obj)
        try:
            self._parquet = pq.ParquetFile(self._file, pre_buffer=False, buffer_size=PARQUET_BUFFER)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...: all mean "not a Parquet file we can read"
            hint = " (Parquet compresses its own pages: upload it without gzip)" if obj.key.endswith(".gz") else ""
            raise TableError(f"{obj.key} is not a readable Parquet file: {exc}{hint}") from None
        self.schema = self._parquet.schema_arrow
        self.columns = list(self.schema.names)
        self.rows = self._parquet.metadata.num_rows

    def blocks(self, wanted: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        for batch in self._iter(list(wanted) if wanted is not None else None):
            yield batch.to_pylist()

    def batches(self) -> Iterator[pa.RecordBatch]:
        yield from self._iter(None)

    def _iter(self, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        try:
            # One row group at a time, its column chunks streamed (not pre-buffered), on this thread.
            for group in range(self._parquet.num_row_groups):
                yield from self._parquet.iter_batches(
                    batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=columns, use_threads=False
                )
        except Exception as exc:
            raise TableError(f"{self.obj.key} cannot be read: {exc}") from None


class LocalObjects:
    """A folder standing in for the bucket (`batchdrop validate`): keys are paths under it."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def head(self, key: str) -> DataObject | None:
        path = self._path(key)
        if not os.path.isfile(path):
            return None
        return DataObject(key, None, None, os.path.getsize(path))

    def list(self, prefix: str) -> list[DataObject]:
        base = self._path(prefix.rstrip("/"))
        found: list[DataObject] = []
        for folder, _, files in os.walk(base):
            for name in files:
                rel = os.path.relpath(os.path.join(folder, name), self.root).replace(os.sep, "/")
                obj = self.head(rel)
                if obj is not None:
                    found.append(obj)
        return sorted(found, key=lambda o: o.key)

    def chunks(self, obj: DataObject) -> Iterator[bytes]:
        with open(self._path(obj.key), "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    def open(self, obj: DataObject) -> BinaryIO:
        return open(self._path(obj.key), "rb")

    def read(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except OSError:
            return None
