"""Memory under Serve: the factory each agent replica builds its backends with.

Network stores (Redis, PostgreSQL, pgvector, a Qdrant or Chroma server) are reached
from the replica through its own connection pool: on 2 shared cores a Serve hop per
memory call would cost more than the call.  Embedded vector stores (FAISS, Qdrant
or Chroma local mode) have a single owner: one named Ray actor per store, shared by
every replica of every agent that uses it, which snapshots to the data directory and
reloads on restart (``serve/vectors.py``).  SQLite files are shared by the replicas
on a host (WAL mode, busy timeouts).  Paused runs of agents without a Redis or
PostgreSQL history live in one actor (``serve/paused.py``), reachable from every
node.  An embedder with a ``deployment`` block is its own application, batching the
calls of every replica (``serve/embedders.py``); without one it runs in the replica.
Guardrails keep budgets and redaction placeholders in one named actor
(``serve/guardrail_state.py``), so replicas share them.
"""

from __future__ import annotations

from astromesh_ray.core.guardrails.budget import Ledger
from astromesh_ray.core.guardrails.vault import PlaceholderVault
from astromesh_ray.core.memory.base import Embedder, VectorStore
from astromesh_ray.core.memory.factory import (
    BUDGET_FILE,
    SQLITE_FILE,
    MemoryFactory,
    VectorStoreSpec,
)
from astromesh_ray.core.runs.paused import PausedRunStore
from astromesh_ray.serve.embedders import ServeEmbedder, embedder_app_name
from astromesh_ray.serve.guardrail_state import ActorLedger, ActorVault
from astromesh_ray.serve.paused import ActorPausedRuns
from astromesh_ray.serve.vectors import ActorVectorStore
from astromesh_ray.spec.memory import ConversationalMemorySpec, EmbeddingSpec


class ServeMemoryFactory(MemoryFactory):
    """``MemoryFactory`` whose embedded vector stores live in their owner actor, and
    whose embedders with a ``deployment`` are their own Serve application."""

    def embedded_vectors(self, described: VectorStoreSpec) -> VectorStore:
        return ActorVectorStore(described.kind, dict(described.kwargs))

    def paused_runs(self, spec: ConversationalMemorySpec | None) -> PausedRunStore:
        """Next to a Redis or PostgreSQL history, as in one process; otherwise in the
        paused-runs actor (``serve/paused.py``), which every node can reach."""
        if spec is not None and spec.backend not in ("sqlite", "in_memory"):
            return super().paused_runs(spec)
        own = spec is not None and spec.backend == "sqlite" and spec.connection is not None
        file = spec.connection.url if own and spec and spec.connection else None
        path = str(self.defaults.path(file or SQLITE_FILE))
        return self._once(f"paused:actor:{path}", lambda: ActorPausedRuns(path))  # type: ignore[no-any-return]

    def placeholder_vault(self) -> PlaceholderVault:
        """The vault actor's (``serve/guardrail_state.py``): one session's
        placeholders are the same on every replica."""
        path = str(self.defaults.path(BUDGET_FILE))
        return self._once(f"guardrails:vault:{path}", lambda: ActorVault(path))  # type: ignore[no-any-return]

    def budget_ledger(self) -> Ledger:
        """The ledger actor's: replicas cannot overspend a budget together."""
        path = str(self.defaults.path(BUDGET_FILE))
        return self._once(f"guardrails:ledger:{path}", lambda: ActorLedger(path))  # type: ignore[no-any-return]

    def embedder_for(self, spec: EmbeddingSpec) -> Embedder:
        if spec.deployment is not None:
            return ServeEmbedder(embedder_app_name(spec))
        return super().embedder_for(spec)
