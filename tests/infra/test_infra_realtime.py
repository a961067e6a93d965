"""The real-time lane in the stack: its queue and dead-letter queue, the realtime function and its event
source, what each function may do with the lane, the lane's settings and how they are checked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Annotations, Match
from cfnlint.api import ManualArgs, lint

from batchdrop import config
from infra.app import build_app, cdk_json_context
from infra.settings import DeploySettings, SettingsError
from tests.infra.synth_support import SKIP_BUNDLING, Synth, nag_violations, render, synth

BEDROCK_MODELS = ["amazon.nova-lite-v1:0", "us.anthropic.claude-3-5-haiku-20241022-v1:0"]
# Comma-separated, as on the command line (synth caches by context, so no lists here).
WITH_BEDROCK: dict[str, Any] = {"providers": "openai,bedrock", "bedrock_models": ",".join(BEDROCK_MODELS)}


@pytest.fixture(scope="module")
def stack() -> Synth:
    return synth()


def realtime_mapping(stack: Synth) -> dict[str, Any]:
    realtime, _ = stack.function("realtime")
    _, mapping = stack.one("AWS::Lambda::EventSourceMapping", FunctionName={"Ref": realtime})
    return dict(mapping["Properties"])


def realtime_queue(stack: Synth) -> str:
    """The logical id of the queue the realtime function consumes."""
    return str(realtime_mapping(stack)["EventSourceArn"]["Fn::GetAtt"][0])


def realtime_dlq(stack: Synth) -> str:
    queue = stack.json["Resources"][realtime_queue(stack)]["Properties"]
    return str(queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0])


def test_the_realtime_queue_is_encrypted_tls_only_and_redrives_to_its_dead_letter_queue(stack: Synth) -> None:
    queue_id, dlq_id = realtime_queue(stack), realtime_dlq(stack)
    queue = stack.json["Resources"][queue_id]["Properties"]
    dlq = stack.json["Resources"][dlq_id]["Properties"]

    assert queue_id.startswith("MessagingRealtime")
    assert dlq_id.startswith("MessagingRealtimeDeadLetters")
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 5
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert "RedrivePolicy" not in dlq
    for props in (queue, dlq):
        assert props["SqsManagedSseEnabled"] is True
    tls_only = {
        ref["Ref"]
        for policy in stack.resources("AWS::SQS::QueuePolicy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for ref in policy["Properties"]["Queues"]
    }
    assert {queue_id, dlq_id} <= tls_only


def test_the_visibility_timeout_is_six_times_the_realtime_functions_timeout(stack: Synth) -> None:
    # AWS's guidance for SQS event sources (no batching window to add).
    _, fn = stack.function("realtime")
    queue = stack.json["Resources"][realtime_queue(stack)]["Properties"]
    assert fn["Properties"]["Timeout"] == 180
    assert fn["Properties"]["MemorySize"] == 1024
    assert queue["VisibilityTimeout"] == 6 * fn["Properties"]["Timeout"]


def test_the_event_source_reports_partial_batches_and_is_bounded_by_realtime_invocations(stack: Synth) -> None:
    mapping = realtime_mapping(stack)
    assert mapping["BatchSize"] == 10
    assert mapping.get("MaximumBatchingWindowInSeconds", 0) <= 1
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": 10}

    wider = synth(realtime_invocations="25")
    assert realtime_mapping(wider)["ScalingConfig"] == {"MaximumConcurrency": 25}
    # The function reads the same number (BATCHDROP_REALTIME_INVOCATIONS).
    env = wider.function("realtime")[1]["Properties"]["Environment"]["Variables"]
    assert env["BATCHDROP_REALTIME_INVOCATIONS"] == "25"


def test_the_realtime_dead_letter_queue_has_an_alarm_and_the_function_its_errors_alarm(stack: Synth) -> None:
    alarm_topic = stack.one("AWS::SNS::Topic", DisplayName="batchdrop alarms")[0]
    alarms = [a["Properties"] for a in stack.resources("AWS::CloudWatch::Alarm").values()]
    (dead_letters,) = [
        a
        for a in alarms
        if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"
        and a["Dimensions"][0]["Value"] == {"Fn::GetAtt": [realtime_dlq(stack), "QueueName"]}
    ]
    assert dead_letters["Statistic"] == "Maximum"
    assert (dead_letters["Threshold"], dead_letters["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    assert dead_letters["AlarmActions"] == [{"Ref": alarm_topic}]
    realtime, _ = stack.function("realtime")
    assert any(a.get("MetricName") == "Errors" and a["Dimensions"][0]["Value"] == {"Ref": realtime} for a in alarms)


def test_the_dashboard_graphs_the_realtime_function_and_queue(stack: Synth) -> None:
    _, dashboard = stack.one("AWS::CloudWatch::Dashboard")
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    realtime, _ = stack.function("realtime")
    assert realtime in body
    assert "Throttles" in body
    assert "ApproximateAgeOfOldestMessage" in body
    assert config.REALTIME_REQUESTS in body
    assert config.REALTIME_THROTTLED in body
    assert realtime_dlq(stack) in body


def test_the_realtime_function_gets_and_puts_work_objects_only(stack: Synth) -> None:
    # And lists the bucket: without s3:ListBucket, S3 answers a GetObject of a missing key (a chunk's
    # result file before its first run) with 403 instead of the NoSuchKey the worker expects.
    s3 = [s for s in stack.statements("realtime") if any(a.startswith("s3:") for a in s["Action"])]
    assert sorted((sorted(s["Action"]), s["Resource"]) for s in s3) == [
        (["s3:GetObject", "s3:PutObject"], [f"<{stack.data_bucket}.Arn>/work/*"]),
        (["s3:ListBucket"], [f"<{stack.data_bucket}.Arn>"]),
    ]


def test_the_realtime_function_reads_and_writes_table_items_only(stack: Synth) -> None:
    table = f"<{stack.job_table}.Arn>"
    dynamodb = [s for s in stack.statements("realtime") if any(a.startswith("dynamodb:") for a in s["Action"])]
    assert [(sorted(s["Action"]), s["Resource"]) for s in dynamodb] == [
        (["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:UpdateItem"], [table])
    ]
    assert not stack.allows("realtime", "dynamodb:Query", f"{table}/index/*")
    assert not stack.allows("realtime", "dynamodb:DeleteItem", table)
    assert not stack.allows("realtime", "dynamodb:Scan", table)


def test_the_realtime_function_consumes_its_queue_hands_jobs_to_completion_and_reads_the_api_keys(
    stack: Synth,
) -> None:
    queues = stack.resources("AWS::SQS::Queue")
    completion = next(f"<{k}.Arn>" for k, q in queues.items() if "RedrivePolicy" in q["Properties"])
    own = f"<{realtime_queue(stack)}.Arn>"

    assert stack.allows("realtime", "sqs:ReceiveMessage", own)
    assert stack.allows("realtime", "sqs:DeleteMessage", own)
    assert stack.allows("realtime", "sqs:SendMessage", completion)
    assert not stack.allows("realtime", "sqs:ReceiveMessage", completion)
    for secret, resource in stack.resources("AWS::SecretsManager::Secret").items():
        readable = not resource["Properties"]["Name"].endswith("-webhook-secret")
        assert stack.allows("realtime", "secretsmanager:GetSecretValue", f"<{secret}>") == readable
    # Nothing else: no topic, no key, no other queue.
    services = {a.split(":")[0] for s in stack.statements("realtime") for a in s["Action"]}
    assert services == {"s3", "dynamodb", "sqs", "secretsmanager", "logs", "xray"}
    sqs_resources = {r for s in stack.statements("realtime") if any(a.startswith("sqs:") for a in s["Action"])
                     for r in s["Resource"]}  # fmt: skip
    assert sqs_resources == {own, completion}


@pytest.mark.parametrize(("name", "sends"), [("submit", True), ("complete", True), ("poll", True), ("webhook", False)])
def test_submit_complete_and_poll_send_chunks_to_the_realtime_queue_and_no_other_function(
    stack: Synth, name: str, sends: bool
) -> None:
    queue = f"<{realtime_queue(stack)}.Arn>"
    assert stack.allows(name, "sqs:SendMessage", queue) == sends
    assert not stack.allows(name, "sqs:ReceiveMessage", queue)


def test_every_function_is_told_the_realtime_queue_and_the_lanes_settings(stack: Synth) -> None:
    queue = realtime_queue(stack)
    for fn_id, fn in stack.resources("AWS::Lambda::Function").items():
        if not fn["Properties"]["Handler"].startswith("batchdrop.handlers."):
            continue  # CDK's own bucket-notifications function
        env = fn["Properties"]["Environment"]["Variables"]
        assert env[config.ENV_REALTIME_QUEUE_URL] == {"Ref": queue}, fn_id
        assert env[config.ENV_LANE] == "auto"
        assert env[config.ENV_REALTIME_BELOW] == "100"
        assert env[config.ENV_MIN_BATCH_WINDOW] == "3600"
        assert env[config.ENV_REALTIME_CHUNK] == "20"
        assert env[config.ENV_REALTIME_CONCURRENCY] == "16"
        assert env[config.ENV_REALTIME_INVOCATIONS] == "10"
        assert env[config.ENV_ESCALATION_MARGIN] == "900"
        # Unset unless given.
        assert config.ENV_DEADLINE not in env
        assert config.ENV_PREFIX_DEFAULTS not in env
        assert not any(k.endswith("_RPM") for k in env)


def functions_settings(stack: Synth, name: str) -> config.Settings:
    """What batchdrop.config reads from the function's environment (references as placeholders)."""
    env = stack.function(name)[1]["Properties"]["Environment"]["Variables"]
    return config.Settings.from_env({k: v if isinstance(v, str) else render(v) for k, v in env.items()})


def test_the_functions_read_the_context_values_as_given() -> None:
    prefixes = {"inputs/urgent/": {"lane": "realtime", "deadline": "2h"}, "inputs/bulk/": {"lane": "batch"}}
    stack = synth(
        lane="batch",
        deadline="8h",
        prefix_defaults=json.dumps(prefixes),
        realtime_below="0",
        min_batch_window="90m",
        realtime_chunk="5",
        realtime_concurrency="4",
        realtime_invocations="2",
        escalation_margin="1.5h",
        openai_rpm="500",
    )
    settings = functions_settings(stack, "realtime")
    assert (settings.lane, settings.deadline, settings.prefix_defaults) == ("batch", "8h", prefixes)
    assert (settings.realtime_below, settings.realtime_chunk, settings.realtime_concurrency) == (0, 5, 4)
    assert settings.realtime_invocations == 2
    assert (settings.min_batch_window_seconds, settings.escalation_margin_seconds) == (5400, 5400)
    assert settings.providers["openai"].rpm == 500
    assert settings.providers["anthropic"].rpm is None
    assert settings.realtime_queue_url == f"<{realtime_queue(stack)}>"


def test_cdk_json_holds_the_functions_own_defaults() -> None:
    # One source: DeploySettings takes the lane's defaults from batchdrop.config.Settings, cdk.json
    # must equal them (test_infra_compliance), and the default stack hands them to the functions.
    stack = synth()
    runtime = config.Settings(bucket="", table="", topic_arn="", completion_queue_url="")
    settings = functions_settings(stack, "submit")
    for name in (
        "lane",
        "deadline",
        "prefix_defaults",
        "realtime_below",
        "min_batch_window_seconds",
        "realtime_chunk",
        "realtime_concurrency",
        "realtime_invocations",
        "escalation_margin_seconds",
    ):
        assert getattr(settings, name) == getattr(runtime, name), name
    context = cdk_json_context()
    assert context["prefix_defaults"] == {}
    assert context["bedrock_models"] == []
    assert DeploySettings.from_context(context.get).realtime_invocations == runtime.realtime_invocations


def test_the_realtime_function_invokes_only_the_configured_bedrock_models() -> None:
    stack = synth(**WITH_BEDROCK)
    invoke = [s for s in stack.statements("realtime") if any(a.startswith("bedrock:") for a in s["Action"])]
    assert all(s["Action"] == ["bedrock:InvokeModel"] for s in invoke)
    region, profile = "<AWS::Region>", "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    profile_arn = f"arn:<AWS::Partition>:bedrock:{region}:<AWS::AccountId>:inference-profile/{profile}"
    direct = [f"arn:<AWS::Partition>:bedrock:{region}::foundation-model/amazon.nova-lite-v1:0", profile_arn]
    assert [sorted(s["Resource"]) for s in invoke if "Condition" not in s] == [sorted(direct)]
    ((routed_resources, condition),) = [(s["Resource"], s["Condition"]) for s in invoke if "Condition" in s]
    # The profile's model in whichever region of its geography Bedrock runs it, only through the profile.
    assert routed_resources == [
        "arn:<AWS::Partition>:bedrock:*::foundation-model/anthropic.claude-3-5-haiku-20241022-v1:0"
    ]
    assert [render(v) for v in condition["ArnEquals"]["bedrock:InferenceProfileArn"]] == [profile_arn]
    # Nothing wildcard in the model ids, and none of the batch side's job actions or its role.
    assert not any(r.endswith("*") for s in invoke for r in s["Resource"])
    assert not any(a.startswith("bedrock:") and a != "bedrock:InvokeModel" for s in stack.statements("realtime")
                   for a in s["Action"])  # fmt: skip
    assert not any("iam:PassRole" in s["Action"] for s in stack.statements("realtime"))
    # The batch functions are not given the lane's InvokeModel.
    for name in ("submit", "poll", "complete"):
        assert not any("bedrock:InvokeModel" in s["Action"] for s in stack.statements(name))


def test_a_global_profile_also_allows_its_model_with_no_region() -> None:
    # AWS's policy for global cross-region inference names the model's region-less ARN too.
    stack = synth(providers="bedrock", bedrock_models="global.anthropic.claude-sonnet-4-5-20250929-v1:0")
    (routed,) = [s for s in stack.statements("realtime") if "bedrock:InvokeModel" in s["Action"] and "Condition" in s]
    model = "anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert sorted(routed["Resource"]) == [
        f"arn:<AWS::Partition>:bedrock:*::foundation-model/{model}",
        f"arn:<AWS::Partition>:bedrock:::foundation-model/{model}",
    ]


def test_bedrock_without_models_grants_no_invoke_and_warns_at_synth() -> None:
    stack = synth(providers="openai,bedrock")
    assert not any(a.startswith("bedrock:") for s in stack.statements("realtime") for a in s["Action"])

    _, cdk_stack = build_app({"providers": "openai,bedrock", **SKIP_BUNDLING}, nag=False)
    Annotations.from_stack(cdk_stack).has_warning("*", Match.string_like_regexp("bedrock_models is empty"))


def test_cdk_nag_reports_nothing_unacknowledged_with_bedrock_models() -> None:
    models = f"{WITH_BEDROCK['bedrock_models']},global.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert nag_violations(**{**WITH_BEDROCK, "bedrock_models": models}) == []


def test_cfn_lint_reports_no_errors_with_bedrock_models() -> None:
    matches = lint(s=synth(**WITH_BEDROCK).path.read_text(), config=ManualArgs(regions=["us-east-1"]))
    assert [f"{m.rule.id} {m.message}" for m in matches if m.rule.id.startswith("E")] == []


def test_command_line_strings_are_accepted_for_the_lane() -> None:
    cli: dict[str, Any] = {
        "providers": "openai,bedrock",
        "prefix_defaults": '{"inputs/urgent/": {"lane": "realtime"}}',
        "bedrock_models": "amazon.nova-lite-v1:0, us.amazon.nova-pro-v1:0",
        "min_batch_window": "7200",
        "bedrock_rpm": "60",
    }
    settings = DeploySettings.from_context(cli.get)
    assert settings.prefix_defaults == {"inputs/urgent/": {"lane": "realtime"}}
    assert settings.bedrock_models == ("amazon.nova-lite-v1:0", "us.amazon.nova-pro-v1:0")
    assert settings.min_batch_window_seconds == 7200
    assert settings.options["bedrock"]["RPM"] == "60"
    # As cdk.json gives it: a list.
    listed = DeploySettings.from_context({"providers": "bedrock", "bedrock_models": BEDROCK_MODELS}.get)
    assert listed.bedrock_models == tuple(BEDROCK_MODELS)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"lane": "fast"}, r"context lane='fast': expected one of auto, batch, realtime"),
        ({"deadline": "soon"}, r"context deadline='soon': expected a duration from the upload"),
        ({"deadline": "0h"}, r"context deadline='0h'"),
        ({"min_batch_window": "-1h"}, r"context min_batch_window='-1h': expected a duration"),
        ({"escalation_margin": "a bit"}, r"context escalation_margin='a bit'"),
        ({"prefix_defaults": "{not json"}, r"context prefix_defaults is not JSON"),
        ({"prefix_defaults": ["inputs/"]}, r"context prefix_defaults: expected an object"),
        ({"prefix_defaults": {"inputs/a/": {"lane": "now"}}}, r"context prefix_defaults\['inputs/a/'\]\.lane='now'"),
        ({"prefix_defaults": {"inputs/a/": {"speed": "1"}}}, r"context prefix_defaults\['inputs/a/'\]: expected"),
        ({"prefix_defaults": {"urgent/": {"lane": "realtime"}}}, r"context prefix_defaults names 'urgent/'"),
        ({"realtime_invocations": "1"}, r"context realtime_invocations=1 must be at least 2 and at most 1000"),
        ({"realtime_invocations": "1001"}, r"context realtime_invocations=1001 must be at least 2 and at most 1000"),
        ({"realtime_chunk": "0"}, r"context realtime_chunk=0 must be at least 1"),
        ({"realtime_concurrency": "many"}, r"context realtime_concurrency='many' is not a whole number"),
        ({"realtime_below": "-1"}, r"context realtime_below=-1 must be at least 0"),
        ({"openai_rpm": "0"}, r"context openai_rpm=0 must be at least 1"),
        (
            {"providers": "bedrock", "bedrock_models": ["arn:aws:bedrock:us-east-1::foundation-model/x.y"]},
            r"context bedrock_models names 'arn:aws:bedrock",
        ),
    ],
)
def test_bad_lane_settings_fail_synth_naming_the_key(context: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        build_app({**context, **SKIP_BUNDLING}, nag=False)
