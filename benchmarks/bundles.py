"""The Lambda bundles, measured: what bytecode saves a cold start, and what each function carries.

- `bytecode`: each function's handler imported in a fresh process from the same bundle, with and without
  its .pyc files, CPU time of the import (median of ROUNDS, the variants taken in turn). The runtime's
  3.14 is not on this machine: the bundle is built for this interpreter and platform as a stand-in.
- `bundles`: the bundles `cdk deploy` uploads (Lambda's platform, the runtime's Python), with pyarrow and
  without it, by size unzipped (what Lambda's 250 MB limit counts) and zipped (what is uploaded and
  fetched at a cold start), their bytecode as this interpreter compiles their sources, the time to build
  each (what synth pays); and the handlers' import from each (a stand-in bundle).
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
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from infra.bundling import (
    LAMBDA_PLATFORMS,
    LocalPipBundling,
    compileall_args,
    requirement_name,
    runtime_dependencies,
)

MB = 1024 * 1024
LAMBDA_UNZIPPED_LIMIT = 250 * MB
ROUNDS = 9
HANDLERS = ("submit", "poll", "complete", "webhook", "realtime")
PYARROW = "pyarrow"


def host_platforms() -> tuple[str, ...]:
    """This machine's wheel tags, as LAMBDA_PLATFORMS are Lambda's."""
    return tuple(p.replace("aarch64", platform.machine()) for p in LAMBDA_PLATFORMS)


def build(
    out: Path, requirements: Iterable[str], python: str, platforms: Iterable[str], every_model: bool = False
) -> Path:
    """The bundle infra/bundling.py builds (or, with `every_model`, the one it built before it trimmed
    botocore's models)."""
    bundler = LocalPipBundling(requirements=list(requirements), python=python, platforms=tuple(platforms))
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
    plain = build(tmp / "host", runtime_dependencies(), python, host_platforms())
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


def timed_build(out: Path, requirements: Iterable[str], python: str, platforms: Iterable[str]) -> tuple[Path, float]:
    """A bundle as infra/bundling.py builds it, and the wall time it took (pip install, trims, copy):
    what synth pays for each asset on this machine without bytecode, pip's cache warm."""
    start = time.perf_counter()
    build(out, requirements, python, platforms)
    return out, time.perf_counter() - start


def bench_bundles(rows: list[dict[str, Any]], tmp: Path) -> None:
    """Issue 18: pyarrow (table jobs) in the bundle. One asset for all five functions, against a second
    asset without pyarrow for the functions that never read or write a table (poll, webhook, realtime)."""
    requirements = runtime_dependencies()
    lean_requirements = [r for r in requirements if requirement_name(r) != PYARROW]
    python = "3.14"
    # Twice each, the variants in turn; the second build of each is the figure (pip's cache warm, as at
    # any synth after the first).
    for _ in range(2):
        tables, t_tables = timed_build(tmp / "tables", requirements, python, LAMBDA_PLATFORMS)
        lean, t_lean = timed_build(tmp / "lean", lean_requirements, python, LAMBDA_PLATFORMS)
        if _ == 0:
            shutil.rmtree(tables)
            shutil.rmtree(lean)
    measured = {}
    for name, bundle, seconds in (("tables", tables, t_tables), ("lean", lean, t_lean)):
        unzipped, zipped = sizes(bundle)
        # Bytecode as this interpreter writes it for the bundle's sources: about what 3.14's adds.
        pyc = py_bytes(compiled(bundle, tmp / f"{name}-pyc"), ".pyc")
        shutil.rmtree(tmp / f"{name}-pyc")
        measured[name] = (unzipped, zipped, unzipped + pyc, seconds)
    base = measured["tables"]
    labels = {
        "tables": "every dependency, pyarrow trimmed (submit, complete, poll)",
        "lean": "without pyarrow (webhook, realtime)",
    }
    for name, (unzipped, zipped, with_pyc, seconds) in measured.items():
        rows.append(
            {
                "benchmark": f"Lambda bundle (3.14, arm64), {labels[name]}: unzipped / zipped / unzipped with "
                "bytecode; build time (what synth pays for it, without bytecode)",
                "batchdrop": f"{mb(unzipped)} / {mb(zipped)} / {mb(with_pyc)}; {seconds:.1f} s",
                "baseline": f"one for all {mb(base[0])} / {mb(base[1])} / {mb(base[2])}; limit "
                f"{mb(LAMBDA_UNZIPPED_LIMIT)}",
                "ratio": f"{unzipped / base[0]:.2f}x unzipped, {zipped / base[1]:.2f}x zipped; "
                f"{with_pyc / LAMBDA_UNZIPPED_LIMIT:.2f}x the limit",
            }
        )
    # Import CPU, this interpreter and platform standing in for the runtime's (as `bytecode` does).
    python_host = f"{sys.version_info.major}.{sys.version_info.minor}"
    host = compiled(build(tmp / "host-b", requirements, python_host, host_platforms()), tmp / "host-tables")
    host_lean = without_packages(host, tmp / "host-lean", [PYARROW])
    modules = [f"batchdrop.handlers.{name}" for name in ("poll", "webhook", "realtime", "submit")]
    times = import_cpu({"tables": host, "lean": host_lean}, [*modules, "pyarrow.parquet"])
    for module in modules:
        (t, p), (t_full, p_full) = times["lean", module], times["tables", module]
        rows.append(
            {
                "benchmark": f"import {module}, CPU of the import / of the process, with bytecode: bundle "
                f"without pyarrow (Python {python_host} stand-in)",
                "batchdrop": f"{t * 1000:.0f} ms / {p * 1000:.0f} ms",
                "baseline": f"one for all {t_full * 1000:.0f} ms / {p_full * 1000:.0f} ms",
                "ratio": f"{t / t_full:.2f}x / {p / p_full:.2f}x",
            }
        )
    (t, p), (t_poll, _) = times["tables", "pyarrow.parquet"], times["tables", "batchdrop.handlers.poll"]
    rows.append(
        {
            "benchmark": f"import pyarrow.parquet, CPU of the import / of the process (Python {python_host} "
            "stand-in): what a table job's first read or write adds",
            "batchdrop": f"{t * 1000:.0f} ms / {p * 1000:.0f} ms",
            "baseline": f"import batchdrop.handlers.poll {t_poll * 1000:.0f} ms",
            "ratio": f"{t / t_poll:.2f}x",
        }
    )
