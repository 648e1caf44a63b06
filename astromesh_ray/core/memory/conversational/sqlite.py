"""``SqliteConversationStore``: session histories in a local SQLite file.

Every call runs on one worker thread the store owns, holding the store's one
connection.  A ``sqlite3`` connection belongs to the thread that opened it, and
SQLite lets one writer at a time into a file anyway, so a single thread per store
loses nothing against a thread per call, keeps one connection warm instead of
opening one per call, and never competes with other work in the default executor.
A call cancelled while it waits still runs to its ``COMMIT`` or ``ROLLBACK`` there,
so a cancelled append is stored whole or not at all.

Several processes may share the file (Serve replicas on one host): the file is in
WAL mode (readers never block the writer), each write is one ``BEGIN IMMEDIATE``
transaction, which takes the file's write lock *before* reading the session's last
``seq``, and a writer that finds the lock taken waits up to ``busy_timeout_s``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
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
from astromesh_ray.core.memory.prefix import starts_with_sql
from astromesh_ray.core.memory.sqlite_wal import use_wal
from astromesh_ray.errors import InvalidRequest, MemoryUnavailable

log = logging.getLogger("astromesh.memory")

T = TypeVar("T")

# The file may also hold other tables (the episodic log's): ours are prefixed.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversation_sessions (
    namespace TEXT NOT NULL,
    agent TEXT NOT NULL,
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL,
    summary_text TEXT,
    summary_upto INTEGER,
    summary_at REAL,
    PRIMARY KEY (namespace, agent, session)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversation_sessions_recent
    ON conversation_sessions (namespace, agent, updated_at DESC, session DESC);
CREATE INDEX IF NOT EXISTS conversation_sessions_expiry
    ON conversation_sessions (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS conversation_turns (
    namespace TEXT NOT NULL,
    agent TEXT NOT NULL,
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (namespace, agent, session, seq),
    UNIQUE (namespace, agent, session, run_id)
);
"""

_KEY = "namespace = ? AND agent = ? AND session = ?"
_LIVE = "(expires_at IS NULL OR expires_at > ?)"

# SQLite's primary result codes that mean the file, not our SQL, is at fault.
_RETRYABLE_CODES = {5: "SQLITE_BUSY", 6: "SQLITE_LOCKED", 7: "SQLITE_NOMEM"}
_FILE_CODES = {
    3: "SQLITE_PERM",
    8: "SQLITE_READONLY",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL",
    26: "SQLITE_NOTADB",
}

PURGE_EVERY_S = 60.0
"""How often (at most) an append also deletes sessions that expired."""

PURGE_BATCH = 500
"""How many expired sessions one purge deletes at most (it holds the write lock)."""


def _keyargs(key: SessionKey) -> tuple[str, str, str]:
    return (key.namespace, key.agent, key.session)


@contextmanager
def _transaction(conn: sqlite3.Connection, mode: str) -> Iterator[None]:
    """One explicit transaction (the connection is in autocommit mode otherwise)."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # Some errors (SQLITE_FULL, SQLITE_IOERR) have already rolled it back.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SqliteConversationStore:
    """A ``ConversationStore`` in the SQLite file at ``path`` (its parent directories
    and the ``conversation_*`` tables are created on first use).

    ``ttl_s``: a session expires that long after its last append (None: never);
    ``busy_timeout_s``: how long a write waits for another process's write lock
    before ``MemoryUnavailable``; ``clock`` gives the times of appends and expiry.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl_s: int | None = None,
        busy_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _records.check_ttl(ttl_s)
        if busy_timeout_s < 0:
            raise InvalidRequest(f"busy_timeout_s must not be negative, got {busy_timeout_s!r}")
        self._path = os.fspath(path)
        self._ttl_s = ttl_s
        self._busy_timeout_s = float(busy_timeout_s)
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        # Touched only on the worker thread.
        self._conn: sqlite3.Connection | None = None
        self._last_purge = float("-inf")

    # ------------------------------------------------------------------ the worker

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` with the connection on the worker thread; file failures
        become ``MemoryUnavailable``."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="astromesh-sqlite")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(self._run, work))
        except sqlite3.DatabaseError as exc:
            unavailable = self._unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._connect()
        return work(self._conn)

    def _unavailable(self, exc: sqlite3.DatabaseError) -> MemoryUnavailable | None:
        """``MemoryUnavailable`` when the file is at fault; None for anything else (an
        error in our SQL, which goes up as it is)."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in _RETRYABLE_CODES:
            return MemoryUnavailable(
                f"SQLite file {self._path} is busy: {exc}",
                hint="another process held its write lock longer than busy_timeout_s",
                backend=self.name,
                retryable=True,
                sqlite_error=_RETRYABLE_CODES[primary],
            )
        if primary in _FILE_CODES:
            return MemoryUnavailable(
                f"SQLite file {self._path} cannot be used: {exc}",
                hint="check the file, its directory's permissions and free disk space",
                backend=self.name,
                retryable=False,
                sqlite_error=_FILE_CODES[primary],
            )
        return None

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            try:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MemoryUnavailable(
                    f"cannot create the directory of SQLite file {self._path}: {exc}",
                    hint="check the memory data directory and its permissions",
                    backend=self.name,
                    retryable=False,
                ) from exc
        # isolation_level=None: no implicit transactions, ours are explicit.
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            use_wal(conn, self._path, self._busy_timeout_s)
            with _transaction(conn, "IMMEDIATE"):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    # ------------------------------------------------------------------ the protocol

    async def append(self, key: SessionKey, turn: NewTurn) -> StoredTurn:
        """Store ``turn`` as the next turn of the session (see ``ConversationStore``)."""
        _records.check_key(key)
        body = _records.encode_turn(turn)
        seq, stored = await self._call(
            functools.partial(self._append, _keyargs(key), turn.run_id, body)
        )
        return _records.decode_turn(seq, stored)

    def _append(
        self, key: tuple[str, str, str], run_id: str, body: str, conn: sqlite3.Connection
    ) -> tuple[int, str]:
        with _transaction(conn, "IMMEDIATE"):
            # The clock is read under the write lock, so updated_at follows commit order.
            now = self._clock()
            self._purge(conn, now)
            row = conn.execute(
                f"SELECT seq, expires_at FROM conversation_sessions WHERE {_KEY}", key
            ).fetchone()
            if row is not None and not _records.is_live(row[1], now):
                self._drop(conn, key)
                row = None
            expiry = _records.expires_at(now, self._ttl_s)
            if row is None:
                seq = 1
                conn.execute(
                    "INSERT INTO conversation_sessions (namespace, agent, session, seq,"
                    " created_at, updated_at, expires_at) VALUES (?, ?, ?, 1, ?, ?, ?)",
                    (*key, now, now, expiry),
                )
            else:
                seen = conn.execute(
                    f"SELECT seq, body FROM conversation_turns WHERE {_KEY} AND run_id = ?",
                    (*key, run_id),
                ).fetchone()
                if seen is not None:
                    return int(seen[0]), str(seen[1])
                seq = int(row[0]) + 1
                conn.execute(
                    "UPDATE conversation_sessions SET seq = ?, updated_at = ?, expires_at = ?"
                    f" WHERE {_KEY}",
                    (seq, now, expiry, *key),
                )
            conn.execute(
                "INSERT INTO conversation_turns (namespace, agent, session, seq, run_id, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (*key, seq, run_id, body),
            )
        return seq, body

    def _drop(self, conn: sqlite3.Connection, key: tuple[str, str, str]) -> None:
        conn.execute(f"DELETE FROM conversation_turns WHERE {_KEY}", key)
        conn.execute(f"DELETE FROM conversation_sessions WHERE {_KEY}", key)

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        """Delete a batch of expired sessions, at most every ``PURGE_EVERY_S`` (reads
        already ignore them; this only keeps the file from growing)."""
        if self._ttl_s is None or now - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = now
        expired = conn.execute(
            "SELECT namespace, agent, session FROM conversation_sessions"
            " WHERE expires_at <= ? LIMIT ?",
            (now, PURGE_BATCH),
        ).fetchall()
        for row in expired:
            self._drop(conn, (row[0], row[1], row[2]))

    async def history(self, key: SessionKey, *, last: int | None = None, after: int = 0) -> History:
        """The session's turns after ``after`` (the ``last`` of them) and its summary."""
        _records.check_key(key)
        _records.check_window(last, after)
        return await self._call(functools.partial(self._history, _keyargs(key), last, after))

    def _history(
        self, key: tuple[str, str, str], last: int | None, after: int, conn: sqlite3.Connection
    ) -> History:
        # One read transaction: the session row and its turns from the same snapshot.
        with _transaction(conn, "DEFERRED"):
            row = conn.execute(
                "SELECT seq, summary_text, summary_upto, summary_at FROM conversation_sessions"
                f" WHERE {_KEY} AND {_LIVE}",
                (*key, self._clock()),
            ).fetchone()
            if row is None:
                return History(turns=[])
            seqs = _records.window(int(row[0]), last=last, after=after)
            rows = conn.execute(
                f"SELECT seq, body FROM conversation_turns WHERE {_KEY} AND seq >= ? ORDER BY seq",
                (*key, seqs.start),
            ).fetchall()
        summary = None if row[1] is None else Summary(str(row[1]), int(row[2]), float(row[3]))
        return History([_records.decode_turn(seq, body) for seq, body in rows], summary)

    async def set_summary(self, key: SessionKey, summary: Summary) -> bool:
        """Store ``summary`` if it folds more turns than the stored one and no more
        than the session holds (``upto_seq`` at most its highest seq: a summary of a
        deleted session's turns cannot land on a new one under the same id); an
        unknown, expired or empty session stores nothing."""
        _records.check_key(key)
        _records.check_summary(summary)
        return await self._call(functools.partial(self._set_summary, _keyargs(key), summary))

    def _set_summary(
        self, key: tuple[str, str, str], summary: Summary, conn: sqlite3.Connection
    ) -> bool:
        # One statement: the comparisons (with the stored summary and the session's last
        # seq) and the write are atomic without a transaction.
        cursor = conn.execute(
            "UPDATE conversation_sessions SET summary_text = ?, summary_upto = ?, summary_at = ?"
            f" WHERE {_KEY} AND {_LIVE} AND seq > 0 AND seq >= ?"
            " AND (summary_upto IS NULL OR summary_upto < ?)",
            (
                summary.text,
                summary.upto_seq,
                summary.updated_at,
                *key,
                self._clock(),
                summary.upto_seq,
                summary.upto_seq,
            ),
        )
        return cursor.rowcount == 1

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
        return await self._call(
            functools.partial(self._sessions, namespace, agent, limit, offset, prefix)
        )

    def _sessions(
        self,
        namespace: str,
        agent: str,
        limit: int,
        offset: int,
        prefix: str | None,
        conn: sqlite3.Connection,
    ) -> list[SessionInfo]:
        params: list[Any] = [namespace, agent, self._clock()]

        def param(value: Any) -> str:
            params.append(value)
            return "?"

        matching = (
            ""
            if prefix is None
            else " AND " + starts_with_sql("session", prefix, param, dialect="sqlite")
        )
        params += [limit, offset]
        rows = conn.execute(
            "SELECT session, seq, created_at, updated_at FROM conversation_sessions"
            f" WHERE namespace = ? AND agent = ? AND {_LIVE}{matching}"
            " ORDER BY updated_at DESC, session DESC LIMIT ? OFFSET ?",
            params,
        ).fetchall()
        return [SessionInfo(str(r[0]), int(r[1]), float(r[2]), float(r[3])) for r in rows]

    async def delete(self, key: SessionKey) -> bool:
        """Remove the session; returns whether a live one existed."""
        _records.check_key(key)
        return await self._call(functools.partial(self._delete, _keyargs(key)))

    def _delete(self, key: tuple[str, str, str], conn: sqlite3.Connection) -> bool:
        with _transaction(conn, "IMMEDIATE"):
            row = conn.execute(
                f"SELECT expires_at FROM conversation_sessions WHERE {_KEY}", key
            ).fetchone()
            self._drop(conn, key)
        return row is not None and _records.is_live(row[0], self._clock())

    async def aclose(self) -> None:
        """Close the connection and stop the worker thread (a later call opens them
        again)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=False)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
