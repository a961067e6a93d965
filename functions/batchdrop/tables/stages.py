"""Where table jobs meet the pipeline: submission renders the rows (and pins what it read), completion
writes the results table. Both read the bucket through tables.s3."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.config import OUTPUT_PREFIX, tmpdir
from batchdrop.options import META_DEADLINE, META_LANE
from batchdrop.pipeline import work_prefix
from batchdrop.pricing import price_table
from batchdrop.tables import manifest as mf
from batchdrop.tables.job import TableJob, TableJobError, open_job
from batchdrop.tables.s3 import S3Objects
from batchdrop.tables.sources import Bounds

if TYPE_CHECKING:
    from batchdrop.pipeline import Deps

logger = Logger(service="batchdrop")


def resolved_key(job_id: str) -> str:
    return f"{work_prefix(job_id)}table.json"


def read_manifest(deps: Deps, obj: m.InputObject) -> bytes:
    if (obj.size or 0) > mf.MAX_MANIFEST_BYTES:
        raise TableJobError(f"{obj.key} is {obj.size:,} bytes; a manifest is at most {mf.MAX_MANIFEST_BYTES:,}")
    return b"".join(deps.objects.chunks(obj.key, obj.version_id))


def metadata(deps: Deps, obj: m.InputObject) -> dict[str, str]:
    """The upload's options as the file's metadata: the manifest's `lane` and `deadline` stand for
    the object's own x-amz-meta-batchdrop-* (a manifest that cannot be read has none: planning says why)."""
    try:
        manifest = msgspec.json.decode(read_manifest(deps, obj), type=mf.Manifest)
    except (TableJobError, msgspec.MsgspecError):
        return dict(obj.metadata or {})
    given = {META_LANE: manifest.lane, META_DEADLINE: manifest.deadline}
    return {**(obj.metadata or {}), **{k: v for k, v in given.items() if v}}


def open_for_plan(deps: Deps, obj: m.InputObject) -> TableJob:
    """The job the manifest describes, its data pinned to the versions in the bucket now (TableJobError
    says what to fix)."""
    settings = deps.settings
    bounds = Bounds(settings.max_inflated_bytes, settings.max_gzip_ratio)
    return open_job(S3Objects(deps.objects), obj.key, read_manifest(deps, obj), settings.routes, bounds=bounds)


def save(deps: Deps, job_id: str, table: TableJob) -> str:
    key = resolved_key(job_id)
    deps.objects.put_json(key, table.to_json())
    return key


def write_results_table(deps: Deps, job: dict[str, Any], results_path: str, errors_path: str) -> dict[str, Any] | None:
    """The job's results table under outputs/<path>/<job_id>/table/ (None for a JSONL job, or a table
    job refused before its rows were read)."""
    from batchdrop.tables.join import CONTENT_TYPES, table_key, write_table

    key = job.get("table_key")
    if not key:
        return None
    raw = deps.objects.get_bytes(str(key))
    if raw is None:
        raise RuntimeError(f"the job's table description {key} is gone from the bucket")
    resolved = orjson.loads(raw)
    fmt = str(resolved["manifest"].get("output_format") or "parquet")
    out_key = table_key(job["output_prefix"], fmt)
    with tempfile.TemporaryDirectory(dir=tmpdir()) as work:
        out_path = os.path.join(work, f"results.{fmt}")
        output = write_table(
            S3Objects(deps.objects), resolved, results_path, errors_path, out_path, price_table(), tmpdir=work
        )
        if output.missing:
            logger.error("rows without a result or an error line", extra={"rows": output.missing})
        deps.objects.upload_file(out_path, out_key, content_type=CONTENT_TYPES[fmt])
    # The Glue table's partition of this job (docs/athena.md): the output prefix inside outputs/.
    job_path = str(job["output_prefix"]).removeprefix(OUTPUT_PREFIX).rstrip("/")
    return {
        "uri": deps.objects.uri(out_key),
        "format": fmt,
        "rows": output.rows,
        "job_path": job_path,
        "data": resolved["objects"],
    }
