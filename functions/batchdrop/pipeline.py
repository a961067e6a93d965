"""What the three functions share: their wiring, and the names of a job's things in S3."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from batchdrop.adapters.notify import Notifier
from batchdrop.adapters.objects import ObjectStore
from batchdrop.adapters.queue import JobQueue
from batchdrop.adapters.store import JobStore
from batchdrop.config import (
    ENV_SUBMIT_QUEUE_URL,
    INPUT_PREFIX,
    INPUT_SUFFIXES,
    OUTPUT_PREFIX,
    WORK_PREFIX,
    ConfigError,
    Settings,
)
from batchdrop.models import InputObject

if TYPE_CHECKING:
    from batchdrop.providers.base import Provider


@dataclass
class Deps:
    """Everything the logic talks to, injected so tests can hand in moto-backed pieces."""

    settings: Settings
    objects: ObjectStore
    store: JobStore
    notifier: Notifier
    queue: JobQueue
    # The submit function's own queue: a large file's next segment, a stalled submission handed back.
    segments: JobQueue
    # The real-time queue: a real-time batch's chunks, to the realtime function (None: not deployed with
    # one, and a real-time batch cannot be sent).
    realtime: JobQueue | None = None
    provider_factory: Callable[[str], Provider] | None = None
    clock: Callable[[], float] = time.time
    # Lets the chaos harness stop an invocation at a named step ("after_create", ...).
    checkpoint: Callable[[str], None] = lambda step: None
    _providers: dict[str, Provider] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Deps:
        if not settings.submit_queue_url:
            # Both stacks (CDK and local) set it: a large file is planned a segment per invocation through
            # it, and the poll hands a stalled submission back to the submit function through it.
            raise ConfigError(f"{ENV_SUBMIT_QUEUE_URL} is not set: the deployment (CDK stack or local stack) sets it")
        return cls(
            settings=settings,
            objects=ObjectStore(settings.bucket),
            store=JobStore(settings.table),
            notifier=Notifier(settings.topic_arn),
            queue=JobQueue(settings.completion_queue_url),
            segments=JobQueue(settings.submit_queue_url),
            realtime=JobQueue(settings.realtime_queue_url) if settings.realtime_queue_url else None,
        )

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            if self.provider_factory is not None:
                self._providers[name] = self.provider_factory(name)
            else:
                from batchdrop.providers import load

                self._providers[name] = load(self.settings.providers[name])
        return self._providers[name]


def job_id_for(obj: InputObject) -> str:
    """Stable for one object version, so the same upload delivered twice is one job."""
    basis = f"{obj.bucket}\n{obj.key}\n{obj.version_id or ''}\n{obj.etag or ''}"
    return "job-" + hashlib.sha256(basis.encode()).hexdigest()[:20]


# S3 keys are at most 1,024 bytes; the longest name we put under a job's prefix is a table job's.
MAX_KEY_BYTES = 1024
LONGEST_OUTPUT_NAME = "table/results.parquet"  # tables.join.table_key


def output_prefix(key: str, job_id: str) -> str:
    """outputs/<path under inputs/ without the extension>/<job_id>/ (the key is data, used verbatim).

    An input key so long that the output keys would pass S3's limit keeps its head and gets a short
    hash of the whole path in place of its tail, so the prefix stays unique and stable.
    """
    rest = key[len(INPUT_PREFIX) :] if key.startswith(INPUT_PREFIX) else key
    for suffix in INPUT_SUFFIXES:
        if rest.endswith(suffix):
            rest = rest[: -len(suffix)]
            break
    fixed = len(f"{OUTPUT_PREFIX}/{job_id}/{LONGEST_OUTPUT_NAME}".encode())
    room = MAX_KEY_BYTES - fixed
    if len(rest.encode()) > room:
        digest = "~" + hashlib.sha256(rest.encode()).hexdigest()[:12]
        head = rest.encode()[: room - len(digest)].decode("utf-8", errors="ignore")
        rest = head + digest
    return f"{OUTPUT_PREFIX}{rest}/{job_id}/"


def work_prefix(job_id: str) -> str:
    return f"{WORK_PREFIX}{job_id}/"


def batch_data_key(job_id: str, batch_key: str) -> str:
    return f"{work_prefix(job_id)}batches/{batch_key}.jsonl"


def batch_index_key(job_id: str, batch_key: str) -> str:
    return f"{work_prefix(job_id)}batches/{batch_key}.idx"


def answers_key(job_id: str, batch_key: str) -> str:
    """The answers the response cache gave the requests of a `cache` item (batchdrop.cache)."""
    return f"{work_prefix(job_id)}batches/{batch_key}.answers.jsonl"


def realtime_prefix(job_id: str, batch_key: str) -> str:
    """Where a real-time batch's chunks leave their answers: one file a chunk."""
    return f"{work_prefix(job_id)}realtime/{batch_key}/"


def replacement_prefix(batch_key: str) -> str:
    """The keys of an escalated batch's real-time batches (the rest it had not finished) start with this."""
    return f"{batch_key}-rt-"


def validation_errors_key(job_id: str, segment: int = 0) -> str:
    suffix = f"-s{segment:03d}" if segment else ""
    return f"{work_prefix(job_id)}validation-errors{suffix}.jsonl"


def ids_key(job_id: str, segment: int) -> str:
    """A segment's custom_ids, by hash bucket (batchdrop.dedup's export)."""
    return f"{work_prefix(job_id)}ids/s{segment:03d}.ids"


def refused_key(job_id: str, segment: int) -> str:
    """The line numbers a segment refused as too few for a provider's minimum (a JSON list)."""
    return f"{work_prefix(job_id)}ids/s{segment:03d}/too-small.json"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def invocation_id() -> str:
    return uuid.uuid4().hex
