"""The CDK app: `cdk synth` (cdk.json runs `python -m infra.app`) or `make synth`.

Synthesizes offline: no AWS account, no credentials, no Docker. cdk-nag's AwsSolutions pack checks the
stack during synthesis and fails it on any finding not acknowledged with a reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks

from infra.settings import DeploySettings
from infra.stack import BatchdropStack

CDK_JSON = Path(__file__).resolve().parents[1] / "cdk.json"


def cdk_json_context() -> dict[str, Any]:
    """cdk.json's context: the defaults when the app runs without the CDK CLI (`make synth`, tests)."""
    return dict(json.loads(CDK_JSON.read_text())["context"])


def build_app(
    context: Mapping[str, Any] | None = None, *, outdir: str | None = None, nag: bool = True
) -> tuple[App, BatchdropStack]:
    """The app and its one stack; `context` overrides cdk.json's (the CLI's -c values override both)."""
    app = App(outdir=outdir, context={**cdk_json_context(), **(context or {})})
    settings = DeploySettings.from_context(app.node.try_get_context)
    stack = BatchdropStack(
        app,
        settings.stack_name,
        settings=settings,
        description="batchdrop: JSONL files of LLM requests in S3, run through the providers' batch APIs",
    )
    if nag:
        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack


def main() -> None:
    # Under the CLI, CDK_OUTDIR says where the CLI will read the assembly; alone, write cdk.out.
    app, _ = build_app(outdir=None if "CDK_OUTDIR" in os.environ else "cdk.out")
    app.synth()


if __name__ == "__main__":
    main()
