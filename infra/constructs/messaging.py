"""The notification topic users subscribe to, and the queues between the functions."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from batchdrop import blueprint
from infra.suppressions import acknowledge


def visibility_timeout(queue: blueprint.Queue) -> Duration | None:
    """The visibility timeout of a queue whose consumer is a function (blueprint.Queue's rule)."""
    seconds = queue.visibility_timeout_seconds
    return None if seconds is None else Duration.seconds(seconds)


class Messaging(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)

        # One customer-managed key for the topics: CloudWatch alarms can publish to a topic only when
        # the key's policy lets them, which the AWS-managed aws/sns key cannot.
        self.topic_key = kms.Key(
            self,
            "TopicKey",
            description="Encrypts batchdrop's SNS topics",
            enable_key_rotation=True,
        )
        self.topic_key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*")
        self.topic = self._topic("Topic", "batchdrop job notifications")
        self.alarm_topic = self._topic("AlarmTopic", "batchdrop alarms")

        # The queues of batchdrop.blueprint, each after its dead-letter queue.
        self.queues: dict[str, sqs.Queue] = {}
        for spec in blueprint.QUEUES.values():
            self._queue(spec)
        self.completion_dlq = self.queues[blueprint.COMPLETION_DLQ.id]
        self.completion_queue = self.queues[blueprint.COMPLETION.id]
        self.segments_dlq = self.queues[blueprint.SEGMENTS_DLQ.id]
        self.segments_queue = self.queues[blueprint.SEGMENTS.id]
        self.realtime_dlq = self.queues[blueprint.REALTIME_DLQ.id]
        self.realtime_queue = self.queues[blueprint.REALTIME_CHUNKS.id]
        self.submit_dlq = self.queues[blueprint.SUBMIT_DLQ.id]
        acknowledge(
            self.submit_dlq,
            "AwsSolutions-SQS3",
            "This queue is a dead-letter queue: the on-failure destination of the submit function's "
            "asynchronous invocations (Lambda destinations are not visible to the rule).",
        )

    def _topic(self, construct_id: str, display_name: str) -> sns.Topic:
        """A topic encrypted with the topics' key that refuses publishing without TLS."""
        return sns.Topic(self, construct_id, display_name=display_name, master_key=self.topic_key, enforce_ssl=True)

    def _queue(self, spec: blueprint.Queue) -> sqs.Queue:
        dead_letter = None
        if spec.dead_letter is not None:
            assert spec.max_receives is not None, spec
            dead_letter = sqs.DeadLetterQueue(
                queue=self.queues[spec.dead_letter.id], max_receive_count=spec.max_receives
            )
        queue = sqs.Queue(
            self,
            spec.id,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=None if spec.retention_days is None else Duration.days(spec.retention_days),
            visibility_timeout=visibility_timeout(spec),
            dead_letter_queue=dead_letter,
        )
        self.queues[spec.id] = queue
        return queue
