"""The functions, built by one helper from their handler names, and what each may touch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

from batchdrop import blueprint, config
from infra.bundling import function_code
from infra.settings import DeploySettings, LimitOverride
from infra.suppressions import acknowledge

# The newest Python runtime CDK offers (cdk-nag's L1 checks exactly this); the code supports 3.11+.
RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE = lambda_.Architecture.ARM_64


# The functions' names, sizes and timeouts are batchdrop.blueprint's (the local stack's too).
SUBMIT, POLL, COMPLETE, WEBHOOK, REALTIME = (
    blueprint.SUBMIT,
    blueprint.POLL,
    blueprint.COMPLETE,
    blueprint.WEBHOOK,
    blueprint.REALTIME,
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
# The wildcard actions in CDK's bucket grants (grant_read, grant_read_write, grant_put); cdk-nag
# reports each, and we acknowledge them where the grant's resources are one prefix of our bucket.
READ_ACTIONS = ("s3:GetBucket*", "s3:GetObject*", "s3:List*")
WRITE_ACTIONS = ("s3:Abort*", "s3:DeleteObject*")
PUT_ACTIONS = ("s3:Abort*",)
OBJECTS_REASON = (
    "CDK's bucket grants (s3:GetObject*, s3:List*, s3:Abort*, ...) scoped to this bucket and one prefix "
    "of it: inputs/ (submit reads uploads), work/ (batchdrop's working files), outputs/ (results, put only)."
)
# What the response cache's code does to its table (batchdrop.adapters.cache): batched reads by key, and
# batched puts. Never a query, a scan, an update or a delete (DynamoDB's TTL deletes).
CACHE_READ_ACTIONS = ("dynamodb:BatchGetItem",)
CACHE_WRITE_ACTIONS = ("dynamodb:BatchWriteItem",)
# A retry (batchdrop.retry, run by submit for retry/<job_id>): submit reads the job's errors.jsonl, and
# only that of outputs/, and writes the retry's input next to the original, and only under such a name
# (inputs/<path>.retry-<n>-<job_id>.jsonl[.gz]). It reads the original at its version with its inputs/ grant.
RETRY_READ_ACTIONS = ("s3:GetObject",)
RETRY_WRITE_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload")
RETRY_ERRORS = "*/errors.jsonl"
RETRY_INPUTS = "*.retry-*-job-*"
RETRY_REASON = (
    "A retry reads a job's errors.jsonl (outputs/*/errors.jsonl: that file of each job, nothing else of "
    "outputs/) and writes its input next to the original (inputs/*.retry-*-job-*: only a retry's name); the "
    "wildcards are the job's path, which is the user's."
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
    cache_table: dynamodb.ITable,
    topic: sns.ITopic,
    queues: Mapping[str, sqs.IQueue],
    secrets: Mapping[str, secretsmanager.ISecret],
    provider_values: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """The functions' environment: batchdrop.blueprint.environment, given this stack's resources and
    settings. `queues`: by blueprint id. `provider_values`: settings the stack's own resources give a
    provider ({WHAT: value}, e.g. Bedrock's ROLE_ARN), set as BATCHDROP_<NAME>_<WHAT>."""
    provider_values = provider_values or {}
    values: dict[str, dict[str, str | None]] = {}
    for provider in settings.providers:
        limits = settings.limits.get(provider, LimitOverride())
        values[provider] = {
            "SECRET_ARN": secrets[provider].secret_arn if provider in secrets else None,
            **provider_values.get(provider, {}),
            **settings.options.get(provider, {}),
            "MAX_REQUESTS": None if limits.max_requests is None else str(limits.max_requests),
            "MAX_BYTES": None if limits.max_bytes is None else str(limits.max_bytes),
        }
    return blueprint.environment(
        blueprint.Resources(
            bucket=bucket.bucket_name,
            table=table.table_name,
            topic_arn=topic.topic_arn,
            queue_urls={spec.id: queues[spec.id].queue_url for spec in blueprint.QUEUES.values() if spec.url_env},
            cache_table=cache_table.table_name,
        ),
        blueprint.Options(
            on_invalid=settings.on_invalid,
            max_attempts=settings.max_attempts,
            providers=tuple(settings.providers),
            provider_values=values,
            lanes=lane_environment(settings),
            spending=blueprint.spending_environment(
                cache=settings.cache,
                cache_ttl_seconds=settings.cache_ttl_seconds,
                budget_usd=settings.budget_usd,
                budget_policy=settings.budget_policy,
                monthly_budget_usd=settings.monthly_budget_usd,
            ),
            tracing=settings.deep_tracing,
        ),
    )


def lane_environment(settings: DeploySettings) -> dict[str, str]:
    """The real-time lane's settings, every one set (the defaults are batchdrop.config's, through
    DeploySettings), except a deadline and prefix defaults a deployment does not give."""
    return blueprint.lane_environment(
        lane=settings.lane,
        realtime_below=settings.realtime_below,
        min_batch_window_seconds=settings.min_batch_window_seconds,
        realtime_chunk=settings.realtime_chunk,
        realtime_concurrency=settings.realtime_concurrency,
        realtime_invocations=settings.realtime_invocations,
        escalation_margin_seconds=settings.escalation_margin_seconds,
        deadline=settings.deadline,
        prefix_defaults=settings.prefix_defaults,
    )


class Functions(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploySettings,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        cache_table: dynamodb.ITable,
        topic: sns.ITopic,
        queues: Mapping[str, sqs.IQueue],
        secrets: Mapping[str, secretsmanager.ISecret],
        webhook_secret: secretsmanager.ISecret | None = None,
        provider_values: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.webhook: lambda_.Function | None = None
        self.webhook_url: lambda_.FunctionUrl | None = None
        self._settings = settings
        completion_queue = queues[blueprint.COMPLETION.id]
        segments_queue = queues[blueprint.SEGMENTS.id]
        realtime_queue = queues[blueprint.REALTIME_CHUNKS.id]
        # One code asset per blueprint.Asset a function here takes, each bundled once (docs/performance.md).
        self._code: dict[str, lambda_.Code] = {}
        self._environment = environment(
            settings,
            bucket=bucket,
            table=table,
            cache_table=cache_table,
            topic=topic,
            queues=queues,
            secrets=secrets,
            provider_values=provider_values,
        )

        self.submit = self._function(SUBMIT)
        # Large files: each submit invocation plans one segment and queues the next for itself.
        _consume(self.submit, segments_queue, blueprint.SEGMENTS)
        segments_queue.grant_send_messages(self.submit)
        self.submit.configure_async_invoke(
            retry_attempts=blueprint.SUBMIT_RETRY_ATTEMPTS,
            on_failure=destinations.SqsDestination(queues[blueprint.SUBMIT_DLQ.id]),
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
        _consume(self.complete, completion_queue, blueprint.COMPLETION)

        # What each function may do with objects, by prefix (docs/contract.md's layout): only submit reads
        # uploads and a table job's templates; results are only ever added to outputs/, never read back or
        # deleted. A table job's data is read by submit (rendering), complete (the join) and poll, whose
        # watchdog writes a stuck job's outputs, table included, as completion would.
        inputs, work, outputs = config.INPUT_PREFIX, config.WORK_PREFIX, config.OUTPUT_PREFIX
        data, templates = config.DATA_PREFIX, config.TEMPLATES_PREFIX
        self._grant_objects(self.submit, bucket, read=[inputs, data, templates], read_write=[work], put=[outputs])
        self._grant_retry(self.submit, bucket)
        self._grant_objects(self.poll, bucket, read=[data], read_write=[work], put=[outputs])
        self._grant_objects(self.complete, bucket, read=[data], read_write=[work], put=[outputs])
        # The response cache (docs/cache.md): submit looks answers up, completion writes them; a large
        # answer's body is an object under cache/ that the one reads and the other puts.
        cache_objects = config.CACHE_OBJECT_PREFIX
        cache_table.grant(self.submit, *CACHE_READ_ACTIONS)
        cache_table.grant(self.complete, *CACHE_WRITE_ACTIONS)
        self._grant_objects(self.submit, bucket, read=[cache_objects])
        self._grant_objects(self.complete, bucket, put=[cache_objects])
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
        # The lane's bound on parallel invocations (each runs its chunks' requests at once,
        # BATCHDROP_REALTIME_CONCURRENCY per provider); the function reads the same number.
        _consume(fn, queue, blueprint.REALTIME_CHUNKS, max_concurrency=self._settings.realtime_invocations)
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

    def _function(self, spec: blueprint.Function) -> lambda_.Function:
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
            handler=spec.handler,
            code=self._code_for(spec.asset),
            memory_size=spec.memory_mb,
            timeout=Duration.seconds(spec.timeout_seconds),
            ephemeral_storage_size=Size.mebibytes(spec.ephemeral_storage_mb),
            reserved_concurrent_executions=spec.reserved_concurrency,
            environment=self._environment,
            tracing=lambda_.Tracing.ACTIVE,
            role=role,
            log_group=log_group,
        )
        self._acknowledge(fn, "Resource::*", reason=XRAY_REASON)
        return fn

    def _code_for(self, asset: blueprint.Asset) -> lambda_.Code:
        if asset.name not in self._code:
            self._code[asset.name] = function_code(RUNTIME, without=asset.without, name=asset.name)
        return self._code[asset.name]

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

    def _grant_retry(self, fn: lambda_.Function, bucket: s3.IBucket) -> None:
        """What a retry needs beyond submit's own grants (RETRY_REASON), by statements of their own."""
        errors = bucket.arn_for_objects(f"{config.OUTPUT_PREFIX}{RETRY_ERRORS}")
        inputs = bucket.arn_for_objects(f"{config.INPUT_PREFIX}{RETRY_INPUTS}")
        fn.add_to_role_policy(iam.PolicyStatement(actions=list(RETRY_READ_ACTIONS), resources=[errors]))
        fn.add_to_role_policy(iam.PolicyStatement(actions=list(RETRY_WRITE_ACTIONS), resources=[inputs]))
        logical = _logical_id(bucket)
        self._acknowledge(
            fn,
            f"Resource::<{logical}.Arn>/{config.OUTPUT_PREFIX}{RETRY_ERRORS}",
            f"Resource::<{logical}.Arn>/{config.INPUT_PREFIX}{RETRY_INPUTS}",
            reason=RETRY_REASON,
        )

    @staticmethod
    def _acknowledge(fn: lambda_.Function, *findings: str, reason: str) -> None:
        acknowledge(fn.role or fn, "AwsSolutions-IAM5", reason, *findings)


def _consume(
    fn: lambda_.Function, queue: sqs.IQueue, spec: blueprint.Queue, max_concurrency: int | None = None
) -> None:
    """The event source that runs `fn` on the queue's messages, as the blueprint sets it."""
    assert spec.consumer is not None
    assert fn.node.id == spec.consumer.name.capitalize(), (fn.node.id, spec)
    fn.add_event_source(
        event_sources.SqsEventSource(
            queue,
            batch_size=spec.batch_size,
            report_batch_item_failures=spec.report_failures,
            max_concurrency=max_concurrency,
        )
    )


def _logical_id(resource: IConstruct) -> str:
    """The CloudFormation logical ID cdk-nag names a resource by in its findings."""
    default_child = resource.node.default_child
    assert isinstance(default_child, CfnElement)
    return Stack.of(resource).get_logical_id(default_child)
