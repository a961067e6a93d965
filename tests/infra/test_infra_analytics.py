"""Athena over the table jobs' results: the Glue database and table (the columns the completion function
writes, one projected partition per job, at the path the functions write to) and the workgroup (its
results encrypted, in a bucket of their own, its settings enforced). Nothing of it is granted to the
functions."""

from __future__ import annotations

from typing import Any

import pytest

from batchdrop import blueprint, pipeline
from batchdrop.config import INPUT_PREFIX, OUTPUT_PREFIX
from batchdrop.tables import schema
from infra.constructs import analytics
from tests.infra.synth_support import Synth, render, synth, walk


@pytest.fixture(scope="module")
def stack() -> Synth:
    return synth()


def table_input(stack: Synth) -> dict[str, Any]:
    _, table = stack.one("AWS::Glue::Table")
    found: dict[str, Any] = table["Properties"]["TableInput"]
    return found


def test_the_database_is_named_for_the_stack_and_holds_the_results_table(stack: Synth) -> None:
    db_id, database = stack.one("AWS::Glue::Database")
    _, table = stack.one("AWS::Glue::Table")

    assert database["Properties"]["DatabaseInput"]["Name"] == analytics.glue_name(blueprint.DEFAULT_STACK_NAME)
    assert table["Properties"]["DatabaseName"] == database["Properties"]["DatabaseInput"]["Name"]
    assert table["Properties"]["TableInput"]["Name"] == schema.GLUE_TABLE
    # Created after its database (the name is a plain string, so the order is stated).
    assert db_id in table["DependsOn"]


def test_the_tables_columns_are_what_the_completion_function_writes_in_order(stack: Synth) -> None:
    columns = table_input(stack)["StorageDescriptor"]["Columns"]

    assert [(c["Name"], c["Type"]) for c in columns] == [(name, type_) for name, type_, _ in schema.RESULT_COLUMNS]
    assert [c["Comment"] for c in columns] == [comment for _, _, comment in schema.RESULT_COLUMNS]
    # The job-dependent struct is read through a table of the job's own (docs/athena.md).
    assert schema.PARSED_COLUMN not in {c["Name"] for c in columns}


def test_the_table_reads_parquet(stack: Synth) -> None:
    descriptor = table_input(stack)["StorageDescriptor"]

    assert descriptor["SerdeInfo"]["SerializationLibrary"].endswith(".parquet.serde.ParquetHiveSerDe")
    assert descriptor["InputFormat"].endswith("MapredParquetInputFormat")
    assert descriptor["OutputFormat"].endswith("MapredParquetOutputFormat")
    assert table_input(stack)["TableType"] == "EXTERNAL_TABLE"
    assert table_input(stack)["Parameters"]["classification"] == "parquet"


def test_one_partition_per_job_projected_from_the_query_no_crawler(stack: Synth) -> None:
    table = table_input(stack)
    parameters = table["Parameters"]

    assert [(k["Name"], k["Type"]) for k in table["PartitionKeys"]] == [(schema.PARTITION_COLUMN, "string")]
    assert parameters["projection.enabled"] == "true"
    assert parameters[f"projection.{schema.PARTITION_COLUMN}.type"] == "injected"
    projected = {k for k in parameters if k.startswith("projection.")}
    assert projected == {"projection.enabled", f"projection.{schema.PARTITION_COLUMN}.type"}
    assert stack.resources("AWS::Glue::Crawler") == {}


def test_a_jobs_partition_is_where_the_functions_write_its_table(stack: Synth) -> None:
    """The location template, with job_path filled in as docs/athena.md says (the job's output prefix
    without outputs/ and its trailing slash), is the folder of the job's results.parquet."""
    template = render(table_input(stack)["Parameters"]["storage.location.template"])
    job_id = "job-0123456789abcdef0123"
    prefix = pipeline.output_prefix(f"{INPUT_PREFIX}evals/2026/run1.jsonl", job_id)
    job_path = prefix.removeprefix(OUTPUT_PREFIX).removesuffix("/")

    location = template.replace(f"${{{schema.PARTITION_COLUMN}}}", job_path)

    assert location == f"s3://<{stack.data_bucket}>/{prefix}{schema.TABLE_FOLDER}/"
    assert job_path == f"evals/2026/run1/{job_id}"  # <path under inputs/ without the extension>/<job_id>
    assert render(table_input(stack)["StorageDescriptor"]["Location"]) == f"s3://<{stack.data_bucket}>/{OUTPUT_PREFIX}"


def workgroup(stack: Synth) -> dict[str, Any]:
    _, found = stack.one("AWS::Athena::WorkGroup")
    properties: dict[str, Any] = found["Properties"]
    return properties


def test_the_workgroup_enforces_encrypted_results_in_their_own_expiring_bucket(stack: Synth) -> None:
    config = workgroup(stack)["WorkGroupConfiguration"]
    results = config["ResultConfiguration"]
    results_bucket = results["OutputLocation"]["Fn::Join"][1][1]["Ref"]

    assert config["EnforceWorkGroupConfiguration"] is True
    assert results["EncryptionConfiguration"] == {"EncryptionOption": "SSE_S3"}
    assert render(results["OutputLocation"]) == f"s3://<{results_bucket}>/{analytics.QUERY_RESULTS_PREFIX}"
    assert results_bucket != stack.data_bucket
    bucket = stack.json["Resources"][results_bucket]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    ]
    assert bucket["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] == analytics.QUERY_RESULTS_EXPIRY.to_days()
    assert "Prefix" not in rule  # everything in it expires
    assert "LoggingConfiguration" in bucket


def test_the_workgroup_publishes_metrics_and_cuts_off_runaway_scans(stack: Synth) -> None:
    config = workgroup(stack)["WorkGroupConfiguration"]

    assert config["PublishCloudWatchMetricsEnabled"] is True
    assert config["BytesScannedCutoffPerQuery"] == analytics.BYTES_SCANNED_CUTOFF
    # Athena accepts at least 10 MB; 100 GB is about $0.49 a query at $5 per TB.
    assert 10 * 1000**2 <= config["BytesScannedCutoffPerQuery"] <= 1000**4
    assert workgroup(stack)["State"] == "ENABLED"


def test_the_stack_exports_the_names_a_query_needs(stack: Synth) -> None:
    outputs = stack.json["Outputs"]

    assert outputs["AthenaDatabaseName"]["Value"] == analytics.glue_name(blueprint.DEFAULT_STACK_NAME)
    assert outputs["AthenaTableName"]["Value"] == schema.GLUE_TABLE
    assert outputs["AthenaWorkgroupName"]["Value"] == workgroup(stack)["Name"]
    assert "AthenaResultsBucketName" in outputs


def test_no_role_in_the_stack_is_granted_glue_or_athena(stack: Synth) -> None:
    """The functions never query; whoever does brings their own permissions (docs/athena.md)."""
    actions = [
        action.lower()
        for policy in stack.resources("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    ]
    assert actions
    assert [a for a in actions if a.startswith(("glue:", "athena:")) or a in ("*", "s3:*")] == []


def test_no_role_anywhere_may_touch_the_query_results_bucket(stack: Synth) -> None:
    results_bucket = workgroup(stack)["WorkGroupConfiguration"]["ResultConfiguration"]["OutputLocation"]
    bucket_id = results_bucket["Fn::Join"][1][1]["Ref"]
    for policy in stack.resources("AWS::IAM::Policy").values():
        mentioned = {v.get("Ref") for v in walk(policy) if isinstance(v, dict)}
        mentioned |= {v["Fn::GetAtt"][0] for v in walk(policy) if isinstance(v, dict) and "Fn::GetAtt" in v}
        assert bucket_id not in mentioned


def test_database_names_are_what_glue_accepts() -> None:
    assert analytics.glue_name("Batchdrop") == "batchdrop"
    assert analytics.glue_name("Batchdrop-Staging") == "batchdrop_staging"
