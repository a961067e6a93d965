"""Completion queue (SQS) → complete.

The queue delivers one message (one job) per invocation, so that a large job cannot time out its
neighbours: an error fails the invocation, and SQS delivers the message again (then to the DLQ).
Powertools' partial-batch processor would add nothing to that and cost ~20 ms of every cold start.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchdrop import observability as o
from batchdrop.complete import complete_message
from batchdrop.handlers import deps
from batchdrop.observability import logger, metrics, tracer


def _record(body: str) -> str:
    done = complete_message(deps(), body)
    if done.summary is not None:
        record_job_metrics(done.summary)
    return done.outcome


def record_job_metrics(summary: dict[str, Any]) -> None:
    counts = summary["counts"]
    metrics.add_metric(name=o.JOBS_ENDED, unit=MetricUnit.Count, value=1)
    metrics.add_metric(name=o.REQUESTS_SUCCEEDED, unit=MetricUnit.Count, value=counts["succeeded"])
    metrics.add_metric(name=o.REQUESTS_FAILED, unit=MetricUnit.Count, value=counts["failed"])
    expired = sum(1 for b in summary["batches"] if b["status"] == "expired")
    metrics.add_metric(name=o.REQUESTS_EXPIRED, unit=MetricUnit.Count, value=expired)
    saved = (summary.get("cost_usd") or {}).get("saved")
    if saved is not None:
        metrics.add_metric(name=o.COST_SAVED_USD, unit=MetricUnit.NoUnit, value=saved)
    timings = summary["timings"]
    if timings.get("received_at") and timings.get("completed_at"):
        from datetime import datetime

        took = datetime.fromisoformat(timings["completed_at"]) - datetime.fromisoformat(timings["received_at"])
        metrics.add_metric(name=o.TIME_TO_COMPLETE, unit=MetricUnit.Seconds, value=took.total_seconds())


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return {"outcomes": [_record(record["body"]) for record in event.get("Records") or []]}
