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

from batchdrop import blueprint
from batchdrop import config as c
from batchdrop.adapters import aws
from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from batchdrop.providers import SPECS
from batchdrop.providers.spec import env_var

REGION = "us-east-1"
BUCKET = "batchdrop-local"
TABLE = "batchdrop-jobs"
CACHE_TABLE = "batchdrop-cache"
TOPIC = "batchdrop-notifications"
# Local stand-ins for what AWS does without a queue: S3's asynchronous invocation of submit (Lambda's
# event queue, with its retries and then the submit dead-letter queue) and a subscriber of the topic.
S3_EVENTS_QUEUE = "batchdrop-s3-events"
NOTIFICATIONS_QUEUE = "batchdrop-notifications-capture"


def queue_name(queue: blueprint.Queue) -> str:
    """The local name of one of the blueprint's queues: `Completion` → batchdrop-completion,
    `CompletionDeadLetters` → batchdrop-completion-dlq."""
    return "batchdrop-" + queue.id.replace("DeadLetters", "-dlq").lower()


COMPLETION_QUEUE = queue_name(blueprint.COMPLETION)
COMPLETION_DLQ = queue_name(blueprint.COMPLETION_DLQ)
SEGMENTS_QUEUE = queue_name(blueprint.SEGMENTS)
REALTIME_QUEUE = queue_name(blueprint.REALTIME_CHUNKS)
REALTIME_DLQ = queue_name(blueprint.REALTIME_DLQ)
SUBMIT_DLQ = queue_name(blueprint.SUBMIT_DLQ)
assert blueprint.COMPLETION.max_receives is not None
assert blueprint.REALTIME_CHUNKS.max_receives is not None
MAX_RECEIVE_COUNT: int = blueprint.COMPLETION.max_receives
REALTIME_MAX_RECEIVES: int = blueprint.REALTIME_CHUNKS.max_receives

# Where the local stack departs from the blueprint, and why; tests/infra/test_drift.py allows these
# and nothing else. The local clock runs fast: a message whose invocation failed comes back in seconds,
# not six function timeouts (the realtime queue's follows StackOptions.realtime_timeout, so a chunk is
# not handed out again while its invocation may still run). The dispatcher invokes the consumers of
# these two one at a time and deletes a message before it receives again, so a timeout shorter than
# an invocation never hands a message out twice.
LOCAL_VISIBILITY_SECONDS = {blueprint.COMPLETION.id: 2, blueprint.SEGMENTS.id: 2}
# Lambda retries a failed asynchronous invocation after about a minute, then two; locally after a second.
S3_EVENTS_VISIBILITY_SECONDS = 1
NOTIFICATIONS_VISIBILITY_SECONDS = 30
# Variables only the local stack sets: where the emulator is, and the settings the deployed functions
# leave at their defaults but a fast local clock shortens (or tests and the CLI set).
LOCAL_ONLY_ENV = {
    c.ENV_POLL_MIN_SECONDS: "look at a batch as soon as it is due",
    c.ENV_POLL_MAX_SECONDS: "look at a batch as soon as it is due",
    c.ENV_LEASE_SECONDS: "a crashed invocation's lease runs out in seconds",
    c.ENV_COMPLETION_GRACE_SECONDS: "the local clock runs fast",
    c.ENV_CREATE_LOCK_SECONDS: "the create lock runs out in seconds",
    c.ENV_SEGMENT_BYTES: "tests plan small files in several segments",
    c.ENV_OPENAI_WEBHOOK_SECRET_ARN: "one process runs every function (the deployed webhook function has it)",
    "POWERTOOLS_METRICS_DISABLED": "metrics would drown the progress display",
}
# Variables the local stack sets to other values than the deployed stack, and why. (Settings a test or
# the CLI gives, such as a provider's limits or rate, are set only when given, on both sides.)
LOCAL_VALUES = {
    "POWERTOOLS_LOG_LEVEL": "errors only: the progress display is the local view",
    c.ENV_REALTIME_INVOCATIONS: "fewer concurrent realtime invocations on a 2-core machine",
    **{
        env_var(provider, "BASE_URL"): "the emulator's address"
        for provider, spec in SPECS.items()
        if spec.local.base_path is not None
    },
    env_var("bedrock", "MIN_RECORDS"): "Bedrock's minimum, which tests make small, for the emulator too",
}
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
                # The rest of Powertools' settings come with the functions' environment (function_env).
                "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "ERROR"),
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
        s3, sns, ddb, sm = (aws.client(n) for n in ("s3", "sns", "dynamodb", "secretsmanager"))
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        for queue in blueprint.QUEUES.values():
            self._create_queue(
                queue_name(queue),
                visibility=self.visibility_timeout(queue),
                retention_days=queue.retention_days,
                dead_letter=None if queue.dead_letter is None else queue_name(queue.dead_letter),
                max_receives=queue.max_receives,
            )
        # Lambda's event queue of asynchronous invocations: a failed submit is tried again
        # SUBMIT_RETRY_ATTEMPTS times, then its event goes to the submit dead-letter queue.
        self._create_queue(
            S3_EVENTS_QUEUE,
            visibility=S3_EVENTS_VISIBILITY_SECONDS,
            dead_letter=SUBMIT_DLQ,
            max_receives=blueprint.SUBMIT_RETRY_ATTEMPTS + 1,
        )
        self._create_queue(NOTIFICATIONS_QUEUE, visibility=NOTIFICATIONS_VISIBILITY_SECONDS)
        # S3 → SQS, as moto delivers it: the dispatcher drains this queue into the submit handler,
        # so the event shape (URL-encoded keys and all) is moto's, not ours.
        s3.put_bucket_notification_configuration(
            Bucket=BUCKET,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": self.queue_arn(S3_EVENTS_QUEUE),
                        "Events": list(blueprint.UPLOAD_EVENTS),
                        "Filter": {
                            "Key": {"FilterRules": [{"Name": name, "Value": value} for name, value in rules.items()]}
                        },
                    }
                    for rules in blueprint.upload_filters()
                ]
            },
        )
        keys = (blueprint.TABLE_PARTITION_KEY, blueprint.TABLE_SORT_KEY)
        index_keys = [k for index in blueprint.TABLE_INDEXES for k in (index.partition, index.sort)]
        ddb.create_table(
            TableName=TABLE,
            BillingMode=blueprint.TABLE_BILLING_MODE,
            AttributeDefinitions=[
                {"AttributeName": k.name, "AttributeType": k.type} for k in dict.fromkeys((*keys, *index_keys))
            ],
            KeySchema=[
                {"AttributeName": k.name, "KeyType": role} for k, role in zip(keys, ("HASH", "RANGE"), strict=True)
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": index.name,
                    "KeySchema": [
                        {"AttributeName": index.partition.name, "KeyType": "HASH"},
                        {"AttributeName": index.sort.name, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": index.projection},
                }
                for index in blueprint.TABLE_INDEXES
            ],
        )
        ddb.update_time_to_live(
            TableName=TABLE,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": blueprint.TABLE_TTL_ATTRIBUTE},
        )
        key = blueprint.CACHE_PARTITION_KEY
        ddb.create_table(
            TableName=CACHE_TABLE,
            BillingMode=blueprint.CACHE_BILLING_MODE,
            AttributeDefinitions=[{"AttributeName": key.name, "AttributeType": key.type}],
            KeySchema=[{"AttributeName": key.name, "KeyType": "HASH"}],
        )
        ddb.update_time_to_live(
            TableName=CACHE_TABLE,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": blueprint.CACHE_TTL_ATTRIBUTE},
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
                Name=blueprint.secret_name(blueprint.DEFAULT_STACK_NAME, provider), SecretString=LOCAL_API_KEY
            )["ARN"]
        # The signing key of OpenAI webhooks, shared by the emulator (which signs) and the webhook
        # function (which checks), as a real project's webhook secret is.
        self.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.emulator.openai.webhook_secret = self.webhook_secret
        self.secret_arns["openai-webhook"] = sm.create_secret(
            Name=blueprint.webhook_secret_name(blueprint.DEFAULT_STACK_NAME), SecretString=self.webhook_secret
        )["ARN"]

    def visibility_timeout(self, queue: blueprint.Queue) -> int | None:
        """A queue's local visibility timeout (the blueprint's rule, on the local clock)."""
        if queue.id == blueprint.REALTIME_CHUNKS.id:
            # A chunk whose invocation died is claimed again once its invocation's time is up.
            return self.options.realtime_timeout + 5
        return LOCAL_VISIBILITY_SECONDS.get(queue.id)

    def _create_queue(
        self,
        name: str,
        *,
        visibility: int | None,
        retention_days: int | None = None,
        dead_letter: str | None = None,
        max_receives: int | None = None,
    ) -> None:
        attributes: dict[str, str] = {}
        if visibility is not None:
            attributes["VisibilityTimeout"] = str(visibility)
        if retention_days is not None:
            attributes["MessageRetentionPeriod"] = str(retention_days * 24 * 3600)
        if dead_letter is not None:
            redrive = {"deadLetterTargetArn": self.queue_arn(dead_letter), "maxReceiveCount": str(max_receives)}
            attributes["RedrivePolicy"] = orjson.dumps(redrive).decode()
        self.queue_urls[name] = aws.client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]

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
        """The functions' environment: the blueprint's, with this stack's resources and options, and the
        local departures listed above."""
        o = self.options
        base = (self.options.external_emulator or self.emulator.base_url).rstrip("/")
        values: dict[str, dict[str, str | None]] = {}
        for provider in o.providers:
            local = SPECS[provider].local
            limits = o.limits.get(provider)
            values[provider] = {
                "SECRET_ARN": self.secret_arns.get(provider),
                "BASE_URL": None if local.base_path is None else base + local.base_path,
                **local.values,
                **self._settings(provider),
                "MAX_REQUESTS": None if limits is None else str(limits[0]),
                "MAX_BYTES": None if limits is None else str(limits[1]),
                "RPM": str(o.rpm[provider]) if provider in o.rpm else None,
            }
        defaults = c.Settings(bucket="", table="", topic_arn="", completion_queue_url="")
        lanes = blueprint.lane_environment(
            lane=o.lane or defaults.lane,
            realtime_below=defaults.realtime_below if o.realtime_below is None else o.realtime_below,
            min_batch_window_seconds=_duration(o.min_batch_window, defaults.min_batch_window_seconds),
            realtime_chunk=defaults.realtime_chunk,
            realtime_concurrency=defaults.realtime_concurrency,
            realtime_invocations=o.realtime_invocations,
            escalation_margin_seconds=_duration(o.escalation_margin, defaults.escalation_margin_seconds),
            deadline=o.deadline,
        )
        # A lane setting no option gives comes from the environment that starts the stack, if it has
        # one (as for any deployment setting: the tests run the batch lane this way), else the default.
        given = {
            c.ENV_LANE: o.lane,
            c.ENV_REALTIME_BELOW: o.realtime_below,
            c.ENV_MIN_BATCH_WINDOW: o.min_batch_window,
            c.ENV_ESCALATION_MARGIN: o.escalation_margin,
            c.ENV_DEADLINE: o.deadline,
            # The dispatcher's cap on realtime invocations: always this option's.
            c.ENV_REALTIME_INVOCATIONS: o.realtime_invocations,
        }
        for name in (*lanes, c.ENV_DEADLINE, c.ENV_PREFIX_DEFAULTS):
            if given.get(name) is None and os.environ.get(name):
                lanes[name] = os.environ[name]
        # The cache's and budgets' stack-wide settings: the defaults, or the starting environment's.
        spending = blueprint.spending_environment()
        for name in (*spending, c.ENV_BUDGET_USD, c.ENV_MONTHLY_BUDGET_USD):
            if os.environ.get(name):
                spending[name] = os.environ[name]
        env = blueprint.environment(
            blueprint.Resources(
                bucket=BUCKET,
                table=TABLE,
                topic_arn=self.topic_arn,
                queue_urls={q.id: self.queue_urls[queue_name(q)] for q in blueprint.QUEUES.values() if q.url_env},
                cache_table=CACHE_TABLE,
            ),
            blueprint.Options(
                on_invalid=o.on_invalid,
                max_attempts=o.max_attempts,
                providers=tuple(o.providers),
                provider_values=values,
                lanes=lanes,
                spending=spending,
                log_level=os.environ.get("POWERTOOLS_LOG_LEVEL", "ERROR"),
            ),
        )
        env.update(
            {
                c.ENV_POLL_MIN_SECONDS: "0",
                c.ENV_POLL_MAX_SECONDS: "1",
                c.ENV_LEASE_SECONDS: str(o.lease_seconds),
                c.ENV_COMPLETION_GRACE_SECONDS: str(o.completion_grace_seconds),
                c.ENV_CREATE_LOCK_SECONDS: str(o.create_lock_seconds),
                c.ENV_OPENAI_WEBHOOK_SECRET_ARN: self.secret_arns["openai-webhook"],
                # Metrics go to stdout as EMF in Lambda; locally they would only drown the display.
                "POWERTOOLS_METRICS_DISABLED": "true",
            }
        )
        for provider in o.providers:
            local = SPECS[provider].local
            if local.endpoint_env:
                env[local.endpoint_env] = base
            if local.runtime_endpoint_env:
                env[local.runtime_endpoint_env] = base
        if o.segment_bytes is not None:
            env[c.ENV_SEGMENT_BYTES] = str(o.segment_bytes)
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


def _duration(text: str | None, default: float) -> float:
    if text is None:
        return default
    seconds = c.parse_duration(text)
    if seconds is None:
        raise ValueError(f"{text!r} is not a duration (90s, 30m, 6h, 2d)")
    return seconds


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
