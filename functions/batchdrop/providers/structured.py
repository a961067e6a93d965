"""Structured outputs (docs/contract.md "Structured outputs"): the neutral line's `response_format`,
checked once for every provider, and what the providers' translators and readers share about it.

A neutral `response_format` is OpenAI's own shape, the one users already write:
`{"type": "json_schema", "json_schema": {"name", "schema", "strict"?, "description"?}}`. No shorthand:
a bare schema would be ambiguous with the shape itself (`{"type": "json_object"}` reads as both).

jsonschema is imported when a line first carries a schema (it costs about 110 ms), so a file without
one, and the functions that never see one, never load it. Imports no provider and no SDK.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from batchdrop import models as m
from batchdrop.providers.lines import Reject, json_type, names, short

# OpenAI's rule for the format's name (openai SDK, shared_params/response_format_json_schema.py:
# "Must be a-z, A-Z, 0-9, or contain underscores and dashes, with a maximum length of 64"); Anthropic's
# and Nova's tool names allow the same characters, so the name can be the forced tool's.
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
FORMAT_KEYS = frozenset({"type", "json_schema"})
JSON_SCHEMA_KEYS = frozenset({"name", "schema", "strict", "description"})
SHAPE = '{"type": "json_schema", "json_schema": {"name", "schema", "strict"?, "description"?}}'
# What the forced tool says of itself when the format has no description: the model reads it.
TOOL_DESCRIPTION = "Give your answer as this tool's input, which must match its schema."
# The keys of every mechanism a line may ask for a schema with (OpenAI's chat json_schema, Responses'
# text.format, Anthropic's output_config.format; a forced tool for Claude and Nova; Gemini's JSON
# Schema): a batch file without any of them holds no such request. A key met elsewhere (a prompt that
# quotes it) only costs reading the batch back.
MARKERS = (b'"json_schema"', b'"tool_choice"', b'"toolChoice"', b'"responseJsonSchema"', b'"response_json_schema"')
_CHUNK = 8 * 1024 * 1024
_OVERLAP = max(map(len, MARKERS))
# Schemas checked, by their canonical JSON: a file repeats one or a few, and a check costs about 0.5 ms.
_CHECKED = 256


@dataclass(frozen=True)
class Format:
    """A neutral line's response_format, checked: what every translator needs of it."""

    name: str
    schema: dict[str, Any]
    strict: bool | None
    description: str | None

    def as_openai(self) -> dict[str, Any]:
        """OpenAI's and Azure's chat `response_format` (the neutral shape itself, normalised)."""
        spec: dict[str, Any] = {"name": self.name, "schema": self.schema}
        if self.description is not None:
            spec["description"] = self.description
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}

    def object_root(self, provider: str, why: str) -> None:
        """Refuse a schema whose root is not an object, for a provider whose mechanism needs one."""
        if self.schema.get("type") != "object":
            raise Reject(
                m.INVALID_REQUEST,
                f'"response_format.json_schema.schema" must have "type": "object" at its root for {provider} '
                f"({why}); wrap the value in an object property",
            )


def response_format(obj: dict[str, Any]) -> Format | None:
    """The neutral line's response_format, checked (None without one); raises Reject."""
    given = obj.get("response_format")
    if given is None:
        return None
    if not isinstance(given, dict):
        raise Reject(m.INVALID_REQUEST, f'"response_format" must be an object {SHAPE}, got {json_type(given)}')
    extra = given.keys() - FORMAT_KEYS
    if extra:
        raise Reject(m.INVALID_REQUEST, f'unexpected field(s) {names(extra)} in "response_format"; expected {SHAPE}')
    if given.get("type") != "json_schema":
        raise Reject(
            m.INVALID_REQUEST,
            f'"response_format.type" must be "json_schema", got {short(given.get("type"))}: the neutral format '
            "takes a JSON Schema (no text or json_object mode)",
        )
    spec = given.get("json_schema")
    if not isinstance(spec, dict):
        raise Reject(
            m.INVALID_REQUEST,
            '"response_format.json_schema" must be an object {"name", "schema", "strict"?, "description"?}, '
            f"got {json_type(spec)}",
        )
    extra = spec.keys() - JSON_SCHEMA_KEYS
    if extra:
        raise Reject(
            m.INVALID_REQUEST,
            f'unexpected field(s) {names(extra)} in "response_format.json_schema" (allowed: {names(JSON_SCHEMA_KEYS)})',
        )
    name = spec.get("name")
    if name is None:
        raise Reject(m.INVALID_REQUEST, '"response_format.json_schema.name" is missing: OpenAI requires one')
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise Reject(
            m.INVALID_REQUEST,
            f'"response_format.json_schema.name" {short(name)} must be 1 to 64 letters, digits, _ or -',
        )
    schema = spec.get("schema")
    if schema is None:
        raise Reject(m.INVALID_REQUEST, '"response_format.json_schema.schema" is missing: give the JSON Schema')
    if not isinstance(schema, dict):
        raise Reject(
            m.INVALID_REQUEST,
            f'"response_format.json_schema.schema" must be a JSON Schema object, got {json_type(schema)}',
        )
    problem = schema_problem(canonical(schema))
    if problem is not None:
        raise Reject(m.INVALID_REQUEST, f'"response_format.json_schema.schema" is not a valid JSON Schema: {problem}')
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise Reject(
            m.INVALID_REQUEST, f'"response_format.json_schema.strict" must be true or false, got {short(strict)}'
        )
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise Reject(
            m.INVALID_REQUEST,
            f'"response_format.json_schema.description" must be a string, got {json_type(description)}',
        )
    if obj.get("tools") is not None:
        raise Reject(
            m.INVALID_REQUEST,
            'a neutral line takes "tools" or "response_format", not both: Anthropic and Bedrock carry the '
            "schema as a forced tool, and the model could not also call yours",
        )
    return Format(name, schema, strict, description)


def canonical(schema: Any) -> bytes:
    """A schema's canonical JSON (keys sorted): equal schemas are one entry of every cache."""
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)


@lru_cache(maxsize=_CHECKED)
def schema_problem(schema_json: bytes) -> str | None:
    """Why the schema is not a valid JSON Schema (by the draft its `$schema` names, 2020-12 without one),
    as the metaschema's validator words it, or None."""
    from jsonschema import exceptions, validators

    schema = orjson.loads(schema_json)
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = exc.json_path if exc.path else "the schema"
        return f"{where}: {exc.message}"[:500]
    return None


def strict_problem(schema: dict[str, Any]) -> str | None:
    """What OpenAI's strict mode refuses in a schema (its Structured Outputs guide, "Supported schemas":
    the root an object and not anyOf; every object "additionalProperties": false and every property
    required), worded as the API's 400 is ("In context=('properties', 'a'), 'additionalProperties' is
    required to be supplied and to be false"), or None. Used by validation and by the emulator, which
    must refuse what OpenAI refuses."""
    if schema.get("type") != "object" or "anyOf" in schema:
        return "the root must be an object, and not anyOf"

    def walk(node: Any, context: tuple[str, ...]) -> str | None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                found = walk(item, (*context, str(i)))
                if found:
                    return found
            return None
        if not isinstance(node, dict):
            return None
        is_object = node.get("type") == "object" or (isinstance(node.get("type"), list) and "object" in node["type"])
        if is_object or "properties" in node:
            where = f"In context={context!r}, "
            if node.get("additionalProperties") is not False:
                return where + "'additionalProperties' is required to be supplied and to be false"
            properties = node.get("properties") or {}
            required = node.get("required") or []
            missing = [key for key in properties if key not in required]
            if missing:
                return (
                    where + "'required' is required to be supplied and to be an array including every key in "
                    f"properties. Missing '{missing[0]}'"
                )
        for key, value in node.items():
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                for name, sub in value.items():
                    found = walk(sub, (*context, key, name))
                    if found:
                        return found
            elif key in ("items", "anyOf", "allOf", "oneOf", "prefixItems"):
                found = walk(value, (*context, key))
                if found:
                    return found
        return None

    return walk(schema, ())


def asks_any(path: str) -> bool:
    """Whether a batch file (local) may hold a request that asks for a schema."""
    with open(path, "rb") as data:
        tail = b""
        while chunk := data.read(_CHUNK):
            window = tail + chunk
            if any(marker in window for marker in MARKERS):
                return True
            tail = window[-_OVERLAP:]
    return False
