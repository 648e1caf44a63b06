"""``PostgresEpisodicLog``: the episodic log in a PostgreSQL table (``asyncpg``).

One table, ``{table_prefix}episodes``: the episode's fields in columns, ``data`` as
``jsonb``, ``id`` a ``bigserial``.  It and its indexes are created on first use
(``IF NOT EXISTS``, under an advisory lock, so replicas starting together do not
trip over each other's ``CREATE``).

Connections come from a ``PgPool`` (``core/memory/postgres_pool.py``): created on
first use, retried once on a fresh connection when one is lost, ``MemoryUnavailable``
(having stored nothing) when the server cannot be reached.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Sequence
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
from astromesh_ray.core.memory.postgres_pool import PgPool
from astromesh_ray.errors import ConfigError

__all__ = ["PostgresEpisodicLog"]

log = logging.getLogger("astromesh.memory")

_T = TypeVar("_T")

# Unquoted identifiers fold to lower case; 40 characters leave room for the longest
# index name within PostgreSQL's 63.
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")


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
        self.url = url
        self.table_prefix = table_prefix
        self.table = f"{table_prefix}episodes"
        # Its connections show in pg_stat_activity as astromesh:<table>.
        self._pool = PgPool(
            url,
            label=self.table,
            backend=self.name,
            setup=self._create_schema,
            min_size=min_size,
            max_size=max_size,
            timeout_s=timeout_s,
        )
        self._insert = (
            f"INSERT INTO {self.table} ({', '.join(INSERT_COLUMNS)}, batch) VALUES "
            f"({', '.join(f'${i}' for i in range(1, len(INSERT_COLUMNS)))}, "
            f"${len(INSERT_COLUMNS)}::jsonb, ${len(INSERT_COLUMNS) + 1}::uuid)"
        )

    def __repr__(self) -> str:
        return f"PostgresEpisodicLog({self._pool.where!r}, table={self.table!r})"

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

        await self._pool.run("append", insert)

    async def query(self, query: EpisodeQuery) -> list[Episode]:
        """The episodes matching ``query``, oldest first."""
        check_query(query)
        sql, params = select_sql(
            self.table,
            query,
            lambda n: f"${n}",
            dialect="postgres",
            data_column="data::text AS data",
        )

        async def fetch(conn: asyncpg.Connection, retry: bool) -> list[Any]:
            return list(await conn.fetch(sql, *params))

        return [episode_from_row(tuple(row)) for row in await self._pool.run("query", fetch)]

    async def delete_session(self, namespace: str, agent: str, session: str) -> int:
        """Erase a session's episodes; returns how many there were."""
        check_session(namespace, agent, session)
        sql = f"DELETE FROM {self.table} WHERE namespace = $1 AND agent = $2 AND session = $3"

        async def delete(conn: asyncpg.Connection, retry: bool) -> int:
            status = await conn.execute(sql, namespace, agent, session)
            return int(status.split()[-1])  # "DELETE <count>"

        return await self._pool.run("delete", delete)

    async def aclose(self) -> None:
        """Close the pool (a later call creates a new one)."""
        await self._pool.aclose()

    # -- schema --------------------------------------------------------------------------

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


def _lock_key(table: str) -> int:
    """A stable signed 64-bit advisory lock key for ``table``'s schema."""
    digest = hashlib.sha256(f"astromesh:episodic:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
