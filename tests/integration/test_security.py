"""Security (issue 5, item 5), on the embedded stack through the real handlers:

- prompts and completions are never logged, even at DEBUG;
- the provider API key is never logged, written to S3 or DynamoDB, or put in the functions' environment;
- S3 keys are data: `..`, `.`, spaces, `+`, `%`, unicode, very long names and empty segments give a job
  whose input key is the uploaded key and whose outputs sit under outputs/<rest>/<job_id>/, and copying
  outputs/ to a folder (`batchdrop local run --out DIR`) never writes outside that folder;
- objects outside inputs/ never start a job, whatever event arrives for them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import orjson
import pytest

from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.handlers import use_deps
from batchdrop.handlers.submit import handler as submit_handler
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher, LocalContext
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.observability import SERVICE
from tests.helpers import (
    all_notifications,
    anthropic_line,
    drive,
    ended,
    jobs_by_key,
    jsonl,
    local_stack,
    neutral_line,
    openai_line,
    outputs_of,
)

MARKER = "SECRET-PROMPT-7f3a"


@pytest.fixture(scope="module")
def stack() -> Iterator[s.LocalStack]:
    # Powertools reads POWERTOOLS_LOG_LEVEL when a Logger is built; the stack passes it on to the
    # functions' environment, as the CDK stack would.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POWERTOOLS_LOG_LEVEL", "DEBUG")
        with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0))) as local:
            yield local
    use_deps(None)


def run(stack: s.LocalStack, files: dict[str, bytes]) -> tuple[Dispatcher, dict[str, dict[str, Any]]]:
    """Upload the files, drive the pipeline until each of their jobs has ended."""
    for key, data in files.items():
        stack.put(key, data)
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    drive(dispatcher, ended(store, set(files)), timeout=60)
    assert [i.error for i in dispatcher.invocations if not i.ok] == []
    return dispatcher, jobs_by_key(store)


# -- prompts, completions and keys are not logged ---------------------------------------------------


@pytest.fixture
def debug_logs(capfd: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """The functions' Powertools logs at DEBUG, into capfd.

    The module loggers were built at import, when pytest's own capture held sys.stdout, so their
    stream handler writes to pytest's buffer: point it at the process's stdout (file descriptor 1,
    as in Lambda), which capfd captures, and lower the shared logger to DEBUG as POWERTOOLS_LOG_LEVEL
    does for a logger built after it is set.
    """
    shared = logging.getLogger(SERVICE)
    handler = getattr(shared, "powertools_handler", None)
    assert isinstance(handler, logging.StreamHandler)
    level = shared.level
    stream = handler.setStream(sys.__stdout__)
    shared.setLevel(logging.DEBUG)
    try:
        yield capfd
    finally:
        shared.setLevel(level)
        if stream is not None:
            handler.setStream(stream)


def secret_lines() -> list[dict[str, Any] | str]:
    return [
        openai_line("o1", text=f"{MARKER} openai user text"),
        openai_line(
            "o2",
            messages=[{"role": "system", "content": f"{MARKER} system"}, {"role": "user", "content": f"{MARKER} 2"}],
        ),
        anthropic_line("a1", text=f"{MARKER} anthropic user text", system=f"{MARKER} anthropic system"),
        neutral_line("gpt-4o-mini", f"{MARKER} neutral openai", system=f"{MARKER} sys"),
        neutral_line("claude-haiku-4-5", f"{MARKER} neutral anthropic"),
        {
            "custom_id": "e1",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": f"{MARKER} embed"},
        },
        # invalid lines carry the marker too: their error messages go to errors.jsonl, not to the logs
        {**openai_line("bad1", text=f"{MARKER} invalid"), "method": f"{MARKER}-GET"},
        f'{{"custom_id": "bad2", "model": "gpt-4o-mini", "messages": "{MARKER} not a list"}}',
        f'{{"{MARKER}": broken json',
    ]


def test_prompts_completions_and_the_api_key_are_never_logged(
    stack: s.LocalStack, debug_logs: pytest.CaptureFixture[str]
) -> None:
    key = "inputs/secret/prompts.jsonl"
    dispatcher, jobs = run(stack, {key: jsonl(secret_lines())})
    results, errors, summary = outputs_of(stack, jobs[key])
    notes = all_notifications(dispatcher)
    out, err = debug_logs.readouterr()
    logs = out + err

    # the run did produce what we are looking at: completions that echo the prompt, and DEBUG logs
    assert summary["status"] == "partial"
    assert summary["counts"]["succeeded"] == 6
    completions = [r["text"] for r in results if r["text"]]
    assert len(completions) == 5
    assert all(MARKER in text for text in completions)
    assert any(MARKER in e["message"] for e in errors)  # the invalid method, quoted in errors.jsonl
    assert logging.getLogger(SERVICE).getEffectiveLevel() == logging.DEBUG
    assert os.environ["POWERTOOLS_LOG_LEVEL"] == "DEBUG"
    log_lines = [orjson.loads(line) for line in out.splitlines() if line.startswith('{"level"')]
    assert {"planned", "batch submitted", "job complete"} <= {line["message"] for line in log_lines}
    assert all(line["service"] == SERVICE for line in log_lines)

    # and none of it is in the logs, nor in the notifications
    assert MARKER not in logs
    assert "echo:" not in logs
    for text in completions:
        assert text not in logs
    assert s.LOCAL_API_KEY not in logs
    published = orjson.dumps(notes).decode()
    assert MARKER not in published
    assert s.LOCAL_API_KEY not in published


def test_the_api_key_is_never_written_to_s3_dynamodb_or_the_environment(stack: s.LocalStack) -> None:
    key = "inputs/secret/keys.jsonl"
    run(stack, {key: jsonl([openai_line("k1"), anthropic_line("k2"), "[]"])})
    secret = s.LOCAL_API_KEY.encode()

    # S3: every object batchdrop wrote (outputs/ and its private work/)
    written = [k for k in aws_keys(stack) if not k.startswith("inputs/")]
    assert any(k.startswith("outputs/") for k in written)
    assert any(k.startswith("work/") for k in written)
    for object_key in written:
        assert secret not in stack.get(object_key), object_key

    # DynamoDB: every item of the table, jobs, batches and locks alike
    items = scan_table()
    assert any(i["sk"]["S"] == "JOB" for i in items)
    assert any(i["sk"]["S"].startswith("BATCH#") for i in items)
    assert secret not in orjson.dumps(items)

    # The functions' environment holds the secrets' ARNs, never the key
    env = {k: v for k, v in os.environ.items() if k.startswith("BATCHDROP_")}
    assert env == {k: v for k, v in stack.function_env().items() if k.startswith("BATCHDROP_")}
    assert all(s.LOCAL_API_KEY not in v for v in env.values())
    for provider in ("OPENAI", "ANTHROPIC"):
        arn = env[f"BATCHDROP_{provider}_SECRET_ARN"]
        assert arn.startswith("arn:aws:secretsmanager:")
        assert arn == stack.secret_arns[provider.lower()]
    assert "OPENAI_API_KEY" not in os.environ
    assert "ANTHROPIC_API_KEY" not in os.environ


def aws_keys(stack: s.LocalStack) -> list[str]:
    return list(stack.keys(""))


def scan_table() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in aws.client("dynamodb").get_paginator("scan").paginate(TableName=s.TABLE):
        items.extend(page.get("Items", []))
    return items


# -- S3 keys are data ------------------------------------------------------------------------------

KEYS = [
    "inputs/../escape.jsonl",
    "inputs/../../../../../../tmp/evil.jsonl",
    "inputs/./dot.jsonl",
    "inputs/a/./b/../c.jsonl",
    "inputs/...jsonl",  # the name is "..": outputs/../<job_id>/
    "inputs/..jsonl",
    "inputs/.jsonl",
    "inputs//leading-slash.jsonl",
    "inputs///x//y.jsonl",
    "inputs/my evals/with spaces .jsonl",
    "inputs/plus+sign +.jsonl",
    "inputs/100% done.jsonl",
    "inputs/literal%2Fslash%2F..%2F.jsonl",
    "inputs/percent-%25-%zz-%.jsonl",
    "inputs/ünïcödé/日本語/emoji-🎉.jsonl",
    "inputs/nfd-cafe\u0301.jsonl",
    "inputs/query?x=1&y=2#frag;=.jsonl",
    "inputs/back\\slash\\..\\..\\win.jsonl",
    "inputs/~/$HOME/`id`/'quote\"s.jsonl",
    "inputs/gz/../packed.jsonl.gz",
    # 9 segments of 100 bytes: a long key (922 bytes) whose outputs still fit S3's 1024-byte keys
    "inputs/" + "/".join(["s" * 100] * 9) + ".jsonl",
]


def rest_of(key: str) -> str:
    rest = key[len("inputs/") :]
    for suffix in (".jsonl.gz", ".jsonl"):
        if rest.endswith(suffix):
            return rest[: -len(suffix)]
    raise AssertionError(key)


@dataclass
class KeyRun:
    jobs: dict[str, dict[str, Any]]
    notifications: list[dict[str, Any]]
    out_dir: Path
    objects: list[str]  # the keys under outputs/ when they were copied
    written: list[str]


@pytest.fixture(scope="module")
def key_run(stack: s.LocalStack, tmp_path_factory: pytest.TempPathFactory) -> KeyRun:
    """Every tricky key at once, then the bucket's outputs/ copied to a folder as `local run` does."""
    dispatcher, jobs = run(stack, {key: jsonl([openai_line("only")]) for key in KEYS})
    notes = all_notifications(dispatcher)
    out_dir = tmp_path_factory.mktemp("download") / "out"
    out_dir.mkdir()
    objects = list(stack.keys("outputs/"))
    written = stack.download_tree("outputs/", str(out_dir))
    return KeyRun(jobs, notes, out_dir, objects, written)


def test_the_keys_are_all_distinct_and_valid_for_s3() -> None:
    assert len(set(KEYS)) == len(KEYS)
    assert all(len(k.encode()) <= 1024 for k in KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_a_key_is_data_for_the_job_and_its_outputs(stack: s.LocalStack, key_run: KeyRun, key: str) -> None:
    job = key_run.jobs[key]
    job_id = job["job_id"]
    prefix = f"outputs/{rest_of(key)}/{job_id}/"
    assert job["input"]["key"] == key
    assert job["output_prefix"] == prefix
    assert job["status"] == "completed"
    results, errors, summary = outputs_of(stack, job)
    assert [r["custom_id"] for r in results] == ["only"]
    assert errors == []
    assert summary["input"]["key"] == key
    assert summary["results"] == f"s3://{s.BUCKET}/{prefix}results.jsonl"
    assert summary["errors"] == f"s3://{s.BUCKET}/{prefix}errors.jsonl"
    assert sorted(stack.keys(prefix)) == [f"{prefix}{n}" for n in ("errors.jsonl", "results.jsonl", "summary.json")]
    # the notifications name the same object
    mine = [n for n in key_run.notifications if n["attributes"]["job_id"] == job_id]
    assert sorted(n["attributes"]["event"] for n in mine) == ["completed", "submitted"]
    assert all(n["message"]["input"]["key"] == key for n in mine)
    # and its three files were copied inside the folder
    root = os.path.realpath(key_run.out_dir)
    copied = [p for p in key_run.written if os.path.basename(os.path.dirname(p)) == job_id]
    assert len(copied) == 3
    for path in copied:
        assert os.path.commonpath([root, os.path.realpath(path)]) == root


def test_copying_outputs_never_writes_outside_the_folder(stack: s.LocalStack, key_run: KeyRun) -> None:
    root = os.path.realpath(key_run.out_dir)
    assert len(key_run.written) == len(key_run.objects) >= 3 * len(KEYS)
    for path in key_run.written:
        assert os.path.commonpath([root, os.path.realpath(path)]) == root, path
        assert os.path.isfile(path)
    on_disk = [os.path.join(d, f) for d, _dirs, files in os.walk(key_run.out_dir.parent) for f in files]
    assert sorted(os.path.realpath(p) for p in on_disk) == sorted(os.path.realpath(p) for p in key_run.written)
    # nothing landed next to the folder, where `..` would have put it
    assert sorted(os.listdir(key_run.out_dir.parent)) == ["out"]
    # and the `..` segments are there as data: escaped, each under its own job's folder
    assert any(os.sep + "%2E%2E" + os.sep in p for p in key_run.written)


def test_every_object_written_for_a_key_stays_under_its_job(stack: s.LocalStack, key_run: KeyRun) -> None:
    jobs = jobs_by_key(JobStore(s.TABLE))
    assert set(KEYS) <= set(jobs)
    prefixes = [j["output_prefix"] for j in jobs.values()] + [f"work/{j['job_id']}/" for j in jobs.values()]
    for key in stack.keys(""):
        if key in OUTSIDE:  # put there directly by the test below
            continue
        if key.startswith("inputs/"):
            assert key in jobs, key
        else:
            assert any(key.startswith(p) for p in prefixes), key


def s3_event(key: str, encoded: bool = True) -> dict[str, Any]:
    """An ObjectCreated event as S3 sends it (the key URL-encoded, spaces as '+'), or with the key raw."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": s.REGION,
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": s.BUCKET, "arn": f"arn:aws:s3:::{s.BUCKET}"},
                    "object": {"key": quote_plus(key, safe="/") if encoded else key, "size": 10, "sequencer": "0"},
                },
            }
        ]
    }


OUTSIDE = [
    "outputs/evals/run.jsonl",
    "work/job-0/batches/a1-openai-0001.jsonl",
    "cancel/job-0.jsonl",
    "retry/job-0.jsonl",
    "retry/job-0123456789abcdef0123",
    "top-level.jsonl",
    "Inputs/upper.jsonl",
    "inputsx/not-the-prefix.jsonl",
    "/inputs/leading-slash.jsonl",
    "outputs/../inputs/sneaky.jsonl",
]


@pytest.mark.parametrize("key", OUTSIDE)
def test_an_object_outside_inputs_never_starts_a_job(stack: s.LocalStack, key: str) -> None:
    store = JobStore(s.TABLE)
    # The object exists (a direct put: S3's notification filter on inputs/ sends no event for it)...
    stack.put(key, jsonl([openai_line("x")]))
    before = {j["job_id"] for j in store.list_jobs(limit=100_000)}
    # ...and an event for it arrives anyway, once as S3 encodes keys and once with the key raw
    for event in (s3_event(key), s3_event(key, encoded=False)):
        out = submit_handler(event, LocalContext("submit"))
        assert [j["outcome"] for j in out["jobs"]] == ["ignored"]
    # and the pipeline running on finds no job for it either
    dispatcher = Dispatcher(stack)
    dispatcher.deliver_uploads()
    dispatcher.tick()
    assert {j["job_id"] for j in store.list_jobs(limit=100_000)} == before
    assert all(j["input"]["key"] != key for j in store.list_jobs(limit=100_000))


# -- bugs found by this corpus, fixed: kept as regression tests -----------------------------------


def test_outputs_of_a_1024_byte_input_key_fit_in_s3_keys(stack: s.LocalStack, key_run: KeyRun) -> None:
    key = "inputs/" + "k" * (1024 - len("inputs/") - len(".jsonl")) + ".jsonl"
    assert len(key.encode()) == 1024
    _dispatcher, jobs = run(stack, {key: jsonl([openai_line("long")])})
    job = jobs[key]
    assert job["status"] == "completed"
    written = list(stack.keys(job["output_prefix"]))
    assert len(written) == 3
    assert all(len(k.encode()) <= 1024 for k in written), max(len(k.encode()) for k in written)


def test_copying_outputs_of_a_key_with_a_300_byte_name(stack: s.LocalStack, key_run: KeyRun, tmp_path: Path) -> None:
    key = "inputs/" + "n" * 300 + ".jsonl"
    _dispatcher, jobs = run(stack, {key: jsonl([openai_line("named")])})
    job = jobs[key]
    assert job["status"] == "completed"
    written = stack.download_tree(job["output_prefix"], str(tmp_path))
    assert len(written) == 3
    root = os.path.realpath(tmp_path)
    assert all(os.path.commonpath([root, os.path.realpath(p)]) == root for p in written)
