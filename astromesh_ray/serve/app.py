"""The runtime's two FastAPI apps, made alike by ``serving_app``: the same gate
(``auth.py``: CORS, keys, scopes, rate limits), body-size limit and error handlers
(``http.py``), so a route answers the same whichever app serves it.

- ``api``, the gateway's (``Gateway``, at ``/``): every route of every protocol
  (``gateway.py``, ``agent_routes.py``, ``protocols/``) and ``/openapi.json``, the
  whole API's description.
- ``agent_api``, each agent application's (``AgentDeployment``, at
  ``/v1/agents/<name>``): the routes of ``agent_routes.py`` only, declared on both
  apps by ``agent_route`` (the same methods).  Serve's proxy sends
  ``/v1/agents/<name>/...`` to the agent's application (longest route prefix first)
  and everything else, unknown agents' paths included, to the gateway.

Why two app objects rather than one: ``@serve.ingress(app)`` rewrites the FastAPI app
it is given, in place (Ray 2.60, ``ray/serve/api.py`` ``ingress`` and
``_private/http_util.py`` ``make_fastapi_class_based_view``): it moves the routes of
the decorated class (found through its MRO, by ``__qualname__``) into a new included
router bound to the replica, *removes the routes already bound to another class*,
then freezes a copy for the replicas.  Two classes decorated with one app in one
process would leave the live app holding only the last one's routes (the app tests
and ``/openapi.json`` read), and what each frozen copy holds would depend on import
order.  Nor can the two share an ``APIRouter``: FastAPI (0.137 and newer) keeps an
included router by reference (``_IncludedRouter.original_router``), and Serve's
rewrite removes routes from it.  With one app each, each rewrite only touches its own
app's route list; the endpoint functions they share get the same ``self`` dependency
from either (``self`` is the replica: ``serve.get_replica_context().servable_object``).

Each class's routes are methods of the deployment class or of the route classes it
inherits (Serve binds each route to the replica through the class's MRO).
"""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from astromesh_ray import __version__
from astromesh_ray.serve.auth import Gate
from astromesh_ray.serve.http import BodySizeLimit, install_error_handlers
from astromesh_ray.serve.openapi import install_openapi

__all__ = ["agent_api", "agent_route", "api", "served_route"]

AGENT_ROUTES = "/v1/agents/{name}"
"""Where an agent's routes live; its application is served at this route prefix
(``agent_route_prefix``)."""

_SCOPE: ContextVar[Scope | None] = ContextVar("astromesh_scope", default=None)


def agent_route_prefix(agent: str) -> str:
    """The Serve route prefix of agent ``agent``'s application."""
    return AGENT_ROUTES.replace("{name}", agent)


def served_route() -> str | None:
    """The route template serving the current request (``/v1/agents/{name}/run``), as
    the app's router matched it; None outside a request."""
    scope = _SCOPE.get()
    route = scope.get("route") if scope is not None else None
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class RouteScope:
    """Outermost middleware: keeps the request's ASGI scope for ``served_route`` (the
    router writes the route it matched into this same scope dict).

    With ``mount`` (a pattern of the route prefix Serve serves the app at), the prefix
    is taken back out of ``root_path``: Serve's proxy matches the longest route prefix
    (a prefix matches a path only whole: ``/v1/agents/ab`` never takes
    ``/v1/agents/abc/run``, ``ProxyRouter.match_route``), then sets ``root_path`` to
    its own root path plus the prefix and leaves ``path`` whole (``proxy.py``,
    ``set_root_path``), so Starlette would route ``/run``.  Our routes, the gate's
    rules and the OpenAPI document name full paths (``/v1/agents/{name}/run``), as
    the gateway sees them: moving the prefix back gives both apps the same paths."""

    def __init__(self, app: ASGIApp, mount: re.Pattern[str] | None = None) -> None:
        self.app = app
        self.mount = mount

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.mount is not None:
            root = str(scope.get("root_path", ""))
            found = self.mount.search(root)
            if found is not None and str(scope.get("path", "")).startswith(root):
                scope["root_path"] = root[: found.start()]
        token = _SCOPE.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            _SCOPE.reset(token)


def _root_tail(template: str) -> re.Pattern[str]:
    """Route prefix ``template`` (``/v1/agents/{name}``) as a pattern of the end of a
    root path."""
    parts = ("[^/]+" if p.startswith("{") else re.escape(p) for p in template.split("/"))
    return re.compile("/".join(parts) + "$")


def serving_app(*, mount: str | None = None) -> FastAPI:
    """An app with the runtime's middleware and error handlers; ``mount``: the route
    prefix template Serve serves it at (the gateway's app, at ``/``, has none, and
    the API's description)."""
    described = mount is None
    app = FastAPI(
        title="astromesh-ray",
        version=__version__,
        description="YAML-declared AI agents served on Ray.",
        # An agent's application serves no description of its own: the gateway's
        # /openapi.json describes every route, these included.
        openapi_url="/openapi.json" if described else None,
        docs_url="/docs" if described else None,
        redoc_url="/redoc" if described else None,
    )
    app.add_middleware(BodySizeLimit)
    # CORS, keys, scopes and rate limits before a byte of the body is read.
    app.add_middleware(Gate, routes=app)
    # Outermost: the gate sees full paths.
    app.add_middleware(RouteScope, mount=_root_tail(mount) if mount else None)
    install_error_handlers(app)
    if described:
        install_openapi(app)  # /openapi.json: every error status, the Error schema, bearerAuth
    return app


api = serving_app()
agent_api = serving_app(mount=AGENT_ROUTES)

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def agent_route(method: str, path: str) -> Callable[[Endpoint], Endpoint]:
    """Declare route ``method path`` on both apps: the gateway's (which answers it for
    agents it does not know, or whose application is gone) and the agents' own."""

    def declare(endpoint: Endpoint) -> Endpoint:
        for app in (api, agent_api):
            app.add_api_route(path, endpoint, methods=[method])
        return endpoint

    return declare
