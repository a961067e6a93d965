"""Files larger than one invocation's share are planned in segments handed on through a queue:
the job still ends once, with one set of outputs whose line numbers are the file's own."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import pytest

from batchdrop.adapters import aws
from batchdrop.adapters.store import JobStore
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Chaos, Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from tests.chaos_support import non_blank_lines
from tests.helpers import (
    all_jobs_final,
    anthropic_line,
    assert_accounting,
    drive,
    jsonl,
    local_stack,
    openai_line,
    outputs_of,
)

SEGMENT = 2048  # bytes: a 20 kB file is planned in about ten invocations


def options(lease_seconds: int = 30) -> s.StackOptions:
    return s.StackOptions(
        knobs=EmulatorKnobs(latency=0.0),
        segment_bytes=SEGMENT,
        limits={"openai": (7, 10_000_000)},
        lease_seconds=lease_seconds,
        completion_grace_seconds=min(lease_seconds, 10),
        create_lock_seconds=min(lease_seconds, 10),
    )


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[s.LocalStack]:
    with local_stack(getattr(request, "param", None) or options()) as local:
        yield local


def big_file() -> tuple[bytes, list[int], list[int]]:
    """OpenAI and Anthropic lines, blanks, bad lines, and ids repeated far apart (across segments)."""
    lines: list[object] = []
    for i in range(120):
        if i % 17 == 5:
            lines.append("")
        elif i % 23 == 7:
            lines.append("{broken")
        elif i % 31 == 30:
            earlier = i - 30 if (i - 30) % 2 == 0 else i - 29
            lines.append(openai_line(f"o{earlier}"))  # a repeat of an id from ~30 lines before
        elif i % 2:
            lines.append(anthropic_line(f"a{i}", text="x" * 40))
        else:
            lines.append(openai_line(f"o{i}", text="y" * 40))
    data = jsonl(lines)  # type: ignore[arg-type]
    broken = [i + 1 for i, line in enumerate(lines) if line == "{broken"]
    seen: set[str] = set()
    repeated = []
    for i, line in enumerate(lines):
        if isinstance(line, dict):
            if line["custom_id"] in seen:
                repeated.append(i + 1)
            seen.add(line["custom_id"])
    return data, broken, repeated


def test_a_large_file_is_planned_in_segments_and_ends_once(stack: s.LocalStack, tmp_path: object) -> None:
    data, broken, repeated = big_file()
    assert len(repeated) >= 2
    assert len(data) > 8 * SEGMENT
    stack.put("inputs/big.jsonl", data)
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    drive(dispatcher, all_jobs_final(store, 1), timeout=120)

    job = store.list_jobs()[0]
    assert job["segment"] >= 8, "planned in several invocations"
    results, errors, summary = outputs_of(stack, job)
    path = tmp_path / "big.jsonl"  # type: ignore[operator]
    path.write_bytes(data)
    assert_accounting(non_blank_lines(str(path)), results, errors, summary)
    # line numbers are the file's own, whichever segment read them
    physical = data.split(b"\n")
    for r in results:
        assert f'"{r["custom_id"]}"'.encode() in physical[r["line"] - 1]
    codes = {e["line"]: e["code"] for e in errors}
    assert {line for line, code in codes.items() if code == "invalid_json"} == set(broken)
    # repeats of ids first seen in an earlier segment are caught
    assert sorted(e["line"] for e in errors if e["code"] == "duplicate_custom_id") == repeated
    # each request sent once, in batches from every segment; one terminal notification
    sent = stack.emulator.stats()["requests_submitted"]
    assert all(n == 1 for n in sent.values())
    assert len(sent) == summary["counts"]["submitted"]
    events = [n["attributes"]["event"] for n in dispatcher.notifications()]
    assert events == ["submitted", "partial"]
    # and each segment left its ids in one object (one PUT, then a ranged GET a bucket), not a pair a bucket
    listed = aws.client("s3").list_objects_v2(Bucket=s.BUCKET, Prefix=f"work/{job['job_id']}/ids/")
    assert [o["Key"].rsplit("/", 1)[1] for o in listed["Contents"] if o["Key"].endswith(".ids")] == [
        f"s{n:03d}.ids" for n in range(job["segment"] + 1)
    ]


def test_a_large_gzip_file_is_read_whole(stack: s.LocalStack) -> None:
    data, _, repeated = big_file()
    stack.put("inputs/big.jsonl.gz", gzip.compress(data))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1), timeout=120)
    job = store.list_jobs()[0]
    assert job.get("segment", 0) == 0
    _results, errors, summary = outputs_of(stack, job)
    assert len([e for e in errors if e["code"] == "duplicate_custom_id"]) == len(repeated)
    assert summary["counts"]["lines"] == len([line for line in data.split(b"\n") if line.strip()])


@pytest.mark.parametrize("stack", [options(lease_seconds=2)], indirect=True)
def test_segments_survive_crashes_and_duplicate_deliveries(stack: s.LocalStack, tmp_path: object) -> None:
    data, _, _ = big_file()
    stack.put("inputs/big-chaos.jsonl", data)
    dispatcher = Dispatcher(stack, Chaos(duplicate_events=2, crash_rate=0.15, seed=3))
    store = JobStore(s.TABLE)
    try:
        drive(dispatcher, all_jobs_final(store, 1), timeout=180)
    finally:
        dispatcher.close()
    results, errors, summary = outputs_of(stack, store.list_jobs()[0])
    path = tmp_path / "big.jsonl"  # type: ignore[operator]
    path.write_bytes(data)
    assert_accounting(non_blank_lines(str(path)), results, errors, summary)
    assert all(n == 1 for n in stack.emulator.stats()["requests_submitted"].values())
