"""The errors a client may see, each carrying its HTTP status.

Raised anywhere in the API; turned into a response in one place (``inferbox.api.errors``): the
V2 routes answer ``{"error": "..."}``. Anything that is not an ``InferboxError`` becomes a 500
with a generic message, never a stack trace.
"""

from __future__ import annotations


class InferboxError(Exception):
    """Base of every error a client may see; carries its HTTP status."""

    status: int = 500

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


class InferenceFailed(InferboxError):
    """The model raised while running valid input (500, with ONNX Runtime's reason)."""

    status = 500
