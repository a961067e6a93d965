"""The Lambda code asset, bundled on this machine without Docker.

pip installs the runtime dependencies (pyproject.toml's [project].dependencies) as wheels for Lambda's
platform (arm64, the runtime's Python), and our package is copied next to them without what never runs
in Lambda: the embedded stack and emulator (batchdrop/local/) and the command line (batchdrop/cli.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS_DIR = REPO_ROOT / "functions"
PACKAGE = "batchdrop"
# Paths inside the package that stay out of the asset.
EXCLUDED = frozenset({"local", "cli.py", "__pycache__"})
LAMBDA_PLATFORM = "manylinux2014_aarch64"


def runtime_dependencies() -> list[str]:
    """The requirement specifiers the functions need at run time, as pyproject.toml declares them."""
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def python_version(runtime: lambda_.Runtime) -> str:
    """`python3.13` → `3.13`: the interpreter pip picks wheels for."""
    name = runtime.name
    if not name.startswith("python"):
        raise ValueError(f"{name} is not a Python runtime")
    return name.removeprefix("python")


def _ignored(directory: str, names: list[str], package_root: Path) -> set[str]:
    at_root = Path(directory).resolve() == package_root
    return {n for n in names if n == "__pycache__" or n.endswith(".pyc") or (at_root and n in EXCLUDED)}


@jsii.implements(ILocalBundling)
class LocalPipBundling:
    """Builds the asset directory with pip's cross-platform wheel install; CDK calls try_bundle."""

    def __init__(
        self,
        *,
        requirements: Sequence[str],
        python: str,
        platform: str = LAMBDA_PLATFORM,
        source: Path = FUNCTIONS_DIR / PACKAGE,
    ) -> None:
        self.requirements = list(requirements)
        self.python = python
        self.platform = platform
        self.source = source.resolve()

    def try_bundle(self, output_dir: str, *, image: DockerImage, **options: Any) -> bool:
        self.bundle(Path(output_dir))
        return True

    def bundle(self, out: Path) -> None:
        """Install the requirements and copy the package into `out`."""
        if self.requirements:
            subprocess.run(  # noqa: S603 (our own interpreter, arguments from pyproject.toml)
                [
                    sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--target", str(out), "--platform", self.platform, "--implementation", "cp",
                    "--python-version", self.python, "--only-binary=:all:", "--no-compile",
                    *self.requirements,
                ],
                check=True,
            )  # fmt: skip
        # Console scripts of the dependencies; nothing in Lambda runs them.
        shutil.rmtree(out / "bin", ignore_errors=True)
        root = self.source
        shutil.copytree(
            root,
            out / root.name,
            ignore=lambda d, names: _ignored(d, names, root),
            dirs_exist_ok=True,
        )

    def fingerprint(self) -> str:
        """Changes when the bundle would: our files (minus the excluded ones), requirements, platform."""
        digest = hashlib.sha256()
        for part in (*self.requirements, self.platform, self.python):
            digest.update(part.encode() + b"\0")
        for directory, dirs, files in os.walk(self.source):
            dirs[:] = sorted(set(dirs) - _ignored(directory, dirs, self.source))
            for name in sorted(set(files) - _ignored(directory, files, self.source)):
                path = Path(directory, name)
                digest.update(path.relative_to(self.source).as_posix().encode() + b"\0")
                digest.update(path.read_bytes())
        return digest.hexdigest()


def function_code(runtime: lambda_.Runtime) -> lambda_.Code:
    """One asset for all the functions: our package and its dependencies for `runtime` on arm64."""
    bundler = LocalPipBundling(requirements=runtime_dependencies(), python=python_version(runtime))
    return lambda_.Code.from_asset(
        str(FUNCTIONS_DIR),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=bundler.fingerprint(),
        # The image is only CDK's fallback if local bundling declined; ours never declines.
        bundling=BundlingOptions(image=runtime.bundling_image, local=bundler),
    )
