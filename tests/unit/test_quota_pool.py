"""The quota pool (adapters/store.py): what is enqueued at a provider, counted by holder, never past
its cap, each holder counted once however often it retries. Two takers at the same moment are kept
apart by DynamoDB's conditional write itself, which neither moto's mock nor its server makes atomic
across threads, so that is not tested here."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from batchdrop.adapters.store import JobStore, quota_pk

POOL = quota_pk("openai", "gpt-4o")


@pytest.fixture
def store() -> Iterator[JobStore]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        yield JobStore("t", ddb)


def test_shares_are_taken_up_to_the_cap_and_given_back(store: JobStore) -> None:
    assert store.take_quota(POOL, "j/a", 40, 100)
    assert store.take_quota(POOL, "j/b", 60, 100)
    assert not store.take_quota(POOL, "j/c", 1, 100), "the pool is full"
    store.give_back_quota(POOL, "j/a")
    assert store.take_quota(POOL, "j/c", 30, 100)
    assert store.quota(POOL) == {"total": 90, "holders": {"j/b": 60, "j/c": 30}}


def test_a_retry_of_a_holder_is_not_counted_twice(store: JobStore) -> None:
    assert store.take_quota(POOL, "j/a", 70, 100)
    assert store.take_quota(POOL, "j/a", 70, 100), "its share is already held"
    store.give_back_quota(POOL, "j/a")
    store.give_back_quota(POOL, "j/a")  # a second give-back takes nothing more
    assert store.quota(POOL) == {"total": 0, "holders": {}}


def test_a_share_larger_than_the_cap_goes_alone(store: JobStore) -> None:
    assert store.take_quota(POOL, "j/big", 500, 100)
    assert not store.take_quota(POOL, "j/small", 1, 100)
