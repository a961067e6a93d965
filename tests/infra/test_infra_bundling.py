"""The Lambda asset: our package without the local stack and CLI, plus Lambda-platform wheels, compiled to
the runtime's bytecode by whichever of this machine's interpreter or Docker can.

The interpreter and Docker are faked where the code meets them: executables on PATH (a `python3.14` that
is this interpreter reporting 3.14's cache tag, a `docker` or `uv` script), or the probes passed in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchdrop import blueprint
from infra import bundling
from infra.bundling import (
    BundleTooLarge,
    BytecodePlan,
    LocalPipBundling,
    choose_bytecode,
    docker_runs,
    docker_script,
    find_interpreter,
    function_code,
    pip_install_args,
    python_version,
    requirement_name,
    runtime_dependencies,
)
from infra.constructs.functions import RUNTIME
from tests.infra.synth_support import synth
from tests.infra.test_drift import ALL_FIVE

LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
MB = 1024 * 1024
# What compiling adds to the unzipped bundle: the bundle's .pyc files against its .py files, 1.08x with
# the 3.11 stand-in compiling the 3.14 bundle (`python -m benchmarks --only bundles`).
BYTECODE_GROWTH = 1.08

# Python 3.14's cache tag from this interpreter: compileall and the import system name their .pyc files
# after sys.implementation.cache_tag, so this is what the runtime's interpreter would write, by name.
SHIM = """#!{python}
import runpy, sys
sys.implementation.cache_tag = "cpython-314"
if sys.argv[1] == "-c":
    exec(sys.argv[2])
elif sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "src" / "batchdrop"
    for name in ("__init__.py", "handlers/submit.py", "local/emulator.py", "cli.py", "providers/local.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    return root


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH with nothing but what a test puts there (and the shell tools the Docker script uses)."""
    path = tmp_path / "bin"
    path.mkdir()
    for tool in ("bash", "rm", "cp", "find", "sleep", "awk"):
        if found := shutil.which(tool):
            (path / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(path))
    monkeypatch.delenv("CDK_DOCKER", raising=False)
    return path


@pytest.fixture
def python314(bin_dir: Path) -> Path:
    return executable(bin_dir / "python3.14", SHIM.format(python=sys.executable))


def files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def test_the_bundle_leaves_out_the_local_stack_the_cli_and_bytecode(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    LocalPipBundling(requirements=[], python="3.14", source=package).bundle(out)

    assert files(out) == ["batchdrop/__init__.py", "batchdrop/handlers/submit.py", "batchdrop/providers/local.py"]


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


def test_a_bundle_with_bytecode_has_another_fingerprint_than_one_without(package: Path) -> None:
    bundler = LocalPipBundling(requirements=["orjson"], python="3.14", source=package)

    assert bundler.fingerprint("cpython-314") != bundler.fingerprint(None)


def test_trimming_botocore_changes_the_fingerprint(package: Path) -> None:
    bundler = LocalPipBundling(requirements=["boto3"], python="3.14", source=package)
    trimmed = bundler.fingerprint()
    bundler.botocore_services = None

    assert bundler.fingerprint() != trimmed


# What only the command line imports: it ships in the bundle, but no function runs it.
CLI_ONLY = frozenset({"ops.py"})


def test_botocore_keeps_the_model_of_every_service_the_functions_create_a_client_for() -> None:
    root = bundling.FUNCTIONS_DIR / bundling.PACKAGE
    bundled = [p for p in root.rglob("*.py") if p.relative_to(root).parts[0] not in bundling.EXCLUDED | CLI_ONLY]
    called = {m for p in bundled for m in re.findall(r"""client\(\s*["']([a-z0-9-]+)["']""", p.read_text())}

    assert called
    assert called <= bundling.BOTOCORE_SERVICES
    for module in (Path(name).stem for name in CLI_ONLY):
        importers = [p for p in bundled if re.search(rf"from batchdrop(\.| import ){module}\b", p.read_text())]
        assert importers == [], f"batchdrop.{module} is imported by the functions' code: check its clients"


def test_runtime_dependencies_come_from_pyproject() -> None:
    names = {bundling.requirement_name(d) for d in runtime_dependencies()}

    assert {"boto3", "aws-lambda-powertools", "openai", "anthropic", "orjson"} <= names
    assert python_version(RUNTIME) == "3.14"


# -- 1. an interpreter of the runtime's version compiles the bundle here ---------------------------------


def test_python3_14_on_path_is_found_by_its_cache_tag(python314: Path, bin_dir: Path) -> None:
    assert find_interpreter("3.14") == str(python314)
    assert find_interpreter("3.13") is None
    # An interpreter named python3.14 that is another version is not taken.
    executable(python314, f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    assert find_interpreter("3.14") is None


def test_an_interpreter_that_uv_manages_is_found(bin_dir: Path, tmp_path: Path) -> None:
    managed = executable(tmp_path / "managed-python", SHIM.format(python=sys.executable))
    executable(bin_dir / "uv", f'#!/bin/sh\n[ "$1 $2 $3" = "python find 3.14" ] && echo {managed}\n')

    assert find_interpreter("3.14") == str(managed)


def test_with_a_matching_interpreter_the_bundle_holds_the_runtimes_bytecode(
    package: Path, python314: Path, tmp_path: Path
) -> None:
    plan = choose_bytecode(RUNTIME, docker=lambda image: pytest.fail("Docker is not needed"))
    assert plan.path == "local"
    assert plan.tag == "cpython-314"
    out = tmp_path / "out"

    bundler = LocalPipBundling(requirements=[], python="3.14", source=package, interpreter=plan.interpreter)
    assert bundler.try_bundle(str(out), image=None)

    sources = [f for f in files(out) if f.endswith(".py")]
    compiled = [f for f in files(out) if f.endswith(".pyc")]
    assert sorted(compiled) == sorted(
        str(Path(f).parent / "__pycache__" / f"{Path(f).stem}.cpython-314.pyc") for f in sources
    )
    # Bit 0 of the flags word: hash-based; bit 1 clear: never checked against the (re-dated) source.
    flags = int.from_bytes((out / compiled[0]).read_bytes()[4:8], "little")
    assert flags == 0b01


# -- 2. none here: CDK bundles in the runtime's image with Docker --------------------------------------


def test_without_an_interpreter_but_with_docker_local_bundling_declines(package: Path, tmp_path: Path) -> None:
    asked: list[str] = []

    def docker(image: str) -> bool:
        asked.append(image)
        return True

    plan = choose_bytecode(RUNTIME, find=lambda python: None, docker=docker)
    assert plan.path == "docker"
    assert asked == [RUNTIME.bundling_image.image]
    out = tmp_path / "out"
    out.mkdir()

    bundler = LocalPipBundling(requirements=[], python="3.14", source=package, decline=plan.path == "docker")
    assert bundler.try_bundle(str(out), image=None) is False
    assert files(out) == []


# pyarrow 26's files (its manylinux wheel for 3.11 on x86_64, names as on arm64), what Parquet, CSV and
# datasets load and what they do not (bundling.DEPENDENCY_TRIM).
PYARROW_KEPT = (
    "pyarrow/__init__.py",
    "pyarrow/parquet/core.py",
    "pyarrow/lib.cpython-314-aarch64-linux-gnu.so",
    "pyarrow/_parquet.cpython-314-aarch64-linux-gnu.so",
    "pyarrow/_substrait.cpython-314-aarch64-linux-gnu.so",
    "pyarrow/libarrow.so.2600",
    "pyarrow/libarrow_python.so.2600",
    "pyarrow/libarrow_substrait.so.2600",
    "pyarrow/libparquet.so.2600",
)
PYARROW_LEFT_OUT = (
    "pyarrow/flight.py",
    "pyarrow/_flight.cpython-314-aarch64-linux-gnu.so",
    "pyarrow/libarrow_flight.so.2600",
    "pyarrow/libarrow_python_flight.so.2600",
    "pyarrow/libarrow_python.so",
    "pyarrow/libarrow_python.so.2600.1.0",
    "pyarrow/_pyarrow_cpp_tests.cpython-314-aarch64-linux-gnu.so",
    "pyarrow/lib.pyx",
    "pyarrow/includes/libarrow.pxd",
    "pyarrow/include/arrow/api.h",
    "pyarrow/src/arrow/python/common.cc",
    "pyarrow/tests/test_table.py",
)


def test_the_docker_script_builds_what_local_bundling_builds(package: Path, python314: Path, tmp_path: Path) -> None:
    """The image's steps, run here: /asset-input and /asset-output as CDK mounts them, `python` the 3.14 shim."""
    (python314.parent / "python").symlink_to(python314)
    local, docker = tmp_path / "local", tmp_path / "docker"
    for out in (local, docker):  # as if pip had installed botocore and pyarrow
        for model in ("s3/2006-03-01/service-2.json.gz", "ec2/2016-11-15/service-2.json.gz", "endpoints.json"):
            (out / "botocore" / "data" / model).parent.mkdir(parents=True, exist_ok=True)
            (out / "botocore" / "data" / model).write_text("{}")
        for name in (*PYARROW_KEPT, *PYARROW_LEFT_OUT):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text("")
    LocalPipBundling(requirements=[], python="3.14", source=package, interpreter=str(python314)).bundle(local)

    script = docker_script([], "3.14").replace("/asset-input", str(package.parent))
    subprocess.run(["bash", "-c", script.replace("/asset-output", str(docker))], check=True)

    assert files(docker) == files(local)
    assert any(f.endswith(".cpython-314.pyc") for f in files(docker))
    assert "botocore/data/s3/2006-03-01/service-2.json.gz" in files(docker)
    assert not (docker / "botocore" / "data" / "ec2").exists()
    assert set(PYARROW_KEPT) <= set(files(docker))
    assert not set(PYARROW_LEFT_OUT) & set(files(docker))


def test_pip_may_take_manylinux_2_28_wheels_which_pyarrow_has_only() -> None:
    args = pip_install_args(["pyarrow"], "/out", "3.14")
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]

    assert platforms == ["manylinux2014_aarch64", "manylinux_2_28_aarch64"]
    assert "--only-binary=:all:" in args
    assert LAMBDA_UNZIPPED_LIMIT == bundling.LAMBDA_UNZIPPED_LIMIT


def test_a_bundle_over_lambdas_limit_fails_synth_saying_so(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (package / "big.bin").write_bytes(b"\0" * 3 * MB)
    monkeypatch.setattr(bundling, "LAMBDA_UNZIPPED_LIMIT", 2 * MB)

    with pytest.raises(BundleTooLarge) as refused:
        LocalPipBundling(requirements=[], python="3.14", source=package, name="no-tables").bundle(tmp_path / "out")

    message = str(refused.value)
    assert "the Lambda bundle no-tables is 3 MB unzipped, over Lambda's 2 MB" in message
    assert "largest: batchdrop 3 MB" in message
    assert "DEPENDENCY_TRIM" in message
    # Under the limit, the same bundle passes.
    monkeypatch.setattr(bundling, "LAMBDA_UNZIPPED_LIMIT", 4 * MB)
    LocalPipBundling(requirements=[], python="3.14", source=package).bundle(tmp_path / "fits")


def test_the_docker_script_fails_the_same_way(
    package: Path, python314: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (python314.parent / "python").symlink_to(python314)
    (package / "big.bin").write_bytes(b"\0" * 3 * MB)
    out = tmp_path / "docker"
    out.mkdir()

    def run(limit: int) -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(bundling, "LAMBDA_UNZIPPED_LIMIT", limit)
        script = docker_script([], "3.14", asset="tables").replace("/asset-input", str(package.parent))
        return subprocess.run(["bash", "-c", script.replace("/asset-output", str(out))], capture_output=True, text=True)

    refused = run(2 * MB)
    assert refused.returncode == 1
    assert "batchdrop: the Lambda bundle tables is 3 MB unzipped, over Lambda's 2 MB: leave out" in refused.stderr
    assert run(4 * MB).returncode == 0


def docker_answering(bin_dir: Path, *, daemon: bool = True, image: bool = False, registry: bool = False) -> None:
    def exit_code(ok: bool) -> int:
        return 0 if ok else 1

    executable(
        bin_dir / "docker",
        "#!/bin/sh\n"
        f'case "$1" in version) exit {exit_code(daemon)};; image) exit {exit_code(image)};; '
        f"manifest) exit {exit_code(registry)};; esac\nexit 2\n",
    )


def test_docker_runs_the_image_when_the_daemon_answers_and_the_image_is_there_or_pullable(bin_dir: Path) -> None:
    image = RUNTIME.bundling_image.image
    assert not docker_runs(image)  # no docker CLI at all

    docker_answering(bin_dir, daemon=False)
    assert not docker_runs(image)
    # Installed and answering, but neither the image nor its registry: no Docker bundling.
    docker_answering(bin_dir)
    assert not docker_runs(image)
    docker_answering(bin_dir, image=True)
    assert docker_runs(image)
    docker_answering(bin_dir, registry=True)
    assert docker_runs(image)


def test_a_docker_that_hangs_is_given_up_on(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executable(bin_dir / "docker", "#!/bin/sh\nsleep 30\n")
    monkeypatch.setattr(bundling, "DOCKER_PROBE_SECONDS", 0.5)

    start = time.monotonic()
    assert not docker_runs(RUNTIME.bundling_image.image)
    assert time.monotonic() - start < 5


# -- 3. neither: a bundle without bytecode, and one warning ---------------------------------------------


def test_with_neither_the_bundle_has_no_bytecode_and_synth_warns_once(
    package: Path, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bundling, "_PLANS", {})
    docker_answering(bin_dir, daemon=False)

    function_code(RUNTIME)
    function_code(RUNTIME)

    (warning,) = capsys.readouterr().err.splitlines()
    assert "no bytecode" in warning
    assert f"{1 / bundling.BYTECODE_IMPORT_CPU_RATIO:.1f}x the CPU time" in warning
    assert "install python3.14" in warning
    assert "uv" in warning
    assert "Docker" in warning
    plan = bundling.bytecode_plan(RUNTIME)
    assert plan == BytecodePlan("none", "3.14", RUNTIME.bundling_image.image)
    out = tmp_path / "out"
    LocalPipBundling(requirements=[], python="3.14", source=package, interpreter=plan.interpreter).bundle(out)
    assert not [f for f in files(out) if f.endswith(".pyc")]


def test_each_path_says_which_it_took() -> None:
    image = RUNTIME.bundling_image.image
    local = BytecodePlan("local", "3.14", image, "/opt/python3.14").message()
    docker = BytecodePlan("docker", "3.14", image).message()

    assert "compiled on this machine by /opt/python3.14" in local
    assert f"compiled with Docker in {image}" in docker
    assert all("\n" not in m for m in (local, docker, BytecodePlan("none", "3.14", image).message()))


# -- the real bundle -------------------------------------------------------------------------------------


def asset_requirements(asset: blueprint.Asset) -> list[str]:
    return [r for r in runtime_dependencies() if requirement_name(r) not in asset.without]


@pytest.fixture(scope="module", params=sorted(blueprint.ASSETS))
def real_asset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """pip really runs (network or a local index): each asset `cdk deploy` would upload, built once."""
    asset = blueprint.ASSETS[request.param]
    out = tmp_path_factory.mktemp(f"asset-{asset.name}")
    bundler = LocalPipBundling(requirements=asset_requirements(asset), python=python_version(RUNTIME), name=asset.name)
    bundler.bundle(out)
    yield asset.name, out
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def real_bundle(real_asset: tuple[str, Path]) -> Path:
    return real_asset[1]


def test_real_bundle_has_arm64_wheels_for_the_runtime(real_bundle: Path) -> None:
    out = real_bundle
    assert (out / "batchdrop" / "handlers" / "submit.py").is_file()
    assert not (out / "batchdrop" / "local").exists()
    assert not (out / "batchdrop" / "cli.py").exists()
    for package in ("boto3", "aws_lambda_powertools", "openai", "anthropic", "google/genai", "jinja2", "jsonschema"):
        assert (out / package).is_dir()
    tag = python_version(RUNTIME).replace(".", "")
    # The compiled wheels, for the runtime's Python on arm64: orjson, and jsonschema's rpds-py.
    for module in ("orjson", "rpds"):
        (so,) = (out / module).glob(f"{module}*.so")
        assert f"cpython-{tag}-aarch64-linux-gnu" in so.name


def test_each_asset_holds_pyarrow_unless_the_blueprint_leaves_it_out(real_asset: tuple[str, Path]) -> None:
    name, out = real_asset
    tag = python_version(RUNTIME).replace(".", "")
    if "pyarrow" in blueprint.ASSETS[name].without:
        assert not (out / "pyarrow").exists()
        assert not list(out.glob("pyarrow-*.dist-info"))
    else:
        # Its manylinux_2_28 wheel (the only one for cp314), trimmed.
        assert (out / "pyarrow" / f"lib.cpython-{tag}-aarch64-linux-gnu.so").is_file()
        assert (out / "pyarrow" / "parquet").is_dir()
        assert not list((out / "pyarrow").glob("*flight*"))


def test_real_bundle_creates_a_client_for_every_service_it_keeps(real_bundle: Path) -> None:
    """botocore (pure Python) from the bundle alone, in a process that sees nothing else."""
    services = sorted(bundling.BOTOCORE_SERVICES)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import botocore.session as s; session = s.get_session()\n"
        "for name in sys.argv[2:]: session.create_client(name, region_name='us-east-1', "
        "aws_access_key_id='k', aws_secret_access_key='s')"
    )
    subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code, str(real_bundle), *services], check=True)
    kept = {d.name for d in (real_bundle / "botocore" / "data").iterdir() if d.is_dir()}
    assert kept == set(services)


def test_real_bundle_stays_under_lambdas_limit_with_its_bytecode(real_asset: tuple[str, Path]) -> None:
    # Lambda refuses a function whose unzipped code passes 250 MB; every provider's SDK is in it, pyarrow in
    # one, and the bytecode the runtime's interpreter adds (docs/performance.md: untrimmed pyarrow would
    # not fit). Bundling itself refuses a bundle over the limit (check_size); this leaves room for bytecode.
    name, out = real_asset
    size = bundling.check_size(out, name)
    sources = sum(f.stat().st_size for f in out.rglob("*.py"))
    compiled = size + BYTECODE_GROWTH * sources
    assert compiled < LAMBDA_UNZIPPED_LIMIT, f"{name} is {size / MB:.0f} MB, {compiled / MB:.0f} MB compiled"


# -- which function takes which asset --------------------------------------------------------------------


def test_each_deployed_function_takes_the_asset_its_blueprint_names() -> None:
    template = synth(**ALL_FIVE)
    code = {f.name: template.function(f.name)[1]["Properties"]["Code"] for f in blueprint.FUNCTIONS.values()}

    for a in blueprint.FUNCTIONS.values():
        for b in blueprint.FUNCTIONS.values():
            same = code[a.name]["S3Key"] == code[b.name]["S3Key"]
            assert same == (a.asset == b.asset), (a.name, b.name)
    assert len({c["S3Key"] for c in code.values()}) == len({f.asset for f in blueprint.FUNCTIONS.values()})


def test_a_function_without_pyarrow_can_never_read_an_input_or_write_an_output() -> None:
    """What keeps a table job off a function whose asset has no pyarrow: its role reads no input table
    and writes no results.parquet (submit reads inputs/, complete and the poll's watchdog write outputs/)."""
    template = synth(**ALL_FIVE)
    bucket = template.data_bucket
    lean = [f for f in blueprint.FUNCTIONS.values() if "pyarrow" in f.asset.without]

    assert {f.name for f in lean} == {"webhook", "realtime"}
    for function in lean:
        for statement in template.statements(function.name):
            for resource in statement["Resource"]:
                if resource.startswith(f"<{bucket}.Arn>/"):
                    assert resource == f"<{bucket}.Arn>/work/*", (function.name, statement)
    for function in blueprint.FUNCTIONS.values():
        if function not in lean:
            assert "pyarrow" not in function.asset.without


def test_this_machine_never_hangs_on_its_probes() -> None:
    """Whatever this machine has (here: a docker CLI without a daemon), choosing is quick and final."""
    start = time.monotonic()
    plan = choose_bytecode(RUNTIME)
    assert plan.path in ("local", "docker", "none")
    assert time.monotonic() - start < 4 * bundling.DOCKER_PROBE_SECONDS
