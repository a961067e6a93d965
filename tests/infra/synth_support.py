"""Synthesizes the stack for tests/infra (bundling skipped), once per distinct context, and reads it.

A plain module rather than conftest.py, so its name cannot collide with other test tiers' conftests.
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Template

from infra.app import build_app

SKIP_BUNDLING: dict[str, Any] = {"aws:cdk:bundling-stacks": []}
_OUTDIRS: list[str] = []


@atexit.register
def _clean() -> None:
    for outdir in _OUTDIRS:
        shutil.rmtree(outdir, ignore_errors=True)


@dataclass(frozen=True)
class Synth:
    template: Template
    json: dict[str, Any]
    path: Path  # the template file in the cloud assembly

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.json["Resources"].items() if r["Type"] == type_}

    def one(self, type_: str, **properties: Any) -> tuple[str, dict[str, Any]]:
        """The one resource of `type_` whose properties include `properties`."""
        found = [
            (k, r)
            for k, r in self.resources(type_).items()
            if all(r.get("Properties", {}).get(p) == v for p, v in properties.items())
        ]
        assert len(found) == 1, f"expected one {type_} with {properties}, found {[k for k, _ in found]}"
        return found[0]

    @property
    def job_table(self) -> str:
        """The logical id of the job table (the other table is the response cache)."""
        return self.table(cache=False)

    @property
    def cache_table(self) -> str:
        return self.table(cache=True)

    def table(self, cache: bool) -> str:
        (found,) = (k for k in self.resources("AWS::DynamoDB::Table") if ("Cache" in k) == cache)
        return found

    def function(self, name: str) -> tuple[str, dict[str, Any]]:
        """The function running batchdrop.handlers.<name>.handler: (logical id, resource)."""
        return self.one("AWS::Lambda::Function", Handler=f"batchdrop.handlers.{name}.handler")

    def statements(self, function: str) -> list[dict[str, Any]]:
        """The IAM statements of a function's role, Action and Resource as lists of rendered strings."""
        _, fn = self.function(function)
        role = fn["Properties"]["Role"]["Fn::GetAtt"][0]
        found = []
        for policy in self.resources("AWS::IAM::Policy").values():
            if {"Ref": role} in policy["Properties"]["Roles"]:
                for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                    found.append(
                        {
                            **statement,
                            "Action": _as_list(statement["Action"]),
                            "Resource": [render(r) for r in _as_list(statement["Resource"])],
                        }
                    )
        return found

    def allows(self, function: str, action: str, resource: str) -> bool:
        """Whether the function's role allows `action` (wildcards resolved) on exactly `resource`."""
        return any(
            statement["Effect"] == "Allow"
            and resource in statement["Resource"]
            and any(fnmatch.fnmatchcase(action, granted) for granted in statement["Action"])
            for statement in self.statements(function)
        )

    @property
    def data_bucket(self) -> str:
        """The logical id of the bucket users upload to (the versioned one; the log bucket is not)."""
        return self.one("AWS::S3::Bucket", VersioningConfiguration={"Status": "Enabled"})[0]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def render(value: Any) -> str:
    """A CloudFormation value as a readable string: {"Fn::GetAtt": ["B", "Arn"]} → "<B.Arn>"."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(render(p) for p in parts)
    return json.dumps(value, sort_keys=True)


def walk(value: Any) -> Iterator[Any]:
    """Every value nested in a template fragment."""
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


@functools.cache
def _synth(context: tuple[tuple[str, Any], ...], nag: bool) -> Synth:
    outdir = tempfile.mkdtemp(prefix="batchdrop-synth-")
    _OUTDIRS.append(outdir)
    app, stack = build_app({**dict(context), **SKIP_BUNDLING}, outdir=outdir, nag=nag)
    app.synth()
    path = Path(outdir) / stack.template_file
    data = json.loads(path.read_text())
    return Synth(template=Template.from_json(data), json=data, path=path)


def synth(nag: bool = False, **context: Any) -> Synth:
    """The stack synthesized with cdk.json's context plus `context`; cached per context."""
    return _synth(tuple(sorted(context.items())), nag)


def nag_violations(**context: Any) -> list[str]:
    """cdk-nag's unacknowledged findings as "rule at construct path" lines (empty when clean)."""
    outdir = tempfile.mkdtemp(prefix="batchdrop-nag-")
    _OUTDIRS.append(outdir)
    app, _ = build_app({**context, **SKIP_BUNDLING}, outdir=outdir, nag=True)
    try:
        app.synth()
    except Exception:
        report = Path(outdir) / "validation-report.json"
        if not report.exists():
            raise
        return [
            f"{violation['ruleName']} at {construct['constructPath']}"
            for plugin in json.loads(report.read_text())["pluginReports"]
            for violation in plugin["violations"]
            for construct in violation["violatingConstructs"]
        ]
    return []
