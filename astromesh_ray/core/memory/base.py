"""The memory interfaces: ``ConversationStore``, ``VectorStore``, ``Embedder`` and
``EpisodicLog``, and the records they hold.

Every backend implements one of these protocols (``<Backend><Concept>``: e.g.
``RedisConversationStore``, ``PgVectorStore``, ``PostgresEpisodicLog``); the memory
stages (``core/memory/stages.py``) and the memory API use nothing else.  Records are
plain dataclasses that convert to and from JSON-able dicts, so they cross Ray and
HTTP unchanged.

Ordering of a session's history (conversational stores): every completed turn is
stored as *one* record holding all of its messages (user message, assistant tool
calls, tool results, final answer), under a per-session sequence number the store
assigns atomically when the turn is appended (``seq`` 1, 2, 3, ...).  So turns never
interleave, a retried append of the same ``run_id`` is not stored twice, and
concurrent turns of one session (on any replicas) are ordered by the moment each
finished.  A turn that fails stores nothing in the conversation (the episodic log
records it, with its error).

A backend that cannot be reached raises ``MemoryUnavailable`` (HTTP 503), having
stored nothing; bad arguments raise ``InvalidRequest``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from astromesh_ray.core.messages import Message

# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Where one session's history lives: scoped by namespace, agent and session id."""

    namespace: str
    agent: str
    session: str

    def to_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "agent": self.agent, "session": self.session}


@dataclass(frozen=True, slots=True)
class NewTurn:
    """A completed turn to append: its whole transcript, without the system prompt.

    ``messages`` starts with the user message and ends with the final assistant
    message; replayed in order it is a valid message list for any provider.
    ``meta`` is small JSON-able data shown by the history API (trace id, usage).
    """

    run_id: str
    messages: Sequence[Message]
    created_at: float = field(default_factory=time.time)
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredTurn:
    """A turn as stored: ``seq`` is its place in the session (1, 2, 3, ...)."""

    seq: int
    run_id: str
    messages: tuple[Message, ...]
    created_at: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "run_id": self.run_id,
            "messages": [m.to_dict() for m in self.messages],
            "created_at": self.created_at,
            "meta": dict(self.meta),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> StoredTurn:
        return StoredTurn(
            seq=int(data["seq"]),
            run_id=str(data["run_id"]),
            messages=tuple(Message.from_dict(m) for m in data["messages"]),
            created_at=float(data["created_at"]),
            meta=dict(data.get("meta") or {}),
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """The running summary of a session: every turn with ``seq <= upto_seq`` is
    folded into ``text``."""

    text: str
    upto_seq: int
    updated_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "upto_seq": self.upto_seq, "updated_at": self.updated_at}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Summary:
        return Summary(str(data["text"]), int(data["upto_seq"]), float(data["updated_at"]))


@dataclass(frozen=True, slots=True)
class History:
    """What a store returns for a session: turns in ``seq`` order, and the summary."""

    turns: list[StoredTurn]
    summary: Summary | None = None

    def messages(self) -> list[Message]:
        """The turns' messages in order (the summary is not a message)."""
        return [m for turn in self.turns for m in turn.messages]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session of an agent, as listed."""

    session: str
    turns: int  # the highest seq stored
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session,
            "turns": self.turns,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@runtime_checkable
class ConversationStore(Protocol):
    """Session histories.  Implementations: ``InMemoryConversationStore``,
    ``SqliteConversationStore``, ``RedisConversationStore``,
    ``PostgresConversationStore``.

    A store is built with its ``ttl_s`` (None: kept until deleted); every append
    renews the session's expiry, and expired sessions are neither read nor listed.
    """

    name: str

    async def append(self, key: SessionKey, turn: NewTurn) -> StoredTurn:
        """Store ``turn`` as the session's next turn, atomically (all its messages
        or none) under the next ``seq``.  Appending a ``run_id`` the session already
        holds returns the stored turn and stores nothing (a retry after a lost
        reply never duplicates a turn)."""
        ...

    async def history(self, key: SessionKey, *, last: int | None = None, after: int = 0) -> History:
        """The session's turns with ``seq > after``, only the ``last`` of them when
        given, in ``seq`` order, with its summary.  An unknown (or expired) session
        has no turns and no summary."""
        ...

    async def set_summary(self, key: SessionKey, summary: Summary) -> bool:
        """Store ``summary`` unless the stored one already folds as many turns
        (``upto_seq`` only grows, so concurrent summarisers never go back); returns
        whether it was stored.  It also stores nothing when ``upto_seq`` is above the
        session's highest seq or the session has no turns, so a summary of deleted
        turns cannot land on a new session with the same id."""
        ...

    async def sessions(
        self,
        namespace: str,
        agent: str,
        *,
        limit: int = 100,
        offset: int = 0,
        prefix: str | None = None,
    ) -> list[SessionInfo]:
        """The agent's live sessions, most recently updated first; with ``prefix``
        only those whose id starts with it (a literal prefix: no character is a
        wildcard, case counts).  ``offset`` and ``limit`` page through the sessions
        that match."""
        ...

    async def delete(self, key: SessionKey) -> bool:
        """Remove the session (turns and summary); returns whether it existed."""
        ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- vectors


@dataclass(frozen=True, slots=True)
class VectorItem:
    """One vector to store.  ``metadata`` values are strings, numbers or booleans;
    the memory stages always set ``namespace``, ``agent`` and (for session-scoped
    items) ``session``, which ``search`` and ``delete`` filter on."""

    id: str
    vector: Sequence[float]
    text: str
    metadata: Mapping[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VectorHit:
    """A search result: ``score`` is the cosine similarity to the query (1 is identical)."""

    id: str
    text: str
    score: float
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "score": self.score,
            "metadata": dict(self.metadata),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> VectorHit:
        return VectorHit(
            str(data["id"]), str(data["text"]), float(data["score"]), dict(data["metadata"])
        )


Where = Mapping[str, str | int | float | bool]
"""An equality filter on item metadata: every key must match."""


@runtime_checkable
class VectorStore(Protocol):
    """Vectors by collection, searched by cosine similarity.  Implementations:
    ``PgVectorStore``, ``QdrantVectorStore``, ``FaissVectorStore``,
    ``ChromaVectorStore``.

    A collection is created on the first ``upsert`` with that vector's dimension; a
    later vector of another dimension is an ``InvalidRequest``.  Searching or
    deleting in a collection that does not exist finds nothing.
    """

    name: str

    async def upsert(self, collection: str, items: Sequence[VectorItem]) -> None:
        """Add ``items``, replacing any with the same ``id``."""
        ...

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        *,
        k: int,
        threshold: float | None = None,
        where: Where | None = None,
    ) -> list[VectorHit]:
        """The ``k`` items most similar to ``vector`` among those matching ``where``,
        best first; only those scoring at least ``threshold`` when it is given."""
        ...

    async def delete(
        self, collection: str, *, ids: Sequence[str] | None = None, where: Where | None = None
    ) -> int:
        """Remove the items with these ``ids`` and/or matching ``where`` (at least one
        must be given); returns how many were removed."""
        ...

    async def count(self, collection: str, where: Where | None = None) -> int:
        """How many items of ``collection`` match ``where``."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Embedder(Protocol):
    """Text to vectors.  Implementations: ``OpenAIEmbedder`` (``/v1/embeddings``),
    ``OllamaEmbedder`` (``/api/embed``), ``MiniLMEmbedder`` (local, offline).

    Vectors are L2-normalised, so a dot product is their cosine similarity.
    ``embed`` batches internally; failures raise ``MemoryUnavailable``.
    """

    name: str

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- episodes


@dataclass(frozen=True, slots=True)
class Episode:
    """One event of a run in the episodic log.

    ``type`` is one of ``EPISODE_TYPES``; ``data`` is JSON-able and has passed
    ``redact`` (no secrets).  ``id`` is assigned by the log (0 before appending).
    """

    namespace: str
    agent: str
    session: str | None
    run_id: str
    trace_id: str
    type: str
    data: Mapping[str, Any]
    ts: float = field(default_factory=time.time)
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "namespace": self.namespace,
            "agent": self.agent,
            "session_id": self.session,
            "run_id": self.run_id,
            "trace_id": self.trace_id,
            "type": self.type,
            "data": dict(self.data),
        }


EPISODE_TYPES = (
    "request",  # the query, the caller, the request context (redacted)
    "model_call",  # provider, model, tokens, cost, latency
    "tool_call",  # tool, arguments (redacted), result or error, latency
    "guardrail",  # a guardrail's action
    "error",  # the error the run ended on
    "answer",  # the final answer and the run's usage
)


@dataclass(frozen=True, slots=True)
class EpisodeQuery:
    """Which episodes to read: one agent's, optionally one session's (or those of the
    sessions whose id starts with ``session_prefix``, a literal prefix), of some
    types, in a time range (unix seconds, ``since <= ts < until``), oldest first.
    Every filter given applies; ``offset`` and ``limit`` page through the matches."""

    namespace: str
    agent: str
    session: str | None = None
    run_id: str | None = None
    types: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    limit: int = 100
    offset: int = 0
    session_prefix: str | None = None


@runtime_checkable
class EpisodicLog(Protocol):
    """An append-only log of what runs did.  Implementations: ``PostgresEpisodicLog``,
    ``SqliteEpisodicLog``."""

    name: str

    async def append(self, episodes: Sequence[Episode]) -> None:
        """Store ``episodes`` (all or none)."""
        ...

    async def query(self, query: EpisodeQuery) -> list[Episode]: ...

    async def delete_session(self, namespace: str, agent: str, session: str) -> int:
        """Erase a session's episodes (right to erasure); returns how many."""
        ...

    async def aclose(self) -> None: ...
