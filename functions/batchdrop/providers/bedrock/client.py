"""Amazon Bedrock batch inference: records in our bucket, a model invocation job, output read from S3.

Bedrock takes a batch as a JSONL file in S3 and writes its answers back to S3, so the batch's whole
life is in our bucket under ``work/<job_id>/bedrock/<batch key>/``: ``records.jsonl`` (the input),
``ids.txt`` (our custom_ids, one per record, in order) and ``out/`` (Bedrock's output).

Record ids. Bedrock documents ``recordId`` as an 11-character alphanumeric string; our custom_ids are
up to 64 characters of ``[A-Za-z0-9_-]``. So each record is sent as ``R`` + its position (10 digits),
and ``ids.txt`` maps positions back to custom_ids when the output is read.

Creates are idempotent: the job name and the ``clientRequestToken`` are derived from the job id and the
batch key, so a retried create returns the job Bedrock already has, and `find` recognises an orphan by
its name.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterator
from typing import Any

import orjson

from batchdrop import models as m
from batchdrop.adapters import aws
from batchdrop.config import WORK_PREFIX, ProviderSettings
from batchdrop.pipeline import work_prefix
from batchdrop.providers.base import BUILD_ERRORS, BatchRef

STATES = {
    "Submitted": m.VALIDATING,
    "Validating": m.VALIDATING,
    "Scheduled": m.VALIDATING,
    "InProgress": m.IN_PROGRESS,
    "Completed": m.COMPLETED,
    # Bedrock: "Not all of your records could be processed in time": the job hit its timeout while
    # running. Its records without an output line ran out of time, so they count as expired (the
    # caller gives the unanswered requests of an expired batch the retryable code `expired`).
    "PartiallyCompleted": m.BATCH_EXPIRED,
    "Failed": m.FAILED,
    "Stopping": m.CANCELLING,
    "Stopped": m.BATCH_CANCELED,
    "Expired": m.BATCH_EXPIRED,
}
REFUSED_CODES = frozenset({"ValidationException", "ResourceNotFoundException"})
# "Not now": the model's in-progress jobs are at the account's quota, or the control plane throttles
# (botocore's model for CreateModelInvocationJob: both say "Resubmit your request later").
OVER_QUOTA_CODES = frozenset({"ServiceQuotaExceededException", "ThrottlingException"})
# Bedrock reports zero records until it has validated the input: those zeros are not counts.
UNCOUNTED = frozenset({"Submitted", "Validating"})
TAG_JOB = "batchdrop:job"
TAG_BATCH = "batchdrop:batch"
# CreateModelInvocationJob's timeoutDurationInHours: 24 to 168 in botocore's model
# (ModelInvocationJobTimeoutDurationInHours), 24 when it is not given (the Bedrock user guide).
MIN_TIMEOUT_HOURS, MAX_TIMEOUT_HOURS = 24, 168


def timeout_hours(window_hours: float) -> int:
    """Our window as Bedrock's timeout: whole hours, rounded up so that Bedrock never stops a job
    before we would, within Bedrock's range."""
    return min(MAX_TIMEOUT_HOURS, max(MIN_TIMEOUT_HOURS, math.ceil(window_hours)))


RECORD_PREFIX = "R"
MANIFEST = "manifest.json.out"
_CHUNK = 1 << 20


def job_name(batch: BatchRef) -> str:
    """A name unique to the batch, within Bedrock's pattern and 63 characters."""
    return "batchdrop-" + _digest("name", batch)[:32]


def request_token(batch: BatchRef) -> str:
    return _digest("token", batch)[:48]


def record_id(position: int) -> str:
    return f"{RECORD_PREFIX}{position:010d}"


def _digest(kind: str, batch: BatchRef) -> str:
    return hashlib.sha256(f"{kind}\n{batch.job_id}\n{batch.key}".encode()).hexdigest()


class BedrockProvider:
    name = "bedrock"
    # Jobs carry a name (and tags) derived from our job id and batch key, and creates are idempotent
    # through clientRequestToken: an orphan is found by its name.
    tags_batches = True

    def __init__(self, settings: ProviderSettings, bedrock: Any = None, s3: Any = None) -> None:
        self.settings = settings
        self._bedrock = bedrock
        self._s3 = s3

    @property
    def bedrock(self) -> Any:
        # boto3 finds the endpoint itself (AWS_ENDPOINT_URL_BEDROCK: the emulator locally).
        if self._bedrock is None:
            self._bedrock = aws.client("bedrock")
        return self._bedrock

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = aws.client("s3")
        return self._s3

    def _bucket(self) -> str:
        if not self.settings.bucket:
            raise ValueError("Bedrock needs the bucket its job input and output live in (BATCHDROP_BUCKET)")
        return self.settings.bucket

    def _prefix(self, batch: BatchRef) -> str:
        return f"{work_prefix(batch.job_id)}bedrock/{batch.key}/"

    def create(self, batch: BatchRef, path: str) -> str:
        if not self.settings.role_arn:
            raise ValueError("Bedrock jobs run as a service role: BATCHDROP_BEDROCK_ROLE_ARN is not set")
        bucket = self._bucket()
        prefix = self._prefix(batch)
        ids: list[str] = []
        # Streamed: the file may be ~190 MB; the upload reads the rewritten lines part by part.
        with open(path, "rb") as source:
            self.s3.upload_fileobj(_RecordIdRewriter(source, ids), bucket, f"{prefix}records.jsonl")
        self.s3.put_object(
            Bucket=bucket,
            Key=f"{prefix}ids.txt",
            Body="".join(f"{custom_id}\n" for custom_id in ids).encode(),
            ContentType="text/plain",
        )
        created = self.bedrock.create_model_invocation_job(
            jobName=job_name(batch),
            roleArn=self.settings.role_arn,
            clientRequestToken=request_token(batch),
            modelId=batch.model,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/{prefix}records.jsonl"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/{prefix}out/"}},
            timeoutDurationInHours=timeout_hours(self.settings.window_hours),
            tags=[{"key": TAG_JOB, "value": batch.job_id}, {"key": TAG_BATCH, "value": batch.key}],
        )
        return str(created["jobArn"])

    def refused(self, exc: Exception) -> bool:
        from botocore.exceptions import ClientError, ParamValidationError

        if isinstance(exc, ClientError):
            # botocore's service model for CreateModelInvocationJob: ValidationException (a model id or
            # input Bedrock will not take) and ResourceNotFoundException are the request's fault;
            # ThrottlingException, ServiceQuotaExceededException, InternalServerException pass.
            return exc.response.get("Error", {}).get("Code") in REFUSED_CODES
        # botocore checks parameters against the model (e.g. modelId's pattern) before sending.
        return isinstance(exc, (ParamValidationError, *BUILD_ERRORS))

    def over_quota(self, exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in OVER_QUOTA_CODES

    def cleanup(self, batch_id: str, status: m.BatchStatus) -> None:
        """Delete the batch's records under work/: the input and ids we wrote and the output Bedrock
        wrote, all under the batch's prefix (the folder of its input)."""
        input_uri = status.raw.get("input_uri") or self.status(batch_id).raw["input_uri"]
        bucket, key = _split(input_uri)
        prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        if not prefix.startswith(WORK_PREFIX):
            raise ValueError(f"not one of our batch prefixes: s3://{bucket}/{prefix}")
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})

    def find(self, batch: BatchRef, exclude: frozenset[str]) -> str | None:
        name = job_name(batch)
        paginator = self.bedrock.get_paginator("list_model_invocation_jobs")
        for page in paginator.paginate(nameContains=name):
            for summary in page.get("invocationJobSummaries", []):
                if summary.get("jobName") == name and summary["jobArn"] not in exclude:
                    return str(summary["jobArn"])
        return None

    def status(self, batch_id: str) -> m.BatchStatus:
        job = self.bedrock.get_model_invocation_job(jobIdentifier=batch_id)
        provider_status = str(job.get("status") or "Submitted")
        counted = provider_status not in UNCOUNTED and "totalRecordCount" in job
        return m.BatchStatus(
            state=STATES.get(provider_status, m.IN_PROGRESS),
            provider_status=provider_status,
            total=job.get("totalRecordCount") if counted else None,
            done=job.get("processedRecordCount") if counted else None,
            failed=job.get("errorRecordCount") if counted else None,
            error=job.get("message") if provider_status == "Failed" else None,
            raw={
                "input_uri": job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"],
                "output_uri": job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"],
            },
        )

    def outcomes(self, batch_id: str, status: m.BatchStatus) -> Iterator[m.Outcome]:
        input_uri = status.raw.get("input_uri")
        output_uri = status.raw.get("output_uri")
        if not input_uri or not output_uri:
            status = self.status(batch_id)
            input_uri, output_uri = status.raw["input_uri"], status.raw["output_uri"]
        ids = self._ids(input_uri)
        bucket, prefix = _split(output_uri)
        prefix = f"{prefix.rstrip('/')}/" if prefix.strip("/") else ""
        prefix += batch_id.rsplit("/", 1)[-1] + "/"
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if not key.endswith(".out") or key.rsplit("/", 1)[-1] == MANIFEST:
                    continue
                for raw in self._lines(bucket, key):
                    yield _outcome(orjson.loads(raw), ids)

    def cancel(self, batch_id: str) -> None:
        self.bedrock.stop_model_invocation_job(jobIdentifier=batch_id)

    def _ids(self, input_uri: str) -> list[str]:
        """The custom_ids of the records, by position (ids.txt next to the records)."""
        bucket, key = _split(input_uri)
        ids_key = (key.rsplit("/", 1)[0] + "/" if "/" in key else "") + "ids.txt"
        return [line.decode() for line in self._lines(bucket, ids_key)]

    def _lines(self, bucket: str, key: str) -> Iterator[bytes]:
        # Streamed: an output object can be as large as its input.
        body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            rest = b""
            for chunk in body.iter_chunks(_CHUNK):
                parts = (rest + chunk).split(b"\n")
                rest = parts.pop()
                yield from (p for p in parts if p.strip())
            if rest.strip():
                yield rest
        finally:
            body.close()


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _outcome(line: dict[str, Any], ids: list[str]) -> m.Outcome:
    record = str(line.get("recordId"))
    custom_id = record
    if record.startswith(RECORD_PREFIX) and record[len(RECORD_PREFIX) :].isdigit():
        position = int(record[len(RECORD_PREFIX) :])
        if position < len(ids):
            custom_id = ids[position]
    # Otherwise not one of ours: the caller ignores ids it did not send.
    output = line.get("modelOutput")
    error = line.get("error")
    if isinstance(output, dict) and not error:
        return m.Outcome(custom_id, ok=True, response=output)
    # The prompt stays out of error files: it is the user's data, already in their input.
    detail = {k: v for k, v in line.items() if k != "modelInput"}
    error = error if isinstance(error, dict) else {}
    raw_code = error.get("errorCode")
    try:
        status_code = int(raw_code) if raw_code is not None else None
    except (TypeError, ValueError):
        status_code = None
    code = m.SERVER_ERROR if status_code is None or status_code >= 500 or status_code == 429 else m.REQUEST_ERROR
    message = error.get("errorMessage") or (f"error {status_code}" if status_code else "Bedrock returned no output")
    return m.Outcome(custom_id, ok=False, code=code, message=str(message), detail=detail)


class _RecordIdRewriter(io.RawIOBase):
    """A read-only stream of the batch file with each recordId replaced by its position's id; the
    original ids are appended to `ids`. Memory holds one line and one read's worth of output."""

    def __init__(self, source: io.BufferedReader, ids: list[str]) -> None:
        super().__init__()
        self._source = source
        self._ids = ids
        self._pending = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while len(self._pending) < len(view):
            raw = self._source.readline()
            if not raw:
                break
            if not raw.strip():
                continue
            record = orjson.loads(raw)
            self._ids.append(str(record["recordId"]))
            record["recordId"] = record_id(len(self._ids) - 1)
            self._pending += orjson.dumps(record)
            self._pending += b"\n"
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        del self._pending[:n]
        return n
