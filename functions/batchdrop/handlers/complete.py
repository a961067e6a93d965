"""Completion queue (SQS) → complete, reporting partial batch failures."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchdrop.complete import complete_message
from batchdrop.handlers import deps
from batchdrop.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)


def _record(record: SQSRecord) -> str:
    outcome = complete_message(deps(), record.body)
    metrics.add_metric(name=f"Completion_{outcome}", unit=MetricUnit.Count, value=1)
    return outcome


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(process_partial_response(event=event, record_handler=_record, processor=processor, context=context))
