"""`batchdrop local run --aws-cost`: the run's AWS bill printed after its jobs."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_cli import run
from tests.helpers import jsonl, openai_line


def test_local_run_prints_the_aws_bill_per_million_requests(tmp_path: Path) -> None:
    path = tmp_path / "small.jsonl"
    path.write_bytes(jsonl([openai_line(f"r{i}") for i in range(4)]))
    result = run("local", "run", str(path), "--out", str(tmp_path / "out"), "--provider-latency", "0", "--aws-cost")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "AWS cost of the run" in out
    assert "4 requests" in out
    for row in ("dynamodb", "PutObject", "Publish", "duration", "By function", "per million requests"):
        assert row in out, row
    assert "Fixed, per month" in out
    assert "KMS key of the notification topic" in out
