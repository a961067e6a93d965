"""What every stage does to a job the same way: hand it over to completion once its batches have all
ended, and send its notifications once.

Below the stages: submit, poll, complete and the watchdog import it; it imports none of them.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import Conflict, due_fields, set_flag
from batchdrop.pipeline import Deps, iso

logger = Logger(service="batchdrop")

# How many times a hand-over re-reads a job that changed under it before leaving it to the next poll.
HANDOVER_TRIES = 5


def hand_over_if_done(deps: Deps, job_id: str) -> bool:
    """Move a submitted job whose batches have all ended to `completing` and queue it, once.

    Called by the poll when a batch ends, and by submit and resubmission right after they mark a
    job submitted, in case its batches ended before that.
    """
    batches = deps.store.get_batches(job_id)
    if not batches or any(b.get("status") not in m.TERMINAL_BATCH_STATES for b in batches):
        return False
    # The conditional transition is what makes the hand-over happen once, however many polls race. A
    # conflict is not proof that someone else handed the job over (a cancel or a failure record also
    # writes the job): the job is read again and the decision taken again, every time.
    for _ in range(HANDOVER_TRIES):
        job = deps.store.get_job(job_id)
        if job is None or job["status"] != m.JOB_SUBMITTED:
            return False
        deps.checkpoint("before_handover")
        now = deps.clock()
        try:
            deps.store.update(
                job,
                {
                    "status": m.JOB_COMPLETING,
                    "ended_at": iso(now),
                    **due_fields(now + deps.settings.completion_grace_seconds),
                },
                when_status=(m.JOB_SUBMITTED,),
            )
            break
        except Conflict:
            continue
    else:
        # Still changing under us: the caller keeps its batch due, so the next poll decides again.
        raise Conflict(f"job {job_id} kept changing during its hand-over")
    deps.checkpoint("after_handover")
    deps.queue.send(job_id)
    logger.info("job handed to completion", extra={"job_id": job_id})
    return True


def notify_once(deps: Deps, job: dict[str, Any], event: str, body: dict[str, Any]) -> None:
    """Publish the job's `event` notification unless an earlier run did and recorded it.

    The record is written right after SNS accepts the message, so a re-run after a crash anywhere
    later sends nothing again: a duplicate needs an invocation to die in the window between SNS's
    answer and that one write, and each such death adds one (docs/guarantees.md).
    """
    flag = f"notified_{event}"
    if job.get(flag):
        logger.info("notification already sent", extra={"event": event})
        return
    if event in m.FINAL_JOB_STATES:
        # Read again: the watchdog and a late completion must not each tell a different end.
        fresh = deps.store.get_job(job["job_id"]) or job
        if any(fresh.get(f"notified_{status}") for status in m.FINAL_JOB_STATES):
            logger.warning("the job's end was already notified", extra={"event": event})
            return
    # A notification cut down to fit SNS's limit points at the whole summary on S3.
    summary_uri = None if event == m.JOB_SUBMITTED else deps.objects.uri(f"{job['output_prefix']}summary.json")
    deps.notifier.publish(event, job["job_id"], job.get("providers", []), body, summary_uri=summary_uri)
    set_flag(deps.store, job, flag)
