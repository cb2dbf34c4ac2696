"""The API's JSON responses: one way to write a body, and one shape for every error."""

from __future__ import annotations

import msgspec
from litestar import Response

from inferbox.errors import InferboxError, error_headers

JSON = "application/json"
_encode = msgspec.json.Encoder().encode


def json_response(
    payload: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """``payload`` as JSON (msgspec: structs, dicts, lists) with ``status``."""
    return Response(_encode(payload), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: InferboxError) -> Response:
    """``{"error": ...}`` with the error's status (and ``Retry-After`` where it has one)."""
    return json_response({"error": exc.message}, exc.status, dict(error_headers(exc)))
