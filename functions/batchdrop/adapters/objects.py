"""S3: reading uploads as a stream of chunks, writing outputs and work files."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from boto3.s3.transfer import TransferConfig

from batchdrop.adapters.aws import client
from batchdrop.models import InputObject

# Multipart above 16 MB, in 16 MB parts, four at a time: s3transfer holds a part in memory per thread
# (its default ten would be 160 MB in flight), so an upload stays within 64 MB whatever the file size.
# A download queues what its threads have read for the one thread that writes to disk: 16 pieces of
# 256 KB, not the default 100, which filled up (25 MB) whenever S3 was faster than /tmp.
TRANSFER = TransferConfig(
    multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4, max_io_queue=16
)
READ_CHUNK = 1 << 20


class ObjectMissing(Exception):
    pass


@dataclass
class ObjectStore:
    bucket: str
    s3: Any = None

    def __post_init__(self) -> None:
        if self.s3 is None:
            self.s3 = client("s3")

    def head(self, key: str, version_id: str | None = None) -> InputObject:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            head = self.s3.head_object(**kwargs)
        except self.s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise ObjectMissing(key) from None
            raise
        return InputObject(
            bucket=self.bucket,
            key=key,
            version_id=head.get("VersionId") or version_id,
            etag=(head.get("ETag") or "").strip('"') or None,
            size=head.get("ContentLength"),
            # The user's per-file options (x-amz-meta-batchdrop-*), which S3 gives back without the prefix.
            metadata={str(k).lower(): str(v) for k, v in (head.get("Metadata") or {}).items()},
            uploaded_at=head["LastModified"].timestamp() if head.get("LastModified") else None,
        )

    def chunks(self, key: str, version_id: str | None = None, start: int = 0) -> Iterator[bytes]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        if start:
            kwargs["Range"] = f"bytes={start}-"
        try:
            body = self.s3.get_object(**kwargs)["Body"]
        except self.s3.exceptions.NoSuchKey:
            raise ObjectMissing(key) from None
        try:
            yield from body.iter_chunks(READ_CHUNK)
        finally:
            body.close()

    def lines(self, key: str) -> Iterator[bytes]:
        """The lines of one of our own JSONL work files (written by us, so plain and well formed)."""
        rest = b""
        for chunk in self.chunks(key):
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            yield from (p for p in parts if p)
        if rest:
            yield rest

    def upload_file(
        self,
        path: str,
        key: str,
        content_type: str = "application/x-ndjson",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        extra: dict[str, Any] = {"ContentType": content_type}
        if metadata:
            extra["Metadata"] = dict(metadata)
        self.s3.upload_file(path, self.bucket, key, ExtraArgs=extra, Config=TRANSFER)

    def put_json(self, key: str, value: Any) -> None:
        self.s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=orjson.dumps(value, option=orjson.OPT_INDENT_2),
            ContentType="application/json",
        )

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """The bytes [start, end) of an object."""
        data: bytes = self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"].read()
        return data

    def get_bytes(self, key: str) -> bytes | None:
        """A small object of ours whole, or None when there is none."""
        try:
            data: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return data

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/x-ndjson") -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/x-ndjson") -> bool:
        """Write an object only if there is none at `key` (S3's conditional write, If-None-Match: *);
        False when one was there first, and it is left as it was."""
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, IfNoneMatch="*")
        except self.s3.exceptions.ClientError as exc:
            # 412 when an object is there; 409 when a write to the same key is still under way.
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def keys(self, prefix: str) -> Iterator[str]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def download(self, key: str, path: str) -> None:
        self.s3.download_file(self.bucket, key, path, Config=TRANSFER)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"
