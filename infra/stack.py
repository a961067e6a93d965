"""BatchdropStack: composes one construct per concern and exports what users need."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from infra.constructs.analytics import Analytics
from infra.constructs.bedrock import BedrockBatch, allow_invoke
from infra.constructs.functions import Functions
from infra.constructs.messaging import Messaging
from infra.constructs.monitoring import Monitoring
from infra.constructs.scheduling import Scheduling
from infra.constructs.secrets import Secrets
from infra.constructs.state import State
from infra.constructs.storage import Storage
from infra.settings import DeploySettings
from infra.suppressions import acknowledge_cdk_internals


class BatchdropStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploySettings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings

        self.storage = Storage(self, "Storage", settings=settings)
        self.state = State(self, "State")
        self.messaging = Messaging(self, "Messaging")
        self.secrets = Secrets(self, "Secrets", settings=settings)
        self.bedrock = (
            BedrockBatch(self, "Bedrock", bucket=self.storage.bucket) if "bedrock" in settings.providers else None
        )
        self.functions = Functions(
            self,
            "Functions",
            settings=settings,
            bucket=self.storage.bucket,
            table=self.state.table,
            cache_table=self.state.cache,
            topic=self.messaging.topic,
            queues=self.messaging.queues,
            secrets=self.secrets.by_provider,
            webhook_secret=self.secrets.openai_webhook,
            provider_values={"bedrock": {"ROLE_ARN": self.bedrock.service_role.role_arn}} if self.bedrock else None,
        )
        if self.bedrock is not None:
            # Submit creates jobs, poll looks at (and stops) them, complete resubmits what expired.
            self.bedrock.allow((self.functions.submit, self.functions.poll, self.functions.complete))
            self.bedrock.on_state_change(self.functions.poll)
            # The real-time lane calls InvokeModel itself, on the models the deployment names.
            allow_invoke(self.functions.realtime, settings.bedrock_models)
        self.storage.notify_on_upload(self.functions.submit)
        self.scheduling = Scheduling(
            self, "Scheduling", poll=self.functions.poll, rate_minutes=settings.poll_rate_minutes
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            alarm_topic=self.messaging.alarm_topic,
            alarm_email=settings.alarm_email,
            dead_letter_queues={
                "Completion": self.messaging.completion_dlq,
                "Submit": self.messaging.submit_dlq,
                "Segments": self.messaging.segments_dlq,
                "Realtime": self.messaging.realtime_dlq,
            },
            functions=self.functions.all,
            poll=self.functions.poll,
            realtime_queue=self.messaging.realtime_queue,
        )
        # Athena over table jobs' results (docs/athena.md): users query; the functions are granted nothing.
        self.analytics = Analytics(
            self,
            "Analytics",
            bucket=self.storage.bucket,
            access_logs=self.storage.access_logs,
            stack_name=settings.stack_name,
        )
        acknowledge_cdk_internals(self)

        outputs = {
            "BucketName": self.storage.bucket.bucket_name,
            "TopicArn": self.messaging.topic.topic_arn,
            "TableName": self.state.table.table_name,
            "AlarmTopicArn": self.messaging.alarm_topic.topic_arn,
            "CompletionQueueUrl": self.messaging.completion_queue.queue_url,
            "CompletionDlqUrl": self.messaging.completion_dlq.queue_url,
            "CacheTableName": self.state.cache.table_name,
            "AthenaDatabaseName": self.analytics.database_name,
            "AthenaTableName": self.analytics.table_name,
            "AthenaWorkgroupName": self.analytics.workgroup_name,
            "AthenaResultsBucketName": self.analytics.query_results.bucket_name,
            **{
                f"{provider.capitalize()}SecretArn": secret.secret_arn
                for provider, secret in self.secrets.by_provider.items()
            },
        }
        if self.bedrock is not None:
            outputs["BedrockServiceRoleArn"] = self.bedrock.service_role.role_arn
        if self.functions.webhook_url is not None and self.secrets.openai_webhook is not None:
            # Register this URL as a webhook endpoint in OpenAI's dashboard (events batch.*).
            outputs["WebhookUrl"] = self.functions.webhook_url.url
            outputs["OpenaiWebhookSecretArn"] = self.secrets.openai_webhook.secret_arn
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)
