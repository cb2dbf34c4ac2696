"""Who is calling (``actor``) and ``audited``: an audit row for a control-plane change.

The gate in front of Litestar (``inferbox.api.infer``) puts the caller's key record into the
ASGI scope under ``inferbox.api_key``; with auth turned off the actor is ``anonymous``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Request

from inferbox.errors import InferboxError
from inferbox.security.audit import ANONYMOUS
from inferbox.security.auth import remote_address

SCOPE_KEY = "inferbox.api_key"


def visible(request: Request, name: str) -> bool:
    """Whether the calling key may see model ``name`` in listings (its ``allowed_models``)."""
    key = request.scope.get(SCOPE_KEY)
    if key is None or key.allowed_models is None or "admin" in key.scopes:
        return True
    return name in key.allowed_models


def actor(request: Request) -> str:
    """The calling key's id, or ``anonymous``."""
    key = request.scope.get(SCOPE_KEY)
    return key.id if key is not None else ANONYMOUS


@asynccontextmanager
async def audited(
    request: Request, action: str, target: str, **details: object
) -> AsyncIterator[dict]:
    """Write one audit row when the block ends: outcome ``ok``, or ``failed`` with the error.

    The block may add to the yielded ``details`` dict (e.g. the version an upload became).
    """
    info: dict = dict(details)
    outcome = "failed"
    try:
        yield info
        outcome = "ok"
    except InferboxError as exc:
        info.update(error=exc.message, status=exc.status)
        raise
    except Exception:
        info.update(error="internal error", status=500)
        raise
    finally:
        headers = {k.lower(): v for k, v in request.scope["headers"]}
        raw_id = headers.get(b"x-request-id")
        await request.app.state.audit.record(
            actor=actor(request),
            action=action,
            target=target,
            outcome=outcome,
            remote_addr=remote_address(request.scope, headers, request.app.state.trusted_proxies),
            request_id=raw_id.decode("latin-1") if raw_id else None,
            details=info,
        )
