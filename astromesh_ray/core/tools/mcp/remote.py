"""``RemoteConnection``: an MCP server reached by URL, over SSE (``transport: sse``,
the 2024-11 HTTP+SSE transport) or streamable HTTP (``transport: http``).

The URL and headers come from YAML with ``${ENV_VAR}`` substituted (when the
toolset is built, in the process that calls the server), and a bearer token from
the variable ``bearer_token_env`` names.  Before each connection the URL must pass
the agent's ``NetworkPolicy`` (``permissions.network``: an allowed host, whose
addresses are public unless the YAML allows them), and the HTTP client the SDK uses
is the policy's: it connects only to the addresses that were checked (no DNS
rebinding between the check and the connection).

A server that is down is tried again on later use, with the backoff of
``SessionConnection`` (and no restart limit: nothing here can be restarted).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import httpx2
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import McpHttpClientFactory

from astromesh_ray.core.tools.mcp.environ import expand, expand_all
from astromesh_ray.core.tools.mcp.session import SessionConnection
from astromesh_ray.core.tools.net import NetworkPolicy, origin_of
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec.tools import McpServerSpec

__all__ = ["RemoteConnection", "RemoteEndpoint"]

# Connecting and sending may take this long; a response stream may stay quiet for
# READ_TIMEOUT_S (calls have their own timeouts on top).
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 300.0


class RemoteEndpoint:
    """Where a remote server is, with the environment substituted: ``url``,
    ``headers`` (the bearer token included).  ``label`` names it in errors without
    its path, query or credentials."""

    def __init__(self, url: str, headers: Mapping[str, str], label: str) -> None:
        self.url = url
        self.headers = dict(headers)
        self.label = label

    @staticmethod
    def from_spec(tool: str, server: McpServerSpec, environ: Mapping[str, str]) -> RemoteEndpoint:
        """``server``'s endpoint; ``ConfigError`` when a variable it names is unset."""
        assert server.url is not None
        url = expand(server.url, environ, tool=tool, where="url")
        headers = expand_all(server.headers, environ, tool=tool, where="header")
        if server.bearer_token_env is not None:
            token = environ.get(server.bearer_token_env)
            if not token:
                raise ConfigError(
                    f"tool {tool!r}: MCP server bearer_token_env names "
                    f"{server.bearer_token_env}, which is not set",
                    hint=f"set the environment variable {server.bearer_token_env} where "
                    "the agent runs",
                )
            headers["Authorization"] = f"Bearer {token}"
        try:
            label = origin_of(httpx.URL(url))
        except (httpx.InvalidURL, ValueError, TypeError):
            label = "(an invalid URL)"
        return RemoteEndpoint(url, headers, label)


class RemoteConnection(SessionConnection):
    """A remote MCP server (see the module docstring); ``key`` is ``agent/tool entry``."""

    def __init__(
        self, key: str, server: McpServerSpec, endpoint: RemoteEndpoint, policy: NetworkPolicy
    ) -> None:
        super().__init__(key, max_restarts=None)
        self.transport_name = server.transport
        self.endpoint = endpoint
        self.policy = policy

    async def _prepare(self) -> None:
        # Raises ToolError (not allowed, resolves to a refused address): the server is
        # then reported down with that reason.
        await self.policy.check(self.endpoint.url)

    def _client_factory(self) -> McpHttpClientFactory:
        # Every request, and every redirect hop, goes to an address the policy checked.
        factory: McpHttpClientFactory = self.policy.mcp_client_factory()
        return factory

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        if self.transport_name == "sse":
            return sse_client(
                self.endpoint.url,
                headers=self.endpoint.headers,
                timeout=CONNECT_TIMEOUT_S,
                sse_read_timeout=READ_TIMEOUT_S,
                httpx_client_factory=self._client_factory(),
            )
        return self._streamable()

    @asynccontextmanager
    async def _streamable(self) -> AsyncIterator[Any]:
        factory = self._client_factory()
        timeout = httpx2.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
        async with (
            factory(headers=self.endpoint.headers, timeout=timeout) as http,
            streamable_http_client(self.endpoint.url, http_client=http) as streams,
        ):
            yield streams

    def _health(self) -> dict[str, Any]:
        return {"url": self.endpoint.label}
