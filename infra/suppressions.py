"""cdk-nag acknowledgments: every finding we accept is written down here or next to its resource, with why."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str, *findings: str) -> None:
    """Acknowledge `rule` on `scope` and below; with `findings`, only those (`Action::s3:GetObject*`)."""
    ids = [f"{rule}[{finding}]" for finding in findings] if findings else [rule]
    Validations.of(scope).acknowledge(*(Acknowledgment(id=i, reason=reason) for i in ids))


def acknowledge_cdk_internals(stack: IConstruct) -> None:
    """Findings on the resources CDK adds by itself, not ours to shape."""
    for child in stack.node.children:
        # The singleton function behind bucket.add_event_notification (a custom resource).
        if child.node.id.startswith("BucketNotificationsHandler"):
            acknowledge(
                child,
                "AwsSolutions-IAM4",
                "CDK's own bucket-notifications custom resource uses AWSLambdaBasicExecutionRole for its "
                "logs; it runs only at deploy time and its s3:PutBucketNotification is scoped to our bucket.",
                "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
            )
