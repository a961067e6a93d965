"""Gemini and Bedrock in the stack: enabled by context; Bedrock's service role, grants and event rule."""

from __future__ import annotations

from typing import Any

import pytest

from infra.settings import SettingsError
from tests.infra.synth_support import Synth, nag_violations, render, synth

ALL_FIVE: dict[str, Any] = {
    "providers": "openai,anthropic,azure,gemini,bedrock",
    "azure_endpoint": "https://example.openai.azure.com",
}


@pytest.fixture(scope="module")
def stack() -> Synth:
    return synth(**ALL_FIVE, bedrock_min_records="1000", bedrock_fallback="anthropic")


def service_role(stack: Synth) -> tuple[str, dict[str, Any]]:
    roles = [
        (k, r)
        for k, r in stack.resources("AWS::IAM::Role").items()
        if any(
            s["Principal"].get("Service") == "bedrock.amazonaws.com"
            for s in r["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        )
    ]
    assert len(roles) == 1
    return roles[0]


def role_statements(stack: Synth, role: str) -> list[dict[str, Any]]:
    found = []
    for policy in stack.resources("AWS::IAM::Policy").values():
        if {"Ref": role} in policy["Properties"]["Roles"]:
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                resources = (
                    statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                )
                found.append({**statement, "Action": actions, "Resource": [render(r) for r in resources]})
    return found


def test_only_bedrock_for_this_accounts_jobs_may_assume_the_service_role(stack: Synth) -> None:
    _, role = service_role(stack)
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert render(statement["Condition"]["ArnLike"]["aws:SourceArn"]).endswith(":model-invocation-job/*")


def test_the_service_role_reads_and_writes_work_only_and_invokes_models(stack: Synth) -> None:
    role_id, _ = service_role(stack)
    statements = role_statements(stack, role_id)
    bucket = stack.data_bucket
    object_resources = {r for s in statements for r in s["Resource"] if r.startswith(f"<{bucket}.Arn>/")}
    assert object_resources == {f"<{bucket}.Arn>/work/*"}
    assert any("s3:GetObject" in s["Action"] for s in statements)
    assert any("s3:PutObject" in s["Action"] for s in statements)
    assert not any(a.startswith("s3:DeleteObject") for s in statements for a in s["Action"])
    (invoke,) = [s for s in statements if "bedrock:InvokeModel" in s["Action"]]
    assert invoke["Action"] == ["bedrock:InvokeModel"]
    assert all(":foundation-model/" in r or ":inference-profile/" in r for r in invoke["Resource"])


def test_the_service_role_gets_and_puts_work_objects_and_lists_only_under_work(stack: Synth) -> None:
    # What Bedrock batch inference documents for its service role: GetObject, PutObject, ListBucket.
    role_id, _ = service_role(stack)
    bucket = stack.data_bucket
    s3 = [s for s in role_statements(stack, role_id) if any(a.startswith("s3:") for a in s["Action"])]
    found = sorted((sorted(s["Action"]), s["Resource"], s.get("Condition")) for s in s3)
    assert found == [
        (["s3:GetObject", "s3:PutObject"], [f"<{bucket}.Arn>/work/*"], None),
        (["s3:ListBucket"], [f"<{bucket}.Arn>"], {"StringLike": {"s3:prefix": ["work/*"]}}),
    ]


@pytest.mark.parametrize("name", ["submit", "poll", "complete"])
def test_functions_run_jobs_and_pass_only_the_service_role(stack: Synth, name: str) -> None:
    role_id, _ = service_role(stack)
    statements = stack.statements(name)
    jobs = [s for s in statements if "bedrock:CreateModelInvocationJob" in s["Action"]]
    assert jobs
    assert all(
        r.endswith(("model-invocation-job/*", "foundation-model/*", "inference-profile/*"))
        for s in jobs
        for r in s["Resource"]
    )
    passes = [s for s in statements if "iam:PassRole" in s["Action"]]
    assert [s["Resource"] for s in passes] == [[f"<{role_id}.Arn>"]]
    # The only other '*' resource besides X-Ray's: listing jobs has no resource-level permission.
    wildcard = {a for s in statements if "*" in s["Resource"] for a in s["Action"]}
    assert wildcard == {"bedrock:ListModelInvocationJobs", "xray:PutTelemetryRecords", "xray:PutTraceSegments"}


def test_functions_are_told_the_role_minimum_and_fallback(stack: Synth) -> None:
    role_id, _ = service_role(stack)
    env = stack.function("submit")[1]["Properties"]["Environment"]["Variables"]
    assert env["BATCHDROP_BEDROCK_ROLE_ARN"] == {"Fn::GetAtt": [role_id, "Arn"]}
    assert env["BATCHDROP_BEDROCK_MIN_RECORDS"] == "1000"
    assert env["BATCHDROP_BEDROCK_FALLBACK"] == "anthropic"
    assert "BATCHDROP_BEDROCK_SECRET_ARN" not in env  # no API key: IAM signs Bedrock's calls
    assert "BATCHDROP_GEMINI_SECRET_ARN" in env


def test_bedrock_state_changes_invoke_the_poll_function(stack: Synth) -> None:
    poll_id, _ = stack.function("poll")
    (rule,) = [r for r in stack.resources("AWS::Events::Rule").values() if "EventPattern" in r["Properties"]]
    assert rule["Properties"]["EventPattern"] == {
        "source": ["aws.bedrock"],
        "detail-type": ["Batch Inference Job State Change"],
    }
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [poll_id, "Arn"]}
    permissions = [
        p["Properties"]
        for p in stack.resources("AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "events.amazonaws.com"
    ]
    assert any(p["FunctionName"] == {"Fn::GetAtt": [poll_id, "Arn"]} for p in permissions)


def test_gemini_gets_a_secret_and_bedrock_none(stack: Synth) -> None:
    outputs = stack.json["Outputs"]
    assert "GeminiSecretArn" in outputs
    assert "BedrockSecretArn" not in outputs
    assert "BedrockServiceRoleArn" in outputs


def test_without_bedrock_there_is_no_role_rule_or_bedrock_permission() -> None:
    plain = synth()
    assert not [r for r in plain.resources("AWS::Events::Rule").values() if "EventPattern" in r["Properties"]]
    for name in ("submit", "poll", "complete", "realtime"):
        assert not any(a.startswith("bedrock:") for s in plain.statements(name) for a in s["Action"])


def test_cdk_nag_reports_nothing_unacknowledged_with_all_five_providers() -> None:
    assert nag_violations(**ALL_FIVE, bedrock_fallback="anthropic") == []


def test_a_fallback_that_is_not_enabled_is_refused() -> None:
    with pytest.raises(SettingsError, match="bedrock_fallback='anthropic'"):
        synth(providers="bedrock", bedrock_fallback="anthropic")


@pytest.mark.parametrize(
    "context",
    [{"bedrock_max_requests": "50"}, {"bedrock_min_records": "2000", "bedrock_max_requests": "1000"}],
)
def test_a_minimum_above_the_maximum_is_refused_at_synth(context: dict[str, Any]) -> None:
    # The functions would refuse to start with it, taking every provider down.
    with pytest.raises(SettingsError, match=r"bedrock_min_records .* is more than bedrock_max_requests"):
        synth(providers="openai,bedrock", **context)
