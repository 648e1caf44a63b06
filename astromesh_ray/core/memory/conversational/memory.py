"""``InMemoryConversationStore``: session histories in this process's memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from astromesh_ray.core.memory.base import (
    History,
    NewTurn,
    SessionInfo,
    SessionKey,
    StoredTurn,
    Summary,
)
from astromesh_ray.core.memory.conversational import _records


@dataclass
class _Session:
    created_at: float
    updated_at: float
    expires_at: float | None
    bodies: list[str] = field(default_factory=list)  # turn seq n is bodies[n - 1]
    runs: dict[str, int] = field(default_factory=dict)  # run_id -> seq
    summary: Summary | None = None


class InMemoryConversationStore:
    """A ``ConversationStore`` in a dict of this process: every history is lost when
    the process ends, and other processes (Serve replicas) do not see it.  For tests
    and ``astromesh run``.

    Turns are kept as the same JSON text the other backends store, so what a reader
    gets back is a copy (mutating it changes nothing stored) and a turn that would
    not survive another backend is refused here too.  Every method does its work
    without awaiting, so on one event loop each call is atomic; a lock makes that
    hold across threads as well.  ``clock`` gives the times of appends and expiry.
    """

    name = "in_memory"

    def __init__(self, *, ttl_s: int | None = None, clock: Callable[[], float] = time.time) -> None:
        _records.check_ttl(ttl_s)
        self._ttl_s = ttl_s
        self._clock = clock
        self._sessions: dict[SessionKey, _Session] = {}
        self._lock = threading.Lock()

    def _live(self, key: SessionKey, now: float) -> _Session | None:
        """The session at ``key`` unless it expired (then it is dropped)."""
        session = self._sessions.get(key)
        if session is not None and not _records.is_live(session.expires_at, now):
            del self._sessions[key]
            return None
        return session

    async def append(self, key: SessionKey, turn: NewTurn) -> StoredTurn:
        """Store ``turn`` as the next turn of the session (see ``ConversationStore``)."""
        _records.check_key(key)
        body = _records.encode_turn(turn)
        with self._lock:
            now = self._clock()
            session = self._live(key, now)
            if session is None:
                session = self._sessions[key] = _Session(now, now, None)
            seen = session.runs.get(turn.run_id)
            if seen is not None:
                return _records.decode_turn(seen, session.bodies[seen - 1])
            session.bodies.append(body)
            seq = session.runs[turn.run_id] = len(session.bodies)
            session.updated_at = now
            session.expires_at = _records.expires_at(now, self._ttl_s)
        return _records.decode_turn(seq, body)

    async def history(self, key: SessionKey, *, last: int | None = None, after: int = 0) -> History:
        """The session's turns after ``after`` (the ``last`` of them) and its summary."""
        _records.check_key(key)
        _records.check_window(last, after)
        with self._lock:
            session = self._live(key, self._clock())
            if session is None:
                return History(turns=[])
            seqs = _records.window(len(session.bodies), last=last, after=after)
            bodies = [(seq, session.bodies[seq - 1]) for seq in seqs]
            summary = session.summary
        return History([_records.decode_turn(seq, body) for seq, body in bodies], summary)

    async def set_summary(self, key: SessionKey, summary: Summary) -> bool:
        """Store ``summary`` if it folds more turns than the stored one and no more
        than the session holds (``upto_seq`` at most its highest seq: a summary of a
        deleted session's turns cannot land on a new one under the same id); an
        unknown, expired or empty session stores nothing."""
        _records.check_key(key)
        _records.check_summary(summary)
        with self._lock:
            session = self._live(key, self._clock())
            # Never past the last turn (turn seq n is bodies[n - 1]).
            if session is None or not session.bodies or summary.upto_seq > len(session.bodies):
                return False
            if session.summary is not None and session.summary.upto_seq >= summary.upto_seq:
                return False
            session.summary = summary
            return True

    async def sessions(
        self,
        namespace: str,
        agent: str,
        *,
        limit: int = 100,
        offset: int = 0,
        prefix: str | None = None,
    ) -> list[SessionInfo]:
        """The agent's live sessions (only those whose id starts with ``prefix`` when
        given), most recently updated first."""
        _records.check_key(SessionKey(namespace, agent, "-"))
        _records.check_page(limit, offset)
        _records.check_prefix(prefix)
        with self._lock:
            now = self._clock()
            found = [
                SessionInfo(key.session, len(s.bodies), s.created_at, s.updated_at)
                for key, s in list(self._sessions.items())
                if key.namespace == namespace
                and key.agent == agent
                and (prefix is None or key.session.startswith(prefix))
                and self._live(key, now) is not None
            ]
        found.sort(key=lambda info: (info.updated_at, info.session), reverse=True)
        return found[offset : offset + limit]

    async def delete(self, key: SessionKey) -> bool:
        """Remove the session; returns whether a live one existed."""
        _records.check_key(key)
        with self._lock:
            existed = self._live(key, self._clock()) is not None
            self._sessions.pop(key, None)
            return existed

    async def aclose(self) -> None:
        """Nothing to release: the histories stay until the process ends."""
