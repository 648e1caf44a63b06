"""``PgVectorStore``: collections as PostgreSQL tables with pgvector, over asyncpg.

One table per collection, ``<table_prefix><collection>`` (a quoted identifier, so
the collection name's case is kept), created on the first upsert:

    id text PRIMARY KEY, embedding vector(<dim>), text text, metadata jsonb

with an HNSW index on ``embedding vector_cosine_ops`` and a GIN index on
``metadata`` (``jsonb_path_ops``, for the ``@>`` containment that ``where`` becomes).
Scores are ``1 - (embedding <=> query)``, the cosine similarity.  Vectors travel
as pgvector text literals (``'[1,2,3]'``), so no codec and no extra dependency.

Filtered searches use pgvector's iterative index scans (0.8+, ``strict_order``), so a
selective ``where`` still finds ``k`` items when ``k`` match, best first.  Each
upsert is one transaction: all its items or none.  Any number of processes may
share the tables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from astromesh_ray.core.memory.base import VectorHit, VectorItem, Where
from astromesh_ray.core.memory.postgres_pool import PgPool
from astromesh_ray.core.memory.semantic.common import (
    check_collection,
    check_delete,
    check_items,
    check_search,
    check_vector,
    check_where,
)
from astromesh_ray.errors import ConfigError, InvalidRequest, MemoryUnavailable

__all__ = ["PgVectorStore"]

_PREFIX_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
_MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1
_INDEX_SUFFIX = "_hnsw"  # the longest suffix an index name gets
# Rows per INSERT statement of one upsert (all in one transaction): keeps each
# statement's parameters (text literals of the vectors) to a few MB.
_ROWS_PER_STATEMENT = 500
_MAX_EF_SEARCH = 1000  # pgvector's limit for hnsw.ef_search


def _literal(vector: Sequence[float]) -> str:
    # 9 significant digits round-trip a float32, which is what pgvector stores.
    return "[" + ",".join(f"{x:.9g}" for x in vector) + "]"


def _quote(identifier: str) -> str:
    # Only [A-Za-z0-9_-] reach here (prefix and collection are checked): no escaping.
    return f'"{identifier}"'


class PgVectorStore:
    """Vector collections in PostgreSQL tables with pgvector.

    ``url``: a ``postgresql://`` URL.  ``table_prefix`` starts every table's name;
    ``min_size``/``max_size`` size the connection pool (opened on first use, one per
    event loop).  ``m`` and ``ef_construction`` shape the HNSW index of a new
    collection (pgvector's defaults); ``ef_search`` is the search beam (at least
    ``k`` is used).  ``timeout_s`` bounds connecting and each statement.
    """

    name = "pgvector"

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "astromesh_vectors_",
        min_size: int = 1,
        max_size: int = 10,
        m: int = 16,
        ef_construction: int = 64,
        ef_search: int = 100,
        timeout_s: float = 30.0,
    ) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"PgVectorStore: not a PostgreSQL URL: {url!r}",
                hint="use postgresql://user@host:port/database",
            )
        if not _PREFIX_PATTERN.match(table_prefix):
            raise ConfigError(
                f"PgVectorStore: invalid table_prefix {table_prefix!r}",
                hint="1 to 40 letters, digits or '_', not starting with a digit",
            )
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigError("PgVectorStore: need 0 <= min_size <= max_size and max_size >= 1")
        if not 1 <= ef_search <= _MAX_EF_SEARCH:
            raise ConfigError(f"PgVectorStore: ef_search must be between 1 and {_MAX_EF_SEARCH}")
        if not 2 <= m <= 100 or not 2 * m <= ef_construction <= 1000:
            raise ConfigError(
                "PgVectorStore: need 2 <= m <= 100 and 2 * m <= ef_construction <= 1000 "
                "(pgvector's limits)"
            )
        self.url = url
        self.table_prefix = table_prefix
        self.min_size = min_size
        self.max_size = max_size
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.timeout_s = timeout_s
        self._pool = PgPool(
            url,
            label=f"{table_prefix}vectors",
            backend=self.name,
            setup=self._ensure_extension,
            min_size=min_size,
            max_size=max_size,
            timeout_s=timeout_s,
        )
        self._dims: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"PgVectorStore(table_prefix={self.table_prefix!r})"

    # -- VectorStore protocol ----------------------------------------------------------

    async def upsert(self, collection: str, items: Sequence[VectorItem]) -> None:
        """Add ``items``, replacing rows with the same ids, in one transaction."""
        table = self._table(collection)
        checked = check_items(items)
        if not checked:
            return
        dim = len(checked[0].vector)
        sql = (
            f"INSERT INTO {_quote(table)} (id, embedding, text, metadata) "
            "SELECT i, e::vector, x, m::jsonb "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(i, e, x, m) "
            "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, "
            "text = EXCLUDED.text, metadata = EXCLUDED.metadata"
        )

        async def work(conn: asyncpg.Connection, retry: bool) -> None:
            have = self._dims.get(collection) or await self._create(conn, table, dim)
            self._dims[collection] = have
            check_vector(checked[0].vector, have)  # InvalidRequest on another dimension
            try:
                async with conn.transaction():
                    for start in range(0, len(checked), _ROWS_PER_STATEMENT):
                        rows = checked[start : start + _ROWS_PER_STATEMENT]
                        await conn.execute(
                            sql,
                            [r.id for r in rows],
                            [_literal(r.vector) for r in rows],
                            [r.text for r in rows],
                            [json.dumps(dict(r.metadata)) for r in rows],
                        )
            except asyncpg.UndefinedTableError:
                # Dropped behind our back since we last saw it: forget it, say so.
                self._dims.pop(collection, None)
                raise MemoryUnavailable(
                    f"pgvector table {table} disappeared during an upsert",
                    backend=self.name,
                    retryable=True,
                ) from None

        await self._pool.run("upsert", work)  # idempotent: a retry writes the same rows

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        *,
        k: int,
        threshold: float | None = None,
        where: Where | None = None,
    ) -> list[VectorHit]:
        """The ``k`` rows most similar to ``vector`` matching ``where``, best first."""
        table = self._table(collection)
        check_search(k, threshold)
        query = check_vector(vector)
        checked = check_where(where)
        args: list[Any] = [_literal(query)]
        filter_sql = ""
        if checked:
            args.append(json.dumps(checked))
            filter_sql = "WHERE metadata @> $2::jsonb "
        args.append(k)
        sql = (
            "SELECT id, text, metadata, 1 - (embedding <=> $1::text::vector) AS score "
            f"FROM {_quote(table)} {filter_sql}"
            f"ORDER BY embedding <=> $1::text::vector LIMIT ${len(args)}"
        )

        async def work(conn: asyncpg.Connection, retry: bool) -> list[Any]:
            dim = self._dims.get(collection) or await self._dimension(conn, table)
            if dim is None:
                return []
            self._dims[collection] = dim
            check_vector(query, dim)
            try:
                async with conn.transaction():
                    # Transaction-local settings: a beam of at least k, and index scans
                    # that go on past filtered-out rows, in exact distance order.
                    await conn.execute(
                        "SELECT set_config('hnsw.ef_search', $1, true), "
                        "set_config('hnsw.iterative_scan', 'strict_order', true)",
                        str(min(_MAX_EF_SEARCH, max(self.ef_search, k))),
                    )
                    return list(await conn.fetch(sql, *args))
            except asyncpg.UndefinedTableError:
                self._dims.pop(collection, None)
                return []

        rows = await self._pool.run("search", work)
        hits: list[VectorHit] = []
        for row in rows:
            score = min(1.0, float(row["score"]))  # float error can leave 1.0000001
            if threshold is not None and score < threshold:
                break  # best first: the rest score lower still
            hits.append(VectorHit(row["id"], row["text"], score, json.loads(row["metadata"])))
        return hits

    async def delete(
        self, collection: str, *, ids: Sequence[str] | None = None, where: Where | None = None
    ) -> int:
        """Remove the rows with these ``ids`` and/or matching ``where`` (both: the ids
        that also match); returns how many were removed."""
        table = self._table(collection)
        checked_ids, checked_where = check_delete(ids, where)
        if checked_ids == []:
            return 0
        conditions: list[str] = []
        args: list[Any] = []
        if checked_ids is not None:
            args.append(checked_ids)
            conditions.append(f"id = ANY(${len(args)}::text[])")
        if checked_where is not None:
            args.append(json.dumps(checked_where))
            conditions.append(f"metadata @> ${len(args)}::jsonb")
        sql = f"DELETE FROM {_quote(table)} WHERE " + " AND ".join(conditions)

        async def work(conn: asyncpg.Connection, retry: bool) -> int:
            try:
                status = await conn.execute(sql, *args)
            except asyncpg.UndefinedTableError:
                self._dims.pop(collection, None)
                return 0
            return int(status.rsplit(" ", 1)[-1])  # "DELETE <n>"

        # A retry after a lost commit reports only what it removed itself.
        return await self._pool.run("delete", work)

    async def count(self, collection: str, where: Where | None = None) -> int:
        """How many rows of ``collection`` match ``where``."""
        table = self._table(collection)
        checked = check_where(where)
        sql = f"SELECT count(*) FROM {_quote(table)}"
        args: list[Any] = []
        if checked:
            sql += " WHERE metadata @> $1::jsonb"
            args.append(json.dumps(checked))

        async def work(conn: asyncpg.Connection, retry: bool) -> int:
            try:
                found: int = await conn.fetchval(sql, *args)
            except asyncpg.UndefinedTableError:
                self._dims.pop(collection, None)
                return 0
            return found

        return await self._pool.run("count", work)

    async def aclose(self) -> None:
        """Close the connection pool (a later call opens a new one)."""
        await self._pool.aclose()

    # -- tables ------------------------------------------------------------------------

    def _table(self, collection: str) -> str:
        table = self.table_prefix + check_collection(collection)
        if len(table) + len(_INDEX_SUFFIX) > _MAX_IDENTIFIER:
            raise InvalidRequest(
                f"collection name {collection!r} is too long for pgvector with prefix "
                f"{self.table_prefix!r}",
                hint=f"at most {_MAX_IDENTIFIER - len(_INDEX_SUFFIX) - len(self.table_prefix)} "
                "characters",
            )
        return table

    async def _dimension(self, conn: asyncpg.Connection, table: str) -> int | None:
        """The table's vector dimension (its column's type modifier); None when the
        table does not exist."""
        dim: int | None = await conn.fetchval(
            "SELECT a.atttypmod FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass($1) AND a.attname = 'embedding'",
            _quote(table),
        )
        return dim

    async def _create(self, conn: asyncpg.Connection, table: str, dim: int) -> int:
        """Create the table and its indexes unless they exist; its dimension."""
        async with conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog:
            # one creator at a time per table.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", table)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_quote(table)} ("
                "id text PRIMARY KEY, "
                f"embedding vector({dim}) NOT NULL, "
                "text text NOT NULL, "
                "metadata jsonb NOT NULL DEFAULT '{}'::jsonb)"
            )
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {_quote(table + _INDEX_SUFFIX)} "
                f"ON {_quote(table)} USING hnsw (embedding vector_cosine_ops) "
                f"WITH (m = {int(self.m)}, ef_construction = {int(self.ef_construction)})"
            )
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {_quote(table + '_meta')} "
                f"ON {_quote(table)} USING gin (metadata jsonb_path_ops)"
            )
            found = await self._dimension(conn, table)
        assert found is not None  # just created, in this transaction
        return found

    # -- connections -------------------------------------------------------------------

    async def _ensure_extension(self, conn: asyncpg.Connection) -> None:
        if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'vector'"):
            return
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except asyncpg.UniqueViolationError:
            return  # created at the same moment by another process
        except (
            asyncpg.UndefinedFileError,
            asyncpg.FeatureNotSupportedError,
            asyncpg.InsufficientPrivilegeError,
        ) as exc:
            raise MemoryUnavailable(
                f"the pgvector extension is not available in this database: {exc}",
                hint="install pgvector on the PostgreSQL server (e.g. the "
                "postgresql-<version>-pgvector package), then run CREATE EXTENSION "
                "vector as a superuser",
                backend=self.name,
                retryable=False,
            ) from exc
