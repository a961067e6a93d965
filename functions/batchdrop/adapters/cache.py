"""The response cache's table (docs/cache.md): one DynamoDB item per answer, keyed by the hash of its
request, with the answer inline (compressed) or, when large, in the bucket under cache/.

Every failure here is the caller's miss, never its error: a lookup that fails or is throttled past
botocore's retries returns what it found and counts the rest; a write that fails is counted and logged.
A job never fails because of its cache.
"""

from __future__ import annotations

import hashlib
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from aws_lambda_powertools import Logger

from batchdrop.adapters.aws import client
from batchdrop.adapters.objects import ObjectStore
from batchdrop.config import CACHE_OBJECT_PREFIX

logger = Logger(service="batchdrop")

# The item's partition key: the request's hash (batchdrop.cache.request_key).
KEY = "h"
TTL_ATTRIBUTE = "expires_at"
# BatchGetItem takes at most 100 keys, BatchWriteItem 25 items (DynamoDB's limits).
GET_KEYS = 100
PUT_ITEMS = 25
# An answer larger than this, compressed, goes to S3: DynamoDB bills a write per KB and an item is at most
# 400 KB, and S3's PUT ($5 a million) is cheaper than DynamoDB's ($1.25 a million write units) past 4 KB a
# write unit... at about 16 KB; reads flip later still. 32 KB keeps nearly every chat answer inline.
INLINE_BYTES = 32 * 1024
# Lookups run this many BatchGetItem calls at once (botocore's pool holds 10 connections).
WORKERS = 8
# Past botocore's own retries, how many times keys DynamoDB left unprocessed (throttled) are asked again.
UNPROCESSED_TRIES = 3
FORMAT = 1


@dataclass
class Entry:
    """A cached answer: the provider's response body, and the lane that answered it first."""

    response: dict[str, Any]
    lane: str
    model: str


@dataclass
class CacheStats:
    """What a job's cache did; summary.json's `cache` reports them."""

    looked_up: int = 0
    hits: int = 0
    misses: int = 0
    # Lookups that failed (an error, or throttled past the retries): sent, as misses.
    errors: int = 0
    # Entries found but unreadable (corrupt, or their object gone): sent, as misses.
    poisoned: int = 0
    written: int = 0
    write_errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("hits", "misses", "errors", "poisoned", "written", "write_errors")}


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class ResponseCache:
    """Lookups and writes against the cache table. `checkpoint` lets the chaos harness fail a call."""

    def __init__(
        self,
        table: str,
        objects: ObjectStore | None,
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
        checkpoint: Callable[[str], None] = lambda step: None,
        workers: int = WORKERS,
        ddb: Any = None,
    ) -> None:
        self.table = table
        self.objects = objects
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.checkpoint = checkpoint
        self.workers = workers
        self.stats = CacheStats()
        self.ddb = ddb if ddb is not None else client("dynamodb")

    # -- reading -------------------------------------------------------------------------------------

    def lookup(self, keys: Iterable[str]) -> dict[str, Entry]:
        """The entries found for `keys` (each looked up once), BatchGetItem calls run side by side."""
        unique = list(dict.fromkeys(keys))
        self.stats.add(looked_up=len(unique))
        if not unique:
            return {}
        calls = [unique[i : i + GET_KEYS] for i in range(0, len(unique), GET_KEYS)]
        found: dict[str, Entry] = {}
        if len(calls) == 1 or self.workers <= 1:
            parts = [self._get(c) for c in calls]
        else:
            with ThreadPoolExecutor(min(self.workers, len(calls))) as pool:
                parts = list(pool.map(self._get, calls))
        for part in parts:
            found.update(part)
        self.stats.add(hits=len(found), misses=len(unique) - len(found))
        return found

    def count(self, keys: Iterable[str]) -> int:
        """How many of `keys` have an entry not past its TTL, reading only the keys and TTLs (for
        `batchdrop validate`: the answers themselves are not read). Errors propagate: the caller says
        the count could not be made."""
        unique = list(dict.fromkeys(keys))
        found = 0
        now = self.clock()
        for i in range(0, len(unique), GET_KEYS):
            wanted: list[dict[str, Any]] = [{KEY: {"S": k}} for k in unique[i : i + GET_KEYS]]
            for attempt in range(UNPROCESSED_TRIES + 1):
                answer = self.ddb.batch_get_item(
                    RequestItems={
                        self.table: {
                            "Keys": wanted,
                            "ProjectionExpression": "#k, #t",
                            "ExpressionAttributeNames": {"#k": KEY, "#t": TTL_ATTRIBUTE},
                        }
                    }
                )
                items = answer.get("Responses", {}).get(self.table, [])
                found += sum(1 for item in items if float(item[TTL_ATTRIBUTE]["N"]) > now)
                wanted = answer.get("UnprocessedKeys", {}).get(self.table, {}).get("Keys", [])
                if not wanted:
                    break
                time.sleep(0.05 * 2**attempt)
            if wanted:
                raise RuntimeError(f"the cache table left {len(wanted)} lookups unanswered (throttled)")
        return found

    def _get(self, keys: Sequence[str]) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        wanted: list[dict[str, Any]] = [{KEY: {"S": k}} for k in keys]
        try:
            self.checkpoint("cache_lookup")
            for attempt in range(UNPROCESSED_TRIES + 1):
                answer = self.ddb.batch_get_item(RequestItems={self.table: {"Keys": wanted}})
                for item in answer.get("Responses", {}).get(self.table, []):
                    entry = self._entry(item)
                    if entry is not None:
                        found[item[KEY]["S"]] = entry
                wanted = answer.get("UnprocessedKeys", {}).get(self.table, {}).get("Keys", [])
                if not wanted:
                    break
                if attempt < UNPROCESSED_TRIES:
                    time.sleep(0.05 * 2**attempt)
            if wanted:
                self.stats.add(errors=len(wanted))
                logger.warning("cache lookups throttled: sent as misses", extra={"keys": len(wanted)})
        except Exception as exc:
            # Whatever was not read is sent: a cache that cannot answer costs money, never the job.
            missing = len(keys) - len(found)
            self.stats.add(errors=missing)
            logger.warning(
                "cache lookup failed: sent as misses",
                extra={"keys": missing, "error": f"{type(exc).__name__}: {exc}"[:300]},
            )
        return found

    def _entry(self, item: dict[str, Any]) -> Entry | None:
        """The entry of an item, or None (counted, logged) when it cannot be trusted or read."""
        key = item.get(KEY, {}).get("S", "?")
        try:
            expires = float(item[TTL_ATTRIBUTE]["N"])
            if expires <= self.clock():
                # DynamoDB deletes expired items within days, not at once: past its TTL it is gone to us.
                return None
            if "object" in item:
                if self.objects is None:
                    raise ValueError("its answer is in the bucket, which this reader was not given")
                packed = self.objects.get_bytes(item["object"]["S"])
                if packed is None:
                    raise ValueError("its object is gone")
                raw = zlib.decompress(packed)
            else:
                raw = zlib.decompress(item["body"]["B"])
            if _digest(raw) != item["digest"]["S"]:
                raise ValueError("the answer does not match its digest")
            response = orjson.loads(raw)
            if not isinstance(response, dict):
                raise ValueError("the answer is not a JSON object")
            return Entry(response, item["lane"]["S"], item.get("model", {}).get("S", ""))
        except Exception as exc:
            self.stats.add(poisoned=1)
            logger.warning(
                "unreadable cache entry: sent as a miss",
                extra={"cache_key": key, "error": f"{type(exc).__name__}: {exc}"[:300]},
            )
            return None

    # -- writing -------------------------------------------------------------------------------------

    def item(self, key: str, provider: str, model: str, lane: str, response: dict[str, Any]) -> dict[str, Any]:
        """The table item of an answer; a large one's body goes to the bucket first."""
        raw = orjson.dumps(response)
        packed = zlib.compress(raw, 6)
        now = self.clock()
        item: dict[str, Any] = {
            KEY: {"S": key},
            "format": {"N": str(FORMAT)},
            "provider": {"S": provider},
            "model": {"S": model},
            "lane": {"S": lane},
            "digest": {"S": _digest(raw)},
            "created_at": {"N": str(int(now))},
            TTL_ATTRIBUTE: {"N": str(int(now + self.ttl_seconds))},
        }
        if len(packed) > INLINE_BYTES:
            if self.objects is None:
                raise ValueError("a large answer goes to the bucket, which this writer was not given")
            name = f"{CACHE_OBJECT_PREFIX}{key[:2]}/{key}.json.zz"
            self.objects.put_bytes(name, packed, "application/octet-stream")
            item["object"] = {"S": name}
        else:
            item["body"] = {"B": packed}
        return item

    def put(self, items: Sequence[dict[str, Any]]) -> None:
        """Write items (up to 25, keys distinct); failures are counted and logged, never raised."""
        requests = [{"PutRequest": {"Item": i}} for i in items]
        try:
            self.checkpoint("cache_write")
            for attempt in range(UNPROCESSED_TRIES + 1):
                answer = self.ddb.batch_write_item(RequestItems={self.table: requests})
                requests = answer.get("UnprocessedItems", {}).get(self.table, [])
                if not requests:
                    break
                if attempt < UNPROCESSED_TRIES:
                    time.sleep(0.05 * 2**attempt)
            self.stats.add(written=len(items) - len(requests), write_errors=len(requests))
            if requests:
                logger.warning("cache writes throttled: not cached", extra={"items": len(requests)})
        except Exception as exc:
            self.stats.add(write_errors=len(items))
            logger.warning(
                "cache write failed: not cached",
                extra={"items": len(items), "error": f"{type(exc).__name__}: {exc}"[:300]},
            )
