"""The bucket users upload to and read results from, and the bucket its access logs go to."""

from __future__ import annotations

import math

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from constructs import Construct

from batchdrop import blueprint
from batchdrop.config import CACHE_OBJECT_PREFIX, OUTPUT_PREFIX, WORK_PREFIX
from infra.settings import DeploySettings
from infra.suppressions import acknowledge

# work/ holds batch files and line indexes only while a job runs (24 h at the provider, plus retries).
# CDK's names of S3's event types (the blueprint's are S3's own).
_EVENTS = {"s3:ObjectCreated:*": s3.EventType.OBJECT_CREATED}
WORK_EXPIRY = Duration.days(30)
# Overwritten or deleted objects stay recoverable this long (the bucket is versioned).
NONCURRENT_VERSION_EXPIRY = Duration.days(30)
INCOMPLETE_UPLOAD_EXPIRY = Duration.days(7)


class Storage(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploySettings) -> None:
        super().__init__(scope, construct_id)

        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(settings.log_retention_days))],
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.access_logs,
            "AwsSolutions-S1",
            "This bucket receives the data bucket's server access logs; logging its own access would loop.",
        )

        lifecycle = [
            s3.LifecycleRule(id="expire-work", prefix=WORK_PREFIX, expiration=WORK_EXPIRY),
            # A large cached answer's body (docs/cache.md) lives as long as its table item, and a day more:
            # an item read just before its TTL still finds it.
            s3.LifecycleRule(
                id="expire-cache",
                prefix=CACHE_OBJECT_PREFIX,
                expiration=Duration.days(math.ceil(settings.cache_ttl_seconds / 86400) + 1),
            ),
            s3.LifecycleRule(
                id="expire-old-versions",
                noncurrent_version_expiration=NONCURRENT_VERSION_EXPIRY,
                abort_incomplete_multipart_upload_after=INCOMPLETE_UPLOAD_EXPIRY,
            ),
        ]
        if settings.output_retention_days is not None:
            lifecycle.append(
                s3.LifecycleRule(
                    id="expire-outputs",
                    prefix=OUTPUT_PREFIX,
                    expiration=Duration.days(settings.output_retention_days),
                )
            )

        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            lifecycle_rules=lifecycle,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="batchdrop/",
            removal_policy=RemovalPolicy.RETAIN,
        )

    def notify_on_upload(self, function: lambda_.IFunction) -> None:
        """Invoke `function` for every new input file (inputs/ and a JSONL suffix) and for every cancel
        or retry request (cancel/<job_id>, retry/<job_id>, for users with only S3 access); nothing else."""
        destination = s3n.LambdaDestination(function)
        for rules in blueprint.upload_filters():
            for event in blueprint.UPLOAD_EVENTS:
                self.bucket.add_event_notification(_EVENTS[event], destination, s3.NotificationKeyFilter(**rules))
