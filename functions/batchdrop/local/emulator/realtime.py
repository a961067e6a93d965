"""The steps every real-time call shares, around a plugin's own validation and answer.

A call is counted against its provider's requests per minute (`Emulator.admit`, the knob
`realtime_rpm`): past it the plugin's 429 is answered at once, as a rate limiter answers before any
model runs. A call let through waits `realtime_latency`, is refused if its body is one the API refuses
(the plugin's check, the same one its batches use), else may fail as drawn from a hash of (seed,
provider, body) under `failure_rate` (half refused with a 400, half a 500, as batch requests fail), and
is answered otherwise. Every answer carries the plugin's rate-limit headers when a limit is set, and is
recorded (`Emulator.record_call`) under the body's `call_key`.

The draw depends on the body alone, not on the attempt: a body drawn to fail with a 500 fails every
retry, so a client sees the SDK's retries run out, deterministically.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from batchdrop.local.emulator.canned import REFUSED, SERVER_ERROR, call_key, draw_call_failure
from batchdrop.local.emulator.core import Admission, Plugin
from batchdrop.local.emulator.web import ClientError, json_response


def whole_seconds(seconds: float) -> int:
    """A wait as whole seconds, rounded up (a client that waits less is refused again), at least 1."""
    return max(1, math.ceil(seconds))


def read_call(request: Request) -> tuple[dict[str, Any] | None, str, ClientError | None]:
    """(body, key, problem): the call's JSON body, or None and the 400 for a body that is not a JSON
    object (keyed by its bytes then)."""
    data = request.get_data()
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Worded as OpenAI's 400 for a body that is not JSON begins ("We could not parse the JSON body of
        # your request."); each plugin gives it its own error shape.
        return (
            None,
            hashlib.blake2b(data, digest_size=16).hexdigest(),
            ClientError(400, f"We could not parse the JSON body of your request: {exc}"),
        )
    if not isinstance(body, dict):
        return None, call_key(body), ClientError(400, "The request body must be a JSON object.")
    return body, call_key(body), None


def serve_call(
    plugin: Plugin,
    key: str,
    problem: ClientError | None,
    answer: Callable[[], dict[str, Any]],
    *,
    limited: Callable[[Admission], Response],
    rate_headers: Callable[[Admission], dict[str, str]],
) -> Response:
    """Admit, wait, refuse or fail as drawn, answer; and record what was answered (see the module).

    `problem`: the 4xx the plugin's own checks found in the request (None: it is valid); `answer`: the
    200's body; `limited`: the provider's 429; `rate_headers`: its rate-limit headers for an admission.
    """
    emulator = plugin.emulator
    knobs = emulator.knobs
    admission = emulator.admit(plugin.provider)
    if not admission.allowed:
        response = limited(admission)
    else:
        if knobs.realtime_latency > 0:
            # Outside the lock: calls run side by side, as the provider's do.
            time.sleep(knobs.realtime_latency)
        failure = None
        if problem is None:  # a request the API refuses is refused, whatever the draw
            failure = draw_call_failure(knobs.seed, plugin.provider, key, knobs.failure_rate)
        if failure == REFUSED:
            problem = ClientError(400, "The request was refused (emulated failure).")
        elif failure == SERVER_ERROR:
            problem = ClientError(500, "The server had an error while processing your request (emulated failure).")
        response = plugin.error(problem) if problem is not None else json_response(answer())
    if admission.limit is not None:
        response.headers.update(rate_headers(admission))
    emulator.record_call(plugin.provider, key, response.status_code)
    return response
