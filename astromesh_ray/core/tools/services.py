"""Tool services in one process (``astromesh run``, unit tests): MCP stdio servers
as subprocesses of this process, rate-limit counters and the tool cache in memory.
Under Serve the same protocols are served cluster-wide (``serve/tools.py``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from astromesh_ray.core.tools.env import ToolCache, ToolServices

if TYPE_CHECKING:
    from astromesh_ray.core.tools.mcp.connection import McpConnection
    from astromesh_ray.spec.tools import McpServerSpec


class SlidingWindowLimiter:
    """``RateLimiter`` over a sliding window of call times per key (the last
    ``max_calls`` times are all that is kept).  ``clock`` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: dict[str, deque[float]] = {}

    def acquire_now(self, key: str, max_calls: int, window_s: float) -> float | None:
        """``acquire`` without awaiting (the serve actor calls this)."""
        now = self._clock()
        calls = self._calls.setdefault(key, deque())
        while calls and calls[0] <= now - window_s:
            calls.popleft()
        if len(calls) >= max_calls:
            return max(calls[0] + window_s - now, 0.001)
        calls.append(now)
        return None

    async def acquire(self, key: str, max_calls: int, window_s: float) -> float | None:
        return self.acquire_now(key, max_calls, window_s)


class MemoryToolCache:
    """``ToolCache`` in a dict, entries expiring after their TTL, at most
    ``max_entries`` (the oldest written is dropped first)."""

    def __init__(
        self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_entries
        self._clock = clock
        self._items: dict[str, tuple[Any, float | None]] = {}

    def get_now(self, key: str) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= self._clock():
            del self._items[key]
            return None
        return value

    def set_now(self, key: str, value: Any, ttl_s: float | None) -> None:
        self._items.pop(key, None)
        while len(self._items) >= self._max:
            del self._items[next(iter(self._items))]
        expires = self._clock() + ttl_s if ttl_s is not None else None
        self._items[key] = (value, expires)

    def delete_now(self, key: str) -> bool:
        return self._items.pop(key, None) is not None

    async def get(self, key: str) -> Any | None:
        return self.get_now(key)

    async def set(self, key: str, value: Any, ttl_s: float | None) -> None:
        self.set_now(key, value, ttl_s)

    async def delete(self, key: str) -> bool:
        return self.delete_now(key)


def _local_stdio(key: str, server: McpServerSpec) -> McpConnection:
    # Imported on first use: agents without MCP tools never load the mcp SDK.
    from astromesh_ray.core.tools.mcp.stdio import LocalStdioConnection

    return LocalStdioConnection(key, server)


def local_tool_services() -> ToolServices:
    """Tool services of this process: one limiter, one cache per agent."""
    caches: dict[str, ToolCache] = {}

    def cache(agent: str) -> ToolCache:
        if agent not in caches:
            caches[agent] = MemoryToolCache()
        return caches[agent]

    return ToolServices(
        mcp_stdio=_local_stdio,
        rate_limiter=SlidingWindowLimiter(),
        cache=cache,
    )
