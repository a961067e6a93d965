"""cdk-nag's AwsSolutions pack and cfn-lint on the synthesized stack; the context settings' checks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint

from infra.app import cdk_json_context
from infra.settings import CONTEXT_KEYS, DeploySettings, LimitOverride, SettingsError
from tests.infra.synth_support import nag_violations, synth


def test_cdk_nag_reports_nothing_unacknowledged() -> None:
    assert nag_violations() == []


def test_cdk_nag_reports_nothing_unacknowledged_with_every_option_set() -> None:
    assert (
        nag_violations(
            providers="openai",
            openai_max_bytes="1048576",
            output_retention_days="365",
            alarm_email="ops@example.com",
            log_retention_days="90",
        )
        == []
    )


def test_cfn_lint_reports_no_errors() -> None:
    template = synth().path.read_text()

    matches = lint(s=template, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))

    errors = [f"{m.rule.id} {m.message} ({m.path_string})" for m in matches if m.rule.id.startswith("E")]
    assert errors == []


def test_cdk_json_lists_every_setting_with_the_code_defaults() -> None:
    context = cdk_json_context()
    user_keys = {k for k in context if not k.startswith("@")}

    assert user_keys == set(CONTEXT_KEYS) - {"stack_name"}
    assert DeploySettings.from_context(context.get) == DeploySettings()
    nothing: dict[str, Any] = {}
    assert DeploySettings.from_context(nothing.get) == DeploySettings()


def test_command_line_strings_are_accepted() -> None:
    cli: dict[str, Any] = {
        "providers": "anthropic",
        "anthropic_max_requests": "500",
        "max_attempts": "3",
        "poll_rate_minutes": "1",
        "on_invalid": "reject",
        "output_retention_days": "",
    }

    settings = DeploySettings.from_context(cli.get)

    assert settings.providers == ("anthropic",)
    assert settings.limits == {"anthropic": LimitOverride(max_requests=500)}
    assert (settings.max_attempts, settings.poll_rate_minutes, settings.on_invalid) == (3, 1, "reject")
    assert settings.output_retention_days is None


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"providers": "openai,mistral"}, "known providers are anthropic, azure, bedrock, gemini, openai"),
        ({"providers": "bedrock", "bedrock_min_records": "0"}, "bedrock_min_records=0 must be at least 1"),
        ({"providers": ""}, "enable at least one"),
        ({"poll_rate_minutes": "0"}, "poll_rate_minutes=0 must be at least 1"),
        ({"poll_rate_minutes": "five"}, "is not a whole number"),
        ({"on_invalid": "ignore"}, "expected one of skip, reject"),
        ({"openai_max_requests": "60000"}, "at most 50000"),
        ({"log_retention_days": "10"}, "CloudWatch accepts"),
        ({"alarm_email": "ops"}, "not an email address"),
    ],
)
def test_bad_context_is_refused_with_a_clear_message(context: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        DeploySettings.from_context(context.get)


def test_settings_are_readable_json() -> None:
    # cdk.json is the documented list: it must stay plain JSON with null for "not set".
    context = cdk_json_context()
    assert json.loads(json.dumps(context)) == context


def test_azure_without_an_endpoint_is_refused() -> None:
    from infra.app import build_app
    from infra.settings import SettingsError

    with pytest.raises(SettingsError, match="azure_endpoint"):
        build_app({"providers": "azure", "aws:cdk:bundling-stacks": []})


def test_quota_caps_and_windows_reach_the_functions_checked_as_the_functions_check_them() -> None:
    settings = DeploySettings.from_context({"anthropic_max_enqueued": "100000", "openai_window_hours": "12"}.get)
    assert settings.options["anthropic"]["MAX_ENQUEUED"] == "100000"
    assert settings.options["openai"]["WINDOW_HOURS"] == "12"
    with pytest.raises(SettingsError, match=r"openai_max_enqueued='lots'.*model=N or N"):
        DeploySettings.from_context({"openai_max_enqueued": "lots"}.get)
