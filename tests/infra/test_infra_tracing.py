"""Deep tracing (Powertools' Tracer and the X-Ray SDK) is opt-in; Lambda's active tracing is always on."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.synth_support import synth


@pytest.mark.parametrize(("context", "disabled"), [({}, "true"), ({"deep_tracing": "true"}, "false")])
def test_the_tracer_is_enabled_only_by_the_deep_tracing_context(context: dict[str, Any], disabled: str) -> None:
    template = synth(**context)
    for name in ("submit", "poll", "complete", "realtime"):
        _, fn = template.function(name)
        props = fn["Properties"]
        assert props["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"] == disabled
        assert props["TracingConfig"] == {"Mode": "Active"}
