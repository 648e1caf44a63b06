"""The A2A task store shared by every gateway replica: one named, detached Ray actor
(``A2ATasksActor``) holds the tasks of every agent, so ``GetTask``, ``ListTasks``
and ``CancelTask`` answer the same on any replica, whichever one ran the task.

``TableTaskStore`` is the a2a-sdk's ``VersionedTaskStore`` over a ``TaskTable``,
either in this process (``LocalTable``: tests, one-process use) or in the actor
(``ActorTable``).  Versions make a cancel work across replicas the SDK's way: a
``CancelTask`` answered by a replica that does not run the task writes CANCELED
straight to the table; the replica that runs it finds its next write stale
(``ConcurrentTaskModificationError``), reloads the task, sees it canceled and stops
the run, at the run's next event.

Each streamed chunk of the answer is one write; a chunk appended to an artifact is
sent as the event alone (the table applies it to its copy, at the version the
writer read), not as the whole task again.

Bounded: a task not written for ``TASK_TTL_S`` is dropped, and past ``MAX_TASKS``
the least recently written tasks are dropped first.  The actor keeps tasks in
memory: it restarts when it dies (``max_restarts=-1``), empty; calls are not
replayed on a restart.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import ray
from a2a.server.agent_execution.active_task import TERMINAL_TASK_STATES
from a2a.server.cluster import ConcurrentTaskModificationError, StoredTask, VersionedTaskStore
from a2a.server.cluster.version import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.owner_resolver import resolve_user_scope
from a2a.server.tasks import InMemoryTaskStore
from a2a.server.tasks.task_manager import append_artifact_to_task
from a2a.types.a2a_pb2 import (
    ListTasksRequest,
    ListTasksResponse,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
)

from astromesh_ray.errors import MemoryUnavailable
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE, NamedActorClient
from astromesh_ray.serve.handles import describe
from astromesh_ray.serve.outcome import failure, ok

TASK_TTL_S = 24 * 3600.0
"""How long a task is kept after its last write."""
MAX_TASKS = 10_000
"""The most tasks kept (all agents together); the least recently written go first."""
ACTOR_NAME = "astromesh-a2a-tasks"
CALL_TIMEOUT_S = 30.0


class TableVersion(TaskVersion):
    """A task's version in a ``TaskTable``: its write counter (``number`` > 0)."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


def _number(version: TaskVersion) -> int:
    if version.is_missing:
        return 0
    if not isinstance(version, TableVersion):
        raise TypeError(f"not a version this store wrote: {version!r}")
    return version.number


@dataclass(slots=True)
class _Entry:
    version: int
    state: int  # TaskState
    written: float


def _context(scope: str) -> ServerCallContext:
    return ServerCallContext(state={"scope": scope})


def _scope_of(context: ServerCallContext) -> str:
    return str(context.state["scope"])


class TaskTable:
    """Tasks by scope (an agent and an owner) and id, versioned and bounded.

    ``save`` and ``append`` return the new version, or 0 when ``prev`` is stale (the
    ``VersionedTaskStore`` contract: a first write has ``prev`` 0; a write moving a
    task to CANCELED needs no version, only a stored task that is not terminal).
    Tasks cross process boundaries serialized (protobuf bytes)."""

    def __init__(
        self,
        ttl_s: float = TASK_TTL_S,
        max_tasks: int = MAX_TASKS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_tasks = max_tasks
        self._clock = clock
        # The SDK's own listing (filters, order, page tokens), scoped by our resolver.
        self._tasks = InMemoryTaskStore(owner_resolver=_scope_of)
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()  # oldest first
        self._writes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def save(self, scope: str, task: bytes, prev: int) -> int:
        parsed = Task.FromString(task)
        entry = self._entries.get((scope, parsed.id))
        if parsed.status.state == TaskState.TASK_STATE_CANCELED:
            if entry is None or entry.state in TERMINAL_TASK_STATES:
                return 0
        elif (entry.version if entry else 0) != prev:
            return 0
        return await self._put(scope, parsed)

    async def append(self, scope: str, task_id: str, event: bytes, prev: int) -> int:
        """Apply an artifact chunk (``TaskArtifactUpdateEvent`` bytes) to the task."""
        entry = self._entries.get((scope, task_id))
        if entry is None or entry.version != prev:
            return 0
        stored = await self._tasks.get(task_id, _context(scope))
        if stored is None:
            return 0
        append_artifact_to_task(stored, TaskArtifactUpdateEvent.FromString(event))
        return await self._put(scope, stored)

    async def get(self, scope: str, task_id: str) -> tuple[bytes, int] | None:
        entry = self._entries.get((scope, task_id))
        if entry is None or self._expired(entry):
            return None
        task = await self._tasks.get(task_id, _context(scope))
        return (task.SerializeToString(), entry.version) if task is not None else None

    async def list(self, scope: str, request: bytes) -> bytes:
        await self._sweep()
        params = ListTasksRequest.FromString(request)
        page = await self._tasks.list(params, _context(scope))
        return bytes(page.SerializeToString())

    async def delete(self, scope: str, task_id: str) -> None:
        if self._entries.pop((scope, task_id), None) is not None:
            await self._tasks.delete(task_id, _context(scope))

    async def _put(self, scope: str, task: Task) -> int:
        self._writes += 1
        key = (scope, task.id)
        self._entries[key] = _Entry(self._writes, task.status.state, self._clock())
        self._entries.move_to_end(key)
        await self._tasks.save(task, _context(scope))
        await self._sweep()
        return self._writes

    def _expired(self, entry: _Entry) -> bool:
        return self._clock() - entry.written > self.ttl_s

    async def _sweep(self) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if len(self._entries) <= self.max_tasks and not self._expired(entry):
                return
            await self.delete(*key)


class TableBody(Protocol):
    """Where a ``TableTaskStore``'s table lives (this process, or the actor)."""

    async def save(self, scope: str, task: bytes, prev: int) -> int: ...
    async def append(self, scope: str, task_id: str, event: bytes, prev: int) -> int: ...
    async def get(self, scope: str, task_id: str) -> tuple[bytes, int] | None: ...
    async def list(self, scope: str, request: bytes) -> bytes: ...
    async def delete(self, scope: str, task_id: str) -> None: ...


LocalTable = TaskTable
"""A table in this process: a ``TableBody`` as it is."""


class TableTaskStore(VersionedTaskStore):
    """Agent ``agent``'s tasks: the a2a-sdk's versioned task store over ``body``.
    A task belongs to the agent and to the caller the SDK resolves from the request
    (``resolve_user_scope``): another agent or caller does not see it."""

    def __init__(self, agent: str, body: TableBody) -> None:
        self.agent = agent
        self.body = body

    def _scope(self, context: ServerCallContext) -> str:
        return f"{self.agent}/{resolve_user_scope(context)}"

    async def save(
        self,
        task: Task,
        *,
        event: Event | None,
        prev: Task | None,
        prev_version: TaskVersion,
        context: ServerCallContext,
    ) -> TaskVersion:
        scope, before = self._scope(context), _number(prev_version)
        if isinstance(event, TaskArtifactUpdateEvent) and event.append and before:
            number = await self.body.append(scope, task.id, event.SerializeToString(), before)
        else:
            number = await self.body.save(scope, task.SerializeToString(), before)
        if not number:
            raise ConcurrentTaskModificationError(task.id)
        return TableVersion(number)

    async def get(self, task_id: str, context: ServerCallContext) -> StoredTask | None:
        found = await self.body.get(self._scope(context), task_id)
        if found is None:
            return None
        return StoredTask(Task.FromString(found[0]), TableVersion(found[1]))

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        page = await self.body.list(self._scope(context), params.SerializeToString())
        response: ListTasksResponse = ListTasksResponse.FromString(page)
        return response

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        await self.body.delete(self._scope(context), task_id)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class A2ATasksActor:
    """Owns the shared ``TaskTable``; every method returns an outcome value."""

    def __init__(self, ttl_s: float, max_tasks: int) -> None:
        self._table = TaskTable(ttl_s, max_tasks)

    async def save(self, scope: str, task: bytes, prev: int) -> dict[str, Any]:
        return await _outcome(self._table.save(scope, task, prev))

    async def append(self, scope: str, task_id: str, event: bytes, prev: int) -> dict[str, Any]:
        return await _outcome(self._table.append(scope, task_id, event, prev))

    async def get(self, scope: str, task_id: str) -> dict[str, Any]:
        return await _outcome(self._table.get(scope, task_id))

    async def list(self, scope: str, request: bytes) -> dict[str, Any]:
        return await _outcome(self._table.list(scope, request))

    async def delete(self, scope: str, task_id: str) -> dict[str, Any]:
        return await _outcome(self._table.delete(scope, task_id))


async def _outcome(call: Awaitable[Any]) -> dict[str, Any]:
    try:
        return ok(await call)
    except Exception as exc:  # a bad request body, or our bug: sent back as a value
        return failure(exc)


class ActorTable(NamedActorClient):
    """A ``TableBody`` whose table is the ``A2ATasksActor``."""

    def __init__(
        self,
        *,
        ttl_s: float = TASK_TTL_S,
        max_tasks: int = MAX_TASKS,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        super().__init__(ACTOR_NAME, call_timeout_s)
        self.ttl_s = ttl_s
        self.max_tasks = max_tasks

    async def save(self, scope: str, task: bytes, prev: int) -> int:
        return int(await self._call("save", scope, task, prev))

    async def append(self, scope: str, task_id: str, event: bytes, prev: int) -> int:
        return int(await self._call("append", scope, task_id, event, prev))

    async def get(self, scope: str, task_id: str) -> tuple[bytes, int] | None:
        found = await self._call("get", scope, task_id)
        return (bytes(found[0]), int(found[1])) if found is not None else None

    async def list(self, scope: str, request: bytes) -> bytes:
        return bytes(await self._call("list", scope, request))

    async def delete(self, scope: str, task_id: str) -> None:
        await self._call("delete", scope, task_id)

    def _unavailable(self, exc: BaseException) -> MemoryUnavailable:
        return MemoryUnavailable(
            f"the A2A task-store actor {self.actor_name} is unavailable: {describe(exc)}",
            hint="it restarts by itself if it died (its tasks are lost); check the Ray cluster",
            backend="a2a_tasks",
            retryable=True,
        )

    def _timed_out(self, method: str) -> MemoryUnavailable:
        return MemoryUnavailable(
            f"the A2A task-store actor {self.actor_name} did not answer {method} within "
            f"{self.call_timeout_s:g}s",
            backend="a2a_tasks",
            retryable=True,
        )

    def _lookup(self) -> Any:
        return A2ATasksActor.options(  # type: ignore[attr-defined]
            name=self.actor_name,
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
        ).remote(self.ttl_s, self.max_tasks)
