"""HTTP helpers the emulator's providers share: JSON and streamed answers, the 4xx they raise, paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

MB = 1024 * 1024
STREAM_CHUNK = 64 * 1024


class ClientError(Exception):
    """A request the emulator answers with a 4xx in the shape of the provider the path belongs to."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status=status, mimetype="application/json", headers=headers)


def stream(data: bytes, mimetype: str) -> Response:
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), STREAM_CHUNK):
            yield data[start : start + STREAM_CHUNK]

    response = Response(chunks(), mimetype=mimetype, direct_passthrough=True)
    response.content_length = len(data)
    return response


def parse_json_body(request: Request) -> dict[str, Any]:
    try:
        payload = orjson.loads(request.get_data())
    except orjson.JSONDecodeError as exc:
        raise ClientError(400, f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ClientError(400, "The request body must be a JSON object.")
    return payload


def page_limit(request: Request, default: int, maximum: int) -> int:
    """The `limit` query parameter of a list call (OpenAI and Anthropic page alike)."""
    raw = request.args.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ClientError(400, f"Invalid 'limit': {raw!r} is not an integer.", "limit") from None
    if not 1 <= value <= maximum:
        raise ClientError(400, f"Invalid 'limit': must be between 1 and {maximum}.", "limit")
    return value


def has_api_key(request: Request) -> bool:
    """Any non-empty key passes: OpenAI's bearer token, Anthropic's x-api-key or Azure's api-key."""
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer ") and authorization[len("Bearer ") :].strip():
        return True
    return bool(request.headers.get("x-api-key", "").strip() or request.headers.get("api-key", "").strip())
