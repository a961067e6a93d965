"""What batchdrop itself costs on AWS per million requests (issue 17, item 5).

100,000 requests in ten files of 10,000 (two per provider: OpenAI, Anthropic, Azure OpenAI under
inputs/azure/, Gemini, Bedrock), all in the batch lane, run by `run_files` on the embedded stack with
the AWS bill on: every call the functions make, counted and priced at us-east-1 list prices
(`batchdrop.local.bill`, `batchdrop.local.aws_prices`).

Lambda durations are this machine's. The deployed functions get a share of a vCPU in proportion to
their memory (0.58 at 1,024 MB, 0.29 at 512 MB), so the figure is given twice: as measured, and as
the upper bound where every measured second is CPU stretched by that share.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import orjson

REQUESTS = 100_000
FILES_PER_PROVIDER = 2
PROVIDERS = ("openai", "anthropic", "azure", "gemini", "bedrock")
# A realistic request: a system prompt, a question of a few hundred characters, a modest answer cap.
SYSTEM = "You are a careful assistant. Answer in at most three sentences, plainly, without lists."
TOPICS = ("photosynthesis", "the water cycle", "plate tectonics", "compound interest", "vaccines", "tides")


def question(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return (
        f"Question {i}: a ten-year-old asked me how {topic} works and why it matters in everyday life. "
        f"Explain it to them with one concrete example they could see at home or at school, and say what "
        f"would change if it stopped."
    )


def line(provider: str, i: int) -> dict[str, Any]:
    cid = f"{provider}-{i:06d}"
    messages = [{"role": "user", "content": question(i)}]
    if provider in ("openai", "azure"):
        # Azure OpenAI takes OpenAI's lines; its model field names the deployment.
        model = "gpt-4o-mini" if provider == "openai" else "gpt-4o-mini-batch"
        body = {"model": model, "messages": [{"role": "system", "content": SYSTEM}, *messages], "max_tokens": 256}
        return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    if provider == "anthropic":
        params = {"model": "claude-haiku-4-5", "max_tokens": 256, "system": SYSTEM, "messages": messages}
        return {"custom_id": cid, "params": params}
    model = {"gemini": "gemini-2.5-flash", "bedrock": "amazon.nova-lite-v1:0"}[provider]
    return {"custom_id": cid, "model": model, "system": SYSTEM, "messages": messages, "max_tokens": 256}


def write_files(folder: Path, requests: int = REQUESTS) -> tuple[list[str], list[str]]:
    """The files and their keys under inputs/ (Azure's under inputs/azure/, which routes it there)."""
    per_file = requests // (len(PROVIDERS) * FILES_PER_PROVIDER)
    paths, keys = [], []
    n = 0
    for provider in PROVIDERS:
        for f in range(FILES_PER_PROVIDER):
            path = folder / f"{provider}-{f}.jsonl"
            with path.open("wb") as out:
                out.write(b"".join(orjson.dumps(line(provider, n + k)) + b"\n" for k in range(per_file)))
            n += per_file
            paths.append(str(path))
            keys.append(f"inputs/azure/{path.name}" if provider == "azure" else f"inputs/{path.name}")
    return paths, keys


# -- the naive design, for scale ---------------------------------------------------------------------

# One item per request (~200 bytes of state), written when submitted and again when answered, and a poll
# every minute that scans those items while a batch is open (a day, the providers' window).
NAIVE_ITEM_BYTES = 200
NAIVE_OPEN_MINUTES = 24 * 60


def naive_per_million() -> tuple[float, str]:
    from batchdrop.local import aws_prices as p

    writes = 2 * 1_000_000 * p.write_units(NAIVE_ITEM_BYTES)
    scan_units = p.read_units(1_000_000 * NAIVE_ITEM_BYTES, consistent=False) * NAIVE_OPEN_MINUTES
    usd = writes * p.PRICES["dynamodb.write_units"].usd + scan_units * p.PRICES["dynamodb.read_units"].usd
    return usd, "a DynamoDB item per request written twice, and a scan of them every minute for a day"


# -- what the local clock leaves out ----------------------------------------------------------------

# The emulator ends batches at once; a provider's take hours. The poll looks at a running batch again
# after a quarter of its age, between 30 s and 30 min (BATCHDROP_POLL_MIN/MAX_SECONDS), on the schedule's
# ticks (every 5 minutes).
SCHEDULE_SECONDS = 300
BATCH_HOURS = 24
# A look's provider call (the batch's status over the internet) keeps the poll this long.
LOOK_SECONDS = 0.2


def looks_per_batch(hours: float = BATCH_HOURS) -> int:
    at, looks = 0.0, 0
    while at < hours * 3600:
        wait = min(1800.0, max(30.0, at / 4))
        at = math.ceil((at + wait) / SCHEDULE_SECONDS) * SCHEDULE_SECONDS
        looks += 1
    return looks


def slow_batches_per_million(bill: Any, batches: int) -> tuple[float, int, float]:
    """(extra $ per million requests, looks per batch, $ per look) had every batch run BATCH_HOURS: each
    look is the poll's write of the batch (its measured average, index included), its share of the
    due-index query (half a read unit), and LOOK_SECONDS of the poll function."""
    from batchdrop import blueprint
    from batchdrop.local import aws_prices as p

    writes = [
        line
        for line in bill.lines
        if (line.service, line.operation, line.function) == ("dynamodb", "UpdateItem", "poll")
    ]
    write = sum(line.usd for line in writes) / max(1, sum(line.calls for line in writes))
    lambda_s = p.lambda_gb_seconds(LOOK_SECONDS, blueprint.POLL.memory_mb) * p.PRICES["lambda.gb_seconds"].usd
    look = write + 0.5 * p.PRICES["dynamodb.read_units"].usd + lambda_s
    looks = looks_per_batch()
    return bill.per_million(batches * looks * look), looks, look


# -- the run -----------------------------------------------------------------------------------------


def markdown(bill: Any) -> list[str]:
    """The breakdown as docs/costs.md shows it."""
    per_m = bill.per_million
    out = ["| service | operation | calls per 1M requests | $ per 1M requests |", "|---|---|---:|---:|"]
    for (service, operation), calls, usd in bill.by("service", "operation"):
        out.append(f"| {service} | {operation} | {per_m(calls):,.0f} | {per_m(usd):.4f} |")
    out += ["", "| service | $ per 1M requests |", "|---|---:|"]
    for (service,), _, usd in bill.by("service"):
        out.append(f"| {service} | {per_m(usd):.4f} |")
    out += ["", "| function | $ per 1M requests |", "|---|---:|"]
    for (function,), _, usd in bill.by("function"):
        out.append(f"| {function} | {per_m(usd):.4f} |")
    out += ["", "| fixed, per month | $ |", "|---|---:|"]
    out += [f"| {f.what} | {f.usd_per_month:.2f} |" for f in bill.fixed]
    out.append(f"| total | {bill.fixed_total:.2f} |")
    return out


def bench_aws_bill(rows: list[dict[str, Any]], tmp: Path, requests: int = REQUESTS) -> None:
    from batchdrop.local.emulator import EmulatorKnobs
    from batchdrop.local.run import run_files
    from batchdrop.local.stack import StackOptions

    paths, keys = write_files(tmp, requests)
    started = time.perf_counter()
    report = run_files(
        paths,
        str(tmp / "bill-out"),
        # The batch lane for every file (the real-time lane is for small ones); Bedrock's minimum of 100
        # records per job is met by every file.
        StackOptions(knobs=EmulatorKnobs(latency=0), lane="batch"),
        keys=keys,
        timeout=3600,
        aws_bill=True,
    )
    took = time.perf_counter() - started
    bill = report.bill
    assert bill is not None
    succeeded = sum(((j.summary or {}).get("counts") or {}).get("succeeded", 0) for j in report.jobs)
    assert succeeded == requests, [(j.file, j.status, (j.summary or {}).get("counts")) for j in report.jobs]
    per_m = bill.per_million(bill.total)
    per_m_cpu = bill.per_million(bill.total_cpu_bound)
    saved = report.saved_usd or 0.0
    naive, naive_what = naive_per_million()
    batches = sum(len((j.summary or {}).get("batches") or []) for j in report.jobs)
    slow, looks, look = slow_batches_per_million(bill, batches)
    print(f"\nThe AWS bill of {requests:,} requests ({len(paths)} files, {bill.invocations} invocations, {took:.0f} s)")
    print("\n".join(markdown(bill)))
    print(
        f"\nper million requests: ${per_m:.4f} as measured (Lambda {bill.gb_seconds:.1f} GB-s in the run), "
        f"${per_m_cpu:.4f} with every Lambda second stretched to its vCPU share ({bill.gb_seconds_cpu_bound:.1f} GB-s)"
    )
    print(
        f"batch savings in the run ${saved:.2f} (${bill.per_million(saved):.2f} per million): the bill is "
        f"{bill.total / saved:.3%} of it"
        if saved
        else "no batch savings priced"
    )
    print(f"naive design ({naive_what}): ${naive:.2f} per million, {naive / per_m:.0f}x ours")
    print(
        f"had its {batches} batches taken {BATCH_HOURS} h each: {looks} looks a batch at ${look:.7f}, "
        f"+${slow:.4f} per million (${per_m + slow:.4f} in all)"
    )
    rows.append(
        {
            "benchmark": f"AWS bill per million requests, {requests:,} requests in {len(paths)} files, 5 providers",
            "batchdrop": f"${per_m:.4f} (${per_m_cpu:.4f} CPU-bound)",
            "baseline": f"naive per-request state ${naive:.2f}; batch savings ${bill.per_million(saved):.2f}",
            "ratio": f"{per_m / naive:.3f}x naive, {bill.total / saved:.2%} of savings" if saved else "n/a",
        }
    )
