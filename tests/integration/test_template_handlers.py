"""The handlers the CDK template names exist, read the settings the template sets, and run against moto
with the sample events in events/aws/."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.config import Settings
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import LocalContext
from batchdrop.local.emulator import EmulatorKnobs
from tests.helpers import local_stack
from tests.infra.synth_support import synth

EVENTS = Path(__file__).resolve().parents[2] / "events"


@pytest.fixture(scope="module")
def functions() -> dict[str, dict[str, Any]]:
    template = synth()
    return {
        r["Properties"]["Handler"]: r["Properties"]
        for r in template.resources("AWS::Lambda::Function").values()
        if r["Properties"].get("Handler", "").startswith("batchdrop.")
    }


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0))) as local:
        yield local


def test_the_template_names_our_handlers(functions: dict[str, dict[str, Any]]) -> None:
    assert sorted(functions) == [
        "batchdrop.handlers.complete.handler",
        "batchdrop.handlers.poll.handler",
        "batchdrop.handlers.realtime.handler",
        "batchdrop.handlers.submit.handler",
        "batchdrop.handlers.webhook.handler",
    ]
    for name in functions:
        module, _, attr = name.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attr))


def test_the_settings_the_template_sets_are_enough_to_start(functions: dict[str, dict[str, Any]]) -> None:
    for handler, props in functions.items():
        env = props["Environment"]["Variables"]
        # CloudFormation references render as objects; any non-empty string stands in for them here.
        resolved = {k: v if isinstance(v, str) else "resolved-at-deploy" for k, v in env.items()}
        settings = Settings.from_env(resolved)
        assert set(settings.providers) == {"openai", "anthropic"}, handler
        assert all(p.secret_arn for p in settings.providers.values()), handler


def _event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / "aws" / name).read_text())
    return event


def test_the_sample_events_run_through_the_template_handlers(
    functions: dict[str, dict[str, Any]], stack: s.LocalStack
) -> None:
    handlers = {n.split(".")[2]: importlib.import_module(n.rpartition(".")[0]).handler for n in functions}
    # The sample S3 event names a URL-encoded key; put the sample file there and point the event at
    # the version moto gave it.
    put = _event("s3-put.json")
    key = "inputs/my evals/openai-chat-small.jsonl"
    stack.put(key, (EVENTS / "openai-chat-small.jsonl").read_bytes())
    head = aws.client("s3").head_object(Bucket=s.BUCKET, Key=key)
    put["Records"][0]["s3"]["object"]["versionId"] = head["VersionId"]
    out = handlers["submit"](put, LocalContext("submit"))
    assert out["jobs"][0]["outcome"] == "submitted"
    job_id = out["jobs"][0]["job_id"]

    report = handlers["poll"](_event("scheduled.json"), LocalContext("poll"))
    assert report["looked_at"] >= 1

    sqs_event = _event("sqs-completion.json")
    sqs_event["Records"][0]["body"] = json.dumps({"job_id": job_id})
    result = handlers["complete"](sqs_event, LocalContext("complete"))
    assert result == {"outcomes": ["completed"]}
    assert JobStore(s.TABLE).get_job(job_id)["status"] == "completed"  # type: ignore[index]
