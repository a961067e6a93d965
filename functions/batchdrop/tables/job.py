"""A table job from its manifest: the data resolved and pinned, the templates compiled and checked
against the table's columns, and every row rendered to a request line for the JSONL pipeline.

Row n of the table (1-based, across its objects in order, a CSV's header not counted) is line n of
the stream the pipeline scans, so `line` in results.jsonl and errors.jsonl is the row number. A row
that does not render is reported (`template_error`, or `invalid_row` for a CSV row of the wrong width)
and stands in the stream as a blank line, which the scan skips and the caller counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from batchdrop import models as m
from batchdrop.providers.openai import EMBEDDINGS_URL
from batchdrop.tables import manifest as mf
from batchdrop.tables.schema import PARSED_COLUMN, RESULT_COLUMN_NAMES
from batchdrop.tables.sources import (
    BadRow,
    Bounds,
    DataObject,
    JsonRows,
    Objects,
    Rows,
    TableError,
    format_of,
    open_rows,
)
from batchdrop.tables.template import (
    ROW,
    RowError,
    Template,
    TemplateError,
    columns_used,
    compile_template,
    environment,
)

CHUNK_BYTES = 1 << 20
# Providers whose batch API takes embeddings (OpenAI's /v1/embeddings line, which Azure takes too).
EMBEDDING_PROVIDERS = ("openai", "azure")
# Names under a prefix that are not data: Spark's and Hadoop's markers, hidden files.
_NOT_DATA = ("_", ".")


class TableJobError(Exception):
    """The job cannot run at all: the manifest, its template or its data (the job is rejected, nothing sent)."""


@dataclass
class TableJob:
    manifest_key: str
    manifest: mf.Manifest
    objects: list[DataObject]
    format: str
    columns: list[str]
    templates: dict[str, Template]
    source: Objects = field(repr=False)
    bounds: Bounds = field(default_factory=Bounds)
    # Set while rendering: rows seen, rows that did not render, and the reason the job must stop
    # (a template that reached outside the row, a data object that cannot be read).
    rows: int = 0
    failed: int = 0
    fatal: str | None = None
    # JSONL records: every key seen, in order, and the JSON types of its values (the results table's
    # schema, which no header gives).
    json_types: dict[str, list[str]] = field(default_factory=dict)

    @property
    def _added(self) -> set[str]:
        return {self.manifest.columns_prefix + n for n in (*RESULT_COLUMN_NAMES, PARSED_COLUMN)}

    @property
    def embedding(self) -> bool:
        return self.manifest.input is not None

    def to_json(self) -> dict[str, Any]:
        """What completion needs to join the answers back (work/<job_id>/table.json)."""
        return {
            "manifest_key": self.manifest_key,
            "manifest": msgspec.to_builtins(self.manifest),
            "objects": [o.to_json() for o in self.objects],
            "format": self.format,
            "columns": self.columns,
            "json_types": self.json_types,
            "rows": self.rows,
            "bounds": [self.bounds.max_inflated, self.bounds.max_ratio],
        }

    # -- rendering -----------------------------------------------------------------------------------

    def chunks(self, report: Callable[[m.Invalid], None]) -> Iterator[bytes]:
        """The rows as request lines, a block at a time; rows that do not render are reported."""
        wanted = self._wanted()
        number = 0
        try:
            for index, obj in enumerate(self.objects):
                rows = self._open(obj, index)
                out: list[bytes] = []
                add = out.append
                size = 0
                for block in rows.blocks(wanted if not isinstance(rows, JsonRows) else None):
                    for row in block:
                        number += 1
                        if isinstance(rows, JsonRows):
                            self._note_types(row, number)
                        try:
                            line = self.line(row, number)
                            add(line)
                            size += len(line)
                        except RowError as exc:
                            self.failed += 1
                            code = m.INVALID_ROW if isinstance(row, BadRow) else m.TEMPLATE_ERROR
                            report(
                                m.Invalid(
                                    number, self._custom_id(row, number, strict=False), code, f"row {number}: {exc}"
                                )
                            )
                            add(b"\n")
                        if size >= CHUNK_BYTES:
                            # Handed on in chunks of about a megabyte: a block of long rows would be
                            # tens of them, copied again by the scan's line splitting.
                            self.rows = number
                            chunk = b"".join(out)
                            out.clear()
                            size = 0
                            yield chunk
                    self.rows = number
                if out:
                    chunk = b"".join(out)
                    out.clear()
                    yield chunk
        except TemplateError as exc:
            self.fatal = str(exc)
        except TableError as exc:
            self.fatal = str(exc)
        self.rows = number

    def line(self, row: Mapping[str, Any], number: int) -> bytes:
        if isinstance(row, BadRow):
            raise RowError(row.message)
        # A null cell is no value: StrictUndefined makes it an error unless the template gives a default.
        values = {k: v for k, v in row.items() if v is not None}
        custom_id = self._custom_id(values, number, strict=True)
        t = self.templates
        man = self.manifest
        if self.embedding:
            body: dict[str, Any] = {"model": man.model, "input": t["input"].render(values, number)}
            if man.dimensions is not None:
                body["dimensions"] = man.dimensions
            return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS_URL, "body": body}) + b"\n"
        line: dict[str, Any] = {"custom_id": custom_id, "model": man.model}
        if man.messages is not None:
            line["messages"] = [
                {"role": msg.role, "content": t[f"messages[{i}].content"].render(values, number)}
                for i, msg in enumerate(man.messages)
            ]
        else:
            if "system" in t:
                line["system"] = t["system"].render(values, number)
            line["messages"] = [{"role": "user", "content": t["user"].render(values, number)}]
        for name in ("max_tokens", "temperature", "top_p", "stop", "response_format"):
            value = getattr(man, name)
            if value is not None:
                line[name] = value
        return orjson.dumps(line) + b"\n"

    def _custom_id(self, row: Mapping[str, Any], number: int, strict: bool) -> str | None:
        column = self.manifest.id_column
        if column is None:
            return f"row-{number}"
        value = row.get(column)
        if value is None or value == "":
            if strict:
                raise RowError(f"id column {column!r} has no value in this row; every row needs its id", column)
            return None
        return str(value)

    def _wanted(self) -> list[str]:
        used = columns_used(list(self.templates.values()))
        if any(ROW in t.names for t in self.templates.values()):
            return list(self.columns)  # {{ row }} itself: the whole row
        wanted = [c for c in self.columns if c in used]
        if self.manifest.id_column and self.manifest.id_column not in wanted:
            wanted.append(self.manifest.id_column)
        return wanted

    def _open(self, obj: DataObject, index: int) -> Rows:
        rows = open_rows(self.source, obj, self.format, self.manifest.delimiter, self.bounds)
        if index and self.format in ("csv", "tsv", "parquet") and rows.columns != self.columns:
            raise TableError(
                f"{obj.key}'s columns {rows.columns} differ from {self.objects[0].key}'s {self.columns}; "
                "every object of a table has the same columns"
            )
        return rows

    def _note_types(self, row: Mapping[str, Any], number: int) -> None:
        types = self.json_types
        for key, value in row.items():
            kind = _json_type(value)
            known = types.get(key)
            if known is None:
                if key in self._added:
                    raise TableError(
                        f"row {number}: a record has the key {key!r}, a column batchdrop adds to the "
                        'results; set "columns_prefix" (e.g. "llm_") to name the added columns apart'
                    )
                types[key] = [kind]
            elif kind not in known:
                known.append(kind)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "json"


def open_job(
    source: Objects,
    manifest_key: str,
    raw: bytes,
    routes: tuple[tuple[str, str], ...] = (),
    pinned: list[DataObject] | None = None,
    bounds: Bounds | None = None,
) -> TableJob:
    """The job the manifest describes, or TableJobError saying what to fix. `pinned`: the objects an
    earlier look resolved (completion reads exactly what submission rendered)."""
    try:
        manifest = mf.parse(raw, manifest_key)
        if manifest.template is not None:
            text = source.read(manifest.template)
            if text is None:
                raise mf.ManifestError(
                    f'{manifest_key}: "template" {manifest.template!r} is not in the bucket; '
                    "upload it before the manifest"
                )
            manifest = mf.apply_template_file(manifest, text, manifest.template, manifest_key)
        if manifest.input is not None:
            provider = next((p for prefix, p in routes if manifest.model.startswith(prefix)), None)
            if provider is not None and provider not in EMBEDDING_PROVIDERS:
                raise mf.ManifestError(
                    f'{manifest_key}: "input" makes this an embedding job, which runs on OpenAI or Azure OpenAI '
                    f"(the /v1/embeddings batch endpoint); model {manifest.model!r} routes to {provider}"
                )
        objects = pinned if pinned is not None else _resolve(source, manifest, manifest_key)
        fmt = format_of(objects[0].key, manifest.format)
        for obj in objects[1:]:
            if format_of(obj.key, manifest.format) != fmt:
                raise TableError(f"{obj.key} is not {fmt} like {objects[0].key}; a table's objects share one format")
        templates = _compile(manifest)
        job = TableJob(manifest_key, manifest, objects, fmt, [], templates, source, bounds or Bounds())
        first = job._open(objects[0], 0)
        job.columns = first.columns
        _check_columns(job, manifest_key)
        return job
    except (mf.ManifestError, TemplateError, TableError) as exc:
        raise TableJobError(str(exc)) from None


def _resolve(source: Objects, manifest: mf.Manifest, where: str) -> list[DataObject]:
    found: list[DataObject] = []
    for name in [manifest.data] if isinstance(manifest.data, str) else manifest.data:
        if name.endswith("/"):
            under = [o for o in source.list(name) if o.size > 0 and not o.key.rsplit("/", 1)[-1].startswith(_NOT_DATA)]
            if not under:
                raise mf.ManifestError(
                    f'{where}: "data" {name!r} has no objects under it; upload the data before the manifest'
                )
            found.extend(under)
        else:
            obj = source.head(name)
            if obj is None:
                raise mf.ManifestError(
                    f'{where}: "data" {name!r} is not in the bucket; upload the data before the manifest'
                )
            found.append(obj)
        if len(found) > mf.MAX_DATA_OBJECTS:
            raise mf.ManifestError(
                f'{where}: "data" names more than {mf.MAX_DATA_OBJECTS:,} objects; combine them into fewer files'
            )
    return found


def _compile(manifest: mf.Manifest) -> dict[str, Template]:
    env = environment()
    sources: dict[str, str] = {}
    if manifest.input is not None:
        sources["input"] = manifest.input
    if manifest.system is not None:
        sources["system"] = manifest.system
    if manifest.user is not None:
        sources["user"] = manifest.user
    for i, msg in enumerate(manifest.messages or []):
        sources[f"messages[{i}].content"] = msg.content
    return {name: compile_template(env, name, text) for name, text in sources.items()}


def _check_columns(job: TableJob, where: str) -> None:
    columns = set(job.columns)
    shown = ", ".join(job.columns[:50]) + (" ..." if len(job.columns) > 50 else "")
    _check_clash(job, where, columns)
    if job.format == "jsonl":
        return  # records have no header: a missing key is an error on its row
    for name, template in job.templates.items():
        for column in sorted(columns_used([template]) - columns):
            raise TableError(
                f"{where}: template {name!r} uses {{{{ {column} }}}}, but the table has no column {column!r} "
                f'(its columns: {shown}); for a name with spaces write {{{{ row["{column}"] }}}}'
            )
    id_column = job.manifest.id_column
    if id_column is not None and id_column not in columns:
        raise TableError(f'{where}: "id_column" {id_column!r} is not a column of the table (its columns: {shown})')


def _check_clash(job: TableJob, where: str, columns: set[str]) -> None:
    # JSONL records too (their first record's keys): a key named like an added column would be
    # written twice into the results table, which readers then refuse.
    clash = sorted(job._added & columns)
    if clash:
        raise TableError(
            f"{where}: the table already has column(s) {', '.join(clash)}, which batchdrop adds to the results; "
            'set "columns_prefix" (e.g. "llm_") to name the added columns apart'
        )
