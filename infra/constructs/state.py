"""The job table: one item per job and per provider batch, and the sparse index the poll function reads."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from batchdrop.config import DUE_INDEX, DUE_PK, DUE_SK
from infra.names import TABLE_PARTITION_KEY, TABLE_SORT_KEY, TABLE_TTL_ATTRIBUTE


class State(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        string = dynamodb.AttributeType.STRING
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name=TABLE_PARTITION_KEY, type=string),
            sort_key=dynamodb.Attribute(name=TABLE_SORT_KEY, type=string),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=TABLE_TTL_ATTRIBUTE,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # Only items that need a look carry DUE_PK/DUE_SK, so the index holds just the due work: the
        # poll function queries it instead of scanning. ALL: poll needs the whole batch item.
        self.table.add_global_secondary_index(
            index_name=DUE_INDEX,
            partition_key=dynamodb.Attribute(name=DUE_PK, type=string),
            sort_key=dynamodb.Attribute(name=DUE_SK, type=dynamodb.AttributeType.NUMBER),
            projection_type=dynamodb.ProjectionType.ALL,
        )
