"""State, messaging, schedule and functions: the properties a reviewer would check first."""

from __future__ import annotations

import importlib

import pytest
from aws_cdk.assertions import Match

from tests.infra.synth_support import Synth, synth

FUNCTIONS = ("submit", "poll", "complete", "realtime")


@pytest.fixture(scope="module")
def stack() -> Synth:
    return synth()


def test_table_is_on_demand_recoverable_encrypted_with_the_due_index(stack: Synth) -> None:
    stack.template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "BillingMode": "PAY_PER_REQUEST",
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "SSESpecification": {"SSEEnabled": True},
            "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            "KeySchema": [
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            "AttributeDefinitions": Match.array_with(
                [
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                    {"AttributeName": "due_pk", "AttributeType": "S"},
                    {"AttributeName": "due_at", "AttributeType": "N"},
                ]
            ),
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": "due",
                    "KeySchema": [
                        {"AttributeName": "due_pk", "KeyType": "HASH"},
                        {"AttributeName": "due_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        },
    )


def test_topics_are_encrypted_with_a_rotated_key_and_require_tls(stack: Synth) -> None:
    (key, _) = stack.one("AWS::KMS::Key", EnableKeyRotation=True)
    topics = stack.resources("AWS::SNS::Topic")
    assert len(topics) == 2
    for topic in topics.values():
        assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key, "Arn"]}
    tls_only = {
        topic["Ref"]
        for policy in stack.resources("AWS::SNS::TopicPolicy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for topic in policy["Properties"]["Topics"]
    }
    assert tls_only == set(topics)


def test_completion_queue_is_encrypted_and_redrives_to_its_dead_letter_queue(stack: Synth) -> None:
    _, complete = stack.function("complete")
    queues = stack.resources("AWS::SQS::Queue")
    (queue_id, queue) = next((k, q) for k, q in queues.items() if "RedrivePolicy" in q["Properties"])
    dlq_id = queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]

    assert 3 <= queue["Properties"]["RedrivePolicy"]["maxReceiveCount"] <= 5
    assert queue["Properties"]["VisibilityTimeout"] >= 6 * complete["Properties"]["Timeout"]
    assert queues[dlq_id]["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    for q in queues.values():
        assert q["Properties"]["SqsManagedSseEnabled"] is True
    tls_only = {
        queue["Fn::GetAtt"][0]
        for policy in stack.resources("AWS::SQS::QueuePolicy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for queue in [{"Fn::GetAtt": [r["Ref"], "Arn"]} for r in policy["Properties"]["Queues"]]
    }
    assert tls_only == set(queues)
    stack.template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "EventSourceArn": {"Fn::GetAtt": [queue_id, "Arn"]},
            "FunctionName": {"Ref": stack.function("complete")[0]},
            "BatchSize": Match.any_value(),
        },
    )
    (_, mapping) = stack.one("AWS::Lambda::EventSourceMapping", FunctionName={"Ref": stack.function("complete")[0]})
    # One job per invocation: a failure redelivers only that job's message, with no partial batches.
    assert mapping["Properties"]["BatchSize"] == 1
    assert "FunctionResponseTypes" not in mapping["Properties"]


def test_large_files_hand_their_segments_to_submit_through_a_queue_with_a_dead_letter_queue(stack: Synth) -> None:
    submit, fn = stack.function("submit")
    _, mapping = stack.one("AWS::Lambda::EventSourceMapping", FunctionName={"Ref": submit})
    assert mapping["Properties"]["BatchSize"] == 1
    queue_id = mapping["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
    queue = stack.json["Resources"][queue_id]["Properties"]
    assert "deadLetterTargetArn" in queue["RedrivePolicy"]
    assert fn["Properties"]["Environment"]["Variables"]["BATCHDROP_SUBMIT_QUEUE_URL"] == {"Ref": queue_id}
    assert stack.allows("submit", "sqs:SendMessage", f"<{queue_id}.Arn>")


def test_failed_submits_go_to_their_dead_letter_queue(stack: Synth) -> None:
    submit, _ = stack.function("submit")
    _, config = stack.one("AWS::Lambda::EventInvokeConfig", FunctionName={"Ref": submit})

    assert config["Properties"]["MaximumRetryAttempts"] == 2
    destination = config["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]
    dlq = destination["Fn::GetAtt"][0]
    assert stack.json["Resources"][dlq]["Type"] == "AWS::SQS::Queue"
    assert "RedrivePolicy" not in stack.json["Resources"][dlq]["Properties"]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functions_run_the_newest_python_on_arm_with_tracing(stack: Synth, name: str) -> None:
    _, fn = stack.function(name)
    props = fn["Properties"]
    from aws_cdk import aws_lambda

    assert props["Runtime"] == aws_lambda.Runtime.PYTHON_3_14.name
    assert props["Architectures"] == ["arm64"]
    assert props["TracingConfig"] == {"Mode": "Active"}
    env = props["Environment"]["Variables"]
    assert env["POWERTOOLS_SERVICE_NAME"] == "batchdrop"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "batchdrop"
    assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
    assert "LogGroup" in props["LoggingConfig"]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_handler_in_the_template_imports(stack: Synth, name: str) -> None:
    _, fn = stack.function(name)
    module, _, attribute = fn["Properties"]["Handler"].rpartition(".")

    assert callable(getattr(importlib.import_module(module), attribute))


def test_sizes_and_timeouts(stack: Synth) -> None:
    sizes = {
        name: (
            props["MemorySize"],
            props["Timeout"],
            props.get("EphemeralStorage", {"Size": 512})["Size"],
            props.get("ReservedConcurrentExecutions"),
        )
        for name in FUNCTIONS
        for props in [stack.function(name)[1]["Properties"]]
    }

    assert sizes["submit"][:2] == (1024, 900)
    assert 2048 <= sizes["submit"][2] <= 10240, "submit spills batch files to /tmp"
    assert sizes["complete"][:2] == (1024, 900)
    assert 2048 <= sizes["complete"][2] <= 10240, "complete writes its outputs to /tmp first"
    assert sizes["poll"][1] <= 300
    assert sizes["poll"][3] == 1, "one poll at a time"
    assert sizes["realtime"] == (1024, 180, 512, None), "no reserved concurrency: its event source bounds it"


def test_the_public_webhook_function_has_a_small_reserved_concurrency(stack: Synth) -> None:
    # Its URL is open to anyone: a flood may use these few executions, never the account's others.
    props = stack.function("webhook")[1]["Properties"]
    assert props["ReservedConcurrentExecutions"] == 5


def test_environment_names_the_resources_and_the_settings(stack: Synth) -> None:
    for name in FUNCTIONS:
        env = stack.function(name)[1]["Properties"]["Environment"]["Variables"]
        assert env["BATCHDROP_BUCKET"] == {"Ref": stack.data_bucket}
        assert env["BATCHDROP_TABLE"] == {"Ref": stack.job_table}
        assert env["BATCHDROP_ON_INVALID"] == "skip"
        assert env["BATCHDROP_MAX_ATTEMPTS"] == "2"
        assert env["BATCHDROP_PROVIDERS"] == "openai,anthropic"
        secrets = stack.resources("AWS::SecretsManager::Secret")
        assert env["BATCHDROP_OPENAI_SECRET_ARN"]["Ref"] in secrets
        assert env["BATCHDROP_ANTHROPIC_SECRET_ARN"]["Ref"] in secrets
        assert not any(k.endswith(("_MAX_REQUESTS", "_MAX_BYTES")) for k in env), "only set by context"
        assert env["MALLOC_ARENA_MAX"] == "2"  # flat memory across long uploads (docs/performance.md)


def test_one_secret_per_provider_with_an_empty_placeholder(stack: Synth) -> None:
    names = set()
    for secret in stack.resources("AWS::SecretsManager::Secret").values():
        props = secret["Properties"]
        names.add(props["Name"])
        assert "SecretString" not in props, "the template never holds a secret value"
        assert props["GenerateSecretString"]["SecretStringTemplate"] == '{"api_key": ""}'
    assert names == {"batchdrop/openai-api-key", "batchdrop/anthropic-api-key", "batchdrop/openai-webhook-secret"}


def test_schedule_runs_poll_every_five_minutes_by_default(stack: Synth) -> None:
    poll, _ = stack.function("poll")
    stack.template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "ScheduleExpression": "rate(5 minutes)",
            "State": "ENABLED",
            "Targets": [Match.object_like({"Arn": {"Fn::GetAtt": [poll, "Arn"]}})],
        },
    )


def test_context_overrides_the_schedule_providers_and_limits() -> None:
    stack = synth(poll_rate_minutes="10", providers="openai", openai_max_requests="1000", openai_max_bytes=50_000_000)

    stack.template.has_resource_properties("AWS::Events::Rule", {"ScheduleExpression": "rate(10 minutes)"})
    env = stack.function("submit")[1]["Properties"]["Environment"]["Variables"]
    assert env["BATCHDROP_PROVIDERS"] == "openai"
    assert env["BATCHDROP_OPENAI_MAX_REQUESTS"] == "1000"
    assert env["BATCHDROP_OPENAI_MAX_BYTES"] == "50000000"
    assert not any("ANTHROPIC" in k for k in env)
    stack.template.resource_count_is("AWS::SecretsManager::Secret", 2)  # the OpenAI key and its webhook secret
    assert "AnthropicSecretArn" not in stack.json["Outputs"]


def test_a_daily_poll_keeps_its_tick_at_most_six_hours() -> None:
    stack = synth(poll_rate_minutes=1440)

    stack.template.has_resource_properties("AWS::Events::Rule", {"ScheduleExpression": "rate(1 day)"})
    poll, _ = stack.function("poll")
    _, config = stack.one("AWS::Lambda::EventInvokeConfig", FunctionName={"Ref": poll})
    assert config["Properties"]["MaximumEventAgeInSeconds"] == 6 * 3600
    assert config["Properties"]["MaximumRetryAttempts"] == 0


def test_azure_openai_is_enabled_with_its_endpoint_and_a_secret() -> None:
    stack = synth(providers="openai,azure", azure_endpoint="https://example.openai.azure.com")
    env = stack.function("submit")[1]["Properties"]["Environment"]["Variables"]
    assert env["BATCHDROP_PROVIDERS"] == "openai,azure"
    assert env["BATCHDROP_AZURE_BASE_URL"] == "https://example.openai.azure.com"
    assert "AzureSecretArn" in stack.json["Outputs"]
