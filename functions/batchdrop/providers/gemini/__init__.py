"""Gemini: Batch Mode (a JSONL file of {key, request} lines, one model per batch job).

Facts: docs/providers.md ("Gemini"); the line format: docs/contract.md ("Input lines").
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from batchdrop import models as m
from batchdrop.providers.lines import Reject, json_type, model_name, names, sampling, split_system, tools
from batchdrop.providers.spec import MB, BatchLimits, LineChecks, LineShape, Price, ProviderSpec, TokenFields, Usage
from batchdrop.providers.structured import response_format

LINE_KEYS = frozenset({"key", "request"})
# Gemini: google-genai's `t_model` (_transformers.py) refuses "..", "?" and "&", and puts the rest
# into the URL path as `models/<name>`: a "/" would add path segments and a "#" cut the path there
# (the request then runs the model named before it). Model ids are letters, digits, ".", "-", "_"
# (gemini-2.5-flash-preview-05-20); the "models/" prefix is taken off before this check.
MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}").fullmatch


def to_request(obj: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A GenerateContentRequest (without the model, which the batch carries)."""
    system, turns = split_system(obj, messages)
    request: dict[str, Any] = {
        "contents": [{"role": "model" if role == "assistant" else "user", "parts": [{"text": t}]} for role, t in turns]
    }
    if system:
        request["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = sampling(obj, max_tokens="maxOutputTokens", max_temperature=2)
    wanted = response_format(obj)
    if wanted is not None:
        # JSON Schema as it is (google-genai, GenerationConfig.response_json_schema: "an alternative to
        # `response_schema` that accepts JSON Schema. If set, `response_schema` must be omitted, but
        # `response_mime_type` is required"); responseSchema is OpenAPI's subset, another language.
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = wanted.schema
    if config:
        request["generationConfig"] = config
    if obj.get("tools") is not None:
        request["tools"] = [
            {
                "functionDeclarations": [
                    {"name": t["name"], "description": t["description"], "parameters": t["schema"]}
                    for t in tools(obj["tools"])
                ]
            }
        ]
    return request


def check_line(v: LineChecks, number: int, raw: bytes, obj: dict[str, Any], target: str) -> m.Request:
    """{"key", "request": GenerateContentRequest}; the model is the request's own `model` field,
    which we move to the batch (Gemini takes one model per batch job)."""
    custom_id = v.take_id(obj, number, required=True, field="key")
    extra = obj.keys() - LINE_KEYS
    if extra:
        raise Reject(m.INVALID_REQUEST, f"unexpected field(s) {names(extra)} in a Gemini batch line")
    request = obj.get("request")
    if not isinstance(request, dict):
        raise Reject(m.INVALID_REQUEST, f'"request" must be a JSON object, got {json_type(request)}')
    model = model_name(request.get("model"), '"request.model"', "gemini-2.5-flash").removeprefix("models/")
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Reject(m.INVALID_REQUEST, '"request.contents" must be a non-empty list of {role, parts}')
    provider = v.enabled(target, model)
    body = {k: value for k, value in request.items() if k != "model"}
    payload = orjson.dumps({"key": custom_id, "request": body})
    return v.request(number, custom_id, provider, model, model, payload)


def translate(
    obj: dict[str, Any], messages: list[dict[str, Any]], custom_id: str, model: str, default_max_tokens: int
) -> tuple[str, str, bytes]:
    model = model.removeprefix("models/")
    return model, model, orjson.dumps({"key": custom_id, "request": to_request(obj, messages)})


def asks(line: dict[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    """A request's `generationConfig.responseJsonSchema` (its answer is the candidate's text). Not
    `responseSchema`: an OpenAPI Schema object ("type": "OBJECT", "nullable"), which JSON Schema
    validators read otherwise."""
    request = line.get("request")
    config = request.get("generationConfig", request.get("generation_config")) if isinstance(request, dict) else None
    if not isinstance(config, dict):
        return None
    schema = config.get("responseJsonSchema", config.get("response_json_schema"))
    return (schema, None) if isinstance(schema, dict) else None


def read_response(body: dict[str, Any]) -> tuple[str | None, Usage] | None:
    """A GenerateContentResponse."""
    if "candidates" not in body and "usageMetadata" not in body:
        return None
    meta = body.get("usageMetadata") or {}
    candidates = body.get("candidates") or [{}]
    parts = [p.get("text", "") for p in (candidates[0].get("content") or {}).get("parts") or [] if "text" in p]
    text = "".join(parts) if parts else None
    # Thinking tokens are billed as output. Cached tokens are a part of the prompt's: google-genai's
    # GenerateContentResponseUsageMetadata, prompt_token_count "When `cached_content` is set, this also
    # includes the number of tokens in the cached content", cached_content_token_count.
    output = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
    return text, Usage(
        input_tokens=int(meta.get("promptTokenCount") or 0),
        output_tokens=output,
        cached_input_tokens=int(meta.get("cachedContentTokenCount") or 0),
    )


SPEC = ProviderSpec(
    name="gemini",
    title="Gemini",
    client="batchdrop.providers.gemini.client:GeminiProvider",
    realtime="batchdrop.providers.gemini.realtime:GeminiRealtime",
    emulator="batchdrop.local.emulator.gemini:GeminiEmulation",
    # A JSONL file of up to 2 GB; no documented request count, so we cap it.
    maxima=BatchLimits(max_requests=200_000, max_bytes=2048 * MB),
    defaults=BatchLimits(max_requests=100_000, max_bytes=190 * MB),
    routes=("gemini-", "models/gemini-"),
    # Standard real-time prices per million tokens: input, output, cached input (text), from
    # ai.google.dev/gemini-api/docs/pricing as transcribed by github.com/pydantic/genai-prices
    # prices/providers/google.yml (read there, not on Google's page itself). Gemini 2.5 Pro's prompts over
    # 200k tokens cost more, which this table does not model. Explicit caches also bill storage by the
    # hour, which no answer reports: not counted. The Batch API costs "50% of the standard cost"
    # (ai.google.dev/gemini-api/docs/optimization, "Batch API"); that its discount applies to cached
    # tokens as to the rest is assumed, not confirmed.
    prices={
        "gemini-2.0-flash": Price(0.10, 0.40, cached_input=0.025),
        "gemini-2.5-flash-lite": Price(0.10, 0.40, cached_input=0.01),
        "gemini-2.5-flash": Price(0.30, 2.50, cached_input=0.03),
        "gemini-2.5-pro": Price(1.25, 10.00, cached_input=0.125),
    },
    # Resource names ("models/gemini-2.5-flash") cost what the model does.
    price_model=lambda model: model.removeprefix("models/"),
    line=LineShape(
        keys=LINE_KEYS,
        markers=frozenset({"request"}),
        id_field="key",
        described="a Gemini batch line {key, request}",
        check=check_line,
    ),
    shape="gemini",
    translate=translate,
    model_rule=(
        lambda name: ".." not in name and MODEL(name.removeprefix("models/")),
        'up to 128 letters, digits, ".", "-" and "_", after an optional "models/" (e.g. gemini-2.5-flash)',
    ),
    readers=(read_response,),
    asks=asks,
    tokens=TokenFields(
        body="request",
        text=("contents", "systemInstruction", "tools"),
        configs=("generationConfig",),
        caps=("maxOutputTokens",),
    ),
    # Batches carry a display name naming our job and batch, so an orphan is found by its name.
    tags_batches=True,
    # "Batch jobs ... expire after 48 hours" (ai.google.dev/gemini-api/docs/batch-mode).
    window_hours=48,
    quota_unit="tokens",
)
