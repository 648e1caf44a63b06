"""MCP servers for tests, written with the ``mcp`` SDK (``MCPServer``), and a helper
that runs one on a free loopback port.

Tools: ``add(a, b)``, ``echo(text)`` (structured content), ``fail()`` (an
``isError`` result), ``hang()`` (never answers), ``picture()`` (a PNG image),
``pid()`` (the server's process id) and ``enable_extra()``, which registers the
tool ``extra(text)`` and tells clients the tool list changed (a
``subscriptions/listen`` event for 2026 sessions, ``notifications/tools/list_changed``
for 2025 ones).  ``add``, ``echo`` and ``pid`` are marked read-only.

Run one: ``python -m astromesh_ray.testing.mcp_servers --transport stdio|sse|http
[--port N] [--legacy]`` (SSE at ``/sse``, streamable HTTP at ``/mcp``).  ``--legacy``
(stdio) serves only the 2025 revisions: the ``initialize`` handshake, no 2026
``server/discover``, so clients fall back to the handshake.  In a test::

    with McpTestServer("http") as server:
        server.url  # http://127.0.0.1:<port>/mcp

Imports neither Ray nor anything of astromesh-ray's but this module.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import Literal, Self

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server
from mcp.types import ToolAnnotations
from pydantic import BaseModel

__all__ = ["PNG", "McpTestServer", "build_server", "free_port", "main", "serve_legacy_stdio"]

Transport = Literal["stdio", "sse", "http"]

# A valid PNG of one transparent pixel (68 bytes).
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000b49444154789c6360000200000500017a5eab3f0000000049454e44ae426082"
)
READ_ONLY = ToolAnnotations(read_only_hint=True)


class Echoed(BaseModel):
    """What ``echo`` returns (its structured content)."""

    text: str
    length: int


def build_server(name: str = "astromesh-test") -> MCPServer:
    """A server with the test tools (see the module docstring)."""
    server = MCPServer(name, log_level="WARNING")

    @server.tool(annotations=READ_ONLY)
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool(annotations=READ_ONLY)
    def echo(text: str) -> Echoed:
        """Echo a text back, with its length."""
        return Echoed(text=text, length=len(text))

    @server.tool()
    def fail() -> str:
        """Always fail."""
        raise ToolError("fail always fails")

    @server.tool()
    async def hang() -> str:
        """Never answer."""
        await anyio.sleep_forever()
        return "unreachable"

    @server.tool()
    def picture() -> Image:
        """A one-pixel PNG."""
        return Image(data=PNG, format="png")

    @server.tool(annotations=READ_ONLY)
    def pid() -> int:
        """This server's process id."""
        return os.getpid()

    @server.tool()
    async def enable_extra(ctx: Context) -> str:
        """Add the tool `extra` and tell clients the tool list changed."""

        def extra(text: str) -> str:
            """Upper-case a text."""
            return text.upper()

        server.add_tool(extra, name="extra")
        await ctx.notify_tools_changed()  # subscriptions/listen streams (2026-07-28)
        if ctx.protocol_version not in (None, "2026-07-28"):
            await ctx.session.send_tool_list_changed()  # a 2025 session
        return "extra is enabled"

    return server


async def serve_legacy_stdio(server: MCPServer) -> None:
    """Serve ``server`` over stdio in the handshake-only loop of the 2025 revisions."""
    # MCPServer has no public accessor for its low-level server (the SDK's own
    # in-process client reads this attribute too).
    lowlevel = server._lowlevel_server
    async with stdio_server() as (read, write), lowlevel.lifespan(lowlevel) as state:
        await serve_loop(
            lowlevel,
            read,
            write,
            lifespan_state=state,
            init_options=lowlevel.create_initialization_options(),
        )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class McpTestServer:
    """``python -m astromesh_ray.testing.mcp_servers`` over SSE or streamable HTTP on
    a free loopback port, in a subprocess; entering waits until it accepts
    connections.  ``stop()`` / ``start()`` take it down and bring it back on the same
    port (a server that was down)."""

    def __init__(self, transport: Literal["sse", "http"], port: int | None = None) -> None:
        self.transport = transport
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        path = "/sse" if self.transport == "sse" else "/mcp"
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout_s: float = 30.0) -> Self:
        if self.process is not None and self.process.poll() is None:
            return self
        command = [sys.executable, "-m", "astromesh_ray.testing.mcp_servers"]
        command += ["--transport", self.transport, "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the MCP test server did not listen on {self.port} in {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An MCP server with astromesh's test tools.")
    parser.add_argument("--transport", choices=["stdio", "sse", "http"], default="stdio")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--legacy", action="store_true", help="stdio: serve only the 2025 revisions"
    )
    args = parser.parse_args(argv)
    server = build_server()
    if args.transport == "stdio" and args.legacy:
        anyio.run(serve_legacy_stdio, server)
    elif args.transport == "stdio":
        server.run("stdio")
    elif args.transport == "sse":
        server.run("sse", host="127.0.0.1", port=args.port)
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
