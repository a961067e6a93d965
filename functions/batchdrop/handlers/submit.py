"""S3 ObjectCreated → submit."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchdrop import observability as o
from batchdrop.handlers import deps
from batchdrop.observability import logger, metrics, tracer
from batchdrop.submit import submit_event


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    results = submit_event(deps(), event)
    metrics.add_metric(name="UploadsReceived", unit=MetricUnit.Count, value=len(results))
    for result in results:
        metrics.add_metric(name=f"Jobs_{result.outcome}", unit=MetricUnit.Count, value=1)
        if result.counts:
            metrics.add_metric(name=o.REQUESTS_SUBMITTED, unit=MetricUnit.Count, value=result.counts["submitted"])
            metrics.add_metric(name=o.LINES_INVALID, unit=MetricUnit.Count, value=result.counts["invalid"])
    return {"jobs": [{"job_id": r.job_id, "outcome": r.outcome} for r in results]}
