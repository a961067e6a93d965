"""What AWS charges for the resources batchdrop deploys: us-east-1 list prices, on-demand, no free tier.

The local bill (`batchdrop.local.bill`) turns the calls a run makes into dollars with this table. It is
dated and meant to be edited, like the model prices in `batchdrop.pricing`: check each page before
quoting a figure, and mind that other regions differ. The free tiers (a million Lambda requests, a
million SQS requests, 20,000 KMS requests a month, ...) are left out on purpose: they are per account,
and batchdrop should be cheap without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# When the figures below were last read from the pricing pages.
AS_OF = "2025-12"

# Billed units' sizes, as the pricing pages define them.
KB = 1024
DYNAMODB_WRITE_UNIT_BYTES = 1 * KB  # one write request unit: an item of up to 1 KB
DYNAMODB_READ_UNIT_BYTES = 4 * KB  # one read request unit: a strongly consistent read of up to 4 KB
SQS_CHUNK_BYTES = 64 * KB  # each 64 KB chunk of a payload is billed as one request
SNS_CHUNK_BYTES = 64 * KB  # each 64 KB chunk of a published payload is billed as one request
GB = 1024**3
HOURS_PER_MONTH = 730  # how AWS prorates a GB-month


@dataclass(frozen=True)
class Price:
    usd: float  # per one `unit`
    unit: str
    url: str


LAMBDA_URL = "https://aws.amazon.com/lambda/pricing/"
DYNAMODB_URL = "https://aws.amazon.com/dynamodb/pricing/on-demand/"
S3_URL = "https://aws.amazon.com/s3/pricing/"
SQS_URL = "https://aws.amazon.com/sqs/pricing/"
SNS_URL = "https://aws.amazon.com/sns/pricing/"
KMS_URL = "https://aws.amazon.com/kms/pricing/"
SECRETS_URL = "https://aws.amazon.com/secrets-manager/pricing/"
CLOUDWATCH_URL = "https://aws.amazon.com/cloudwatch/pricing/"
EVENTBRIDGE_URL = "https://aws.amazon.com/eventbridge/pricing/"

# The prices that scale with use, by the name the bill counts them under.
PRICES: dict[str, Price] = {
    # Arm (Graviton), the first 7.5 billion GB-seconds a month; x86 is $0.0000166667.
    "lambda.gb_seconds": Price(0.0000133334, "GB-second", LAMBDA_URL),
    "lambda.requests": Price(0.20 / 1e6, "request", LAMBDA_URL),
    # On-demand capacity, after the price cut of 1 November 2024 (write units halved from $1.25 and
    # read units from $0.25 per million).
    "dynamodb.write_units": Price(0.625 / 1e6, "write request unit", DYNAMODB_URL),
    "dynamodb.read_units": Price(0.125 / 1e6, "read request unit", DYNAMODB_URL),
    # S3 Standard: PUT, COPY, POST and LIST requests, then GET, SELECT and every other request.
    # DELETE is free; data out to Lambda in the same region is free.
    "s3.tier1": Price(0.005 / 1000, "PUT/COPY/POST/LIST request", S3_URL),
    "s3.tier2": Price(0.0004 / 1000, "GET and other request", S3_URL),
    # The first 50 TB a month: what batchdrop writes under work/ (batch files, indexes, Bedrock's
    # input) and under outputs/ (results, errors, summaries), counted apart.
    "s3.gb_months_work": Price(0.023, "GB-month", S3_URL),
    "s3.gb_months_outputs": Price(0.023, "GB-month", S3_URL),
    "sqs.requests": Price(0.40 / 1e6, "standard queue request (64 KB chunk)", SQS_URL),
    # Deliveries to SQS queues and Lambda functions are free; HTTP and email deliveries to the
    # user's own subscriptions are not (and are not counted here).
    "sns.publishes": Price(0.50 / 1e6, "publish (64 KB chunk)", SNS_URL),
    "kms.requests": Price(0.03 / 10_000, "request", KMS_URL),
    "secretsmanager.calls": Price(0.05 / 10_000, "API call", SECRETS_URL),
    # Standard log class ingestion (Lambda's logs are vended logs, whose first tier is this price).
    "logs.gb_ingested": Price(0.50, "GB ingested", CLOUDWATCH_URL),
    # Scheduled rules on the default bus and AWS service events (Bedrock's job state changes) cost
    # nothing: the EventBridge page prices custom, partner and cross-account events only, and lists
    # AWS management events as ingested for free.
    "events.free": Price(0.0, "event", EVENTBRIDGE_URL),
    # Calls that are priced elsewhere or not at all: Bedrock's control plane (the job's tokens are the
    # provider's bill), S3 DELETE.
    "free": Price(0.0, "call", ""),
}


@dataclass(frozen=True)
class Fixed:
    what: str
    usd_per_month: float
    url: str


# Monthly charges that do not scale with requests.
KMS_KEY_MONTH = 1.00  # a customer managed key (the notification topic's)
SECRET_MONTH = 0.40  # per secret
ALARM_MONTH = 0.10  # a standard-resolution metric alarm
DASHBOARD_MONTH = 3.00  # past an account's first three dashboards
CUSTOM_METRIC_MONTH = 0.30  # the first 10,000 metrics
PITR_GB_MONTH = 0.20  # DynamoDB continuous backups, on the table's size
DYNAMODB_GB_MONTH = 0.25  # table storage past the first 25 GB
LOGS_GB_MONTH = 0.03  # log storage (the log groups keep 30 days by default)


def lambda_gb_seconds(seconds: float, memory_mb: int) -> float:
    """Lambda bills duration rounded up to the millisecond, times the memory configured, in GB."""
    return math.ceil(round(seconds * 1000, 6)) / 1000 * memory_mb / 1024


def chunks(size: int, chunk: int) -> int:
    """Billed requests of a payload: one per `chunk` bytes started, at least one."""
    return max(1, math.ceil(size / chunk))


def write_units(size: int) -> int:
    """DynamoDB write request units for an item of `size` bytes: one per KB started, at least one."""
    return chunks(size, DYNAMODB_WRITE_UNIT_BYTES)


def read_units(size: int, consistent: bool) -> float:
    """Read request units for reading `size` bytes: one per 4 KB started, at least one, halved when
    eventually consistent."""
    units = chunks(size, DYNAMODB_READ_UNIT_BYTES)
    return units if consistent else units / 2
