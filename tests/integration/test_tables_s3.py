"""A table job's data read from S3 (tables/s3.py) against moto's server over HTTP: Parquet through ranged
GETs of one pinned object version, a few requests a row group and only the columns asked for; a
prefix's objects listed and pinned, markers and empty objects left out; and the join reading back the
very versions that were rendered, after the keys were overwritten."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import boto3
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchdrop.adapters.objects import ObjectStore
from batchdrop.outputs import result_line
from batchdrop.pricing import price_table
from batchdrop.tables.job import open_job
from batchdrop.tables.join import write_table
from batchdrop.tables.s3 import READ_AHEAD, S3Objects
from batchdrop.tables.sources import DataObject, ParquetRows

ROWS = 20_000
GROUP = 5_000


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    """A versioned bucket of its own (moto's server is shared by the session's tests)."""
    bucket = f"tables-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return ObjectStore(bucket, s3=s3)


class Gets:
    """Every GetObject the client sends, with its parameters (botocore's own event hook)."""

    def __init__(self, s3: Any) -> None:
        self.calls: list[dict[str, Any]] = []
        s3.meta.events.register("before-parameter-build.s3.GetObject", self._seen)

    def _seen(self, params: dict[str, Any], **_: Any) -> None:
        self.calls.append(dict(params))

    def take(self) -> list[dict[str, Any]]:
        calls, self.calls = self.calls, []
        return calls


def ranged_bytes(calls: list[dict[str, Any]]) -> int:
    total = 0
    for call in calls:
        start, end = call["Range"].removeprefix("bytes=").split("-")
        total += int(end) - int(start) + 1
    return total


def parquet(table: pa.Table, group: int) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=group, compression="none")
    return sink.getvalue()


def wide_table(rows: int, tag: str) -> pa.Table:
    # `blob` is most of the file: reading it when it was not asked for shows in the bytes fetched
    return pa.table(
        {
            "id": pa.array(range(rows), type=pa.int64()),
            "text": [f"{tag} {i}" for i in range(rows)],
            "blob": ["x" * 200 + str(i) for i in range(rows)],
            "score": [i / 4 for i in range(rows)],
        }
    )


def put(store: ObjectStore, key: str, data: bytes) -> str:
    version: str = store.s3.put_object(Bucket=store.bucket, Key=key, Body=data)["VersionId"]
    return version


def test_parquet_is_read_from_its_pinned_version_a_few_ranged_gets_a_row_group(s3: Any, store: ObjectStore) -> None:
    key = "data/wide.parquet"
    first = parquet(wide_table(ROWS, "first"), GROUP)
    version = put(store, key, first)
    # The key is overwritten after the job pinned it: the reader must still read the first version
    put(store, key, parquet(wide_table(10, "second"), 10))
    objects = S3Objects(store)
    pinned = DataObject(key, version, None, len(first))
    gets = Gets(s3)

    rows = ParquetRows(objects, pinned)
    opening = gets.take()
    assert rows.rows == ROWS
    assert rows.columns == ["id", "text", "blob", "score"]
    assert 1 <= len(opening) <= 2  # the footer (and its length), with the read-ahead

    blocks = list(rows.blocks(["id", "text"]))
    reading = gets.take()
    flat = [r for b in blocks for r in b]
    assert len(flat) == ROWS
    assert flat[0] == {"id": 0, "text": "first 0"}
    assert flat[12_345] == {"id": 12_345, "text": "first 12345"}
    assert all(set(r) == {"id", "text"} for r in flat)
    groups = ROWS // GROUP
    # At most one GET per wanted column chunk of each row group...
    assert len(reading) <= 2 * groups, [c["Range"] for c in reading]
    # ...every one ranged and pinned to the version the job saw...
    for call in opening + reading:
        assert call["VersionId"] == version
        assert call["Range"].startswith("bytes=")
    # ...and only the wanted columns fetched: not `blob`, most of the file
    assert ranged_bytes(reading) < len(first) / 2

    # All the columns, for the results table: still bounded, still the pinned version
    batches = list(rows.batches())
    whole = gets.take()
    assert sum(b.num_rows for b in batches) == ROWS
    assert pa.Table.from_batches(batches).column("blob").to_pylist()[-1] == "x" * 200 + str(ROWS - 1)
    assert len(whole) <= 4 * groups + len(first) // READ_AHEAD
    assert all(call["VersionId"] == version for call in whole)


def test_range_file_reads_seeks_and_stops_at_the_end(s3: Any, store: ObjectStore) -> None:
    data = bytes(range(256)) * 40
    version = put(store, "data/raw.bin", data)
    put(store, "data/raw.bin", b"overwritten")
    f = S3Objects(store).open(DataObject("data/raw.bin", version, None, len(data)))
    assert f.read(4) == data[:4]
    f.seek(-10, io.SEEK_END)
    assert f.read() == data[-10:]
    assert f.read(5) == b""
    f.seek(5000)
    assert f.tell() == 5000
    assert f.read(300) == data[5000:5300]


def test_list_and_head_pin_each_objects_version(store: ObjectStore) -> None:
    old = put(store, "data/parts/a.csv", b"id\n1\n")
    new = put(store, "data/parts/a.csv", b"id\n1\n2\n")
    put(store, "data/parts/b.csv", b"id\n3\n")
    put(store, "data/other.csv", b"id\n4\n")
    objects = S3Objects(store)
    listed = objects.list("data/parts/")
    assert [o.key for o in listed] == ["data/parts/a.csv", "data/parts/b.csv"]
    assert listed[0].version_id == new != old
    assert listed[0].size == len(b"id\n1\n2\n")
    assert listed[0].etag
    assert objects.head("data/parts/missing.csv") is None
    assert objects.read("data/other.csv") == b"id\n4\n"
    assert objects.read("data/nothing.csv") is None


def test_a_prefix_job_skips_markers_hidden_and_empty_objects(store: ObjectStore) -> None:
    put(store, "data/parts/", b"")  # a console "folder"
    put(store, "data/parts/part-0001.csv", b"id,text\n1,a\n")
    put(store, "data/parts/_SUCCESS", b"")
    put(store, "data/parts/_committed_123", b"{}")
    put(store, "data/parts/.part-0001.csv.crc", b"crc")
    put(store, "data/parts/empty.csv", b"")
    put(store, "data/parts/sub/part-0002.csv", b"id,text\n2,b\n")
    manifest = orjson.dumps({"data": "data/parts/", "model": "gpt-4o-mini", "user": "{{ text }}"})
    job = open_job(S3Objects(store), "inputs/p.job.json", manifest)
    assert [o.key for o in job.objects] == ["data/parts/part-0001.csv", "data/parts/sub/part-0002.csv"]
    assert all(o.version_id for o in job.objects)
    lines = [orjson.loads(line) for line in b"".join(job.chunks(lambda invalid: None)).splitlines()]
    assert [line["messages"][0]["content"] for line in lines] == ["a", "b"]


def test_the_join_reads_the_versions_that_were_rendered(tmp_path: Path, store: ObjectStore) -> None:
    # Submission renders and pins; the user then overwrites the data; completion joins onto what was sent
    put(store, "data/t.parquet", parquet(pa.table({"id": ["a", "b", "c"], "text": ["x", "y", "z"]}), 2))
    manifest = orjson.dumps({"data": "data/t.parquet", "model": "gpt-4o-mini", "user": "{{ text }}", "id_column": "id"})
    job = open_job(S3Objects(store), "inputs/t.job.json", manifest)
    lines = b"".join(job.chunks(lambda invalid: None)).splitlines()
    assert len(lines) == 3
    described = orjson.loads(orjson.dumps(job.to_json()))
    put(store, "data/t.parquet", parquet(pa.table({"id": ["q"], "text": ["changed"]}), 1))

    results = tmp_path / "results.jsonl"
    body = {
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    results.write_bytes(
        b"".join(
            orjson.dumps(result_line(cid, n, "openai", "gpt-4o-mini", "batch_1", body)[0]) + b"\n"
            for n, cid in ((3, "c"), (1, "a"), (2, "b"))
        )
    )
    errors = tmp_path / "errors.jsonl"
    errors.write_bytes(b"")
    out = tmp_path / "results.parquet"
    output = write_table(
        S3Objects(store), described, str(results), str(errors), str(out), price_table({}), tmpdir=str(tmp_path)
    )
    assert (output.rows, output.missing) == (3, 0)
    rows = pq.read_table(out).to_pylist()
    assert [(r["id"], r["text"], r["custom_id"], r["status"]) for r in rows] == [
        ("a", "x", "a", "succeeded"),
        ("b", "y", "b", "succeeded"),
        ("c", "z", "c", "succeeded"),
    ]
