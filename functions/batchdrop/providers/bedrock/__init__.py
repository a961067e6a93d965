"""Amazon Bedrock batch inference: JSONL records {recordId, modelInput} in S3, one model per job, run
as a service role (no API key). Claude, Nova and Llama take neutral lines.

Facts: docs/providers.md ("Bedrock"); the line format: docs/contract.md ("Input lines").
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from batchdrop import models as m
from batchdrop.providers import anthropic
from batchdrop.providers.lines import (
    Reject,
    json_type,
    model_name,
    names,
    number,
    positive_int,
    sampling,
    shown,
    split_system,
    tools,
)
from batchdrop.providers.spec import (
    MB,
    BatchLimits,
    LineChecks,
    LineShape,
    LocalEnv,
    Option,
    Price,
    ProviderSpec,
    TokenFields,
    Usage,
)
from batchdrop.providers.structured import TOOL_DESCRIPTION, response_format

LINE_KEYS = frozenset({"recordId", "modelId", "modelInput"})
# The Anthropic Messages version Bedrock's Claude models take in the request body.
ANTHROPIC_VERSION = "bedrock-2023-05-31"
# Bedrock model ids by family, after an optional cross-region geography ("us.", "eu.", ...).
FAMILY = re.compile(r"^(?:[a-z]+\.)?(anthropic\.claude-|amazon\.nova-|meta\.llama)")
CLAUDE = re.compile(r"^(?:[a-z]+\.)?anthropic\.(claude-.+?)(?:-v\d+(?::\d+)?)?$")
# Bedrock: the `ModelId` shape of CreateModelInvocationJob in botocore's service model
# (botocore/data/bedrock/2023-04-20/service-2.json: 1 to 2048 characters, this pattern).
MODEL = re.compile(
    r"(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:(([0-9]{12}:custom-model/[a-z0-9-]{1,63}[.]{1}[a-z0-9-:]{1,63}"
    r"/[a-z0-9]{12}$)|(:foundation-model/([a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}([.]?[a-z0-9-]{1,63})"
    r"([:][a-z0-9-]{1,63}){0,2})|(([0-9a-zA-Z][_-]?)+)$)|([0-9]{12}:(inference-profile|"
    r"application-inference-profile)/[a-zA-Z0-9-:.]+$)))|([a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}"
    r"([.]?[a-z0-9-]{1,63})([:][a-z0-9-]{1,63}){0,2})|(([0-9a-zA-Z][_-]?)+)"
).fullmatch


def to_model_input(
    obj: dict[str, Any], messages: list[dict[str, Any]], model: str, default_max_tokens: int
) -> dict[str, Any]:
    """The InvokeModel body of the model's family: Claude (Anthropic Messages), Nova or Llama."""
    family = FAMILY.match(model)
    kind = family.group(1) if family else ""
    if kind == "anthropic.claude-":
        params = anthropic.to_params(obj, messages, default_max_tokens, "Claude on Bedrock")
        del params["model"]
        return {"anthropic_version": ANTHROPIC_VERSION, **params}
    if kind == "amazon.nova-":
        system, turns = split_system(obj, messages)
        body: dict[str, Any] = {
            "schemaVersion": "messages-v1",
            "messages": [{"role": role, "content": [{"text": t}]} for role, t in turns],
        }
        if system:
            body["system"] = [{"text": t} for t in system]
        config = sampling(obj, max_tokens="maxTokens", max_temperature=1)
        if config:
            body["inferenceConfig"] = config
        if obj.get("tools") is not None:
            body["toolConfig"] = {
                "tools": [
                    {
                        "toolSpec": {
                            "name": t["name"],
                            "description": t["description"],
                            "inputSchema": {"json": t["schema"]},
                        }
                    }
                    for t in tools(obj["tools"])
                ]
            }
        wanted = response_format(obj)
        if wanted is not None:
            # A forced tool, as for Claude: Nova's toolChoice takes {"tool": {"name"}} (Amazon Nova user
            # guide, "Tool use": toolChoice auto, any or tool; botocore bedrock-runtime ToolChoice), and the
            # answer is the toolUse block's input.
            wanted.object_root("Nova on Bedrock", "a toolSpec's inputSchema.json describes the tool's input object")
            tool = {"name": wanted.name, "description": wanted.description or TOOL_DESCRIPTION}
            body["toolConfig"] = {
                "tools": [{"toolSpec": {**tool, "inputSchema": {"json": wanted.schema}}}],
                "toolChoice": {"tool": {"name": wanted.name}},
            }
        return body
    if kind == "meta.llama":
        if obj.get("response_format") is not None:
            raise Reject(
                m.INVALID_REQUEST,
                'Llama on Bedrock takes no "response_format": its InvokeModel body (prompt, temperature, top_p, '
                "max_gen_len) has no tool or schema to force a JSON answer with; use a Claude or Nova model",
            )
        for unsupported in ("tools", "stop"):
            if obj.get(unsupported) is not None:
                raise Reject(
                    m.INVALID_REQUEST,
                    f'Llama on Bedrock takes no "{unsupported}"; remove it or use a Bedrock batch line',
                )
        system, turns = split_system(obj, messages)
        llama: dict[str, Any] = {"prompt": llama3_prompt(system, turns)}
        if obj.get("max_tokens") is not None:
            llama["max_gen_len"] = positive_int(obj["max_tokens"], '"max_tokens"')
        if obj.get("temperature") is not None:
            llama["temperature"] = number(obj["temperature"], "temperature", 0, 1)
        if obj.get("top_p") is not None:
            llama["top_p"] = number(obj["top_p"], "top_p", 0, 1)
        return llama
    raise Reject(
        m.INVALID_REQUEST,
        "neutral lines reach Bedrock for anthropic.claude-*, amazon.nova-* and meta.llama* models, "
        f"not {shown(model)}; "
        "write a Bedrock batch line {recordId, modelId, modelInput} for it",
    )


def llama3_prompt(system: list[str], turns: list[tuple[str, str]]) -> str:
    """Llama 3's chat template: Bedrock's Llama models take one prompt string, not messages."""
    parts = ["<|begin_of_text|>"]
    if system:
        parts.append("<|start_header_id|>system<|end_header_id|>\n\n" + "\n\n".join(system) + "<|eot_id|>")
    for role, text in turns:
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def bedrock_to_anthropic(payload: bytes, model: str) -> tuple[str, bytes] | None:
    """(Anthropic model, Anthropic batch line) for a Bedrock Claude record (the fallback for a job
    under Bedrock's minimum), or None if the model is not Claude or the body is not one Anthropic
    takes as it is."""
    match = CLAUDE.match(model)
    if match is None:
        return None
    record = orjson.loads(payload)
    body = dict(record["modelInput"])
    body.pop("anthropic_version", None)
    if not isinstance(body.get("messages"), list) or not isinstance(body.get("max_tokens"), int):
        return None
    anthropic_model = match.group(1)
    return anthropic_model, orjson.dumps(
        {"custom_id": record["recordId"], "params": {"model": anthropic_model, **body}}
    )


def check_line(v: LineChecks, number: int, raw: bytes, obj: dict[str, Any], target: str) -> m.Request:
    """{"recordId", "modelId", "modelInput"}: Bedrock's record, plus the model, which Bedrock takes
    per job and we therefore need on each line."""
    custom_id = v.take_id(obj, number, required=True, field="recordId")
    extra = obj.keys() - LINE_KEYS
    if extra:
        raise Reject(m.INVALID_REQUEST, f"unexpected field(s) {names(extra)} in a Bedrock batch line")
    model = model_name(obj.get("modelId"), '"modelId"', "amazon.nova-lite-v1:0")
    model_input = obj.get("modelInput")
    if not isinstance(model_input, dict) or not model_input:
        raise Reject(
            m.INVALID_REQUEST,
            '"modelInput" must be the model\'s InvokeModel request body (a JSON object), got ' + json_type(model_input),
        )
    provider = v.enabled(target, model)
    payload = orjson.dumps({"recordId": custom_id, "modelInput": model_input})
    return v.request(number, custom_id, provider, model, model, payload)


def translate(
    obj: dict[str, Any], messages: list[dict[str, Any]], custom_id: str, model: str, default_max_tokens: int
) -> tuple[str, str, bytes]:
    model_input = to_model_input(obj, messages, model, default_max_tokens)
    return model, model, orjson.dumps({"recordId": custom_id, "modelInput": model_input})


def asks(line: dict[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    """What a record's body asks its answer to match: Claude's (Messages params: a forced tool) or
    Nova's, the inputSchema.json of the tool its `toolConfig.toolChoice.tool` forces."""
    body = line.get("modelInput")
    if not isinstance(body, dict):
        return None
    config = body.get("toolConfig")
    if not isinstance(config, dict):
        return anthropic.params_asks(body)
    choice = config.get("toolChoice")
    forced = choice.get("tool") if isinstance(choice, dict) else None
    name = forced.get("name") if isinstance(forced, dict) else None
    for tool in config.get("tools") or ():
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if isinstance(spec, dict) and name is not None and spec.get("name") == name:
            schema = (spec.get("inputSchema") or {}).get("json")
            return (schema, name) if isinstance(schema, dict) else None
    return None


def tool_input(body: dict[str, Any], name: str) -> Any:
    """The input of the answer's call of the tool `name`: Claude's `tool_use` block, or Nova's
    `toolUse` content block ({"toolUse": {"toolUseId", "name", "input"}})."""
    if "content" in body:
        return anthropic.tool_input(body, name)
    output = body.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    for block in (message or {}).get("content") or ():
        use = block.get("toolUse") if isinstance(block, dict) else None
        if isinstance(use, dict) and use.get("name") == name:
            return use.get("input")
    return None


def read_nova(body: dict[str, Any]) -> tuple[str | None, Usage] | None:
    """Amazon Nova's response (Claude's is a Messages response: providers/anthropic)."""
    if not (isinstance(body.get("output"), dict) and "message" in body["output"]):
        return None
    usage = body.get("usage") or {}
    content = (body["output"]["message"] or {}).get("content") or []
    parts = [c["text"] for c in content if isinstance(c.get("text"), str)]
    text = "".join(parts) if parts else None
    # Nova's cacheReadInputTokenCount and cacheWriteInputTokenCount are left out: whether inputTokens
    # counts them, and what Bedrock charges for them, is not confirmed here.
    return text, Usage(
        input_tokens=int(usage.get("inputTokens") or 0), output_tokens=int(usage.get("outputTokens") or 0)
    )


def read_llama(body: dict[str, Any]) -> tuple[str | None, Usage] | None:
    """Meta Llama's response."""
    if "generation" not in body:
        return None
    usage = Usage(
        input_tokens=int(body.get("prompt_token_count") or 0),
        output_tokens=int(body.get("generation_token_count") or 0),
    )
    return body.get("generation"), usage


# Cross-region inference profiles ("us.amazon.nova-lite-v1:0") cost what the model does.
_GEOGRAPHY = re.compile(r"^[a-z]+\.(?=(?:anthropic|amazon|meta)\.)")

SPEC = ProviderSpec(
    name="bedrock",
    title="Bedrock",
    client="batchdrop.providers.bedrock.client:BedrockProvider",
    realtime="batchdrop.providers.bedrock.realtime:BedrockRealtime",
    emulator="batchdrop.local.emulator.bedrock:BedrockEmulation",
    # 50,000 records and 1 GB per input file, at least 100 records per job.
    maxima=BatchLimits(max_requests=50_000, max_bytes=1024 * MB, min_requests=100),
    defaults=BatchLimits(max_requests=50_000, max_bytes=190 * MB, min_requests=100),
    # Model ids, and the cross-region inference profiles that prefix them with a geography.
    routes=(
        "anthropic.claude-",
        "amazon.nova-",
        "meta.llama",
        "us.anthropic.claude-",
        "eu.anthropic.claude-",
        "apac.anthropic.claude-",
        "global.anthropic.claude-",
        "us.amazon.nova-",
        "eu.amazon.nova-",
        "apac.amazon.nova-",
        "us.meta.llama",
    ),
    # On-demand prices in us-east-1 per million tokens. Batch inference is half of these (docs/providers.md:
    # "All five charge about 50% of their real-time price for batch work"; AWS's page, aws.amazon.com/
    # bedrock/pricing, was not read again for this table). Claude's cache rates are taken as Anthropic's
    # (1.25x and 2x the input to write, 0.1x to read: the figures of Anthropic's own table for these
    # models), and its batch discount as applying to them too: neither is confirmed on AWS's page.
    prices={
        "anthropic.claude-3-haiku": anthropic.claude(0.25, 0.30, 0.50, 0.03, 1.25),
        "anthropic.claude-3-5-haiku": anthropic.claude(0.80, 1.00, 1.60, 0.08, 4.00),
        "anthropic.claude-haiku-4-5": anthropic.claude(1.00, 1.25, 2.00, 0.10, 5.00),
        "anthropic.claude-3-7-sonnet": anthropic.claude(3.00, 3.75, 6.00, 0.30, 15.00),
        "anthropic.claude-sonnet-4": anthropic.claude(3.00, 3.75, 6.00, 0.30, 15.00),
        "amazon.nova-micro": Price(0.035, 0.14),
        "amazon.nova-lite": Price(0.06, 0.24),
        "amazon.nova-pro": Price(0.80, 3.20),
        "meta.llama3-1-8b-instruct": Price(0.22, 0.22),
        "meta.llama3-1-70b-instruct": Price(0.72, 0.72),
        "meta.llama3-3-70b-instruct": Price(0.72, 0.72),
    },
    price_model=lambda model: _GEOGRAPHY.sub("", model),
    line=LineShape(
        keys=LINE_KEYS,
        markers=frozenset({"modelInput"}),
        id_field="recordId",
        described="a Bedrock batch line {recordId, modelId, modelInput}",
        check=check_line,
    ),
    shape="bedrock",
    translate=translate,
    model_rule=(
        MODEL,
        "a Bedrock model id, inference profile or model ARN of up to 2048 characters "
        "(e.g. amazon.nova-lite-v1:0, us.anthropic.claude-3-5-haiku-20241022-v1:0)",
    ),
    readers=(read_nova, read_llama),
    asks=asks,
    tool_input=tool_input,
    tokens=TokenFields(
        body="modelInput",
        text=("system", "messages", "prompt", "tools"),
        configs=("inferenceConfig",),
        caps=("max_tokens", "maxTokens", "max_gen_len"),
    ),
    # Calls are signed with the functions' own IAM roles: no API key.
    needs_key=False,
    # Jobs carry a name (and tags) derived from our job id and batch key, and creates are idempotent
    # through clientRequestToken: an orphan is found by its name.
    tags_batches=True,
    quota_unit="batches",
    options=(
        # The service role its jobs run as (the stack creates it).
        Option("ROLE_ARN", required="Bedrock batch jobs run as a service role (the stack creates it)"),
        # The account's minimum records per job (its quota per model; 100 unless raised).
        Option("MIN_RECORDS", context="bedrock_min_records", whole=True),
        # Where a job under the minimum may go instead (only Claude has a request format both share).
        Option("FALLBACK", context="bedrock_fallback"),
    ),
    fallbacks={"anthropic": bedrock_to_anthropic},
    # boto3 itself: the service-specific endpoint wins over AWS_ENDPOINT_URL (moto). Jobs go to the
    # `bedrock` service, real-time calls to `bedrock-runtime`; the emulator serves both.
    local=LocalEnv(
        base_path=None,
        endpoint_env="AWS_ENDPOINT_URL_BEDROCK",
        runtime_endpoint_env="AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
        values={"ROLE_ARN": "arn:aws:iam::123456789012:role/batchdrop-bedrock-batch"},
    ),
)
