"""Paused runs under Serve when the agent keeps no shared store (no memory, or an
``in_memory`` or ``sqlite`` history): one named, detached Ray actor owns the SQLite
file of paused runs, so a replica on any node can resume a run paused on another.

The actor restarts when it dies (``max_restarts=-1``) and reopens its file, which
lives in the data directory of the node it runs on (pin it with a custom resource,
or use Redis or PostgreSQL history, whose server holds the paused runs instead, on a
cluster whose nodes come and go).  Calls are not replayed on a restart: a ``take``
replayed after its first attempt had committed would find nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import ray

from astromesh_ray.core.runs.paused import PAUSED_TTL_S, PausedRun
from astromesh_ray.core.runs.stores import SqlitePausedRuns
from astromesh_ray.errors import MemoryUnavailable
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE, NamedActorClient
from astromesh_ray.serve.handles import describe
from astromesh_ray.serve.outcome import failure, ok

CALL_TIMEOUT_S = 30.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class PausedRunsActor:
    """Owns the paused runs' SQLite file; every method returns an outcome value."""

    def __init__(self, path: str) -> None:
        self._store = SqlitePausedRuns(path)

    async def save(self, agent: str, run: dict[str, Any], ttl_s: float) -> dict[str, Any]:
        try:
            await self._store.save(agent, PausedRun.from_dict(run), ttl_s)
        except Exception as exc:
            return failure(exc)
        return ok(None)

    async def get(self, agent: str, run_id: str) -> dict[str, Any]:
        try:
            run = await self._store.get(agent, run_id)
        except Exception as exc:
            return failure(exc)
        return ok(run.to_dict() if run is not None else None)

    async def take(self, agent: str, run_id: str) -> dict[str, Any]:
        try:
            run = await self._store.take(agent, run_id)
        except Exception as exc:
            return failure(exc)
        return ok(run.to_dict() if run is not None else None)


class ActorPausedRuns(NamedActorClient):
    """A ``PausedRunStore`` whose body is the ``PausedRunsActor`` of ``path``."""

    def __init__(self, path: str, *, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        digest = hashlib.sha256(path.encode()).hexdigest()[:16]
        super().__init__(f"astromesh-paused-runs-{digest}", call_timeout_s)
        self.path = path

    async def save(self, agent: str, run: PausedRun, ttl_s: float = PAUSED_TTL_S) -> None:
        await self._call("save", agent, run.to_dict(), ttl_s)

    async def get(self, agent: str, run_id: str) -> PausedRun | None:
        found = await self._call("get", agent, run_id)
        return PausedRun.from_dict(found) if found is not None else None

    async def take(self, agent: str, run_id: str) -> PausedRun | None:
        found = await self._call("take", agent, run_id)
        return PausedRun.from_dict(found) if found is not None else None

    def _unavailable(self, exc: BaseException) -> MemoryUnavailable:
        return MemoryUnavailable(
            f"the paused-runs actor {self.actor_name} is unavailable: {describe(exc)}",
            hint="it restarts by itself if it died; check the Ray cluster",
            backend="paused_runs",
            retryable=True,
        )

    def _timed_out(self, method: str) -> MemoryUnavailable:
        return MemoryUnavailable(
            f"the paused-runs actor {self.actor_name} did not answer {method} within "
            f"{self.call_timeout_s:g}s",
            backend="paused_runs",
            retryable=True,
        )

    def _lookup(self) -> Any:
        return PausedRunsActor.options(  # type: ignore[attr-defined]
            name=self.actor_name,
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
        ).remote(self.path)
