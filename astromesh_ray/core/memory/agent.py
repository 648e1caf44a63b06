"""One agent's memory: what the memory stages and the memory API call.

``AgentMemory`` scopes every backend to the agent (its namespace and name): a
session of one agent is never read, listed, searched or erased through another.
Each operation is bounded by ``timeout_s``: a backend that hangs fails the call
with ``MemoryUnavailable`` rather than holding a turn forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from astromesh_ray.core.context import check_session_id
from astromesh_ray.core.memory.base import (
    ConversationStore,
    Embedder,
    Episode,
    EpisodeQuery,
    EpisodicLog,
    History,
    NewTurn,
    SessionInfo,
    SessionKey,
    StoredTurn,
    VectorHit,
    VectorItem,
    VectorStore,
    Where,
)
from astromesh_ray.core.memory.prefix import check_session_prefix
from astromesh_ray.core.memory.strategies import HistoryStrategy, Replay, Summarizer
from astromesh_ray.core.messages import Message, Usage
from astromesh_ray.errors import InvalidRequest, MemoryConflict, MemoryNotFound, MemoryUnavailable
from astromesh_ray.spec.memory import SemanticMemorySpec

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Semantic:
    """Semantic memory of an agent: a store, an embedder and the YAML settings."""

    store: VectorStore
    embedder: Embedder
    spec: SemanticMemorySpec
    collection: str


class AgentMemory:
    """Conversational, semantic and episodic memory of one agent (each optional)."""

    def __init__(
        self,
        *,
        namespace: str,
        agent: str,
        conversation: ConversationStore | None = None,
        strategy: HistoryStrategy | None = None,
        semantic: Semantic | None = None,
        episodic: EpisodicLog | None = None,
        timeout_s: float = 15.0,
    ) -> None:
        if (conversation is None) != (strategy is None):
            raise ValueError("a conversation store needs a strategy, and the other way round")
        self.namespace = namespace
        self.agent = agent
        self.conversation = conversation
        self.strategy = strategy
        self.semantic = semantic
        self.episodic = episodic
        self.timeout_s = timeout_s

    def key(self, session: str) -> SessionKey:
        return SessionKey(self.namespace, self.agent, check_session_id(session))

    async def _bounded(self, what: str, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await work
        except TimeoutError:
            raise MemoryUnavailable(
                f"memory of agent {self.agent!r}: {what} took longer than {self.timeout_s:g} s",
                hint="check the memory backend's server (a write cut off by this timeout "
                "may still complete: it is atomic, never half stored)",
                backend=what,
                retryable=True,
            ) from None

    # -- turns -------------------------------------------------------------------------

    async def replay(self, session: str) -> Replay:
        """What the next turn of ``session`` is given of its history."""
        if self.conversation is None or self.strategy is None:
            return Replay(messages=[])
        return await self._bounded(
            "conversation load", self.strategy.load(self.conversation, self.key(session))
        )

    async def save_turn(
        self, session: str, run_id: str, messages: Sequence[Message], meta: dict[str, Any]
    ) -> StoredTurn | None:
        """Store a completed turn (one atomic record)."""
        if self.conversation is None or self.strategy is None:
            return None
        key = self.key(session)
        meta = {**meta, **await self.strategy.turn_meta(messages)}
        return await self._bounded(
            "conversation save", self.conversation.append(key, NewTurn(run_id, messages, meta=meta))
        )

    async def update_summary(self, session: str, summarizer: Summarizer | None) -> Usage:
        """Let the strategy bring what it keeps up to date after a turn was stored
        (the summary fold); returns the model usage of that."""
        if self.conversation is None or self.strategy is None:
            return Usage()
        return await self._bounded(
            "summary",
            self.strategy.after_append(self.conversation, self.key(session), summarizer),
        )

    def _where(self, session: str | None) -> dict[str, str] | None:
        """The filter of recall: the agent's items, and the session's when recall is
        session-scoped (None: a session-scoped recall without a session finds nothing)."""
        where = {"namespace": self.namespace, "agent": self.agent}
        assert self.semantic is not None
        if self.semantic.spec.scope == "session":
            if session is None:
                return None
            where["session"] = session
        return where

    async def recall(self, session: str | None, query: str) -> list[VectorHit]:
        """The items most similar to ``query`` (YAML threshold and max_results)."""
        if self.semantic is None or not query.strip():
            return []
        where = self._where(session)
        if where is None:
            return []
        return await self.search(query, where=where)

    async def search_as(
        self,
        session: str | None,
        query: str,
        *,
        k: int | None = None,
        threshold: float | None = None,
    ) -> list[VectorHit]:
        """What recall in ``session`` finds for ``query`` (the memory API's search);
        a session-scoped memory needs the session named."""
        if self.semantic is None:
            raise MemoryNotFound(
                f"agent {self.agent!r} has no semantic memory",
                hint="declare spec.memory.semantic in its YAML",
            )
        if session is not None:
            check_session_id(session)
        where = self._where(session)
        if where is None:
            raise InvalidRequest(
                f"the semantic memory of agent {self.agent!r} is kept per session: "
                "name the session to search",
                field="session_id",
            )
        return await self.search(query, where=where, k=k, threshold=threshold)

    async def search(
        self,
        query: str,
        *,
        where: Where,
        k: int | None = None,
        threshold: float | None = None,
    ) -> list[VectorHit]:
        """Semantic search over the agent's items matching ``where``."""
        if self.semantic is None:
            raise MemoryNotFound(f"agent {self.agent!r} has no semantic memory")
        spec = self.semantic.spec
        semantic = self.semantic
        (vector,) = await self._bounded("embedding", semantic.embedder.embed([query]))
        return await self._bounded(
            "vector search",
            semantic.store.search(
                semantic.collection,
                vector,
                k=k or spec.max_results,
                threshold=spec.similarity_threshold if threshold is None else threshold,
                where={**where, "namespace": self.namespace, "agent": self.agent},
            ),
        )

    async def index_turn(self, session: str | None, run_id: str, query: str, answer: str) -> bool:
        """Index a completed turn for later recall, when the YAML asks for it."""
        if self.semantic is None or not self.semantic.spec.index_turns:
            return False
        if session is None and self.semantic.spec.scope == "session":
            return False  # nothing could ever recall it
        semantic = self.semantic
        text = f"User: {query}\nAssistant: {answer}"
        (vector,) = await self._bounded("embedding", semantic.embedder.embed([text]))
        metadata: dict[str, str | int | float | bool] = {
            "namespace": self.namespace,
            "agent": self.agent,
            "run_id": run_id,
            "kind": "turn",
        }
        if session is not None:
            metadata["session"] = session
        item = VectorItem(
            id=f"{session or '-'}:{run_id}", vector=vector, text=text, metadata=metadata
        )
        await self._bounded("vector upsert", semantic.store.upsert(semantic.collection, [item]))
        return True

    async def record(self, episodes: Sequence[Episode]) -> None:
        """Append a run's episodes to the log."""
        if self.episodic is not None and episodes:
            await self._bounded("episodic append", self.episodic.append(episodes))

    # -- the memory API ------------------------------------------------------------------

    def _conversation(self) -> ConversationStore:
        if self.conversation is None:
            raise MemoryNotFound(
                f"agent {self.agent!r} has no conversational memory",
                hint="declare spec.memory.conversational in its YAML",
            )
        return self.conversation

    async def sessions(
        self, *, limit: int = 100, offset: int = 0, prefix: str | None = None
    ) -> list[SessionInfo]:
        """The agent's sessions, most recently updated first; with ``prefix`` (checked
        as the memory API's ``session_prefix``) only those whose id starts with it,
        ``offset`` and ``limit`` paging through those."""
        store = self._conversation()
        if prefix is not None:
            check_session_prefix(prefix)
        return await self._bounded(
            "session list",
            store.sessions(self.namespace, self.agent, limit=limit, offset=offset, prefix=prefix),
        )

    async def history(self, session: str) -> History:
        """The whole stored history of ``session`` (404 when it has none)."""
        history = await self._bounded(
            "conversation load", self._conversation().history(self.key(session))
        )
        if not history.turns and history.summary is None:
            raise MemoryNotFound(f"agent {self.agent!r} has no session {session!r}")
        return history

    async def erase(self, session: str) -> dict[str, int]:
        """Remove ``session`` from every backend (right to erasure): its history, its
        semantic items and its episodes.  Returns what was removed per backend."""
        key = self.key(session)
        removed: dict[str, int] = {}
        if self.conversation is not None:
            existed = await self._bounded("conversation delete", self.conversation.delete(key))
            removed["conversation"] = int(existed)
        if self.semantic is not None:
            semantic = self.semantic
            removed["semantic"] = await self._bounded(
                "vector delete",
                semantic.store.delete(
                    semantic.collection,
                    where={"namespace": self.namespace, "agent": self.agent, "session": session},
                ),
            )
        if self.episodic is not None:
            removed["episodic"] = await self._bounded(
                "episodic delete",
                self.episodic.delete_session(self.namespace, self.agent, session),
            )
        return removed

    async def fork(self, session: str, new_session: str) -> int:
        """Copy the history of ``session`` to ``new_session`` (which must not exist);
        returns the number of turns copied."""
        store = self._conversation()
        if session == new_session:
            raise InvalidRequest("a session cannot be forked to itself", field="new_session_id")
        source = await self.history(session)
        target = self.key(check_session_id(new_session, "new_session_id"))
        existing = await self._bounded("conversation load", store.history(target, last=1))
        if existing.turns:
            raise MemoryConflict(
                f"session {new_session!r} already exists",
                hint="fork to a new session id",
                field="new_session_id",
            )
        for turn in source.turns:
            copied = NewTurn(
                run_id=turn.run_id,
                messages=turn.messages,
                created_at=turn.created_at,
                meta={**turn.meta, "forked_from": session},
            )
            await self._bounded("conversation save", store.append(target, copied))
        if source.summary is not None:
            await self._bounded("summary save", store.set_summary(target, source.summary))
        return len(source.turns)

    async def episodes(self, **query: Any) -> list[Episode]:
        """The agent's episodes matching ``query`` (the fields of ``EpisodeQuery``
        but its namespace and agent; ``session_prefix`` checked as the memory API's)."""
        if self.episodic is None:
            raise MemoryNotFound(
                f"agent {self.agent!r} has no episodic memory",
                hint="declare spec.memory.episodic in its YAML",
            )
        if query.get("session") is not None:
            check_session_id(query["session"])
        if query.get("session_prefix") is not None:
            check_session_prefix(query["session_prefix"])
        q = EpisodeQuery(namespace=self.namespace, agent=self.agent, **query)
        return await self._bounded("episodic query", self.episodic.query(q))
