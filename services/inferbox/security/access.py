"""What each route needs, declared on its handler, and the canonical form of a request path.

Every route handler states its access in ``opt`` (``opt=needs("infer", model="name")``,
``opt=OPEN``): the decision is made after Litestar has resolved the route, from the handler
that will run and the path parameters it will get (``inferbox.api.gate``), so no path string is
ever parsed twice in two different ways. The inference fast path, which serves ``/infer`` in
front of Litestar, reads its access from the same declaration on the ``infer`` handler.

=====================================================  ==================================
Route                                                  Needs
=====================================================  ==================================
``/v2``, ``/v2/health/live``, ``/v2/health/ready``,    nothing (open)
``/metrics``, ``/docs...``
``/v2/models/{name}[/versions/{v}]/jobs``              ``jobs``, and ``name`` allowed
``/v2/models/{name}...`` (metadata, ready, infer)      ``infer``, and ``name`` allowed
``/v2/repository/index``                               ``infer``
``/v2/repository/models/{name}/load|unload``           ``models:write``, ``name`` allowed
``/v1/keys...``, ``/v1/audit...``                      ``admin``
``/v1/jobs...``                                        ``jobs``
``/v1/models/{name}...`` writes                        ``models:write``, ``name`` allowed
``/v1/models[/{name}...]`` reads                       any valid key (``name`` allowed)
a handler that declares nothing                        ``admin`` (fail closed)
=====================================================  ==================================

Paths are served only in their canonical form: a path with an empty segment (``//``), a dot
segment, a percent escape, a backslash, a ``;`` parameter or a trailing slash is refused with
400 before anything else, by nginx and by the API alike (``NON_CANONICAL``). No model, alias,
version, key, job or input id needs any of these characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from inferbox.security.auth import Need

ACCESS = "inferbox.access"
"""The ``opt`` key of a route handler that holds its ``Access``."""

NON_CANONICAL = re.compile(rb"//|/\.|%|\\|;|./$")
"""A raw request path (without its query) that is not canonical: an empty segment, a segment
starting with a dot (``.``/``..``; no name may start with one), any percent escape, a
backslash, a ``;`` parameter, or a trailing slash. nginx refuses the same set
(``nginx/nginx.conf.template``, ``$inferbox_noncanonical``)."""

NON_CANONICAL_MESSAGE = (
    "the request path is not canonical: no empty or dot segments, percent escapes,"
    " backslashes, ';' parameters or trailing slashes"
)


def canonical(raw_path: bytes) -> bool:
    """Whether a raw request path (bytes, without the query) is in canonical form."""
    return raw_path[:1] == b"/" and NON_CANONICAL.search(raw_path) is None


@dataclass(frozen=True, slots=True)
class Access:
    """What a route needs: nothing (``open``), or a key with ``scope`` (None: any valid key),
    allowed to use the model named by the path parameter ``model_param`` (if any)."""

    open: bool = False
    scope: str | None = None
    model_param: str | None = None

    def need(self, path_params: dict[str, Any]) -> Need | None:
        """The ``Need`` of one request to the route; None when the route is open."""
        if self.open:
            return None
        if self.model_param is None:
            return Need(self.scope)
        return Need(self.scope, path_params[self.model_param])


OPEN = {ACCESS: Access(open=True)}
"""``opt`` of a route anyone may call."""

ADMIN_ONLY = Access(scope="admin")
"""The access of a handler that declares none: fail closed."""

ANY_KEY = Access()


def needs(scope: str | None, model: str | None = None) -> dict[str, Access]:
    """``opt`` of a route that needs a key with ``scope`` (None: any valid key), allowed to use
    the model named by the path parameter ``model``."""
    return {ACCESS: Access(scope=scope, model_param=model)}


def access_of(handler: Any) -> Access:
    """A route handler's declared access; Litestar's own ``OPTIONS`` answers need any valid
    key; a handler that declares nothing needs ``admin``."""
    declared = handler.opt.get(ACCESS)
    if declared is not None:
        return declared
    if handler.http_methods == {"OPTIONS"}:
        return ANY_KEY
    return ADMIN_ONLY
