"""Table jobs (issue 18), measured as users run them: `batchdrop validate <manifest>` and the submit
handler on the embedded stack, each a whole process, beside what a user writes today (pandas reads the
whole table, then a loop renders a Jinja2 template per row and writes JSONL), measured in the same run.

python -m benchmarks --only tables           # rows/s and peak RSS, 100 MB and 1 GB Parquet (~21 min)
python -m benchmarks --only tables --quick   # no 1 GB file (~3 min)

The programs it runs beside batchdrop's commands, on the same files:

python -m benchmarks.tables naive-iterrows MANIFEST OUT   # pandas read, df.iterrows(), jinja2, json.dumps
python -m benchmarks.tables naive-records MANIFEST OUT    # the same with df.to_dict("records")
python -m benchmarks.tables join MANIFEST RESULTS ERRORS OUT   # completion's join (tables/join.py)
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from benchmarks.processes import FRESH, free_port, wait_for

MB = 1024 * 1024
MODEL = "gpt-4o-mini"
# A triage prompt: a system and a user template reading three of the table's eight columns, and the
# ticket id as custom_id (what a support team would write), max_tokens 64.
SYSTEM = "You triage support tickets for {{ product }}. Reply with the category and how urgent it is."
USER = "Subject: {{ subject }}\n\n{{ body }}"
MAX_TOKENS = 64
COLUMNS = ["ticket_id", "created_at", "customer", "plan", "product", "channel", "subject", "body"]
# A row group is closed once it holds this much Arrow data (uncompressed): Spark's parquet.block.size.
ROW_GROUP_BYTES = 128 * MB

VOCABULARY = (
    "the a my our your it this that is was not can cannot when after before since again still now "
    "invoice charge charged twice refund payment card billing plan upgrade downgrade subscription "
    "login password reset account locked email verify two-factor code expired session logout "
    "error crash freeze slow timeout upload download sync export import report dashboard page "
    "button click screen mobile app browser chrome safari android iphone update version latest "
    "please help urgent asap thanks hello hi team support ticket issue problem bug broken working "
    "since yesterday today morning week customer order shipping delivery tracking address missing "
    "data lost file files folder shared permission admin user users team settings api key webhook"
)
WORDS = VOCABULARY.split()
PRODUCTS = ["Acme CRM", "Acme Billing", "Acme Mobile", "Acme Analytics", "Acme Storage"]
PLANS = ["free", "starter", "pro", "enterprise"]
CHANNELS = ["email", "chat", "web", "phone"]


# -- the table --------------------------------------------------------------------------------------


def _corpus(rng: random.Random, chars: int) -> str:
    """Text to cut ticket bodies from: words of a support vocabulary and random names and numbers, so
    that Parquet compresses it about as much as real tickets (2x to 3x), not to nothing."""
    out: list[str] = []
    size = 0
    letters = "abcdefghijklmnopqrstuvwxyz"
    while size < chars:
        if rng.random() < 0.15:
            word = "".join(rng.choices(letters, k=rng.randint(3, 9)))
        elif rng.random() < 0.05:
            word = f"#{rng.randint(1000, 999999)}"
        else:
            word = rng.choice(WORDS)
        out.append(word + (". " if rng.random() < 0.08 else " "))
        size += len(out[-1])
    return "".join(out)


def ticket_blocks(rows: int, seed: int = 18, block: int = 50_000) -> Iterator[dict[str, list[Any]]]:
    """`rows` support tickets, a block of columns at a time: bodies of 200 to 2,000 characters."""
    rng = random.Random(seed)
    corpus = _corpus(rng, 8 * MB)
    top = len(corpus) - 2100
    done = 0
    while done < rows:
        n = min(block, rows - done)
        cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        for i in range(done, done + n):
            start = rng.randrange(top)
            cols["ticket_id"].append(f"T-{i + 1:08d}")
            cols["created_at"].append(f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z")
            cols["customer"].append(f"customer-{rng.randrange(50_000):05d}")
            cols["plan"].append(rng.choice(PLANS))
            cols["product"].append(rng.choice(PRODUCTS))
            cols["channel"].append(rng.choice(CHANNELS))
            s = rng.randrange(top)
            cols["subject"].append(corpus[s : s + rng.randint(20, 80)].strip().capitalize())
            cols["body"].append(corpus[start : start + rng.randint(200, 2000)].strip())
        yield cols
        done += n


# pyarrow's writer puts at most this many rows in a row group (what pandas' to_parquet gives).
PYARROW_GROUP_ROWS = 1024 * 1024


def write_parquet(path: Path, rows: int, row_group_bytes: int | None = ROW_GROUP_BYTES) -> dict[str, Any]:
    """The table as Parquet (pyarrow's writer, snappy): row groups of about `row_group_bytes` of Arrow
    data, or pyarrow's default (1,048,576 rows a group) when None. Run in a child process by the
    benchmarks (`write-parquet`), so a group being filled is not in their RSS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    pending: list[pa.Table] = []
    pending_bytes = pending_rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for cols in ticket_blocks(rows):
            table = pa.table(cols, schema=schema)
            pending.append(table)
            pending_bytes += table.nbytes
            pending_rows += table.num_rows
            if (row_group_bytes is None and pending_rows >= PYARROW_GROUP_ROWS) or (
                row_group_bytes is not None and pending_bytes >= row_group_bytes
            ):
                whole = pa.concat_tables(pending)
                writer.write_table(whole, row_group_size=PYARROW_GROUP_ROWS if row_group_bytes is None else len(whole))
                pending, pending_bytes, pending_rows = [], 0, 0
        if pending:
            whole = pa.concat_tables(pending)
            writer.write_table(whole, row_group_size=len(whole))
    meta = pq.ParquetFile(path).metadata
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    return {
        "rows": meta.num_rows,
        "row_groups": meta.num_row_groups,
        "group_rows": max(g.num_rows for g in groups),
        "group_bytes": max(g.total_byte_size for g in groups),  # uncompressed
        "bytes": path.stat().st_size,
    }


def parquet_in_child(path: Path, rows: int, row_group_bytes: int | None) -> dict[str, Any]:
    args = [sys.executable, "-m", "benchmarks.tables", "write-parquet", str(path), str(rows), str(row_group_bytes)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def write_csv(path: Path, rows: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    with pcsv.CSVWriter(path, schema) as writer:
        for cols in ticket_blocks(rows):
            writer.write_table(pa.table(cols, schema=schema))
    return {"rows": rows, "bytes": path.stat().st_size}


def parquet_rows_for(size: int) -> int:
    """Rows that make a Parquet file of about `size` bytes (measured on this generator: ~640 bytes a row)."""
    return int(size / 640)


def write_manifest(folder: Path, data: str) -> Path:
    manifest = {
        "data": data,
        "model": MODEL,
        "id_column": "ticket_id",
        "system": SYSTEM,
        "user": USER,
        "max_tokens": MAX_TOKENS,
        # No "response_format": the rendered neutral line carries it, and the neutral format refuses it
        # (every row would be invalid_request; reported with issue 18).
    }
    name = data.rsplit("/", 1)[-1].replace(".", "-") + ".job.json"
    path = folder / name
    path.write_text(json.dumps(manifest, indent=2))
    return path


# -- the naive peer: what a user writes today ---------------------------------------------------------


def naive(manifest_path: str, out_path: str, loop: str) -> int:
    """pandas reads the whole table, a loop renders the templates per row with jinja2.Template and
    json.dumps an OpenAI batch line, written to a JSONL file."""
    import jinja2
    import pandas as pd

    manifest = json.loads(Path(manifest_path).read_text())
    data = str(Path(manifest_path).parent / manifest["data"])
    df = pd.read_parquet(data) if data.endswith(".parquet") else pd.read_csv(data)
    system, user = jinja2.Template(manifest["system"]), jinja2.Template(manifest["user"])
    rows = (row for _, row in df.iterrows()) if loop == "iterrows" else iter(df.to_dict("records"))
    n = 0
    with open(out_path, "w") as out:
        for row in rows:
            body: dict[str, Any] = {
                "model": manifest["model"],
                "messages": [
                    {"role": "system", "content": system.render(**row)},
                    {"role": "user", "content": user.render(**row)},
                ],
                "max_tokens": manifest["max_tokens"],
            }
            if "response_format" in manifest:
                body["response_format"] = manifest["response_format"]
            line = {"custom_id": row["ticket_id"], "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(json.dumps(line) + "\n")
            n += 1
    return n


# -- measuring a whole process -------------------------------------------------------------------------

# Runs its arguments as a child and prints the child's wall time, peak RSS (KB) and exit code: a fresh
# small parent, so the child's ru_maxrss is its own (Linux carries a large parent's peak into a child
# spawned directly from it).
MEASURE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)"
)


def measure(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of one run of a command as a process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, check=True, env=env)
    seconds, kb, code = out.stdout.split()
    return float(seconds), int(kb) / 1024, int(code)


def median_runs(commands: dict[str, list[str]], rounds: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Each command run `rounds[name]` times as a fresh process, the commands taking turns (so the
    machine's drift falls on all alike) after a warm-up each; (median seconds, median peak RSS MB)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    peaks: dict[str, list[float]] = {name: [] for name in commands}
    for name, args in commands.items():  # the files and the modules in the page cache
        if rounds[name] > 3:
            measure(args)
    for r in range(max(rounds.values())):
        for name, args in commands.items():
            if r < rounds[name]:
                seconds, peak, code = measure(args)
                if code not in (0,):
                    raise RuntimeError(f"{' '.join(args)} exited with {code}")
                times[name].append(seconds)
                peaks[name].append(peak)
    return {name: (statistics.median(times[name]), statistics.median(peaks[name])) for name in commands}


def bench_table_throughput(rows: list[dict[str, Any]], tmp: Path, quick: bool) -> None:
    """`batchdrop validate <manifest>` (renders every row, then the submit function's own validation and
    planning, estimate on) against the pandas peers, each a whole process on the same table, as CSV and
    as Parquet."""
    count = 50_000 if quick else 200_000
    (tmp / "data").mkdir(exist_ok=True)
    python = sys.executable
    out = str(tmp / "peer-out.jsonl")
    for fmt in ("csv", "parquet"):
        data = tmp / "data" / f"tickets-{count}.{fmt}"
        info = write_csv(data, count) if fmt == "csv" else parquet_in_child(data, count, ROW_GROUP_BYTES)
        manifest = str(write_manifest(tmp, f"data/{data.name}"))
        commands = {
            "validate": [python, "-m", "batchdrop.cli", "validate", manifest],
            "records": [python, "-m", "benchmarks.tables", "naive-records", manifest, out],
        }
        rounds = {"validate": 3 if quick else 5, "records": 3 if quick else 5}
        if fmt == "parquet" and not quick:  # 4x slower than the others: three rounds, on one format
            commands["iterrows"] = [python, "-m", "benchmarks.tables", "naive-iterrows", manifest, out]
            rounds["iterrows"] = 3
        found = median_runs(commands, rounds)
        t, rss = found["validate"]
        t_rec, rss_rec = found["records"]
        peer = f'pandas + to_dict("records") + jinja2 + json.dumps {count / t_rec:,.0f} rows/s, {rss_rec:.0f} MB'
        ratio = f"{t_rec / t:.2f}x records"
        if "iterrows" in found:
            t_it, rss_it = found["iterrows"]
            peer += f"; the same with iterrows() {count / t_it:,.0f} rows/s, {rss_it:.0f} MB"
            ratio += f", {t_it / t:.1f}x iterrows"
        groups = f", {info['row_groups']} row groups" if fmt == "parquet" else ""
        _add(
            rows,
            {
                "benchmark": f"table job, `batchdrop validate <manifest>` whole process, {fmt.upper()} "
                f"{info['bytes'] / MB:.0f} MB ({count:,} rows{groups}): rows/s, peak RSS",
                "batchdrop": f"{count / t:,.0f} rows/s ({t:.1f} s), {rss:.0f} MB",
                "baseline": peer,
                "ratio": f"{ratio}; RSS {rss / rss_rec:.2f}x records",
            },
        )
        data.unlink()
    Path(out).unlink(missing_ok=True)


# -- peak RSS: the submit handler on the embedded stack, 100 MB and 1 GB of Parquet --------------------

TABLE_SUBMIT_CHILD = """
import json, os, resource, sys
os.environ.update(json.loads(sys.argv[1]))
from batchdrop.handlers.submit import handler
from batchdrop.local.dispatcher import LocalContext
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = handler(json.loads(sys.argv[2]), LocalContext("submit"))
assert out["jobs"][0]["outcome"] == "submitted", out
print(json.dumps({"baseline_kb": baseline, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "counts": out["jobs"][0].get("counts")}))
"""


class _Stack:
    """moto's server and the emulator in their own processes (their memory is not the handler's)."""

    def __enter__(self) -> _Stack:
        self.aws_port, self.emulator_port = free_port(), free_port()
        python = sys.executable
        self.servers = [
            subprocess.Popen([python, "-m", "moto.server", "-p", str(self.aws_port)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL),
            subprocess.Popen([python, "-m", "batchdrop.cli", "emulator", "--port", str(self.emulator_port),
                              "--provider-latency", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]  # fmt: skip
        wait_for(self.aws_port)
        wait_for(self.emulator_port)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.terminate()
            server.wait(timeout=30)

    def submit_peak(self, data: Path, manifest: Path) -> dict[str, Any]:
        """Upload the table and its manifest to a fresh stack, run the submit handler on the manifest's
        S3 event as a process, and return its peak RSS (and the RSS before the invocation)."""
        from batchdrop.adapters import aws
        from batchdrop.local import stack as s
        from batchdrop.local.emulator import EmulatorKnobs

        options = s.StackOptions(
            knobs=EmulatorKnobs(),
            providers=("openai", "anthropic"),
            external_aws=f"http://127.0.0.1:{self.aws_port}",
            external_emulator=f"http://127.0.0.1:{self.emulator_port}",
        )
        with s.LocalStack(options) as local:
            local.upload(str(data), f"data/{data.name}")  # the data before the manifest, as users must
            key = f"inputs/{manifest.name}"
            local.upload(str(manifest), key)
            sqs = aws.client("sqs")
            event: dict[str, Any] | None = None
            deadline = time.monotonic() + 120
            while event is None and time.monotonic() < deadline:
                for message in sqs.receive_message(QueueUrl=local.queue_urls[s.S3_EVENTS_QUEUE], WaitTimeSeconds=1).get(
                    "Messages", []
                ):
                    body = json.loads(message["Body"])
                    # moto's events carry the key URL-encoded, as S3's do.
                    if any(unquote_plus(r["s3"]["object"]["key"]) == key for r in body.get("Records", [])):
                        event = body
            if event is None:
                raise RuntimeError(f"no S3 event for {key}")
            env = {
                **local.function_env(),
                **{k: os.environ[k] for k in os.environ if k.startswith(("AWS_", "POWERTOOLS_"))},
            }
            child = [sys.executable, "-c", TABLE_SUBMIT_CHILD, json.dumps(env), json.dumps(event)]
            out = subprocess.run([sys.executable, "-c", FRESH, *child], capture_output=True, text=True,
                                 check=True, env={**os.environ, **env})  # fmt: skip
            return dict(json.loads(out.stdout.strip().splitlines()[-1]))


PARTS = ("validate", "handler", "join")  # handler: with the pandas peer


def _add(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """A row of the table, also shown at once (the runs take long; a row is not lost with the rest)."""
    rows.append(row)
    print(f"  | {row['benchmark']} | {row['batchdrop']} | {row['baseline']} | {row['ratio']} |", file=sys.stderr)


def bench_table_memory(rows: list[dict[str, Any]], tmp: Path, quick: bool, parts: tuple[str, ...] = PARTS) -> None:
    """Peak RSS of what renders and plans every row of a Parquet table of 100 MB and of 1 GB (row groups
    of ~128 MB of Arrow data, as Spark writes them): the submit handler on the embedded stack (a fresh
    stack each: the emulator keeps every batch in memory), `batchdrop validate`, and the pandas peer,
    each a process; then completion's join of synthetic answers onto the same table. And `batchdrop
    validate` on 1 GB written with pyarrow's default row groups (pandas' `to_parquet`)."""
    (tmp / "data").mkdir(exist_ok=True)
    python = sys.executable
    out = str(tmp / "peer-out.jsonl")
    cases: list[tuple[str, int, int | None, tuple[str, ...]]] = [("100 MB", 100 * MB, ROW_GROUP_BYTES, parts)]
    if not quick:
        cases += [
            ("1 GB", 1024 * MB, ROW_GROUP_BYTES, parts),
            ("1 GB, pyarrow's default row groups,", 1024 * MB, None, tuple(p for p in parts if p == "validate")),
        ]
    handler: dict[str, float] = {}
    validate: dict[str, float] = {}
    joined: dict[str, float] = {}
    for label, size, group_bytes, todo in cases:
        if not todo:
            continue
        data = tmp / "data" / f"tickets-{size // MB}{'' if group_bytes else '-default'}.parquet"
        info = parquet_in_child(data, parquet_rows_for(size), group_bytes)
        manifest = write_manifest(tmp, f"data/{data.name}")
        what = (
            f"Parquet {info['bytes'] / MB:,.0f} MB ({info['rows']:,} rows, {info['row_groups']} row groups"
            f" of up to {info['group_rows']:,} rows, {info['group_bytes'] / MB:,.0f} MB uncompressed)"
        )
        if "validate" in todo:
            runs = 3 if size < 1024 * MB else 1
            peaks = [measure([python, "-m", "batchdrop.cli", "validate", str(manifest)]) for _ in range(runs)]
            if any(p[2] != 0 for p in peaks):
                raise RuntimeError(f"batchdrop validate {manifest} found invalid rows")
            validate[label] = statistics.median(p[1] for p in peaks)
            seconds = statistics.median(p[0] for p in peaks)
            if "handler" not in todo:
                _add(
                    rows,
                    {
                        "benchmark": f"peak RSS, `batchdrop validate <manifest>`, table job, {what}",
                        "batchdrop": f"{validate[label]:.0f} MB ({info['rows'] / seconds:,.0f} rows/s)",
                        "baseline": "the 256 MB target",
                        "ratio": f"{validate[label] / 256:.2f}x the target",
                    },
                )
        if "handler" in todo:
            with _Stack() as stack:
                figures = stack.submit_peak(data, manifest)
            handler[label] = figures["peak_kb"] / 1024
            _, peer, code = measure([python, "-m", "benchmarks.tables", "naive-records", str(manifest), out])
            if code != 0:
                raise RuntimeError("the pandas peer failed")
            Path(out).unlink(missing_ok=True)
            _add(
                rows,
                {
                    "benchmark": f"peak RSS, submit handler on the embedded stack, table job, {what}",
                    "batchdrop": f"{handler[label]:.0f} MB"
                    + (f" (`batchdrop validate`: {validate[label]:.0f} MB)" if label in validate else ""),
                    "baseline": f"pandas peer {peer:,.0f} MB; the handler's process before the invocation "
                    f"{figures['baseline_kb'] / 1024:.0f} MB",
                    "ratio": f"{handler[label] / peer:.2f}x pandas; {handler[label] / 256:.2f}x the 256 MB target",
                },
            )
        if "join" in todo:
            results, errors = tmp / "results.jsonl", tmp / "errors.jsonl"
            write_outputs(info["rows"], results, errors)
            args = [str(manifest), str(results), str(errors), str(tmp / "results.parquet")]
            seconds, peak, code = measure([python, "-m", "benchmarks.tables", "join", *args])
            if code != 0:
                raise RuntimeError("the join failed")
            joined[label] = peak
            _add(
                rows,
                {
                    "benchmark": f"completion's join (tables/join.py write_table) as a process, {what}, "
                    f"results.jsonl {results.stat().st_size / MB:,.0f} MB",
                    "batchdrop": f"{info['rows'] / seconds:,.0f} rows/s ({seconds:.0f} s), {peak:.0f} MB",
                    "baseline": "the 256 MB target",
                    "ratio": f"{peak / 256:.2f}x the target",
                },
            )
            for path in (results, errors, tmp / "results.parquet"):
                path.unlink(missing_ok=True)
        data.unlink()
    for label in [c[0] for c in cases[1:]]:
        measured = [
            (name, figures_[label], figures_["100 MB"])
            for name, figures_ in (("submit handler", handler), ("validate", validate), ("join", joined))
            if label in figures_ and "100 MB" in figures_
        ]
        if measured:
            _add(
                rows,
                {
                    "benchmark": f"table job peak RSS, Parquet {label} vs 100 MB",
                    "batchdrop": "; ".join(f"{name} {big:.0f} vs {small:.0f} MB" for name, big, small in measured),
                    "baseline": "flat would be 1.00x (target ≤ 1.20x, < 256 MB)",
                    "ratio": ", ".join(f"{name} {big / small:.2f}x" for name, big, small in measured),
                },
            )


# -- completion's join: the answers back onto every row ------------------------------------------------


def write_outputs(rows: int, results_path: Path, errors_path: Path, fail_every: int = 100) -> None:
    """results.jsonl and errors.jsonl as completion writes them for `rows` rows (1 in `fail_every` an
    error), a batch of 50,000 rows at a time in the reverse order (batches end in any order)."""
    import orjson

    with results_path.open("wb") as results, errors_path.open("wb") as errors:
        for start in reversed(range(1, rows + 1, 50_000)):
            ok: list[bytes] = []
            bad: list[bytes] = []
            for line in range(start, min(start + 50_000, rows + 1)):
                custom_id = f"T-{line:08d}"
                if line % fail_every == 0:
                    bad.append(
                        orjson.dumps(
                            {"custom_id": custom_id, "line": line, "stage": "provider", "code": "server_error",
                             "message": "The server had an error processing your request.", "provider": "openai",
                             "batch_id": "batch_1", "attempts": 2, "detail": None, "lane": "batch"}
                        )
                    )  # fmt: skip
                    continue
                text = '{"category": "billing", "urgent": false}'
                usage = {"prompt_tokens": 310, "completion_tokens": 12, "total_tokens": 322}
                body = {
                    "id": f"chatcmpl-{line}",
                    "object": "chat.completion",
                    "created": 1780000000,
                    "model": "gpt-4o-mini-2024-07-18",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": usage,
                }  # fmt: skip
                ok.append(
                    orjson.dumps(
                        {"custom_id": custom_id, "line": line, "provider": "openai", "model": body["model"],
                         "batch_id": "batch_1", "status": "succeeded", "lane": "batch", "text": text,
                         "usage": {"input_tokens": 310, "output_tokens": 12}, "response": body}
                    )
                )  # fmt: skip
            results.write(b"\n".join(ok) + b"\n")
            if bad:
                errors.write(b"\n".join(bad) + b"\n")


def join(manifest_path: str, results_path: str, errors_path: str, out_path: str) -> int:
    """Completion's join (tables/join.py write_table) of a table job's outputs onto its table, the
    table read from the folder of the manifest as `batchdrop validate` reads it."""
    import tempfile

    from batchdrop.pricing import price_table
    from batchdrop.tables.files import folder_of
    from batchdrop.tables.job import open_job
    from batchdrop.tables.join import write_table
    from batchdrop.tables.sources import LocalObjects

    source = LocalObjects(folder_of(manifest_path))
    job = open_job(source, os.path.basename(manifest_path), Path(manifest_path).read_bytes())
    with tempfile.TemporaryDirectory() as work:
        output = write_table(source, job.to_json(), results_path, errors_path, out_path, price_table(), tmpdir=work)
    if output.missing:
        raise SystemExit(f"{output.missing} rows without an answer")
    return output.rows


def bench_tables(rows: list[dict[str, Any]], tmp: Path, quick: bool) -> None:
    bench_table_memory(rows, tmp, quick)
    bench_table_throughput(rows, tmp, quick)


if __name__ == "__main__":
    what = sys.argv[1]
    if what in ("naive-iterrows", "naive-records"):
        print(naive(sys.argv[2], sys.argv[3], what.removeprefix("naive-")))
    elif what == "join":
        print(join(*sys.argv[2:6]))
    elif what == "write-parquet":
        group = None if sys.argv[4] == "None" else int(sys.argv[4])
        print(json.dumps(write_parquet(Path(sys.argv[2]), int(sys.argv[3]), group)))
    else:
        raise SystemExit(f"unknown: {what}")
