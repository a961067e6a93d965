"""Structured answers (docs/contract.md "Structured outputs"): which requests of a batch asked for a JSON
Schema, and each answer checked against it.

What a request asks for is read from the batch as it was sent (its stored provider lines, `work/`), by
its provider's `asks` (batchdrop.providers.spec): the same for a neutral line batchdrop translated and
for a provider line that brought its own json_schema or forced tool, for the batch and the real-time
lanes, for a next attempt and for requests moved between batches. Nothing else records it, so no plan
or index changes shape. Reading a batch's lines back costs a pass over its data file, so it is only
done for batches that may hold such a request: `asks_any` (batchdrop.providers.structured) looks for
the mechanisms' keys in the batch file before it is stored, and its item says so (`structured`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from batchdrop import models as m
from batchdrop.outputs import extract
from batchdrop.pipeline import Deps, batch_data_key, batch_index_key
from batchdrop.providers import SPECS
from batchdrop.providers.structured import MARKERS, canonical, schema_problem

# Compiled validators, by their schema's canonical JSON: a file uses one or a few.
_WANTED_CACHE = 256
_wanted: dict[bytes, Wanted | None] = {}


@dataclass(frozen=True, eq=False)
class Wanted:
    """A schema an answer must match: its validator, and the forced tool whose input is the answer
    (None: the answer is the text)."""

    validator: Any
    tool: str | None


class Mismatch(Exception):
    """An answer that is not JSON, or JSON that does not match its schema."""

    def __init__(self, message: str, raw: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.raw = raw


def wanted(provider: str, line: dict[str, Any]) -> Wanted | None:
    """What a provider batch line asks its answer to match, or None. A schema jsonschema cannot check
    with (a provider line's own, not checked when it was validated) asks for nothing."""
    asks = SPECS[provider].asks
    found = asks(line) if asks is not None else None
    if found is None:
        return None
    schema, tool = found
    key = canonical([schema, tool])
    if key in _wanted:
        return _wanted[key]
    result = None
    if schema_problem(canonical(schema)) is None:
        from jsonschema import validators

        cls = validators.validator_for(schema, default=validators.Draft202012Validator)
        result = Wanted(cls(schema), tool)
    if len(_wanted) >= _WANTED_CACHE:
        _wanted.clear()
    _wanted[key] = result
    return result


def batch_wants(deps: Deps, batch: dict[str, Any]) -> dict[str, Wanted]:
    """The requests of a stored batch that ask for a schema, by custom_id: its data file read back
    alongside its index (which names each line's request, whatever field of the provider's line holds
    its id), a line at a time."""
    job_id, key, provider = batch["job_id"], batch["batch_key"], batch["provider"]
    out: dict[str, Wanted] = {}
    index = deps.objects.lines(batch_index_key(job_id, key))
    for entry, payload in zip(index, deps.objects.lines(batch_data_key(job_id, key)), strict=True):
        if not any(marker in payload for marker in MARKERS):
            continue
        try:
            line = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        found = wanted(provider, line) if isinstance(line, dict) else None
        if found is not None:
            out[entry.partition(b"\t")[0].decode()] = found
    return out


def answer(wanted: Wanted, provider: str, body: dict[str, Any], text: str | None) -> tuple[Any, str | None]:
    """(parsed, text) of an answer that matches its schema: the forced tool's input (and its JSON as the
    text), or the text read as JSON. Raises Mismatch with the validator's message and the raw answer."""
    if wanted.tool is not None:
        read = SPECS[provider].tool_input
        parsed = read(body, wanted.tool) if read is not None else None
        if parsed is None:
            raise Mismatch(f"the answer has no call of the tool {wanted.tool!r} that carries the schema", text)
        text = orjson.dumps(parsed).decode()
    else:
        if text is None:
            raise Mismatch("the answer has no text to read as JSON" + _refusal(body), None)
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise Mismatch(f"the answer is not JSON ({str(exc).split(':', 1)[0]})", text) from None
    problem = _first_error(wanted, parsed)
    if problem is not None:
        raise Mismatch(f"the answer does not match the schema: {problem}", text)
    return parsed, text


def _first_error(wanted: Wanted, instance: Any) -> str | None:
    from jsonschema import exceptions

    error = exceptions.best_match(wanted.validator.iter_errors(instance))
    return None if error is None else f"{error.json_path}: {error.message}"[:1000]


def _refusal(body: dict[str, Any]) -> str:
    """OpenAI's refusal, which takes the place of a structured answer's content (message.refusal)."""
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    refusal = message.get("refusal") if isinstance(message, dict) else None
    return f"; the model refused: {refusal}" if isinstance(refusal, str) and refusal else ""


def checked(
    outcomes: Iterator[tuple[str, int, m.Outcome]], wants: dict[str, Wanted], provider: str
) -> Iterator[tuple[str, int, m.Outcome, tuple[Any, str | None] | None]]:
    """Each outcome with its structured answer (parsed, text) when its request asked for a schema; an
    answer that does not match becomes a `schema_mismatch` failure that keeps its body (its tokens were
    billed)."""
    for custom_id, line, outcome in outcomes:
        want = wants.get(custom_id) if outcome.ok else None
        if want is None:
            yield custom_id, line, outcome, None
            continue
        body = outcome.response or {}
        try:
            structured = answer(want, provider, body, extract(body)[0])
        except Mismatch as exc:
            failed = m.Outcome(
                custom_id, ok=False, response=body, code=m.SCHEMA_MISMATCH, message=exc.message, detail=exc.raw
            )
            yield custom_id, line, failed, None
            continue
        yield custom_id, line, outcome, structured
