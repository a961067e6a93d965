"""Alarms on what needs a person: dead letters (the real-time lane's included), function errors, poll
throttles, stuck batches and jobs the watchdog timed out; and the dashboard."""

from __future__ import annotations

from collections.abc import Iterable

import aws_cdk as cdk
from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from batchdrop import blueprint
from batchdrop import config as o

PERIOD = Duration.minutes(5)


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        alarm_topic: sns.Topic,
        alarm_email: str | None,
        dead_letter_queues: dict[str, sqs.IQueue],
        functions: Iterable[lambda_.Function],
        poll: lambda_.Function,
        realtime_queue: sqs.IQueue,
    ) -> None:
        super().__init__(scope, construct_id)
        self.alarm_topic = alarm_topic
        if alarm_email:
            alarm_topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        self._action = cloudwatch_actions.SnsAction(alarm_topic)
        self.alarms: list[cloudwatch.Alarm] = []

        for name, queue in dead_letter_queues.items():
            self._alarm(
                f"{name}DeadLetters",
                queue.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum"),
                f"Messages in the {name} dead-letter queue: inspect them, fix the cause, then redrive",
            )
        for fn in functions:
            label = fn.node.id
            self._alarm(
                f"{label}Errors",
                fn.metric_errors(period=PERIOD, statistic="Sum"),
                f"The {label.lower()} function failed: see its log group",
            )
        self._alarm(
            "PollThrottles",
            poll.metric_throttles(period=PERIOD, statistic="Sum"),
            "Poll invocations were throttled: a poll run outlasted the schedule's period",
        )
        self._alarm(
            "StuckBatches",
            cloudwatch.Metric(
                namespace=blueprint.METRICS_NAMESPACE,
                metric_name=blueprint.STUCK_BATCHES_METRIC,
                # Powertools' Metrics adds the service dimension to every metric it emits.
                dimensions_map={"service": blueprint.SERVICE},
                period=PERIOD,
                statistic="Maximum",
            ),
            "Batches are still open an hour past their provider's window (batchdrop cancels them): see the poll's log",
        )
        self._alarm(
            "JobsTimedOut",
            ours(o.JOBS_TIMED_OUT),
            "The watchdog ended a job as failed because it made no progress: batchdrop status JOB shows why; "
            "see the poll function's log",
        )

        self.dashboard = self._dashboard(list(functions), dead_letter_queues, realtime_queue)

    def _dashboard(
        self,
        functions: list[lambda_.Function],
        dead_letter_queues: dict[str, sqs.IQueue],
        realtime_queue: sqs.IQueue,
    ) -> cloudwatch.Dashboard:
        """One page: requests and their outcomes, batches, cost saved, time to complete, and health."""
        dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=f"{cdk.Stack.of(self).stack_name}-batchdrop")
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Requests",
                left=[
                    ours(o.REQUESTS_SUBMITTED),
                    ours(o.REQUESTS_SUCCEEDED),
                    ours(o.REQUESTS_FAILED),
                    ours(o.REQUESTS_EXPIRED),
                    ours(o.LINES_INVALID),
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Batches, and jobs timed out",
                left=[
                    ours(o.BATCHES_CHECKED),
                    ours(o.BATCHES_ENDED),
                    ours(o.STUCK_BATCHES, "Maximum"),
                    ours(o.JOBS_TIMED_OUT),
                ],
                width=12,
            ),
        )
        dashboard.add_widgets(
            cloudwatch.SingleValueWidget(title="Saved vs real-time (USD)", metrics=[ours(o.COST_SAVED_USD)], width=6),
            cloudwatch.GraphWidget(
                title="Time to complete (s)",
                left=[ours(o.TIME_TO_COMPLETE, "Average"), ours(o.TIME_TO_COMPLETE, "p90")],
                width=6,
            ),
            cloudwatch.GraphWidget(
                title="Function errors",
                left=[fn.metric_errors(period=PERIOD, statistic="Sum") for fn in functions],
                width=6,
            ),
            cloudwatch.GraphWidget(
                title="Dead letters",
                left=[
                    q.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum", label=name)
                    for name, q in dead_letter_queues.items()
                ],
                width=6,
            ),
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Function throttles",
                left=[fn.metric_throttles(period=PERIOD, statistic="Sum") for fn in functions],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Real-time lane: requests, 429s, escalations",
                left=[ours(o.REALTIME_REQUESTS), ours(o.REALTIME_THROTTLED), ours(o.JOBS_ESCALATED)],
                width=8,
            ),
            # The lane's backlog: its event source runs at most realtime_invocations invocations at once.
            cloudwatch.GraphWidget(
                title="Real-time queue: chunks waiting, oldest (s)",
                left=[realtime_queue.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum")],
                right=[realtime_queue.metric_approximate_age_of_oldest_message(period=PERIOD, statistic="Maximum")],
                width=8,
            ),
        )
        return dashboard

    def _alarm(self, construct_id: str, metric: cloudwatch.IMetric, description: str) -> None:
        """An alarm when `metric` is above zero in one period; no data (nothing happened) is fine."""
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            alarm_description=description,
            metric=metric,
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(self._action)
        self.alarms.append(alarm)


def ours(name: str, statistic: str = "Sum") -> cloudwatch.Metric:
    """One of the metrics the handlers emit (Powertools adds the service dimension to each)."""
    return cloudwatch.Metric(
        namespace=blueprint.METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"service": blueprint.SERVICE},
        period=PERIOD,
        statistic=statistic,
    )
