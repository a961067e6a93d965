"""OpenAI's own checks through the whole pipeline: a request body the API refuses, which batchdrop's
validation lets through, ends as a request_error with the provider's message, not a success."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchdrop import models as m
from batchdrop.adapters.store import JobStore
from batchdrop.handlers import use_deps
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from tests.helpers import all_jobs_final, assert_accounting, drive, jsonl, local_stack, openai_line, outputs_of
from tests.integration.test_pipeline import only_job


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0))) as local:
        yield local
    use_deps(None)


def test_a_body_openai_refuses_is_a_request_error_with_its_message(stack: s.LocalStack) -> None:
    bad = openai_line("bad")
    bad["body"]["messages"] = [{"role": "robot", "content": "hi"}]
    stack.put("inputs/roles.jsonl", jsonl([openai_line("good"), bad]))
    store = JobStore(s.TABLE)
    drive(Dispatcher(stack), all_jobs_final(store, 1))
    results, errors, summary = outputs_of(stack, only_job(store))
    assert_accounting({1, 2}, results, errors, summary)
    assert [r["custom_id"] for r in results] == ["good"]
    (error,) = errors
    assert (error["custom_id"], error["code"]) == ("bad", m.REQUEST_ERROR)
    assert error["message"].startswith("Invalid value: 'robot'. Supported values are:")
