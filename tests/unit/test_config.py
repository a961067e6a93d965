"""Settings.from_env: defaults, and an error naming the variable for each malformed setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchdrop import config
from batchdrop.config import (
    DEFAULT_ROUTES,
    MB,
    PROVIDER_DEFAULT_LIMITS,
    BatchLimits,
    ConfigError,
    Settings,
    parse_routes,
)

BASE = {
    "BATCHDROP_BUCKET": "my-bucket",
    "BATCHDROP_TABLE": "my-table",
    "BATCHDROP_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:batchdrop",
    "BATCHDROP_COMPLETION_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/complete",
}


def settings(**extra: str) -> Settings:
    return Settings.from_env({**BASE, **extra})


def test_defaults() -> None:
    s = settings()
    assert (s.bucket, s.table) == ("my-bucket", "my-table")
    assert s.on_invalid == "skip"
    assert s.max_attempts == 2
    assert sorted(s.providers) == ["anthropic", "openai"]
    assert {n: p.limits for n, p in s.providers.items()} == {n: PROVIDER_DEFAULT_LIMITS[n] for n in s.providers}
    assert s.routes == DEFAULT_ROUTES
    assert s.anthropic_default_max_tokens == 1024
    assert (s.poll_min_seconds, s.poll_max_seconds) == (30, 1800)


@pytest.mark.parametrize("name", sorted(BASE))
@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_required_setting_names_the_variable(name: str, value: str | None) -> None:
    env = dict(BASE)
    if value is None:
        del env[name]
    else:
        env[name] = value
    with pytest.raises(ConfigError, match=f"{name} is not set"):
        Settings.from_env(env)


def test_on_invalid_reject_is_accepted() -> None:
    assert settings(BATCHDROP_ON_INVALID="reject").on_invalid == "reject"


def test_bad_on_invalid_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"BATCHDROP_ON_INVALID='drop'.*skip, reject"):
        settings(BATCHDROP_ON_INVALID="drop")


def test_unknown_provider_names_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"BATCHDROP_PROVIDERS names 'mistral'.*anthropic, azure, bedrock, gemini, openai"
    ):
        settings(BATCHDROP_PROVIDERS="openai, mistral")


def test_bedrock_needs_its_service_role() -> None:
    with pytest.raises(ConfigError, match=r"BATCHDROP_BEDROCK_ROLE_ARN is not set"):
        settings(BATCHDROP_PROVIDERS="bedrock")


def test_bedrock_minimum_and_fallback_are_read() -> None:
    got = settings(
        BATCHDROP_PROVIDERS="bedrock,anthropic",
        BATCHDROP_BEDROCK_ROLE_ARN="arn:aws:iam::1:role/r",
        BATCHDROP_BEDROCK_MIN_RECORDS="1000",
        BATCHDROP_BEDROCK_FALLBACK="anthropic",
    ).providers["bedrock"]
    assert (got.limits.min_requests, got.fallback, got.role_arn) == (1000, "anthropic", "arn:aws:iam::1:role/r")
    assert got.bucket  # Bedrock's jobs read and write our bucket


def test_bedrock_fallback_must_be_an_enabled_provider() -> None:
    with pytest.raises(ConfigError, match=r"BATCHDROP_BEDROCK_FALLBACK='anthropic'"):
        settings(
            BATCHDROP_PROVIDERS="bedrock",
            BATCHDROP_BEDROCK_ROLE_ARN="arn:aws:iam::1:role/r",
            BATCHDROP_BEDROCK_FALLBACK="anthropic",
        )


def test_bedrock_minimum_above_maximum_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"MIN_RECORDS=60000 is more than"):
        settings(
            BATCHDROP_PROVIDERS="bedrock",
            BATCHDROP_BEDROCK_ROLE_ARN="arn:aws:iam::1:role/r",
            BATCHDROP_BEDROCK_MIN_RECORDS="60000",
        )


def test_providers_can_be_narrowed() -> None:
    assert list(settings(BATCHDROP_PROVIDERS=" anthropic ").providers) == ["anthropic"]


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("BATCHDROP_MAX_ATTEMPTS", "two", "is not a whole number"),
        ("BATCHDROP_MAX_ATTEMPTS", "0", "must be at least 1"),
        ("BATCHDROP_ANTHROPIC_DEFAULT_MAX_TOKENS", "1.5", "is not a whole number"),
        ("BATCHDROP_POLL_MIN_SECONDS", "-1", "must be at least 0"),
        ("BATCHDROP_OPENAI_MAX_REQUESTS", "lots", "is not a whole number"),
        ("BATCHDROP_OPENAI_MAX_REQUESTS", "0", "must be at least 1"),
        ("BATCHDROP_ANTHROPIC_MAX_BYTES", "1023", "must be at least 1024"),
    ],
)
def test_malformed_number_names_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**{name: value})
    assert name in str(info.value)
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("BATCHDROP_OPENAI_MAX_REQUESTS", "50001"), ("BATCHDROP_ANTHROPIC_MAX_BYTES", str(256 * MB + 1))],
)
def test_limits_above_the_providers_maxima_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match="set them lower") as info:
        settings(**{name: value})
    assert name in str(info.value)


def test_limits_can_be_set_lower() -> None:
    s = settings(BATCHDROP_OPENAI_MAX_REQUESTS="10", BATCHDROP_OPENAI_MAX_BYTES="4096")
    assert s.providers["openai"].limits == BatchLimits(max_requests=10, max_bytes=4096, max_inputs=50_000)
    assert s.providers["anthropic"].limits == PROVIDER_DEFAULT_LIMITS["anthropic"]


def test_provider_secret_and_base_url() -> None:
    s = settings(
        BATCHDROP_OPENAI_SECRET_ARN="arn:aws:secretsmanager:eu-west-1:123456789012:secret:openai",
        BATCHDROP_ANTHROPIC_BASE_URL="http://127.0.0.1:9999",
    )
    assert s.providers["openai"].secret_arn == "arn:aws:secretsmanager:eu-west-1:123456789012:secret:openai"
    assert s.providers["openai"].base_url is None
    assert s.providers["anthropic"].base_url == "http://127.0.0.1:9999"


def test_routes_from_the_environment_come_before_the_defaults() -> None:
    s = settings(BATCHDROP_ROUTES="llama=openai, gpt-oss = anthropic")
    assert s.routes == (("llama", "openai"), ("gpt-oss", "anthropic"), *DEFAULT_ROUTES)


@pytest.mark.parametrize("raw", ["llama", "=openai", "llama=", "llama=  ,x"])
def test_malformed_route_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"BATCHDROP_ROUTES.*model-prefix=provider"):
        parse_routes(raw)


def test_empty_routes_give_the_defaults() -> None:
    assert parse_routes(" , ") == DEFAULT_ROUTES


def test_azure_needs_its_endpoint() -> None:
    with pytest.raises(ConfigError, match="BATCHDROP_AZURE_BASE_URL"):
        settings(BATCHDROP_PROVIDERS="azure")
    azure = settings(BATCHDROP_PROVIDERS="azure", BATCHDROP_AZURE_BASE_URL="https://x.openai.azure.com").providers
    assert azure["azure"].limits.max_requests == 100_000


def test_spill_files_go_where_batchdrop_tmpdir_says(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(config.ENV_TMPDIR, str(tmp_path))
    assert config.tmpdir() == str(tmp_path)
    monkeypatch.setenv(config.ENV_TMPDIR, "")
    assert config.tmpdir() is None, "empty means the system's temp folder"
    monkeypatch.delenv(config.ENV_TMPDIR)
    assert config.tmpdir() is None


def test_enqueued_caps_are_read_by_model_and_for_every_model_together() -> None:
    s = settings(BATCHDROP_OPENAI_MAX_ENQUEUED="gpt-4o=90000, 2000000", BATCHDROP_ANTHROPIC_MAX_ENQUEUED="100000")
    openai, anthropic = s.providers["openai"], s.providers["anthropic"]
    assert openai.quota_pool("gpt-4o") == ("gpt-4o", 90_000)
    assert openai.quota_pool("gpt-4o-mini") == ("", 2_000_000)
    assert anthropic.quota_pool("claude-haiku-4-5") == ("", 100_000)
    assert settings().providers["openai"].quota_pool("gpt-4o") is None


def test_two_batches_fit_the_smallest_pool_at_once() -> None:
    # A batch larger than the quota would be refused "for now" every time, and one as large as the quota
    # would wait for an empty pool: the planner's limits shrink to half the smallest cap.
    s = settings(BATCHDROP_OPENAI_MAX_ENQUEUED="gpt-4o=90000,2000000", BATCHDROP_ANTHROPIC_MAX_ENQUEUED="500")
    assert s.providers["openai"].limits.max_bytes == 45_000 * config.BYTES_PER_TOKEN
    assert s.providers["anthropic"].limits.max_requests == 250


@pytest.mark.parametrize(
    ("value", "words"),
    [("gpt-4o=lots", "model=N or N"), ("=5", "names no model"), ("0", "at least 1"), ("1e6", "model=N or N")],
)
def test_a_malformed_cap_names_the_variable_and_the_form(value: str, words: str) -> None:
    with pytest.raises(ConfigError, match="BATCHDROP_OPENAI_MAX_ENQUEUED") as info:
        settings(BATCHDROP_OPENAI_MAX_ENQUEUED=value)
    assert words in str(info.value)


def test_windows_follow_each_provider_and_can_be_set() -> None:
    azure = {"BATCHDROP_AZURE_BASE_URL": "https://x.openai.azure.com", "BATCHDROP_AZURE_API_VERSION": "2024-10-21"}
    s = settings(BATCHDROP_PROVIDERS="openai,azure,gemini", BATCHDROP_AZURE_WINDOW_HOURS="72", **azure)
    assert s.providers["openai"].window_hours == 24
    assert s.providers["gemini"].window_hours == 48
    assert s.providers["azure"].window_hours == 72
    with pytest.raises(ConfigError, match="BATCHDROP_OPENAI_WINDOW_HOURS='soon'"):
        settings(BATCHDROP_OPENAI_WINDOW_HOURS="soon")
