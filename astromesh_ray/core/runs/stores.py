"""``PausedRunStore`` next to each conversation store: the same SQLite file, Redis
server or PostgreSQL database that holds the agent's history holds its paused runs.

- ``SqlitePausedRuns``: table ``paused_runs`` in the data directory's SQLite file
  (the default: also for agents without memory, or with ``in_memory`` history,
  whose paused runs must survive a replica restart); ``take`` is one
  ``DELETE ... RETURNING``.
- ``RedisPausedRuns``: one key per run with its TTL; ``take`` is ``GETDEL``.
- ``PostgresPausedRuns``: table ``astromesh_paused_runs``; ``take`` is one
  ``DELETE ... RETURNING``.
- ``MemoryPausedRuns``: a dict (unit tests; one process).

In each, ``take`` is atomic: of two replicas resuming one run, one gets it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from astromesh_ray.core.memory.postgres_pool import PgPool
from astromesh_ray.core.memory.sqlite_wal import use_wal
from astromesh_ray.core.runs.paused import PAUSED_TTL_S, PausedRun
from astromesh_ray.errors import MemoryUnavailable

T = TypeVar("T")


def _encode(run: PausedRun) -> str:
    return json.dumps(run.to_dict(), separators=(",", ":"))


def _decode(text: str | bytes | None) -> PausedRun | None:
    if text is None:
        return None
    try:
        return PausedRun.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise MemoryUnavailable(
            f"a stored paused run cannot be read: {type(exc).__name__}: {exc}",
            hint="the store holds a record this version cannot read",
            backend="paused_runs",
            retryable=False,
        ) from exc


class MemoryPausedRuns:
    """Paused runs in this process (lost with it)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._runs: dict[tuple[str, str], tuple[str, float]] = {}

    def _live(self, key: tuple[str, str]) -> str | None:
        item = self._runs.get(key)
        if item is None or item[1] <= self._clock():
            self._runs.pop(key, None)
            return None
        return item[0]

    async def save(self, agent: str, run: PausedRun, ttl_s: float = PAUSED_TTL_S) -> None:
        self._runs[(agent, run.run_id)] = (_encode(run), self._clock() + ttl_s)

    async def get(self, agent: str, run_id: str) -> PausedRun | None:
        return _decode(self._live((agent, run_id)))

    async def take(self, agent: str, run_id: str) -> PausedRun | None:
        text = self._live((agent, run_id))
        self._runs.pop((agent, run_id), None)
        return _decode(text)

    async def aclose(self) -> None:
        return None


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS paused_runs (
    agent TEXT NOT NULL,
    run_id TEXT NOT NULL,
    body TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (agent, run_id)
) WITHOUT ROWID;
"""


class SqlitePausedRuns:
    """Paused runs in the SQLite file at ``path`` (shared by the replicas of a host;
    WAL mode, one worker thread and connection per store, as the conversation store)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = os.fspath(path)
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="astromesh-paused")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(self._run, work))
        except (sqlite3.OperationalError, OSError) as exc:
            raise MemoryUnavailable(
                f"SQLite file {self._path} (paused runs) cannot be used: {exc}",
                hint="check the file, its directory's permissions and free disk space",
                backend="sqlite",
                retryable=isinstance(exc, sqlite3.OperationalError),
            ) from exc

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
            use_wal(conn, self._path, self._busy_timeout_s)
            conn.executescript(_SQLITE_SCHEMA)
            self._conn = conn
        return work(self._conn)

    async def save(self, agent: str, run: PausedRun, ttl_s: float = PAUSED_TTL_S) -> None:
        body, expires = _encode(run), self._clock() + ttl_s

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO paused_runs (agent, run_id, body, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (agent, run.run_id, body, expires),
            )
            # Expired runs go when a new one is saved: the table stays small.
            conn.execute("DELETE FROM paused_runs WHERE expires_at <= ?", (self._clock(),))

        await self._call(work)

    async def get(self, agent: str, run_id: str) -> PausedRun | None:
        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT body FROM paused_runs WHERE agent = ? AND run_id = ? AND expires_at > ?",
                (agent, run_id, self._clock()),
            ).fetchone()
            return None if row is None else str(row[0])

        return _decode(await self._call(work))

    async def take(self, agent: str, run_id: str) -> PausedRun | None:
        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "DELETE FROM paused_runs WHERE agent = ? AND run_id = ? RETURNING body, expires_at",
                (agent, run_id),
            ).fetchone()
            if row is None or float(row[1]) <= self._clock():
                return None
            return str(row[0])

        return _decode(await self._call(work))

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn = self._conn

        def close() -> None:
            if conn is not None:
                conn.close()

        await asyncio.get_running_loop().run_in_executor(executor, close)
        self._conn = None
        executor.shutdown(wait=False)


class RedisPausedRuns:
    """Paused runs on the Redis server at ``url``: key ``<prefix>:paused:<agent>:<run>``."""

    def __init__(self, url: str, *, prefix: str = "astromesh") -> None:
        from redis.asyncio import Redis

        self._client = Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
        )
        self._prefix = prefix
        self._where = urllib.parse.urlsplit(url).hostname or "localhost"

    def _key(self, agent: str, run_id: str) -> str:
        quote = functools.partial(urllib.parse.quote, safe="")
        return f"{self._prefix}:paused:{quote(agent)}:{quote(run_id)}"

    async def _do(self, what: str, work: Callable[[], Any]) -> Any:
        from redis import exceptions as redis_errors

        try:
            return await work()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise MemoryUnavailable(
                f"Redis at {self._where} cannot be reached: {what} of a paused run failed: {exc}",
                hint="start Redis, or point the conversation store at a running one",
                backend="redis",
                retryable=True,
            ) from exc

    async def save(self, agent: str, run: PausedRun, ttl_s: float = PAUSED_TTL_S) -> None:
        key, body = self._key(agent, run.run_id), _encode(run)
        await self._do("save", lambda: self._client.set(key, body, px=int(ttl_s * 1000)))

    async def get(self, agent: str, run_id: str) -> PausedRun | None:
        key = self._key(agent, run_id)
        return _decode(await self._do("get", lambda: self._client.get(key)))

    async def take(self, agent: str, run_id: str) -> PausedRun | None:
        key = self._key(agent, run_id)
        return _decode(await self._do("take", lambda: self._client.getdel(key)))

    async def aclose(self) -> None:
        await self._client.aclose()


_PG_TABLE = "astromesh_paused_runs"


async def _pg_setup(conn: Any) -> None:
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {_PG_TABLE} ("
        " agent text NOT NULL, run_id text NOT NULL, body text NOT NULL,"
        " expires_at double precision NOT NULL, PRIMARY KEY (agent, run_id))"
    )


class PostgresPausedRuns:
    """Paused runs in table ``astromesh_paused_runs`` of the database at ``url``."""

    def __init__(self, url: str, *, max_size: int = 5, clock: Callable[[], float] = time.time):
        self._pool = PgPool(
            url, label="paused runs", backend="postgres", setup=_pg_setup, max_size=max_size
        )
        self._clock = clock

    async def save(self, agent: str, run: PausedRun, ttl_s: float = PAUSED_TTL_S) -> None:
        body, now = _encode(run), self._clock()

        async def op(conn: Any, retry: bool) -> None:
            await conn.execute(
                f"INSERT INTO {_PG_TABLE} (agent, run_id, body, expires_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (agent, run_id)"
                " DO UPDATE SET body = EXCLUDED.body, expires_at = EXCLUDED.expires_at",
                agent,
                run.run_id,
                body,
                now + ttl_s,
            )
            await conn.execute(f"DELETE FROM {_PG_TABLE} WHERE expires_at <= $1", now)

        await self._pool.run("save paused run", op)

    async def get(self, agent: str, run_id: str) -> PausedRun | None:
        async def op(conn: Any, retry: bool) -> str | None:
            value = await conn.fetchval(
                f"SELECT body FROM {_PG_TABLE} WHERE agent = $1 AND run_id = $2"
                " AND expires_at > $3",
                agent,
                run_id,
                self._clock(),
            )
            return None if value is None else str(value)

        return _decode(await self._pool.run("read paused run", op))

    async def take(self, agent: str, run_id: str) -> PausedRun | None:
        async def op(conn: Any, retry: bool) -> str | None:
            row = await conn.fetchrow(
                f"DELETE FROM {_PG_TABLE} WHERE agent = $1 AND run_id = $2"
                " RETURNING body, expires_at",
                agent,
                run_id,
            )
            if row is None or float(row["expires_at"]) <= self._clock():
                return None
            return str(row["body"])

        return _decode(await self._pool.run("take paused run", op))

    async def aclose(self) -> None:
        await self._pool.aclose()
