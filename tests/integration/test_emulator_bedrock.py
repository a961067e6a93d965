"""Bedrock batch inference in the provider emulator, driven over HTTP by boto3, with S3 on moto's server.

Responses are checked against botocore's service model (required members, types, enums), as botocore
itself only parses them. Then `BedrockProvider` runs end to end against the same emulator.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import boto3
import botocore.session
import orjson
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.validate import ParamValidator

from batchdrop import models as m
from batchdrop.adapters import aws
from batchdrop.config import BatchLimits, ProviderSettings
from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from batchdrop.local.emulator.bedrock import BedrockEmulation
from batchdrop.providers.base import BatchRef
from batchdrop.providers.bedrock.client import BedrockProvider, job_name, record_id
from tests.helpers import LATENCY, START, FakeClock

BUCKET = "bedrock-batch"
ROLE = "arn:aws:iam::123456789012:role/bedrock-batch"
CLAUDE = "anthropic.claude-3-5-haiku-20241022-v1:0"
NOVA = "us.amazon.nova-lite-v1:0"
LLAMA = "meta.llama3-1-8b-instruct-v1:0"
JOB_ARN = re.compile(r"arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/[a-z0-9]{12}")


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An empty moto account with our bucket; boto3 (and the emulator's S3 client) point at it."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).close()
    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_BEDROCK", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    aws.reset()
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    grant_role(ROLE, f"arn:aws:s3:::{BUCKET}/*")
    yield client
    aws.reset()


@pytest.fixture
def emulator(clock: FakeClock, s3: Any) -> Iterator[ProviderEmulator]:
    with ProviderEmulator(EmulatorKnobs(latency=LATENCY, seed=7), clock=clock) as emu:
        emulation(emu).min_records = 2
        yield emu


@pytest.fixture
def bedrock(emulator: ProviderEmulator) -> Any:
    return bedrock_client(emulator, attempts=1)


def emulation(emulator: ProviderEmulator) -> BedrockEmulation:
    found = next(e for e in emulator.plugins if e.provider == "bedrock")
    assert isinstance(found, BedrockEmulation)
    return found


def bedrock_client(emulator: ProviderEmulator, attempts: int) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": attempts})
    return boto3.client("bedrock", endpoint_url=emulator.base_url, region_name="us-east-1", config=config)


# -- helpers ----------------------------------------------------------------------------------------


def grant_role(role_arn: str, *resources: str) -> None:
    """The service role in moto's IAM, allowed s3:GetObject and s3:PutObject on the resources: the
    emulator reads a job's input as its role, as Bedrock does."""
    iam = boto3.client("iam")
    name = role_arn.rsplit("/", 1)[-1]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "bedrock.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=orjson.dumps(trust).decode())
    if resources:
        grant = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": list(resources)}],
        }
        iam.put_role_policy(RoleName=name, PolicyName="io", PolicyDocument=orjson.dumps(grant).decode())


def claude_input(text: str, max_tokens: int = 256, **extra: Any) -> dict[str, Any]:
    return {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        **extra,
    }


def nova_input(text: str, max_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemaVersion": "messages-v1",
        "system": [{"text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"text": text}]}],
    }
    if max_tokens is not None:
        body["inferenceConfig"] = {"maxTokens": max_tokens}
    return body


def llama_input(text: str, max_gen_len: int | None = None) -> dict[str, Any]:
    prompt = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        f"{text}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    return {"prompt": prompt, **({"max_gen_len": max_gen_len} if max_gen_len else {})}


def put_records(s3: Any, key: str, records: list[dict[str, Any]] | list[bytes]) -> str:
    body = b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3://{BUCKET}/{key}"


def records(n: int, make: Any = claude_input, prefix: str = "rec") -> list[dict[str, Any]]:
    return [{"recordId": f"{prefix}{i:08d}", "modelInput": make(f"question {i}")} for i in range(n)]


def create_job(
    bedrock: Any,
    input_uri: str,
    name: str = "job-1",
    model: str = CLAUDE,
    output_uri: str = f"s3://{BUCKET}/out/",
    **extra: Any,
) -> str:
    response = bedrock.create_model_invocation_job(
        jobName=name,
        roleArn=ROLE,
        modelId=model,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}},
        **extra,
    )
    check_shape(bedrock, "CreateModelInvocationJob", response)
    arn = response["jobArn"]
    assert JOB_ARN.fullmatch(arn)
    return str(arn)


def check_shape(client: Any, operation: str, response: dict[str, Any]) -> None:
    """The response has every member the service model requires, with the model's types and enums."""
    shape = client.meta.service_model.operation_model(operation).output_shape
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    report = ParamValidator().validate(body, shape)
    assert not report.has_errors(), report.generate_report()
    assert set(body) <= set(shape.members)
    summaries = body.get("invocationJobSummaries", [body] if "jobArn" in body and "status" in body else [])
    for job in summaries:
        assert job["status"] in shape_enum(client, "ModelInvocationJobStatus")
        assert JOB_ARN.fullmatch(job["jobArn"])
        for name in ("submitTime", "lastModifiedTime", "endTime", "jobExpirationTime"):
            if name in job:
                assert isinstance(job[name], datetime)


def shape_enum(client: Any, name: str) -> list[str]:
    return list(client.meta.service_model.shape_for(name).enum)


def get(bedrock: Any, arn: str) -> dict[str, Any]:
    job: dict[str, Any] = bedrock.get_model_invocation_job(jobIdentifier=arn)
    check_shape(bedrock, "GetModelInvocationJob", job)
    return job


def error_of(call: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    error = caught.value.response["Error"]
    return str(error["Code"]), str(error["Message"])


def output_keys(s3: Any, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def read_lines(s3: Any, key: str) -> list[dict[str, Any]]:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return [orjson.loads(line) for line in body.splitlines() if line.strip()]


def job_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def signed_get(url: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": "AWS4-HMAC-SHA256 Credential=testing/20250615/us-east-1/bedrock/aws4_request, x"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# -- the life of a job ------------------------------------------------------------------------------


def test_job_moves_through_the_statuses_and_writes_its_output(
    bedrock: Any, s3: Any, clock: FakeClock, emulator: ProviderEmulator
) -> None:
    # Given 20 Claude records in one input file
    uri = put_records(s3, "in/batch.jsonl", records(20))
    arn = create_job(bedrock, uri, tags=[{"key": "team", "value": "search"}], timeoutDurationInHours=48)

    # Then the job is listed with what it was created with
    job = get(bedrock, arn)
    assert job["status"] == "Submitted"
    assert job["jobName"] == "job-1"
    assert job["modelId"] == CLAUDE
    assert job["roleArn"] == ROLE
    assert job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"] == uri
    assert job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"] == f"s3://{BUCKET}/out/"
    assert job["timeoutDurationInHours"] == 48
    assert job["submitTime"] == datetime.fromtimestamp(START, UTC)
    assert (job["jobExpirationTime"] - job["submitTime"]).total_seconds() == 48 * 3600
    assert job["totalRecordCount"] == 0
    assert "endTime" not in job
    stats = emulator.stats()
    assert stats["batches"][-1]["metadata"] == {"team": "search"}
    assert stats["batches"][-1]["custom_ids"] == [f"rec{i:08d}" for i in range(20)]
    assert stats["batches_created"]["bedrock"] == 1

    # When the clock runs, the statuses follow Bedrock's order and the counts grow while in progress
    seen = []
    processed = []
    for step in (3, 3, 5, 20, 30, 30, 8):
        clock.advance(step)
        job = get(bedrock, arn)
        seen.append(job["status"])
        processed.append(job["processedRecordCount"])
    assert seen == ["Validating", "Scheduled", "InProgress", "InProgress", "InProgress", "InProgress", "InProgress"]
    assert processed == sorted(processed)
    assert 0 < processed[3] < 20
    assert get(bedrock, arn)["totalRecordCount"] == 20
    clock.advance(1)
    job = get(bedrock, arn)
    assert job["status"] == "Completed"
    assert job["endTime"] == datetime.fromtimestamp(START + LATENCY, UTC)
    assert job["lastModifiedTime"] == job["endTime"]
    assert (job["totalRecordCount"], job["processedRecordCount"], job["successRecordCount"]) == (20, 20, 20)
    assert job["errorRecordCount"] == 0

    # Then the output is in S3: <output uri>/<job id>/<input file>.out and the manifest
    prefix = f"out/{job_id(arn)}/"
    assert output_keys(s3, "out/") == [f"{prefix}batch.jsonl.out", f"{prefix}manifest.json.out"]
    lines = read_lines(s3, f"{prefix}batch.jsonl.out")
    ids = [line["recordId"] for line in lines]
    assert sorted(ids) == [f"rec{i:08d}" for i in range(20)]
    assert ids != sorted(ids)  # Bedrock does not keep the input order
    for line in lines:
        assert set(line) == {"recordId", "modelInput", "modelOutput"}
        n = int(line["recordId"][3:])
        assert line["modelInput"] == claude_input(f"question {n}")
        output = line["modelOutput"]
        assert output["type"] == "message"
        assert output["role"] == "assistant"
        assert output["id"].startswith("msg_bdrk_")
        assert output["model"] == "claude-3-5-haiku-20241022-v1"
        assert output["content"] == [{"type": "text", "text": f"echo: question {n}"}]
        assert output["stop_reason"] == "end_turn"
        assert output["usage"]["input_tokens"] > 0
        assert output["usage"]["output_tokens"] > 0
    manifest = orjson.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}manifest.json.out")["Body"].read())
    assert manifest == {
        "totalRecordCount": 20,
        "processedRecordCount": 20,
        "successRecordCount": 20,
        "errorRecordCount": 0,
        "inputTokenCount": sum(line["modelOutput"]["usage"]["input_tokens"] for line in lines),
        "outputTokenCount": sum(line["modelOutput"]["usage"]["output_tokens"] for line in lines),
    }


def test_every_model_family_answers_in_its_invoke_model_shape(
    bedrock: Any, s3: Any, clock: FakeClock, emulator: ProviderEmulator
) -> None:
    emulator.knobs = EmulatorKnobs(latency=0, seed=7)
    nova = put_records(
        s3,
        "in/nova.jsonl",
        [{"recordId": "n1", "modelInput": nova_input("hello nova")}] * 1
        + [{"recordId": "n2", "modelInput": nova_input("a long question " * 10, max_tokens=3)}],
    )
    llama = put_records(
        s3,
        "in/llama.jsonl",
        [
            {"recordId": "l1", "modelInput": llama_input("hello llama")},
            {"recordId": "l2", "modelInput": llama_input("a long question " * 10, max_gen_len=2)},
        ],
    )
    converse = put_records(
        s3,
        "in/converse.jsonl",
        [
            {"recordId": f"c{i}", "modelInput": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}}
            for i in (1, 2)
        ],
    )
    outputs = {}
    for name, model, uri, extra in (
        ("nova", NOVA, nova, {}),
        ("llama", LLAMA, llama, {}),
        ("converse", CLAUDE, converse, {"modelInvocationType": "Converse"}),
    ):
        arn = create_job(bedrock, uri, name=name, model=model, **extra)
        job = get(bedrock, arn)
        assert job["status"] == "Completed"
        assert job.get("modelInvocationType") == extra.get("modelInvocationType")
        lines = read_lines(s3, f"out/{job_id(arn)}/{name}.jsonl.out")
        outputs[name] = {line["recordId"]: line["modelOutput"] for line in lines}

    n1, n2 = outputs["nova"]["n1"], outputs["nova"]["n2"]
    assert n1["output"] == {"message": {"role": "assistant", "content": [{"text": "echo: hello nova"}]}}
    assert n1["stopReason"] == "end_turn"
    assert set(n1["usage"]) == {
        "inputTokens",
        "outputTokens",
        "totalTokens",
        "cacheReadInputTokenCount",
        "cacheWriteInputTokenCount",
    }
    assert n1["usage"]["totalTokens"] == n1["usage"]["inputTokens"] + n1["usage"]["outputTokens"]
    assert n2["stopReason"] == "max_tokens"
    assert n2["usage"]["outputTokens"] == 3

    l1, l2 = outputs["llama"]["l1"], outputs["llama"]["l2"]
    assert l1 == {
        "generation": "echo: hello llama",
        "prompt_token_count": l1["prompt_token_count"],
        "generation_token_count": l1["generation_token_count"],
        "stop_reason": "stop",
    }
    assert l1["prompt_token_count"] > 0
    assert l2["stop_reason"] == "length"
    assert l2["generation_token_count"] == 2

    c1 = outputs["converse"]["c1"]
    assert c1["output"]["message"]["content"] == [{"text": "echo: hi"}]
    assert set(c1) == {"output", "stopReason", "usage", "metrics"}


def test_create_is_idempotent_by_client_request_token(bedrock: Any, s3: Any, emulator: ProviderEmulator) -> None:
    uri = put_records(s3, "in/batch.jsonl", records(3))
    first = create_job(bedrock, uri, name="same", clientRequestToken="token-1")
    # The same token is the same job, even with other parameters
    assert create_job(bedrock, uri, name="other", clientRequestToken="token-1") == first
    assert get(bedrock, first)["clientRequestToken"] == "token-1"
    # A new token with a name in use is a conflict
    code, message = error_of(create_job, bedrock, uri, name="same", clientRequestToken="token-2")
    assert code == "ConflictException"
    assert "same" in message
    # Without a token, botocore makes one up: two calls are two jobs
    assert create_job(bedrock, uri, name="a") != create_job(bedrock, uri, name="b")
    assert len(bedrock.list_model_invocation_jobs()["invocationJobSummaries"]) == 3
    assert emulator.stats()["batches_created"]["bedrock"] == 3


def test_record_counts_outside_the_quotas_are_refused_at_create(
    bedrock: Any, s3: Any, emulator: ProviderEmulator
) -> None:
    bedrock_emulation = emulation(emulator)
    bedrock_emulation.validate_at_create = True  # the switch: Validating's checks answered at create
    bedrock_emulation.min_records = 3
    bedrock_emulation.max_records = 4
    code, message = error_of(create_job, bedrock, put_records(s3, "in/two.jsonl", records(2)))
    assert code == "ValidationException"
    assert "2 records, fewer than the minimum of 3 records" in message
    code, message = error_of(create_job, bedrock, put_records(s3, "in/five.jsonl", records(5)))
    assert code == "ValidationException"
    assert "5 records, more than the maximum of 4 records" in message
    assert create_job(bedrock, put_records(s3, "in/four.jsonl", records(4)))
    assert emulator.stats()["batches_created"]["bedrock"] == 1


def test_bad_requests_and_inputs_are_validation_errors(bedrock: Any, s3: Any, emulator: ProviderEmulator) -> None:
    emulation(emulator).validate_at_create = True  # the switch: Validating's checks answered at create
    good = put_records(s3, "in/good.jsonl", records(3))
    bad_lines = put_records(
        s3,
        "in/bad.jsonl",
        [orjson.dumps(r) for r in records(3)] + [b"{not json", b'{"recordId": "x1"}', b"[1, 2]"],
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input_uri": bad_lines}, "bad.jsonl line 4: the record is not valid JSON"),
        ({"input_uri": f"s3://{BUCKET}/in/missing.jsonl"}, "Could not read the input data"),
        ({"input_uri": f"s3://{BUCKET}/nothing-here/"}, "No .jsonl input file was found"),
        ({"input_uri": good, "model": "cohere.command-r-v1:0"}, "The provided model identifier is invalid"),
        ({"input_uri": good, "name": "-starts-with-a-dash"}, "at 'jobName' failed to satisfy constraint"),
        ({"input_uri": good, "model": "anthropic.claude/../x#y"}, "at 'modelId' failed to satisfy constraint"),
        ({"input_uri": good, "timeoutDurationInHours": 200}, "between 24 and 168"),
        ({"input_uri": good, "output_uri": "s3://Upper_Case/out/"}, "outputDataConfig.s3OutputDataConfig.s3Uri"),
    ]
    for case, expected in cases:
        code, message = error_of(create_job, bedrock, **case)
        assert code == "ValidationException", case
        assert expected in message, (case, message)
    _, message = error_of(create_job, bedrock, bad_lines)
    assert "line 5: the record has no modelInput object" in message
    assert "line 6: the record is not a JSON object" in message
    # Geography prefixes and model ARNs are accepted
    assert create_job(bedrock, good, name="geo", model="eu.anthropic.claude-3-haiku-20240307-v1:0")
    arn_model = "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-70b-instruct-v1:0"
    assert create_job(bedrock, good, name="arn", model=arn_model)


def test_validation_can_fail_the_job_while_validating_as_bedrock_reports_it(
    bedrock: Any, s3: Any, clock: FakeClock, emulator: ProviderEmulator
) -> None:
    bedrock_emulation = emulation(emulator)
    bedrock_emulation.validate_at_create = False
    bedrock_emulation.min_records = 10
    arn = create_job(bedrock, put_records(s3, "in/small.jsonl", records(4)))
    assert get(bedrock, arn)["status"] == "Submitted"
    clock.advance(5)
    assert get(bedrock, arn)["status"] == "Validating"
    clock.advance(5)
    job = get(bedrock, arn)
    assert job["status"] == "Failed"
    assert "4 records, fewer than the minimum of 10 records" in job["message"]
    assert job["endTime"] == datetime.fromtimestamp(START + 0.1 * LATENCY, UTC)
    assert job["totalRecordCount"] == 0
    assert output_keys(s3, "out/") == []


def test_input_prefix_gives_one_output_file_per_input_file(bedrock: Any, s3: Any, emulator: ProviderEmulator) -> None:
    emulator.knobs = EmulatorKnobs(latency=0, seed=7)
    put_records(s3, "in/many/part-1.jsonl", records(2, prefix="a"))
    put_records(s3, "in/many/part-2.jsonl", records(3, prefix="b"))
    s3.put_object(Bucket=BUCKET, Key="in/many/readme.txt", Body=b"not input")
    arn = create_job(bedrock, f"s3://{BUCKET}/in/many/", output_uri=f"s3://{BUCKET}/results")
    assert get(bedrock, arn)["successRecordCount"] == 5
    prefix = f"results/{job_id(arn)}/"
    assert output_keys(s3, "results/") == [
        f"{prefix}manifest.json.out",
        f"{prefix}part-1.jsonl.out",
        f"{prefix}part-2.jsonl.out",
    ]
    assert {line["recordId"] for line in read_lines(s3, f"{prefix}part-2.jsonl.out")} == {
        "b00000000",
        "b00000001",
        "b00000002",
    }


def test_list_filters_sorts_and_pages(bedrock: Any, s3: Any, clock: FakeClock) -> None:
    uri = put_records(s3, "in/batch.jsonl", records(3))
    arns = []
    for i in range(5):
        arns.append(create_job(bedrock, uri, name=f"{'nightly' if i % 2 else 'adhoc'}-{i}"))
        clock.advance(10)
    bedrock.stop_model_invocation_job(jobIdentifier=arns[1])

    def names(**params: Any) -> list[str]:
        pages = list(bedrock.get_paginator("list_model_invocation_jobs").paginate(**params))
        for page in pages:
            check_shape(bedrock, "ListModelInvocationJobs", page)
        return [job["jobName"] for page in pages for job in page["invocationJobSummaries"]]

    # Newest first by default, pages of maxResults joined by nextToken
    first = bedrock.list_model_invocation_jobs(maxResults=2)
    assert len(first["invocationJobSummaries"]) == 2
    assert first["nextToken"]
    assert names(PaginationConfig={"PageSize": 2}) == ["adhoc-4", "nightly-3", "adhoc-2", "nightly-1", "adhoc-0"]
    assert names(sortOrder="Ascending") == ["adhoc-0", "nightly-1", "adhoc-2", "nightly-3", "adhoc-4"]
    assert names(nameContains="nightly") == ["nightly-3", "nightly-1"]
    assert names(statusEquals="Stopping") == ["nightly-1"]
    # Created at START, +10, ..., +40; the clock is now at +50
    after = datetime.fromtimestamp(START + 15, UTC)
    before = datetime.fromtimestamp(START + 35, UTC)
    assert names(submitTimeAfter=after, submitTimeBefore=before) == ["nightly-3", "adhoc-2"]
    clock.advance(LATENCY)
    assert names(statusEquals="Completed") == ["adhoc-4", "nightly-3", "adhoc-2", "adhoc-0"]
    assert names(statusEquals="Stopped") == ["nightly-1"]
    # A token only pages the query it came from
    code, _ = error_of(bedrock.list_model_invocation_jobs, nextToken=first["nextToken"], nameContains="adhoc")
    assert code == "ValidationException"
    code, _ = error_of(bedrock.list_model_invocation_jobs, statusEquals="Done")
    assert code == "ValidationException"


def test_stop_keeps_the_records_finished_before_it(bedrock: Any, s3: Any, clock: FakeClock) -> None:
    arn = create_job(bedrock, put_records(s3, "in/batch.jsonl", records(40)))
    clock.advance(50)
    running = get(bedrock, arn)
    assert running["status"] == "InProgress"
    done_at_stop = running["processedRecordCount"]
    assert 0 < done_at_stop < 40

    assert bedrock.stop_model_invocation_job(jobIdentifier=arn)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert get(bedrock, arn)["status"] == "Stopping"
    bedrock.stop_model_invocation_job(jobIdentifier=job_id(arn))  # a second stop is harmless
    clock.advance(1)
    job = get(bedrock, arn)
    assert job["status"] == "Stopped"
    assert job["processedRecordCount"] == done_at_stop == job["successRecordCount"]
    lines = read_lines(s3, f"out/{job_id(arn)}/batch.jsonl.out")
    assert len(lines) == done_at_stop

    code, message = error_of(bedrock.stop_model_invocation_job, jobIdentifier=put_arn_of_ended_job(bedrock, s3, clock))
    assert code == "ValidationException"
    assert "cannot be stopped" in message
    unknown = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abcdefabcdef"
    assert error_of(bedrock.stop_model_invocation_job, jobIdentifier=unknown)[0] == "ResourceNotFoundException"
    assert error_of(bedrock.get_model_invocation_job, jobIdentifier=unknown)[0] == "ResourceNotFoundException"
    assert error_of(bedrock.get_model_invocation_job, jobIdentifier="not/a job")[0] == "ValidationException"


def put_arn_of_ended_job(bedrock: Any, s3: Any, clock: FakeClock) -> str:
    arn = create_job(bedrock, put_records(s3, "in/other.jsonl", records(2)), name="ended")
    clock.advance(LATENCY)
    assert get(bedrock, arn)["status"] == "Completed"
    return arn


def test_failure_rate_gives_error_lines_in_a_completed_job(bedrock: Any, s3: Any, emulator: ProviderEmulator) -> None:
    emulator.knobs = EmulatorKnobs(latency=0, failure_rate=0.5, seed=3)
    arn = create_job(bedrock, put_records(s3, "in/batch.jsonl", records(40)))
    job = get(bedrock, arn)
    # Bedrock reports a job whose records all ran as Completed, errors included (they are output lines)
    assert job["status"] == "Completed"
    lines = read_lines(s3, f"out/{job_id(arn)}/batch.jsonl.out")
    assert len(lines) == 40
    errors = [line for line in lines if "error" in line]
    codes = {line["error"]["errorCode"] for line in errors}
    assert codes == {400, 500}
    for line in errors:
        assert set(line) == {"recordId", "modelInput", "error"}
        assert line["error"]["errorMessage"]
    assert job["errorRecordCount"] == len(errors)
    assert job["successRecordCount"] == 40 - len(errors)
    manifest = orjson.loads(s3.get_object(Bucket=BUCKET, Key=f"out/{job_id(arn)}/manifest.json.out")["Body"].read())
    assert manifest["errorRecordCount"] == len(errors)
    assert manifest["processedRecordCount"] == 40


@pytest.mark.parametrize(("before_start", "status"), [(0.0, "PartiallyCompleted"), (1.0, "Expired")])
def test_expiring_jobs_time_out_partly_run_or_never_started(
    bedrock: Any, s3: Any, clock: FakeClock, emulator: ProviderEmulator, before_start: float, status: str
) -> None:
    emulator.knobs = EmulatorKnobs(latency=LATENCY, expire_rate=1.0, seed=7)
    emulation(emulator).expire_before_start_rate = before_start
    arn = create_job(bedrock, put_records(s3, "in/batch.jsonl", records(40)))
    queued = create_job(bedrock, put_records(s3, "in/queued.jsonl", records(40)), name="stopped-in-queue")
    clock.advance(50)
    assert get(bedrock, arn)["status"] == ("InProgress" if status == "PartiallyCompleted" else "Scheduled")
    bedrock.stop_model_invocation_job(jobIdentifier=queued)
    clock.advance(1)
    stopped = get(bedrock, queued)
    assert stopped["status"] == "Stopped"
    assert (stopped["processedRecordCount"] == 0) is (status == "Expired")
    clock.advance(LATENCY)
    job = get(bedrock, arn)
    assert job["status"] == status
    keys = output_keys(s3, f"out/{job_id(arn)}/")
    if status == "Expired":
        assert keys == []
        assert job["processedRecordCount"] == 0
    else:
        lines = read_lines(s3, f"out/{job_id(arn)}/batch.jsonl.out")
        assert 0 < len(lines) == job["processedRecordCount"] < 40


def test_transient_errors_are_retried_by_botocore(emulator: ProviderEmulator, s3: Any) -> None:
    uri = put_records(s3, "in/batch.jsonl", records(3))
    emulator.knobs = EmulatorKnobs(latency=0, transient_error_rate=0.3, seed=2)
    bare = bedrock_client(emulator, attempts=1)
    errors = []
    for _ in range(12):
        try:
            bare.list_model_invocation_jobs()
        except ClientError as exc:
            errors.append((exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]))
    assert set(errors) == {("ThrottlingException", 429), ("InternalServerException", 500)}

    patient = bedrock_client(emulator, attempts=10)
    arns = [create_job(patient, uri, name=f"job-{i}") for i in range(3)]
    assert all(patient.get_model_invocation_job(jobIdentifier=arn)["status"] == "Completed" for arn in arns)
    # Retried creates reuse botocore's token: still one job each
    assert len(patient.list_model_invocation_jobs()["invocationJobSummaries"]) == 3


def test_raw_responses_use_the_model_members_and_aws_error_shape(
    bedrock: Any, s3: Any, emulator: ProviderEmulator
) -> None:
    arn = create_job(bedrock, put_records(s3, "in/batch.jsonl", records(3)))
    members = set(bedrock.meta.service_model.shape_for("GetModelInvocationJobResponse").members)
    status, headers, body = signed_get(f"{emulator.base_url}/model-invocation-job/{quote(arn, safe='')}")
    assert status == 200
    raw = orjson.loads(body)
    assert set(raw) <= members
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", raw["submitTime"])
    assert {k.lower() for k in headers} >= {"x-amzn-requestid"}

    status, headers, body = signed_get(f"{emulator.base_url}/model-invocation-job/abcdefabcdef")
    assert status == 404
    assert headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
    assert set(orjson.loads(body)) == {"message"}

    # Unsigned requests are refused as AWS does
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{emulator.base_url}/model-invocation-jobs")
    assert caught.value.code == 403
    assert caught.value.headers["x-amzn-ErrorType"] == "AccessDeniedException"


def test_output_that_cannot_be_written_fails_the_job(bedrock: Any, s3: Any, emulator: ProviderEmulator) -> None:
    emulator.knobs = EmulatorKnobs(latency=0, seed=7)
    arn = create_job(bedrock, put_records(s3, "in/batch.jsonl", records(3)), output_uri="s3://no-such-bucket/out/")
    job = get(bedrock, arn)
    assert job["status"] == "Failed"
    assert "Could not write the output" in job["message"]


# -- BedrockProvider end to end -----------------------------------------------------------------------


MODEL = "us.anthropic.claude-3-5-haiku-20241022-v1:0"


@pytest.fixture
def provider(emulator: ProviderEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[BedrockProvider]:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", emulator.base_url)
    aws.reset()
    settings = ProviderSettings(
        name="bedrock",
        limits=BatchLimits(max_requests=50_000, max_bytes=190 * 1024 * 1024, min_requests=2),
        role_arn=ROLE,
        bucket=BUCKET,
    )
    yield BedrockProvider(settings)
    aws.reset()


def custom_id(i: int) -> str:
    return f"{i:04d}-" + "x" * 59  # 64 characters


def batch_file(n: int, make: Any = claude_input) -> str:
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    with os.fdopen(fd, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"recordId": custom_id(i), "modelInput": make(f"question {i}")}) + b"\n")
    return path


def ref(key: str = "bedrock-0001", n: int = 30, job: str = "job-0123456789abcdef0123") -> BatchRef:
    return BatchRef(job_id=job, key=key, group=MODEL, model=MODEL, requests=n, intent_at=START)


def test_provider_sends_reads_and_maps_outcomes(
    provider: BedrockProvider, s3: Any, clock: FakeClock, emulator: ProviderEmulator
) -> None:
    emulator.knobs = EmulatorKnobs(latency=LATENCY, failure_rate=0.4, seed=5)
    batch = ref()
    path = batch_file(30)
    try:
        arn = provider.create(batch, path)
        # A retried create (same job and batch key) is the same Bedrock job
        assert provider.create(batch, path) == arn
    finally:
        os.unlink(path)
    assert JOB_ARN.fullmatch(arn)

    # The records went to our bucket with 11-character record ids, and the custom_ids beside them
    prefix = f"work/{batch.job_id}/bedrock/{batch.key}/"
    sent = read_lines(s3, f"{prefix}records.jsonl")
    assert [line["recordId"] for line in sent] == [record_id(i) for i in range(30)]
    assert all(len(line["recordId"]) == 11 for line in sent)
    assert sent[7]["modelInput"] == claude_input("question 7")
    ids = s3.get_object(Bucket=BUCKET, Key=f"{prefix}ids.txt")["Body"].read().decode().splitlines()
    assert ids == [custom_id(i) for i in range(30)]
    job = provider.bedrock.get_model_invocation_job(jobIdentifier=arn)
    assert job["jobName"] == job_name(batch)
    assert len(job["jobName"]) <= 63
    assert job["modelId"] == MODEL
    assert job["timeoutDurationInHours"] == 24
    stats = emulator.stats()
    assert stats["batches"][-1]["metadata"] == {"batchdrop:job": batch.job_id, "batchdrop:batch": batch.key}
    # The stats count the user's custom_ids (from ids.txt), once: the retried create made no second job
    assert stats["batches"][-1]["custom_ids"] == ids
    assert stats["requests_submitted"] == dict.fromkeys(ids, 1)

    # Orphans are found by name; excluded ids and other batches are not
    assert provider.find(batch, frozenset()) == arn
    assert provider.find(batch, frozenset({arn})) is None
    assert provider.find(ref(key="bedrock-0002"), frozenset()) is None

    status = provider.status(arn)
    assert (status.state, status.provider_status, status.total) == (m.VALIDATING, "Submitted", None)
    clock.advance(50)
    status = provider.status(arn)
    assert (status.state, status.total) == (m.IN_PROGRESS, 30)
    assert status.done is not None
    assert 0 < status.done < 30
    clock.advance(LATENCY)
    status = provider.status(arn)
    assert status.terminal
    assert (status.state, status.provider_status) == (m.COMPLETED, "Completed")
    assert status.raw["output_uri"] == f"s3://{BUCKET}/{prefix}out/"

    outcomes = list(provider.outcomes(arn, status))
    assert sorted(o.custom_id for o in outcomes) == ids
    failed = [o for o in outcomes if not o.ok]
    assert status.failed == len(failed) > 0
    for outcome in outcomes:
        n = int(outcome.custom_id[:4])
        if outcome.ok:
            assert outcome.response is not None
            assert outcome.response["content"][0]["text"] == f"echo: question {n}"
        else:
            assert outcome.code in (m.REQUEST_ERROR, m.SERVER_ERROR)
            assert outcome.message
            assert "modelInput" not in outcome.detail
            expected = m.SERVER_ERROR if outcome.detail["error"]["errorCode"] >= 500 else m.REQUEST_ERROR
            assert outcome.code == expected
    assert {o.code for o in failed} == {m.REQUEST_ERROR, m.SERVER_ERROR}


def test_provider_cancel_and_terminal_states(
    provider: BedrockProvider, clock: FakeClock, emulator: ProviderEmulator
) -> None:
    path = batch_file(20)
    try:
        # Stopped: cancel while in progress; the records run before it are kept
        stopped = provider.create(ref(key="stop"), path)
        clock.advance(50)
        provider.cancel(stopped)
        status = provider.status(stopped)
        assert (status.state, status.provider_status) == (m.CANCELLING, "Stopping")
        clock.advance(1)
        status = provider.status(stopped)
        assert (status.state, status.provider_status) == (m.BATCH_CANCELED, "Stopped")
        kept = list(provider.outcomes(stopped, status))
        assert 0 < len(kept) < 20
        assert all(o.custom_id.endswith("x" * 59) for o in kept)

        # Expired (never started) and PartiallyCompleted (timed out while running): both expire the rest
        emulator.knobs = EmulatorKnobs(latency=LATENCY, expire_rate=1.0, seed=7)
        for before_start, provider_status, some in ((1.0, "Expired", False), (0.0, "PartiallyCompleted", True)):
            emulation(emulator).expire_before_start_rate = before_start
            arn = provider.create(ref(key=f"expire-{provider_status}"), path)
            clock.advance(LATENCY)
            status = provider.status(arn)
            assert (status.state, status.provider_status) == (m.BATCH_EXPIRED, provider_status)
            assert bool(list(provider.outcomes(arn, status))) is some

        # Failed: Bedrock's validation refused the input while Validating
        emulation(emulator).validate_at_create = False
        emulation(emulator).min_records = 100
        failed = provider.create(ref(key="too-small"), path)
        clock.advance(LATENCY)
        status = provider.status(failed)
        assert (status.state, status.provider_status) == (m.FAILED, "Failed")
        assert status.error is not None
        assert "fewer than the minimum of 100" in status.error
        assert list(provider.outcomes(failed, status)) == []
    finally:
        os.unlink(path)


def test_provider_create_surfaces_a_refusal(provider: BedrockProvider, emulator: ProviderEmulator) -> None:
    emulation(emulator).validate_at_create = True  # the switch: Validating's checks answered at create
    emulation(emulator).min_records = 100
    path = batch_file(5)
    try:
        with pytest.raises(ClientError) as caught:
            provider.create(ref(key="small"), path)
    finally:
        os.unlink(path)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "fewer than the minimum of 100" in caught.value.response["Error"]["Message"]


def test_provider_streams_a_multipart_upload(provider: BedrockProvider, s3: Any, emulator: ProviderEmulator) -> None:
    # Over s3transfer's 8 MB multipart threshold, so the rewriter feeds several parts
    emulator.knobs = EmulatorKnobs(latency=0, seed=7)
    filler = "y" * 1000
    path = batch_file(9000, make=lambda text: claude_input(f"{text} {filler}"))
    try:
        assert os.path.getsize(path) > 9 * 1024 * 1024
        arn = provider.create(ref(key="big", n=9000), path)
    finally:
        os.unlink(path)
    prefix = "work/job-0123456789abcdef0123/bedrock/big/"
    head = s3.head_object(Bucket=BUCKET, Key=f"{prefix}records.jsonl")
    assert head["ETag"].strip('"').endswith("-2")  # two parts
    status = provider.status(arn)
    assert status.state == m.COMPLETED
    assert status.total == 9000
    seen = {o.custom_id for o in provider.outcomes(arn, status) if o.ok}
    assert len(seen) == 9000
    assert custom_id(8999) in seen


def test_the_model_id_pattern_is_botocores() -> None:
    from batchdrop.local.emulator.bedrock import MODEL_ID

    model = botocore.session.get_session().get_service_model("bedrock")
    request = model.operation_model("CreateModelInvocationJob").input_shape
    assert request is not None
    shape = request.members["modelId"]
    assert MODEL_ID.pattern == shape.metadata["pattern"]


# -- production truths (issue 15) -------------------------------------------------------------------


def test_record_counts_fail_the_job_while_validating_by_default(
    bedrock: Any, s3: Any, clock: FakeClock, emulator: ProviderEmulator
) -> None:
    emulation(emulator).min_records = 3  # validate_at_create left as the emulator has it
    arn = create_job(bedrock, put_records(s3, "in/two.jsonl", records(2)))
    assert get(bedrock, arn)["status"] == "Submitted"
    clock.advance(LATENCY * 0.1)
    job = get(bedrock, arn)
    assert job["status"] == "Failed"
    assert "2 records, fewer than the minimum of 3 records" in job["message"]


def test_the_input_is_read_as_the_jobs_role(
    bedrock: Any, s3: Any, clock: FakeClock, emulator: ProviderEmulator, provider: BedrockProvider
) -> None:
    uri = put_records(s3, "in/records.jsonl", records(3))
    # A role that exists but may read only another prefix; and a role that does not exist.
    narrow = "arn:aws:iam::123456789012:role/narrow"
    grant_role(narrow, f"arn:aws:s3:::{BUCKET}/other/*")
    missing = "arn:aws:iam::123456789012:role/missing"
    for name, role in (("narrow", narrow), ("missing", missing)):
        arn = bedrock.create_model_invocation_job(
            jobName=name,
            roleArn=role,
            modelId=CLAUDE,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": uri}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{BUCKET}/out/"}},
        )["jobArn"]
        clock.advance(LATENCY * 0.1)
        status = provider.status(arn)
        assert (status.state, status.provider_status) == (m.FAILED, "Failed")
        assert status.error is not None
        assert "Access denied" in status.error
        assert role in status.error
    # An explicit Deny wins over the Allow.
    iam = boto3.client("iam")
    deny = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": f"arn:aws:s3:::{BUCKET}/in/*"}],
    }
    iam.put_role_policy(RoleName="bedrock-batch", PolicyName="deny", PolicyDocument=orjson.dumps(deny).decode())
    arn = create_job(bedrock, uri, name="denied")
    clock.advance(LATENCY * 0.1)
    assert "Access denied" in get(bedrock, arn)["message"]
    iam.delete_role_policy(RoleName="bedrock-batch", PolicyName="deny")
    arn = create_job(bedrock, uri, name="allowed")
    clock.advance(LATENCY)
    assert get(bedrock, arn)["status"] == "Completed"


def test_concurrent_jobs_quota_is_over_quota_not_refused(
    s3: Any, clock: FakeClock, emulator: ProviderEmulator, provider: BedrockProvider
) -> None:
    emulation(emulator).max_concurrent_jobs = 1
    paths = [batch_file(3) for _ in range(3)]
    try:
        provider.create(ref(key="one", n=3), paths[0])
        with pytest.raises(ClientError) as caught:
            provider.create(ref(key="two", n=3), paths[1])
        assert caught.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert provider.over_quota(caught.value)
        assert not provider.refused(caught.value)
        # The quota is per model.
        provider.create(BatchRef("job-0123456789abcdef0123", "nova", NOVA, NOVA, 3, START), batch_file(3, nova_input))
        clock.advance(LATENCY)
        provider.create(ref(key="two", n=3), paths[1])
    finally:
        for path in paths:
            os.unlink(path)
    throttled = ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "CreateModelInvocationJob"
    )
    assert provider.over_quota(throttled)
    assert not provider.refused(throttled)


@pytest.mark.parametrize(("window", "hours"), [(24, 24), (48, 48), (36.5, 37), (6, 24), (500, 168)])
def test_the_window_is_the_jobs_timeout_within_bedrocks_range(
    provider: BedrockProvider, window: float, hours: int
) -> None:
    provider.settings = dataclasses.replace(provider.settings, window_hours=window)
    path = batch_file(3)
    try:
        arn = provider.create(ref(key="w", n=3), path)
    finally:
        os.unlink(path)
    assert provider.bedrock.get_model_invocation_job(jobIdentifier=arn)["timeoutDurationInHours"] == hours


def test_cleanup_deletes_the_batch_records_under_work(s3: Any, clock: FakeClock, provider: BedrockProvider) -> None:
    paths = [batch_file(3), batch_file(3)]
    try:
        arn = provider.create(ref(key="gone", n=3), paths[0])
        provider.create(ref(key="kept", n=3), paths[1])
    finally:
        for path in paths:
            os.unlink(path)
    clock.advance(LATENCY)
    status = provider.status(arn)
    assert len(list(provider.outcomes(arn, status))) == 3
    prefix = "work/job-0123456789abcdef0123/bedrock/"
    before = output_keys(s3, prefix)
    assert len([k for k in before if "/gone/" in k]) == 4  # records, ids, the .out and the manifest
    provider.cleanup(arn, status)
    after = output_keys(s3, prefix)
    assert after == [k for k in before if "/gone/" not in k]
    assert after
    provider.cleanup(arn, status)  # twice: nothing left, no error


def test_state_changes_are_events_in_the_documented_shape(
    bedrock: Any, s3: Any, clock: FakeClock, emulator: ProviderEmulator
) -> None:
    arn = create_job(bedrock, put_records(s3, "in/records.jsonl", records(3)))
    (event,) = emulation(emulator).state_changes()
    assert {k: event[k] for k in ("version", "source", "detail-type", "account", "region", "resources")} == {
        "version": "0",
        "source": "aws.bedrock",
        "detail-type": "Batch Inference Job State Change",
        "account": "123456789012",
        "region": "us-east-1",
        "resources": [arn],
    }
    assert event["detail"]["batchJobArn"] == arn
    assert event["detail"]["batchJobName"] == "job-1"
    assert event["detail"]["batchModelId"] == CLAUDE
    assert event["detail"]["status"] == "Submitted"
    assert emulation(emulator).state_changes() == []  # nothing changed since
    clock.advance(LATENCY)
    (ended,) = emulation(emulator).state_changes()
    assert ended["detail"]["status"] == "Completed"
    assert (ended["detail"]["processedRecordCount"], ended["detail"]["successRecordCount"]) == (3, 3)
    assert ended["id"] != event["id"]
