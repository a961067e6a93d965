"""The Lambda asset: our package without the local stack and CLI, plus Lambda-platform wheels."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.bundling import LocalPipBundling, python_version, runtime_dependencies
from infra.constructs.functions import RUNTIME

LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "src" / "batchdrop"
    for name in ("__init__.py", "handlers/submit.py", "local/emulator.py", "cli.py", "providers/local.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    return root


def test_the_bundle_leaves_out_the_local_stack_the_cli_and_bytecode(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    LocalPipBundling(requirements=[], python="3.14", source=package).bundle(out)

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["batchdrop/__init__.py", "batchdrop/handlers/submit.py", "batchdrop/providers/local.py"]


def test_the_fingerprint_ignores_what_is_not_bundled(package: Path) -> None:
    def fingerprint() -> str:
        return LocalPipBundling(requirements=["orjson"], python="3.14", source=package).fingerprint()

    before = fingerprint()
    (package / "local" / "emulator.py").write_text("# changed\n")
    (package / "cli.py").write_text("# changed\n")
    assert fingerprint() == before

    (package / "handlers" / "submit.py").write_text("# changed\n")
    assert fingerprint() != before
    assert LocalPipBundling(requirements=["orjson>=3"], python="3.14", source=package).fingerprint() != before


def test_runtime_dependencies_come_from_pyproject() -> None:
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in runtime_dependencies()}

    assert {"boto3", "aws-lambda-powertools", "openai", "anthropic", "orjson"} <= names
    assert python_version(RUNTIME) == "3.14"


def test_real_bundle_has_arm64_wheels_for_the_runtime(tmp_path: Path) -> None:
    """pip really runs (network or a local index): the asset `cdk deploy` would upload."""
    out = tmp_path / "asset"

    LocalPipBundling(requirements=runtime_dependencies(), python=python_version(RUNTIME)).bundle(out)

    assert (out / "batchdrop" / "handlers" / "submit.py").is_file()
    assert not (out / "batchdrop" / "local").exists()
    assert not (out / "batchdrop" / "cli.py").exists()
    for package in ("boto3", "aws_lambda_powertools", "openai", "anthropic", "google/genai"):
        assert (out / package).is_dir()
    # Lambda refuses a function whose unzipped code passes 250 MB; every provider's SDK is in it.
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < LAMBDA_UNZIPPED_LIMIT, f"the bundle is {size / 2**20:.0f} MB"
    tag = python_version(RUNTIME).replace(".", "")
    (orjson,) = (out / "orjson").glob("orjson*.so")
    assert f"cpython-{tag}-aarch64-linux-gnu" in orjson.name
