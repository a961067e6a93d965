"""The Lambda code asset, bundled on this machine when it can, in the runtime's image with Docker otherwise.

pip installs the runtime dependencies (pyproject.toml's [project].dependencies) as wheels for Lambda's
platform (arm64, the runtime's Python), and our package is copied next to them without what never runs
in Lambda: the embedded stack and emulator (batchdrop/local/) and the command line (batchdrop/cli.py).

Then the bundle is compiled to bytecode by an interpreter of the runtime's exact minor version, so that a
cold start loads .pyc files instead of compiling every module it imports. Which interpreter does it is
decided once per process (`bytecode_plan`), in this order:
1. `local`: `python3.<minor>` on PATH, or one that uv manages, compiles the bundle built on this machine;
2. `docker`: local bundling declines and CDK runs the same steps in the runtime's own build image, if
   Docker can run that image (a daemon answering, the image present or its registry reachable);
3. `none`: the bundle is built on this machine without bytecode, and synth says what that costs.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS_DIR = REPO_ROOT / "functions"
PACKAGE = "batchdrop"
# Paths inside the package that stay out of the asset.
EXCLUDED = frozenset({"local", "cli.py", "__pycache__"})
# The wheel tags pip may take for Lambda's arm64 (pip accepts --platform more than once). manylinux2014 is
# glibc 2.17; pyarrow's cp314 wheels are manylinux_2_28 only (glibc 2.28), which the 3.14 runtime's Amazon
# Linux 2023 (glibc 2.34) runs. Without the second tag pip finds no pyarrow at all.
LAMBDA_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64")
# Lambda refuses a function whose code, unzipped, passes 250 MB (layers included; we use none). A bundle
# that passes it fails synth here, with its size and what it holds, rather than the deployment.
MIB = 1024 * 1024
LAMBDA_UNZIPPED_LIMIT = 250 * MIB
# The service models botocore keeps: the services the functions create clients for (a test reads our code
# and Powertools' for them) and those its credential chain may call. botocore reads a model only when a
# client for its service is created, so the ~435 others cost no import time, but they are 17 MB of the
# bundle's 80 MB unzipped and 15 of its 34 MB zipped (docs/performance.md): what a cold start fetches,
# and room that pyarrow will need under Lambda's 250 MB.
BOTOCORE_SERVICES = frozenset(
    {"s3", "dynamodb", "sqs", "sns", "secretsmanager", "bedrock", "bedrock-runtime", "sts", "sso", "sso-oidc"}
)
# Files of dependencies that no function loads, as globs under the bundle's root, left out of it. They
# are pyarrow's (table jobs add it): Arrow Flight (RPC; 33 MB with its Python binding), the C++ headers,
# Cython sources and tests, and the two extra copies of each libarrow_python* library that the wheel
# holds for what were symlinks (the modules load the soname, `libarrow_python.so.2600`). Reading and
# writing Parquet, CSV and datasets loads none of them (checked: pyarrow 26's modules import and
# round-trip a table without them; `lib` needs libarrow_substrait, which stays). That is 47 MB of
# pyarrow's 165 unzipped, and what lets it fit beside the bundle under Lambda's 250 MB
# (docs/performance.md).
DEPENDENCY_TRIM = (
    "pyarrow/include",
    "pyarrow/includes",
    "pyarrow/src",
    "pyarrow/tests",
    "pyarrow/*flight*",
    "pyarrow/_pyarrow_cpp_tests*",
    "pyarrow/**/*.pyx",
    "pyarrow/**/*.pxd",
    "pyarrow/**/*.pxi",
    "pyarrow/libarrow*.so",
    "pyarrow/libarrow*.so.*.*.*",
)
# CPU time of a handler's import in a fresh process, with bytecode against without it (the median of the
# five handlers, the same bundle in the same run; `python -m benchmarks --only bytecode`, with 3.11 as the
# runtime's stand-in; docs/performance.md).
BYTECODE_IMPORT_CPU_RATIO = 0.35
# Every Docker probe is bounded: a daemon that hangs or a registry out of reach must not hang synth.
DOCKER_PROBE_SECONDS = 10.0
# Bytecode whose validity is never checked against its source. CDK zips the asset with every file's date
# set to 1980-01-01 (for a reproducible hash), so the source dates that timestamp-based .pyc files
# record would never match in Lambda, and every cold start would compile again (the code directory is
# read-only: nothing would be written back either). The source never changes under a deployed
# function, so the hash check of `checked-hash` would be a cost for nothing.
INVALIDATION_MODE = "unchecked-hash"

BytecodePath = Literal["local", "docker", "none"]


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


def cache_tag(python: str) -> str:
    """`3.14` → `cpython-314`: the tag of the .pyc files that version's interpreter looks for."""
    return "cpython-" + python.replace(".", "")


def _ignored(directory: str, names: list[str], package_root: Path) -> set[str]:
    at_root = Path(directory).resolve() == package_root
    return {n for n in names if n == "__pycache__" or n.endswith(".pyc") or (at_root and n in EXCLUDED)}


# -- who compiles ----------------------------------------------------------------------------------------


def _run_quietly(args: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> str | None:
    """The command's stdout, or None when it fails, is missing, or outlives `timeout`."""
    try:
        done = subprocess.run(  # noqa: S603 (fixed commands; only the image name and version vary)
            list(args), capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _has_tag(interpreter: str, tag: str) -> bool:
    # The cache tag, not `--version`: it is what names the .pyc files the runtime will look for.
    found = _run_quietly([interpreter, "-c", "import sys; print(sys.implementation.cache_tag)"], timeout=30)
    return found == tag


def find_interpreter(python: str) -> str | None:
    """An interpreter of exactly version `python` (`3.14`): `python3.14` on PATH, else one uv manages."""
    candidates = []
    if on_path := shutil.which(f"python{python}"):
        candidates.append(on_path)
    if uv := shutil.which("uv"):
        # Never a download at synth: only an interpreter uv already has.
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
        if found := _run_quietly([uv, "python", "find", python], timeout=30, env=env):
            candidates.append(found.splitlines()[-1])
    return next((c for c in candidates if _has_tag(c, cache_tag(python))), None)


def docker_runs(image: str) -> bool:
    """Whether Docker can run `image` now: the CLI present, the daemon answering, and the image either
    present or its registry reachable (so that CDK's pull will work)."""
    docker = shutil.which(os.environ.get("CDK_DOCKER", "docker"))
    if docker is None:
        return False
    if _run_quietly([docker, "version", "--format", "{{.Server.Version}}"], DOCKER_PROBE_SECONDS) is None:
        return False
    if _run_quietly([docker, "image", "inspect", "--format", "{{.Id}}", image], DOCKER_PROBE_SECONDS) is not None:
        return True
    # Asks the registry for the image's manifest without pulling its layers.
    return _run_quietly([docker, "manifest", "inspect", image], DOCKER_PROBE_SECONDS) is not None


@dataclass(frozen=True)
class BytecodePlan:
    """How the asset gets its bytecode: which `path`, and the interpreter compiling it on this machine."""

    path: BytecodePath
    python: str  # the runtime's version, `3.14`
    image: str  # the runtime's build image, CDK's fallback
    interpreter: str | None = None

    @property
    def tag(self) -> str | None:
        """The tag of the .pyc files the bundle will hold, None when it holds none."""
        return None if self.path == "none" else cache_tag(self.python)

    def message(self) -> str:
        """The one line synth prints about it."""
        if self.path == "local":
            return f"batchdrop: Lambda bytecode ({self.tag}) compiled on this machine by {self.interpreter}"
        if self.path == "docker":
            return (
                f"batchdrop: Lambda bytecode ({self.tag}) compiled with Docker in {self.image} "
                f"(no python{self.python} here)"
            )
        return (
            f"batchdrop: WARNING: the Lambda bundle has no bytecode: no python{self.python} here (nor one that "
            "uv manages) and Docker cannot run the runtime's image, so every cold start compiles every module "
            f"it imports, about {1 / BYTECODE_IMPORT_CPU_RATIO:.1f}x the CPU time of importing with bytecode. "
            f"Fix: install python{self.python}, or uv (`uv python install {self.python}`), or a working Docker."
        )


def choose_bytecode(
    runtime: lambda_.Runtime,
    *,
    find: Callable[[str], str | None] = find_interpreter,
    docker: Callable[[str], bool] = docker_runs,
) -> BytecodePlan:
    """The first bytecode path that works here (see the module's docstring)."""
    python = python_version(runtime)
    image = runtime.bundling_image.image
    if interpreter := find(python):
        return BytecodePlan("local", python, image, interpreter)
    if docker(image):
        return BytecodePlan("docker", python, image)
    return BytecodePlan("none", python, image)


_PLANS: dict[str, BytecodePlan] = {}


def bytecode_plan(runtime: lambda_.Runtime) -> BytecodePlan:
    """`choose_bytecode` once per process and runtime, announced on stderr (where `cdk synth` and
    `make synth` show it): every synth of the process bundles the same way, and says so once."""
    if runtime.name not in _PLANS:
        _PLANS[runtime.name] = plan = choose_bytecode(runtime)
        print(plan.message(), file=sys.stderr, flush=True)
    return _PLANS[runtime.name]


# -- the bundle ------------------------------------------------------------------------------------------


def pip_install_args(
    requirements: Sequence[str], target: str, python: str, platforms: Sequence[str] = LAMBDA_PLATFORMS
) -> list[str]:
    """pip's arguments (after `pip`) to install `requirements` as wheels for `python` on any of `platforms`."""
    return [
        "install", "--quiet", "--disable-pip-version-check", "--no-compile", "--target", target,
        *(arg for platform in platforms for arg in ("--platform", platform)),
        "--implementation", "cp", "--python-version", python, "--only-binary=:all:", *requirements,
    ]  # fmt: skip


def compileall_args(directory: str) -> list[str]:
    """compileall's arguments (after `-m compileall`) to compile everything under `directory`."""
    return ["-q", "-j", "0", "--invalidation-mode", INVALIDATION_MODE, directory]


def docker_script(
    requirements: Sequence[str], python: str, platforms: Sequence[str] = LAMBDA_PLATFORMS, asset: str = "batchdrop"
) -> str:
    """What the runtime's build image runs when local bundling declines: the steps of
    `LocalPipBundling.bundle` in a shell, from CDK's /asset-input (the functions folder) to
    /asset-output, then the image's own interpreter compiles the result."""
    out = "/asset-output"
    package = f"{out}/{PACKAGE}"
    steps = [
        # The image runs as the host's user, whose home is not writable there.
        "export HOME=/tmp",
        *(
            [shlex.join(["python", "-m", "pip", *pip_install_args(requirements, out, python, platforms)])]
            if requirements
            else []
        ),
        f"rm -rf {out}/bin",
        f"[ ! -d {out}/botocore/data ] || find {out}/botocore/data -mindepth 1 -maxdepth 1 -type d "
        + " ".join(f"! -name {name}" for name in sorted(BOTOCORE_SERVICES))
        + " -exec rm -rf {} +",
        # DEPENDENCY_TRIM's globs, as the shell expands them (bash's globstar for the `**` ones).
        "shopt -s globstar nullglob",
        "rm -rf " + " ".join(f"{out}/{pattern}" for pattern in DEPENDENCY_TRIM),
        f"cp -R /asset-input/{PACKAGE} {out}/",
        *(f"rm -rf {package}/{name}" for name in sorted(EXCLUDED - {"__pycache__"})),
        f"find {package} -name __pycache__ -prune -exec rm -rf {{}} +",
        f"find {package} -name '*.pyc' -delete",
        shlex.join(["python", "-m", "compileall", *compileall_args(out)]),
        # check_size's test, in the image's shell: the files' bytes against Lambda's limit.
        f"size=$(find {out} -type f -printf '%s\\n' | awk '{{s += $1}} END {{print s + 0}}')",
        f'if [ "$size" -gt {LAMBDA_UNZIPPED_LIMIT} ]; then echo '
        + shlex.quote(f"batchdrop: the Lambda bundle {asset} is ")
        + '"$((size / 1048576))"'
        + shlex.quote(f" MB unzipped, over Lambda's {LAMBDA_UNZIPPED_LIMIT // MIB} MB: {SIZE_FIX}")
        + " >&2; exit 1; fi",
    ]
    return " && ".join(steps)


SIZE_FIX = (
    "leave out of it what its functions never load (infra/bundling.py's DEPENDENCY_TRIM, or a dependency "
    "its functions never import, batchdrop/blueprint.py's Asset.without)"
)


class BundleTooLarge(RuntimeError):
    """A bundle past Lambda's unzipped limit: synth stops with this message instead of a failed deployment."""


def bundle_size(out: Path) -> int:
    """The bytes of the bundle's files: what Lambda's unzipped limit counts."""
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and not f.is_symlink())


def check_size(out: Path, name: str = "batchdrop", limit: int | None = None) -> int:
    """The bundle's size, or BundleTooLarge, naming its largest packages, when it passes `limit`
    (Lambda's, LAMBDA_UNZIPPED_LIMIT)."""
    limit = LAMBDA_UNZIPPED_LIMIT if limit is None else limit
    size = bundle_size(out)
    if size > limit:
        tops = sorted(
            ((bundle_size(d) if d.is_dir() else d.stat().st_size, d.name) for d in out.iterdir()), reverse=True
        )
        largest = ", ".join(f"{n} {b / MIB:.0f} MB" for b, n in tops[:5])
        raise BundleTooLarge(
            f"batchdrop: the Lambda bundle {name} is {size // MIB} MB unzipped, over Lambda's {limit // MIB} MB "
            f"(largest: {largest}): {SIZE_FIX}"
        )
    return size


def trim_dependencies(out: Path, patterns: Sequence[str] = DEPENDENCY_TRIM) -> None:
    """Remove from the bundle in `out` the dependencies' files that match `patterns`."""
    for pattern in patterns:
        for path in sorted(out.glob(pattern), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


def trim_botocore(out: Path, keep: Collection[str] = BOTOCORE_SERVICES) -> None:
    """Remove from the bundle in `out` botocore's models of the services not in `keep`."""
    data = out / "botocore" / "data"
    if data.is_dir():
        for service in data.iterdir():
            if service.is_dir() and service.name not in keep:
                shutil.rmtree(service)


@jsii.implements(ILocalBundling)
class LocalPipBundling:
    """Builds the asset directory with pip's cross-platform wheel install; CDK calls try_bundle.

    With an `interpreter` (one of the runtime's version) the bundle is compiled to bytecode; with
    `decline` set, try_bundle leaves the bundling to CDK's Docker image; `botocore_services` None keeps
    every botocore model.
    """

    def __init__(
        self,
        *,
        requirements: Sequence[str],
        python: str,
        platforms: Sequence[str] = LAMBDA_PLATFORMS,
        source: Path = FUNCTIONS_DIR / PACKAGE,
        interpreter: str | None = None,
        decline: bool = False,
        botocore_services: Collection[str] | None = BOTOCORE_SERVICES,
        name: str = "batchdrop",
    ) -> None:
        self.requirements = list(requirements)
        self.name = name
        self.python = python
        self.platforms = tuple(platforms)
        self.source = source.resolve()
        self.interpreter = interpreter
        self.decline = decline
        self.botocore_services = botocore_services

    def try_bundle(self, output_dir: str, *, image: DockerImage, **options: Any) -> bool:
        if self.decline:
            return False
        self.bundle(Path(output_dir))
        return True

    def bundle(self, out: Path) -> None:
        """Install the requirements, copy the package into `out`, and compile it if there's an interpreter."""
        if self.requirements:
            subprocess.run(  # noqa: S603 (our own interpreter, arguments from pyproject.toml)
                [
                    sys.executable, "-m", "pip",
                    *pip_install_args(self.requirements, str(out), self.python, self.platforms),
                ],
                check=True,
            )  # fmt: skip
        # Console scripts of the dependencies; nothing in Lambda runs them.
        shutil.rmtree(out / "bin", ignore_errors=True)
        if self.botocore_services is not None:
            trim_botocore(out, self.botocore_services)
        trim_dependencies(out)
        root = self.source
        shutil.copytree(
            root,
            out / root.name,
            ignore=lambda d, names: _ignored(d, names, root),
            dirs_exist_ok=True,
        )
        if self.interpreter is not None:
            subprocess.run(  # noqa: S603 (an interpreter found by find_interpreter, checked for its tag)
                [self.interpreter, "-m", "compileall", *compileall_args(str(out))], check=True
            )
        check_size(out, self.name)

    def fingerprint(self, bytecode: str | None = None) -> str:
        """Changes when the bundle would: our files (minus the excluded ones), requirements, platform,
        botocore's services, and the bytecode's tag (`bytecode`, None for a bundle without)."""
        digest = hashlib.sha256()
        services = "all" if self.botocore_services is None else ",".join(sorted(self.botocore_services))
        trim = ",".join(DEPENDENCY_TRIM)
        platforms = ",".join(self.platforms)
        for part in (*self.requirements, platforms, self.python, services, trim, f"bytecode={bytecode}"):
            digest.update(part.encode() + b"\0")
        for directory, dirs, files in os.walk(self.source):
            dirs[:] = sorted(set(dirs) - _ignored(directory, dirs, self.source))
            for name in sorted(set(files) - _ignored(directory, files, self.source)):
                path = Path(directory, name)
                digest.update(path.relative_to(self.source).as_posix().encode() + b"\0")
                digest.update(path.read_bytes())
        return digest.hexdigest()


def function_code(runtime: lambda_.Runtime, *, without: Collection[str] = (), name: str = "batchdrop") -> lambda_.Code:
    """An asset (`name`, in messages) of our package and its dependencies (but those named in `without`)
    for `runtime` on arm64, compiled to the runtime's bytecode where this machine (or its Docker) can."""
    requirements = [r for r in runtime_dependencies() if requirement_name(r) not in set(without)]
    plan = bytecode_plan(runtime)
    python = python_version(runtime)
    bundler = LocalPipBundling(
        requirements=requirements,
        python=python,
        interpreter=plan.interpreter,
        decline=plan.path == "docker",
        name=name,
    )
    return lambda_.Code.from_asset(
        str(FUNCTIONS_DIR),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=bundler.fingerprint(plan.tag),
        bundling=BundlingOptions(
            image=runtime.bundling_image,
            command=["bash", "-c", docker_script(requirements, python, asset=name)],
            local=bundler,
        ),
    )


def requirement_name(requirement: str) -> str:
    """`google-genai>=1.50` → `google-genai`."""
    for mark in "<>=!~;[ ":
        requirement = requirement.split(mark, 1)[0]
    return requirement.strip().lower()
