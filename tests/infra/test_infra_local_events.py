"""The local dispatcher routes Bedrock's job state changes as the deployed rule does: the same event
pattern, to the same function (batchdrop.local.dispatcher's BEDROCK_RULE_PATTERN and _TARGET)."""

from __future__ import annotations

from batchdrop.local.dispatcher import BEDROCK_RULE_PATTERN, BEDROCK_RULE_TARGET
from tests.infra.synth_support import synth


def test_the_local_bedrock_route_is_the_deployed_rule() -> None:
    stack = synth(providers="bedrock")
    (rule,) = [r for r in stack.resources("AWS::Events::Rule").values() if "EventPattern" in r["Properties"]]
    assert rule["Properties"]["EventPattern"] == BEDROCK_RULE_PATTERN
    (target,) = rule["Properties"]["Targets"]
    target_id, _ = stack.function(BEDROCK_RULE_TARGET)
    assert target["Arn"] == {"Fn::GetAtt": [target_id, "Arn"]}
