"""Test tiers, and what makes the local stack cheap to start once per test.

Tiers (a marker each, given here by where a test lives, so test files carry none; `make <tier>` runs one):
- unit: tests/unit, in-process and without servers (moto's in-memory mock at most);
- emulator: tests/integration/test_emulator_*.py, the provider emulator's contract against each SDK;
- integration: the rest of tests/integration, the handlers against the embedded stack over HTTP;
- infra: tests/infra, the CDK app synthesized and checked (cdk-nag, cfn-lint);
- e2e: tests/e2e, the `batchdrop` command in a subprocess and chaos runs of the whole pipeline;
- smoke: tests/smoke, a deployed stack with real providers (`make smoke`; skips without one).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import botocore.loaders
import botocore.session
import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
# Most tests are about the batch lane, with files far under the auto lane's 100 requests that would
# send them real-time: they run with the stack's lane set to `batch` (the handlers, `batchdrop` in a
# subprocess and `validate` all read it). A test of the lanes sets its own (StackOptions.lane, --lane,
# or the file's metadata, which comes first).
os.environ.setdefault("BATCHDROP_LANE", "batch")

TESTS = Path(__file__).parent
TIERS = ("unit", "emulator", "integration", "infra", "e2e", "smoke")


def tier_of(path: Path) -> str | None:
    if not path.is_relative_to(TESTS):
        return None  # collected from elsewhere on the command line: no tier
    folder = path.relative_to(TESTS).parts[0]
    if folder == "integration" and path.name.startswith("test_emulator_"):
        return "emulator"
    if folder not in TIERS:
        raise pytest.UsageError(f"{path}: a test must live in one of the tiers' folders {TIERS}")
    return folder


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, not in tests/smoke/: pytest reads options only from the conftest files it loads at startup.
    group = parser.getgroup("smoke", "the smoke test of a deployed stack (tests/smoke, `make smoke`)")
    group.addoption("--stack", dest="smoke_stack", default=None, help="the stack [env BATCHDROP_STACK, else Batchdrop]")
    group.addoption(
        "--lane",
        dest="smoke_lane",
        default=None,
        choices=("auto", "batch", "realtime"),
        help="the uploads' batchdrop-lane metadata (default: none, the stack decides); realtime is quick",
    )
    group.addoption(
        "--smoke-timeout",
        dest="smoke_timeout",
        type=float,
        default=2 * 3600.0,
        # A batch may take its provider's whole window (24 h); two hours is what a smoke run is worth.
        help="seconds to wait for every job to end [7200]",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(Path(item.path))
        if tier is not None:
            item.add_marker(tier)


# -- botocore's service data, parsed once per test process -------------------------------------------
# The functions build each boto3 client in a new Session (batchdrop/adapters/aws.py, as a Lambda
# container builds them once), and every stack start forgets them (`aws.reset()`): each new Session
# re-parsed botocore's endpoint and service JSON, about 0.17 s a client and over a second a test.
# Sessions may share one Loader (it only reads, and caches what it read); boto3 appends its own data
# folder to the loader's paths per Session, so the shared one keeps each path once.


class _Paths(list[str]):
    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


@functools.cache
def _shared_loader(search_path_string: str | None = None) -> Any:
    loader = botocore.loaders.create_loader(search_path_string)
    loader._search_paths = _Paths(loader.search_paths)  # type: ignore[attr-defined]
    return loader


botocore.session.create_loader = _shared_loader


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """The session's moto server (started on first use; see tests/helpers.py `local_stack`)."""
    from tests.helpers import shared_moto_endpoint

    return shared_moto_endpoint()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.helpers import stop_shared_moto

    stop_shared_moto()
