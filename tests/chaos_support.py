"""Generating input corpora and checking docs/contract.md's guarantees on the outputs of a local run."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson

from batchdrop import models as m
from batchdrop.local.run import RunReport
from tests import checks
from tests.lines import anthropic_line, neutral_line, openai_line


def write_corpus(
    folder: Path, files: int, max_lines: int, seed: int, bad_rate: float = 0.1, sizes: Sequence[int] | None = None
) -> list[str]:
    """OpenAI, Anthropic and mixed neutral files; custom ids unique across the corpus. `sizes`: each
    file's number of requests, where a test needs some files small and some large whatever the seed."""
    rng = random.Random(seed)
    paths = []
    for f in range(files):
        kind = ("openai", "anthropic", "mixed")[f % 3]
        path = folder / f"f{f:02d}-{kind}.jsonl"
        lines: list[bytes] = []
        for i in range(sizes[f] if sizes is not None else rng.randint(1, max_lines)):
            cid = f"s{seed}-f{f}-r{i}"
            if kind == "openai":
                line = openai_line(cid, text=f"q{i}")
            elif kind == "anthropic":
                line = anthropic_line(cid, text=f"q{i}", max_tokens=32)
            else:
                model = rng.choice(["gpt-4o-mini", "gpt-4.1-nano", "claude-haiku-4-5"])
                line = neutral_line(model, f"q{i}", custom_id=cid)
            roll = rng.random()
            if roll < bad_rate / 2:
                lines.append(b"{not json")
            elif roll < bad_rate:
                lines.append(b"")
            lines.append(orjson.dumps(line))
        path.write_bytes(b"\n".join(lines) + b"\n")
        paths.append(str(path))
    return paths


# BATCHDROP_REALTIME_CHUNK's default: the requests one message of the real-time queue carries.
REALTIME_CHUNK = 20


def non_blank_lines(path: str) -> set[int]:
    return checks.non_blank_lines(Path(path).read_bytes())


def _paid_once(report: RunReport) -> None:
    """Nothing paid for twice: every batch the provider made is recorded by exactly one planned batch of
    one job's summary, and every batch a summary lists as sent was made. A planned batch that was never
    sent (canceled before its create, or refused at it) lists no id; the provider made nothing for it."""
    every = report.provider_stats["batches"]
    assert len(every) == sum(report.provider_stats["batches_created"].values())
    # A batch the provider failed unrun for its quota ran nothing and is billed nothing: it is not counted.
    made = {b["id"]: b for b in every if not b.get("quota_refused")}
    recorded: Counter[str] = Counter()
    problems = []
    for job in report.jobs:
        for b in (job.summary or {}).get("batches", []):
            if b.get("lane") == "realtime":
                continue  # run by batchdrop's own lane: no provider batch (check_guarantees counts its calls)
            if b["batch_id"] is None:
                if b["status"] not in (m.BATCH_CANCELED, m.FAILED, m.BATCH_EXPIRED):
                    problems.append(f"  {job.job_id} ({Path(job.file).name}): a batch never sent ended {b}")
                continue
            recorded[b["batch_id"]] += 1
            if b["batch_id"] not in made:
                problems.append(f"  {job.job_id} ({Path(job.file).name}): {b} was never made by the provider")
    for batch_id, batch in made.items():
        if recorded[batch_id] != 1:
            problems.append(
                f"  {batch['provider']} {batch_id} made at {batch['created_at']:.3f}, {batch['request_count']} "
                f"requests ({batch['custom_ids'][:3]}...; metadata {batch['metadata']}), is in {recorded[batch_id]} "
                "summaries"
            )
    problems += [f"  {bid} is in {n} summaries" for bid, n in recorded.items() if n > 1 and bid not in made]
    assert not problems, "provider batches made vs recorded:\n" + "\n".join(problems)


def check_guarantees(report: RunReport, max_attempts: int) -> dict[str, int]:
    """Assert every guarantee of docs/contract.md on a finished run; return a few totals for the caller."""
    out = Path(report.out_dir)
    stats = report.provider_stats
    batches_in_summaries = 0
    submitted_by_id: dict[str, int] = {}
    totals = Counter[str]()
    terminal_ids: dict[str, set[str]] = {}
    terminal_deliveries: Counter[str] = Counter()
    terminal_events: dict[str, set[str]] = {}
    submitted_notes: Counter[str] = Counter()
    for note in report.notifications:
        attrs = note["attributes"]
        job_id = attrs["job_id"]
        assert note["message"]["notification_id"] == attrs["notification_id"]
        if attrs["event"] == "submitted":
            submitted_notes[job_id] += 1
            totals["held"] += sum(1 for b in note["message"]["batches"] if b.get("held"))
        else:
            terminal_ids.setdefault(job_id, set()).add(attrs["notification_id"])
            terminal_deliveries[job_id] += 1
            terminal_events.setdefault(job_id, set()).add(attrs["event"])

    for job in report.jobs:
        # every job ended
        assert job.status in m.FINAL_JOB_STATES, (job.file, job.status)
        summary = job.summary
        assert summary is not None
        folder = out / "outputs" / Path(summary["results"].split("/outputs/", 1)[1]).parent
        results, errors, _ = checks.read_outputs(lambda path: Path(path).read_bytes(), f"{folder}/")
        # no request lost or counted twice: the checks every run of the pipeline gets (tests/checks.py)
        checks.check_job_outputs(non_blank_lines(job.file), results, errors, summary)
        c = summary["counts"]
        checks.check_notifications(report.notifications, summary)
        # exactly one terminal notification per job after deduplication by its id, matching the summary
        assert len(terminal_ids.get(job.job_id, set())) == 1, (job.file, terminal_ids.get(job.job_id))
        assert terminal_events[job.job_id] == {summary["status"]}
        # and sent once: a notification is recorded right after SNS accepts it, and chaos kills only
        # at step boundaries, never inside that window (docs/guarantees.md)
        assert terminal_deliveries[job.job_id] == 1, (job.file, terminal_deliveries[job.job_id])
        gave_up_submitting = "at its submit step" in str(summary.get("reason", ""))
        if summary["status"] != m.JOB_REJECTED and not gave_up_submitting:
            assert submitted_notes[job.job_id] == 1, (job.file, submitted_notes[job.job_id])
        assert submitted_notes[job.job_id] <= 1, (job.file, submitted_notes[job.job_id])
        attempt_of = {b["batch_id"]: b["attempt"] for b in summary["batches"] if b["batch_id"]}
        batches_in_summaries += sum(1 for b in summary["batches"] if b["batch_id"] and b.get("lane") != "realtime")
        for r in results:
            if r.get("cached"):
                totals["cached"] += 1
                continue  # answered from the response cache: sent by no one in this job
            if r.get("lane") == "realtime":
                totals["realtime_results"] += 1
                continue
            submitted_by_id[r["custom_id"]] = attempt_of[r["batch_id"]]
        for e in errors:
            if e.get("lane") == "realtime":
                continue
            if e["stage"] == "provider":
                # A request whose last batch was never sent (canceled before its create) was sent in the
                # attempts before that one only.
                sends = e["attempts"] if e["batch_id"] else e["attempts"] - 1
                if sends:
                    submitted_by_id[e["custom_id"]] = sends
        totals["jobs"] += 1
        totals["lines"] += c["lines"]
        totals["succeeded"] += c["succeeded"]
        totals["failed"] += c["failed"]
        totals["invalid"] += c["invalid"]
    # nothing paid for twice: one provider batch per planned batch and attempt that was sent...
    _paid_once(report)
    ran = [b for b in stats["batches"] if not b.get("quota_refused")]
    assert len(ran) == batches_in_summaries
    # ...and each request sent once per attempt it was part of, never more than max_attempts
    sent = Counter(custom_id for b in ran for custom_id in b["custom_ids"])
    assert set(sent) == set(submitted_by_id)
    for custom_id, attempts in submitted_by_id.items():
        assert sent[custom_id] == attempts <= max_attempts, (custom_id, sent[custom_id], attempts)
    totals["batches"] = batches_in_summaries
    totals["quota_refused"] = len(stats["batches"]) - len(ran)
    # The real-time lane: every request answered is one result line, and a request answered more than
    # once is one whose invocation died before writing its chunk's answers (docs/realtime.md, "What a
    # crash can cost"): at most the chunks that invocation ran, ten of them.
    answered = sum(1 for call in stats.get("realtime_calls", []) if call["status"] == 200)
    assert answered >= totals["realtime_results"], (answered, totals["realtime_results"])
    totals["realtime_resent"] = answered - totals["realtime_results"]
    bound = report.crashed.get("realtime", 0) * REALTIME_CHUNK * 10
    assert totals["realtime_resent"] <= bound, (totals["realtime_resent"], bound, report.crashed, report.crashes)
    return dict(totals)
