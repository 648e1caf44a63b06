"""``LocalStdioConnection``: a stdio MCP server as a subprocess of this process.

The server is started on first use (``list_tools`` when the runtime starts), with
``command``, ``args`` and ``env`` from YAML (``${ENV_VAR}`` substituted here, where
the process runs; the SDK passes only a safe subset of this process's environment
besides).  A server that exits is started again, and initialised again, on the next
use, with the bounded restarts and backoff of ``SessionConnection``.

Its stderr goes to a file of its own: the end of it is added to error messages
(why a server would not start, or what it printed before dying).  ``pid`` is the
server's process id while it runs (Linux), so that operators and tests can find it.

In one process (``astromesh run``) this is ``ToolServices.mcp_stdio``; under Serve
the same class lives in a Ray actor (``serve/tools.py``), one per agent and server.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import StdioServerParameters
from mcp.client.stdio import stdio_client

from astromesh_ray.core.tools.mcp.environ import expand_all
from astromesh_ray.core.tools.mcp.session import SessionConnection
from astromesh_ray.errors import ToolError
from astromesh_ray.spec.tools import McpServerSpec

__all__ = ["LocalStdioConnection", "child_with_stderr"]

# How much of a server's stderr an error message quotes.
STDERR_TAIL_CHARS = 1500


class LocalStdioConnection(SessionConnection):
    """A stdio MCP server owned by this process (see the module docstring).
    ``key`` is ``agent/tool entry``."""

    transport_name = "stdio"

    def __init__(self, key: str, server: McpServerSpec) -> None:
        if server.command is None:
            raise ToolError(f"MCP server {key!r}: transport stdio needs command")
        super().__init__(key, max_restarts=server.max_restarts)
        self.server = server
        self.pid: int | None = None
        self._dir: Path | None = None
        self._stderr: Path | None = None

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        return self._spawn()

    @asynccontextmanager
    async def _spawn(self) -> AsyncIterator[Any]:
        assert self.server.command is not None
        env = expand_all(self.server.env, os.environ, tool=self.key, where="env", error=ToolError)
        params = StdioServerParameters(
            command=self.server.command, args=list(self.server.args), env=env
        )
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="astromesh-mcp-"))
        # One stderr file per start: what a dead server printed is kept until the
        # next start.
        if self._stderr is not None:
            self._stderr.unlink(missing_ok=True)
        self._stderr = self._dir / f"stderr-{os.getpid()}-{self._numbers}.log"
        with self._stderr.open("w+", encoding="utf-8", errors="replace") as errlog:
            async with stdio_client(params, errlog=errlog) as streams:
                self.pid = child_with_stderr(self._stderr)
                try:
                    yield streams
                finally:
                    self.pid = None

    def _detail(self) -> str:
        tail = self.stderr_tail()
        return f"; its stderr ends with: {tail}" if tail else ""

    def stderr_tail(self, chars: int = STDERR_TAIL_CHARS) -> str:
        """The end of what the server (last started) wrote to stderr."""
        if self._stderr is None:
            return ""
        try:
            with self._stderr.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - chars))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return " ".join(text.split())[-chars:]

    def _health(self) -> dict[str, Any]:
        return {"command": self.server.command, "pid": self.pid}

    async def aclose(self) -> None:
        await super().aclose()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = self._stderr = None


def child_with_stderr(path: Path) -> int | None:
    """The pid of this process's child whose stderr is ``path`` (``None`` where
    ``/proc`` cannot tell: not Linux, or the child already exited)."""
    me = os.getpid()
    target = os.path.realpath(path)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == me and os.readlink(f"/proc/{entry}/fd/2") == target:
                return int(entry)
        except (OSError, ValueError, IndexError):
            continue
    return None
