"""What every front end does around a call: give it an id, and log and count it when it fails."""

from __future__ import annotations

import itertools
import os
import secrets

import structlog

from inferbox.errors import InferboxError
from inferbox.models.spec import ModelSpec
from inferbox.observability import api_metrics

log = structlog.get_logger(__name__)

_ids = {"pid": 0, "prefix": "", "count": itertools.count()}


def new_request_id() -> str:
    """A unique request id (32 hex characters): a random prefix per process and a counter.

    Cheaper than ``uuid4`` (a ``getrandom`` call per request), and as unique: the prefix is
    80 random bits drawn again in every (forked) process.
    """
    pid = os.getpid()
    if _ids["pid"] != pid:
        _ids.update(pid=pid, prefix=secrets.token_hex(10), count=itertools.count())
    return f"{_ids['prefix']}{next(_ids['count']):012x}"


def log_failed_call(
    exc: InferboxError,
    spec: ModelSpec | None,
    name: str,
    request_id: str,
    elapsed: float,
    key_id: str | None,
) -> None:
    """Count a rejection and log the failed inference call (with its id bound in the
    context): a warning for a 5xx, info for the caller's own mistakes."""
    reason = api_metrics.rejection_reason(exc)
    if reason is not None:
        api_metrics.REJECTIONS.labels(reason).inc()
    fields = (
        {"model": name[:128]} if spec is None else {"model": spec.name, "version": spec.version}
    )
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        (log.warning if exc.status >= 500 else log.info)(
            "request failed",
            status=exc.status,
            reason=reason,
            error=exc.message,
            duration_ms=round(elapsed * 1000, 3),
            api_key_id=key_id,
            **fields,
        )
