"""`make bench`: batchdrop's speed and memory, each figure next to a baseline measured in the same run.

python -m benchmarks            # everything (generates a 1 GB file under $TMPDIR)
python -m benchmarks --quick    # skips the 1 GB file and the 100,000-request runs
python -m benchmarks --only aws-bill    # what the AWS side costs per million requests (a few minutes)
python -m benchmarks --only tables      # table jobs: rows/s against pandas, peak RSS on 100 MB and 1 GB Parquet
python -m benchmarks --only cache       # the response cache on a 1,000,000-request file (--quick: 100,000)
"""

from __future__ import annotations

import argparse
import atexit
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.aws_bill import bench_aws_bill  # noqa: E402 — after ROOT, for the sys.path
from benchmarks.cache import bench_cache  # noqa: E402 — after ROOT, for the sys.path
from benchmarks.processes import FRESH, free_port, wait_for  # noqa: E402 — after ROOT, for the sys.path
from benchmarks.realtime import bench_deadline, bench_realtime  # noqa: E402 — after ROOT, for the sys.path
from benchmarks.tables import bench_tables  # noqa: E402 — after ROOT, for the sys.path

MB = 1024 * 1024


def line(i: int, prompt_chars: int) -> bytes:
    text = (f"Question {i}: explain this to a ten-year-old. " * (prompt_chars // 40 + 1))[:prompt_chars]
    return orjson.dumps(
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}],
                "max_tokens": 64,
            },
        }
    )


def generate(path: Path, size: int, prompt_chars: int) -> int:
    """Write a file of about `size` bytes of OpenAI batch lines; return its line count."""
    n = 0
    written = 0
    with path.open("wb") as f:
        while written < size:
            chunk = b"".join(line(n + k, prompt_chars) + b"\n" for k in range(1000))
            f.write(chunk)
            written += len(chunk)
            n += 1000
    return n


def best_of(runs: int, fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def lines_of(data: bytes) -> Iterator[tuple[int, bytes]]:
    from batchdrop.reader import iter_chunks, iter_lines

    return iter_lines(iter_chunks(io.BytesIO(data)), 32 * MB)  # type: ignore[return-value]


# -- 1. validation throughput ------------------------------------------------------------------------


def bench_validation(rows: list[dict[str, Any]], quick: bool = False) -> None:
    from pydantic import BaseModel

    from batchdrop.config import PROVIDER_DEFAULT_LIMITS
    from batchdrop.reader import iter_chunks
    from batchdrop.scan import scan
    from batchdrop.validation import NoIds, Validator

    class Body(BaseModel):
        model: str
        messages: list[dict[str, Any]]
        max_tokens: int | None = None

    class OpenAILine(BaseModel):  # the naive peer: json.loads and a model per line
        custom_id: str
        method: str
        url: str
        body: Body

    # (prompt length, lines). A file with more valid requests than one spill of ids (65,536) finds its
    # duplicates through hash buckets on disk, as every large file does: the first and the last here.
    cases = [(200, 100_000), (2000, 25_000)] + ([] if quick else [(2000, 100_000)])
    for prompt_chars, count in cases:
        data = b"".join(line(i, prompt_chars) + b"\n" for i in range(count))
        mb = len(data) / MB

        def raw(data: bytes = data) -> None:
            for _, raw_line in lines_of(data):
                orjson.loads(raw_line)

        def ours(data: bytes = data) -> None:
            # What submit runs: every line validated, and duplicate ids found in flat memory.
            validator = Validator(providers=dict(PROVIDER_DEFAULT_LIMITS), seen=NoIds())
            scan(iter_chunks(io.BytesIO(data)), validator, lambda request: None, lambda invalid: None)

        def naive(data: bytes = data) -> None:
            for _, raw_line in lines_of(data):
                OpenAILine.model_validate(json.loads(raw_line))

        t_raw, t_ours, t_naive = best_of(3, raw), best_of(3, ours), best_of(3, naive)
        rows.append(
            {
                "benchmark": f"validation + duplicate ids, {mb:.0f} MB of ~{prompt_chars}-char prompts"
                + (", ids spilled to disk" if count > 65_536 else ""),
                "batchdrop": f"{mb / t_ours:.0f} MB/s",
                "baseline": f"orjson parse {mb / t_raw:.0f} MB/s; json+pydantic {mb / t_naive:.0f} MB/s",
                "ratio": f"{t_raw / t_ours:.2f}x orjson, {t_naive / t_ours:.1f}x naive",
            }
        )


# -- 2. peak memory ----------------------------------------------------------------------------------


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS of a child process (ru_maxrss of a fresh child, measured through a wrapper)."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def bench_memory(rows: list[dict[str, Any]], tmp: Path, quick: bool) -> None:
    sizes = [100 * MB] if quick else [100 * MB, 1024 * MB]
    baseline = peak_rss_mb([sys.executable, "-c", "import batchdrop.validation, batchdrop.planner"])
    results = {}
    for size in sizes:
        path = tmp / f"bench-{size // MB}.jsonl"
        lines = generate(path, size, 600)
        rss = peak_rss_mb([sys.executable, "-m", "batchdrop.cli", "validate", "--json", str(path)])
        results[size] = rss
        rows.append(
            {
                "benchmark": f"peak RSS, batchdrop validate, {size // MB} MB ({lines:,} lines)",
                "batchdrop": f"{rss:.0f} MB",
                "baseline": f"interpreter with the modules loaded {baseline:.0f} MB",
                "ratio": f"{rss / baseline:.2f}x",
            }
        )
        path.unlink()
    if len(results) == 2:
        rows.append(
            {
                "benchmark": "peak RSS growth, 1 GB file vs 100 MB file",
                "batchdrop": f"{results[1024 * MB]:.0f} MB vs {results[100 * MB]:.0f} MB",
                "baseline": "flat would be 1.00x",
                "ratio": f"{results[1024 * MB] / results[100 * MB]:.2f}x",
            }
        )


SUBMIT_CHILD = """
import json, os, resource, sys
os.environ.update(json.loads(sys.argv[1]))
from batchdrop.handlers.submit import handler
from batchdrop.local.dispatcher import LocalContext
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = handler(json.loads(sys.argv[2]), LocalContext("submit"))
assert out["jobs"][0]["outcome"] == "submitted", out
print(json.dumps({"baseline_kb": baseline, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def bench_submit_memory(rows: list[dict[str, Any]], tmp: Path, quick: bool) -> None:
    """Peak RSS of the submit handler itself, planning and submitting a large upload: moto's server and
    the emulator run in their own processes, so the bucket and the provider's copy are not counted."""
    from batchdrop.adapters import aws
    from batchdrop.local import stack as s
    from batchdrop.local.emulator import EmulatorKnobs

    aws_port, emulator_port = free_port(), free_port()
    servers = [
        subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(aws_port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "batchdrop.cli", "emulator", "--port", str(emulator_port),
                          "--provider-latency", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    try:
        wait_for(aws_port)
        wait_for(emulator_port)
        results = {}
        for size in [100 * MB] if quick else [100 * MB, 1024 * MB]:
            options = s.StackOptions(
                knobs=EmulatorKnobs(),
                providers=("openai", "anthropic"),
                external_aws=f"http://127.0.0.1:{aws_port}",
                external_emulator=f"http://127.0.0.1:{emulator_port}",
            )
            with s.LocalStack(options) as local:
                path = tmp / f"submit-{size // MB}.jsonl"
                lines = generate(path, size, 600)
                local.upload(str(path), "inputs/big.jsonl")
                path.unlink()
                sqs = aws.client("sqs")
                events: list[dict[str, Any]] = []
                while not events:
                    for message in sqs.receive_message(QueueUrl=local.queue_urls[s.S3_EVENTS_QUEUE]).get(
                        "Messages", []
                    ):
                        body = json.loads(message["Body"])
                        if "Records" in body:
                            events.append(body)
                env = {
                    **local.function_env(),
                    **{k: os.environ[k] for k in os.environ if k.startswith(("AWS_", "POWERTOOLS_"))},
                }
                env["BATCHDROP_SEGMENT_BYTES"] = str(4 * 1024 * MB)  # one invocation: the worst case
                # Started by a small wrapper process: Linux carries a parent's peak RSS over into a
                # child's ru_maxrss when the child is spawned directly from this (large) process.
                child = [sys.executable, "-c", SUBMIT_CHILD, json.dumps(env), json.dumps(events[0])]
                out = subprocess.run([sys.executable, "-c", FRESH, *child], capture_output=True, text=True,
                                     check=True, env={**os.environ, **env})  # fmt: skip
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                results[size] = figures["peak_kb"] / 1024
                rows.append(
                    {
                        "benchmark": f"peak RSS, submit handler, {size // MB} MB ({lines:,} OpenAI lines)",
                        "batchdrop": f"{results[size]:.0f} MB",
                        "baseline": f"the same process before the invocation {figures['baseline_kb'] / 1024:.0f} MB",
                        "ratio": f"{figures['peak_kb'] / figures['baseline_kb']:.2f}x",
                    }
                )
        if len(results) == 2:
            rows.append(
                {
                    "benchmark": "submit handler peak RSS, 1 GB vs 100 MB",
                    "batchdrop": f"{results[1024 * MB]:.0f} MB vs {results[100 * MB]:.0f} MB",
                    "baseline": "flat would be 1.00x",
                    "ratio": f"{results[1024 * MB] / results[100 * MB]:.2f}x",
                }
            )
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)


# -- 3. cold-start imports ---------------------------------------------------------------------------


def import_times(modules: list[str], env: dict[str, str], rounds: int = 15) -> dict[str, float]:
    """Median import time of each module, in a fresh interpreter, the modules taken in turn round after
    round so that the machine's drift falls on all of them alike. Bytecode is cached for every module,
    ours as boto3's (pip compiles what it installs; our editable source would otherwise be compiled on
    every run, and always is where PYTHONDONTWRITEBYTECODE is set, as on this machine), in a private
    folder."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("PYTHONPYCACHEPREFIX", PYCACHE)
    times: dict[str, list[float]] = {module: [] for module in modules}
    for module in modules:
        subprocess.run([sys.executable, "-c", f"import {module}"], env=env, check=True)  # writes the cache
    for _ in range(rounds):
        for module in modules:
            code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            times[module].append(float(out.stdout))
    return {module: statistics.median(values) for module, values in times.items()}


PYCACHE = tempfile.mkdtemp(prefix="batchdrop-bench-pycache-")
atexit.register(shutil.rmtree, PYCACHE, ignore_errors=True)


def bench_imports(rows: list[dict[str, Any]]) -> None:
    handlers = [f"batchdrop.handlers.{name}" for name in ("submit", "poll", "complete")]
    times = import_times(["boto3", *handlers], {**os.environ, "POWERTOOLS_TRACE_DISABLED": "true"})
    base = times["boto3"]
    for module in handlers:
        t = times[module]
        rows.append(
            {
                "benchmark": f"import {module} (cold start, bytecode cached)",
                "batchdrop": f"{t * 1000:.0f} ms",
                "baseline": f"import boto3 {base * 1000:.0f} ms",
                "ratio": f"{t / base:.2f}x",
            }
        )
    traced = import_times(["batchdrop.handlers.poll"], {**os.environ, "POWERTOOLS_TRACE_DISABLED": "false"}, rounds=7)
    rows.append(
        {
            "benchmark": "import batchdrop.handlers.poll with deep_tracing on",
            "batchdrop": f"{traced['batchdrop.handlers.poll'] * 1000:.0f} ms",
            "baseline": f"import boto3 {base * 1000:.0f} ms",
            "ratio": f"{traced['batchdrop.handlers.poll'] / base:.2f}x",
        }
    )


# -- 4. calls per poll -------------------------------------------------------------------------------


def bench_poll_calls(rows: list[dict[str, Any]]) -> None:
    from batchdrop.local import stack as s
    from batchdrop.local.emulator import EmulatorKnobs
    from tests.integration.test_poll_cost import calls_of_one_poll

    counts = {}
    for finished in (10, 1000):
        with s.LocalStack(s.StackOptions(knobs=EmulatorKnobs(latency=3600))) as local:
            calls, _ = calls_of_one_poll(local, finished)
        counts[finished] = sum(calls.values())
    rows.append(
        {
            "benchmark": "AWS calls per poll, 3 active batches + 1,000 finished jobs",
            "batchdrop": f"{counts[1000]} calls",
            "baseline": f"with 10 finished jobs {counts[10]} calls",
            "ratio": f"{counts[1000] / counts[10]:.2f}x",
        }
    )


def bench_held_calls(rows: list[dict[str, Any]]) -> None:
    """What a held batch costs the poll: the AWS calls of one poll over 20 batches waiting for room in a
    full pool (BATCHDROP_ANTHROPIC_MAX_ENQUEUED), per batch, against a poll over 20 running batches."""
    from batchdrop.handlers import use_deps
    from batchdrop.handlers.poll import handler as poll_handler
    from batchdrop.local import stack as s
    from batchdrop.local.dispatcher import Dispatcher, LocalContext
    from batchdrop.local.emulator import EmulatorKnobs
    from tests.helpers import jsonl, neutral_line
    from tests.integration.test_poll_cost import count_aws_calls

    per_batch = {}
    for case, env in (("held", {"BATCHDROP_ANTHROPIC_MAX_ENQUEUED": "1"}), ("running", {})):
        options = s.StackOptions(
            knobs=EmulatorKnobs(latency=3600), limits={"anthropic": (1, 10 * MB)}, extra_env=env, lease_seconds=30
        )
        with s.LocalStack(options) as local:
            rows_in = [neutral_line("claude-haiku-4-5", f"q{i}", custom_id=f"r{i}") for i in range(21)]
            local.put("inputs/f.jsonl", jsonl(rows_in))
            Dispatcher(local).deliver_uploads()
            time.sleep(1.2)  # the held batches' first wait, on the local clock
            calls = count_aws_calls()
            report = poll_handler({"detail-type": "Scheduled Event"}, LocalContext("poll"))
            looked = report["looked_at"] - 1  # the job's own look
            per_batch[case] = (sum(calls.values()) - 1) / looked
            use_deps(None)
    rows.append(
        {
            "benchmark": "AWS calls per batch in one poll, 20 batches held for room in a full pool",
            "batchdrop": f"{per_batch['held']:.1f} calls",
            "baseline": f"20 running batches {per_batch['running']:.1f} calls (and a provider call each)",
            "ratio": f"{per_batch['held'] / per_batch['running']:.2f}x",
        }
    )


# -- 5. the commands users run, as whole processes ---------------------------------------------------


def timed_process(args: list[str]) -> float:
    """Wall seconds of one run of a command, its output thrown away."""
    start = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, cwd=ROOT)
    return time.perf_counter() - start


def bench_commands(rows: list[dict[str, Any]], tmp: Path, quick: bool) -> None:
    """`batchdrop validate` (cost estimate on) and the submit function's planning, each a whole process
    (interpreter, imports, output) on a 100 MB file of chat requests, against a bare orjson line loop and
    the naive json.loads + pydantic loop as processes on the same file; the runs take turns, and each
    figure is the median of its runs."""
    path = tmp / "commands-100.jsonl"
    lines = generate(path, 100 * MB, 350)
    python = sys.executable
    commands = {
        "validate": [python, "-m", "batchdrop.cli", "validate", str(path)],
        "plan": [python, "-m", "benchmarks.peers", "plan", str(path)],
        "orjson": [python, "-m", "benchmarks.peers", "orjson", str(path)],
        "naive": [python, "-m", "benchmarks.peers", "naive", str(path)],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for args in commands.values():  # a warm-up each: the file and the modules in the page cache
        timed_process(args)
    for _ in range(3 if quick else 7):
        for name, args in commands.items():
            times[name].append(timed_process(args))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, what in (
        ("validate", "`batchdrop validate` (estimate on)"),
        ("plan", "the submit function's planning"),
    ):
        rows.append(
            {
                "benchmark": f"{what}, whole process, 100 MB ({lines:,} chat requests)",
                "batchdrop": f"{median[name]:.2f} s",
                "baseline": f"orjson line loop {median['orjson']:.2f} s; json+pydantic loop {median['naive']:.2f} s",
                "ratio": f"{median['orjson'] / median[name]:.2f}x orjson, {median['naive'] / median[name]:.1f}x naive",
            }
        )
    path.unlink()


# -- 6. end to end -----------------------------------------------------------------------------------


def bench_end_to_end(rows: list[dict[str, Any]], tmp: Path) -> None:
    from batchdrop.config import PROVIDER_DEFAULT_LIMITS
    from batchdrop.local.emulator import EmulatorKnobs
    from batchdrop.local.run import run_files
    from batchdrop.local.stack import StackOptions
    from batchdrop.validation import Validator

    path = tmp / "e2e-100k.jsonl"
    path.write_bytes(b"".join(line(i, 200) + b"\n" for i in range(100_000)))
    data = path.read_bytes()

    def validate() -> None:
        validator = Validator(providers=dict(PROVIDER_DEFAULT_LIMITS))
        for number, raw_line in lines_of(data):
            validator.check(number, raw_line)

    t_validate = best_of(1, validate)
    start = time.perf_counter()
    report = run_files([str(path)], str(tmp / "e2e-out"), StackOptions(knobs=EmulatorKnobs(latency=0)), timeout=1800)
    t_run = time.perf_counter() - start
    summary = report.jobs[0].summary or {}
    assert summary.get("counts", {}).get("succeeded") == 100_000, summary.get("counts")
    rows.append(
        {
            "benchmark": "end to end, 100,000 requests on the embedded stack",
            "batchdrop": f"{t_run:.1f} s ({100_000 / t_run:,.0f} requests/s)",
            "baseline": f"validating the same file {t_validate:.2f} s",
            "ratio": f"{t_run / t_validate:.0f}x",
        }
    )


def _bundles() -> types.ModuleType:
    # Imported when asked for: it imports the CDK (through infra.bundling), seconds at start-up.
    from benchmarks import bundles

    return bundles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="skip the 1 GB file, the 210 MB validation and the 100,000-request run"
    )
    parser.add_argument("--only", action="append", help="run only this step (repeatable), e.g. --only validation")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="batchdrop-bench-") as tmp:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("validation", lambda: bench_validation(rows, args.quick)),
            ("commands", lambda: bench_commands(rows, Path(tmp), args.quick)),
            ("imports", lambda: bench_imports(rows)),
            ("poll calls", lambda: bench_poll_calls(rows)),
            ("held calls", lambda: bench_held_calls(rows)),
            ("memory", lambda: bench_memory(rows, Path(tmp), args.quick)),
            ("submit memory", lambda: bench_submit_memory(rows, Path(tmp), args.quick)),
            ("deadline", lambda: bench_deadline(rows, Path(tmp))),
            ("tables", lambda: bench_tables(rows, Path(tmp), args.quick)),
            ("cache", lambda: bench_cache(rows, Path(tmp), args.quick)),
            ("bytecode", lambda: _bundles().bench_bytecode(rows, Path(tmp))),
        ]
        if not args.quick:
            steps.append(("end to end", lambda: bench_end_to_end(rows, Path(tmp))))
            steps.append(("realtime", lambda: bench_realtime(rows, Path(tmp))))
            steps.append(("aws-bill", lambda: bench_aws_bill(rows, Path(tmp))))
            steps.append(("bundles", lambda: _bundles().bench_bundles(rows, Path(tmp))))
        for name, step in steps:
            if args.only and name not in args.only:
                continue
            print(f"... {name}", file=sys.stderr, flush=True)
            step()
    print(f"\nbatchdrop benchmarks ({os.cpu_count()} cores, Python {sys.version.split()[0]})\n")
    print("| benchmark | batchdrop | baseline (same run) | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['benchmark']} | {row['batchdrop']} | {row['baseline']} | {row['ratio']} |")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\n(benchmark process peak RSS {usage.ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
