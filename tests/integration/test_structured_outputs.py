"""Structured outputs through the whole pipeline on the embedded stack (docs/contract.md "Structured
outputs"): neutral lines with a response_format for all five providers (Bedrock's Nova and Claude), and a
provider's own json_schema line, on both lanes, as `batchdrop local run` runs them; the emulator's
`schema_mismatch_rate` turning answers into `schema_mismatch` error lines, with the counts kept."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.local.run import RunReport, run_files
from batchdrop.local.stack import StackOptions
from tests.helpers import read_jsonl, shared_moto_endpoint

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "source": {"type": "object", "properties": {"url": {"type": "string", "format": "uri"}}, "required": ["url"]},
    },
    "required": ["sentiment", "score", "tags", "source"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA}}
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "nova": "amazon.nova-lite-v1:0",
    "claude": "anthropic.claude-3-5-haiku-20241022-v1:0",
}
PER_MODEL = 5  # the stack's Bedrock minimum below, so the batch lane runs Bedrock's batches too
# The provider whose mechanism is a forced tool: its `text` is the JSON of the tool's input.
TOOLS = {"anthropic", "bedrock"}


def neutral(model: str, custom_id: str, structured: bool = True) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "model": model,
        "messages": [{"role": "user", "content": f"Review {custom_id}"}],
        "max_tokens": 64,
    }
    if structured:
        line["response_format"] = FORMAT
    return line


def write(path: Path, lines: list[dict[str, Any]]) -> str:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return str(path)


def files(tmp_path: Path) -> tuple[list[str], list[str], int, set[str]]:
    """(files, their keys, structured requests, ids without a schema): every provider's structured
    lines, an OpenAI line of its own with a json_schema, and lines that ask for nothing."""
    mixed = [neutral(model, f"{name}-{i}") for name, model in MODELS.items() for i in range(PER_MODEL)]
    own = {
        "custom_id": "own-0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "response_format": FORMAT},
    }
    plain = [neutral(MODELS["openai"], "plain-0", structured=False), neutral(MODELS["gemini"], "plain-1", False)]
    azure = [neutral("my-deployment", f"azure-{i}") for i in range(3)]
    paths = [write(tmp_path / "mixed.jsonl", [*mixed, own, *plain]), write(tmp_path / "azure.jsonl", azure)]
    keys = ["inputs/mixed.jsonl", "inputs/azure/structured.jsonl"]
    return paths, keys, len(mixed) + 1 + len(azure), {"plain-0", "plain-1"}


Lines = list[dict[str, Any]]


def run(tmp_path: Path, lane: str, knobs: EmulatorKnobs) -> tuple[Lines, Lines, Lines]:
    paths, keys, _, _ = files(tmp_path)
    options = StackOptions(external_aws=shared_moto_endpoint(), knobs=knobs, bedrock_min_records=PER_MODEL)
    options = dataclasses.replace(options, lane=lane)
    out = tmp_path / "out"
    report = run_files(paths, str(out), options, keys=keys, timeout=240)
    return _outputs(report, out)


def _outputs(report: RunReport, out: Path) -> tuple[Lines, Lines, Lines]:
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    summaries = []
    for job in report.jobs:
        summary = job.summary or {}
        folder = out / Path(summary["results"].split("/", 3)[3]).parent
        results += read_jsonl((folder / "results.jsonl").read_bytes())
        errors += read_jsonl((folder / "errors.jsonl").read_bytes())
        summaries.append(summary)
        counts = summary["counts"]
        assert counts["lines"] == counts["invalid"] + counts["submitted"], summary
        assert counts["submitted"] == counts["succeeded"] + counts["failed"], summary
    return results, errors, summaries


@pytest.mark.parametrize("lane", ["batch", "realtime"])
def test_every_provider_answers_a_response_format_with_parsed_json_that_matches_it(tmp_path: Path, lane: str) -> None:
    results, errors, summaries = run(tmp_path, lane, EmulatorKnobs(latency=0.0))
    _, _, structured, plain = files(tmp_path)
    assert errors == []
    assert all(s["status"] == "completed" for s in summaries)
    assert {r["lane"] for r in results} == {lane}
    assert {r["provider"] for r in results} == {"openai", "anthropic", "azure", "gemini", "bedrock"}
    with_schema = [r for r in results if r["custom_id"] not in plain]
    assert len(with_schema) == structured
    validator = Draft202012Validator(SCHEMA)
    for result in with_schema:
        assert validator.is_valid(result["parsed"]), result
        assert orjson.loads(result["text"]) == result["parsed"], result
        if result["provider"] in TOOLS:
            # A forced tool's answer: `text` is the JSON of its input, the model's own text is not used.
            assert result["text"] == orjson.dumps(result["parsed"]).decode()
    # A line that asked for nothing has no `parsed` at all, as before structured outputs.
    assert all("parsed" not in r and r["text"].startswith("echo") for r in results if r["custom_id"] in plain)


@pytest.mark.parametrize("lane", ["batch", "realtime"])
def test_answers_that_do_not_match_become_schema_mismatch_error_lines(tmp_path: Path, lane: str) -> None:
    results, errors, summaries = run(tmp_path, lane, EmulatorKnobs(latency=0.0, schema_mismatch_rate=0.5, seed=7))
    _, _, structured, plain = files(tmp_path)
    mismatched = [e for e in errors if e["code"] == "schema_mismatch"]
    assert errors == mismatched
    assert 0 < len(mismatched) < structured
    assert len(mismatched) + len([r for r in results if r["custom_id"] not in plain]) == structured
    for summary in summaries:
        counts = summary["counts"]
        if counts["failed"]:
            assert summary["status"] == ("partial" if counts["succeeded"] else "failed"), summary
    assert sum(s["counts"]["failed"] for s in summaries) == len(mismatched)
    for error in mismatched:
        assert (error["stage"], error["lane"]) == ("provider", lane), error
        assert error["batch_id"], error
        assert error["message"].startswith(("the answer is not JSON", "the answer does not match the schema: $")), error
        assert isinstance(error["detail"], str), error
        assert error["detail"], error
    # Both kinds: text that is not JSON, and JSON that breaks the schema, with the validator's path.
    assert any("does not match the schema: $" in e["message"] for e in mismatched)
    assert {e["provider"] for e in mismatched} >= {"anthropic", "bedrock"}
    validator = Draft202012Validator(SCHEMA)
    assert all(validator.is_valid(r["parsed"]) for r in results if r["custom_id"] not in plain)
