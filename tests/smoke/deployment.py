"""The smoke test's steps against a deployed stack: find it, upload the sample files it can run, wait
for their jobs to end, check their outputs with tests/checks.py, and delete what the run wrote.

Each step takes its boto3 clients as arguments, so tests/integration/test_smoke_steps.py runs them
against the embedded stack. Nothing here deploys anything; the deployed functions have no emulator
endpoints, so a run is one against the real providers (and Bedrock) by construction.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import orjson
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from batchdrop import models as m
from batchdrop.blueprint import DEFAULT_STACK_NAME
from batchdrop.config import CANCEL_PREFIX, INPUT_PREFIX, OUTPUT_PREFIX
from batchdrop.pipeline import job_id_for, output_prefix, work_prefix
from tests import checks

EVENTS = Path(__file__).resolve().parents[2] / "events"
DEFAULT_STACK = DEFAULT_STACK_NAME

# botocore's defaults (60 s reads, retried) would hold a run with no route to AWS for minutes; the
# smoke test's calls are small, and one that cannot be made should fail in seconds.
AWS_CONFIG = Config(connect_timeout=5, read_timeout=20, retries={"mode": "standard", "max_attempts": 3})

console = Console(highlight=False, soft_wrap=True)


class Unavailable(Exception):
    """No deployment to smoke test here: the one-line reason (the test skips with it)."""


@dataclass(frozen=True)
class Deployment:
    stack: str
    region: str
    outputs: Mapping[str, str]

    @property
    def bucket(self) -> str:
        return self.outputs["BucketName"]

    @property
    def table(self) -> str | None:
        return self.outputs.get("TableName")


@dataclass(frozen=True)
class Upload:
    path: Path
    key: str
    job_id: str

    @property
    def output_prefix(self) -> str:
        return output_prefix(self.key, self.job_id)


def session() -> boto3.session.Session:
    """boto3's standard chain (environment, profile, SSO, instance role), or Unavailable."""
    found = boto3.session.Session()
    try:
        credentials = found.get_credentials()
    except BotoCoreError as exc:  # a broken profile says why; that is a reason to skip too
        raise Unavailable(f"no usable AWS credentials ({exc})") from None
    if credentials is None:
        raise Unavailable("no AWS credentials (boto3's chain found none): nothing to smoke test")
    if not found.region_name:
        raise Unavailable("no AWS region: set AWS_DEFAULT_REGION or a profile's region")
    return found


def find(aws: boto3.session.Session, stack: str) -> Deployment:
    """The stack's outputs (infra/stack.py), or Unavailable when the stack is not there."""
    try:
        cloudformation = aws.client("cloudformation", config=AWS_CONFIG)
        stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except NoRegionError:
        raise Unavailable("no AWS region: set AWS_DEFAULT_REGION or a profile's region") from None
    except ClientError as exc:
        # CloudFormation answers a missing stack with its generic ValidationError: only the message
        # ("Stack with id X does not exist") tells it from a malformed name.
        message = exc.response.get("Error", {}).get("Message", "")
        if "does not exist" in message:
            raise Unavailable(f"no stack {stack!r} in {aws.region_name}: deploy it first (cdk deploy)") from None
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    if "BucketName" not in outputs:
        raise Unavailable(f"the stack {stack!r} has no BucketName output: is it a batchdrop stack?")
    return Deployment(stack, str(aws.region_name), outputs)


def holds_key(secret_string: str) -> bool:
    """Whether a provider's secret holds a key, read as batchdrop.adapters.secrets.api_key reads it: a
    plain string, or JSON with `api_key`; the stack's placeholder is JSON with an empty `api_key`."""
    value = secret_string
    if value.lstrip().startswith("{"):
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(value)
            value = str(parsed.get("api_key", "")) if isinstance(parsed, dict) else ""
    return bool(value.strip())


def runnable_providers(outputs: Mapping[str, str], secretsmanager: Any) -> tuple[set[str], dict[str, str]]:
    """The providers this deployment can run (each `<Provider>SecretArn` whose secret holds a key, and
    Bedrock where its service role is there), and why each other provider it names cannot."""
    runnable: set[str] = set()
    why_not: dict[str, str] = {}
    for name, arn in outputs.items():
        if not name.endswith("SecretArn") or name == "OpenaiWebhookSecretArn":
            continue
        provider = name.removesuffix("SecretArn").lower()
        try:
            value = secretsmanager.get_secret_value(SecretId=arn).get("SecretString") or ""
        except ClientError as exc:
            why_not[provider] = f"its secret cannot be read ({exc.response.get('Error', {}).get('Code')})"
            continue
        if holds_key(value):
            runnable.add(provider)
        else:
            why_not[provider] = "its secret holds the stack's placeholder, not a key"
    if "BedrockServiceRoleArn" in outputs:
        runnable.add("bedrock")
    return runnable, why_not


def providers_of(path: Path) -> set[str]:
    """The providers a file's requests go to, planned by the submit function's own code (as
    `batchdrop validate` plans it), so the choice of files agrees with the run."""
    from batchdrop.config import tmpdir
    from batchdrop.planning import LocalBatches, offline_settings, plan_segment
    from batchdrop.reader import iter_chunks

    batches = LocalBatches()
    try:
        with path.open("rb") as f:
            plan_segment(
                iter_chunks(f),
                offline_settings(),
                key=f"{INPUT_PREFIX}{path.name}",
                store_batch=batches.store,
                report=lambda _invalid: None,
                key_prefix="a1-",
                tmpdir=tmpdir(),
                dry=True,
                # A provider's handful of requests, under its batch minimum (Bedrock's), still goes to it.
                small_realtime=True,
            )
        return {b.provider for b in batches.planned.values()}
    finally:
        batches.close()


def choose_files(files: Iterable[Path], runnable: set[str], why_not: Mapping[str, str]) -> tuple[list[Path], list[str]]:
    """The files whose every provider the deployment can run, and a line for each file left out."""
    chosen: list[Path] = []
    skipped: list[str] = []
    for path in sorted(files):
        missing = sorted(providers_of(path) - runnable)
        if missing:
            reasons = "; ".join(f"{p}: {why_not.get(p, 'not enabled in this stack')}" for p in missing)
            skipped.append(f"skipped {path.name}: {reasons}")
        else:
            chosen.append(path)
    return chosen, skipped


def run_prefix(now: float | None = None) -> str:
    """A folder of its own under inputs/ (and so under outputs/), unique to one run."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"smoke-{stamp}-{secrets.token_hex(3)}"


def upload(s3: Any, bucket: str, files: Sequence[Path], run: str, lane: str | None = None) -> Iterator[Upload]:
    """Each file under inputs/<run>/, with the lane as the upload's metadata, and the job id it gets;
    one at a time, so that a failure half-way still leaves the caller the uploads to clean up."""
    from batchdrop.options import META_LANE

    for path in files:
        key = f"{INPUT_PREFIX}{run}/{path.name}"
        extra = {"Metadata": {META_LANE: lane}} if lane else {}
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), **extra)
        # The job id is the one the submit function derives from the S3 event (as `batchdrop submit`).
        head = s3.head_object(Bucket=bucket, Key=key)
        obj = m.InputObject(bucket, key, head.get("VersionId"), head["ETag"].strip('"'), head["ContentLength"])
        yield Upload(path, key, job_id_for(obj))


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


@dataclass
class Waited:
    ended: list[Upload] = field(default_factory=list)
    pending: list[Upload] = field(default_factory=list)


def wait_for_outputs(
    s3: Any,
    bucket: str,
    uploads: Sequence[Upload],
    timeout: float,
    status: Callable[[str], str | None] | None = None,
    between: Callable[[], None] | None = None,
    every: float = 15.0,
) -> Waited:
    """Wait until each upload's summary.json is there (docs/contract.md "Outputs": written last, once
    the job has ended), showing progress; `status` reads a job's state for the display, `between` runs
    between looks (a sleep of `every` seconds by default)."""
    pending = list(uploads)
    waited = Waited()
    shown: dict[str, str | None] = {}
    deadline = time.monotonic() + timeout
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("jobs ended", total=len(uploads))
        while pending:
            for upload in list(pending):
                if _exists(s3, bucket, f"{upload.output_prefix}summary.json"):
                    pending.remove(upload)
                    waited.ended.append(upload)
                    bar.advance(task)
                    bar.console.print(f"    ended {upload.path.name} · {upload.job_id}")
                elif status is not None:
                    state = status(upload.job_id)
                    if state != shown.get(upload.job_id):
                        shown[upload.job_id] = state
                        bar.console.print(f"      job {upload.path.name} · {upload.job_id} · {state or 'not yet'}")
            if not pending or time.monotonic() > deadline:
                break
            if between is None:
                time.sleep(every)
            else:
                between()
    waited.pending = pending
    return waited


def job_status(dynamodb: Any, table: str) -> Callable[[str], str | None]:
    """A job's state and counts from the job table, for the display only: None when it cannot be read."""
    from batchdrop.adapters.store import JobStore

    store = JobStore(table, dynamodb)

    def read(job_id: str) -> str | None:
        try:
            item = store.get_job(job_id)
        except (ClientError, BotoCoreError):
            return None
        if item is None:
            return None
        counts = item.get("counts") or {}
        if not counts:
            return str(item["status"])
        return f"{item['status']} · {counts.get('lines', 0)} lines, {counts.get('invalid', 0)} invalid"

    return read


def check(s3: Any, bucket: str, upload: Upload) -> checks.Outputs:
    """The job's outputs in the bucket, checked with the local tests' own checks (tests/checks.py)."""

    def read(key: str) -> bytes:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    results, errors, summary = checks.read_outputs(read, upload.output_prefix)
    checks.check_job_outputs(checks.non_blank_lines(upload.path.read_bytes()), results, errors, summary)
    assert summary["job_id"] == upload.job_id
    assert summary["input"]["key"] == upload.key
    for name in ("results", "errors"):
        assert summary[name] == f"s3://{bucket}/{upload.output_prefix}{name}.jsonl", summary[name]
    return results, errors, summary


def cancel(s3: Any, bucket: str, uploads: Iterable[Upload]) -> None:
    """Ask batchdrop to cancel these jobs, with only S3 access (docs/contract.md: `cancel/<job_id>`)."""
    for upload in uploads:
        s3.put_object(Bucket=bucket, Key=f"{CANCEL_PREFIX}{upload.job_id}", Body=b"")


@dataclass(frozen=True)
class Listener:
    """A queue of the run's own, subscribed to the stack's topic with raw delivery: what a user's
    subscriber receives, attributes and all."""

    queue_url: str
    subscription_arn: str


def listen(sns: Any, sqs: Any, topic_arn: str, run: str) -> Listener:
    """Subscribe a new queue to the topic (before the uploads, so that `submitted` is heard too)."""
    url = sqs.create_queue(QueueName=f"batchdrop-{run}")["QueueUrl"]
    try:
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        only_the_topic = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                }
            ],
        }
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": orjson.dumps(only_the_topic).decode()})
        subscription = sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"RawMessageDelivery": "true"},
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]
    except (ClientError, BotoCoreError):
        sqs.delete_queue(QueueUrl=url)
        raise
    return Listener(url, subscription)


def heard(sqs: Any, listener: Listener) -> list[dict[str, Any]]:
    """The notifications that arrived, drained, each as {"attributes", "message"}."""
    out: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(
            QueueUrl=listener.queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=1
        ).get("Messages", [])
        if not messages:
            return out
        for message in messages:
            attrs = {k: v.get("StringValue") for k, v in (message.get("MessageAttributes") or {}).items()}
            out.append({"attributes": attrs, "message": orjson.loads(message["Body"])})
            sqs.delete_message(QueueUrl=listener.queue_url, ReceiptHandle=message["ReceiptHandle"])


def hear_the_ends(
    sqs: Any, listener: Listener, summaries: Sequence[dict[str, Any]], patience: float = 60.0
) -> list[dict[str, Any]]:
    """Every notification heard until each job's end has been (it is published just after its
    summary.json is written), or `patience` seconds."""
    notes: list[dict[str, Any]] = []
    wanted = {f"{s['job_id']}:{s['status']}" for s in summaries}
    deadline = time.monotonic() + patience
    while True:
        notes += heard(sqs, listener)
        if wanted <= {n["attributes"].get("notification_id") for n in notes} or time.monotonic() > deadline:
            return notes


def stop_listening(sns: Any, sqs: Any, listener: Listener) -> None:
    sns.unsubscribe(SubscriptionArn=listener.subscription_arn)
    sqs.delete_queue(QueueUrl=listener.queue_url)


@dataclass
class Cleaned:
    """What clean_up removed: every version the run made, or (without the right to delete versions)
    the current objects only, their older versions and the delete markers left to the bucket."""

    versions: int = 0
    objects: int = 0
    refused: str | None = None

    def __str__(self) -> str:
        if self.refused is None:
            return f"deleted {self.versions} object versions and delete markers"
        return f"deleted {self.objects} current objects; their versions stay in the versioned bucket ({self.refused})"


def prefixes_of(run: str, uploads: Iterable[Upload]) -> list[str]:
    """Everything a run writes: its inputs and outputs folders, and per job its work/ folder and the
    cancel/ object a timed-out run left."""
    out = [f"{INPUT_PREFIX}{run}/", f"{OUTPUT_PREFIX}{run}/"]
    for upload in uploads:
        out += [work_prefix(upload.job_id), f"{CANCEL_PREFIX}{upload.job_id}"]
    return out


def _versions(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, str]]:
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            yield {"Key": entry["Key"], "VersionId": entry["VersionId"]}


def _current(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, str]]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            yield {"Key": entry["Key"]}


def _delete(s3: Any, bucket: str, entries: list[dict[str, str]]) -> None:
    for start in range(0, len(entries), 1000):  # DeleteObjects takes 1,000 keys a call
        answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": entries[start : start + 1000], "Quiet": True})
        if answer.get("Errors"):
            first = answer["Errors"][0]
            raise ClientError({"Error": {"Code": first.get("Code"), "Message": first.get("Message")}}, "DeleteObjects")


def clean_up(s3: Any, bucket: str, prefixes: Iterable[str]) -> Cleaned:
    """Delete every version under the prefixes; where that is refused, the current objects."""
    cleaned = Cleaned()
    for prefix in prefixes:
        if cleaned.refused is None:
            try:
                entries = list(_versions(s3, bucket, prefix))
                _delete(s3, bucket, entries)
                cleaned.versions += len(entries)
                continue
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code != "AccessDenied":
                    raise
                cleaned.refused = f"{code} on versions: s3:ListBucketVersions and s3:DeleteObjectVersion needed"
        entries = list(_current(s3, bucket, prefix))
        _delete(s3, bucket, entries)
        cleaned.objects += len(entries)
    return cleaned


def smoke(
    aws: boto3.session.Session,
    found: Deployment,
    lane: str | None,
    timeout: float,
    every: float = 15.0,
    files: Iterable[Path] | None = None,
) -> list[dict[str, Any]]:
    """The whole run against a found deployment: pick, listen, upload, wait, check, and clean up
    whatever happens; the jobs' summaries. Unavailable when the stack can run none of the files."""
    say = console.print
    s3 = aws.client("s3", config=AWS_CONFIG)
    runnable, why_not = runnable_providers(found.outputs, aws.client("secretsmanager", config=AWS_CONFIG))
    say(
        f"stack {found.stack} in {found.region}, bucket {found.bucket}; it can run: "
        f"{', '.join(sorted(runnable)) or 'none'}. Its functions have no emulator endpoints: this run calls "
        "the real providers."
    )
    chosen, skipped = choose_files(EVENTS.glob("*.jsonl") if files is None else files, runnable, why_not)
    for line in skipped:
        say(line)
    if not chosen:
        raise Unavailable(
            f"the stack {found.stack!r} can run none of the sample files: put a provider's key in its secret"
        )
    run = run_prefix()
    sns, sqs = aws.client("sns", config=AWS_CONFIG), aws.client("sqs", config=AWS_CONFIG)
    listener = None
    if "TopicArn" in found.outputs:
        try:
            listener = listen(sns, sqs, found.outputs["TopicArn"], run)
        except (ClientError, BotoCoreError) as exc:
            say(f"notifications not checked: cannot subscribe a queue to the topic ({exc})")
    uploads: list[Upload] = []
    waited = Waited()
    summaries: list[dict[str, Any]] = []
    try:
        for sent in upload(s3, found.bucket, chosen, run, lane):
            uploads.append(sent)
            say(f"   upload {sent.path.name} → s3://{found.bucket}/{sent.key} · job {sent.job_id}")
        status = job_status(aws.client("dynamodb", config=AWS_CONFIG), found.table) if found.table else None
        waited = wait_for_outputs(s3, found.bucket, uploads, timeout, status=status, every=every)
        assert not waited.pending, f"not ended in {timeout:.0f}s: " + ", ".join(u.path.name for u in waited.pending)
        for sent in uploads:
            _results, _errors, summary = check(s3, found.bucket, sent)
            summaries.append(summary)
            c = summary["counts"]
            say(
                f"  checked {sent.path.name}: {summary['status']}, {c['lines']} lines, {c['succeeded']} succeeded, "
                f"{c['failed']} failed, {c['invalid']} invalid, lanes {summary.get('lanes')}, "
                f"cost ${summary['cost_usd'].get('total')}"
            )
        if listener is not None:
            notes = hear_the_ends(sqs, listener, summaries)
            for summary in summaries:
                checks.check_notifications(notes, summary)
            say(f"  checked {len(notes)} notifications")
    finally:
        unfinished = [u for u in uploads if u not in waited.ended]
        try:
            if unfinished:
                # Interrupted or out of time: stop paying for them. Their jobs end `canceled` at the next
                # poll and write outputs after this cleanup; the line below says where.
                cancel(s3, found.bucket, unfinished)
                say(
                    f"canceled {len(unfinished)} unfinished jobs; their outputs will still appear: "
                    f"aws s3 rm --recursive s3://{found.bucket}/outputs/{run}/"
                )
            say(f"cleanup of {run}: {clean_up(s3, found.bucket, prefixes_of(run, uploads))}")
        finally:
            if listener is not None:
                stop_listening(sns, sqs, listener)
    return summaries
