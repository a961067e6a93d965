"""The notification topic users subscribe to, and the queues between the functions."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.suppressions import acknowledge

DLQ_RETENTION = Duration.days(14)
# A job whose completion failed this often goes to the dead-letter queue (and raises an alarm).
COMPLETION_MAX_RECEIVES = 3
# A chunk of a real-time batch comes back to its queue whenever the realtime function reports it as
# failed in its partial batch response (cut short by the invocation's time, as a provider's 429s slow
# the lane; or still run by another invocation) or the invocation fails or times out with it. Rate
# limits pass, so a chunk gets more receives than a completion does; past this many it goes to the
# dead-letter queue (and raises an alarm) instead of coming back forever.
REALTIME_MAX_RECEIVES = 5
# AWS's guidance for SQS event sources: a visibility timeout of at least six times the function's
# timeout (plus any batching window), so a message is not redelivered while an invocation still works
# on it, and a throttled invocation's retries fit in it.
VISIBILITY_TIMEOUT_FACTOR = 6


def visibility_timeout(function_timeout: Duration) -> Duration:
    """The visibility timeout of a queue whose consumer is a function with this timeout."""
    return Duration.seconds(function_timeout.to_seconds() * VISIBILITY_TIMEOUT_FACTOR)


class Messaging(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        complete_timeout: Duration,
        submit_timeout: Duration,
        realtime_timeout: Duration,
    ) -> None:
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

        self.completion_dlq = self._queue("CompletionDeadLetters", retention_period=DLQ_RETENTION)
        self.completion_queue = self._queue(
            "Completion",
            visibility_timeout=visibility_timeout(complete_timeout),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.completion_dlq, max_receive_count=COMPLETION_MAX_RECEIVES),
        )
        # The next segment of a large file, handed from one submit invocation to the next.
        self.segments_dlq = self._queue("SegmentsDeadLetters", retention_period=DLQ_RETENTION)
        self.segments_queue = self._queue(
            "Segments",
            visibility_timeout=visibility_timeout(submit_timeout),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.segments_dlq, max_receive_count=COMPLETION_MAX_RECEIVES),
        )
        # The real-time lane: chunks of a real-time batch's requests, sent by submit and complete, run
        # by the realtime function.
        self.realtime_dlq = self._queue("RealtimeDeadLetters", retention_period=DLQ_RETENTION)
        self.realtime_queue = self._queue(
            "Realtime",
            visibility_timeout=visibility_timeout(realtime_timeout),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.realtime_dlq, max_receive_count=REALTIME_MAX_RECEIVES),
        )
        # Uploads whose submit invocation failed after Lambda's retries land here.
        self.submit_dlq = self._queue("SubmitDeadLetters", retention_period=DLQ_RETENTION)
        acknowledge(
            self.submit_dlq,
            "AwsSolutions-SQS3",
            "This queue is a dead-letter queue: the on-failure destination of the submit function's "
            "asynchronous invocations (Lambda destinations are not visible to the rule).",
        )

    def _topic(self, construct_id: str, display_name: str) -> sns.Topic:
        """A topic encrypted with the topics' key that refuses publishing without TLS."""
        return sns.Topic(self, construct_id, display_name=display_name, master_key=self.topic_key, enforce_ssl=True)

    def _queue(
        self,
        construct_id: str,
        *,
        retention_period: Duration | None = None,
        visibility_timeout: Duration | None = None,
        dead_letter_queue: sqs.DeadLetterQueue | None = None,
    ) -> sqs.Queue:
        return sqs.Queue(
            self,
            construct_id,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=retention_period,
            visibility_timeout=visibility_timeout,
            dead_letter_queue=dead_letter_queue,
        )
