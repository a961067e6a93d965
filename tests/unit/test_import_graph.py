"""Imports go one way (docs/architecture.md, "Layers"): stages → jobs and batches → adapters.

Read from the source with `ast`, not by importing it: every `import` between batchdrop's modules, at the
top of a module or inside a function (a lazy import still closes a cycle, it only hides it until the
call), except those under `if TYPE_CHECKING:`, which never run.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "functions" / "batchdrop"

# Where DynamoDB may be called: the store, and the local stack (it creates the table, and its tools read it).
DYNAMODB_ALLOWED = ("adapters/", "local/")
DYNAMODB_CALLS = re.compile(
    r"\.(update_item|put_item|get_item|delete_item|query|scan|transact_write_items|batch_write_item)\("
)
# Who may import boto3/botocore: the adapters, the local stack, and the provider clients that call an
# AWS SDK themselves (Bedrock).
BOTO_ALLOWED = ("adapters/", "local/", "providers/")
BOTO_IMPORTS = re.compile(r"^\s*(from|import)\s+(boto3|botocore)\b")
# The operator's tools may import lazily (a command loads what it needs); the functions' code may not,
# except a provider's client (loaded on first use, so that a poll with nothing due pays for no SDK) and
# the table jobs' modules (Jinja2 and pyarrow, which a JSONL job never loads).
LAZY_ALLOWED = ("cli.py", "ops.py", "local/")
LAZY_TARGETS_ALLOWED = ("batchdrop.providers", "batchdrop.tables")
# The layers: a module of a lower layer never imports one of a higher layer.
STAGES = ("submit", "poll", "complete", "cancel", "watchdog", "webhook", "results")
STATE = ("jobs", "batches")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module
    line: int
    lazy: bool  # inside a function


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, name: str, is_package: bool, modules: set[str]) -> list[Import]:
    """The batchdrop modules `source` (module `name`) imports, each once per import statement."""
    found: list[Import] = []

    def resolve(dotted: str) -> str | None:
        # `from batchdrop.x import y`: y may be a module (batchdrop.x.y) or a name in batchdrop.x.
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                for other in child.orelse:
                    visit_one(other, lazy)
                continue
            visit_one(child, lazy)

    def visit_one(child: ast.AST, lazy: bool) -> None:
        if isinstance(child, ast.Import):
            for alias in child.names:
                target = resolve(alias.name) if alias.name.startswith("batchdrop") else None
                if target:
                    found.append(Import(name, target, child.lineno, lazy))
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(child.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            if base.startswith("batchdrop"):
                for alias in child.names:
                    target = resolve(f"{base}.{alias.name}")
                    if target:
                        found.append(Import(name, target, child.lineno, lazy))
        else:
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, inner)

    visit(ast.parse(source), lazy=False)
    return [i for i in found if i.target != name]


def read_package(root: Path = PACKAGE) -> tuple[dict[str, str], list[Import]]:
    """(module name → path relative to the package, every import between them)."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(paths)
    edges: list[Import] = []
    for name, path in paths.items():
        edges += imports_of(path.read_text(), name, path.name == "__init__.py", modules)
    return {name: path.relative_to(root).as_posix() for name, path in paths.items()}, edges


def find_cycle(edges: list[Import]) -> list[str] | None:
    """One cycle of the graph, as the modules along it (the first repeated at the end), or None."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def short(module: str) -> str:
    return module.removeprefix("batchdrop.")


def test_the_imports_between_batchdrops_modules_have_no_cycle() -> None:
    _files, edges = read_package()
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " → ".join(short(m) for m in cycle or [])


def test_jobs_and_batches_import_no_stage_and_the_adapters_import_neither() -> None:
    _files, edges = read_package()
    upward = [
        f"{short(e.source)}:{e.line} imports {short(e.target)}"
        for e in edges
        if (short(e.source) in STATE and short(e.target) in STAGES)
        or (short(e.source).startswith("adapters") and short(e.target) in (*STATE, *STAGES))
    ]
    assert upward == []


def test_the_functions_code_imports_batchdrop_modules_at_the_top() -> None:
    files, edges = read_package()
    lazy = [
        f"{files[e.source]}:{e.line} imports {short(e.target)} inside a function"
        for e in edges
        if e.lazy and not files[e.source].startswith(LAZY_ALLOWED) and not e.target.startswith(LAZY_TARGETS_ALLOWED)
    ]
    assert lazy == []


def lines_matching(pattern: re.Pattern[str], allowed: tuple[str, ...]) -> list[str]:
    """`path:line: text` of each line that matches, in the modules outside the `allowed` folders."""
    return [
        f"{path.relative_to(PACKAGE).as_posix()}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not path.relative_to(PACKAGE).as_posix().startswith(allowed)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]


def test_only_the_store_talks_to_dynamodb() -> None:
    assert lines_matching(DYNAMODB_CALLS, DYNAMODB_ALLOWED) == []


def test_only_the_adapters_and_the_sdk_clients_import_boto3() -> None:
    assert lines_matching(BOTO_IMPORTS, BOTO_ALLOWED) == []


# -- the checks themselves, on made-up packages --------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> Path:
    package = root / "batchdrop"
    for name, text in {"__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_a_cycle_through_a_lazy_import_is_found_and_named(tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "a.py": "from batchdrop.b import f\n",
            "b.py": "def f():\n    from batchdrop import c\n",
            "c.py": "from batchdrop import a as first\n",
        },
    )
    _files, edges = read_package(package)
    assert [e.lazy for e in edges if e.source == "batchdrop.b"] == [True]
    assert find_cycle(edges) == ["batchdrop.a", "batchdrop.b", "batchdrop.c", "batchdrop.a"]


def test_imports_under_type_checking_are_not_edges(tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from batchdrop.b import T\n",
            "b.py": "import batchdrop.a\n",
        },
    )
    _files, edges = read_package(package)
    assert find_cycle(edges) is None
    assert [(e.source, e.target) for e in edges] == [("batchdrop.b", "batchdrop.a")]


@pytest.mark.parametrize(
    "line",
    ["deps.store.ddb.update_item(", "client.put_item(", "ddb.query(", "x.transact_write_items(", "t.get_item("],
)
def test_a_dynamodb_call_is_recognised(line: str) -> None:
    assert DYNAMODB_CALLS.search(line)
