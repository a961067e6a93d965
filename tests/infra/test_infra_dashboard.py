"""The CloudWatch dashboard graphs the metrics the handlers emit, in the namespace they emit them."""

from __future__ import annotations

import json

from batchdrop import config
from tests.infra.synth_support import synth


def test_the_dashboard_graphs_our_metrics_in_our_namespace() -> None:
    stack = synth()
    _, dashboard = stack.one("AWS::CloudWatch::Dashboard")
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for name in (
        config.REQUESTS_SUBMITTED,
        config.REQUESTS_SUCCEEDED,
        config.REQUESTS_FAILED,
        config.REQUESTS_EXPIRED,
        config.BATCHES_ENDED,
        config.STUCK_BATCHES,
        config.JOBS_TIMED_OUT,
        config.COST_SAVED_USD,
        config.TIME_TO_COMPLETE,
    ):
        assert name in body, name
    assert '\\"batchdrop\\"' in body  # the namespace and service dimension
