"""What every stage does to a job the same way: hand it over to completion once its batches have all
ended, and send its notifications once.

Below the stages: submit, poll, complete and the watchdog import it; it imports none of them.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import Conflict, due_fields, job_pk, reserve, serialize, set_flag
from batchdrop.pipeline import Deps, iso

logger = Logger(service="batchdrop")

# How long one invocation may take to publish a notification before another may try (SNS answers in
# well under a second; the SDK's retries take a few).
PUBLISH_SECONDS = 60
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


def notify_once(deps: Deps, job: dict[str, Any], event: str, body: dict[str, Any]) -> bool:
    """Publish the job's `event` notification unless it was sent already (or, for a job's end, any end
    was): a short reservation taken with a conditional write lets one invocation publish at a time,
    and the notification is recorded right after SNS accepts it. A duplicate needs an invocation to die
    in the window between SNS's answer and that one write; each such death adds one (docs/guarantees.md).

    False while another invocation is publishing it: the caller then leaves the job's last step to that
    one (or, if it dies, to a re-run once the reservation has run out).
    """
    flag = f"notified_{event}"
    # The watchdog and a late completion must not each tell a different end: any end told is the end.
    told = tuple(f"notified_{status}" for status in sorted(m.FINAL_JOB_STATES)) if event in m.FINAL_JOB_STATES else ()
    if not reserve(deps.store, job, f"notifying_{event}", (flag, *told), PUBLISH_SECONDS):
        fresh = deps.store.get_job(job["job_id"]) or {}
        done = any(fresh.get(name) for name in (flag, *told))
        logger.info("notification already sent" if done else "notification being sent", extra={"event": event})
        return done
    # A notification cut down to fit SNS's limit points at the whole summary on S3.
    summary_uri = None if event == m.JOB_SUBMITTED else deps.objects.uri(f"{job['output_prefix']}summary.json")
    deps.notifier.publish(event, job["job_id"], job.get("providers", []), body, summary_uri=summary_uri)
    set_flag(deps.store, job, flag)
    return True


def record_failure(deps: Deps, job_id: str, exc: BaseException, stage: str = "completion") -> None:
    """Keep why a stage failed on the job, for `batchdrop status` and whoever reads the DLQ.

    Best effort and version-free (like a cancel request), so it never collides with the pipeline.
    """
    reason = f"{type(exc).__name__}: {exc}"[:1000]
    logger.exception(f"{stage} failed", extra={"reason": reason})
    try:
        deps.store.ddb.update_item(
            TableName=deps.store.table,
            Key=serialize({"pk": job_pk(job_id), "sk": "JOB"}),
            UpdateExpression=f"SET {stage}_error = :r, {stage}_failures = if_not_exists({stage}_failures, :z) + :one",
            ExpressionAttributeValues=serialize({":r": reason, ":z": 0, ":one": 1}),
        )
    except Exception:
        logger.warning("could not record the completion failure")
