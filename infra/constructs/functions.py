"""The functions, built by one helper from their handler names, and what each may touch."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aws_cdk import CfnElement, Duration, Size, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct, IConstruct

from batchdrop import config
from batchdrop.providers.spec import provider_env
from infra import names
from infra.bundling import function_code
from infra.settings import DeploySettings, LimitOverride
from infra.suppressions import acknowledge

# The newest Python runtime CDK offers (cdk-nag's L1 checks exactly this); the code supports 3.11+.
RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE = lambda_.Architecture.ARM_64


@dataclass(frozen=True)
class FunctionSpec:
    name: str  # the module in batchdrop.handlers
    description: str
    memory_mb: int
    timeout: Duration
    ephemeral_storage_mb: int = 512
    reserved_concurrency: int | None = None


SUBMIT = FunctionSpec(
    names.SUBMIT,
    "Validates an uploaded JSONL file, splits it into provider batches and submits them",
    memory_mb=1024,
    timeout=Duration.minutes(15),
    # It writes the planned batch files to /tmp before uploading them: room for multi-GB inputs.
    ephemeral_storage_mb=10240,
)
POLL = FunctionSpec(
    names.POLL,
    "Checks the batches that are due with their providers and hands finished jobs to completion",
    memory_mb=512,
    timeout=Duration.minutes(5),
    # One poll at a time: overlapping polls would ask the providers twice for nothing.
    reserved_concurrency=1,
)
COMPLETE = FunctionSpec(
    names.COMPLETE,
    "Writes a finished job's results, errors and summary to outputs/ and publishes the notification",
    memory_mb=1024,
    timeout=Duration.minutes(15),
    # It writes results.jsonl and errors.jsonl to /tmp before uploading them.
    ephemeral_storage_mb=10240,
)
WEBHOOK = FunctionSpec(
    names.WEBHOOK,
    "Receives OpenAI's signed batch webhooks and looks at the batch at once (the schedule is the safety net)",
    memory_mb=512,
    timeout=Duration.seconds(60),
    # Its URL is open to anyone (OpenAI cannot sign AWS requests): a flood of anonymous requests gets
    # these few executions and throttles beyond them, never the account's concurrency that the other
    # functions (and the account's other workloads) need. OpenAI retries a throttled delivery.
    reserved_concurrency=5,
)
REALTIME = FunctionSpec(
    names.REALTIME,
    "Runs chunks of a real-time batch's requests on the providers' real-time APIs",
    memory_mb=1024,
    # One message's chunk of requests, run at once per provider: minutes at most (the realtime queue's
    # visibility timeout is six times this; infra/constructs/messaging.py).
    timeout=Duration.minutes(3),
)
# What the webhook's code path does to the table (look_at_provider_batch → look_at_batch →
# hand_over_if_done): read the registry, the batch and the job, query one job's batches (on the
# table, not its index), and make conditional updates. Never a put, a delete or a scan.
WEBHOOK_TABLE_ACTIONS = ("dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem")
# What the realtime function's code path does to the table (batchdrop.realtime.worker): claim and
# release a chunk (conditional updates, a consistent read), count it done on its batch (one
# TransactWriteItems of two updates), record the lane's pace (a put), and at a batch's last chunk end
# it and hand its job to completion as the poll would (read the batch and job, query one job's
# batches on the table, conditional updates). Never the index, a delete or a scan. DynamoDB has no IAM
# action for TransactWriteItems: each of its items is authorized as what it is (Update: UpdateItem;
# a ConditionCheck would need dynamodb:ConditionCheckItem, a Delete DeleteItem).
REALTIME_TABLE_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query")
# It reads a batch's files and writes its chunks' results, all under work/. And it lists the bucket:
# without s3:ListBucket, S3 answers a GetObject of a missing key (a chunk's result file before the
# chunk's first run) with 403 AccessDenied instead of 404 NoSuchKey, which the code relies on. (The
# other functions have it through CDK's s3:List*.)
REALTIME_OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject")
LIST_BUCKET = "s3:ListBucket"
# SQS messages per realtime invocation (the most SQS gives without a batching window): each message is
# a chunk, and the function answers which chunks failed (ReportBatchItemFailures), so one chunk's
# failure sends back only that chunk. No batching window: a real-time chunk should not wait for company.
REALTIME_BATCH_SIZE = 10
MALLOC_ARENA_MAX = "2"
# SQS messages per completion invocation: one job each, so a large job cannot time out its neighbours.
COMPLETION_BATCH_SIZE = 1
# Lambda's retries of a failed asynchronous submit before the event goes to the submit DLQ.
SUBMIT_RETRY_ATTEMPTS = 2

# The wildcard actions in CDK's bucket grants (grant_read, grant_read_write, grant_put); cdk-nag
# reports each, and we acknowledge them where the grant's resources are one prefix of our bucket.
READ_ACTIONS = ("s3:GetBucket*", "s3:GetObject*", "s3:List*")
WRITE_ACTIONS = ("s3:Abort*", "s3:DeleteObject*")
PUT_ACTIONS = ("s3:Abort*",)
OBJECTS_REASON = (
    "CDK's bucket grants (s3:GetObject*, s3:List*, s3:Abort*, ...) scoped to this bucket and one prefix "
    "of it: inputs/ (submit reads uploads), work/ (batchdrop's working files), outputs/ (results, put only)."
)
INDEX_REASON = "dynamodb grant on the job table's own indexes (the sparse 'due' index the poll function queries)."
TOPIC_KEY_REASON = (
    "kms:GenerateDataKey* is what publishing to the KMS-encrypted notification topic needs; "
    "the statement's resource is the topics' key only."
)
WORK_OBJECTS_REASON = (
    "The realtime function gets and puts objects under work/ only (a batch's files, its chunks' results): "
    "the resource is that prefix of our bucket, the actions s3:GetObject and s3:PutObject."
)
XRAY_REASON = (
    "Active tracing: xray:PutTraceSegments and xray:PutTelemetryRecords support no resource-level "
    "permissions, so their resource is '*'; no other action has a '*' resource (tests/infra checks)."
)


def environment(
    settings: DeploySettings,
    *,
    bucket: s3.IBucket,
    table: dynamodb.ITable,
    topic: sns.ITopic,
    completion_queue: sqs.IQueue,
    segments_queue: sqs.IQueue,
    realtime_queue: sqs.IQueue,
    secrets: Mapping[str, secretsmanager.ISecret],
    provider_values: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """What batchdrop.config.Settings.from_env reads, plus Powertools'. Secrets go by ARN only.
    `provider_values`: settings the stack's own resources give a provider ({WHAT: value}, e.g.
    Bedrock's ROLE_ARN), set as BATCHDROP_<NAME>_<WHAT> by the mapping the local stack uses too."""
    provider_values = provider_values or {}
    env = {
        config.ENV_BUCKET: bucket.bucket_name,
        config.ENV_TABLE: table.table_name,
        config.ENV_TOPIC_ARN: topic.topic_arn,
        config.ENV_COMPLETION_QUEUE_URL: completion_queue.queue_url,
        config.ENV_SUBMIT_QUEUE_URL: segments_queue.queue_url,
        config.ENV_REALTIME_QUEUE_URL: realtime_queue.queue_url,
        config.ENV_ON_INVALID: settings.on_invalid,
        config.ENV_MAX_ATTEMPTS: str(settings.max_attempts),
        config.ENV_PROVIDERS: ",".join(settings.providers),
        "POWERTOOLS_SERVICE_NAME": names.SERVICE,
        "POWERTOOLS_METRICS_NAMESPACE": names.METRICS_NAMESPACE,
        "POWERTOOLS_LOG_LEVEL": "INFO",
        # Handler responses can hold request data; traces carry timings, not content.
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
        "POWERTOOLS_TRACE_DISABLED": "false" if settings.deep_tracing else "true",
        # glibc gives each thread its own malloc arena; s3transfer's upload threads then leave freed
        # memory spread over many of them, and a long submit's RSS creeps up with the file size.
        "MALLOC_ARENA_MAX": MALLOC_ARENA_MAX,
        **lane_environment(settings),
    }
    for provider in settings.providers:
        limits = settings.limits.get(provider, LimitOverride())
        values = {
            "SECRET_ARN": secrets[provider].secret_arn if provider in secrets else None,
            **provider_values.get(provider, {}),
            **settings.options.get(provider, {}),
            "MAX_REQUESTS": None if limits.max_requests is None else str(limits.max_requests),
            "MAX_BYTES": None if limits.max_bytes is None else str(limits.max_bytes),
        }
        env.update(provider_env(provider, values))
    return env


def lane_environment(settings: DeploySettings) -> dict[str, str]:
    """The real-time lane's settings, every one set (the defaults are batchdrop.config's, through
    DeploySettings), except a deadline and prefix defaults a deployment does not give."""
    env = {
        config.ENV_LANE: settings.lane,
        config.ENV_REALTIME_BELOW: str(settings.realtime_below),
        config.ENV_MIN_BATCH_WINDOW: _seconds(settings.min_batch_window_seconds),
        config.ENV_REALTIME_CHUNK: str(settings.realtime_chunk),
        config.ENV_REALTIME_CONCURRENCY: str(settings.realtime_concurrency),
        config.ENV_REALTIME_INVOCATIONS: str(settings.realtime_invocations),
        config.ENV_ESCALATION_MARGIN: _seconds(settings.escalation_margin_seconds),
    }
    if settings.deadline is not None:
        env[config.ENV_DEADLINE] = settings.deadline
    if settings.prefix_defaults:
        env[config.ENV_PREFIX_DEFAULTS] = json.dumps(settings.prefix_defaults, separators=(",", ":"), sort_keys=True)
    return env


def _seconds(value: float) -> str:
    """A duration in seconds as batchdrop.config.parse_duration reads it: "3600", or "0.5"."""
    return str(int(value)) if value.is_integer() else repr(value)


class Functions(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploySettings,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        topic: sns.ITopic,
        completion_queue: sqs.IQueue,
        segments_queue: sqs.IQueue,
        submit_dlq: sqs.IQueue,
        realtime_queue: sqs.IQueue,
        secrets: Mapping[str, secretsmanager.ISecret],
        webhook_secret: secretsmanager.ISecret | None = None,
        provider_values: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.webhook: lambda_.Function | None = None
        self.webhook_url: lambda_.FunctionUrl | None = None
        self._settings = settings
        self._code = function_code(RUNTIME)  # one asset, bundled once, for all of them
        self._environment = environment(
            settings,
            bucket=bucket,
            table=table,
            topic=topic,
            completion_queue=completion_queue,
            segments_queue=segments_queue,
            realtime_queue=realtime_queue,
            secrets=secrets,
            provider_values=provider_values,
        )

        self.submit = self._function(SUBMIT)
        # Large files: each submit invocation plans one segment and queues the next for itself.
        self.submit.add_event_source(event_sources.SqsEventSource(segments_queue, batch_size=1))
        segments_queue.grant_send_messages(self.submit)
        self.submit.configure_async_invoke(
            retry_attempts=SUBMIT_RETRY_ATTEMPTS, on_failure=destinations.SqsDestination(submit_dlq)
        )
        self.poll = self._function(POLL)
        # The poll hands a stalled submission back to submit through the same queue.
        segments_queue.grant_send_messages(self.poll)
        # The next scheduled poll is the retry; a tick older than the schedule's period is stale
        # (Lambda keeps an event at most six hours).
        self.poll.configure_async_invoke(
            retry_attempts=0, max_event_age=Duration.minutes(min(settings.poll_rate_minutes, 6 * 60))
        )
        self.complete = self._function(COMPLETE)
        self.complete.add_event_source(event_sources.SqsEventSource(completion_queue, batch_size=COMPLETION_BATCH_SIZE))

        # What each function may do with objects, by prefix (docs/contract.md's layout): only submit reads
        # uploads; results are only ever added to outputs/, never read back or deleted.
        inputs, work, outputs = config.INPUT_PREFIX, config.WORK_PREFIX, config.OUTPUT_PREFIX
        self._grant_objects(self.submit, bucket, read=[inputs], read_write=[work], put=[outputs])
        self._grant_objects(self.poll, bucket, read_write=[work])
        self._grant_objects(self.complete, bucket, read_write=[work], put=[outputs])
        for fn in (self.submit, self.poll, self.complete):
            table.grant_read_write_data(fn)
            topic.grant_publish(fn)
            for secret in secrets.values():
                secret.grant_read(fn)
            self._acknowledge(fn, f"Resource::<{_logical_id(table)}.Arn>/index/*", reason=INDEX_REASON)
            if topic.master_key is not None:
                self._acknowledge(fn, "Action::kms:GenerateDataKey*", reason=TOPIC_KEY_REASON)
        # Completion consumes the queue through its event source (which grants receive and delete).
        completion_queue.grant_send_messages(self.poll)

        # The real-time lane: submit and complete send a real-time batch's chunks to its queue, and the poll
        # sends a stalled one's unfinished chunks again (batchdrop.realtime.lane.redrive).
        realtime_queue.grant_send_messages(self.submit)
        realtime_queue.grant_send_messages(self.complete)
        realtime_queue.grant_send_messages(self.poll)
        self.realtime = self._realtime(
            realtime_queue, bucket=bucket, table=table, completion_queue=completion_queue, secrets=secrets
        )
        # ...and the realtime function sends a chunk its time cut short back as a fresh message.
        realtime_queue.grant_send_messages(self.realtime)

        # OpenAI calls this URL; AWS_IAM auth is not something OpenAI can sign, so the function checks
        # OpenAI's own signature (and refuses anything else) before it reads anything.
        if webhook_secret is not None and "openai" in secrets:
            self.webhook = self._function(WEBHOOK)
            self.webhook.add_environment(config.ENV_OPENAI_WEBHOOK_SECRET_ARN, webhook_secret.secret_arn)
            self.webhook_url = self.webhook.add_function_url(auth_type=lambda_.FunctionUrlAuthType.NONE)
            # A statement of its own rather than table.grant(...), which would add the index ARNs too.
            self.webhook.add_to_role_policy(
                iam.PolicyStatement(actions=list(WEBHOOK_TABLE_ACTIONS), resources=[table.table_arn])
            )
            completion_queue.grant_send_messages(self.webhook)
            webhook_secret.grant_read(self.webhook)
            secrets["openai"].grant_read(self.webhook)

    @property
    def all(self) -> tuple[lambda_.Function, ...]:
        return (self.submit, self.poll, self.complete, self.realtime, *([self.webhook] if self.webhook else []))

    def _realtime(
        self,
        queue: sqs.IQueue,
        *,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        completion_queue: sqs.IQueue,
        secrets: Mapping[str, secretsmanager.ISecret],
    ) -> lambda_.Function:
        """The real-time lane's worker, fed by its queue, and what its code path touches, each by a
        statement of its own: CDK's grant_read_write on the bucket or the table would add deletes,
        s3:GetBucket*, the object-lock and tagging puts, and the table's indexes."""
        fn = self._function(REALTIME)
        fn.add_event_source(
            event_sources.SqsEventSource(
                queue,
                batch_size=REALTIME_BATCH_SIZE,
                # It answers Powertools' partial batch response: only the failed chunks come back.
                report_batch_item_failures=True,
                # The lane's bound on parallel invocations (each runs its chunks' requests at once,
                # BATCHDROP_REALTIME_CONCURRENCY per provider); the function reads the same number.
                max_concurrency=self._settings.realtime_invocations,
            )
        )
        work = f"{config.WORK_PREFIX}*"
        fn.add_to_role_policy(
            iam.PolicyStatement(actions=list(REALTIME_OBJECT_ACTIONS), resources=[bucket.arn_for_objects(work)])
        )
        fn.add_to_role_policy(iam.PolicyStatement(actions=[LIST_BUCKET], resources=[bucket.bucket_arn]))
        fn.add_to_role_policy(iam.PolicyStatement(actions=list(REALTIME_TABLE_ACTIONS), resources=[table.table_arn]))
        # The last chunk of a batch ends it, and the job goes to completion once its batches have ended.
        completion_queue.grant_send_messages(fn)
        for secret in secrets.values():
            secret.grant_read(fn)
        self._acknowledge(fn, f"Resource::<{_logical_id(bucket)}.Arn>/{work}", reason=WORK_OBJECTS_REASON)
        return fn

    def _function(self, spec: FunctionSpec) -> lambda_.Function:
        """A function running batchdrop.handlers.<spec.name>.handler with its own role and log group."""
        construct_id = spec.name.capitalize()
        log_group = logs.LogGroup(self, f"{construct_id}Logs")
        # CDK's RetentionDays enum has no constructor from a number; the value is checked in settings.
        cfn_log_group = log_group.node.default_child
        assert isinstance(cfn_log_group, logs.CfnLogGroup)
        cfn_log_group.retention_in_days = self._settings.log_retention_days
        # Our own role instead of the AWSLambdaBasicExecutionRole managed policy: logs to this group only.
        role = iam.Role(
            self,
            f"{construct_id}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"batchdrop {spec.name} function",
        )
        log_group.grant_write(role)
        fn = lambda_.Function(
            self,
            construct_id,
            description=spec.description,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=names.handler(spec.name),
            code=self._code,
            memory_size=spec.memory_mb,
            timeout=spec.timeout,
            ephemeral_storage_size=Size.mebibytes(spec.ephemeral_storage_mb),
            reserved_concurrent_executions=spec.reserved_concurrency,
            environment=self._environment,
            tracing=lambda_.Tracing.ACTIVE,
            role=role,
            log_group=log_group,
        )
        self._acknowledge(fn, "Resource::*", reason=XRAY_REASON)
        return fn

    def _grant_objects(
        self,
        fn: lambda_.Function,
        bucket: s3.IBucket,
        *,
        read: Sequence[str] = (),
        read_write: Sequence[str] = (),
        put: Sequence[str] = (),
    ) -> None:
        """Object access under bucket prefixes, each by its own grant, and the findings that implies."""
        findings: list[str] = []
        for prefixes, grant, actions in (
            (read, bucket.grant_read, READ_ACTIONS),
            (read_write, bucket.grant_read_write, READ_ACTIONS + WRITE_ACTIONS),
            (put, bucket.grant_put, PUT_ACTIONS),
        ):
            for prefix in prefixes:
                grant(fn, f"{prefix}*")
                findings.append(f"Resource::<{_logical_id(bucket)}.Arn>/{prefix}*")
                findings.extend(f"Action::{action}" for action in actions)
        self._acknowledge(fn, *dict.fromkeys(findings), reason=OBJECTS_REASON)

    @staticmethod
    def _acknowledge(fn: lambda_.Function, *findings: str, reason: str) -> None:
        acknowledge(fn.role or fn, "AwsSolutions-IAM5", reason, *findings)


def _logical_id(resource: IConstruct) -> str:
    """The CloudFormation logical ID cdk-nag names a resource by in its findings."""
    default_child = resource.node.default_child
    assert isinstance(default_child, CfnElement)
    return Stack.of(resource).get_logical_id(default_child)
