"""The output lines of docs/contract.md "Outputs", built in one place from provider answers."""

from __future__ import annotations

from typing import Any

from batchdrop import models as m


def extract(body: dict[str, Any]) -> tuple[str | None, int, int]:
    """(generated text, input tokens, output tokens) from any response body we support."""
    usage = body.get("usage") or {}
    kind = body.get("object") or body.get("type")
    text: str | None = None
    if kind == "chat.completion":
        choices = body.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        text = content if isinstance(content, str) else None
        return text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    if kind == "text_completion":
        choices = body.get("choices") or [{}]
        text = choices[0].get("text")
        return text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    if kind == "response":
        parts = [
            c.get("text", "")
            for item in body.get("output") or []
            if item.get("type") == "message"
            for c in item.get("content") or []
            if c.get("type") == "output_text"
        ]
        text = "".join(parts) if parts else None
        return text, int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    if kind == "message":
        parts = [c.get("text", "") for c in body.get("content") or [] if c.get("type") == "text"]
        text = "".join(parts) if parts else None
        return text, int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    if "candidates" in body or "usageMetadata" in body:  # Gemini GenerateContentResponse
        meta = body.get("usageMetadata") or {}
        candidates = body.get("candidates") or [{}]
        parts = [p.get("text", "") for p in (candidates[0].get("content") or {}).get("parts") or [] if "text" in p]
        text = "".join(parts) if parts else None
        # Thinking tokens are billed as output.
        output = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
        return text, int(meta.get("promptTokenCount") or 0), output
    if isinstance(body.get("output"), dict) and "message" in body["output"]:  # Bedrock: Amazon Nova
        content = (body["output"]["message"] or {}).get("content") or []
        parts = [c["text"] for c in content if isinstance(c.get("text"), str)]
        text = "".join(parts) if parts else None
        return text, int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0)
    if "generation" in body:  # Bedrock: Meta Llama
        return (
            body.get("generation"),
            int(body.get("prompt_token_count") or 0),
            int(body.get("generation_token_count") or 0),
        )
    # Embeddings ("list") and moderations: no text; embeddings report prompt tokens only.
    return None, int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0), 0


def result_line(
    custom_id: str, line: int, provider: str, model: str, batch_id: str, body: dict[str, Any]
) -> tuple[dict[str, Any], int, int]:
    text, tokens_in, tokens_out = extract(body)
    return (
        {
            "custom_id": custom_id,
            "line": line,
            "provider": provider,
            "model": body.get("model") or model,
            "batch_id": batch_id,
            "status": "succeeded",
            "text": text,
            "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
            "response": body,
        },
        tokens_in,
        tokens_out,
    )


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
) -> dict[str, Any]:
    return {
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


def validation_error(invalid: m.Invalid) -> dict[str, Any]:
    return error_line(
        custom_id=invalid.custom_id,
        line=invalid.line,
        stage="validation",
        code=invalid.code,
        message=invalid.message,
    )
