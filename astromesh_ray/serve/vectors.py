"""Embedded vector stores as Ray actors: one owner per store, shared by the cluster.

A FAISS index with its snapshot directory, or a Qdrant (or Chroma) local-mode
directory, may have one owner only.  ``VectorStoreActor`` is that owner: a named,
detached async actor built from a picklable description (``kind`` and the store's
constructor arguments, as ``MemoryFactory`` gives them), so every replica of every
agent that names the same store reaches the same actor (``get_if_exists``).

- ``max_restarts=-1``: a dead actor comes back, and its store reloads what it
  persisted (FAISS snapshots are written before each mutation returns; Qdrant local
  mode writes through to disk).
- ``max_task_retries=1``: a call in flight when the actor died is replayed once on
  the restarted actor (upserts replace by id, so a replay is harmless), but a call
  that itself kills the actor fails after its second crash instead of crashing it
  forever (DESIGN §7).

``ActorVectorStore`` is the ``VectorStore`` the agent uses.  Errors cross the actor
boundary as values and are re-raised as their own type (``InvalidRequest``,
``MemoryUnavailable``, ...); Ray failing to reach the actor (not running, actor
dead or restarting, a timeout) is ``MemoryUnavailable``.

The store's files live on the node the actor runs on: on a multi-node cluster pin
the actor there (``actor_options``, e.g. a custom resource), or use a shared
filesystem.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from astromesh_ray.core.memory.base import VectorHit, VectorItem, VectorStore, Where
from astromesh_ray.core.memory.factory import VectorStoreSpec, build_vector_store
from astromesh_ray.errors import ConfigError, MemoryUnavailable
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE, NamedActorClient
from astromesh_ray.serve.handles import describe
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.outcome import failure, ok

__all__ = ["ActorVectorStore", "VectorStoreActor", "actor_name"]

# Long enough for an upsert that snapshots a large collection.
CALL_TIMEOUT_S = 60.0


def actor_name(kind: str, kwargs: Mapping[str, Any]) -> str:
    """The actor owning the store ``kind(**kwargs)``: one name per store location."""
    key = VectorStoreSpec(kind, dict(kwargs)).key
    return f"astromesh-vectors-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


# A store that failed to build (a snapshot that does not load, a directory another
# process holds) is tried again on a call at most this often.
REBUILD_EVERY_S = 2.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=1)
class VectorStoreActor:
    """Owns one embedded vector store; every method returns an outcome value
    (``{"ok": ...}`` or ``{"error": ...}``, ``serve/outcome.py``).

    Calls in flight when the actor dies are replayed once on its next incarnation
    (``max_task_retries=1``): upserts are idempotent (same ids, same items) and
    searches and counts read only; ``delete`` is never replayed, since a replay of a
    delete that had already committed would report nothing removed."""

    def __init__(self, kind: str, kwargs: dict[str, Any]) -> None:
        self._kind, self._kwargs = kind, kwargs
        self._store: VectorStore | None = None
        self._broken: dict[str, Any] | None = None
        self._tried = 0.0
        self._build()

    def _build(self) -> None:
        self._tried = time.monotonic()
        try:
            # Built here, in this process (on a restart, loading what the last
            # incarnation persisted).
            self._store = build_vector_store(VectorStoreSpec(self._kind, self._kwargs))
            self._broken = None
        except Exception as exc:
            # Answered to calls (an actor whose constructor raised would only say
            # "creation task failed", losing the error's type and hint) until a later
            # call builds the store: the cause may pass (a lock released, a file moved).
            self._broken = failure(exc)

    def _ready(self) -> VectorStore | dict[str, Any]:
        """The store, or the error of the last attempt to build it."""
        if self._store is None and time.monotonic() - self._tried >= REBUILD_EVERY_S:
            self._build()
        if self._store is None:
            assert self._broken is not None
            return self._broken
        return self._store

    async def upsert(self, collection: str, items: list[VectorItem]) -> dict[str, Any]:
        store = self._ready()
        if isinstance(store, dict):
            return store
        try:
            await store.upsert(collection, items)
        except Exception as exc:  # the actor's edge: every error leaves as a value
            return failure(exc)
        return ok(None)

    async def search(
        self,
        collection: str,
        vector: list[float],
        k: int,
        threshold: float | None,
        where: dict[str, Any] | None,
    ) -> dict[str, Any]:
        store = self._ready()
        if isinstance(store, dict):
            return store
        try:
            hits = await store.search(collection, vector, k=k, threshold=threshold, where=where)
        except Exception as exc:
            return failure(exc)
        return ok([hit.to_dict() for hit in hits])

    @ray.method(max_task_retries=0)  # type: ignore[untyped-decorator, unused-ignore]
    async def delete(
        self, collection: str, ids: list[str] | None, where: dict[str, Any] | None
    ) -> dict[str, Any]:
        store = self._ready()
        if isinstance(store, dict):
            return store
        try:
            removed = await store.delete(collection, ids=ids, where=where)
        except Exception as exc:
            return failure(exc)
        return ok(removed)

    async def count(self, collection: str, where: dict[str, Any] | None) -> dict[str, Any]:
        store = self._ready()
        if isinstance(store, dict):
            return store
        try:
            found = await store.count(collection, where)
        except Exception as exc:
            return failure(exc)
        return ok(found)

    async def location(self) -> dict[str, str]:
        """Where this incarnation runs: host, pid and node (a restart changes the pid)."""
        return replica_location()


class ActorVectorStore(NamedActorClient):
    """A ``VectorStore`` whose body is the named ``VectorStoreActor`` of the store
    ``kind(**kwargs)`` (created on first use if no process has yet).

    ``call_timeout_s`` bounds each call; ``actor_options`` go to the actor's
    ``.options()`` (resources, scheduling).  ``aclose`` leaves the actor running:
    other replicas share it.
    """

    cancel_on_timeout = True  # not left to run unseen (it may already be applied)

    def __init__(
        self,
        kind: str,
        kwargs: Mapping[str, Any],
        *,
        call_timeout_s: float = CALL_TIMEOUT_S,
        actor_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.kwargs = dict(kwargs)
        if not VectorStoreSpec(kind, self.kwargs).embedded:
            raise ConfigError(
                f"ActorVectorStore holds embedded stores only, not {kind} at a server URL",
                hint="reach a server store from the replica itself",
            )
        super().__init__(actor_name(kind, self.kwargs), call_timeout_s)
        self.name = kind
        self.actor_options = dict(actor_options or {})

    def __repr__(self) -> str:
        return f"ActorVectorStore({self.kind!r}, actor={self.actor_name!r})"

    # -- VectorStore protocol ----------------------------------------------------------

    async def upsert(self, collection: str, items: Sequence[VectorItem]) -> None:
        """Add ``items`` in the actor's store, replacing those with the same ids."""
        await self._call("upsert", collection, list(items))

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        *,
        k: int,
        threshold: float | None = None,
        where: Where | None = None,
    ) -> list[VectorHit]:
        """The ``k`` items most similar to ``vector`` matching ``where``, best first."""
        found = await self._call(
            "search", collection, list(vector), k, threshold, dict(where) if where else None
        )
        return [VectorHit.from_dict(hit) for hit in found]

    async def delete(
        self, collection: str, *, ids: Sequence[str] | None = None, where: Where | None = None
    ) -> int:
        """Remove the items with these ``ids`` and/or matching ``where``."""
        removed = await self._call(
            "delete",
            collection,
            list(ids) if ids is not None else None,
            dict(where) if where is not None else None,
        )
        return int(removed)

    async def count(self, collection: str, where: Where | None = None) -> int:
        """How many items of ``collection`` match ``where``."""
        return int(await self._call("count", collection, dict(where) if where else None))

    # -- the actor ---------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> MemoryUnavailable:
        return MemoryUnavailable(
            f"the {self.kind} vector store actor {self.actor_name} is unavailable: {describe(exc)}",
            hint="it restarts by itself if it died; check the Ray cluster",
            backend=self.kind,
            retryable=True,
        )

    def _lookup(self) -> Any:
        """The actor's handle, creating the actor if no one has (blocks on the GCS)."""
        options: dict[str, Any] = {
            "name": self.actor_name,
            "namespace": ACTOR_NAMESPACE,
            "get_if_exists": True,
            # It outlives whoever created it: the other replicas still use it.
            "lifetime": "detached",
            **self.actor_options,
        }
        return VectorStoreActor.options(**options).remote(  # type: ignore[attr-defined]
            self.kind, self.kwargs
        )

    def _check_ray(self) -> None:
        if not ray.is_initialized():
            # Creating an actor now would start a private Ray cluster in this process.
            raise MemoryUnavailable(
                f"the {self.kind} vector store lives in a Ray actor, and Ray is not running",
                hint="run under `astromesh serve` (Ray), or use the store in-process",
                backend=self.kind,
                retryable=False,
            )

    def _timed_out(self, method: str) -> MemoryUnavailable:
        return MemoryUnavailable(
            f"the {self.kind} vector store actor {self.actor_name} did not answer "
            f"{method} within {self.call_timeout_s:g}s",
            hint="it was cancelled, but may already have been applied",
            backend=self.kind,
            retryable=True,
        )
