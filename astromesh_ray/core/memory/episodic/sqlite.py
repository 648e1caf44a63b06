"""``SqliteEpisodicLog``: the episodic log in one SQLite file (stdlib ``sqlite3``).

Meant for one machine (``astromesh run``, a single node, tests): any number of
processes may append to the same file.  The file is shared with
``SqliteConversationStore``; this log's tables and indexes all start with
``episode_``.  The database runs in WAL mode, so readers never wait for a writer and
a writer waits for another writer at most ``busy_timeout_s``.

Every call runs in a worker thread, so the event loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from astromesh_ray.core.memory.base import Episode, EpisodeQuery
from astromesh_ray.core.memory.episodic._records import (
    INSERT_COLUMNS,
    check_query,
    check_session,
    episode_from_row,
    episode_rows,
    select_sql,
)
from astromesh_ray.core.memory.sqlite_wal import BUSY, use_wal
from astromesh_ray.errors import ConfigError, MemoryUnavailable

__all__ = ["SqliteEpisodicLog"]

log = logging.getLogger("astromesh.memory")

_T = TypeVar("_T")

_TABLE = "episode_log"
# AUTOINCREMENT: an id is never reused, even after the newest episodes are deleted,
# so an id seen once always names the same episode.
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS {_TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    namespace TEXT NOT NULL,
    agent TEXT NOT NULL,
    session TEXT,
    run_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS episode_log_agent_ts ON {_TABLE} (namespace, agent, ts, id);
CREATE INDEX IF NOT EXISTS episode_log_session_ts
    ON {_TABLE} (namespace, agent, session, ts, id);
CREATE INDEX IF NOT EXISTS episode_log_type_ts ON {_TABLE} (namespace, agent, type, ts);
CREATE INDEX IF NOT EXISTS episode_log_run ON {_TABLE} (run_id);
COMMIT;
"""
_EXISTS = f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{_TABLE}'"
_INSERT = (
    f"INSERT INTO {_TABLE} ({', '.join(INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in INSERT_COLUMNS)})"
)
_DELETE = f"DELETE FROM {_TABLE} WHERE namespace = ? AND agent = ? AND session = ?"
# SQLite's names for "another connection holds the lock, and kept it past the timeout".


class SqliteEpisodicLog:
    """The episodic log in the SQLite file at ``path`` (created, with its folder, on
    first use; ``":memory:"`` keeps it in this object only).

    Appends are one ``BEGIN IMMEDIATE`` transaction each: all of a call's episodes or
    none, their ids consecutive.  A writer waits up to ``busy_timeout_s`` for another
    process's write; past it, or when the file cannot be opened or written,
    ``MemoryUnavailable`` (``retryable`` when the file was only busy).
    """

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 10.0) -> None:
        if not busy_timeout_s > 0:
            raise ConfigError(f"busy_timeout_s must be positive, got {busy_timeout_s!r}")
        self.path = os.fspath(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self._conn: sqlite3.Connection | None = None
        # One connection, used by one worker thread at a time.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SqliteEpisodicLog({self.path!r})"

    # An open connection cannot cross processes (Ray pickles backends into actors):
    # the copy opens its own on first use.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_conn"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- EpisodicLog protocol ------------------------------------------------------------

    async def append(self, episodes: Sequence[Episode]) -> None:
        """Store ``episodes`` in one transaction (all or none), ids in their order."""
        rows = episode_rows(episodes)
        if rows:
            await self._call("append", lambda conn: _append(conn, rows))

    async def query(self, query: EpisodeQuery) -> list[Episode]:
        """The episodes matching ``query``, oldest first."""
        check_query(query)
        sql, params = select_sql(_TABLE, query, lambda _: "?", dialect="sqlite")
        rows = await self._call("query", lambda conn: conn.execute(sql, params).fetchall())
        return [episode_from_row(row) for row in rows]

    async def delete_session(self, namespace: str, agent: str, session: str) -> int:
        """Erase a session's episodes; returns how many there were."""
        check_session(namespace, agent, session)
        params = (namespace, agent, session)
        # One statement in autocommit mode is its own transaction.
        return await self._call("delete", lambda conn: conn.execute(_DELETE, params).rowcount)

    async def aclose(self) -> None:
        """Close the connection (a later call opens a new one)."""
        await asyncio.to_thread(self._close)

    # -- connection ----------------------------------------------------------------------

    async def _call(self, what: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await asyncio.to_thread(self._locked, what, work)

    def _locked(self, what: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                return work(self._connection())
            except OSError as exc:  # creating the folder
                self._drop()
                raise self._unavailable(what, exc, retryable=False) from exc
            except sqlite3.DatabaseError as exc:
                # Operational failures (busy past the timeout, I/O, disk full, cannot
                # open) and damaged files (plain DatabaseError: "file is not a
                # database") make the log unusable; integrity and programming errors
                # are our bugs and propagate.
                if not isinstance(exc, sqlite3.OperationalError) and (
                    type(exc) is not sqlite3.DatabaseError
                ):
                    raise
                busy = getattr(exc, "sqlite_errorname", "") in BUSY
                if not busy:
                    self._drop()
                raise self._unavailable(what, exc, retryable=busy) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self.path != ":memory:" and not self.path.startswith("file:"):
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; appends open their own.
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            use_wal(conn, self.path, self.busy_timeout_s)
            # Creating takes the write lock: only when the table is missing, so opening
            # a busy file to read never waits for its writer.
            if conn.execute(_EXISTS).fetchone() is None:
                conn.executescript(_SCHEMA)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        # After a failure (other than a busy file) the next call reopens the file: it
        # may have been replaced, or the disk freed.
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _close(self) -> None:
        with self._lock:
            self._drop()

    def _unavailable(self, what: str, exc: Exception, *, retryable: bool) -> MemoryUnavailable:
        hint = (
            "another process held the file longer than busy_timeout_s; retry, or raise it"
            if retryable
            else f"check that {self.path} is a writable SQLite file on a disk with free space"
        )
        return MemoryUnavailable(
            f"SQLite episodic log {self.path}: {what} failed: {exc}",
            hint=hint,
            backend=self.name,
            retryable=retryable,
        )


def _append(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    # IMMEDIATE takes the write lock up front: waiting for it honours the busy
    # timeout, where a read lock upgraded mid-transaction would fail at once.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
