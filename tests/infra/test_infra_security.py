"""Least privilege, function by function, and no secret anywhere in the template's environment."""

from __future__ import annotations

import re

import pytest

from tests.infra.synth_support import Synth, render, synth, walk

DATA_SERVICES = ("s3:", "dynamodb:", "sns:", "sqs:")


@pytest.fixture(scope="module")
def stack() -> Synth:
    return synth()


def objects(stack: Synth, prefix: str) -> str:
    return f"<{stack.data_bucket}.Arn>/{prefix}*"


def arn(stack: Synth, type_: str, **properties: object) -> str:
    return f"<{stack.one(type_, **properties)[0]}.Arn>"


def test_submit_reads_inputs_works_in_work_and_only_adds_outputs(stack: Synth) -> None:
    assert stack.allows("submit", "s3:GetObject", objects(stack, "inputs/"))
    assert stack.allows("submit", "s3:GetObjectVersion", objects(stack, "inputs/"))
    assert not stack.allows("submit", "s3:PutObject", objects(stack, "inputs/"))
    assert not stack.allows("submit", "s3:DeleteObject", objects(stack, "inputs/"))
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert stack.allows("submit", action, objects(stack, "work/"))
    assert stack.allows("submit", "s3:PutObject", objects(stack, "outputs/"))
    assert stack.allows("submit", "s3:AbortMultipartUpload", objects(stack, "outputs/"))
    assert not stack.allows("submit", "s3:GetObject", objects(stack, "outputs/"))
    assert not stack.allows("submit", "s3:DeleteObject", objects(stack, "outputs/"))


def test_submit_reads_only_errors_in_outputs_and_writes_only_retry_inputs_in_inputs(stack: Synth) -> None:
    # A retry (batchdrop.retry): a job's errors.jsonl, and its retry's input next to the original.
    errors, retries = objects(stack, "outputs/*/errors.jsonl")[:-1], objects(stack, "inputs/*.retry-*-job-*")[:-1]
    assert stack.allows("submit", "s3:GetObject", errors)
    assert not stack.allows("submit", "s3:GetObject", objects(stack, "outputs/"))
    assert stack.allows("submit", "s3:PutObject", retries)
    assert stack.allows("submit", "s3:AbortMultipartUpload", retries)
    assert not stack.allows("submit", "s3:DeleteObject", retries)
    assert not stack.allows("submit", "s3:PutObject", errors)
    for name in ("poll", "complete"):
        assert not stack.allows(name, "s3:GetObject", errors)
        assert not stack.allows(name, "s3:PutObject", retries)


def test_poll_reads_no_inputs_and_only_adds_outputs(stack: Synth) -> None:
    resources = {r for s in stack.statements("poll") for r in s["Resource"]}

    assert objects(stack, "inputs/") not in resources
    assert stack.allows("poll", "s3:GetObject", objects(stack, "work/"))
    assert stack.allows("poll", "s3:PutObject", objects(stack, "work/"))
    # Its watchdog writes a stuck job's outputs (results.write_outputs), a table job's table too.
    assert stack.allows("poll", "s3:PutObject", objects(stack, "outputs/"))
    assert not stack.allows("poll", "s3:GetObject", objects(stack, "outputs/"))
    assert not stack.allows("poll", "s3:DeleteObject", objects(stack, "outputs/"))
    assert stack.allows("poll", "s3:GetObject", objects(stack, "data/"))


def test_a_table_jobs_data_and_templates_are_read_by_who_needs_them_and_written_by_none(stack: Synth) -> None:
    for name in ("submit", "poll", "complete"):
        assert stack.allows(name, "s3:GetObject", objects(stack, "data/"))
        assert not stack.allows(name, "s3:PutObject", objects(stack, "data/"))
        assert not stack.allows(name, "s3:DeleteObject", objects(stack, "data/"))
    assert stack.allows("submit", "s3:GetObject", objects(stack, "templates/"))
    assert not stack.allows("complete", "s3:GetObject", objects(stack, "templates/"))


def test_complete_writes_outputs_and_reads_no_inputs(stack: Synth) -> None:
    resources = {r for s in stack.statements("complete") for r in s["Resource"]}

    assert objects(stack, "inputs/") not in resources
    assert stack.allows("complete", "s3:PutObject", objects(stack, "outputs/"))
    assert not stack.allows("complete", "s3:DeleteObject", objects(stack, "outputs/"))
    assert stack.allows("complete", "s3:GetObject", objects(stack, "work/"))


@pytest.mark.parametrize("name", ["submit", "poll", "complete"])
def test_every_function_uses_the_table_topic_and_secrets(stack: Synth, name: str) -> None:
    table = f"<{stack.job_table}.Arn>"
    topic = f"<{stack.one('AWS::SNS::Topic', DisplayName='batchdrop job notifications')[0]}>"
    for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"):
        assert stack.allows(name, action, table)
    assert stack.allows(name, "dynamodb:Query", f"{table}/index/*")
    assert stack.allows(name, "sns:Publish", topic)
    assert stack.allows(name, "kms:GenerateDataKey", arn(stack, "AWS::KMS::Key"))
    for secret, resource in stack.resources("AWS::SecretsManager::Secret").items():
        # The webhook signing secret is the webhook function's alone.
        readable = not resource["Properties"]["Name"].endswith("-webhook-secret")
        assert stack.allows(name, "secretsmanager:GetSecretValue", f"<{secret}>") == readable
    assert not stack.allows(name, "dynamodb:DeleteTable", table)
    alarm_topic = f"<{stack.one('AWS::SNS::Topic', DisplayName='batchdrop alarms')[0]}>"
    assert not stack.allows(name, "sns:Publish", alarm_topic)


def test_the_webhook_function_is_public_but_checks_signatures_and_touches_no_objects(stack: Synth) -> None:
    webhook, fn = stack.function("webhook")
    _, url = stack.one("AWS::Lambda::Url", TargetFunctionArn={"Fn::GetAtt": [webhook, "Arn"]})
    # OpenAI cannot sign AWS requests: the URL is open, and the handler refuses unsigned webhooks
    # (tests/integration/test_webhooks.py).
    assert url["Properties"]["AuthType"] == "NONE"
    secret = next(
        k for k, r in stack.resources("AWS::SecretsManager::Secret").items()
        if r["Properties"]["Name"].endswith("-webhook-secret")
    )  # fmt: skip
    assert fn["Properties"]["Environment"]["Variables"]["BATCHDROP_OPENAI_WEBHOOK_SECRET_ARN"] == {"Ref": secret}
    assert stack.allows("webhook", "secretsmanager:GetSecretValue", f"<{secret}>")
    assert not any(a.startswith("s3:") for s in stack.statements("webhook") for a in s["Action"])
    assert "WebhookUrl" in stack.json["Outputs"]


def test_the_webhook_function_may_only_read_and_update_table_items(stack: Synth) -> None:
    # Its code path (look_at_provider_batch, look_at_batch, hand_over_if_done): GetItem, UpdateItem
    # and a Query of one job's batches on the table itself, never its index.
    table = f"<{stack.job_table}.Arn>"
    dynamodb = [s for s in stack.statements("webhook") if any(a.startswith("dynamodb:") for a in s["Action"])]
    assert [(sorted(s["Action"]), s["Resource"]) for s in dynamodb] == [
        (["dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"], [table])
    ]
    assert not stack.allows("webhook", "dynamodb:PutItem", table)
    assert not stack.allows("webhook", "dynamodb:DeleteItem", table)
    assert not stack.allows("webhook", "dynamodb:Scan", table)
    assert not stack.allows("webhook", "dynamodb:Query", f"{table}/index/*")


def test_queues_poll_sends_complete_consumes_submit_dead_letters(stack: Synth) -> None:
    queues = stack.resources("AWS::SQS::Queue")
    completion = next(f"<{k}.Arn>" for k, q in queues.items() if "RedrivePolicy" in q["Properties"])

    assert stack.allows("poll", "sqs:SendMessage", completion)
    assert not stack.allows("poll", "sqs:ReceiveMessage", completion)
    assert stack.allows("complete", "sqs:ReceiveMessage", completion)
    assert stack.allows("complete", "sqs:DeleteMessage", completion)
    assert not stack.allows("submit", "sqs:SendMessage", completion)
    submit_dlq = stack.one("AWS::Lambda::EventInvokeConfig", MaximumRetryAttempts=2)[1]
    dlq = render(submit_dlq["Properties"]["DestinationConfig"]["OnFailure"]["Destination"])
    assert stack.allows("submit", "sqs:SendMessage", dlq)


def test_no_data_action_on_every_resource(stack: Synth) -> None:
    for policy_id, policy in stack.resources("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if "*" in resources:
                data = [a for a in actions if a.startswith(DATA_SERVICES)]
                assert not data, f"{policy_id} allows {data} on '*'"


def test_only_xray_has_a_wildcard_resource_in_our_roles(stack: Synth) -> None:
    for name in ("submit", "poll", "complete", "realtime", "webhook"):
        for statement in stack.statements(name):
            if "*" in statement["Resource"]:
                assert sorted(statement["Action"]) == ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]


def test_functions_use_no_managed_policies(stack: Synth) -> None:
    for name in ("submit", "poll", "complete", "realtime", "webhook"):
        role = stack.function(name)[1]["Properties"]["Role"]["Fn::GetAtt"][0]
        assert "ManagedPolicyArns" not in stack.json["Resources"][role]["Properties"]


SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL", re.IGNORECASE)
SECRET_VALUE = re.compile(r"^(sk-|sk-ant-|AKIA)|^[A-Za-z0-9_\-]{32,}$")


def test_no_environment_variable_holds_a_secret(stack: Synth) -> None:
    secrets = set(stack.resources("AWS::SecretsManager::Secret"))
    for fn_id, fn in stack.resources("AWS::Lambda::Function").items():
        env = fn["Properties"].get("Environment", {}).get("Variables", {})
        for name, value in env.items():
            if SECRET_NAME.search(name):
                assert name.endswith("_SECRET_ARN"), f"{fn_id}: {name} looks like a secret"
                assert isinstance(value, dict), f"{fn_id}: {name} holds a literal value"
                assert value.get("Ref") in secrets, f"{fn_id}: {name} is not a secret's ARN"
            if isinstance(value, str):
                assert not SECRET_VALUE.search(value), f"{fn_id}: {name} has a secret-looking value"


def test_the_template_holds_no_secret_string(stack: Synth) -> None:
    for value in walk(stack.json):
        if isinstance(value, dict):
            assert "SecretString" not in value


def test_the_response_cache_is_read_by_submit_written_by_complete_and_untouched_by_the_rest(stack: Synth) -> None:
    cache = f"<{stack.cache_table}.Arn>"
    actions = {
        name: sorted({a for s in stack.statements(name) if cache in s["Resource"] for a in s["Action"]})
        for name in ("submit", "poll", "complete", "realtime", "webhook")
    }
    # Batched reads by key for submit's lookups, batched puts for completion's writes; DynamoDB's TTL
    # deletes, so no function may delete, scan or update an entry.
    assert actions == {
        "submit": ["dynamodb:BatchGetItem"],
        "poll": [],
        "complete": ["dynamodb:BatchWriteItem"],
        "realtime": [],
        "webhook": [],
    }
    assert stack.allows("submit", "s3:GetObject", objects(stack, "cache/"))
    assert not stack.allows("submit", "s3:PutObject", objects(stack, "cache/"))
    assert stack.allows("complete", "s3:PutObject", objects(stack, "cache/"))
    assert not stack.allows("complete", "s3:GetObject", objects(stack, "cache/"))
    assert not stack.allows("complete", "s3:DeleteObject", objects(stack, "cache/"))
