"""The bucket: encryption, TLS, public access, versioning, lifecycle, and the upload notification."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Match

from tests.infra.synth_support import Synth, synth


@pytest.fixture(scope="module")
def stack() -> Synth:
    return synth()


def notification_filters(stack: Synth) -> list[tuple[str, dict[str, str], list[str]]]:
    """(target function, {prefix, suffix}, events) for every bucket → Lambda notification."""
    _, notifications = stack.one("Custom::S3BucketNotifications")
    config = notifications["Properties"]["NotificationConfiguration"]
    assert set(config) == {"LambdaFunctionConfigurations"}, "only Lambda notifications, no queue or topic"
    found = []
    for entry in config["LambdaFunctionConfigurations"]:
        rules = {r["Name"]: r["Value"] for r in entry["Filter"]["Key"]["FilterRules"]}
        found.append((entry["LambdaFunctionArn"]["Fn::GetAtt"][0], rules, entry["Events"]))
    return found


def test_uploads_under_inputs_with_a_jsonl_or_manifest_suffix_and_cancel_and_retry_requests_invoke_submit(
    stack: Synth,
) -> None:
    submit, _ = stack.function("submit")
    _, notifications = stack.one("Custom::S3BucketNotifications")
    assert notifications["Properties"]["BucketName"] == {"Ref": stack.data_bucket}

    filters = notification_filters(stack)

    assert sorted((fn, r["prefix"], r.get("suffix", ""), tuple(e)) for fn, r, e in filters) == [
        (submit, "cancel/", "", ("s3:ObjectCreated:*",)),
        (submit, "inputs/", ".job.json", ("s3:ObjectCreated:*",)),
        (submit, "inputs/", ".jsonl", ("s3:ObjectCreated:*",)),
        (submit, "inputs/", ".jsonl.gz", ("s3:ObjectCreated:*",)),
        (submit, "retry/", "", ("s3:ObjectCreated:*",)),
    ]


def test_nothing_listens_to_outputs_or_work(stack: Synth) -> None:
    for _, rules, _ in notification_filters(stack):
        assert rules.get("prefix") in ("inputs/", "cancel/", "retry/"), (
            "every notification must be filtered on inputs/, cancel/ or retry/"
        )
    # Nor through EventBridge: the bucket sends no events there.
    for bucket in stack.resources("AWS::S3::Bucket").values():
        assert "NotificationConfiguration" not in bucket["Properties"]


def test_bucket_is_encrypted_private_versioned(stack: Synth) -> None:
    stack.template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "VersioningConfiguration": {"Status": "Enabled"},
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "LoggingConfiguration": {"DestinationBucketName": Match.any_value()},
        },
    )


def test_every_bucket_refuses_requests_without_tls(stack: Synth) -> None:
    buckets = set(stack.resources("AWS::S3::Bucket"))
    covered = set()
    for policy in stack.resources("AWS::S3::BucketPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                assert statement["Effect"] == "Deny"
                assert statement["Action"] == "s3:*"
                assert statement["Principal"] == {"AWS": "*"}
                covered.add(policy["Properties"]["Bucket"]["Ref"])
    assert covered == buckets


def lifecycle(stack: Synth) -> dict[str, dict[str, Any]]:
    _, bucket = stack.one("AWS::S3::Bucket", VersioningConfiguration={"Status": "Enabled"})
    return {rule["Id"]: rule for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}


def test_work_files_and_old_versions_expire(stack: Synth) -> None:
    rules = lifecycle(stack)

    assert rules["expire-work"]["Prefix"] == "work/"
    assert rules["expire-work"]["ExpirationInDays"] == 30
    assert rules["expire-old-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert "expire-outputs" not in rules, "outputs are kept unless output_retention_days is set"


def test_output_retention_comes_from_context() -> None:
    rules = lifecycle(synth(output_retention_days="90"))

    assert rules["expire-outputs"]["Prefix"] == "outputs/"
    assert rules["expire-outputs"]["ExpirationInDays"] == 90
