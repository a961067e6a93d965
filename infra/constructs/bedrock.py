"""Amazon Bedrock batch inference: the service role its jobs run as, what our functions need to run
jobs, and the EventBridge rule that makes a job's state change looked at at once; and the real-time
lane's InvokeModel, on the models the deployment names only.

Bedrock reads each job's records from, and writes its results to, work/ in our bucket; the role may
do exactly that, and invoke foundation models (directly or through cross-region inference profiles).
"""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import Annotations, Aws, CfnElement, Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct

from batchdrop import blueprint, config
from infra.settings import BEDROCK_MODEL_ID
from infra.suppressions import acknowledge

# Also what the Converse API is authorized by (ConverseStream and InvokeModelWithResponseStream are
# bedrock:InvokeModelWithResponseStream, which the real-time lane does not call).
INVOKE_ACTION = "bedrock:InvokeModel"
# The geography of a global cross-region inference profile ("global.anthropic.claude-...").
GLOBAL = "global"
JOB_ACTIONS = (
    "bedrock:CreateModelInvocationJob",
    "bedrock:GetModelInvocationJob",
    "bedrock:StopModelInvocationJob",
    "bedrock:TagResource",
)
LIST_ACTION = "bedrock:ListModelInvocationJobs"
# The service role's S3 access: a job reads its records and writes its results under work/.
OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject")
LIST_BUCKET = "s3:ListBucket"
MODEL_REASON = (
    "Bedrock batch jobs may run any foundation model the user routes to (a model id per input line), and "
    "cross-region inference profiles invoke the model in other regions: the resources are foundation "
    "models and this account's inference profiles, never anything else."
)
JOBS_REASON = (
    "Our functions create, read, stop and tag this account's model-invocation jobs in this region (their "
    "ids are Bedrock's), and ListModelInvocationJobs supports no resource-level permission: it finds a job "
    "a crashed invocation created, by name, before the id was recorded."
)
WORK_REASON = (
    "Bedrock reads a job's records from, and writes its results to, objects under work/ in our bucket "
    "(s3:GetObject, s3:PutObject; listing only with an s3:prefix under work/)."
)


ROUTED_MODEL_REASON = (
    "A cross-region inference profile (bedrock_models) runs its model in whichever region of its geography "
    "Bedrock picks, and IAM checks the foundation model there: the region is a wildcard, the model id is the "
    "profile's own, and the statement holds only under the condition bedrock:InferenceProfileArn = one of "
    "the configured profiles."
)


def model_arns() -> list[str]:
    return [
        f"arn:{Aws.PARTITION}:bedrock:*::foundation-model/*",
        f"arn:{Aws.PARTITION}:bedrock:{Aws.REGION}:{Aws.ACCOUNT_ID}:inference-profile/*",
    ]


class BedrockBatch(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.IBucket) -> None:
        super().__init__(scope, construct_id)
        job_arns = f"arn:{Aws.PARTITION}:bedrock:{Aws.REGION}:{Aws.ACCOUNT_ID}:model-invocation-job/*"
        # Only Bedrock, for jobs of this account, may assume it (the confused-deputy conditions AWS documents).
        self.service_role = iam.Role(
            self,
            "ServiceRole",
            description="batchdrop: the role Bedrock batch inference jobs run as",
            assumed_by=iam.ServicePrincipal(
                "bedrock.amazonaws.com",
                conditions={
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                    "ArnLike": {"aws:SourceArn": job_arns},
                },
            ),
            max_session_duration=Duration.hours(12),
        )
        work = f"{config.WORK_PREFIX}*"
        # What AWS documents for a batch inference service role, and no more: CDK's grant_read and
        # grant_put would add s3:GetBucket*, s3:List* on the whole bucket and the object-lock and tagging
        # puts. Listing is limited to keys under work/ (the job's input and output prefixes).
        self.service_role.add_to_policy(
            iam.PolicyStatement(actions=list(OBJECT_ACTIONS), resources=[bucket.arn_for_objects(work)])
        )
        self.service_role.add_to_policy(
            iam.PolicyStatement(
                actions=[LIST_BUCKET],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [work]}},
            )
        )
        self.service_role.add_to_policy(iam.PolicyStatement(actions=["bedrock:InvokeModel"], resources=model_arns()))
        acknowledge(
            self.service_role,
            "AwsSolutions-IAM5",
            MODEL_REASON,
            "Resource::arn:<AWS::Partition>:bedrock:*::foundation-model/*",
            "Resource::arn:<AWS::Partition>:bedrock:<AWS::Region>:<AWS::AccountId>:inference-profile/*",
        )
        acknowledge(
            self.service_role,
            "AwsSolutions-IAM5",
            WORK_REASON,
            f"Resource::<{_bucket_id(bucket)}.Arn>/{work}",
        )
        self._job_arns = job_arns

    def allow(self, functions: Iterable[lambda_.Function]) -> None:
        """What a function that creates, polls, reads or stops Bedrock jobs needs."""
        for fn in functions:
            fn.add_to_role_policy(
                iam.PolicyStatement(actions=list(JOB_ACTIONS), resources=[self._job_arns, *model_arns()])
            )
            fn.add_to_role_policy(iam.PolicyStatement(actions=[LIST_ACTION], resources=["*"]))
            self.service_role.grant_pass_role(fn.grant_principal)
            acknowledge(
                fn.role or fn,
                "AwsSolutions-IAM5",
                JOBS_REASON,
                "Resource::arn:<AWS::Partition>:bedrock:<AWS::Region>:<AWS::AccountId>:model-invocation-job/*",
                "Resource::arn:<AWS::Partition>:bedrock:*::foundation-model/*",
                "Resource::arn:<AWS::Partition>:bedrock:<AWS::Region>:<AWS::AccountId>:inference-profile/*",
                "Resource::*",
            )

    def on_state_change(self, poll: lambda_.IFunction) -> events.Rule:
        """Bedrock publishes every job state change to the default event bus: look at the job then."""
        rule = events.Rule(
            self,
            "StateChange",
            description="batchdrop: a Bedrock batch inference job changed state; the poll function looks at it",
            event_pattern=events.EventPattern(
                source=list(blueprint.BEDROCK_RULE_PATTERN["source"]),
                detail_type=list(blueprint.BEDROCK_RULE_PATTERN["detail-type"]),
            ),
        )
        rule.add_target(targets.LambdaFunction(poll, retry_attempts=2, max_event_age=Duration.hours(1)))
        return rule


def allow_invoke(fn: lambda_.Function, models: Iterable[str]) -> None:
    """bedrock:InvokeModel (and so Converse) on exactly these models, for the real-time lane.

    A model id (`amazon.nova-lite-v1:0`) is this region's foundation model. A cross-region inference
    profile (`us.anthropic.claude-...`: a geography, then the model id) is the profile in this region
    and account, and the model in every region the profile may route to (AWS's documented policy for
    geographic and global profiles), allowed only through the configured profiles."""
    partition, region, account = Aws.PARTITION, Aws.REGION, Aws.ACCOUNT_ID
    direct: list[str] = []
    profiles: list[str] = []
    routed: list[str] = []
    for model in models:
        match = BEDROCK_MODEL_ID.fullmatch(model)
        assert match, model  # checked by DeploySettings
        if match["geography"]:
            profiles.append(f"arn:{partition}:bedrock:{region}:{account}:inference-profile/{model}")
            routed.append(f"arn:{partition}:bedrock:*::foundation-model/{match['model']}")
            if match["geography"] == GLOBAL:
                # AWS documents a global profile's destination as the model with no region at all.
                routed.append(f"arn:{partition}:bedrock:::foundation-model/{match['model']}")
        else:
            direct.append(f"arn:{partition}:bedrock:{region}::foundation-model/{model}")
    if not direct and not profiles:
        Annotations.of(fn).add_warning_v2(
            "batchdrop:bedrock-models",
            "Bedrock is enabled but bedrock_models is empty: the realtime function may invoke no Bedrock "
            "model, and Bedrock requests on the real-time lane fail with AccessDenied. List the model ids "
            "(and cross-region inference profile ids) the lane may run in the context value bedrock_models.",
        )
        return
    fn.add_to_role_policy(iam.PolicyStatement(actions=[INVOKE_ACTION], resources=[*direct, *profiles]))
    if routed:
        fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=[INVOKE_ACTION],
                resources=list(dict.fromkeys(routed)),
                conditions={"ArnEquals": {"bedrock:InferenceProfileArn": profiles}},
            )
        )
        acknowledge(
            fn.role or fn,
            "AwsSolutions-IAM5",
            ROUTED_MODEL_REASON,
            *(
                f"Resource::arn:<AWS::Partition>:bedrock:*::foundation-model/{model}"
                for model in dict.fromkeys(r.rpartition("/")[2] for r in routed if ":*::" in r)
            ),
        )


def _bucket_id(bucket: s3.IBucket) -> str:
    child = bucket.node.default_child
    assert isinstance(child, CfnElement)
    return Stack.of(bucket).get_logical_id(child)
