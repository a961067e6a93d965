"""A job's life: its item, its leases and every change of its status (docs/contract.md "Data flow").

    submitting ─mark_submitted─▶ submitted ─hand_over_if_done─▶ completing ─end─▶ completed, partial,
                                                                                      failed, canceled, rejected
    submitting ─record_plan (the file rejected)─▶ completing
    completing ─resubmit─▶ submitted
    any open status ─give_up (the watchdog)─▶ completing, timed out ─end─▶ failed
    a cancel: ask_cancel flags the job, mark_canceled once its batches were asked to stop; it ends canceled

The stages (submit, poll, complete, cancel, the watchdog) decide; this module writes, through the store
(batchdrop.adapters.store), and is the only place that writes a job's item. It imports no stage.
Every transition is conditional on the status it leaves, so two invocations cannot both make it.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from batchdrop import models as m
from batchdrop.adapters.store import (
    JOB_SK,
    NOT_DUE,
    Conflict,
    JobStore,
    due_fields,
    job_pk,
    reserve,
    set_flag,
)
from batchdrop.adapters.store import release as release_lease
from batchdrop.pipeline import Deps, iso

logger = Logger(service="batchdrop")

# How long one invocation may take to publish a notification before another may try (SNS answers in
# well under a second; the SDK's retries take a few).
PUBLISH_SECONDS = 60
# How many times a hand-over re-reads a job that changed under it before leaving it to the next poll.
HANDOVER_TRIES = 5
# The statuses a job can still leave: the watchdog may end a job in any of them.
OPEN_STATES = (m.JOB_SUBMITTING, m.JOB_SUBMITTED, m.JOB_COMPLETING)
LEASE = ("lease_owner", "lease_until")


# -- creation, leases and attempts ------------------------------------------------------------------


def create(
    deps: Deps, job_id: str, obj: m.InputObject, output_prefix: str, options: dict[str, Any] | None = None
) -> None:
    """The job of an uploaded object, `submitting` (nothing written if it exists already: the same
    upload delivered twice is one job). `options`: the file's lane and deadline, or why they cannot be
    used (`option_error`: the job is rejected once planned)."""
    now = deps.clock()
    job = {
        **(options or {}),
        "pk": job_pk(job_id),
        "sk": JOB_SK,
        "job_id": job_id,
        "status": m.JOB_SUBMITTING,
        "input": obj.as_dict(),
        "output_prefix": output_prefix,
        "received_at": iso(now),
        "attempt": 1,
    }
    # While submitting, the job sits in the poll's index, due when its lease would run out: if this
    # invocation dies without a retry (a timeout, say), the poll takes the submission over.
    deps.store.create({**job, **due_fields(now + deps.settings.lease_seconds)})


def attempts(stage: str) -> str:
    """The job attribute that counts the claims of a stage's step (JobStore.claim's `count`), set back
    to 0 by the stage's progress."""
    return f"{stage}_attempts"


def claim_submission(deps: Deps, job: dict[str, Any], owner: str) -> dict[str, Any]:
    """Take the job's submission lease (Conflict if another invocation holds it), counting the attempt;
    the job stays due when the lease would run out, for the poll to take over if we die."""
    lease = deps.settings.lease_seconds
    return deps.store.claim(
        job,
        owner,
        lease,
        (m.JOB_SUBMITTING,),
        also=due_fields(deps.clock() + lease),
        count=attempts("submit"),
    )


def claim_completion(deps: Deps, job: dict[str, Any], owner: str) -> dict[str, Any]:
    """Take the job's completion lease (Conflict if another invocation holds it), counting the attempt."""
    return deps.store.claim(job, owner, deps.settings.lease_seconds, (m.JOB_COMPLETING,), count=attempts("completion"))


def release(deps: Deps, job: dict[str, Any], owner: str) -> None:
    """Give our lease up (after a failure, or to hand the work on) so that another invocation can take
    the job at once."""
    release_lease(deps.store, job, owner)


def made_progress(deps: Deps, job: dict[str, Any], stage: str) -> None:
    """The stage moved the job on (a batch sent or ended): the watchdog counts attempts from here."""
    set_flag(deps.store, job, attempts(stage), 0)


def count_handback(deps: Deps, job: dict[str, Any], stage: str) -> tuple[dict[str, Any], int]:
    """Count one more hand-back of the job's step by the poll (its lease or grace ran out); returns the
    job and the count so far. The count starts again when the job's status changes, or when the step
    was taken up since the last hand-back (then the claims' own count bounds it): what it bounds is a
    step nobody even starts, such as a function that fails before it claims."""
    status = job["status"]
    tried = int(job.get(attempts(stage), 0))
    same = job.get("handbacks_in") == status and int(job.get("handbacks_tried", -1)) == tried
    count = int(job.get("handbacks", 0)) + 1 if same else 1
    updated = deps.store.update(
        job, {"handbacks": count, "handbacks_in": status, "handbacks_tried": tried}, when_status=(status,)
    )
    return updated, count


def record_failure(deps: Deps, job_id: str, exc: BaseException, stage: str = "completion") -> None:
    """Keep why a stage failed on the job, for `batchdrop status` and whoever reads the DLQ.

    Best effort and version-free (like a cancel request), so it never collides with the pipeline.
    """
    reason = f"{type(exc).__name__}: {exc}"[:1000]
    logger.exception(f"{stage} failed", extra={"reason": reason})
    try:
        deps.store.add_failure(job_id, stage, reason)
    except Exception:
        logger.warning("could not record the completion failure")


# -- submitting -------------------------------------------------------------------------------------


def save_segment(deps: Deps, job: dict[str, Any], progress: dict[str, Any]) -> dict[str, Any]:
    """Keep where the planning of a large file stopped, for the next segment's invocation."""
    # A segment planned is progress: the watchdog counts attempts from here.
    return deps.store.update(job, {**progress, attempts("submit"): 0}, when_status=(m.JOB_SUBMITTING,))


def record_plan(deps: Deps, job: dict[str, Any], plan: dict[str, Any], rejected: str | None) -> dict[str, Any]:
    """Keep the whole file's plan; a file `rejected` (the reason) goes straight to completion, which
    writes its outputs."""
    changes = dict(plan)
    if rejected:
        changes.update({"rejected": True, "reason": rejected, "status": m.JOB_COMPLETING})
    return deps.store.update(job, changes, remove=("batch_keys",), when_status=(m.JOB_SUBMITTING,))


def mark_submitted(deps: Deps, job: dict[str, Any], now: float) -> dict[str, Any]:
    """Every batch sent (or ended): the job waits on its providers. It stays in the poll's index, looked
    at as a whole soon (its batches may all have ended already, and an invocation that dies before its
    hand-over leaves it to that look), then now and then (the watchdog)."""
    return deps.store.update(
        job,
        {"status": m.JOB_SUBMITTED, "submitted_at": iso(now), **due_fields(now + deps.settings.poll_min_seconds)},
        remove=LEASE,
        when_status=(m.JOB_SUBMITTING,),
    )


def hand_back_to_submit(deps: Deps, job: dict[str, Any], now: float) -> None:
    """A submission whose lease ran out with no retry finishing it: back to the submit function, through
    the segments queue it consumes (it has the grants for the work); due again when its lease would."""
    deps.store.update(job, due_fields(now + deps.settings.lease_seconds), when_status=(m.JOB_SUBMITTING,))
    deps.segments.send(job["job_id"])


# -- submitted --------------------------------------------------------------------------------------


def look_again(deps: Deps, job: dict[str, Any], at: float) -> None:
    """A submitted job's next look as a whole, at `at`."""
    deps.store.update(job, due_fields(at), when_status=(m.JOB_SUBMITTED,))


def ask_cancel(store: JobStore, job: dict[str, Any], now: float) -> bool:
    """Flag the job for cancellation, version-free (so it never collides with the pipeline's own
    writes), if its status has not changed since `job` was read; a submitted job is due at once, for
    the poll to carry the cancel out. False if the status changed."""
    sets: dict[str, Any] = {"cancel_requested": True}
    if job["status"] == m.JOB_SUBMITTED:
        sets.update(due_fields(now))
    return store.set_if_status(job["job_id"], sets, job["status"])


def mark_canceled(deps: Deps, job: dict[str, Any]) -> None:
    """The cancel carried out (its running batches asked to stop): looked at again soon as a whole, as
    its batches end shortly and a hand-over that dies is caught."""
    deps.store.update(
        job,
        {"canceled": True, **due_fields(deps.clock() + deps.settings.poll_min_seconds)},
        when_status=(m.JOB_SUBMITTED,),
    )


def hand_over_if_done(deps: Deps, job_id: str) -> bool:
    """Move a submitted job whose batches have all ended to `completing` and queue it, once.

    Called by the poll when a batch ends, and by submit and resubmission right after they mark a
    job submitted, in case its batches ended before that.
    """
    batches = deps.store.get_batches(job_id)
    if not batches or not all(m.batch_done(b) for b in batches):
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


# -- completing -------------------------------------------------------------------------------------


def hand_over_again(deps: Deps, job: dict[str, Any], now: float) -> None:
    """A completion overdue (its grace ran out): queue the job again, due again after another grace."""
    deps.store.update(job, due_fields(now + deps.settings.completion_grace_seconds), when_status=(m.JOB_COMPLETING,))
    deps.queue.send(job["job_id"])


def plan_resubmission(deps: Deps, job: dict[str, Any], attempt: int) -> dict[str, Any]:
    """The batches of resubmission `attempt` are stored: a re-run sends them rather than plan again."""
    return deps.store.update(job, {"resubmit_planned": attempt}, when_status=(m.JOB_COMPLETING,))


def resubmit(deps: Deps, job: dict[str, Any], attempt: int) -> None:
    """Back to `submitted` for resubmission `attempt`, its batches sent."""
    deps.store.update(
        job,
        {
            "status": m.JOB_SUBMITTED,
            "attempt": attempt,
            # A round resubmitted is progress: the next completion counts its attempts afresh.
            attempts("completion"): 0,
            # Looked at soon as a whole, in case this invocation dies before its hand-over.
            **due_fields(deps.clock() + deps.settings.poll_min_seconds),
        },
        remove=LEASE,
        when_status=(m.JOB_COMPLETING,),
    )


def give_up(deps: Deps, job: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
    """The watchdog's end of a job that made no progress: `completing`, timed out with `reason`, so that
    its outputs are written with what is known and it ends `failed`."""
    now = deps.clock()
    return deps.store.update(
        job,
        {
            "status": m.JOB_COMPLETING,
            "timed_out": True,
            "stuck_at": stage,
            "reason": f"batchdrop gave up on this job at its {stage} step: {reason}"[:2000],
            # Due again soon, so a watchdog that dies here is followed by another.
            **due_fields(now + deps.settings.completion_grace_seconds),
        },
        remove=LEASE,
        when_status=OPEN_STATES,
    )


def end(
    deps: Deps,
    job: dict[str, Any],
    status: str,
    completed_at: str | None,
    counts: dict[str, Any] | None = None,
    when: tuple[str, ...] = (m.JOB_COMPLETING,),
) -> None:
    """The job's final status, once its end has been told (docs/guarantees.md): out of the poll's index,
    its lease gone. Conflict if it is no longer in one of `when`."""
    changes: dict[str, Any] = {"status": status, "completed_at": completed_at}
    if counts is not None:
        changes["summary_counts"] = counts
    deps.store.update(job, changes, remove=(*LEASE, *NOT_DUE), when_status=when)


def leave_due(deps: Deps, job: dict[str, Any]) -> None:
    """Out of the poll's index (a job due in a status that needs no look)."""
    deps.store.update(job, {}, remove=NOT_DUE)


# -- notifications ----------------------------------------------------------------------------------


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


def told_end(job: dict[str, Any]) -> str | None:
    """The end a notification already told, if any (then that is the job's end)."""
    return next((status for status in sorted(m.FINAL_JOB_STATES) if job.get(f"notified_{status}")), None)


# -- retries (batchdrop.retry) ------------------------------------------------------------------------

# How long one invocation may take to write a retry's input before another may take over (a Lambda's
# longest run: an invocation that dies mid-way leaves the claim to run out, not forever).
RETRY_CLAIM_SECONDS = 15 * 60


def claim_retry(store: JobStore, job: dict[str, Any]) -> bool:
    """Take the ended job's retry, unless it has one already or another writer's claim is running:
    what makes a duplicated `retry/` event, or two `batchdrop retry` at once, write ONE retry input.
    Version-free, so it never collides with the writes of a job's end."""
    return reserve(store, job, "retry_claim", ("retry_job",), RETRY_CLAIM_SECONDS)


def give_up_retry(store: JobStore, job: dict[str, Any]) -> None:
    """Let the claim go at once (the writer failed where it could see it), for the next attempt."""
    set_flag(store, job, "retry_claim", 0)


def record_retry(store: JobStore, job: dict[str, Any], retry_job: str, key: str, version_id: str | None) -> None:
    """The job's retry, for `batchdrop results --merged` to follow the chain (and for a second request
    to find it instead of writing another)."""
    set_flag(store, job, "retry_key", key)
    if version_id:
        set_flag(store, job, "retry_version", version_id)
    # Last: its presence is what says the retry exists (claim_retry's condition).
    set_flag(store, job, "retry_job", retry_job)
