"""Logger, tracer and metrics, created once and imported by every handler.

The X-Ray SDK behind Powertools' Tracer costs ~100 ms of every cold start, even when tracing is off.
So the Tracer is built only when tracing is on (POWERTOOLS_TRACE_DISABLED is not true); otherwise the
handlers get a stand-in whose decorator adds nothing. Lambda's own active tracing still records each
invocation either way.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics

# Metric names live in batchdrop.config, shared with the dashboard and alarms in infra/.
from batchdrop.config import (
    BATCHES_CHECKED,
    BATCHES_ENDED,
    COST_SAVED_USD,
    JOBS_ENDED,
    JOBS_ESCALATED,
    LINES_INVALID,
    REALTIME_REQUESTS,
    REALTIME_THROTTLED,
    REQUESTS_EXPIRED,
    REQUESTS_FAILED,
    REQUESTS_SUBMITTED,
    REQUESTS_SUCCEEDED,
    STUCK_BATCHES,
    TIME_TO_COMPLETE,
)

SERVICE = "batchdrop"
NAMESPACE = "batchdrop"


logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


class _NoTracer:
    def capture_lambda_handler(self, handler: Any = None, **_: Any) -> Any:
        if handler is None:
            return lambda h: h
        return handler


def _tracer() -> Any:
    if os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").lower() in ("1", "true", "yes"):
        return _NoTracer()
    from aws_lambda_powertools import Tracer

    return Tracer(service=SERVICE)


tracer: Any = _tracer()

__all__ = [
    "BATCHES_CHECKED",
    "BATCHES_ENDED",
    "COST_SAVED_USD",
    "JOBS_ENDED",
    "JOBS_ESCALATED",
    "LINES_INVALID",
    "REALTIME_REQUESTS",
    "REALTIME_THROTTLED",
    "REQUESTS_EXPIRED",
    "REQUESTS_FAILED",
    "REQUESTS_SUBMITTED",
    "REQUESTS_SUCCEEDED",
    "STUCK_BATCHES",
    "TIME_TO_COMPLETE",
    "logger",
    "metrics",
    "tracer",
]
