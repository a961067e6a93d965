"""A table job's manifest: `inputs/<path>.job.json` (docs/contract.md, "Table jobs").

Decoded strictly (an unknown field is refused, so a typo is not silently ignored) with msgspec, whose
errors name the field's path (`$.max_tokens`); every other check names its field too.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from batchdrop.config import DATA_PREFIX, MANIFEST_SUFFIX, TEMPLATES_PREFIX

# A manifest is a few templates and settings; a larger one is not a manifest.
MAX_MANIFEST_BYTES = 1 << 20
MAX_DATA_OBJECTS = 1000
OUTPUT_FORMATS = ("parquet", "csv", "jsonl")


class ManifestError(Exception):
    """The manifest cannot be used: which field, what is wrong, how to fix it."""


class TemplateMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "user", "assistant"]
    content: str


class Manifest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # A key, a prefix ending in "/" (every object under it, in key order), or a list of keys.
    data: str | list[str]
    model: str
    format: Literal["csv", "tsv", "parquet", "jsonl"] | None = None
    delimiter: str | None = None
    id_column: str | None = None
    # The prompt: `system` and `user`, or `messages`, or `input` for an embedding model; inline, or
    # in an object of the bucket (`template`, e.g. templates/<name>.json holding the same fields).
    system: str | None = None
    user: str | None = None
    messages: list[TemplateMessage] | None = None
    input: str | None = None
    template: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    dimensions: int | None = None
    response_format: dict[str, Any] | None = None
    output_format: Literal["parquet", "csv", "jsonl"] = "parquet"
    lane: str | None = None
    deadline: str | None = None
    # Put before the columns batchdrop adds, when the table has columns of those names already.
    columns_prefix: str = ""


class TemplateFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    system: str | None = None
    user: str | None = None
    messages: list[TemplateMessage] | None = None
    input: str | None = None


def is_manifest(key: str) -> bool:
    return key.endswith(MANIFEST_SUFFIX)


def parse(raw: bytes, where: str) -> Manifest:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where} is {len(raw):,} bytes; a manifest is at most {MAX_MANIFEST_BYTES:,}")
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"{where}: {_field_message(str(exc), Manifest)}") from None
    except msgspec.DecodeError as exc:
        raise ManifestError(f"{where} is not valid JSON: {exc}") from None
    _check(manifest, where)
    return manifest


def apply_template_file(manifest: Manifest, raw: bytes, key: str, where: str) -> Manifest:
    """The manifest with its prompt taken from `template`'s object: JSON with the prompt fields, or any
    other text as the `user` template."""
    if key.endswith(".json"):
        try:
            found = msgspec.json.decode(raw, type=TemplateFile)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ManifestError(f'{where}: "template" {key}: {_field_message(str(exc), TemplateFile)}') from None
    else:
        try:
            found = TemplateFile(user=raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ManifestError(f'{where}: "template" {key} is not UTF-8 text') from None
    merged = msgspec.structs.replace(
        manifest, system=found.system, user=found.user, messages=found.messages, input=found.input
    )
    _check_prompt(merged, where, f'"template" {key}')
    return merged


def _check(manifest: Manifest, where: str) -> None:
    data = [manifest.data] if isinstance(manifest.data, str) else manifest.data
    if not data or any(not isinstance(d, str) or not d.strip() for d in data):
        raise ManifestError(f'{where}: "data" must name a key, a prefix ending in "/", or a list of keys')
    for key in data:
        if not key.startswith(DATA_PREFIX) or key == DATA_PREFIX:
            raise ManifestError(
                f'{where}: "data" {key!r} is not under {DATA_PREFIX}: put a table job\'s data under {DATA_PREFIX} '
                f"(e.g. {DATA_PREFIX}{key.rstrip('/').rsplit('/', 1)[-1] or 'tickets.csv'}), "
                "the prefix batchdrop's functions may read"
            )
    if manifest.template is not None and not manifest.template.startswith(TEMPLATES_PREFIX):
        raise ManifestError(
            f'{where}: "template" {manifest.template!r} is not under {TEMPLATES_PREFIX}: put templates under '
            f"{TEMPLATES_PREFIX}, the prefix batchdrop's functions may read"
        )
    if not manifest.model.strip():
        raise ManifestError(f'{where}: "model" is empty; name the model that answers every row')
    if manifest.delimiter is not None and len(manifest.delimiter) != 1:
        raise ManifestError(f'{where}: "delimiter" must be one character, got {manifest.delimiter!r}')
    if manifest.max_tokens is not None and manifest.max_tokens < 1:
        raise ManifestError(f'{where}: "max_tokens" must be a positive integer, got {manifest.max_tokens}')
    if manifest.template is not None:
        if any(getattr(manifest, f) is not None for f in ("system", "user", "messages", "input")):
            raise ManifestError(
                f'{where}: give the prompt inline (system/user, messages or input) or by "template", not both'
            )
        return
    _check_prompt(manifest, where, "the manifest")


def _check_prompt(manifest: Manifest, where: str, source: str) -> None:
    chat = manifest.user is not None or manifest.system is not None
    kinds = [k for k, given in (("system/user", chat), ("messages", manifest.messages is not None),
                                 ("input", manifest.input is not None)) if given]  # fmt: skip
    if not kinds:
        raise ManifestError(
            f'{where}: {source} has no prompt: give "user" (and "system"), or "messages", '
            'or "input" for an embedding model'
        )
    if len(kinds) > 1:
        raise ManifestError(f"{where}: {source} gives {' and '.join(kinds)}; give only one of them")
    if chat and manifest.user is None:
        raise ManifestError(f'{where}: {source} has "system" but no "user" template; every request needs a user turn')
    if manifest.messages is not None and not any(msg.role == "user" for msg in manifest.messages):
        raise ManifestError(f'{where}: {source}\'s "messages" has no user message')
    if manifest.input is not None and manifest.response_format is not None:
        raise ManifestError(f'{where}: "response_format" applies to chat models, not to an embedding "input"')


def _field_message(message: str, struct: type[msgspec.Struct]) -> str:
    # msgspec: "Object missing required field `model`", "Expected `int`, got `str` - at `$.max_tokens`",
    # "Object contains unknown field `maxtokens`": already precise; say what the object may hold (a
    # template file holds only the prompt's fields).
    if "unknown field" in message:
        fields = ", ".join(struct.__struct_fields__)
        kind = "a manifest" if struct is Manifest else "a template file"
        return f"{message} ({kind} may hold: {fields})"
    return message
