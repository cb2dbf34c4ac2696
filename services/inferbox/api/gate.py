"""The API key gate of Litestar's routes: a middleware that runs after routing.

Litestar builds this middleware into every route handler's stack, so it runs once the router
has chosen the handler and parsed its path parameters: it reads the handler's declared
``Access`` (``inferbox.security.access``) and decides on exactly what will run. Unknown paths
(404) and wrong methods (405) never reach a handler and need no key.

An admitted request carries its key record in the ASGI scope (``inferbox.api_key``); its
concurrency slot, if its key has a limit, is given back before the last byte of the answer is
sent, so a client that sends its next call as soon as an answer arrives finds the slot free.
"""

from __future__ import annotations

import structlog
from litestar.types import ASGIApp, Receive, Scope, Send

from inferbox.api.infer import SlotReleasingSend, send_error
from inferbox.errors import InferboxError
from inferbox.frontend.auditing import SCOPE_KEY
from inferbox.frontend.calls import new_request_id
from inferbox.observability import api_metrics
from inferbox.security.access import access_of

log = structlog.get_logger(__name__)


class GateMiddleware:
    """Key, scope, model and per-key limits of the resolved route, before its handler."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gate = scope["app"].state.gate if scope["type"] == "http" else None
        if gate is None:
            await self.app(scope, receive, send)
            return
        need = access_of(scope["route_handler"]).need(scope["path_params"])
        if need is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            key, slot = await gate.admit(headers.get(b"authorization"), need)
        except InferboxError as exc:
            await refuse(scope, send, gate, exc, headers)
            return
        scope[SCOPE_KEY] = key
        with structlog.contextvars.bound_contextvars(api_key_id=key.id):
            if slot is None:
                await self.app(scope, receive, send)
                return
            done = SlotReleasingSend(send, lambda: gate.release(key, slot))
            try:
                await self.app(scope, receive, done)
            finally:
                await done.release()


async def refuse(scope: Scope, send: Send, gate, exc: InferboxError, headers) -> None:
    """Answer a refused key (or limit) in the route's error shape; log, count and audit it."""
    raw_id = headers.get(b"x-request-id")
    request_id = raw_id.decode("latin-1") if raw_id else new_request_id()
    reason = api_metrics.rejection_reason(exc)
    if reason is not None:
        api_metrics.REJECTIONS.labels(reason).inc()
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        log.info(
            "request refused",
            status=exc.status,
            reason=reason,
            error=exc.message,
            path=scope["path"][:200],
            api_key_id=getattr(exc, "key_id", None),
        )
    await gate.audit_refusal(exc, scope, headers, request_id)
    path = scope["path"]
    await send_error(send, exc, request_id, path if path.startswith("/v1") else None)
