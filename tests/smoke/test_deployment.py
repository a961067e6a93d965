"""A smoke test of a deployed stack (`make smoke`): the sample files through the real pipeline, the real
providers, and the checks the local tests make (tests/checks.py). It deploys nothing and costs a few
cents of provider calls; it skips where there is no deployment to reach, and deletes what it wrote."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests import checks
from tests.smoke import deployment as d


def _smoke_selected(config: pytest.Config) -> bool:
    # `make test` runs every folder: on a machine with credentials and a stack, a plain `pytest` must
    # not start a provider run of up to two hours. Only `-m smoke` asks for one.
    return "smoke" in str(config.getoption("markexpr") or "")


@pytest.mark.timeout(0)  # bounded by --smoke-timeout and botocore's own timeouts, not pytest-timeout's 300 s
def test_the_sample_files_run_through_a_deployed_stack(request: pytest.FixtureRequest) -> None:
    config = request.config
    if not _smoke_selected(config):
        pytest.skip("spends provider calls: run it with `make smoke` (pytest -m smoke tests/smoke)")
    stack = config.getoption("smoke_stack") or os.environ.get("BATCHDROP_STACK") or d.DEFAULT_STACK
    lane = config.getoption("smoke_lane")
    timeout = float(config.getoption("smoke_timeout"))
    try:
        aws = d.session()
        found = d.find(aws, stack)
    except d.Unavailable as exc:
        pytest.skip(str(exc))
    s3 = aws.client("s3", config=d.AWS_CONFIG)
    runnable, why_not = d.runnable_providers(found.outputs, aws.client("secretsmanager", config=d.AWS_CONFIG))
    say = d.console.print
    say(
        f"stack {stack} in {found.region}, bucket {found.bucket}; it can run: {', '.join(sorted(runnable)) or 'none'}. "
        "Its functions have no emulator endpoints: this run calls the real providers."
    )
    chosen, skipped = d.choose_files(d.EVENTS.glob("*.jsonl"), runnable, why_not)
    for line in skipped:
        say(line)
    if not chosen:
        pytest.skip(f"the stack {stack!r} can run none of the sample files: put a provider's key in its secret")
    run = d.run_prefix()
    sns, sqs = aws.client("sns", config=d.AWS_CONFIG), aws.client("sqs", config=d.AWS_CONFIG)
    listener = None
    if "TopicArn" in found.outputs:
        try:
            listener = d.listen(sns, sqs, found.outputs["TopicArn"], run)
        except (ClientError, BotoCoreError) as exc:
            say(f"notifications not checked: cannot subscribe a queue to the topic ({exc})")
    uploads: list[d.Upload] = []
    waited = d.Waited()
    try:
        for upload in d.upload(s3, found.bucket, chosen, run, lane):
            uploads.append(upload)
            say(f"   upload {upload.path.name} → s3://{found.bucket}/{upload.key} · job {upload.job_id}")
        status = d.job_status(aws.client("dynamodb", config=d.AWS_CONFIG), found.table) if found.table else None
        waited = d.wait_for_outputs(s3, found.bucket, uploads, timeout, status=status)
        assert not waited.pending, f"not ended in {timeout:.0f}s: " + ", ".join(u.path.name for u in waited.pending)
        summaries = []
        for upload in uploads:
            _results, _errors, summary = d.check(s3, found.bucket, upload)
            summaries.append(summary)
            c = summary["counts"]
            say(
                f"  checked {upload.path.name}: {summary['status']}, {c['lines']} lines, {c['succeeded']} succeeded, "
                f"{c['failed']} failed, {c['invalid']} invalid, lanes {summary.get('lanes')}, "
                f"cost ${summary['cost_usd'].get('total')}"
            )
        if listener is not None:
            notes = d.hear_the_ends(sqs, listener, summaries)
            for summary in summaries:
                checks.check_notifications(notes, summary)
            say(f"  checked {len(notes)} notifications")
    finally:
        unfinished = [u for u in uploads if u not in waited.ended]
        try:
            if unfinished:
                # Interrupted or out of time: stop paying for them. Their jobs end `canceled` at the next
                # poll and write outputs after this cleanup; the line below says where.
                d.cancel(s3, found.bucket, unfinished)
                say(
                    f"canceled {len(unfinished)} unfinished jobs; their outputs will still appear: "
                    f"aws s3 rm --recursive s3://{found.bucket}/outputs/{run}/"
                )
            say(f"cleanup of {run}: {d.clean_up(s3, found.bucket, d.prefixes_of(run, uploads))}")
        finally:
            if listener is not None:
                d.stop_listening(sns, sqs, listener)
