"""The smoke test's steps (tests/smoke/deployment.py) against the embedded stack, the bucket named
directly instead of by CloudFormation: the files it picks, its wait, its checks and its cleanup."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus

import orjson
import pytest
from botocore.exceptions import ClientError

from batchdrop.adapters import aws
from batchdrop.handlers import use_deps
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import Dispatcher
from batchdrop.local.emulator import EmulatorKnobs
from batchdrop.providers import SPECS
from tests import checks
from tests.helpers import local_stack
from tests.smoke import deployment as d


@pytest.fixture
def stack() -> Iterator[s.LocalStack]:
    with local_stack(s.StackOptions(knobs=EmulatorKnobs(latency=0.0))) as local:
        yield local
    use_deps(None)


def stack_outputs(stack: s.LocalStack) -> dict[str, str]:
    """What infra/stack.py's outputs would say of the embedded stack."""
    outputs = {"BucketName": s.BUCKET, "TableName": s.TABLE, "BedrockServiceRoleArn": "arn:aws:iam::0:role/local"}
    for provider, arn in stack.secret_arns.items():
        name = "OpenaiWebhook" if provider == "openai-webhook" else provider.capitalize()
        outputs[f"{name}SecretArn"] = arn
    return outputs


def versions(prefix: str) -> list[str]:
    page = aws.client("s3").list_object_versions(Bucket=s.BUCKET, Prefix=prefix)
    return [v["Key"] for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]


def test_the_smoke_steps_pick_run_check_and_clean_up_the_sample_files(stack: s.LocalStack) -> None:
    s3, sm = aws.client("s3"), aws.client("secretsmanager")
    # Given a stack whose Gemini secret still holds the placeholder CDK put there
    sm.put_secret_value(SecretId=stack.secret_arns["gemini"], SecretString='{"api_key": "", "placeholder": "x1"}')
    runnable, why_not = d.runnable_providers(stack_outputs(stack), sm)
    assert runnable == {p for p in SPECS if p != "gemini"}
    # When the smoke test picks the sample files
    chosen, skipped = d.choose_files(d.EVENTS.glob("*.jsonl"), runnable, why_not)
    # Then the files with a line for Gemini are left out with the reason, and every other file runs
    placeholder = "gemini: its secret holds the stack's placeholder, not a key"
    with_gemini = {"gemini-mixed.jsonl", "mixed-neutral.jsonl"}
    assert skipped == [f"skipped {name}: {placeholder}" for name in sorted(with_gemini)]
    assert {p.name for p in chosen} == {p.name for p in d.EVENTS.glob("*.jsonl")} - with_gemini
    without_bedrock, _ = d.choose_files(chosen, runnable - {"bedrock"}, why_not)
    assert "bedrock-nova.jsonl" not in {p.name for p in without_bedrock}

    # When it uploads them, in the batch lane, under a run prefix, beside objects of others it must not touch
    others = ["outputs/evals/keep/summary.json", "work/job-someone-else/keep.jsonl"]
    for key in others:
        s3.put_object(Bucket=s.BUCKET, Key=key, Body=b"{}")
    run = d.run_prefix()
    sns, sqs = aws.client("sns"), aws.client("sqs")
    listener = d.listen(sns, sqs, stack.topic_arn, run)
    uploads = list(d.upload(s3, s.BUCKET, chosen, run, lane="batch"))
    assert all(u.key.startswith(f"inputs/{run}/") for u in uploads)
    assert s3.head_object(Bucket=s.BUCKET, Key=uploads[0].key)["Metadata"] == {"batchdrop-lane": "batch"}
    dispatcher = Dispatcher(stack)

    def drive_once() -> None:
        dispatcher.deliver_uploads()
        dispatcher.deliver_realtime()
        dispatcher.tick()
        dispatcher.deliver_completions()
        time.sleep(0.05)

    # and waits, the embedded stack driven between its looks
    started = time.monotonic()
    waited = d.wait_for_outputs(
        s3, s.BUCKET, uploads, 60, status=d.job_status(aws.client("dynamodb"), s.TABLE), between=drive_once
    )
    # Then every job ended, and its outputs pass the checks, each in the lane asked for
    assert not waited.pending
    assert time.monotonic() - started < 60
    summaries = []
    for upload in uploads:
        _results, errors, summary = d.check(s3, s.BUCKET, upload)
        summaries.append(summary)
        assert set(summary["lanes"].values()) == {"batch"}, summary["lanes"]
        if upload.path.name == "openai-with-mistakes.jsonl":
            assert summary["status"] == "partial"
            assert any(e["stage"] == "validation" for e in errors)
        else:
            assert summary["status"] == "completed", (upload.path.name, errors[:2])

    # and its queue heard each job's notifications, which pass the checks too
    notes = d.hear_the_ends(sqs, listener, summaries, patience=10)
    for summary in summaries:
        checks.check_notifications(notes, summary)
    assert {n["attributes"]["event"] for n in notes} == {"submitted", "completed", "partial"}
    d.stop_listening(sns, sqs, listener)
    assert listener.queue_url not in sqs.list_queues().get("QueueUrls", [])
    # (the embedded stack's own capture queue is the one subscription left)
    assert len(sns.list_subscriptions_by_topic(TopicArn=stack.topic_arn)["Subscriptions"]) == 1

    # And the checks catch a result line gone missing
    broken = uploads[0]
    key = f"{broken.output_prefix}results.jsonl"
    lines = s3.get_object(Bucket=s.BUCKET, Key=key)["Body"].read().splitlines()
    s3.put_object(Bucket=s.BUCKET, Key=key, Body=b"\n".join(lines[1:]) + b"\n")
    with pytest.raises(AssertionError, match="exactly once"):
        d.check(s3, s.BUCKET, broken)

    # When it cleans up, a cancel it left behind included
    d.cancel(s3, s.BUCKET, uploads[:1])
    prefixes = d.prefixes_of(run, uploads)
    assert all(versions(p) for p in prefixes[:3])
    cleaned = d.clean_up(s3, s.BUCKET, prefixes)
    # Then every version it made is gone, and nothing else
    assert cleaned.refused is None
    assert cleaned.versions > 3 * len(uploads)
    assert [p for p in prefixes if versions(p)] == []
    for key in others:
        assert versions(key) == [key]


class NoVersionRights:
    """An S3 client for credentials without s3:ListBucketVersions."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3

    def get_paginator(self, name: str) -> Any:
        if name == "list_object_versions":
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "ListObjectVersions")
        return self.s3.get_paginator(name)

    def delete_objects(self, **kwargs: Any) -> Any:
        return self.s3.delete_objects(**kwargs)


def test_without_rights_on_versions_the_cleanup_deletes_the_current_objects_and_says_so(
    stack: s.LocalStack,
) -> None:
    s3 = aws.client("s3")
    for i in range(3):
        s3.put_object(Bucket=s.BUCKET, Key=f"outputs/smoke-x/f{i}.json", Body=orjson.dumps({"i": i}))
    cleaned = d.clean_up(NoVersionRights(s3), s.BUCKET, ["outputs/smoke-x/"])
    assert cleaned.objects == 3
    assert "versions stay" in str(cleaned)
    assert "Contents" not in s3.list_objects_v2(Bucket=s.BUCKET, Prefix="outputs/smoke-x/")


def test_the_smoke_test_finds_a_stack_by_its_outputs_and_skips_one_that_is_not_there(stack: s.LocalStack) -> None:
    template = {
        "Resources": {"Bucket": {"Type": "AWS::S3::Bucket"}},
        "Outputs": {"BucketName": {"Value": {"Ref": "Bucket"}}},
    }
    aws.client("cloudformation").create_stack(StackName="SmokeMe", TemplateBody=orjson.dumps(template).decode())
    found = d.find(d.session(), "SmokeMe")
    assert found.bucket
    assert found.table is None
    with pytest.raises(d.Unavailable, match="no stack 'Nope' in"):
        d.find(d.session(), "Nope")


def deployed(stack: s.LocalStack, name: str) -> d.Deployment:
    """The embedded stack under a CloudFormation stack of that name in moto, its outputs naming it."""
    template = {
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            key: {"Value": value} for key, value in {**stack_outputs(stack), "TopicArn": stack.topic_arn}.items()
        },
    }
    aws.client("cloudformation").create_stack(StackName=name, TemplateBody=orjson.dumps(template).decode())
    return d.find(d.session(), name)


def leftovers() -> list[str]:
    keys = [
        v["Key"]
        for prefix in ("inputs/", "outputs/", "cancel/")
        for v in aws.client("s3").list_object_versions(Bucket=s.BUCKET, Prefix=prefix).get("Versions", [])
    ]
    queues = [q for q in aws.client("sqs").list_queues().get("QueueUrls", []) if "smoke" in q]
    return keys + queues


def test_the_whole_smoke_run_against_a_stack_found_by_name_leaves_nothing_behind(stack: s.LocalStack) -> None:
    # Given the embedded stack found by its name, its functions driven as AWS would drive them
    found = deployed(stack, "Smoked")
    dispatcher = Dispatcher(stack)
    stop = threading.Event()

    def run_the_pipeline() -> None:
        while not stop.is_set():
            dispatcher.deliver_uploads()
            dispatcher.deliver_realtime()
            dispatcher.tick()
            dispatcher.deliver_completions()
            time.sleep(0.05)

    driver = threading.Thread(target=run_the_pipeline, daemon=True)
    driver.start()
    files = [
        d.EVENTS / name
        for name in ("openai-chat-small.jsonl", "openai-with-mistakes.jsonl", "anthropic-messages.jsonl")
    ]
    try:
        # When the smoke run goes through, with the stack's own lane
        summaries = d.smoke(d.session(), found, None, timeout=60, every=0.2, files=files)
    finally:
        stop.set()
        driver.join(timeout=30)
    # Then each job was checked, and the bucket and the queues hold nothing of the run
    assert sorted(summary["input"]["key"].rsplit("/", 1)[1] for summary in summaries) == sorted(f.name for f in files)
    assert leftovers() == []


def test_a_smoke_run_out_of_time_cancels_its_jobs_and_still_cleans_up(stack: s.LocalStack) -> None:
    # Given a stack whose functions never run
    found = deployed(stack, "Stalled")
    # When the smoke run's time runs out
    with pytest.raises(AssertionError, match=r"not ended in 0s: openai-chat-small\.jsonl"):
        d.smoke(d.session(), found, None, timeout=0, every=0.1, files=[d.EVENTS / "openai-chat-small.jsonl"])
    # Then it asked for the job's cancel (an S3 event the functions would have had), and deleted that
    # with the rest of what it wrote
    sqs = aws.client("sqs")
    events = sqs.receive_message(QueueUrl=stack.queue_urls[s.S3_EVENTS_QUEUE], MaxNumberOfMessages=10)
    keys = {
        unquote_plus(record["s3"]["object"]["key"])
        for message in events.get("Messages", [])
        for record in orjson.loads(message["Body"]).get("Records", [])
    }
    assert any(key.startswith("cancel/job-") for key in keys), keys
    assert leftovers() == []
