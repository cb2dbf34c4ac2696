"""The errors a client may see, each carrying its HTTP status.

Raised anywhere in the API; turned into a response in one place (``inferbox.api.errors``): the
V2 routes answer ``{"error": "..."}``. Anything that is not an ``InferboxError`` becomes a 500
with a generic message, never a stack trace.
"""

from __future__ import annotations

import math
from http import HTTPStatus

PROBLEM_JSON = "application/problem+json"


class InferboxError(Exception):
    """Base of every error a client may see; carries its HTTP status."""

    status: int = 500
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers this error always carries (e.g. ``WWW-Authenticate``)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(InferboxError):
    """The request is malformed or does not fit the model (400)."""

    status = 400


class NotFound(InferboxError):
    """Unknown model or version (404)."""

    status = 404


class Unauthorized(InferboxError):
    """No key, or a key that is unknown, wrong, expired or revoked (401)."""

    status = 401
    headers = (("WWW-Authenticate", 'Bearer realm="inferbox"'),)


class Forbidden(InferboxError):
    """A valid key without the scope or model the request needs (403)."""

    status = 403


class TooManyRequests(InferboxError):
    """The key's rate or concurrency limit is reached (429, with ``Retry-After``)."""

    status = 429


class PayloadTooLarge(InferboxError):
    """The body is larger than the configured limit (413)."""

    status = 413


class Unavailable(InferboxError):
    """Not ready, queue full, or a dependency is down (503, with ``Retry-After``)."""

    status = 503

    def __init__(self, message: str, *, retry_after: float | None = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class DeadlineExceeded(InferboxError):
    """The request's deadline passed before an answer came (504)."""

    status = 504


def error_headers(exc: InferboxError) -> list[tuple[str, str]]:
    """Headers every rendering of an error carries: its own, and ``Retry-After`` (whole
    seconds, rounded up, at least 1) where it has one."""
    headers = list(exc.headers)
    if exc.retry_after is not None:
        headers.append(("Retry-After", str(max(1, math.ceil(exc.retry_after - 1e-9)))))
    return headers


def problem_body(exc: InferboxError, instance: str) -> dict:
    """The RFC 9457 problem details of an error (the ``/v1`` shape)."""
    return {
        "type": "about:blank",
        "title": HTTPStatus(exc.status).phrase,
        "status": exc.status,
        "detail": exc.message,
        "instance": instance,
    }
