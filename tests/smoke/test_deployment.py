"""A smoke test of a deployed stack (`make smoke`): the sample files through the real pipeline, the real
providers, and the checks the local tests make (tests/checks.py). It deploys nothing and costs a few
cents of provider calls; it skips where there is no deployment to reach, and deletes what it wrote."""

from __future__ import annotations

import os

import pytest

from tests.smoke import deployment as d


def _smoke_selected(config: pytest.Config) -> bool:
    # `make test` runs every folder: on a machine with credentials and a stack, a plain `pytest` must
    # not start a provider run of up to two hours. Only `-m smoke` asks for one.
    return "smoke" in str(config.getoption("markexpr") or "")


@pytest.mark.timeout(0)  # bounded by --smoke-timeout and botocore's own timeouts, not pytest-timeout's 300 s
def test_the_sample_files_run_through_a_deployed_stack(request: pytest.FixtureRequest) -> None:
    config = request.config
    if not _smoke_selected(config):
        pytest.skip("spends provider calls: run it with `make smoke` (pytest -m smoke tests/smoke)")
    stack = config.getoption("smoke_stack") or os.environ.get("BATCHDROP_STACK") or d.DEFAULT_STACK
    lane = config.getoption("smoke_lane")
    timeout = float(config.getoption("smoke_timeout"))
    try:
        aws = d.session()
        d.smoke(aws, d.find(aws, stack), lane, timeout)
    except d.Unavailable as exc:
        pytest.skip(str(exc))
