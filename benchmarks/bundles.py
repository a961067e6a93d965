"""The Lambda bundles, measured: what bytecode saves a cold start, and what each function carries.

- `bytecode`: each function's handler imported in a fresh process from the same bundle, with and without
  its .pyc files, CPU time of the import (median of ROUNDS, the variants taken in turn). The runtime's
  3.14 is not on this machine: the bundle is built for this interpreter and platform as a stand-in.
- `bundles`: the bundle `cdk deploy` uploads (Lambda's platform, the runtime's Python) and the
  alternatives to it, by size unzipped (what Lambda's 250 MB limit counts) and zipped (what is uploaded
  and fetched at a cold start); their bytecode as this interpreter compiles their sources; and pyarrow's
  wheel, which table jobs will add.
"""

from __future__ import annotations

import io
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from infra.bundling import (
    LocalPipBundling,
    compileall_args,
    requirement_name,
    runtime_dependencies,
    trim_botocore,
    trim_dependencies,
)

MB = 1024 * 1024
LAMBDA_UNZIPPED_LIMIT = 250 * MB
ROUNDS = 9
HANDLERS = ("submit", "poll", "complete", "webhook", "realtime")
# The SDKs of the providers other than OpenAI: the webhook function only ever looks at OpenAI batches.
NOT_FOR_WEBHOOK = frozenset({"anthropic", "google-genai"})
# boto3 and what only it needs: the Lambda runtime provides its own (an untested version).
BOTO3 = ("boto3", "botocore", "s3transfer", "jmespath")
PYARROW = "pyarrow"
LAMBDA_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64")


def host_platform() -> str:
    return f"manylinux2014_{platform.machine()}"


def build(out: Path, requirements: Iterable[str], python: str, platform: str, every_model: bool = False) -> Path:
    """The bundle infra/bundling.py builds (or, with `every_model`, the one it built before it trimmed
    botocore's models)."""
    bundler = LocalPipBundling(requirements=list(requirements), python=python, platform=platform)
    if every_model:
        bundler.botocore_services = None
    bundler.bundle(out)
    return out


def compiled(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` compiled by this interpreter, as infra/bundling.py compiles (`-j 0`, unchecked hash)."""
    shutil.copytree(bundle, out)
    subprocess.run([sys.executable, "-m", "compileall", *compileall_args(str(out))], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return out


def without_botocore_data(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` whose botocore keeps the models of BOTOCORE_SERVICES only."""
    shutil.copytree(bundle, out)
    trim_botocore(out)
    return out


def without_packages(bundle: Path, out: Path, names: Iterable[str]) -> Path:
    """A copy of `bundle` without the import packages and dist-info of the distributions `names`."""
    shutil.copytree(bundle, out)
    for name in names:
        for dist in out.glob(f"{name.replace('-', '_')}-*.dist-info"):
            for line in (dist / "RECORD").read_text().splitlines():
                path = out / line.split(",")[0]
                if path.is_file():
                    path.unlink()
            shutil.rmtree(dist, ignore_errors=True)
    for directory in sorted((d for d in out.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        if not any(directory.iterdir()):
            directory.rmdir()
    return out


def sizes(bundle: Path) -> tuple[int, int]:
    """(unzipped, zipped): the files' bytes, and a deflated zip of them (CDK deflates its assets)."""
    files = [f for f in bundle.rglob("*") if f.is_file()]
    unzipped = sum(f.stat().st_size for f in files)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            archive.write(f, f.relative_to(bundle).as_posix())
    return unzipped, buffer.tell()


def py_bytes(bundle: Path, suffix: str) -> int:
    return sum(f.stat().st_size for f in bundle.rglob(f"*{suffix}"))


IMPORT = (
    "import sys, time; sys.path.insert(0, sys.argv[1]); t = time.process_time(); "
    "__import__(sys.argv[2]); print(time.process_time() - t)"
)


def import_cpu(
    bundles: dict[str, Path], modules: Iterable[str], rounds: int = ROUNDS
) -> dict[tuple[str, str], tuple[float, float]]:
    """Median CPU seconds (of the import, of the whole process) of importing each module from each
    bundle in a fresh interpreter that sees nothing else (-I -S: no site-packages, no environment's
    paths; -B: nothing written back, so a bundle without bytecode stays without, as in Lambda's
    read-only code directory), the runs interleaved, each round starting one further along, so that the
    machine's drift and the order fall on every variant alike."""
    env = {"PATH": os.environ.get("PATH", ""), "POWERTOOLS_TRACE_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(b, m): [] for b in bundles for m in modules}
    keys = list(times)
    for round_ in range(rounds):
        for bundle, module in keys[round_ % len(keys) :] + keys[: round_ % len(keys)]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", IMPORT, str(bundles[bundle]), module],
                                 capture_output=True, text=True, env=env, check=True)  # fmt: skip
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            process = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            times[bundle, module].append((float(out.stdout), process))
    return {
        key: (statistics.median(t for t, _ in values), statistics.median(p for _, p in values))
        for key, values in times.items()
    }


def mb(n: float) -> str:
    return f"{n / MB:.1f} MB"


# -- bytecode ---------------------------------------------------------------------------------------------


def bench_bytecode(rows: list[dict[str, Any]], tmp: Path) -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    plain = build(tmp / "host", runtime_dependencies(), python, host_platform())
    with_pyc = compiled(plain, tmp / "host-pyc")
    modules = [f"batchdrop.handlers.{name}" for name in HANDLERS]
    times = import_cpu({"none": plain, "pyc": with_pyc}, modules)
    for module in modules:
        (t_pyc, p_pyc), (t_none, p_none) = times["pyc", module], times["none", module]
        rows.append(
            {
                "benchmark": f"import {module}, CPU of the import / of the whole process, bundle with "
                f"bytecode (Python {python} stand-in)",
                "batchdrop": f"{t_pyc * 1000:.0f} ms / {p_pyc * 1000:.0f} ms",
                "baseline": f"the same bundle without bytecode {t_none * 1000:.0f} ms / {p_none * 1000:.0f} ms",
                "ratio": f"{t_pyc / t_none:.2f}x / {p_pyc / p_none:.2f}x",
            }
        )


# -- bundles ----------------------------------------------------------------------------------------------


def bench_bundles(rows: list[dict[str, Any]], tmp: Path) -> None:
    requirements = runtime_dependencies()
    webhook_requirements = [r for r in requirements if requirement_name(r) not in NOT_FOR_WEBHOOK]
    python, lambda_platform = "3.14", LAMBDA_PLATFORMS[0]
    before = build(tmp / "before", requirements, python, lambda_platform, every_model=True)
    trimmed = build(tmp / "trimmed", requirements, python, lambda_platform)
    variants: dict[str, Callable[[], Path]] = {
        "one for all, every botocore model (before)": lambda: before,
        "one for all, botocore models of the services we call (now)": lambda: trimmed,
        "webhook only: no Anthropic or Gemini SDK, botocore trimmed": lambda: build(
            tmp / "webhook", webhook_requirements, python, lambda_platform
        ),
        "one for all, every botocore model, boto3 from the runtime": lambda: without_packages(
            before, tmp / "no-boto3", BOTO3
        ),
    }
    base_unzipped, base_zipped = sizes(before)
    unzipped_with_pyc = {}
    for name, make in variants.items():
        bundle = make()
        unzipped, zipped = sizes(bundle)
        # Bytecode as this interpreter writes it for the bundle's sources: about what 3.14's adds.
        pyc = py_bytes(compiled(bundle, tmp / f"{bundle.name}-pyc"), ".pyc")
        shutil.rmtree(tmp / f"{bundle.name}-pyc")
        unzipped_with_pyc[bundle.name] = unzipped + pyc
        rows.append(
            {
                "benchmark": f"Lambda bundle (3.14, arm64), {name}: unzipped / zipped / unzipped with bytecode",
                "batchdrop": f"{mb(unzipped)} / {mb(zipped)} / {mb(unzipped + pyc)}",
                "baseline": f"before {mb(base_unzipped)} / {mb(base_zipped)}",
                "ratio": f"{unzipped / base_unzipped:.2f}x unzipped, {zipped / base_zipped:.2f}x zipped",
            }
        )
    python_host = f"{sys.version_info.major}.{sys.version_info.minor}"
    host = compiled(build(tmp / "host-b", requirements, python_host, host_platform(), every_model=True), tmp / "hb")
    host_trimmed = without_botocore_data(host, tmp / "host-trimmed")
    host_webhook = without_packages(host_trimmed, tmp / "host-webhook", NOT_FOR_WEBHOOK)
    times = import_cpu(
        {"before": host, "trimmed": host_trimmed, "webhook only": host_webhook},
        ["batchdrop.handlers.webhook", "batchdrop.handlers.poll"],
    )
    for variant, module in (("trimmed", "batchdrop.handlers.poll"), ("webhook only", "batchdrop.handlers.webhook")):
        (t, p), (t_full, p_full) = times[variant, module], times["before", module]
        rows.append(
            {
                "benchmark": f"import {module}, CPU of the import / of the process, with bytecode: {variant} "
                f"bundle (Python {python_host} stand-in)",
                "batchdrop": f"{t * 1000:.0f} ms / {p * 1000:.0f} ms",
                "baseline": f"before {t_full * 1000:.0f} ms / {p_full * 1000:.0f} ms",
                "ratio": f"{t / t_full:.2f}x / {p / p_full:.2f}x",
            }
        )
    wheels = tmp / "pyarrow"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--implementation", "cp", "--python-version", python, "-d", str(wheels), PYARROW,
         *(f"--platform={p}" for p in LAMBDA_PLATFORMS)],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        pyarrow = sum(info.file_size for info in archive.infolist())
        archive.extractall(tmp / "pyarrow-unpacked")
    # What the bundle keeps of it (bundling.DEPENDENCY_TRIM), with its bytecode.
    trim_dependencies(tmp / "pyarrow-unpacked")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tmp / "pyarrow-unpacked")], check=True)
    kept = sizes(tmp / "pyarrow-unpacked")[0]
    for label, name, size in (("before", "before", pyarrow), ("now", "trimmed", kept)):
        total = unzipped_with_pyc[name] + size
        rows.append(
            {
                "benchmark": f"{wheel.name} unzipped, beside the bundle with bytecode ({label})",
                "batchdrop": f"{mb(size)}; with the bundle {mb(total)}",
                "baseline": f"Lambda's limit {mb(LAMBDA_UNZIPPED_LIMIT)}",
                "ratio": f"{total / LAMBDA_UNZIPPED_LIMIT:.2f}x the limit, "
                f"headroom {mb(LAMBDA_UNZIPPED_LIMIT - total)}",
            }
        )
