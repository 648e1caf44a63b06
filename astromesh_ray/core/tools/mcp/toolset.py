"""``McpToolset``: the tools of one MCP server (one ``type: mcp`` tool entry), and
``build_mcp_toolsets``, the builder ``BUILDERS["mcp"]`` names.

- **Discovery**: the server's tools are listed when the runtime starts, filtered by
  ``include`` / ``exclude`` (the server's names), and offered to the model as
  ``prefix + name`` with the server's ``inputSchema`` (arguments are checked against
  it before a call) and ``side_effects = not readOnlyHint``.
- **list_changed**: when the server says its tools changed (or it came back after
  being down), the runtime's ``watch`` callback runs and it lists them again.
- **Down at start**: a server that cannot be reached does not fail the runtime: it
  offers no tools, ``health()`` says ``{"status": "down", "error": ...}``, and it is
  tried again in the background (backing off up to ``REVIVE_MAX_S``); when it
  answers, the runtime is told to list the tools again.
- **Timeouts**: each call is bounded by the entry's ``timeout_seconds`` (and what is
  left of the run); the connection cancels a call past it and stays usable.

Which connection reaches the server: stdio servers through ``ToolServices.mcp_stdio``
(a subprocess here, or the Ray actor owning it under Serve), SSE and streamable HTTP
servers directly, through the agent's ``NetworkPolicy``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.tools.base import ToolContext, ToolDef, ToolResult, Toolset
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.function import ToolLimits
from astromesh_ray.core.tools.mcp.connection import McpConnection, McpToolInfo
from astromesh_ray.core.tools.validation import compile_validator
from astromesh_ray.errors import ConfigError, ToolError
from astromesh_ray.spec.tools import McpToolSpec

__all__ = ["McpToolset", "build_mcp_toolsets", "model_name", "tool_defs"]

log = logging.getLogger("astromesh.tools.mcp")

# A server down at start is tried again after 1 s, then 2, 4, ... at most this often.
REVIVE_FIRST_S = 1.0
REVIVE_MAX_S = 30.0
MAX_NAME_CHARS = 64
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_-]")


def model_name(prefix: str | None, server_name: str) -> str:
    """What the model calls a server's tool: ``prefix + name``, with characters model
    APIs refuse in function names replaced by ``_`` and cut to 64 characters."""
    return _NOT_IN_NAME.sub("_", f"{prefix or ''}{server_name}")[:MAX_NAME_CHARS]


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The server's ``inputSchema``; an empty one (some servers send ``{}``) is an
    object without properties, which every model API accepts."""
    found = dict(schema)
    found.setdefault("type", "object")
    if found["type"] == "object":
        found.setdefault("properties", {})
    return found


def tool_defs(
    spec: McpToolSpec, tools: Sequence[McpToolInfo], limits: ToolLimits
) -> tuple[list[ToolDef], dict[str, str], dict[str, str]]:
    """The ``ToolDef``s of ``tools`` under ``spec``'s filters and prefix, the server's
    name of each (by our name), and the tools skipped because their schema is not
    valid JSON Schema (by server name, with the reason).

    Two server tools that would reach the model under one name are a ``ConfigError``."""
    include = set(spec.include) if spec.include is not None else None
    exclude = set(spec.exclude)
    defs: list[ToolDef] = []
    names: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for tool in tools:
        if (include is not None and tool.name not in include) or tool.name in exclude:
            continue
        ours = model_name(spec.prefix, tool.name)
        if ours in names:
            raise ConfigError(
                f"tool entry {spec.name!r}: the MCP server's tools {names[ours]!r} and "
                f"{tool.name!r} would both be called {ours!r}",
                hint="leave one out with exclude: [...] (or list the others in include)",
            )
        schema = _object_schema(tool.input_schema)
        try:
            validate = compile_validator(ours, schema)
        except ConfigError as exc:
            skipped[tool.name] = exc.message
            continue
        names[ours] = tool.name
        side_effects = (
            limits.side_effects if limits.side_effects is not None else not tool.read_only
        )
        defs.append(
            ToolDef(
                schema=ToolSchema(name=ours, description=tool.description, parameters=schema),
                validate=validate,
                timeout_s=limits.timeout_s,
                max_result_chars=limits.max_result_chars,
                side_effects=side_effects,
            )
        )
    return defs, names, skipped


class McpToolset:
    """One MCP server's tools (see the module docstring); ``name`` is the tool
    entry's, so the entry's policy applies to each of them (approval, side effects,
    and the rate limit, counted per tool)."""

    def __init__(self, spec: McpToolSpec, connection: McpConnection, limits: ToolLimits) -> None:
        self.name = spec.name
        self.spec = spec
        self.connection = connection
        self._limits = limits
        self._names: dict[str, str] = {}
        self._skipped: dict[str, str] = {}
        self._missing: list[str] = []
        self._down: str | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._revive: asyncio.Task[None] | None = None
        self._closed = False
        connection.on_list_changed(self._notify)

    async def list_tools(self) -> Sequence[ToolDef]:
        try:
            tools = await self.connection.list_tools()
        except ToolError as exc:
            self._down = exc.message
            self._names = {}
            log.warning("MCP tool entry %r offers no tools for now: %s", self.name, exc.message)
            self._start_revive()
            return []
        self._down = None
        defs, self._names, self._skipped = tool_defs(self.spec, tools, self._limits)
        listed = {t.name for t in tools}
        self._missing = sorted(set(self.spec.include or ()) - listed)
        for name, why in self._skipped.items():
            log.warning("MCP tool entry %r: tool %r left out: %s", self.name, name, why)
        if self._missing:
            log.warning(
                "MCP tool entry %r: include names %s, which the server does not list",
                self.name,
                ", ".join(self._missing),
            )
        return defs

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        server_name = self._names.get(name)
        if server_name is None:
            raise ToolError(
                f"tool {name!r} is not offered by MCP server {self.name!r} now",
                hint="the server's tools changed; use one of the tools offered",
                tool=name,
            )
        timeout = ctx.remaining_s()
        if self._limits.timeout_s is not None:
            timeout = min(timeout, self._limits.timeout_s)
        return await self.connection.call_tool(server_name, arguments, max(timeout, 0.001))

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "down", "tools": n, "error": ..., "server": {...}}``."""
        server = self.connection.health()
        report: dict[str, Any] = {
            "status": "down" if self._down is not None or server.get("status") == "down" else "ok",
            "tools": len(self._names),
        }
        error = self._down or server.get("error")
        if report["status"] == "down" and error:
            report["error"] = error
        if self._missing:
            report["missing"] = list(self._missing)
        if self._skipped:
            report["skipped"] = dict(self._skipped)
        report["server"] = server
        return report

    def watch(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    async def aclose(self) -> None:
        self._closed = True
        if self._revive is not None:
            self._revive.cancel()
            await asyncio.gather(self._revive, return_exceptions=True)
        await self.connection.aclose()

    def _notify(self) -> None:
        for callback in list(self._callbacks):
            callback()

    def _start_revive(self) -> None:
        if self._closed or (self._revive is not None and not self._revive.done()):
            return
        self._revive = asyncio.get_running_loop().create_task(
            self._revive_loop(), name=f"mcp revive {self.name}"
        )

    async def _revive_loop(self) -> None:
        """Try a server that is down until it answers, then have the tools re-listed."""
        delay = REVIVE_FIRST_S
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self.connection.list_tools()
            except ToolError:
                delay = min(delay * 2, REVIVE_MAX_S)
                continue
            log.info("MCP tool entry %r: the server answers again", self.name)
            self._notify()
            return


def build_mcp_toolsets(specs: Sequence[Any], env: ToolEnv) -> list[Toolset]:
    """One ``McpToolset`` per ``type: mcp`` entry.  Nothing is started here: stdio
    servers are spawned, and remote ones reached, when the runtime starts."""
    from astromesh_ray.core.tools.builders import limits_of

    toolsets: list[Toolset] = []
    for spec in specs:
        assert isinstance(spec, McpToolSpec)
        key = f"{env.agent.name}/{spec.name}"
        connection: McpConnection
        if spec.mcp.transport == "stdio":
            connection = env.services.mcp_stdio(key, spec.mcp)
        else:
            connection = remote_connection(key, spec, env)
        toolsets.append(McpToolset(spec, connection, limits_of(spec)))
    return toolsets


def remote_connection(key: str, spec: McpToolSpec, env: ToolEnv) -> McpConnection:
    """An SSE or streamable HTTP server, reached through the agent's network policy
    (its own URL's host allowed; its addresses checked like any other)."""
    from astromesh_ray.core.tools.mcp.remote import RemoteConnection, RemoteEndpoint
    from astromesh_ray.core.tools.net import NetworkPolicy

    endpoint = RemoteEndpoint.from_spec(spec.name, spec.mcp, os.environ)
    policy = NetworkPolicy.for_agent(env.agent.spec.permissions, own_urls=[endpoint.url])
    return RemoteConnection(key, spec.mcp, endpoint, policy)
