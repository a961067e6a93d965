"""`batchdrop validate` says what the submit function does: every sample file in events/ and every case
of the bad-input catalogue goes through both, and they must agree on the counts, on whether the file is
refused as a whole, and on every error line, byte for byte (the same code, line, custom_id and message).

Both call one planning function (batchdrop.planning); this test is what keeps it that way. The submit
side runs as deployed: the file uploaded to the local stack, its S3 event delivered to the submit
handler, the job's counts and validation error files read back from DynamoDB and S3.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from batchdrop.adapters.store import JobStore
from batchdrop.cli import main
from batchdrop.config import ENV_ON_INVALID
from batchdrop.handlers import use_deps
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from tests.bad_inputs import CASES
from tests.helpers import jobs_by_key, local_stack, read_jsonl

EVENTS = Path(__file__).resolve().parents[2] / "events"
COUNTS = re.compile(r"(\d+) lines, (\d+) valid, (\d+) invalid")
BATCHES = re.compile(r"(\d+) (\w+) batch")


def corpus() -> list[tuple[str, str, bytes]]:
    """(policy, key, content) of every file: the samples, then the catalogue."""
    files = [("skip", f"inputs/events/{p.name}", p.read_bytes()) for p in sorted(EVENTS.glob("*.jsonl"))]
    files += [(case.policy, case.key, case.content()) for case in CASES]
    return files


@pytest.fixture(scope="module")
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0))) as local:
        yield local
    use_deps(None)


def submitted(stack: s.LocalStack, files: list[tuple[str, str, bytes]]) -> dict[str, dict[str, Any]]:
    """Upload the files and deliver their events to the submit function (and the segments it hands on);
    the jobs by key once every file is planned."""
    dispatcher = Dispatcher(stack)
    store = JobStore(s.TABLE)
    try:
        for policy in ("skip", "reject"):
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv(ENV_ON_INVALID, policy)
                keys = {key for p, key, _ in files if p == policy}
                for p, key, content in files:
                    if p == policy:
                        stack.put(key, content)
                for _ in range(200):
                    moved = dispatcher.deliver_uploads() + dispatcher.deliver_segments()
                    jobs = jobs_by_key(store)
                    if not moved and all(k in jobs and jobs[k].get("planned") for k in keys):
                        break
                else:
                    pytest.fail("the submit function did not plan every file")
    finally:
        dispatcher.close()
    return jobs_by_key(store)


Verdict = tuple[tuple[int, int, int], bool, list[dict[str, Any]], dict[str, int]]


def validated(tmp: Path, policy: str, key: str, content: bytes) -> Verdict:
    """(lines, valid, invalid), whether the file would be rejected, the error lines and the batches per
    provider, from `batchdrop validate --json` run as the user runs it, on a local copy of the file, as if
    uploaded at `key`."""
    path = tmp / key.rsplit("/", 1)[1]
    path.write_bytes(content)
    folder = key.removeprefix("inputs/").rpartition("/")[0]
    options = ["--folder", folder] if folder else []
    out = CliRunner().invoke(main, ["validate", "--json", "--on-invalid", policy, *options, str(path)])
    assert out.exit_code in (0, 1), out.output
    lines = out.stdout.splitlines()
    found = COUNTS.search(lines[0])
    assert found, lines[0]
    errors = [orjson.loads(line) for line in lines if line.startswith('{"')]
    counts = (int(found[1]), int(found[2]), int(found[3]))
    batches = {provider: int(n) for n, provider in BATCHES.findall(lines[0].partition("batches:")[2])}
    return counts, "would be rejected" in lines[0], errors, batches


def test_validate_and_the_submit_function_agree_on_every_file(stack: s.LocalStack, tmp_path: Path) -> None:
    files = corpus()
    jobs = submitted(stack, files)
    store = JobStore(s.TABLE)
    checked = 0
    for policy, key, content in files:
        job = jobs[key]
        (lines, valid, invalid), rejected, errors, batches = validated(tmp_path, policy, key, content)
        their_errors = [e for error_file in job["error_files"] for e in read_jsonl(stack.get(error_file))]
        by_line = sorted(their_errors, key=lambda e: (e["line"], e["code"]))
        assert sorted(errors, key=lambda e: (e["line"], e["code"])) == by_line, key
        assert bool(job.get("rejected")) == rejected, key
        assert job["counts"]["lines"] == lines, key
        # A rejected job counts every line invalid; validate says how many are invalid on their own.
        assert job["counts"]["invalid"] == (lines if rejected else invalid), key
        assert valid == lines - invalid
        if not rejected:  # the same batches: as many per provider
            assert Counter(b["provider"] for b in store.get_batches(job["job_id"])) == batches, key
        checked += 1
    assert checked == len(files) > 40
