"""What the operator commands (`batchdrop submit/status/cancel/retry/results`) do against a stack.

A stack is found by its CloudFormation outputs (BucketName, TableName), or given directly; boto3's
usual credentials and AWS_ENDPOINT_URL apply, so the same commands work against the embedded stack.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batchdrop import models as m
from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.config import ENV_BUCKET, ENV_CACHE_TABLE, ENV_TABLE, INPUT_PREFIX
from batchdrop.pipeline import job_id_for


class StackNotFound(Exception):
    pass


@dataclass(frozen=True)
class StackRef:
    bucket: str
    table: str


def cache_table(stack_name: str | None) -> str:
    """The response cache's table: BATCHDROP_CACHE_TABLE, else the stack's output CacheTableName."""
    if os.environ.get(ENV_CACHE_TABLE):
        return os.environ[ENV_CACHE_TABLE]
    name = stack_name or "Batchdrop"
    try:
        stacks = aws.client("cloudformation").describe_stacks(StackName=name)["Stacks"]
    except Exception as exc:
        raise StackNotFound(f"cannot read the stack {name!r} ({type(exc).__name__})") from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    if "CacheTableName" not in outputs:
        raise StackNotFound(f"the stack {name!r} has no output CacheTableName (deployed before the cache?)")
    return outputs["CacheTableName"]


def resolve(stack_name: str | None, bucket: str | None, table: str | None) -> StackRef:
    """--bucket/--table, else BATCHDROP_BUCKET/BATCHDROP_TABLE, else the stack's outputs."""
    bucket = bucket or os.environ.get(ENV_BUCKET)
    table = table or os.environ.get(ENV_TABLE)
    if bucket and table:
        return StackRef(bucket, table)
    name = stack_name or "Batchdrop"
    try:
        stacks = aws.client("cloudformation").describe_stacks(StackName=name)["Stacks"]
    except Exception as exc:
        raise StackNotFound(
            f"cannot read the stack {name!r} ({type(exc).__name__}): deploy it with `cdk deploy`, pass --stack, "
            "or give --bucket and --table"
        ) from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    try:
        return StackRef(bucket or outputs["BucketName"], table or outputs["TableName"])
    except KeyError as missing:
        raise StackNotFound(f"the stack {name!r} has no output {missing}: is it a batchdrop stack?") from None


def upload(
    ref: StackRef,
    path: str,
    folder: str | None,
    progress: Callable[[int], None],
    metadata: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Upload a file under inputs/ (multipart for large files), with its options as user metadata;
    returns (key, job id)."""
    name = os.path.basename(path)
    key = f"{INPUT_PREFIX}{folder.strip('/')}/{name}" if folder else f"{INPUT_PREFIX}{name}"
    s3 = aws.client("s3")
    extra = {"Metadata": dict(metadata)} if metadata else None
    s3.upload_file(path, ref.bucket, key, Callback=progress, ExtraArgs=extra)
    head = s3.head_object(Bucket=ref.bucket, Key=key)
    obj = m.InputObject(ref.bucket, key, head.get("VersionId"), head["ETag"].strip('"'), head["ContentLength"])
    return key, job_id_for(obj)


def upload_key(ref: StackRef, path: str, key: str, progress: Callable[[int], None]) -> None:
    """Upload a table job's data or template to the key its manifest names."""
    aws.client("s3").upload_file(path, ref.bucket, key, Callback=progress)


def jobs(ref: StackRef, limit: int = 50) -> list[dict[str, Any]]:
    return JobStore(ref.table).list_jobs(limit=limit)


def job(ref: StackRef, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    store = JobStore(ref.table)
    item = store.get_job(job_id)
    if item is None:
        raise LookupError(f"no job {job_id!r} in {ref.table}: `batchdrop status` lists the jobs")
    return item, sorted(store.get_batches(job_id), key=lambda b: b["sk"])


def cancel(ref: StackRef, job_id: str) -> str:
    from batchdrop.cancel import request_cancel

    return request_cancel(JobStore(ref.table), job_id, time.time())


def retry(ref: StackRef, job_id: str) -> Any:
    """batchdrop.retry.request_retry against the stack (waiting a minute for a request already writing it)."""
    from batchdrop.adapters.objects import ObjectStore
    from batchdrop.retry import request_retry

    return request_retry(ObjectStore(ref.bucket), JobStore(ref.table), job_id, time.time(), wait=60.0)


def download_merged(ref: StackRef, job_id: str, out_dir: str) -> tuple[list[str], Any]:
    """The merged results.jsonl and errors.jsonl of the job's chain (batchdrop.retry.merged), and
    merged.json naming the jobs merged; returns the paths written and the merge."""
    import orjson

    from batchdrop.adapters.objects import ObjectStore
    from batchdrop.retry import describe, merged

    found = merged(ObjectStore(ref.bucket), JobStore(ref.table), job_id)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, lines in (("results.jsonl", found.results), ("errors.jsonl", found.errors)):
        path = os.path.join(out_dir, name)
        with open(path, "wb") as out:
            out.writelines(line + b"\n" for line in lines)
        written.append(path)
    path = os.path.join(out_dir, "merged.json")
    body = {
        "jobs": describe(found.chain),
        "not_merged": found.left_out,
        "counts": {"succeeded": len(found.results), "failed": len(found.errors)},
    }
    with open(path, "wb") as out:
        out.write(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    written.append(path)
    return written, found


def download_results(ref: StackRef, job_id: str, out_dir: str) -> list[str]:
    item, _ = job(ref, job_id)
    if item["status"] not in m.FINAL_JOB_STATES:
        raise LookupError(f"job {job_id} is {item['status']}: its outputs are written when it ends")
    prefix = item["output_prefix"]
    s3 = aws.client("s3")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    names = ["results.jsonl", "errors.jsonl", "summary.json"]
    if item.get("table_key"):
        # A table job's results table, whichever format it was written in.
        found = s3.list_objects_v2(Bucket=ref.bucket, Prefix=f"{prefix}table/").get("Contents", [])
        names += [obj["Key"][len(prefix) :] for obj in found]
    for name in names:
        target = os.path.join(out_dir, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        s3.download_file(ref.bucket, f"{prefix}{name}", target)
        written.append(target)
    return written


def age(iso_time: str | None) -> str:
    if not iso_time:
        return ""
    from datetime import UTC, datetime

    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso_time.replace("Z", "+00:00"))).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
