"""The gateway's gate: CORS, API keys, scopes and rate limits on every route.

One ASGI middleware (``Gate``) in front of every route of the gateway's app, HTTP
and WebSocket alike, so no route can be forgotten:

1. CORS (``spec.auth.cors``; off unless origins are listed): preflights are
   answered before anything else, as browsers send them without credentials.
2. The route's rule (``RULES``, by method and path template): ``/health`` is
   public; channel webhooks are authenticated by their platform's signature
   (``protocols/channels``); every other route needs a key whose actions cover the
   rule's (and, where the path names an agent, whose agents or namespaces cover it).
   A route missing from ``RULES`` needs ``admin`` (a test walks the OpenAPI spec so
   that none is missing).
3. ``Authorization: Bearer <key>`` (``core/auth.py``): 401 without a known key, 403
   out of scope; with no keys configured the server is open, to loopback clients
   only unless ``insecure``.
4. The key's rate limit, cluster-wide (``serve/ratelimit.py``): 429 and
   ``Retry-After``.

The key of the request is then ``current_key()`` for the route, in the same task:
``GatewayCore`` checks the agent a body names (the OpenAI API's ``model``), owns
sessions and paused runs by it, and filters listings.  A WebSocket refused here is
accepted, told why in an ``error`` frame, and closed with ``4000 + status``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIWebSocketRoute
from starlette._utils import get_route_path
from starlette.authentication import AuthCredentials, SimpleUser
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from astromesh_ray.core.auth import OPEN, ApiKey, KeyRing
from astromesh_ray.errors import AstromeshError, Unauthenticated
from astromesh_ray.serve.protocols.ws_session import close_code, close_reason, encode, error_frame
from astromesh_ray.serve.ratelimit import RateLimiter
from astromesh_ray.spec.auth import AuthSpec, CorsSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rule:
    """What a route needs: ``action`` (None: any valid key) on the agent named by
    path parameter ``agent`` (None: no agent in the path); ``public`` routes need
    nothing, ``channel`` routes their platform's signature."""

    action: str | None = None
    agent: str | None = None
    public: bool = False
    channel: bool = False


ANY = Rule()
ADMIN = Rule("admin")
_RUN = Rule("run", "name")
_READ = Rule("read_memory", "name")
_SEES = Rule(None, "name")

RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): Rule(public=True),
    # The API's own description, for any key (client generators, docs).
    ("GET", "/openapi.json"): ANY,
    ("GET", "/docs"): ANY,
    ("GET", "/docs/oauth2-redirect"): ANY,
    ("GET", "/redoc"): ANY,
    ("GET", "/v1/providers"): ADMIN,
    ("GET", "/v1/agents"): ANY,  # listed: the agents the key covers
    ("GET", "/v1/agents/{name}"): _SEES,
    ("GET", "/v1/agents/{name}/health"): _SEES,
    ("POST", "/v1/agents/{name}/run"): _RUN,
    ("POST", "/v1/agents/{name}/stream"): _RUN,
    ("GET", "/v1/agents/{name}/runs/{run_id}"): _RUN,
    ("POST", "/v1/agents/{name}/runs/{run_id}/tool_results"): _RUN,
    ("POST", "/v1/agents/{name}/runs/{run_id}/approve"): _RUN,
    ("POST", "/v1/agents/{name}/runs/{run_id}/reject"): _RUN,
    ("POST", "/v1/agents/{name}/runs/{run_id}/retry"): _RUN,
    ("GET", "/v1/memory/{name}/sessions"): _READ,
    ("GET", "/v1/memory/{name}/sessions/{session_id}/history"): _READ,
    ("DELETE", "/v1/memory/{name}/sessions/{session_id}"): Rule("erase_memory", "name"),
    ("DELETE", "/v1/memory/{name}/sessions/{session_id}/history"): Rule("erase_memory", "name"),
    ("POST", "/v1/memory/{name}/sessions/{session_id}/fork"): _READ,
    ("POST", "/v1/memory/{name}/semantic/search"): _READ,
    ("GET", "/v1/memory/{name}/episodes"): _READ,
    ("POST", "/v1/rag/{pipeline}/ingest"): ADMIN,
    ("POST", "/v1/rag/{pipeline}/search"): Rule("read_memory"),
    ("GET", "/.well-known/agent-card.json"): ANY,
    ("GET", "/a2a/{name}/.well-known/agent-card.json"): _SEES,
    ("POST", "/a2a/{name}"): _RUN,
    ("POST", "/v1/agui/{name}"): _RUN,
    ("GET", "/v1/channels/{channel}/webhook"): Rule(channel=True),
    ("POST", "/v1/channels/{channel}/webhook"): Rule(channel=True),
    ("GET", "/v1/models"): ANY,  # listed: the agents the key covers
    ("GET", "/v1/models/{model}"): Rule(None, "model"),
    ("POST", "/v1/chat/completions"): Rule("run"),  # the body's model: checked on the run
    ("GET", "/v1/traces/{trace_id}"): ANY,  # the key's own traces only
    ("WEBSOCKET", "/v1/ws/agent/{name}"): _RUN,
}

_CURRENT: ContextVar[ApiKey | None] = ContextVar("astromesh_api_key", default=None)


@dataclass(slots=True)
class GateConfig:
    """What one gateway replica's gate enforces."""

    ring: KeyRing
    namespaces: Mapping[str, str | None]  # agent name -> its metadata.namespace
    insecure: bool = False
    cors: CorsSpec | None = None
    limiter: RateLimiter | None = None


_CONFIG: GateConfig | None = None


INSECURE_ENV = "ASTROMESH_INSECURE"
"""Set to 1 by ``astromesh serve --insecure`` (the local cluster's workers inherit it):
an open server answers every client, as ``spec.auth.insecure: true`` asks."""


def configure(auth: AuthSpec, namespaces: Mapping[str, str | None]) -> KeyRing:
    """Set up this process's gate (the gateway replica's constructor calls it)."""
    global _CONFIG
    ring = KeyRing.from_spec(auth)
    insecure = os.environ.get(INSECURE_ENV, "") in ("1", "true", "yes")
    _CONFIG = GateConfig(
        ring,
        dict(namespaces),
        insecure=insecure or auth.insecure,
        cors=auth.cors if auth.cors.allow_origins else None,
        limiter=None if ring.open else RateLimiter(),
    )
    if ring.open:
        logger.warning(
            "astromesh: no API keys configured: the API is open to %s",
            "every client (insecure)" if _CONFIG.insecure else "loopback clients only",
        )
    return ring


def current_key() -> ApiKey:
    """The key of the request being served; the open caller on an open server (or
    one whose gate is not set up: a gateway built in a test, not over HTTP)."""
    key = _CURRENT.get()
    if key is not None:
        return key
    if _CONFIG is None or _CONFIG.ring.open:
        return OPEN
    raise Unauthenticated("no API key for this call", hint="send Authorization: Bearer <key>")


def _loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return str(client[0]) == "localhost"


@dataclass(frozen=True, slots=True)
class _Route:
    methods: frozenset[str]  # WEBSOCKET for a WebSocket route
    path: str  # the template, as RULES and the OpenAPI spec name it
    regex: re.Pattern[str]
    params: tuple[str, ...]


def _walk(router: Any, prefix: str = "") -> Iterator[_Route]:
    """Every route under ``router``, the routers it includes too: FastAPI (0.137 and
    newer) keeps an included router as one ``_IncludedRouter`` node, and Serve's
    ingress includes the class's routes that way."""
    for route in getattr(router, "routes", ()):
        original = getattr(route, "original_router", None)
        if original is not None:
            context = getattr(route, "include_context", None)
            yield from _walk(original, prefix + str(getattr(context, "prefix", "") or ""))
        elif isinstance(route, APIWebSocketRoute | WebSocketRoute):
            regex, _, convertors = compile_path(prefix + route.path)
            yield _Route(frozenset({"WEBSOCKET"}), prefix + route.path, regex, tuple(convertors))
        elif isinstance(route, Route):
            regex, _, convertors = compile_path(prefix + route.path)
            methods = frozenset(route.methods or {"GET"})
            yield _Route(methods, prefix + route.path, regex, tuple(convertors))


def _route_rule(routes: Sequence[_Route], scope: Scope) -> tuple[Rule, dict[str, str]]:
    """The rule of the route ``scope`` reaches, and its path parameters."""
    method = "WEBSOCKET" if scope["type"] == "websocket" else str(scope.get("method", "GET"))
    method = "GET" if method == "HEAD" else method
    path = get_route_path(scope)
    other_method: Rule | None = None
    for route in routes:
        found = route.regex.match(path)
        if found and method in route.methods:
            return RULES.get((method, route.path), ADMIN), found.groupdict()
        if found and other_method is None:
            other_method = RULES.get((next(iter(sorted(route.methods))), route.path))
    if other_method is not None and (other_method.public or other_method.channel):
        return other_method, {}  # a public path with another method: the router's 405
    return ANY, {}  # no such route (404) or method (405): any key learns that


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class Gate:
    """The middleware (see the module docstring)."""

    def __init__(self, app: ASGIApp, routes: ASGIApp | None = None) -> None:
        self.app = app
        # Where the routes are looked up (the FastAPI app; default: ``app``).
        self.routes = routes if routes is not None else app
        self._table: list[_Route] | None = None
        self._cors: tuple[CorsSpec, ASGIApp] | None = None

    def _routes(self) -> list[_Route]:
        # Built on the first request: by then every route is declared (and, in a
        # Serve replica, the class's routes are bound to it).
        if self._table is None:
            self._table = list(_walk(getattr(self.routes, "router", self.routes)))
        return self._table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = _CONFIG
        if scope["type"] not in ("http", "websocket") or config is None:
            await self.app(scope, receive, send)
            return
        if config.cors is not None and scope["type"] == "http":
            await self._with_cors(config.cors)(scope, receive, send)
            return
        await self._guard(scope, receive, send)

    def _with_cors(self, cors: CorsSpec) -> ASGIApp:
        if self._cors is None or self._cors[0] is not cors:
            app = CORSMiddleware(
                self._guard,
                allow_origins=cors.allow_origins,
                allow_methods=cors.allow_methods,
                allow_headers=cors.allow_headers,
                allow_credentials=cors.allow_credentials,
                expose_headers=["Retry-After", "traceparent"],
                max_age=cors.max_age_s,
            )
            self._cors = (cors, app)
        return self._cors[1]

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = _CONFIG
        assert config is not None
        rule, params = _route_rule(self._routes(), scope)
        if rule.public or rule.channel:
            await self.app(scope, receive, send)
            return
        try:
            key = await self._admit(config, rule, params, scope)
        except AstromeshError as exc:
            await _refuse(exc, scope, receive, send)
            return
        scope["user"] = SimpleUser(key.id)
        scope["auth"] = AuthCredentials(sorted(key.actions))
        token = _CURRENT.set(key)
        try:
            await self.app(scope, receive, send)
        finally:
            _CURRENT.reset(token)

    async def _admit(
        self, config: GateConfig, rule: Rule, params: dict[str, str], scope: Scope
    ) -> ApiKey:
        if config.ring.open and not config.insecure and not _loopback(scope):
            raise Unauthenticated(
                "this server has no API keys: it answers loopback clients only",
                hint="configure spec.auth.keys (astromesh keys create), or serve --insecure",
            )
        key = config.ring.authenticate(_header(scope, b"authorization"))
        agent = params.get(rule.agent) if rule.agent is not None else None
        key.require(rule.action, agent, config.namespaces.get(agent) if agent else None)
        if key.rate_limit is not None and config.limiter is not None:
            await config.limiter.check(key.id, key.rate_limit)
        return key


async def _refuse(exc: AstromeshError, scope: Scope, receive: Receive, send: Send) -> None:
    body = {"error": exc.to_dict()}
    headers: dict[str, str] = {}
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="astromesh"'
    retry = exc.details.get("retry_after_s")
    if isinstance(retry, int | float) and retry > 0:
        headers["Retry-After"] = str(int(retry))
    if scope["type"] == "http":
        await JSONResponse(body, status_code=exc.http_status, headers=headers)(scope, receive, send)
        return
    websocket = WebSocket(scope, receive, send)
    await websocket.accept()
    await websocket.send_text(encode(error_frame(exc.to_dict(), "connection")))
    await websocket.close(close_code(exc.http_status), close_reason(exc.message))
