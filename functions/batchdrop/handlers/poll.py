"""EventBridge schedule → poll; EventBridge Bedrock job state change → a look at that job."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchdrop import observability as o
from batchdrop.handlers import deps
from batchdrop.observability import logger, metrics, tracer
from batchdrop.poll import poll
from batchdrop.webhook import bedrock_state_change


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if event.get("source") == "aws.bedrock":
        # A Bedrock job changed state (EventBridge rule): look at that job now, not at everything due.
        return {"bedrock_event": bedrock_state_change(deps(), event)}
    report = poll(deps())
    metrics.add_metric(name=o.BATCHES_CHECKED, unit=MetricUnit.Count, value=report.looked_at)
    metrics.add_metric(name=o.BATCHES_ENDED, unit=MetricUnit.Count, value=report.ended)
    metrics.add_metric(name=o.STUCK_BATCHES, unit=MetricUnit.Count, value=report.stuck)
    metrics.add_metric(name=o.JOBS_ESCALATED, unit=MetricUnit.Count, value=len(set(report.escalated)))
    return asdict(report)
