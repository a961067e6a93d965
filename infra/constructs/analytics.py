"""Athena over the table jobs' results (docs/athena.md): a Glue database, one table over every job's
results.parquet, and a workgroup whose query results go to a bucket of their own, encrypted.

The table's columns are batchdrop.tables.schema's RESULT_COLUMNS, the columns the completion function
writes after the input's; a job's input columns and its `parsed` struct vary by job, so a query reads
them through a table of that job's own (docs/athena.md). Athena reads Parquet by column name, so the
columns the shared table does not declare are simply not read.

Nothing here is granted to the functions: they never query. Whoever queries needs Athena, Glue's
catalog reads, reads of the bucket's outputs/ and writes to the query-results bucket (docs/athena.md).
"""

from __future__ import annotations

import re

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_athena as athena
from aws_cdk import aws_glue as glue
from aws_cdk import aws_s3 as s3
from constructs import Construct

from batchdrop.config import OUTPUT_PREFIX
from batchdrop.tables import schema

# Hive's Parquet SerDe and formats: what Athena (and Glue, Spark, Trino) read Parquet tables with.
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
PARTITION_COMMENT = (
    "the job's output prefix without outputs/ and the trailing slash: <path under inputs/>/<job_id>; "
    "a query must give it with = or IN"
)
# Query results are kept for Athena's query result reuse (at most 7 days old) and for downloads from the
# console's history; past that they are copies of data that lives in outputs/, and expire.
QUERY_RESULTS_EXPIRY = Duration.days(7)
INCOMPLETE_UPLOAD_EXPIRY = Duration.days(1)
QUERY_RESULTS_PREFIX = "results/"
# The most one query may scan before Athena cancels it: 100 GB is about $0.49 at $5 per TB scanned. A
# job's results.parquet is a few GB at most (every input column plus the answers, compressed), and a
# query names its jobs (the partition is injected), so this stops only a runaway join, e.g. against a
# large table of the user's without a filter.
BYTES_SCANNED_CUTOFF = 100 * 1000**3
ENGINE_VERSION = "Athena engine version 3"


def glue_name(stack_name: str) -> str:
    """A Glue database name from the stack's: lower case, `_` for anything but letters and digits."""
    return re.sub(r"[^a-z0-9_]", "_", stack_name.lower())


def location_template(bucket_name: str) -> str:
    """Where a job's table is, with the partition column as the template's variable:
    s3://<bucket>/outputs/${job_path}/table/ (batchdrop.pipeline.output_prefix is outputs/<job_path>/)."""
    return f"s3://{bucket_name}/{OUTPUT_PREFIX}${{{schema.PARTITION_COLUMN}}}/{schema.TABLE_FOLDER}/"


class Analytics(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bucket: s3.IBucket,
        access_logs: s3.IBucket,
        stack_name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.database_name = glue_name(stack_name)
        self.table_name = schema.GLUE_TABLE
        self.workgroup_name = stack_name.lower()

        self.database = glue.CfnDatabase(
            self,
            "Database",
            catalog_id=Aws.ACCOUNT_ID,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name,
                description="batchdrop: the results of table jobs (docs/athena.md)",
            ),
        )
        self.table = glue.CfnTable(
            self,
            "Results",
            catalog_id=Aws.ACCOUNT_ID,
            database_name=self.database_name,
            table_input=glue.CfnTable.TableInputProperty(
                name=self.table_name,
                description="Every table job's results.parquet: the columns batchdrop adds to each input row, "
                "one partition per job (docs/athena.md)",
                table_type="EXTERNAL_TABLE",
                parameters={
                    "classification": "parquet",
                    "EXTERNAL": "TRUE",
                    "projection.enabled": "true",
                    f"projection.{schema.PARTITION_COLUMN}.type": "injected",
                    "storage.location.template": location_template(bucket.bucket_name),
                },
                partition_keys=[
                    glue.CfnTable.ColumnProperty(name=schema.PARTITION_COLUMN, type="string", comment=PARTITION_COMMENT)
                ],
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    columns=[
                        glue.CfnTable.ColumnProperty(name=name, type=type_, comment=comment)
                        for name, type_, comment in schema.RESULT_COLUMNS
                    ],
                    location=f"s3://{bucket.bucket_name}/{OUTPUT_PREFIX}",
                    input_format=PARQUET_INPUT_FORMAT,
                    output_format=PARQUET_OUTPUT_FORMAT,
                    serde_info=glue.CfnTable.SerdeInfoProperty(
                        serialization_library=PARQUET_SERDE, parameters={"serialization.format": "1"}
                    ),
                ),
            ),
        )
        self.table.node.add_dependency(self.database)

        # A bucket of its own rather than a prefix of the data bucket: whoever queries must be able to
        # write query results, and that write is then to a bucket holding nothing else (never into the
        # bucket whose inputs/ starts jobs); it expires everything, unversioned.
        self.query_results = s3.Bucket(
            self,
            "QueryResults",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-query-results",
                    expiration=QUERY_RESULTS_EXPIRY,
                    abort_incomplete_multipart_upload_after=INCOMPLETE_UPLOAD_EXPIRY,
                )
            ],
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="athena-results/",
            removal_policy=RemovalPolicy.RETAIN,
        )

        self.workgroup = athena.CfnWorkGroup(
            self,
            "Workgroup",
            name=self.workgroup_name,
            description="batchdrop: queries over table jobs' results (docs/athena.md)",
            state="ENABLED",
            # Deleting the stack deletes the workgroup even when it holds saved queries.
            recursive_delete_option=True,
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                # A client cannot send its results elsewhere, unencrypted, or past the cutoff.
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=BYTES_SCANNED_CUTOFF,
                requester_pays_enabled=False,
                engine_version=athena.CfnWorkGroup.EngineVersionProperty(selected_engine_version=ENGINE_VERSION),
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=self.query_results.s3_url_for_object(QUERY_RESULTS_PREFIX),
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_S3"
                    ),
                    expected_bucket_owner=Aws.ACCOUNT_ID,
                ),
            ),
        )
