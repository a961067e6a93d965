"""The output lines of docs/contract.md "Outputs", built in one place from provider answers."""

from __future__ import annotations

from typing import Any

from batchdrop import models as m
from batchdrop.providers import SPECS
from batchdrop.providers.spec import Usage

# Each provider's readers of its response bodies, in the registry's order: the first that knows a
# body reads it.
_READERS = tuple(reader for spec in SPECS.values() for reader in spec.readers)


def extract(body: dict[str, Any]) -> tuple[str | None, Usage]:
    """(generated text, the tokens it was billed for) from any response body we support."""
    for read in _READERS:
        found = read(body)
        if found is not None:
            return found
    # Embeddings ("list") and moderations: no text; embeddings report prompt tokens only.
    usage = body.get("usage") or {}
    return None, Usage(input_tokens=int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0))


def result_line(
    custom_id: str,
    line: int,
    provider: str,
    model: str,
    batch_id: str,
    body: dict[str, Any],
    lane: str = "batch",
    structured: tuple[Any, str | None] | None = None,
) -> tuple[dict[str, Any], Usage]:
    """`structured`: (parsed, text) of a request that asked for a JSON Schema (batchdrop.structured); a
    line without one has no `parsed` at all, as before there were any."""
    text, usage = extract(body)
    record: dict[str, Any] = {
        "custom_id": custom_id,
        "line": line,
        "provider": provider,
        "model": body.get("model") or model,
        "batch_id": batch_id,
        "status": "succeeded",
        "lane": lane,
        "text": text,
    }
    if structured is not None:
        record["parsed"], record["text"] = structured
    record["usage"] = usage.line()
    record["response"] = body
    return record, usage


def error_line(
    *,
    custom_id: str | None,
    line: int,
    stage: str,
    code: str,
    message: str,
    provider: str | None = None,
    batch_id: str | None = None,
    attempts: int = 0,
    detail: Any = None,
    lane: str | None = None,
) -> dict[str, Any]:
    line_ = {
        "custom_id": custom_id,
        "line": line,
        "stage": stage,
        "code": code,
        "message": message,
        "provider": provider,
        "batch_id": batch_id,
        "attempts": attempts,
        "detail": detail,
    }
    if lane is not None:  # provider-stage errors: the lane that ran the request
        line_["lane"] = lane
    return line_


def validation_error(invalid: m.Invalid) -> dict[str, Any]:
    return error_line(
        custom_id=invalid.custom_id,
        line=invalid.line,
        stage="validation",
        code=invalid.code,
        message=invalid.message,
    )
