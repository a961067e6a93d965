"""OpenAI: the Batch API (Files and Batches). Azure OpenAI takes the same line shape (providers/azure).

Facts: docs/providers.md ("OpenAI"); the line format: docs/contract.md ("Input lines").
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import orjson

from batchdrop import models as m
from batchdrop.providers.lines import (
    BODY_RULE,
    ROLES,
    Reject,
    json_type,
    model_name,
    names,
    number,
    positive_int,
    short,
    stop_list,
    text_content,
    tools,
)
from batchdrop.providers.spec import (
    MB,
    BatchLimits,
    LineChecks,
    LineShape,
    LocalEnv,
    Price,
    ProviderSpec,
    TokenFields,
    Usage,
)
from batchdrop.providers.structured import canonical, response_format, schema_problem, strict_problem

# The batch endpoints we take: the schema's `url`, and the full check's (ENDPOINTS).
Endpoint = Literal["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions", "/v1/moderations"]
ENDPOINTS = frozenset(get_args(Endpoint))
LINE_KEYS = frozenset({"custom_id", "method", "url", "body"})
CHAT_URL = "/v1/chat/completions"
RESPONSES_URL = "/v1/responses"
EMBEDDINGS_URL = "/v1/embeddings"
# OpenAI docs, "Batch API", rate limits: "/v1/embeddings batches are also restricted to a maximum of
# 50,000 embedding inputs across all requests in the batch". Azure documents no such limit for its
# batches; the planner holds its batches to OpenAI's, which costs nothing but a smaller batch.
MAX_EMBEDDING_INPUTS = 50_000


def embedding_inputs(given: Any) -> int:
    """How many inputs an embeddings body's `input` holds, as OpenAI counts them: a string or one token
    array is one; a list of strings or of token arrays, one per item."""
    if isinstance(given, list) and given and not isinstance(given[0], int):
        return len(given)
    return 1


def line_inputs(payload: bytes) -> int:
    """The embedding inputs of an OpenAI batch line (for a request whose count was not kept)."""
    try:
        line = orjson.loads(payload)
        return embedding_inputs(line["body"].get("input")) if line.get("url") == EMBEDDINGS_URL else 0
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return 0


def to_chat(obj: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    out_messages: list[dict[str, Any]] = []
    if obj.get("system") is not None:
        out_messages.append({"role": "system", "content": text_content(obj["system"], '"system"')})
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role not in ROLES:
            raise Reject(m.INVALID_REQUEST, f'"messages"[{i}].role {role!r} must be system, user or assistant')
        out_messages.append({"role": role, "content": text_content(msg["content"], f'"messages"[{i}].content')})
    body: dict[str, Any] = {"model": obj["model"], "messages": out_messages}
    if obj.get("max_tokens") is not None:
        body["max_completion_tokens"] = positive_int(obj["max_tokens"], '"max_tokens"')
    for key in ("temperature", "top_p"):
        if obj.get(key) is not None:
            body[key] = number(obj[key], key, 0, 2 if key == "temperature" else 1)
    if obj.get("stop") is not None:
        body["stop"] = stop_list(obj["stop"])
    if obj.get("tools") is not None:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t["name"], "description": t["description"], "parameters": t["schema"]},
            }
            for t in tools(obj["tools"])
        ]
    wanted = response_format(obj)
    if wanted is not None:
        if wanted.strict:
            wanted.object_root("OpenAI's strict mode", 'its Structured Outputs guide: "the root ... must be an object"')
            problem = strict_problem(wanted.schema)
            if problem is not None:
                raise Reject(
                    m.INVALID_REQUEST,
                    f'"response_format.json_schema.schema" is not one OpenAI\'s strict mode takes: {problem}; '
                    'fix the schema or set "strict": false',
                )
        body["response_format"] = wanted.as_openai()
    return body


def check_format(body: dict[str, Any]) -> None:
    """A batch line's own json_schema format (chat `response_format`, Responses `text.format`), whose
    answer batchdrop checks: its schema must be one jsonschema can check with. The rest of the format is
    the API's to judge, per request, as it does."""
    given = body.get("response_format")
    where = '"body.response_format.json_schema.schema"'
    spec = given.get("json_schema") if isinstance(given, dict) and given.get("type") == "json_schema" else None
    if not isinstance(spec, dict):
        text = body.get("text")
        spec = text.get("format") if isinstance(text, dict) else None
        where = '"body.text.format.schema"'
        if not (isinstance(spec, dict) and spec.get("type") == "json_schema"):
            return
    schema = spec.get("schema")
    if schema is None:
        return
    if not isinstance(schema, dict):
        raise Reject(m.INVALID_REQUEST, f"{where} must be a JSON Schema object, got {json_type(schema)}")
    problem = schema_problem(canonical(schema))
    if problem is not None:
        raise Reject(m.INVALID_REQUEST, f"{where} is not a valid JSON Schema: {problem}")


def asks(line: dict[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    """The json_schema of a chat line's `response_format` or a Responses line's `text.format`: the
    answer is the message's text (docs/contract.md "Structured outputs")."""
    body = line.get("body")
    if not isinstance(body, dict):
        return None
    if line.get("url") == RESPONSES_URL:
        text = body.get("text")
        spec = text.get("format") if isinstance(text, dict) else None
    else:
        given = body.get("response_format")
        spec = given.get("json_schema") if isinstance(given, dict) else None
        spec = spec if isinstance(given, dict) and given.get("type") == "json_schema" else None
    if not isinstance(spec, dict) or (line.get("url") == RESPONSES_URL and spec.get("type") != "json_schema"):
        return None
    schema = spec.get("schema")
    return (schema, None) if isinstance(schema, dict) else None


def check_line(v: LineChecks, number: int, raw: bytes, obj: dict[str, Any], target: str) -> m.Request:
    custom_id = v.take_id(obj, number, required=True)
    extra = obj.keys() - LINE_KEYS
    if extra:
        raise Reject(m.INVALID_REQUEST, f"unexpected field(s) {names(extra)} in an OpenAI batch line")
    if obj.get("method") != "POST":
        raise Reject(m.INVALID_REQUEST, f'"method" must be "POST", got {short(obj.get("method"))}')
    url = obj.get("url")
    if url not in ENDPOINTS:
        raise Reject(
            m.UNSUPPORTED_ENDPOINT,
            f'"url" {short(url)} is not a batch endpoint we support; use one of ' + ", ".join(sorted(ENDPOINTS)),
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        raise Reject(m.INVALID_REQUEST, f'"body" must be a JSON object, got {json_type(body)}')
    model = model_name(body.get("model"), '"body.model"')
    if body.get("stream"):
        raise Reject(m.INVALID_REQUEST, '"body.stream" must be false: batch requests cannot stream')
    provider = v.enabled(target, model)
    if url in (CHAT_URL, RESPONSES_URL):
        check_format(body)
    payload = raw.strip()
    request = v.request(number, custom_id, provider, f"{url} {model}", model, payload)
    if url == EMBEDDINGS_URL:
        request.inputs = embedding_inputs(body.get("input"))
    return request


def translate(
    obj: dict[str, Any], messages: list[dict[str, Any]], custom_id: str, model: str, default_max_tokens: int
) -> tuple[str, str, bytes]:
    """A neutral line as a chat-completions batch line."""
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": to_chat(obj, messages)}
    return f"{CHAT_URL} {model}", model, orjson.dumps(line)


def read_chat(body: dict[str, Any]) -> tuple[str | None, Usage] | None:
    """Chat completions, completions and Responses bodies."""
    usage = body.get("usage") or {}
    kind = body.get("object") or body.get("type")
    text: str | None = None
    if kind == "chat.completion":
        choices = body.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        text = content if isinstance(content, str) else None
        return text, _usage(usage, "prompt_tokens", "completion_tokens", "prompt_tokens_details")
    if kind == "text_completion":
        choices = body.get("choices") or [{}]
        text = choices[0].get("text")
        return text, _usage(usage, "prompt_tokens", "completion_tokens", "prompt_tokens_details")
    if kind == "response":
        parts = [
            c.get("text", "")
            for item in body.get("output") or []
            if item.get("type") == "message"
            for c in item.get("content") or []
            if c.get("type") == "output_text"
        ]
        text = "".join(parts) if parts else None
        return text, _usage(usage, "input_tokens", "output_tokens", "input_tokens_details")
    return None


def _usage(usage: dict[str, Any], given: str, made: str, details: str) -> Usage:
    """Cached tokens and cache writes are parts of the prompt tokens: openai-python's CompletionUsage
    (`prompt_tokens_details.cached_tokens`, `.cache_write_tokens`: "the unadjusted number of prompt
    tokens written to cache") and ResponseUsage (`input_tokens_details.cached_tokens`,
    `.cache_write_tokens`)."""
    parts = usage.get(details) or {}
    return Usage(
        input_tokens=int(usage.get(given) or 0),
        output_tokens=int(usage.get(made) or 0),
        cached_input_tokens=int(parts.get("cached_tokens") or 0),
        cache_write_input_tokens=int(parts.get("cache_write_tokens") or 0),
    )


SPEC = ProviderSpec(
    name="openai",
    title="OpenAI",
    client="batchdrop.providers.openai.client:OpenAIProvider",
    realtime="batchdrop.providers.openai.realtime:OpenAIRealtime",
    emulator="batchdrop.local.emulator.openai:OpenAIEmulation",
    maxima=BatchLimits(max_requests=50_000, max_bytes=200 * MB, max_inputs=MAX_EMBEDDING_INPUTS),
    defaults=BatchLimits(max_requests=50_000, max_bytes=190 * MB, max_inputs=MAX_EMBEDDING_INPUTS),
    inputs=(EMBEDDINGS_URL + " ", line_inputs),
    routes=("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-", "omni-moderation"),
    # Real-time list prices per million tokens: input, output, cached input (OpenAI's pricing page,
    # developers.openai.com/api/docs/pricing, as transcribed by github.com/pydantic/genai-prices
    # prices/providers/openai.yml; read there, not on OpenAI's page itself). Writing to the cache costs
    # nothing more on these models: "Cache write charges: 1.25x the uncached input token rate" on GPT-5.6
    # and later, "No additional cache-write fee" on earlier ones (OpenAI's prompt-caching guide,
    # developers.openai.com/api/docs/guides/prompt-caching). The Batch API is "a 50% cost discount"
    # (the Batch guide); its price table lists cached input at half the standard cached rate for the
    # models it lists it for (quoted in BerriAI/litellm PR 39861), which is taken to hold for these
    # models too: not confirmed for each of them.
    prices={
        "gpt-4o-mini": Price(0.15, 0.60, cached_input=0.075),
        "gpt-4o": Price(2.50, 10.00, cached_input=1.25),
        "gpt-4.1-nano": Price(0.10, 0.40, cached_input=0.025),
        "gpt-4.1-mini": Price(0.40, 1.60, cached_input=0.10),
        "gpt-4.1": Price(2.00, 8.00, cached_input=0.50),
        "gpt-5-nano": Price(0.05, 0.40, cached_input=0.005),
        "gpt-5-mini": Price(0.25, 2.00, cached_input=0.025),
        "gpt-5": Price(1.25, 10.00, cached_input=0.125),
        "o4-mini": Price(1.10, 4.40, cached_input=0.275),
        "o3-mini": Price(1.10, 4.40, cached_input=0.55),
        "o3": Price(2.00, 8.00, cached_input=0.50),
        "text-embedding-3-small": Price(0.02, 0.0),
        "text-embedding-3-large": Price(0.13, 0.0),
    },
    line=LineShape(
        keys=LINE_KEYS,
        markers=frozenset({"body", "url", "method"}),
        id_field="custom_id",
        described="an OpenAI batch line {custom_id, method, url, body}",
        check=check_line,
    ),
    fast="batchdrop.providers.openai.fast:FAST",
    shape="openai",
    translate=translate,
    model_rule=BODY_RULE,
    readers=(read_chat,),
    asks=asks,
    tokens=TokenFields(
        body="body",
        text=("system", "messages", "input", "prompt", "instructions", "tools"),
        caps=("max_tokens", "max_completion_tokens", "max_output_tokens"),
    ),
    # Batches carry our job id and batch key in metadata, so an orphan is found by its tag.
    tags_batches=True,
    quota_unit="tokens",
    local=LocalEnv(base_path="/v1"),
)
