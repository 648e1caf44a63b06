"""``PostgresEpisodicLog``: the episodic log in a PostgreSQL table (``asyncpg``).

One table, ``{table_prefix}episodes``: the episode's fields in columns, ``data`` as
``jsonb``, ``id`` a ``bigserial``.  It and its indexes are created on first use
(``IF NOT EXISTS``, under an advisory lock, so replicas starting together do not
trip over each other's ``CREATE``).

The pool is created lazily, on the event loop of the first call (a loop that
changes, as with ``asyncio.run`` per call, gets a new one).  When the server drops
a connection (a restart, a failover, an administrator terminating backends) the
call is retried once on fresh connections; when it cannot be reached the call
raises ``MemoryUnavailable`` and has stored nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from astromesh_ray.core.memory.base import Episode, EpisodeQuery
from astromesh_ray.core.memory.episodic._records import (
    INSERT_COLUMNS,
    check_query,
    check_session,
    episode_from_row,
    episode_rows,
    select_sql,
)
from astromesh_ray.core.memory.redact import redact
from astromesh_ray.errors import ConfigError, MemoryUnavailable

__all__ = ["PostgresEpisodicLog"]

log = logging.getLogger("astromesh.memory")

_T = TypeVar("_T")

# Unquoted identifiers fold to lower case; 40 characters leave room for the longest
# index name within PostgreSQL's 63.
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")


class _ConnectionLost(Exception):
    """The server terminated the connection a call was using."""


# The server went away under a connection we held: worth one retry on a fresh one.
_LOST: tuple[type[BaseException], ...] = (
    _ConnectionLost,
    asyncpg.exceptions.ConnectionDoesNotExistError,  # closed in the middle of a call
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,  # terminated by a restart or an administrator
    asyncpg.exceptions.CrashShutdownError,
    ConnectionResetError,
    BrokenPipeError,
)
# The server cannot serve us now; nothing was stored.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, unreachable, DNS, and timeouts (TimeoutError is an OSError)
    asyncpg.exceptions.PostgresConnectionError,  # 08xxx, while connecting
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: starting up, query cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many clients, disk full
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, after a failover
    asyncpg.exceptions.InvalidCatalogNameError,  # no such database
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # user or password
)
# Of those, the ones retrying will not fix.
_MISCONFIGURED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
)


class PostgresEpisodicLog:
    """The episodic log in ``{table_prefix}episodes`` of the database at ``url``.

    ``min_size`` / ``max_size`` size the connection pool; ``timeout_s`` bounds
    connecting and each statement.  Its connections show in ``pg_stat_activity`` as
    ``application_name`` ``astromesh:<table>``.  Appends are one transaction each (all of a
    call's episodes or none).  An append whose connection is lost is retried once,
    and the retry first looks for the batch (each append carries a random batch
    id), so a commit whose acknowledgement was lost is not stored twice.  A
    ``delete_session`` retried that way reports only what the retry removed.  (A
    ``MemoryUnavailable`` raised while a commit was in flight, after two lost
    connections or a timeout, cannot know whether the commit happened.)
    """

    name = "postgres"

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "astromesh_",
        min_size: int = 1,
        max_size: int = 5,
        timeout_s: float = 10.0,
    ) -> None:
        if not _PREFIX.match(table_prefix):
            raise ConfigError(
                f"table_prefix {table_prefix!r} is not a lower-case SQL identifier "
                "of at most 40 characters",
                hint="use letters a-z, digits and underscores, e.g. 'astromesh_'",
            )
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigError(
                f"pool sizes must satisfy 0 <= min_size <= max_size, max_size >= 1 "
                f"(got min_size={min_size}, max_size={max_size})"
            )
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {timeout_s!r}")
        self.url = url
        self.table_prefix = table_prefix
        self.table = f"{table_prefix}episodes"
        self.min_size = min_size
        self.max_size = max_size
        self.timeout_s = float(timeout_s)
        # How its connections show in pg_stat_activity.
        self.application_name = f"astromesh:{self.table}"
        self._where = str(redact(url))  # for messages: the URL without its password
        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._insert = (
            f"INSERT INTO {self.table} ({', '.join(INSERT_COLUMNS)}, batch) VALUES "
            f"({', '.join(f'${i}' for i in range(1, len(INSERT_COLUMNS)))}, "
            f"${len(INSERT_COLUMNS)}::jsonb, ${len(INSERT_COLUMNS) + 1}::uuid)"
        )

    def __repr__(self) -> str:
        return f"PostgresEpisodicLog({self._where!r}, table={self.table!r})"

    # A live pool cannot cross processes (Ray pickles backends into replicas): the
    # copy creates its own on first use.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None, "_loop": None, "_lock": None}

    # -- EpisodicLog protocol ------------------------------------------------------------

    async def append(self, episodes: Sequence[Episode]) -> None:
        """Store ``episodes`` in one transaction (all or none), ids in their order."""
        rows = episode_rows(episodes)
        if not rows:
            return
        batch = uuid.uuid4()
        first = rows[0]
        check = (
            f"SELECT 1 FROM {self.table} "
            "WHERE namespace = $1 AND agent = $2 AND ts = $3 AND batch = $4 LIMIT 1"
        )

        async def insert(conn: asyncpg.Connection, retry: bool) -> None:
            async with conn.transaction():
                # first = (ts, namespace, agent, ...): the index on (namespace, agent, ts)
                # finds the batch's first row if the lost attempt committed.
                if retry and await conn.fetchval(check, first[1], first[2], first[0], batch):
                    return
                await conn.executemany(self._insert, [(*row, batch) for row in rows])

        await self._run("append", insert)

    async def query(self, query: EpisodeQuery) -> list[Episode]:
        """The episodes matching ``query``, oldest first."""
        check_query(query)
        sql, params = select_sql(
            self.table, query, lambda n: f"${n}", data_column="data::text AS data"
        )

        async def fetch(conn: asyncpg.Connection, retry: bool) -> list[Any]:
            return list(await conn.fetch(sql, *params))

        return [episode_from_row(tuple(row)) for row in await self._run("query", fetch)]

    async def delete_session(self, namespace: str, agent: str, session: str) -> int:
        """Erase a session's episodes; returns how many there were."""
        check_session(namespace, agent, session)
        sql = f"DELETE FROM {self.table} WHERE namespace = $1 AND agent = $2 AND session = $3"

        async def delete(conn: asyncpg.Connection, retry: bool) -> int:
            status = await conn.execute(sql, namespace, agent, session)
            return int(status.split()[-1])  # "DELETE <count>"

        return await self._run("delete", delete)

    async def aclose(self) -> None:
        """Close the pool (a later call creates a new one)."""
        pool, loop = self._pool, self._loop
        self._pool = self._loop = self._lock = None
        if pool is None:
            return
        if loop is not asyncio.get_running_loop():
            # Its connections belong to another (maybe closed) loop: drop them there.
            with contextlib.suppress(RuntimeError):
                pool.terminate()
            return
        try:
            await asyncio.wait_for(pool.close(), self.timeout_s)
        except TimeoutError:
            pool.terminate()  # calls still running after the timeout are cut off

    # -- connection ----------------------------------------------------------------------

    async def _run(
        self, what: str, work: Callable[[asyncpg.Connection, bool], Awaitable[_T]]
    ) -> _T:
        """``work(connection, retry)`` on a pooled connection; retried once (with
        ``retry`` true) when the connection is lost."""
        for retry in (False, True):
            try:
                pool = await self._ready_pool()
                async with pool.acquire() as conn:
                    try:
                        return await work(conn, retry)
                    except asyncpg.exceptions.InternalClientError as exc:
                        # asyncpg's answer to a statement sent on a connection whose
                        # termination notice arrived while it sat idle in the pool:
                        # lost, not a bug of ours, when the connection is now closed.
                        if not _closed(conn):
                            raise
                        raise _ConnectionLost(str(exc)) from exc
            except _LOST as exc:
                if retry:
                    raise self._unavailable(what, exc, retryable=True) from exc
                log.info("%s: connection lost during %s (%s); retrying once", self, what, exc)
                if self._pool is not None:
                    # Every idle connection may be dead too (a restart): replace them all.
                    await self._pool.expire_connections()
            except _UNAVAILABLE as exc:
                retryable = not isinstance(exc, _MISCONFIGURED)
                raise self._unavailable(what, exc, retryable=retryable) from exc
        raise AssertionError("unreachable: the retry either returns or raises")

    async def _ready_pool(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._lock is None or self._loop is not loop:
            # A pool and its lock belong to one event loop; a new loop starts afresh.
            self._pool, self._loop, self._lock = None, loop, asyncio.Lock()
        async with self._lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self.url,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    timeout=self.timeout_s,
                    command_timeout=self.timeout_s,
                    server_settings={"application_name": self.application_name},
                )
                try:
                    async with pool.acquire() as conn:
                        await self._create_schema(conn)
                except BaseException:
                    pool.terminate()
                    raise
                self._pool = pool
        return self._pool

    async def _create_schema(self, conn: asyncpg.Connection) -> None:
        t = self.table
        async with conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS of one name can still collide in the
            # catalogs; the lock (released at commit) makes creators take turns.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(t))
            await conn.execute(
                f"""
                CREATE TABLE IF NOT EXISTS {t} (
                    id bigserial PRIMARY KEY,
                    ts double precision NOT NULL,
                    namespace text NOT NULL,
                    agent text NOT NULL,
                    session text,
                    run_id text NOT NULL,
                    trace_id text NOT NULL,
                    type text NOT NULL,
                    data jsonb NOT NULL,
                    batch uuid NOT NULL
                );
                CREATE INDEX IF NOT EXISTS {t}_agent_ts ON {t} (namespace, agent, ts, id);
                CREATE INDEX IF NOT EXISTS {t}_session_ts
                    ON {t} (namespace, agent, session, ts, id);
                CREATE INDEX IF NOT EXISTS {t}_type_ts ON {t} (namespace, agent, type, ts);
                CREATE INDEX IF NOT EXISTS {t}_run ON {t} (run_id);
                """
            )

    def _unavailable(self, what: str, exc: BaseException, *, retryable: bool) -> MemoryUnavailable:
        why = str(exc) or type(exc).__name__
        hint = (
            f"start PostgreSQL at {self._where}, or point the episodic log at a running one"
            if retryable
            else f"check the database name, user and password in {self._where}"
        )
        return MemoryUnavailable(
            f"PostgreSQL episodic log {self._where}: {what} failed: {why}",
            hint=hint,
            backend=self.name,
            retryable=retryable,
        )


def _closed(conn: asyncpg.Connection) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.exceptions.InterfaceError:  # the pool already took it back as dead
        return True


def _lock_key(table: str) -> int:
    """A stable signed 64-bit advisory lock key for ``table``'s schema."""
    digest = hashlib.sha256(f"astromesh:episodic:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
