"""The cluster bodies of ``ToolServices`` (``core/tools/env.py``), for agent replicas.

- **MCP stdio servers**: one named, detached ``McpStdioActor`` per agent and tool
  entry (and server block: a changed YAML gets a new actor) owns the subprocess and
  its session (a ``LocalStdioConnection``), so every replica of the agent shares one
  server.  Ray restarts the actor if its process dies (``max_restarts`` of the server
  block); the connection inside restarts the server itself.  Replicas reach it
  through ``ActorStdioConnection`` and keep one long poll (``changes``) pending, which
  answers when the server's tool list changed (or the actor was recreated: a new
  ``epoch``) and brings the server's health along.
- **Rate limits and the tool cache**: one named, detached ``ToolStateActor``
  (``astromesh-tool-state``) counts calls in sliding windows and keeps each agent's
  cache.  Replicas fail open: when the actor cannot be reached a call is allowed (a
  cache miss), and a warning is logged once per outage.
- **Python tools with resources**: ``RayTaskRunner`` runs the function as a Ray task
  with ``num_cpus`` / ``num_gpus`` / ``memory`` and awaits it.

Errors cross the actor boundary as values (``serve/outcome.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import uuid
from collections.abc import Callable
from typing import Any

import ray
from ray import cloudpickle
from ray.exceptions import ActorUnavailableError, RayError
from ray.serve.exceptions import RayServeException
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from astromesh_ray.core.tools.base import ToolResult
from astromesh_ray.core.tools.env import ToolServices
from astromesh_ray.core.tools.mcp.connection import McpToolInfo, server_down
from astromesh_ray.core.tools.services import MemoryToolCache, SlidingWindowLimiter
from astromesh_ray.errors import ToolError
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE
from astromesh_ray.serve.handles import RAY_FAILURES, describe
from astromesh_ray.serve.outcome import failure, ok, unwrap
from astromesh_ray.spec.tools import McpServerSpec, ToolResourcesSpec

__all__ = [
    "ActorRateLimiter",
    "ActorStdioConnection",
    "ActorToolCache",
    "McpStdioActor",
    "RayTaskRunner",
    "ToolStateActor",
    "mcp_actor_name",
    "serve_tool_services",
]

log = logging.getLogger("astromesh.tools")

STATE_ACTOR = "astromesh-tool-state"
# A state call waits this long before failing open; a list or a lookup this long.
STATE_TIMEOUT_S = 5.0
ACTOR_TIMEOUT_S = 60.0
# A pending poll is answered after this long even when nothing changed.
POLL_TIMEOUT_S = 30.0
# A call's own timeout, plus this, bounds the wait for the actor's answer.
CALL_MARGIN_S = 10.0
RETRY_POLL_S = 1.0


def mcp_actor_name(key: str, server: McpServerSpec) -> str:
    """The actor owning stdio server ``server`` of tool entry ``key`` (``agent/entry``)."""
    digest = hashlib.sha256(server.model_dump_json().encode()).hexdigest()[:12]
    return f"astromesh-mcp-{key.replace('/', '-')}-{digest}"


# -- MCP stdio servers -------------------------------------------------------------------


@ray.remote(num_cpus=0, max_task_retries=0)
class McpStdioActor:
    """Owns one stdio MCP server for every replica of one agent.  Async: long polls
    and calls are served concurrently.  Calls are never replayed on a restarted
    actor (``max_task_retries=0``): a tool call may have side effects."""

    def __init__(self, key: str, server: McpServerSpec) -> None:
        # Imported here: replicas of agents without stdio servers never load the SDK.
        from astromesh_ray.core.tools.mcp.stdio import LocalStdioConnection

        self.connection = LocalStdioConnection(key, server)
        self.epoch = uuid.uuid4().hex[:12]
        self.version = 0
        self._changed = asyncio.Event()
        self.connection.on_list_changed(self._bump)

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def list_tools(self) -> dict[str, Any]:
        try:
            return ok(await self.connection.list_tools())
        except Exception as exc:  # the actor's edge: every error leaves as a value
            return failure(exc)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], timeout_s: float | None
    ) -> dict[str, Any]:
        try:
            return ok(await self.connection.call_tool(name, arguments, timeout_s))
        except Exception as exc:
            return failure(exc)

    async def changes(self, epoch: str | None, version: int, timeout_s: float) -> dict[str, Any]:
        """The version and health, as soon as they differ from what the caller saw
        (``epoch``, ``version``), or after ``timeout_s``."""
        if epoch == self.epoch and version >= self.version:
            changed = self._changed
            try:
                async with asyncio.timeout(timeout_s):
                    await changed.wait()
            except TimeoutError:
                pass
        return ok({"epoch": self.epoch, "version": self.version, "health": self.health()})

    def health(self) -> dict[str, Any]:
        return self.connection.health()

    def pid(self) -> int | None:
        """The server's process id while it runs (operations, tests)."""
        return self.connection.pid

    async def aclose(self) -> None:
        await self.connection.aclose()


class ActorStdioConnection:
    """``McpConnection`` to the agent's ``McpStdioActor`` (created on first use)."""

    def __init__(self, key: str, server: McpServerSpec) -> None:
        self.key = key
        self.server = server
        self.actor_name = mcp_actor_name(key, server)
        self._actor: Any = None
        self._callbacks: list[Callable[[], None]] = []
        self._health: dict[str, Any] = {"transport": "stdio", "status": "idle"}
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    async def actor(self) -> Any:
        """The actor's handle (creating the actor if no replica has yet)."""
        if self._actor is None:
            self._actor = await asyncio.to_thread(self._lookup)
        return self._actor

    def _lookup(self) -> Any:
        # On the node of the replica that starts it, so the server runs where the agent
        # was placed: off the GPU pool unless the agent asked for it (serve/placement.py).
        # Hard: Ray 2.60 ignores a soft affinity for an actor that reserves nothing.  If
        # that node goes, the actor cannot restart and is created again (dead for good:
        # `_ask`), next to the replica that needs it next.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        return McpStdioActor.options(  # type: ignore[attr-defined]  # ray.remote wraps it
            name=self.actor_name,
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",  # shared by every replica of the agent
            max_restarts=self.server.max_restarts,
            scheduling_strategy=here,
        ).remote(self.key, self.server)

    async def _ask(self, method: str, *args: Any, timeout_s: float | None) -> Any:
        if not ray.is_initialized():
            raise server_down(self.key, "its actor lives in Ray, and Ray is not running")
        ref = None
        try:
            actor = await self.actor()
            ref = getattr(actor, method).remote(*args)
            outcome = await asyncio.wait_for(ref, timeout_s)
        except asyncio.CancelledError:
            if ref is not None:
                ray.cancel(ref)  # the tool step gave up: so does the actor
            raise
        except TimeoutError:
            if ref is not None:
                ray.cancel(ref)
            raise self._unreachable(
                f"its actor did not answer {method} in {timeout_s:g} s"
            ) from None
        except ActorUnavailableError as exc:  # restarting: the handle stays good
            raise self._unreachable(describe(exc)) from None
        except RAY_FAILURES as exc:
            self._actor = None  # dead for good: looked up (or created) again next time
            raise self._unreachable(describe(exc)) from None
        return unwrap(outcome)

    def _unreachable(self, why: str) -> ToolError:
        self._health = {"transport": "stdio", "status": "down", "error": why}
        return server_down(self.key, why)

    async def list_tools(self) -> list[McpToolInfo]:
        self._start_polling()
        tools: list[McpToolInfo] = await self._ask("list_tools", timeout_s=ACTOR_TIMEOUT_S)
        return tools

    async def call_tool(
        self, name: str, arguments: dict[str, Any], timeout_s: float | None
    ) -> ToolResult:
        self._start_polling()
        wait = None if timeout_s is None else timeout_s + CALL_MARGIN_S
        result: ToolResult = await self._ask(
            "call_tool", name, arguments, timeout_s, timeout_s=wait
        )
        return result

    def on_list_changed(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def health(self) -> dict[str, Any]:
        return {**self._health, "actor": self.actor_name}

    async def pid(self) -> int | None:
        """The server's process id, as the actor knows it."""
        actor = await self.actor()
        found: int | None = await actor.pid.remote()
        return found

    async def aclose(self) -> None:
        """Stop following the actor; it keeps running (the other replicas use it)."""
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        self._actor = None

    def _start_polling(self) -> None:
        if self._closed or (self._poller is not None and not self._poller.done()):
            return
        self._poller = asyncio.get_running_loop().create_task(
            self._poll(), name=f"mcp poll {self.key}"
        )

    async def _poll(self) -> None:
        """Follow the actor's version: its tool list changed, or it was recreated."""
        epoch: str | None = None
        version = -1
        while not self._closed:
            try:
                state = await self._ask(
                    "changes", epoch, version, POLL_TIMEOUT_S, timeout_s=POLL_TIMEOUT_S + 10
                )
            except ToolError:
                await asyncio.sleep(RETRY_POLL_S)
                continue
            self._health = state["health"]
            changed = epoch is not None and (state["epoch"], state["version"]) != (epoch, version)
            epoch, version = state["epoch"], state["version"]
            if changed:
                for callback in list(self._callbacks):
                    callback()


# -- rate limits and the tool cache -------------------------------------------------------


@ray.remote(num_cpus=0, max_restarts=-1)
class ToolStateActor:
    """Call counters and tool caches shared by the cluster (restarted empty)."""

    def __init__(self) -> None:
        self._limiter = SlidingWindowLimiter()
        self._caches: dict[str, MemoryToolCache] = {}

    def _cache(self, agent: str) -> MemoryToolCache:
        return self._caches.setdefault(agent, MemoryToolCache())

    async def acquire(self, key: str, max_calls: int, window_s: float) -> float | None:
        return self._limiter.acquire_now(key, max_calls, window_s)

    async def cache_get(self, agent: str, key: str) -> Any | None:
        return self._cache(agent).get_now(key)

    async def cache_set(self, agent: str, key: str, value: Any, ttl_s: float | None) -> None:
        self._cache(agent).set_now(key, value, ttl_s)

    async def cache_delete(self, agent: str, key: str) -> bool:
        return self._cache(agent).delete_now(key)


class StateLink:
    """A replica's way to the state actor: calls that fail open (``None``), with one
    warning per outage."""

    def __init__(self) -> None:
        self._actor: Any = None
        self._warned = False

    def _lookup(self) -> Any:
        return ToolStateActor.options(  # type: ignore[attr-defined]  # ray.remote wraps it
            name=STATE_ACTOR, namespace=ACTOR_NAMESPACE, get_if_exists=True, lifetime="detached"
        ).remote()

    async def ask(self, method: str, *args: Any) -> tuple[bool, Any]:
        """``(True, answer)``, or ``(False, None)`` when the actor cannot be reached."""
        ref = None
        try:
            if self._actor is None:
                self._actor = await asyncio.to_thread(self._lookup)
            ref = getattr(self._actor, method).remote(*args)
            answer = await asyncio.wait_for(ref, STATE_TIMEOUT_S)
        except (TimeoutError, RayError, RayServeException) as exc:
            if ref is not None and isinstance(exc, TimeoutError):
                ray.cancel(ref)
            self._actor = None
            if not self._warned:
                self._warned = True
                log.warning(
                    "the tool state actor %s cannot be reached (%s): rate limits and the "
                    "tool cache fail open until it answers",
                    STATE_ACTOR,
                    describe(exc) if not isinstance(exc, TimeoutError) else "timed out",
                )
            return False, None
        if self._warned:
            self._warned = False
            log.warning("the tool state actor %s answers again", STATE_ACTOR)
        return True, answer


class ActorRateLimiter:
    """``RateLimiter`` counted by the state actor; allows the call when it cannot."""

    def __init__(self, link: StateLink) -> None:
        self._link = link

    async def acquire(self, key: str, max_calls: int, window_s: float) -> float | None:
        reached, wait = await self._link.ask("acquire", key, max_calls, window_s)
        return float(wait) if reached and wait is not None else None


class ActorToolCache:
    """One agent's ``ToolCache`` in the state actor; a miss when it cannot answer."""

    def __init__(self, link: StateLink, agent: str) -> None:
        self._link = link
        self._agent = agent

    async def get(self, key: str) -> Any | None:
        _, value = await self._link.ask("cache_get", self._agent, key)
        return value

    async def set(self, key: str, value: Any, ttl_s: float | None) -> None:
        await self._link.ask("cache_set", self._agent, key, value, ttl_s)

    async def delete(self, key: str) -> bool:
        _, removed = await self._link.ask("cache_delete", self._agent, key)
        return bool(removed)


# -- Python tools with resources --------------------------------------------------------------


class _Raised:
    """An exception the tool's function raised in its task, carried back as a value
    (re-raised as itself in the replica, not wrapped in Ray's task error)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _run_function(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    try:
        value = fn(**kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
        return value
    except Exception as exc:  # the user's function: its error goes back as a value
        try:
            cloudpickle.dumps(exc)  # type: ignore[no-untyped-call]
        except Exception:  # an exception that cannot travel: its text does
            return _Raised(RuntimeError(f"{type(exc).__name__}: {exc}"))
        return _Raised(exc)


async def _awaited(value: Any) -> Any:
    return await value


# Never retried: a tool call may have side effects.
_run_task = ray.remote(max_retries=0)(_run_function)


class RayTaskRunner:
    """``RemoteRunner``: each call is a Ray task with the tool's resources."""

    async def run(
        self, fn: Callable[..., Any], kwargs: dict[str, Any], resources: ToolResourcesSpec
    ) -> Any:
        options: dict[str, Any] = {}
        if resources.num_cpus is not None:
            options["num_cpus"] = resources.num_cpus
        if resources.num_gpus is not None:
            options["num_gpus"] = resources.num_gpus
        if resources.memory is not None:
            options["memory"] = resources.memory
        ref = _run_task.options(**options).remote(fn, kwargs)
        try:
            value = await ref
        except asyncio.CancelledError:
            ray.cancel(ref)  # the tool's timeout: the task goes too
            raise
        except RAY_FAILURES as exc:
            name = getattr(fn, "__name__", "the tool")
            raise ToolError(
                f"the Ray task running {name} failed: {describe(exc)}",
                hint="the cluster could not run it with the resources it declares",
            ) from None
        if isinstance(value, _Raised):
            raise value.exc
        return value


def serve_tool_services(agent_name: str) -> ToolServices:
    """The tool services of a replica of agent ``agent_name`` (see the module docstring)."""
    link = StateLink()
    return ToolServices(
        mcp_stdio=ActorStdioConnection,
        rate_limiter=ActorRateLimiter(link),
        cache=lambda agent: ActorToolCache(link, agent or agent_name),
        remote=RayTaskRunner(),
    )
