"""``McpConnection``: one MCP server as the toolset sees it, whatever the transport
(a subprocess of this process, a Ray actor owning one, a server reached by URL).

A connection lists the server's tools, calls one with a timeout, tells who asked
when the server's tool list changed, and reports its health.  What it returns are
plain values (``McpToolInfo``, ``ToolResult``): they cross actor boundaries.

How an MCP result becomes a ``ToolResult`` is ``results.to_tool_result``.
Protocol failures (an unknown tool, a server that hung up, a timeout) are
``ToolError``s naming the server and the tool (``protocol_error``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from astromesh_ray.core.tools.base import ToolResult
from astromesh_ray.errors import ToolError

if TYPE_CHECKING:
    from mcp.types import Tool

__all__ = [
    "McpConnection",
    "McpToolInfo",
    "protocol_error",
    "server_down",
]

# JSON-RPC error codes the SDK raises for a transport that closed and a request that
# timed out (``mcp.types.CONNECTION_CLOSED`` / ``REQUEST_TIMEOUT``; repeated here: this
# module does not import the SDK, the serve layer imports it in every replica).
CONNECTION_CLOSED = -32000
REQUEST_TIMEOUT = -32001


@dataclass(frozen=True, slots=True)
class McpToolInfo:
    """One tool a server lists, under the server's own name."""

    name: str
    description: str
    input_schema: dict[str, Any]
    # annotations.readOnlyHint: calling it changes nothing (so: no side effects, and a
    # call lost to a server that died may be sent again).
    read_only: bool = False

    @staticmethod
    def of(tool: Tool) -> McpToolInfo:
        annotations = tool.annotations
        return McpToolInfo(
            name=tool.name,
            description=tool.description or (annotations.title if annotations else None) or "",
            input_schema=dict(tool.input_schema),
            read_only=bool(annotations is not None and annotations.read_only_hint),
        )


@runtime_checkable
class McpConnection(Protocol):
    """One MCP server.  ``key`` names it in errors and logs (``agent/tool entry``)."""

    key: str

    async def list_tools(self) -> list[McpToolInfo]:
        """The server's tools now; ``ToolError`` when it cannot be reached."""
        ...

    async def call_tool(
        self, name: str, arguments: dict[str, Any], timeout_s: float | None
    ) -> ToolResult:
        """Call tool ``name`` (the server's name for it), giving up after
        ``timeout_s`` seconds (the call is cancelled at the server; the connection
        stays usable).  ``ToolError`` for protocol failures."""
        ...

    def on_list_changed(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from any thread) whenever the server's tool list may
        have changed: a ``list_changed`` notification, or a server that came back."""
        ...

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "down" | "idle", "error": ..., ...}``: what is known
        now, without asking the server."""
        ...

    async def aclose(self) -> None:
        """Close the session (and stop the server process, for stdio)."""
        ...


def protocol_error(server: str, tool: str | None, exc: BaseException) -> ToolError:
    """A failure to talk to the server, as the model should read it."""
    what = f"tool {tool!r} of MCP server {server!r}" if tool else f"MCP server {server!r}"
    code = getattr(exc, "code", None)
    message = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    if code == CONNECTION_CLOSED:
        return ToolError(
            f"{what}: the server closed the connection ({message})",
            hint="the server is restarted on the next call; call the tool again",
            tool=tool,
            server=server,
        )
    if isinstance(code, int):
        return ToolError(
            f"{what} refused the call: {message} (MCP error {code})",
            hint="check the tool's name and arguments against its schema",
            tool=tool,
            server=server,
        )
    return ToolError(f"{what} failed: {message}", tool=tool, server=server)


def server_down(server: str, why: str, *, tool: str | None = None) -> ToolError:
    """The server cannot be reached at all."""
    what = f"tool {tool!r}: MCP server {server!r}" if tool else f"MCP server {server!r}"
    return ToolError(
        f"{what} is down: {why}",
        hint="do without this tool for now; the server is tried again later",
        tool=tool,
        server=server,
    )
