"""``http_request``: an HTTP request the model writes itself (URL, method, headers,
body), through the SSRF guard.

It has no URL of its own in the YAML, so it reaches only the hosts listed in
``spec.permissions.network.allowed`` (public addresses only, unless
``allow_private`` says otherwise): an agent without a ``network`` block cannot use
it.  Responses are size-capped and decoded like webhooks' (``http_common``):
``Accept-Encoding: identity`` is always sent (a header the model sets cannot change
it), and redirects are followed without reading their bodies, each hop checked.  A
tool that can POST has side effects: under ``permissions.execution.dry_run`` its
calls are described, not made, unless ``config.methods`` keeps it to GET and HEAD.

    - name: http_request
      type: builtin
      config: {timeout_seconds: 10, max_response_bytes: 200000, methods: [GET]}
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import httpx
import pydantic

from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.tools.builtins.schema_tool import SchemaTool, ToolConfig, parse_config
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.http_common import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    connect_error,
    fetch,
    safe_decode,
    status_error,
)
from astromesh_ray.core.tools.net import NetworkPolicy, origin_of
from astromesh_ray.errors import ToolError
from astromesh_ray.spec.tools import BuiltinToolSpec

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
METHODS: tuple[Method, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
SAFE_METHODS = frozenset({"GET", "HEAD"})

# Headers the transport owns: a model setting Host could steer a shared front end
# (a reverse proxy on an allowed address) to an internal virtual host.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"}
)
_HEAD_HEADERS = ("content-type", "content-length", "last-modified", "etag", "location")


class HttpRequestConfig(ToolConfig):
    """``config`` of ``http_request``."""

    timeout_seconds: float = pydantic.Field(
        default=DEFAULT_TIMEOUT_S, gt=0, description="Seconds one request may take."
    )
    max_response_bytes: int = pydantic.Field(
        default=DEFAULT_MAX_RESPONSE_BYTES,
        gt=0,
        description="A longer response is not read (a tool error).",
    )
    methods: list[Method] = pydantic.Field(
        default_factory=lambda: list(METHODS),
        min_length=1,
        description="Methods the model may use; with only GET and HEAD the tool has no "
        "side effects (dry runs let it run).",
    )


class HttpRequestTool(SchemaTool):
    """The ``http_request`` built-in (see the module docstring)."""

    def __init__(self, policy: NetworkPolicy, config: HttpRequestConfig) -> None:
        methods = [m for m in METHODS if m in config.methods]
        super().__init__(
            "http_request",
            "Make an HTTP request to an allowed host and return the response body "
            "(JSON, text, or a description of binary content).",
            {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "description": "Absolute http(s) URL."},
                    "method": {"type": "string", "enum": methods, "default": methods[0]},
                    "headers": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Request headers.",
                    },
                    "body": {
                        "description": "Request body: a string is sent as it is, anything "
                        "else as JSON (not for GET or HEAD)."
                    },
                },
                "required": ["url"],
                "additionalProperties": False,
            },
        )
        self.policy = policy
        self.config = config
        self.side_effects = not set(methods) <= SAFE_METHODS

    def side_effects_of(self, arguments: dict[str, Any]) -> bool:
        """A GET or HEAD changes nothing (a dry run makes it); other methods may."""
        return (arguments.get("method") or "GET") not in SAFE_METHODS

    def _request(self, client: httpx.AsyncClient, arguments: dict[str, Any]) -> httpx.Request:
        method: str = arguments.get("method") or "GET"
        headers: dict[str, str] = dict(arguments.get("headers") or {})
        reserved = sorted(h for h in headers if h.lower() in _RESERVED_HEADERS)
        if reserved:
            raise ToolError(
                f"http_request: header(s) {', '.join(reserved)} cannot be set",
                hint="leave them out; they follow from the URL and the body",
            )
        broken = sorted(k for k, v in headers.items() if any(c in f"{k}{v}" for c in "\r\n\0"))
        if broken:
            raise ToolError(
                f"http_request: header(s) {', '.join(repr(h) for h in broken)} contain a line "
                "break or NUL character",
                hint="header names and values are one line each",
            )
        body = arguments.get("body")
        if body is not None and method in SAFE_METHODS:
            raise ToolError(f"http_request: a {method} request has no body", hint="drop body")
        try:
            if isinstance(body, str):
                return client.build_request(method, arguments["url"], headers=headers, content=body)
            return client.build_request(method, arguments["url"], headers=headers, json=body)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
            raise ToolError(f"http_request: not a valid URL: {exc}") from None
        except Exception as exc:  # the request cannot be made from these arguments
            raise ToolError(f"http_request: the request could not be made: {exc}") from None

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        timeout_s = max(min(self.config.timeout_seconds, ctx.remaining_s()), 0.001)
        async with self.policy.client(timeout=timeout_s) as client:
            request = self._request(client, arguments)
            label = f"http_request {request.method} {origin_of(request.url)}"
            try:
                async with asyncio.timeout(timeout_s):
                    reply = await fetch(
                        client, request, max_bytes=self.config.max_response_bytes, label=label
                    )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise connect_error(label, exc) from None
            except TimeoutError:
                raise ToolError(f"{label} timed out after {timeout_s:g} s") from None
        if not 200 <= reply.status < 300:
            raise status_error(label, reply)
        if request.method == "HEAD":
            info = {"status": reply.status} | {
                h: v for h in _HEAD_HEADERS if (v := reply.headers.get(h)) is not None
            }
            return ToolResult(content=json.dumps(info), data=info)
        return safe_decode(label, reply)


def http_request_tool(spec: BuiltinToolSpec, env: ToolEnv) -> HttpRequestTool:
    """The factory ``FACTORIES["http_request"]`` names."""
    config = parse_config(spec, HttpRequestConfig)
    return HttpRequestTool(NetworkPolicy.for_agent(env.agent.spec.permissions), config)
