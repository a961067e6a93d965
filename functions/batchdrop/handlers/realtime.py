"""Real-time queue (SQS) → run each message's chunk of requests on its provider's real-time API.

The queue's event source caps how many invocations run at once (maximumConcurrency); inside one, every
message's chunk runs at the same time (Powertools' async batch processor), paced per provider. A chunk
that fails or is cut short is reported as that message's failure (a partial batch response), so SQS
delivers it again and its neighbours that finished are never sent again.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchdrop import observability as o
from batchdrop.handlers import deps
from batchdrop.observability import logger, metrics, tracer
from batchdrop.realtime.worker import (
    ChunkBusy,
    Run,
    Unfinished,
    end_finished,
    message_body,
    record_pace,
    run_chunk,
    stop_after,
)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    left = context.get_remaining_time_in_millis() / 1000 if context is not None else 900.0
    wiring = deps()
    now = time.monotonic()
    run = Run(wiring, stop_at=now + stop_after(left), ends_at=now + left)
    pending = [len(event.get("Records") or [])]

    async def record_handler(record: SQSRecord) -> None:
        try:
            await run_chunk(run, message_body(record.body), record.message_id)
        except ChunkBusy:
            # A copy of a message another invocation is running (sent again after a crash, or redriven):
            # taken, not failed, so copies never push the chunk's own message towards the dead-letter
            # queue. If that invocation dies, its message comes back; and the poll sends a stalled batch's
            # unfinished chunks again (batchdrop.realtime.lane.redrive).
            logger.info("a chunk another invocation runs: copy taken")
        except Unfinished as cut:
            if wiring.realtime is None:
                raise
            if cut.progressed:
                # Cut short by this invocation's time, its answers kept: the rest goes out as a fresh
                # message, so a chunk that keeps moving never counts its runs towards the dead-letter queue.
                wiring.realtime.send_many([message_body(record.body)])
                return
            # Nothing answered (a provider that keeps refusing): counted, and back at once.
            wiring.realtime.delay(record.receipt_handle, 0)
            raise
        finally:
            # The SDK clients belong to this event loop: the last chunk to end closes them in it.
            pending[0] -= 1
            if pending[0] == 0:
                await run.close()

    processor = AsyncBatchProcessor(event_type=EventType.SQS)
    response = async_process_partial_response(event, record_handler, processor, context)
    ended = end_finished(run)
    record_pace(run)
    answered = sum(run.answered.values())
    metrics.add_metric(name=o.REALTIME_REQUESTS, unit=MetricUnit.Count, value=answered)
    metrics.add_metric(
        name=o.REALTIME_THROTTLED, unit=MetricUnit.Count, value=sum(lim.throttled for lim in run.limiters.values())
    )
    logger.info("real-time chunks run", extra={"answered": answered, "batches_ended": ended})
    return dict(response)
