"""The local stack is the deployed stack: the synthesized template against what LocalStack creates on
moto's server, resource by resource and variable by variable.

Both sides build from batchdrop.blueprint; this test catches a change made on one side only (an
environment variable, a queue setting, a key or an index, a notification filter, a function's size),
except the departures the local stack declares with their reasons (batchdrop.local.stack's LOCAL_*).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from batchdrop import blueprint, config
from batchdrop.adapters import aws
from batchdrop.local import stack as s
from batchdrop.local.dispatcher import LocalContext
from batchdrop.providers import SPECS
from tests.helpers import local_stack
from tests.infra.synth_support import Synth, synth

ALL_FIVE: dict[str, Any] = {
    "providers": ",".join(SPECS),
    "azure_endpoint": "https://example.openai.azure.com",
    "bedrock_models": "amazon.nova-lite-v1:0",
}
# CDK names a construct's resource <path without separators><8 hex digits of hash>.
_HASH = re.compile(r"[0-9A-F]{8}$")


@pytest.fixture(scope="module")
def template() -> Synth:
    return synth(**ALL_FIVE)


@pytest.fixture(scope="module")
def local() -> Iterator[s.LocalStack]:
    # The suite runs the batch lane unless a test says otherwise (tests/conftest.py); here the local
    # stack should be what it is by default, as the template is.
    lane = os.environ.pop(config.ENV_LANE, None)
    try:
        with local_stack(s.StackOptions(providers=tuple(SPECS))) as stack:
            yield stack
    finally:
        if lane is not None:
            os.environ[config.ENV_LANE] = lane


# -- reading each side as the same plain values -----------------------------------------------------


def queue_id(logical_id: str) -> str:
    """The blueprint id of a queue from its logical id: MessagingCompletionDeadLetters1A2B3C4D → ..."""
    return _HASH.sub("", logical_id).removeprefix("Messaging")


def template_value(t: Synth, value: Any) -> str:
    """A template value as what it names: a plain string, or the resource a Ref/GetAtt points at."""
    if isinstance(value, str):
        return value
    ref = value.get("Ref") or (value.get("Fn::GetAtt") or [None])[0]
    assert ref is not None, f"unexpected template value {value}"
    resource = t.json["Resources"][ref]
    kind = resource["Type"]
    if kind == "AWS::SQS::Queue":
        return f"queue:{queue_id(ref)}"
    if kind == "AWS::SecretsManager::Secret":
        return f"secret:{resource['Properties']['Name']}"
    if kind == "AWS::IAM::Role":
        return "role:bedrock"
    if kind == "AWS::DynamoDB::Table" and "Cache" in ref:
        return "table:cache"
    return {"AWS::S3::Bucket": "bucket", "AWS::DynamoDB::Table": "table", "AWS::SNS::Topic": "topic"}[kind]


def local_values(stack: s.LocalStack) -> dict[str, str]:
    """The local resources' names, ARNs and URLs, as template_value names them."""
    names = {
        s.BUCKET: "bucket",
        s.TABLE: "table",
        s.CACHE_TABLE: "table:cache",
        stack.topic_arn: "topic",
        SPECS["bedrock"].local.values["ROLE_ARN"]: "role:bedrock",
    }
    for queue in blueprint.QUEUES.values():
        names[stack.queue_urls[s.queue_name(queue)]] = f"queue:{queue.id}"
    sm = aws.client("secretsmanager")
    for arn in stack.secret_arns.values():
        names[arn] = "secret:" + sm.describe_secret(SecretId=arn)["Name"]
    return names


def variables(t: Synth, function: str) -> dict[str, Any]:
    variables: dict[str, Any] = t.function(function)[1]["Properties"]["Environment"]["Variables"]
    return variables


# The one variable only one function is given: the webhook's signing secret (the others never check one).
FUNCTION_ONLY = {blueprint.WEBHOOK.name: {config.ENV_OPENAI_WEBHOOK_SECRET_ARN}}


# -- the functions ------------------------------------------------------------------------------------


def test_every_variable_a_deployed_function_reads_is_set_alike_locally(template: Synth, local: s.LocalStack) -> None:
    env = local.function_env()
    named = local_values(local)
    for function in blueprint.FUNCTIONS.values():
        for name, value in variables(template, function.name).items():
            assert name in env, f"{function.name} reads {name} in AWS; the local stack does not set it"
            if name in s.LOCAL_VALUES:
                continue
            deployed, here = template_value(template, value), named.get(env[name], env[name])
            assert here == deployed, f"{name}: deployed {deployed!r}, local {here!r}"


def test_every_deployed_function_is_given_the_same_variables_but_its_own(template: Synth) -> None:
    # The local stack gives every function the one environment: so must the deployed stack.
    common = set(variables(template, blueprint.SUBMIT.name))
    for function in blueprint.FUNCTIONS.values():
        assert set(variables(template, function.name)) == common | FUNCTION_ONLY.get(function.name, set()), function


def test_the_local_stack_sets_no_variable_the_deployed_functions_lack_but_those_it_declares(
    template: Synth, local: s.LocalStack
) -> None:
    deployed = {name for function in blueprint.FUNCTIONS.values() for name in variables(template, function.name)}
    endpoints = {v for spec in SPECS.values() for v in (spec.local.endpoint_env, spec.local.runtime_endpoint_env) if v}
    extra = set(local.function_env()) - deployed - endpoints - {"AWS_ENDPOINT_URL"}
    undeclared = extra - set(s.LOCAL_ONLY_ENV) - set(s.LOCAL_VALUES)
    assert not undeclared, f"set locally only, without a reason in LOCAL_ONLY_ENV: {sorted(undeclared)}"


def test_functions_run_the_blueprints_handlers_sizes_and_timeouts_and_the_local_context_says_so(
    template: Synth,
) -> None:
    for function in blueprint.FUNCTIONS.values():
        _, fn = template.function(function.name)
        props = fn["Properties"]
        assert props["MemorySize"] == function.memory_mb
        assert props["Timeout"] == function.timeout_seconds
        assert props["EphemeralStorage"]["Size"] == function.ephemeral_storage_mb
        assert props.get("ReservedConcurrentExecutions") == function.reserved_concurrency
        context = LocalContext(function.name)
        assert context.memory_limit_in_mb == function.memory_mb
        assert 0 < function.timeout_seconds * 1000 - context.get_remaining_time_in_millis() < 5000


# -- the queues ---------------------------------------------------------------------------------------


def deployed_queues(t: Synth) -> dict[str, dict[str, Any]]:
    return {queue_id(k): r.get("Properties", {}) for k, r in t.resources("AWS::SQS::Queue").items()}


def test_every_queue_has_the_same_receives_dead_letter_queue_and_retention_on_both_sides(
    template: Synth, local: s.LocalStack
) -> None:
    deployed = deployed_queues(template)
    assert set(deployed) == set(blueprint.QUEUES)
    sqs = aws.client("sqs")
    for queue in blueprint.QUEUES.values():
        props = deployed[queue.id]
        # A setting added to a deployed queue must be added here, and to the local stack.
        assert set(props) <= {"SqsManagedSseEnabled", "VisibilityTimeout", "RedrivePolicy", "MessageRetentionPeriod"}
        here = sqs.get_queue_attributes(QueueUrl=local.queue_urls[s.queue_name(queue)], AttributeNames=["All"])[
            "Attributes"
        ]
        redrive = props.get("RedrivePolicy")
        local_redrive = orjson.loads(here["RedrivePolicy"]) if "RedrivePolicy" in here else None
        if redrive is None:
            assert local_redrive is None, queue.id
        else:
            assert local_redrive is not None, f"{queue.id} has a dead-letter queue in AWS only"
            target = template_value(template, redrive["deadLetterTargetArn"])
            assert int(local_redrive["maxReceiveCount"]) == redrive["maxReceiveCount"], queue.id
            assert local_redrive["deadLetterTargetArn"].rsplit(":", 1)[1] == s.queue_name(
                blueprint.QUEUES[target.removeprefix("queue:")]
            )
        # SQS's default retention is 4 days (345,600 s) on both sides when neither sets it.
        assert int(here["MessageRetentionPeriod"]) == props.get("MessageRetentionPeriod", 345_600), queue.id


def test_visibility_timeouts_follow_the_consumers_timeout_in_aws_and_the_declared_local_clock_here(
    template: Synth, local: s.LocalStack
) -> None:
    deployed = deployed_queues(template)
    sqs = aws.client("sqs")
    for queue in blueprint.QUEUES.values():
        expected = queue.visibility_timeout_seconds
        assert deployed[queue.id].get("VisibilityTimeout") == expected, queue.id
        here = sqs.get_queue_attributes(
            QueueUrl=local.queue_urls[s.queue_name(queue)], AttributeNames=["VisibilityTimeout"]
        )["Attributes"]["VisibilityTimeout"]
        # SQS's default is 30 s where neither side sets one; locally, what LocalStack declares.
        declared = s.LOCAL_VISIBILITY_SECONDS.get(queue.id)
        if queue.id == blueprint.REALTIME_CHUNKS.id:
            declared = local.options.realtime_timeout + 5
            # Never before the invocation that holds a chunk may have ended.
            assert int(here) > local.options.realtime_timeout
        assert int(here) == (declared or 30), queue.id
        assert (expected is None) == (declared is None), queue.id


def test_a_failed_submit_is_retried_as_often_then_parked_in_the_submit_dead_letter_queue(
    template: Synth, local: s.LocalStack
) -> None:
    submit = template.function(blueprint.SUBMIT.name)[0]
    ((_, config_),) = (
        (k, r["Properties"])
        for k, r in template.resources("AWS::Lambda::EventInvokeConfig").items()
        if r["Properties"]["FunctionName"] == {"Ref": submit}
    )
    assert config_["MaximumRetryAttempts"] == blueprint.SUBMIT_RETRY_ATTEMPTS
    target = config_["DestinationConfig"]["OnFailure"]["Destination"]
    assert template_value(template, {"Ref": target["Fn::GetAtt"][0]}) == f"queue:{blueprint.SUBMIT_DLQ.id}"
    # Locally, Lambda's event queue of asynchronous invocations is the S3 events queue.
    here = aws.client("sqs").get_queue_attributes(
        QueueUrl=local.queue_urls[s.S3_EVENTS_QUEUE], AttributeNames=["RedrivePolicy", "VisibilityTimeout"]
    )["Attributes"]
    redrive = orjson.loads(here["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == blueprint.SUBMIT_RETRY_ATTEMPTS + 1
    assert redrive["deadLetterTargetArn"].rsplit(":", 1)[1] == s.queue_name(blueprint.SUBMIT_DLQ)
    assert int(here["VisibilityTimeout"]) == s.S3_EVENTS_VISIBILITY_SECONDS


def test_event_sources_read_the_blueprints_queues_in_the_blueprints_batches(
    template: Synth, local: s.LocalStack
) -> None:
    functions = {template.function(f.name)[0]: f for f in blueprint.FUNCTIONS.values()}
    sources = {}
    for mapping in template.resources("AWS::Lambda::EventSourceMapping").values():
        props = mapping["Properties"]
        # A setting added to a deployed event source must be added to the dispatcher too.
        assert set(props) <= {"FunctionName", "EventSourceArn", "BatchSize", "FunctionResponseTypes", "ScalingConfig"}
        source = queue_id(props["EventSourceArn"]["Fn::GetAtt"][0])
        sources[source] = (functions[props["FunctionName"]["Ref"]].name, props.get("BatchSize"), props)
    consumed = {q.id: q for q in blueprint.QUEUES.values() if q.consumer is not None}
    assert set(sources) == set(consumed)
    for queue_id_, queue in consumed.items():
        function, batch_size, props = sources[queue_id_]
        assert queue.consumer is not None
        assert function == queue.consumer.name
        assert batch_size == queue.batch_size
        assert ("ReportBatchItemFailures" in props.get("FunctionResponseTypes", [])) == queue.report_failures
    # The realtime function's concurrency is what it is told it is, in AWS as here (the dispatcher's cap).
    _, _, realtime = sources[blueprint.REALTIME_CHUNKS.id]
    told = variables(template, blueprint.REALTIME.name)[config.ENV_REALTIME_INVOCATIONS]
    assert str(realtime["ScalingConfig"]["MaximumConcurrency"]) == told
    assert local.function_env()[config.ENV_REALTIME_INVOCATIONS] == str(local.options.realtime_invocations)


# -- the table, the notifications, the rules ------------------------------------------------------------


def _table(template: Synth, cache: bool) -> dict[str, Any]:
    """The job table's properties in the template, or the response cache's."""
    ((_, table),) = (
        (ref, t) for ref, t in template.resources("AWS::DynamoDB::Table").items() if ("Cache" in ref) == cache
    )
    props: dict[str, Any] = table["Properties"]
    return props


def _attributes(defs: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(d["AttributeName"], d["AttributeType"]) for d in defs}


def _keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(k["AttributeName"], k["KeyType"]) for k in schema]


def test_the_cache_table_has_the_same_key_billing_and_ttl_on_both_sides(template: Synth, local: s.LocalStack) -> None:
    props = _table(template, cache=True)
    ddb = aws.client("dynamodb")
    here = ddb.describe_table(TableName=s.CACHE_TABLE)["Table"]
    assert _attributes(here["AttributeDefinitions"]) == _attributes(props["AttributeDefinitions"])
    assert _keys(here["KeySchema"]) == _keys(props["KeySchema"])
    assert here["BillingModeSummary"]["BillingMode"] == props["BillingMode"]
    assert not props.get("GlobalSecondaryIndexes")
    assert not here.get("GlobalSecondaryIndexes")
    ttl = ddb.describe_time_to_live(TableName=s.CACHE_TABLE)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    assert ttl["AttributeName"] == props["TimeToLiveSpecification"]["AttributeName"]
    assert props["SSESpecification"] == {"SSEEnabled": True}


def test_the_table_has_the_same_keys_attributes_index_and_ttl_on_both_sides(
    template: Synth, local: s.LocalStack
) -> None:
    props = _table(template, cache=False)
    ddb = aws.client("dynamodb")
    here = ddb.describe_table(TableName=s.TABLE)["Table"]

    def attributes(defs: list[dict[str, str]]) -> set[tuple[str, str]]:
        return {(d["AttributeName"], d["AttributeType"]) for d in defs}

    def keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
        return [(k["AttributeName"], k["KeyType"]) for k in schema]

    assert attributes(here["AttributeDefinitions"]) == attributes(props["AttributeDefinitions"])
    assert keys(here["KeySchema"]) == keys(props["KeySchema"])
    assert here["BillingModeSummary"]["BillingMode"] == props["BillingMode"]
    deployed_indexes = {
        i["IndexName"]: (keys(i["KeySchema"]), i["Projection"]["ProjectionType"])
        for i in props["GlobalSecondaryIndexes"]
    }
    local_indexes = {
        i["IndexName"]: (keys(i["KeySchema"]), i["Projection"]["ProjectionType"])
        for i in here["GlobalSecondaryIndexes"]
    }
    assert local_indexes == deployed_indexes
    ttl = ddb.describe_time_to_live(TableName=s.TABLE)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    assert ttl["AttributeName"] == props["TimeToLiveSpecification"]["AttributeName"]


def test_uploads_run_submit_through_the_same_notification_filters(template: Synth, local: s.LocalStack) -> None:
    ((_, custom),) = template.resources("Custom::S3BucketNotifications").items()
    notifications = custom["Properties"]["NotificationConfiguration"]
    submit = template.function("submit")[0]

    def filters(entries: list[dict[str, Any]]) -> set[tuple[tuple[str, ...], frozenset[tuple[str, str]]]]:
        return {
            (
                tuple(e["Events"]),
                frozenset((r["Name"].lower(), r["Value"]) for r in e["Filter"]["Key"]["FilterRules"]),
            )
            for e in entries
        }

    deployed = notifications["LambdaFunctionConfigurations"]
    assert all(e["LambdaFunctionArn"]["Fn::GetAtt"][0] == submit for e in deployed)
    assert set(notifications) == {"LambdaFunctionConfigurations"}
    here = aws.client("s3").get_bucket_notification_configuration(Bucket=s.BUCKET)["QueueConfigurations"]
    assert filters(here) == filters(deployed)


def test_the_schedule_and_the_bedrock_rule_run_the_blueprints_functions(template: Synth) -> None:
    rules = [r["Properties"] for r in template.resources("AWS::Events::Rule").values()]
    (schedule,) = (r for r in rules if "ScheduleExpression" in r)
    (bedrock,) = (r for r in rules if "EventPattern" in r)
    assert len(rules) == 2

    def target(rule: dict[str, Any]) -> str:
        ((only,),) = (rule["Targets"],)
        return str(only["Arn"]["Fn::GetAtt"][0])

    assert target(schedule) == template.function(blueprint.SCHEDULE_TARGET.name)[0]
    assert target(bedrock) == template.function(blueprint.BEDROCK_RULE_TARGET.name)[0]
    assert bedrock["EventPattern"] == dict(blueprint.BEDROCK_RULE_PATTERN)
