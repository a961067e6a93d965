"""Alarms route to the alarm topic; the outputs users need are exported."""

from __future__ import annotations

from typing import Any

import pytest

from batchdrop import config
from tests.infra.synth_support import Synth, synth


@pytest.fixture(scope="module")
def stack() -> Synth:
    return synth()


def alarm_topic(stack: Synth) -> str:
    return stack.one("AWS::SNS::Topic", DisplayName="batchdrop alarms")[0]


def alarms(stack: Synth) -> list[dict[str, Any]]:
    return [a["Properties"] for a in stack.resources("AWS::CloudWatch::Alarm").values()]


def test_every_alarm_notifies_the_alarm_topic_when_above_zero(stack: Synth) -> None:
    found = alarms(stack)

    assert len(found) == 12
    for alarm in found:
        assert alarm["AlarmActions"] == [{"Ref": alarm_topic(stack)}]
        assert alarm["Threshold"] == 0
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert alarm["TreatMissingData"] == "notBreaching"


def test_dead_letter_queues_have_alarms(stack: Synth) -> None:
    submit_dlq = stack.one("AWS::Lambda::EventInvokeConfig", MaximumRetryAttempts=2)[1]
    queues = stack.resources("AWS::SQS::Queue")
    redrive_targets = {
        q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for q in queues.values()
        if "RedrivePolicy" in q["Properties"]
    }
    assert len(redrive_targets) == 3  # the completion, segments and realtime queues
    watched = {
        a["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for a in alarms(stack)
        if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"
    }

    assert watched == {
        *redrive_targets,
        submit_dlq["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0],
    }


def test_function_errors_poll_throttles_and_stuck_batches_have_alarms(stack: Synth) -> None:
    by_metric: dict[str, set[str]] = {}
    for alarm in alarms(stack):
        if alarm.get("Namespace") == "AWS/Lambda":
            by_metric.setdefault(alarm["MetricName"], set()).add(alarm["Dimensions"][0]["Value"]["Ref"])

    assert by_metric["Errors"] == {stack.function(n)[0] for n in ("submit", "poll", "complete", "realtime", "webhook")}
    assert by_metric["Throttles"] == {stack.function("poll")[0]}
    stuck = [a for a in alarms(stack) if a.get("MetricName") == "StuckBatches"]
    assert len(stuck) == 1
    assert stuck[0]["Namespace"] == "batchdrop"
    # What Powertools' Metrics(service="batchdrop") emits: every metric carries the service dimension.
    assert stuck[0]["Dimensions"] == [{"Name": "service", "Value": "batchdrop"}]


def test_jobs_the_watchdog_timed_out_have_an_alarm(stack: Synth) -> None:
    (timed_out,) = [a for a in alarms(stack) if a.get("MetricName") == config.JOBS_TIMED_OUT]
    assert timed_out["Namespace"] == "batchdrop"
    assert timed_out["Dimensions"] == [{"Name": "service", "Value": "batchdrop"}]
    # Any job timed out in a period: a count summed, above zero (so at least one).
    assert timed_out["Statistic"] == "Sum"
    assert timed_out["Period"] == 300
    assert (timed_out["Threshold"], timed_out["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    assert timed_out["EvaluationPeriods"] == 1
    assert timed_out["AlarmActions"] == [{"Ref": alarm_topic(stack)}]
    assert "watchdog" in timed_out["AlarmDescription"]


def test_alarm_email_subscribes_only_when_set(stack: Synth) -> None:
    stack.template.resource_count_is("AWS::SNS::Subscription", 0)

    with_email = synth(alarm_email="ops@example.com")

    with_email.template.has_resource_properties(
        "AWS::SNS::Subscription",
        {"Protocol": "email", "Endpoint": "ops@example.com", "TopicArn": {"Ref": alarm_topic(with_email)}},
    )


def test_outputs(stack: Synth) -> None:
    assert set(stack.json["Outputs"]) == {
        "BucketName",
        "TopicArn",
        "TableName",
        "AlarmTopicArn",
        "CompletionQueueUrl",
        "CompletionDlqUrl",
        "OpenaiSecretArn",
        "AnthropicSecretArn",
        "OpenaiWebhookSecretArn",
        "WebhookUrl",
        # Athena over table jobs' results (test_infra_analytics checks their values).
        "AthenaDatabaseName",
        "AthenaTableName",
        "AthenaWorkgroupName",
        "AthenaResultsBucketName",
        # The response cache's table, which `batchdrop validate --cache` asks.
        "CacheTableName",
    }
    assert stack.json["Outputs"]["BucketName"]["Value"] == {"Ref": stack.data_bucket}
    assert stack.json["Outputs"]["CacheTableName"]["Value"] == {"Ref": stack.cache_table}
