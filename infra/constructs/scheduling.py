"""The EventBridge schedule that runs the poll function."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from constructs import Construct


class Scheduling(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, poll: lambda_.IFunction, rate_minutes: int) -> None:
        super().__init__(scope, construct_id)
        self.rule = events.Rule(
            self,
            "PollSchedule",
            description=f"Runs batchdrop's poll function every {rate_minutes} minute(s)",
            schedule=events.Schedule.rate(Duration.minutes(rate_minutes)),
            targets=[targets.LambdaFunction(poll)],
        )
