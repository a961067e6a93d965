"""Azure OpenAI global batch through the official SDK's AzureOpenAI client.

The API is OpenAI's (Files and Batches under <endpoint>/openai/, with an api-version); `body.model`
names a deployment. Whether Azure keeps batch metadata is not documented clearly, so an orphan is not
looked for by tag: creates are serialised like Anthropic's and matched by time and request count,
with our metadata used when it is there.

Where Azure differs from OpenAI (MicrosoftDocs azure-ai-docs, batch-python.md and batch.md): an
uploaded file must be `processed` before a batch is made of it, so `create` waits for it, within a
bound, and past the bound raises `FileNotReady` (the batch is held and `create` tried again later,
reusing the file); a resource holds 500 files without an expiry, 10,000 with one, so every file is
given one; a batch over the enqueued-token quota is refused at create (`over_quota`, inherited).
"""

from __future__ import annotations

import time

import openai

from batchdrop.adapters.secrets import api_key
from batchdrop.providers.base import BatchRef
from batchdrop.providers.openai.client import META_BATCH, META_JOB, SKEW_SECONDS, OpenAIProvider, created_at, over_quota

DEFAULT_API_VERSION = "2024-10-21"
# Azure's range is 1209600 to 2592000 seconds (14 to 30 days); the longest leaves the most time to
# read a batch that ran long, and the files still go long before a stack reaches the cap, as
# `cleanup` deletes them once the outputs are written.
EXPIRES_AFTER = {"anchor": "created_at", "seconds": 2_592_000}
# File statuses after which the file will never be `processed` (Azure: error, deleting, deleted).
DEAD_FILE = frozenset({"error", "deleting", "deleted"})


class FileNotReady(Exception):
    """The batch's input file was still being imported when the wait ran out: "not now"."""


class AzureOpenAIProvider(OpenAIProvider):
    name = "azure"
    tags_batches = False
    # How long `create` waits for an uploaded file to be `processed`, and the first and longest pause
    # between looks (doubling): a Lambda's create stays short, and a file that takes longer is picked
    # up by the next attempt.
    file_wait_seconds = 20.0
    file_poll_first = 0.25
    file_poll_max = 4.0

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = openai.AzureOpenAI(
                azure_endpoint=self.settings.base_url or "",
                api_version=self.settings.api_version or DEFAULT_API_VERSION,
                api_key=api_key(self.settings.secret_arn, "AZURE_OPENAI_API_KEY"),
                max_retries=6,
                timeout=120,
            )
        return self._client

    def create(self, batch: BatchRef, path: str) -> str:
        endpoint = batch.group.split(" ", 1)[0]
        filename = f"{batch.job_id}-{batch.key}.jsonl"
        file = self._uploaded(filename)
        if file is None:
            with open(path, "rb") as f:
                file = self.client.files.create(
                    file=(filename, f),
                    purpose="batch",
                    expires_after=EXPIRES_AFTER,  # type: ignore[arg-type]
                )
        self._wait_processed(file)
        # Sent once (see OpenAIProvider.create).
        created = self.client.with_options(max_retries=0).batches.create(
            input_file_id=file.id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            metadata={META_JOB: batch.job_id, META_BATCH: batch.key},
            output_expires_after=EXPIRES_AFTER,  # type: ignore[arg-type]
        )
        return created.id

    def over_quota(self, exc: Exception) -> bool:
        return isinstance(exc, FileNotReady) or super().over_quota(exc)

    def _uploaded(self, filename: str) -> openai.types.FileObject | None:
        """The file an earlier attempt uploaded for this batch (named for our job and batch key), if
        it is still usable: a held batch is created again without a second upload."""
        for file in self.client.files.list(purpose="batch"):
            if file.filename == filename and file.status not in DEAD_FILE:
                return file
        return None

    def _wait_processed(self, file: openai.types.FileObject) -> None:
        deadline = time.monotonic() + self.file_wait_seconds
        pause = self.file_poll_first
        while file.status != "processed":
            if file.status in DEAD_FILE:
                raise ValueError(f"Azure could not import the batch file {file.id}: {file.status_details}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise FileNotReady(f"the batch file {file.id} is still {file.status!r}: the batch is tried again later")
            time.sleep(min(pause, left))
            pause = min(pause * 2, self.file_poll_max)
            file = self.client.files.retrieve(file.id)

    def find(self, batch: BatchRef, exclude: frozenset[str]) -> str | None:
        for candidate in self.client.batches.list(limit=100):
            created = created_at(candidate.created_at)
            if created < batch.intent_at - SKEW_SECONDS:
                return None
            # Azure's regions that queue rather than fail fast end a batch over the quota failed with
            # token_limit_exceeded (Microsoft Q&A 2285577): that one is created again, never adopted.
            if candidate.id in exclude or over_quota(candidate):
                continue
            meta = candidate.metadata or {}
            if meta:
                if meta.get(META_JOB) == batch.job_id and meta.get(META_BATCH) == batch.key:
                    return candidate.id
                continue
            counts = candidate.request_counts
            if counts is not None and counts.total == batch.requests and created >= batch.intent_at - 5:
                return candidate.id
        return None
