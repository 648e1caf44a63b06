"""What toolsets are built from: ``ToolEnv`` (the agent, its permissions, peers,
memory, RAG pipelines) and ``ToolServices`` (what differs between one process and
the cluster: where MCP stdio servers live, where Python tools with resources run,
where rate-limit counters and the tool cache are kept).

``local_tool_services()`` is the one-process version (``astromesh run``, unit
tests); the serve layer gives the same protocols Ray bodies (an actor per MCP stdio
server, Ray tasks, one named state actor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from astromesh_ray.core.memory.factory import MemoryFactory
    from astromesh_ray.core.peers import Peer
    from astromesh_ray.core.tools.mcp.connection import McpConnection
    from astromesh_ray.spec import AgentSpec
    from astromesh_ray.spec.tools import McpServerSpec, ToolResourcesSpec


class RateLimiter(Protocol):
    """Call counters shared by every replica of every agent."""

    async def acquire(self, key: str, max_calls: int, window_s: float) -> float | None:
        """Count one call under ``key``: ``None`` when it is within ``max_calls`` per
        ``window_s`` seconds, else the seconds until a call would be allowed (the
        refused call is not counted)."""
        ...


class ToolCache(Protocol):
    """A small key-value store for the ``cache_store`` tool, per agent."""

    async def get(self, key: str) -> Any | None: ...

    async def set(self, key: str, value: Any, ttl_s: float | None) -> None: ...

    async def delete(self, key: str) -> bool: ...


class RemoteRunner(Protocol):
    """Runs a Python tool's function somewhere with the resources it declares."""

    async def run(
        self, fn: Callable[..., Any], kwargs: dict[str, Any], resources: ToolResourcesSpec
    ) -> Any: ...


McpStdioFactory = Callable[[str, "McpServerSpec"], "McpConnection"]
"""``(key, server) -> connection`` for a stdio MCP server: a subprocess owned by this
process, or a handle to the Ray actor owning it (one per agent and server)."""


@dataclass(frozen=True)
class ToolServices:
    """Where tool machinery lives (see the module docstring)."""

    mcp_stdio: McpStdioFactory
    rate_limiter: RateLimiter
    cache: Callable[[str], ToolCache]  # agent name -> its cache
    remote: RemoteRunner | None = None  # None: resources are not placed (one process)


@dataclass(frozen=True)
class ToolEnv:
    """What a toolset builder may use besides its tool specs."""

    agent: AgentSpec
    services: ToolServices
    peers: Mapping[str, Peer] = field(default_factory=dict)
    memory: MemoryFactory | None = None
    # RAG pipelines of the configuration, by name (kind: RAGPipeline documents).
    rag: Mapping[str, Any] = field(default_factory=dict)
    # Where relative permission paths are taken from: the directory astromesh was
    # started in (captured where the configuration was loaded, not in a replica).
    workdir: Path = field(default_factory=Path.cwd)
