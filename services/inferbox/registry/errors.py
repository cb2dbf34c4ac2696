"""Errors of the model registry, each carrying its HTTP status (see ``inferbox.errors``)."""

from __future__ import annotations

from inferbox.errors import InferboxError, NotFound

__all__ = [
    "AliasInUse",
    "AliasNotFound",
    "ChecksumMismatch",
    "Conflict",
    "ModelNotFound",
    "UnprocessableModel",
    "VersionNotFound",
]


class ModelNotFound(NotFound):
    """No model of that name (404)."""


class VersionNotFound(NotFound):
    """No such version of the model, or it was deleted (404)."""


class AliasNotFound(NotFound):
    """The model has no alias of that name (404)."""


class Conflict(InferboxError):
    """The request clashes with the registry's current state (409)."""

    status = 409


class AliasInUse(Conflict):
    """A version cannot be deleted while aliases or a traffic split point at it (409).

    ``aliases`` names the aliases; ``in_traffic_split`` tells whether a canary split uses it.
    """

    def __init__(self, message: str, *, aliases: list[str], in_traffic_split: bool = False) -> None:
        super().__init__(message)
        self.aliases = aliases
        self.in_traffic_split = in_traffic_split


class UnprocessableModel(InferboxError):
    """An uploaded model file failed validation (422); ``reason`` says why."""

    status = 422

    def __init__(self, reason: str) -> None:
        super().__init__(f"the model was rejected: {reason}")
        self.reason = reason


class ChecksumMismatch(InferboxError):
    """A stored object's content does not match its sha256 (500: storage is corrupt)."""

    status = 500
