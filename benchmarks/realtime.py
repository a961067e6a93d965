"""The real-time lane, measured as users run it: `batchdrop local run` in a process.

- Throughput against a provider's rate limit: a file sent real-time while the emulator allows RPM
  requests a minute; the lane's pace after its first minute against the limit, and its share of 429s,
  next to a naive client (the official SDK's async client, 16 calls at a time, its own retries
  honouring retry-after, no pacing) measured against the same limit in the same run.
- The cost of a deadline: a file whose batch provider is slower than the deadline; the share of
  requests escalated to the real-time lane, and the cost against all-batch and all-real-time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

RPM = 1200
REQUESTS = 2600  # a little over two minutes at RPM


def chat_lines(path: Path, n: int) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": 16,
            }
            f.write(
                orjson.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
                + b"\n"
            )
    return path


def after_first_minute(calls: list[tuple[float, int]]) -> tuple[float, float, float]:
    """(answered per minute, share of the limit, share of 429s) over the calls after the first minute."""
    start = min(at for at, _ in calls)
    later = [(at, status) for at, status in calls if at >= start + 60]
    if not later:
        return 0.0, 0.0, 0.0
    span = max(at for at, _ in later) - (start + 60)
    ok = sum(1 for _, status in later if status == 200)
    per_minute = ok / max(span, 1e-9) * 60
    return per_minute, per_minute / RPM, sum(1 for _, status in later if status == 429) / len(later)


def lane_run(tmp: Path) -> list[tuple[float, int]]:
    path = chat_lines(tmp / "rt.jsonl", REQUESTS)
    out = tmp / "rt-out"
    env = {**os.environ, "BATCHDROP_LANE": "realtime", "POWERTOOLS_LOG_LEVEL": "ERROR"}
    subprocess.run(
        [sys.executable, "-m", "batchdrop.cli", "local", "run", str(path), "--out", str(out),
         "--lane", "realtime", "--realtime-rpm", f"openai={RPM}", "--timeout", "900"],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    stats = json.loads((out / "provider_stats.json").read_text())
    return [(c["at"], c["status"]) for c in stats["realtime_calls"]]


NAIVE = r"""
import asyncio, sys, time, openai
calls = []
async def hook(response):
    calls.append((time.time(), response.status_code))
async def main(base, n):
    http = openai.DefaultAsyncHttpxClient(event_hooks={"response": [hook]})
    client = openai.AsyncOpenAI(base_url=base, api_key="k", http_client=http)
    gate = asyncio.Semaphore(16)
    async def one(i):
        async with gate:
            try:
                await client.chat.completions.create(model="gpt-4o-mini", max_tokens=16,
                    messages=[{"role": "user", "content": f"question {i}"}])
            except openai.RateLimitError:
                pass
    await asyncio.gather(*(one(i) for i in range(n)))
    await http.aclose()
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
import json; print(json.dumps(calls))
"""


def naive_run() -> list[tuple[float, int]]:
    from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator

    with ProviderEmulator(EmulatorKnobs(realtime_rpm={"openai": RPM})) as emulator:
        out = subprocess.run(
            [sys.executable, "-c", NAIVE, emulator.openai_base_url, str(REQUESTS)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    return [(at, status) for at, status in json.loads(out.stdout.strip().splitlines()[-1])]


def bench_realtime(rows: list[dict[str, Any]], tmp: Path) -> None:
    ours = after_first_minute(lane_run(tmp))
    naive = after_first_minute(naive_run())
    rows.append(
        {
            "benchmark": f"real-time lane, {REQUESTS:,} requests, limit {RPM:,}/min (after the first minute)",
            "batchdrop": f"{ours[0]:,.0f}/min ({ours[1]:.0%} of the limit), 429s {ours[2]:.1%} of calls",
            "baseline": f"naive SDK client, 16 at a time: {naive[0]:,.0f}/min ({naive[1]:.0%}), 429s {naive[2]:.1%}",
            "ratio": f"{ours[1] / max(naive[1], 1e-9):.2f}x the pace, 429s "
            + (f"{naive[2] / ours[2]:.0f}x fewer" if ours[2] else f"none against {naive[2]:.1%}"),
        }
    )


def bench_deadline(rows: list[dict[str, Any]], tmp: Path) -> None:
    path = chat_lines(tmp / "late.jsonl", 2000)
    out = tmp / "late-out"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "batchdrop.cli", "local", "run", str(path), "--out", str(out),
         "--provider-latency", "300", "--deadline", "120s", "--min-batch-window", "30s",
         "--escalation-margin", "30s", "--realtime-rpm", "openai=6000", "--lane", "auto", "--timeout", "300"],
        check=True, env={**os.environ, "BATCHDROP_LANE": "auto"}, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    took = time.perf_counter() - started
    summary = json.loads(next(out.rglob("summary.json")).read_text())
    lanes = summary["counts"]["by_lane"]
    cost = summary["cost_usd"]
    all_batch = cost["realtime_equivalent"] / 2
    rows.append(
        {
            "benchmark": "a 2,000-request file, its batch (300 s) slower than its 120 s deadline",
            "batchdrop": f"{lanes['realtime'] / 2000:.0%} escalated, met_deadline {summary['met_deadline']}, "
            f"${cost['total']:.5f} in {took:.0f} s",
            "baseline": f"all batch ${all_batch:.5f} (misses the deadline); "
            f"all real-time ${cost['realtime_equivalent']:.5f}",
            "ratio": f"{cost['total'] / all_batch:.2f}x all-batch, {cost['total'] / cost['realtime_equivalent']:.2f}x "
            "all-real-time",
        }
    )
