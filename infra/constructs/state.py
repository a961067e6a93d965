"""The job table: one item per job and per provider batch, and the sparse index the poll function reads
(keys and index from batchdrop.blueprint, which the local stack builds its table from too)."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from batchdrop import blueprint
from infra.suppressions import acknowledge

_TYPES = {"S": dynamodb.AttributeType.STRING, "N": dynamodb.AttributeType.NUMBER}
_PROJECTIONS = {"ALL": dynamodb.ProjectionType.ALL, "KEYS_ONLY": dynamodb.ProjectionType.KEYS_ONLY}
_BILLING = {"PAY_PER_REQUEST": dynamodb.BillingMode.PAY_PER_REQUEST, "PROVISIONED": dynamodb.BillingMode.PROVISIONED}


def _attribute(key: blueprint.Key) -> dynamodb.Attribute:
    return dynamodb.Attribute(name=key.name, type=_TYPES[key.type])


class State(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=_attribute(blueprint.TABLE_PARTITION_KEY),
            sort_key=_attribute(blueprint.TABLE_SORT_KEY),
            billing_mode=_BILLING[blueprint.TABLE_BILLING_MODE],
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=blueprint.TABLE_TTL_ATTRIBUTE,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # The response cache: disposable (every entry is an answer a provider can give again), so neither
        # point-in-time recovery nor kept on delete.
        self.cache = dynamodb.Table(
            self,
            "Cache",
            partition_key=_attribute(blueprint.CACHE_PARTITION_KEY),
            billing_mode=_BILLING[blueprint.CACHE_BILLING_MODE],
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=blueprint.CACHE_TTL_ATTRIBUTE,
            removal_policy=RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.cache,
            "AwsSolutions-DDB3",
            "The response cache holds only answers a provider can give again, each expiring after its TTL: "
            "point-in-time recovery would bill for restoring what is not worth restoring.",
        )
        for index in blueprint.TABLE_INDEXES:
            self.table.add_global_secondary_index(
                index_name=index.name,
                partition_key=_attribute(index.partition),
                sort_key=_attribute(index.sort),
                projection_type=_PROJECTIONS[index.projection],
            )
