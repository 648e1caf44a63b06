"""``PostgresConversationStore``: session histories in PostgreSQL (``asyncpg``).

Two tables, ``<prefix>conversation_sessions`` (one row per session: its last
``seq``, times, expiry and summary) and ``<prefix>conversation_turns`` (one row per
turn, its messages as one JSON text), created on first use.

Ordering: an append is one transaction that makes sure the session's row exists
(``INSERT ... ON CONFLICT DO NOTHING``) and locks it (``SELECT ... FOR UPDATE``)
before it reads the last ``seq``: concurrent appends to one session, from any
replica, queue on that row lock and each gets the next ``seq``; appends to other
sessions do not wait.  The run-id check runs after the lock, so a retried append
that raced its first attempt sees it.  The unique keys ``(namespace, agent,
session, seq)`` and ``(namespace, agent, session, run_id)`` hold the same rules
again at the table level.

Failures: a call that loses its connection (the server restarted, the network
dropped) is retried once on a fresh connection (``PgPool``; a retried append finds
its run id if the first attempt had committed), then raises ``MemoryUnavailable``.
Expiry: ``expires_at`` (the server's clock, like every
time here) is filtered on every read; appends delete expired sessions in batches,
at most every ``PURGE_EVERY_S``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from astromesh_ray.core.memory.base import (
    History,
    NewTurn,
    SessionInfo,
    SessionKey,
    StoredTurn,
    Summary,
)
from astromesh_ray.core.memory.conversational import _records
from astromesh_ray.core.memory.postgres_pool import PgPool
from astromesh_ray.core.memory.prefix import LIKE_ESCAPE, like_pattern
from astromesh_ray.errors import InvalidRequest, MemoryUnavailable

T = TypeVar("T")

RETRY_DELAY_S = 0.25
"""The wait before the one retry of a call that lost its connection."""

PURGE_EVERY_S = 60.0
"""How often (at most) one store's appends also delete expired sessions."""

PURGE_BATCH = 500
"""How many expired sessions one purge deletes at most."""

_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,31}")
_NOW = "extract(epoch FROM clock_timestamp())::float8"
_KEY = "namespace = $1 AND agent = $2 AND session = $3"


class PostgresConversationStore:
    """A ``ConversationStore`` in the PostgreSQL database at ``url``.

    ``ttl_s``: a session expires that long after its last append (None: never);
    ``table_prefix`` starts the tables' names (lower-case letters, digits and ``_``,
    at most 32); ``min_size``/``max_size`` bound the connection pool, which is
    created on the first call.
    """

    name = "postgres"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int | None = None,
        table_prefix: str = "astromesh_",
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        _records.check_ttl(ttl_s)
        if not _PREFIX.fullmatch(table_prefix):
            raise InvalidRequest(
                f"table_prefix must be lower-case letters, digits and _ (at most 32, not"
                f" starting with a digit), got {table_prefix!r}"
            )
        if not 0 <= min_size <= max_size or max_size < 1:
            raise InvalidRequest(
                f"pool sizes must satisfy 0 <= min_size <= max_size and max_size >= 1,"
                f" got min_size={min_size!r}, max_size={max_size!r}"
            )
        self._ttl_s = ttl_s
        self._sessions_table = f"{table_prefix}conversation_sessions"
        self._turns_table = f"{table_prefix}conversation_turns"
        self._schema_lock_key = f"astromesh schema {table_prefix}conversation"
        self._pool = PgPool(
            url,
            label=f"{table_prefix}conversation",
            backend=self.name,
            setup=self._create_tables,
            min_size=min_size,
            max_size=max_size,
            timeout_s=10.0,  # a stuck server: fail (and retry once), not hang
        )
        self._last_purge = float("-inf")
        self._sql = _Statements(self._sessions_table, self._turns_table)

    # ------------------------------------------------------------------ pool and errors

    async def _create_tables(self, conn: Any) -> None:
        async with conn.transaction():
            # Two replicas creating the tables at once would collide in pg_type
            # (IF NOT EXISTS is not atomic): the first takes this lock, the second
            # waits and then finds them.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", self._schema_lock_key
            )
            await conn.execute(self._sql.schema)

    async def _run(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``op`` with a pooled connection; one retry if the connection was lost
        (a retried append finds its run id if the first attempt committed)."""
        return await self._pool.run(what, lambda conn, _retry: op(conn))

    # ------------------------------------------------------------------ the protocol

    async def append(self, key: SessionKey, turn: NewTurn) -> StoredTurn:
        """Store ``turn`` as the next turn of the session (see ``ConversationStore``)."""
        _records.check_key(key)
        body = _records.encode_turn(turn)
        args = (key.namespace, key.agent, key.session)
        ttl = None if self._ttl_s is None else float(self._ttl_s)

        async def op(conn: Any) -> tuple[int, str]:
            await self._purge(conn)
            async with conn.transaction():
                row = await self._lock_session(conn, args)
                seen = await conn.fetchrow(self._sql.seen, *args, turn.run_id)
                if seen is not None:
                    return int(seen["seq"]), str(seen["body"])
                seq = int(row["seq"]) + 1
                await conn.execute(self._sql.insert_turn, *args, seq, turn.run_id, body, ttl)
                return seq, body

        seq, stored = await self._run("append", op)
        return _records.decode_turn(seq, stored)

    async def _lock_session(self, conn: Any, args: tuple[str, str, str]) -> Any:
        """The session's row, created if missing, locked until the transaction ends."""
        for _ in range(5):
            await conn.execute(self._sql.ensure_session, *args)
            row = await conn.fetchrow(self._sql.lock_session, *args)
            if row is None:  # deleted (or purged) while we waited for its lock
                continue
            if row["expired"]:
                await conn.execute(self._sql.delete, *args)  # its turns go with it
                continue
            return row
        raise MemoryUnavailable(
            "the session kept being deleted while a turn was appended",
            backend=self.name,
            retryable=True,
        )

    async def _purge(self, conn: Any) -> None:
        """Delete a batch of expired sessions, at most every ``PURGE_EVERY_S`` (reads
        already ignore them; this only keeps the tables from growing)."""
        if self._ttl_s is None or time.monotonic() - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = time.monotonic()
        await conn.execute(self._sql.purge, PURGE_BATCH)

    async def history(self, key: SessionKey, *, last: int | None = None, after: int = 0) -> History:
        """The session's turns after ``after`` (the ``last`` of them) and its summary."""
        _records.check_key(key)
        _records.check_window(last, after)
        args = (key.namespace, key.agent, key.session)

        async def op(conn: Any) -> History:
            # One snapshot for the session row and its turns.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(self._sql.session, *args)
                if row is None:
                    return History(turns=[])
                seqs = _records.window(int(row["seq"]), last=last, after=after)
                rows = await conn.fetch(self._sql.turns, *args, seqs.start)
            summary = (
                None
                if row["summary_text"] is None
                else Summary(
                    row["summary_text"], int(row["summary_upto"]), float(row["summary_at"])
                )
            )
            turns = [_records.decode_turn(int(r["seq"]), str(r["body"])) for r in rows]
            return History(turns, summary)

        return await self._run("history", op)

    async def set_summary(self, key: SessionKey, summary: Summary) -> bool:
        """Store ``summary`` if it folds more turns than the stored one and no more
        than the session holds (``upto_seq`` at most its highest seq: a summary of a
        deleted session's turns cannot land on a new one under the same id); an
        unknown, expired or empty session stores nothing."""
        _records.check_key(key)
        _records.check_summary(summary)
        args = (key.namespace, key.agent, key.session)

        async def op(conn: Any) -> bool:
            # One statement: the comparisons (with the stored summary and the session's
            # last seq) and the write are atomic.
            status = await conn.execute(
                self._sql.set_summary,
                *args,
                summary.text,
                summary.upto_seq,
                float(summary.updated_at),
            )
            return bool(status == "UPDATE 1")

        return await self._run("set_summary", op)

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
        sql, args = (
            (self._sql.sessions, ())
            if prefix is None
            else (self._sql.sessions_prefixed, (like_pattern(prefix),))
        )

        async def op(conn: Any) -> list[SessionInfo]:
            rows = await conn.fetch(sql, namespace, agent, limit, offset, *args)
            return [
                SessionInfo(
                    str(r["session"]), int(r["seq"]), float(r["created_at"]), float(r["updated_at"])
                )
                for r in rows
            ]

        return await self._run("sessions", op)

    async def delete(self, key: SessionKey) -> bool:
        """Remove the session; returns whether a live one existed."""
        _records.check_key(key)
        args = (key.namespace, key.agent, key.session)

        async def op(conn: Any) -> bool:
            row = await conn.fetchrow(self._sql.delete, *args)
            return row is not None and bool(row["live"])

        return await self._run("delete", op)

    async def aclose(self) -> None:
        """Close the pool (a later call creates a new one)."""
        await self._pool.aclose()


class _Statements:
    """The SQL of one table prefix."""

    def __init__(self, sessions: str, turns: str) -> None:
        live = f"(expires_at IS NULL OR expires_at > {_NOW})"
        self.schema = f"""
            CREATE TABLE IF NOT EXISTS {sessions} (
                namespace text NOT NULL,
                agent text NOT NULL,
                session text NOT NULL,
                seq integer NOT NULL,
                created_at double precision NOT NULL,
                updated_at double precision NOT NULL,
                expires_at double precision,
                summary_text text,
                summary_upto integer,
                summary_at double precision,
                PRIMARY KEY (namespace, agent, session)
            );
            CREATE INDEX IF NOT EXISTS {sessions}_recent
                ON {sessions} (namespace, agent, updated_at DESC, session DESC);
            CREATE INDEX IF NOT EXISTS {sessions}_expiry
                ON {sessions} (expires_at) WHERE expires_at IS NOT NULL;
            CREATE TABLE IF NOT EXISTS {turns} (
                namespace text NOT NULL,
                agent text NOT NULL,
                session text NOT NULL,
                seq integer NOT NULL,
                run_id text NOT NULL,
                -- text, not jsonb: jsonb refuses the \\u0000 a message may hold
                body text NOT NULL,
                PRIMARY KEY (namespace, agent, session, seq),
                UNIQUE (namespace, agent, session, run_id),
                FOREIGN KEY (namespace, agent, session)
                    REFERENCES {sessions} (namespace, agent, session) ON DELETE CASCADE
            );
        """
        self.ensure_session = (
            f"INSERT INTO {sessions} (namespace, agent, session, seq, created_at, updated_at)"
            f" VALUES ($1, $2, $3, 0, {_NOW}, {_NOW}) ON CONFLICT DO NOTHING"
        )
        self.lock_session = (
            f"SELECT seq, (expires_at IS NOT NULL AND expires_at <= {_NOW}) AS expired"
            f" FROM {sessions} WHERE {_KEY} FOR UPDATE"
        )
        # A statement of its own, after the lock: in READ COMMITTED it sees the turns
        # committed by whoever held the lock before us.
        self.seen = f"SELECT seq, body FROM {turns} WHERE {_KEY} AND run_id = $4"
        self.insert_turn = (
            f"WITH turn AS (INSERT INTO {turns} (namespace, agent, session, seq, run_id, body)"
            f" VALUES ($1, $2, $3, $4, $5, $6))"
            f" UPDATE {sessions} SET seq = $4, updated_at = {_NOW},"
            f" expires_at = {_NOW} + $7::float8 WHERE {_KEY}"
        )
        self.purge = (
            f"DELETE FROM {sessions} WHERE (namespace, agent, session) IN"
            f" (SELECT namespace, agent, session FROM {sessions} WHERE expires_at <= {_NOW}"
            f" LIMIT $1 FOR UPDATE SKIP LOCKED)"
        )
        self.session = (
            f"SELECT seq, summary_text, summary_upto, summary_at FROM {sessions}"
            f" WHERE {_KEY} AND seq > 0 AND {live}"
        )
        self.turns = f"SELECT seq, body FROM {turns} WHERE {_KEY} AND seq >= $4 ORDER BY seq"
        self.set_summary = (
            f"UPDATE {sessions} SET summary_text = $4, summary_upto = $5, summary_at = $6"
            f" WHERE {_KEY} AND seq > 0 AND seq >= $5 AND {live}"
            f" AND (summary_upto IS NULL OR summary_upto < $5)"
        )
        listed = f"SELECT session, seq, created_at, updated_at FROM {sessions}"
        agent_live = f"namespace = $1 AND agent = $2 AND seq > 0 AND {live}"
        page = "ORDER BY updated_at DESC, session DESC LIMIT $3 OFFSET $4"
        self.sessions = f"{listed} WHERE {agent_live} {page}"
        # $5: like_pattern(prefix), its wildcards escaped.
        self.sessions_prefixed = (
            f"{listed} WHERE {agent_live} AND session LIKE $5 ESCAPE '{LIKE_ESCAPE}' {page}"
        )
        self.delete = f"DELETE FROM {sessions} WHERE {_KEY} RETURNING (seq > 0 AND {live}) AS live"
