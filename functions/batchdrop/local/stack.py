"""The embedded stack: moto's server for AWS and the provider emulator, both over HTTP on 127.0.0.1.

`LocalStack` creates the same resources the CDK stack deploys (from one definition here), points
boto3 at moto with AWS_ENDPOINT_URL and the providers at the emulator, and sets the environment the
handlers read, exactly as Lambda would. Nothing in the functions knows it is running locally.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import secrets
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchdrop import config as c
from batchdrop.adapters import aws
from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from batchdrop.providers import SPECS
from batchdrop.providers.spec import provider_env

REGION = "us-east-1"
BUCKET = "batchdrop-local"
TABLE = "batchdrop-jobs"
TOPIC = "batchdrop-notifications"
S3_EVENTS_QUEUE = "batchdrop-s3-events"
NOTIFICATIONS_QUEUE = "batchdrop-notifications-capture"
COMPLETION_QUEUE = "batchdrop-completion"
COMPLETION_DLQ = "batchdrop-completion-dlq"
SEGMENTS_QUEUE = "batchdrop-segments"
REALTIME_QUEUE = "batchdrop-realtime"
REALTIME_DLQ = "batchdrop-realtime-dlq"
MAX_RECEIVE_COUNT = 3
# A chunk of the real-time lane whose runs keep failing goes to the dead-letter queue after this many.
REALTIME_MAX_RECEIVES = 5
# A dummy key: the emulator accepts any non-empty key. It lives in (moto's) Secrets Manager, so the
# functions read it through the same code path as in AWS.
LOCAL_API_KEY = "local-emulator-key"


@dataclass
class StackOptions:
    knobs: EmulatorKnobs = field(default_factory=EmulatorKnobs)
    on_invalid: str = "skip"
    max_attempts: int = 2
    providers: tuple[str, ...] = tuple(SPECS)
    # Bedrock's minimum records per job, for the emulator and the functions alike (AWS: 100 by default).
    bedrock_min_records: int = 100
    bedrock_fallback: str | None = None
    limits: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # provider → (requests, bytes)
    # The local clock runs fast; a crashed invocation's lease (and the create lock) should run out in
    # seconds, not the quarter hour that covers Lambda's timeout.
    lease_seconds: int = 30
    completion_grace_seconds: int = 10
    create_lock_seconds: int = 10
    segment_bytes: int | None = None  # plan large files in segments of this size (None: the default)
    # Use a moto server and an emulator running in other processes (benchmarks measure memory this
    # way, without the bucket's contents or the provider's state in the measured process).
    external_aws: str | None = None
    external_emulator: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # The emulator's clock: tests pass one they move by hand, so when a batch's requests finish does
    # not depend on how busy the machine is.
    clock: Callable[[], float] = time.time
    # The lanes (docs/contract.md "Lanes and deadlines"): the stack's lane (None: the stack's default,
    # auto, unless the environment sets BATCHDROP_LANE), its deadline, the auto lane's threshold and
    # minimum batch window, the escalation margin, the real-time requests per minute per provider the
    # functions count on (BATCHDROP_<NAME>_RPM), and how many realtime invocations run at once.
    lane: str | None = None
    deadline: str | None = None
    realtime_below: int | None = None
    min_batch_window: str | None = None
    escalation_margin: str | None = None
    rpm: Mapping[str, int] = field(default_factory=dict)
    realtime_invocations: int = 4
    # The realtime function's timeout here (the deployed one's is 3 min, infra/constructs/functions.py):
    # each invocation runs for up to this long, and a chunk whose invocation died is claimed again after
    # it; the chaos runs make it short, so that crashes are recovered from within seconds.
    realtime_timeout: int = 60


class LocalStack:
    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.emulator = ProviderEmulator(self.options.knobs, clock=self.options.clock)
        self.emulator.bedrock.min_records = self.options.bedrock_min_records
        self._moto: Any = None
        self._saved_env: dict[str, str | None] = {}
        self.endpoint = ""
        self.queue_urls: dict[str, str] = {}
        self.topic_arn = ""
        self.secret_arns: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> LocalStack:
        from moto.server import ThreadedMotoServer

        # moto's werkzeug server logs every request; the progress display is ours to show.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        if self.options.external_aws:
            self.endpoint = self.options.external_aws
        else:
            self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._moto.start()
            host, port = self._moto.get_host_and_port()
            self.endpoint = f"http://{host}:{port}"
        # moto keeps its state per process, not per server: start from an empty account.
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")).close()  # noqa: S310
        if not self.options.external_emulator:
            self.emulator.start()
        self._set_env(
            {
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_NAMESPACE": "batchdrop",
                "POWERTOOLS_SERVICE_NAME": "batchdrop",
                "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "ERROR"),
                # Metrics go to stdout as EMF in Lambda; locally they would only drown the display.
                "POWERTOOLS_METRICS_DISABLED": "true",
            }
        )
        # The handlers' loggers were built at import, before this environment: apply its level now.
        logging.getLogger("batchdrop").setLevel(os.environ["POWERTOOLS_LOG_LEVEL"].upper())
        aws.reset()
        self._create_resources()
        self._set_env(self.function_env())
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.emulator.stop()
        if self._moto is not None:
            with contextlib.suppress(Exception):
                self._moto.stop()
            self._moto = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        aws.reset()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _set_env(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    # -- resources (the local twin of infra/) ---------------------------------------------------

    def _create_resources(self) -> None:
        s3, sqs, sns, ddb, sm = (aws.client(n) for n in ("s3", "sqs", "sns", "dynamodb", "secretsmanager"))
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        for name in (S3_EVENTS_QUEUE, NOTIFICATIONS_QUEUE, COMPLETION_DLQ, SEGMENTS_QUEUE, REALTIME_DLQ):
            self.queue_urls[name] = sqs.create_queue(QueueName=name)["QueueUrl"]
        self.queue_urls[REALTIME_QUEUE] = sqs.create_queue(
            QueueName=REALTIME_QUEUE,
            Attributes={
                "VisibilityTimeout": "30",
                "RedrivePolicy": orjson.dumps(
                    {"deadLetterTargetArn": self.queue_arn(REALTIME_DLQ), "maxReceiveCount": str(REALTIME_MAX_RECEIVES)}
                ).decode(),
            },
        )["QueueUrl"]
        dlq_arn = self.queue_arn(COMPLETION_DLQ)
        self.queue_urls[COMPLETION_QUEUE] = sqs.create_queue(
            QueueName=COMPLETION_QUEUE,
            Attributes={
                "VisibilityTimeout": "30",
                "RedrivePolicy": orjson.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
                ).decode(),
            },
        )["QueueUrl"]
        # S3 → SQS, as moto delivers it: the dispatcher drains this queue into the submit handler,
        # so the event shape (URL-encoded keys and all) is moto's, not ours.
        s3.put_bucket_notification_configuration(
            Bucket=BUCKET,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": self.queue_arn(S3_EVENTS_QUEUE),
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": c.INPUT_PREFIX}, *suffix]}},
                    }
                    for suffix in (
                        [{"Name": "suffix", "Value": ".jsonl"}],
                        [{"Name": "suffix", "Value": ".jsonl.gz"}],
                    )
                ]
                + [
                    {
                        "QueueArn": self.queue_arn(S3_EVENTS_QUEUE),
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": c.CANCEL_PREFIX}]}},
                    }
                ]
            },
        )
        ddb.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
                {"AttributeName": c.DUE_PK, "AttributeType": "S"},
                {"AttributeName": c.DUE_SK, "AttributeType": "N"},
            ],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": c.DUE_INDEX,
                    "KeySchema": [
                        {"AttributeName": c.DUE_PK, "KeyType": "HASH"},
                        {"AttributeName": c.DUE_SK, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        )
        self.topic_arn = sns.create_topic(Name=TOPIC)["TopicArn"]
        sns.subscribe(
            TopicArn=self.topic_arn,
            Protocol="sqs",
            Endpoint=self.queue_arn(NOTIFICATIONS_QUEUE),
            Attributes={"RawMessageDelivery": "true"},
        )
        if "bedrock" in self.options.providers:
            self._create_bedrock_role()
        # A provider that needs no key (Bedrock) runs as a service role.
        for provider in (p for p in self.options.providers if SPECS[p].needs_key):
            self.secret_arns[provider] = sm.create_secret(
                Name=f"batchdrop/{provider}-api-key", SecretString=LOCAL_API_KEY
            )["ARN"]
        # The signing key of OpenAI webhooks, shared by the emulator (which signs) and the webhook
        # function (which checks), as a real project's webhook secret is.
        self.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.emulator.openai.webhook_secret = self.webhook_secret
        self.secret_arns["openai-webhook"] = sm.create_secret(
            Name="batchdrop/openai-webhook-secret", SecretString=self.webhook_secret
        )["ARN"]

    def _create_bedrock_role(self) -> None:
        """Bedrock's service role with the object grant the deployed stack gives it (infra/constructs/
        bedrock.py): the emulator reads a job's input as this role, so a missing grant fails locally too."""
        arn = SPECS["bedrock"].local.values["ROLE_ARN"]
        name = arn.rsplit("/", 1)[-1]
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "bedrock.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        grant = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:PutObject"],
                    "Resource": f"arn:aws:s3:::{BUCKET}/{c.WORK_PREFIX}*",
                }
            ],
        }
        iam = aws.client("iam")
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=orjson.dumps(trust).decode())
        iam.put_role_policy(RoleName=name, PolicyName="work", PolicyDocument=orjson.dumps(grant).decode())

    def queue_arn(self, name: str) -> str:
        return f"arn:aws:sqs:{REGION}:123456789012:{name}"

    def function_env(self) -> dict[str, str]:
        o = self.options
        env = {
            c.ENV_BUCKET: BUCKET,
            c.ENV_TABLE: TABLE,
            c.ENV_TOPIC_ARN: self.topic_arn,
            c.ENV_COMPLETION_QUEUE_URL: self.queue_urls[COMPLETION_QUEUE],
            c.ENV_ON_INVALID: o.on_invalid,
            c.ENV_MAX_ATTEMPTS: str(o.max_attempts),
            c.ENV_PROVIDERS: ",".join(o.providers),
            # The local clock runs fast: look at a batch as soon as it is due.
            c.ENV_POLL_MIN_SECONDS: "0",
            c.ENV_POLL_MAX_SECONDS: "1",
            c.ENV_LEASE_SECONDS: str(o.lease_seconds),
            c.ENV_COMPLETION_GRACE_SECONDS: str(o.completion_grace_seconds),
            c.ENV_CREATE_LOCK_SECONDS: str(o.create_lock_seconds),
            c.ENV_SUBMIT_QUEUE_URL: self.queue_urls[SEGMENTS_QUEUE],
            c.ENV_REALTIME_QUEUE_URL: self.queue_urls[REALTIME_QUEUE],
            c.ENV_REALTIME_INVOCATIONS: str(o.realtime_invocations),
            c.ENV_OPENAI_WEBHOOK_SECRET_ARN: self.secret_arns["openai-webhook"],
            # As the CDK stack sets it (infra/constructs/functions.py); it only acts on a process that
            # starts with it, such as the benchmarks' handler processes.
            "MALLOC_ARENA_MAX": "2",
        }
        base = (self.options.external_emulator or self.emulator.base_url).rstrip("/")
        for provider in o.providers:
            local = SPECS[provider].local
            if local.endpoint_env:
                env[local.endpoint_env] = base
            if local.runtime_endpoint_env:
                env[local.runtime_endpoint_env] = base
            limits = o.limits.get(provider)
            values = {
                "SECRET_ARN": self.secret_arns.get(provider),
                "BASE_URL": None if local.base_path is None else base + local.base_path,
                **local.values,
                **self._settings(provider),
                "MAX_REQUESTS": None if limits is None else str(limits[0]),
                "MAX_BYTES": None if limits is None else str(limits[1]),
            }
            env.update(provider_env(provider, values))
        if o.segment_bytes is not None:
            env[c.ENV_SEGMENT_BYTES] = str(o.segment_bytes)
        lanes = {
            # The stack's lane: this option, else the environment's that starts the stack (as for any
            # deployment setting), else the functions' default (auto).
            c.ENV_LANE: o.lane or os.environ.get(c.ENV_LANE) or None,
            c.ENV_DEADLINE: o.deadline,
            c.ENV_REALTIME_BELOW: None if o.realtime_below is None else str(o.realtime_below),
            c.ENV_MIN_BATCH_WINDOW: o.min_batch_window,
            c.ENV_ESCALATION_MARGIN: o.escalation_margin,
        }
        env.update({name: value for name, value in lanes.items() if value is not None})
        for provider, rpm in o.rpm.items():
            env.update(provider_env(provider, {"RPM": str(rpm)}))
        env.update(o.extra_env)
        return env

    def _settings(self, provider: str) -> dict[str, str | None]:
        """The options the local stack sets for a provider beyond its spec's local values."""
        if provider == "bedrock":
            return {"MIN_RECORDS": str(self.options.bedrock_min_records), "FALLBACK": self.options.bedrock_fallback}
        return {}

    # -- conveniences for the CLI and tests -----------------------------------------------------

    def upload(self, path: str, key: str, metadata: Mapping[str, str] | None = None) -> None:
        """Upload a file, with user metadata (the per-file options) as `aws s3 cp --metadata` sets it."""
        extra = {"Metadata": dict(metadata)} if metadata else None
        aws.client("s3").upload_file(path, BUCKET, key, ExtraArgs=extra)

    def put(self, key: str, data: bytes) -> None:
        aws.client("s3").put_object(Bucket=BUCKET, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        body: bytes = aws.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return body

    def keys(self, prefix: str) -> Iterator[str]:
        paginator = aws.client("s3").get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def download_tree(self, prefix: str, out_dir: str) -> list[str]:
        """Copy every object under `prefix` into out_dir. A key is data: segments such as `..` are
        escaped (`%2E%2E`), so no key can write outside out_dir."""
        root = os.path.realpath(out_dir)
        written = []
        for key in self.keys(prefix):
            target = os.path.join(root, local_path(key))
            if os.path.commonpath([root, os.path.realpath(target)]) != root:
                raise ValueError(f"refusing to write the object {key!r} outside {out_dir}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            aws.client("s3").download_file(BUCKET, key, target)
            written.append(target)
        return written


NAME_MAX = 255


def local_path(key: str) -> str:
    """A relative file path for an S3 key that cannot climb out of the folder it is joined to."""
    parts = []
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            segment = segment.replace(".", "%2E") or "%2F"
        if len(segment.encode()) > NAME_MAX:
            # S3 segments have no length limit; file names do. Keep the head, add a hash of the whole.
            digest = "~" + hashlib.sha256(segment.encode()).hexdigest()[:12]
            segment = segment.encode()[: NAME_MAX - len(digest)].decode("utf-8", errors="ignore") + digest
        parts.append(segment)
    return os.path.join(*parts)
