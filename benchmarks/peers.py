"""The programs `make bench` times as whole processes beside batchdrop's commands, on the same file.

python -m benchmarks.peers orjson FILE     # a bare orjson line loop: the floor any JSONL reader pays
python -m benchmarks.peers naive FILE      # json.loads + a pydantic model per line: the naive checker
python -m benchmarks.peers plan FILE       # the submit function's planning of FILE (batchdrop.planning)
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any


def orjson_loop(path: str) -> int:
    import orjson

    n = 0
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                orjson.loads(raw)
                n += 1
    return n


def naive_loop(path: str) -> int:
    import json

    from pydantic import BaseModel

    class Body(BaseModel):
        model: str
        messages: list[dict[str, Any]]
        max_tokens: int | None = None

    class OpenAILine(BaseModel):
        custom_id: str
        method: str
        url: str
        body: Body

    n = 0
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                OpenAILine.model_validate(json.loads(raw))
                n += 1
    return n


def submit_plan(path: str) -> int:
    """What the submit function runs on an upload, but for S3: `plan_segment` with the deployment's
    settings, every batch written to local files (as submit writes them before uploading), and the
    duplicate ids found. Settings come from the environment, as in Lambda."""
    from batchdrop.dedup import DuplicateFinder
    from batchdrop.planner import PlannedBatch
    from batchdrop.planning import offline_settings, plan_segment
    from batchdrop.reader import iter_chunks

    settings = offline_settings()
    batches: list[PlannedBatch] = []
    with tempfile.TemporaryDirectory() as tmp, open(path, "rb") as f, DuplicateFinder(tmpdir=tmp) as finder:
        plan = plan_segment(
            iter_chunks(f),
            settings,
            key="inputs/bench.jsonl",
            store_batch=batches.append,
            report=lambda invalid: None,
            key_prefix="a1-",
            tmpdir=tmp,
            finder=finder,
        )
        finder.duplicates()
        for batch in batches:
            batch.discard()
    return plan.result.valid


if __name__ == "__main__":
    peers = {"orjson": orjson_loop, "naive": naive_loop, "plan": submit_plan}
    print(peers[sys.argv[1]](sys.argv[2]))
