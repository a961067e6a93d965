"""The `batchdrop` command as a user runs it: a subprocess, the embedded stack over HTTP, files on disk."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import orjson

from tests.checks import Outputs, check_job_outputs, check_notifications, read_outputs
from tests.helpers import anthropic_line, jsonl, neutral_line, openai_line, read_jsonl

BATCHDROP = [sys.executable, "-m", "batchdrop.cli"]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([*BATCHDROP, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def outputs(out: Path) -> list[Outputs]:
    """Every job's outputs in a `batchdrop local run` tree, read as the smoke test reads a deployment's
    (tests/checks.py), for `check_job_outputs` against the lines the test wrote."""
    return [
        read_outputs(lambda path: Path(path).read_bytes(), f"{summary_path.parent}/")
        for summary_path in sorted(out.glob("outputs/**/summary.json"))
    ]


def test_local_run_writes_outputs_and_notifications_for_any_mix_of_lines(tmp_path: Path) -> None:
    # Given a file whose name has spaces and non-ASCII characters, mixing valid and invalid lines
    path = tmp_path / "my evals ü+1.jsonl"
    path.write_bytes(
        jsonl(
            [
                openai_line("a"),
                "",
                "not json",
                openai_line("a"),
                anthropic_line("b"),
                neutral_line("gpt-4o-mini", "hi"),
                b"\xff\xfe{}",
                neutral_line("claude-haiku-4-5", "hi", custom_id="n2"),
            ]
        )
    )
    out = tmp_path / "out"
    # When it runs through the local stack with failures and expiries switched on
    result = run(
        "local", "run", str(path), "--out", str(out), "--provider-latency", "0.2",
        "--failure-rate", "0.3", "--expire-rate", "0.3", "--seed", "11",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Then the outputs tree is there, with every non-blank line in exactly one file
    ((results, errors, summary),) = outputs(out)
    assert summary["input"]["key"] == "inputs/my evals ü+1.jsonl"
    check_job_outputs({1, 3, 4, 5, 6, 7, 8}, results, errors, summary)
    codes = {e["line"]: e["code"] for e in errors if e["stage"] == "validation"}
    assert codes == {3: "invalid_json", 4: "duplicate_custom_id", 7: "invalid_encoding"}
    # and one submitted and one terminal notification, as JSON lines
    notes = read_jsonl((out / "notifications.jsonl").read_bytes())
    assert [n["attributes"]["event"] for n in notes] == ["submitted", summary["status"]]
    check_notifications(notes, summary)
    stats = orjson.loads((out / "provider_stats.json").read_bytes())
    assert sum(stats["batches_created"].values()) == len(summary["batches"])
    assert "All jobs ended" in result.stdout


def test_local_run_finishes_a_file_larger_than_an_emulated_quota_in_waves(tmp_path: Path) -> None:
    # Given a file of 700 requests, and providers whose queues take a fraction of it at a time
    path = tmp_path / "big.jsonl"
    path.write_bytes(
        jsonl(
            [
                neutral_line("gpt-4o-mini", f"question {i:04d} about the weather", custom_id=f"q-{i:04d}")
                for i in range(400)
            ]
            + [neutral_line("claude-haiku-4-5", f"question {i:04d}", custom_id=f"a-{i:04d}") for i in range(300)]
        )
    )
    out = tmp_path / "out"
    # When it runs with those quotas, and batchdrop's caps set to them
    result = run(
        "local", "run", str(path), "--out", str(out), "--provider-latency", "1",
        "--queue-limit", "openai=2000", "--queue-limit", "anthropic=100",
        "--max-enqueued", "openai=2000", "--max-enqueued", "anthropic=100",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Then every line succeeded, in several batches per provider, none failed and none created twice
    ((results, errors, summary),) = outputs(out)
    check_job_outputs(set(range(1, 701)), results, errors, summary)
    assert summary["status"] == "completed"
    assert not errors
    stats = orjson.loads((out / "provider_stats.json").read_bytes())
    assert stats["batches_created"]["openai"] > 2
    assert stats["batches_created"]["anthropic"] >= 6
    assert set(stats["requests_submitted"].values()) == {1}
    submitted = read_jsonl((out / "notifications.jsonl").read_bytes())[0]
    assert any(b.get("held") for b in submitted["message"]["batches"]), "some batches waited for room"
    # And a malformed quota is a usage error that says what it expects
    bad = run("local", "run", str(path), "--out", str(out), "--queue-limit", "mistral=5")
    assert bad.returncode == 2
    assert "expected PROVIDER=N" in bad.stderr


def test_local_run_refuses_a_file_that_is_not_jsonl_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    path.write_text("a,b\n")
    result = run("local", "run", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "requests.csv" in result.stderr
    assert ".jsonl" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_prints_counts_and_error_lines_and_exits_1_on_invalid_lines(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl([openai_line("a"), anthropic_line("b")]))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl([openai_line("a"), "[]", neutral_line("who-knows")]))

    ok = run("validate", str(good))
    assert ok.returncode == 0, ok.stdout
    assert "2 lines, 2 valid, 0 invalid" in ok.stdout

    failed = run("validate", "--json", str(bad))
    assert failed.returncode == 1
    errors = [orjson.loads(line) for line in failed.stdout.splitlines() if line.startswith("{")]
    assert [(e["line"], e["code"]) for e in errors] == [(2, "not_an_object"), (3, "unknown_provider")]


def test_emulator_command_serves_the_sdks(tmp_path: Path) -> None:
    import openai

    # How this process handles SIGINT, should the command not stop on it (a child inherits it).
    inherited = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
    proc = subprocess.Popen([*BATCHDROP, "emulator", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        base_url = ""
        deadline = time.monotonic() + 30
        while not base_url and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "OpenAI base URL" in line:
                base_url = line.split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=base_url, api_key="any")
        uploaded = client.files.create(file=("x.jsonl", jsonl([openai_line("a")])), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert client.batches.retrieve(batch.id).id == batch.id
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            # It stops within a second; on a busy machine (a CI run) give it longer before calling it hung.
            assert proc.wait(timeout=30) == 0
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"`batchdrop emulator` ignored SIGINT; this process's handler, mask: {inherited}"
            ) from exc
        finally:
            proc.kill()


def test_every_command_has_help() -> None:
    for args in (["--help"], ["demo", "--help"], ["local", "run", "--help"], ["validate", "--help"],
                 ["emulator", "--help"]):  # fmt: skip
        result = run(*args)
        assert result.returncode == 0
        assert "Usage:" in result.stdout
    assert "--failure-rate" in run("local", "run", "--help").stdout


def test_validate_estimates_tokens_and_cost_before_submission(tmp_path: Path) -> None:
    path = tmp_path / "priced.jsonl"
    path.write_bytes(jsonl([openai_line("a", text="x" * 400, max_tokens=100), anthropic_line("b", max_tokens=50)]))
    out = run("validate", str(path)).stdout
    assert "output ≤ 150 tokens" in out
    assert "cost ≤ $" in out
    assert "lane: openai → batch" in out
    assert "lane: anthropic → batch" in out
    # The auto lane: two requests go real-time, at the real-time price.
    auto = run("validate", str(path), "--lane", "auto").stdout
    assert "lane: openai → realtime (1 requests, fewer than 100" in auto
    assert "all real-time $" in auto
    unknown = tmp_path / "unpriced.jsonl"
    unknown.write_bytes(jsonl([openai_line("a", model="gpt-mystery")]))
    assert "cost n/a (no price for gpt-mystery" in run("validate", str(unknown)).stdout


def test_local_run_with_a_file_per_provider_and_a_neutral_file_for_all_five(tmp_path: Path) -> None:
    # Given a file per provider in its own format, and one neutral file that routes to every provider
    gemini_line = {
        "key": "g1",
        "request": {"model": "gemini-2.5-flash", "contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    }
    bedrock_lines = [
        {
            "recordId": f"b{i}",
            "modelId": "amazon.nova-lite-v1:0",
            "modelInput": {"messages": [{"role": "user", "content": [{"text": f"hi {i}"}]}]},
        }
        for i in range(3)
    ]
    files = {
        "openai.jsonl": [openai_line("o1"), openai_line("o2")],
        "anthropic.jsonl": [anthropic_line("a1")],
        "gemini.jsonl": [gemini_line],
        "bedrock.jsonl": bedrock_lines,
        "neutral.jsonl": [
            neutral_line("gpt-4o-mini", "x", custom_id="n1"),
            neutral_line("claude-haiku-4-5", "x", custom_id="n2"),
            neutral_line("gemini-2.5-flash-lite", "x", custom_id="n3"),
            *[neutral_line("meta.llama3-1-8b-instruct-v1:0", "x", custom_id=f"n-llama-{i}") for i in range(3)],
        ],
    }
    paths = []
    for name, lines in files.items():
        (tmp_path / name).write_bytes(jsonl(lines))
        paths.append(str(tmp_path / name))
    azure = tmp_path / "azure"
    azure.mkdir()
    (azure / "deployment.jsonl").write_bytes(jsonl([neutral_line("my-deployment", "x", custom_id="z1")]))
    out = tmp_path / "out"
    # When they run through the local stack (Bedrock's minimum lowered to what a test account has)
    result = run("local", "run", *paths, "--out", str(out), "--bedrock-min-records", "3")
    assert result.returncode == 0, result.stderr
    azure_result = run("local", "run", str(azure / "deployment.jsonl"), "--folder", "azure", "--out", str(out))
    assert azure_result.returncode == 0, azure_result.stderr
    # Then every job completed, each line's answer came from the provider its format or model names
    by_key = {summary["input"]["key"]: (results, errors, summary) for results, errors, summary in outputs(out)}
    expected = {
        "inputs/openai.jsonl": {"openai"},
        "inputs/anthropic.jsonl": {"anthropic"},
        "inputs/gemini.jsonl": {"gemini"},
        "inputs/bedrock.jsonl": {"bedrock"},
        "inputs/neutral.jsonl": {"openai", "anthropic", "gemini", "bedrock"},
        "inputs/azure/deployment.jsonl": {"azure"},
    }
    assert set(by_key) == set(expected)
    for key, providers in expected.items():
        results, errors, summary = by_key[key]
        assert summary["status"] == "completed", (key, errors)
        check_job_outputs(set(range(1, summary["counts"]["lines"] + 1)), results, errors, summary)
        assert {r["provider"] for r in results} == providers
        assert all(r["text"] for r in results)
        # costs from the usage each provider reported; an Azure deployment has no list price
        cost = summary["cost_usd"]["batch"]
        assert cost is None if key.startswith("inputs/azure/") else cost > 0
    assert {r["custom_id"] for r in by_key["inputs/bedrock.jsonl"][0]} == {"b0", "b1", "b2"}
    assert {r["custom_id"] for r in by_key["inputs/gemini.jsonl"][0]} == {"g1"}


def test_validate_refuses_a_gzip_bomb_in_seconds(tmp_path: Path) -> None:
    # Given 1 GiB of newlines in about 1 MB of gzip, written as it is compressed
    bomb = tmp_path / "bomb.jsonl.gz"
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    with bomb.open("wb") as out:
        out.write(packer.compress(orjson.dumps(openai_line("first")) + b"\n"))
        for _ in range(1024):
            out.write(packer.compress(b"\n" * (1 << 20)))
        out.write(packer.flush())
    assert bomb.stat().st_size < 2 << 20
    # When it is validated, with the deployment's default bounds
    started = time.monotonic()
    result = run("validate", str(bomb), timeout=60)
    # Then it is refused as the pipeline would refuse it, in seconds, with no traceback
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "would be rejected" in result.stdout
    assert "compression bomb" in result.stdout
    assert "1 lines, 1 valid, 0 invalid" in result.stdout


def test_validate_refuses_a_gzip_bomb_past_the_size_bound_set_in_the_environment(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.jsonl.gz"
    bomb.write_bytes(gzip.compress(b"\n" * (8 << 20), mtime=0))
    env = {**os.environ, "COLUMNS": "160", "BATCHDROP_MAX_INFLATED_BYTES": str(2 << 20)}
    result = subprocess.run(
        [*BATCHDROP, "validate", str(bomb)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 1
    assert "BATCHDROP_MAX_INFLATED_BYTES" in result.stdout
    assert "Traceback" not in result.stderr


def test_validate_rejects_a_truncated_gzip_as_the_pipeline_does(tmp_path: Path) -> None:
    content = jsonl([openai_line(f"t{i}", text=f"request {i} of the file, {i * 7919 % 1000}") for i in range(400)])
    cut = tmp_path / "cut.jsonl.gz"
    packed = gzip.compress(content, mtime=0)
    cut.write_bytes(packed[: len(packed) // 2])
    result = run("validate", str(cut))
    assert result.returncode == 1
    assert "would be rejected" in result.stdout
    assert "cannot be read past line" in result.stdout
    assert "Traceback" not in result.stderr


def test_validate_rejects_a_gzip_missing_its_trailer_and_counts_only_its_lines(tmp_path: Path) -> None:
    content = jsonl([openai_line(f"t{i}") for i in range(50)])
    short = tmp_path / "short.jsonl.gz"
    short.write_bytes(gzip.compress(content, mtime=0)[:-8])
    result = run("validate", "--json", str(short))
    assert result.returncode == 1
    assert [line for line in result.stdout.splitlines() if line.startswith("{")] == []
    plain = run("validate", str(short))
    assert "50 lines, 50 valid, 0 invalid" in plain.stdout
    assert "would be rejected" in plain.stdout
    assert "without its last 8 bytes" in plain.stdout


def test_validate_stops_a_gzip_bomb_of_invalid_lines_at_the_cap_in_seconds(tmp_path: Path) -> None:
    # Given 256 MB of `x` lines in about 256 KB of gzip: 134 million invalid lines (1 GiB of them ran
    # 3.5 minutes and wrote 33 million error lines before the ratio bound stopped it)
    bomb = tmp_path / "x-bomb.jsonl.gz"
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    with bomb.open("wb") as out:
        for _ in range(256):
            out.write(packer.compress(b"x\n" * (1 << 19)))
        out.write(packer.flush())
    # When it is validated, with the deployment's default cap on invalid lines
    started = time.monotonic()
    result = run("validate", str(bomb), timeout=120)
    # Then it stops past the cap, in seconds, and is refused with what the pipeline would say
    assert time.monotonic() - started < 40
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "1000001 lines, 0 valid, 1000001 invalid" in result.stdout
    assert "would be rejected" in result.stdout
    assert (
        "more than 1,000,000 lines are invalid (first: line 1, invalid_json); the file is refused as a whole, and "
        "was read no further than line 1,000,001; fix the file's format, or raise BATCHDROP_MAX_INVALID_LINES"
    ) in result.stdout
    assert "... and 999,801 more (use --json for all)" in result.stdout


def capped_file(path: Path) -> Path:
    """Valid and invalid lines, a blank one among them: with a cap of 2, reading stops at line 6."""
    path.write_bytes(
        jsonl([openai_line("a"), "x", "", openai_line("b"), "[]", "{", openai_line("c"), "y", anthropic_line("d")])
    )
    return path


def test_validate_takes_the_cap_from_the_environment_and_counts_only_the_lines_read(tmp_path: Path) -> None:
    path = capped_file(tmp_path / "mixed.jsonl")
    env = {**os.environ, "COLUMNS": "160", "BATCHDROP_MAX_INVALID_LINES": "2"}
    table = subprocess.run(
        [*BATCHDROP, "validate", str(path)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert table.returncode == 1
    assert "5 lines, 2 valid, 3 invalid" in table.stdout
    assert "would be rejected" in table.stdout
    assert "more than 2 lines are invalid (first: line 2, invalid_json)" in table.stdout
    assert "read no further than line 6" in table.stdout
    as_json = subprocess.run(
        [*BATCHDROP, "validate", "--json", str(path)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert as_json.returncode == 1
    errors = [orjson.loads(line) for line in as_json.stdout.splitlines() if line.startswith("{")]
    assert [(e["line"], e["code"]) for e in errors] == [(2, "invalid_json"), (5, "not_an_object"), (6, "invalid_json")]
    bad = {**env, "BATCHDROP_MAX_INVALID_LINES": "none"}
    refused = subprocess.run(
        [*BATCHDROP, "validate", str(path)], capture_output=True, text=True, timeout=60, env=bad, check=False
    )
    assert refused.returncode == 1
    assert "BATCHDROP_MAX_INVALID_LINES='none' is not a whole number" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_validate_and_the_pipeline_refuse_a_file_past_the_cap_alike(tmp_path: Path) -> None:
    # Given a file past a cap of 2 invalid lines, and that cap in the environment of both commands
    path = capped_file(tmp_path / "mixed.jsonl")
    env = {**os.environ, "COLUMNS": "160", "BATCHDROP_MAX_INVALID_LINES": "2"}
    checked = subprocess.run(
        [*BATCHDROP, "validate", str(path)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    out = tmp_path / "out"
    ran = subprocess.run(
        [*BATCHDROP, "local", "run", str(path), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    # Then the job is rejected with the very message validate printed
    ((results, errors, summary),) = outputs(out)
    assert summary["status"] == "rejected"
    assert f"file error: {summary['reason']}" in checked.stdout
    # and each non-blank line read has one output line: the valid ones file_rejected, none after line 6
    check_job_outputs({1, 2, 4, 5, 6}, results, errors, summary)
    codes = {e["line"]: e["code"] for e in errors}
    assert codes == {1: "file_rejected", 2: "invalid_json", 4: "file_rejected", 5: "not_an_object", 6: "invalid_json"}


def test_local_run_takes_the_schema_mismatch_knob(tmp_path: Path) -> None:
    # Given structured requests, and an emulator told to break every structured answer
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}
    lines = [{**neutral_line("claude-haiku-4-5", "hi", custom_id=f"s{i}"), "response_format": fmt} for i in range(3)]
    path = tmp_path / "structured.jsonl"
    path.write_bytes(jsonl([*lines, neutral_line("claude-haiku-4-5", "hi", custom_id="plain")]))
    out = tmp_path / "out"
    result = run(
        "local", "run", str(path), "--out", str(out), "--provider-latency", "0", "--schema-mismatch-rate", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Then each structured request is a schema_mismatch error line, and the plain one a result
    ((results, errors, summary),) = outputs(out)
    check_job_outputs({1, 2, 3, 4}, results, errors, summary)
    assert {(e["custom_id"], e["code"]) for e in errors} == {(f"s{i}", "schema_mismatch") for i in range(3)}
    assert [r["custom_id"] for r in results] == ["plain"]
    assert "parsed" not in results[0]
    assert "--schema-mismatch-rate" in run("emulator", "--help").stdout
