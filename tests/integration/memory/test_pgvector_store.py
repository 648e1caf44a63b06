"""``PgVectorStore`` on the real PostgreSQL with pgvector: the ``VectorStore``
contract, and what is its own (tables and indexes, sharing, the server away)."""

from __future__ import annotations

import asyncio
import pickle
import random
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest

from astromesh_ray.core.memory.base import VectorItem, VectorStore
from astromesh_ray.core.memory.semantic.pgvector import PgVectorStore
from astromesh_ray.errors import ConfigError, InvalidRequest, MemoryUnavailable
from tests.unit.core.memory.test_vector_stores import (
    E1,
    SAMPLE,
    VectorStoreContract,
    brute_force,
    random_items,
)

pytestmark = pytest.mark.integration


async def drop_tables(url: str, prefix: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        names = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", prefix + "%"
        )
        for row in names:
            await conn.execute(f'DROP TABLE IF EXISTS "{row["tablename"]}"')
    finally:
        await conn.close()


@pytest.fixture
async def store(postgres_url: str, unique: str) -> AsyncIterator[VectorStore]:
    made = PgVectorStore(postgres_url, table_prefix=f"{unique}_", max_size=4)
    try:
        yield made
    finally:
        await made.aclose()
        await drop_tables(postgres_url, unique)


class TestPgVectorContract(VectorStoreContract):
    """The contract on PostgreSQL tables."""


async def test_a_collection_is_a_table_with_hnsw_and_gin_indexes(
    store: PgVectorStore, postgres_url: str, unique: str
) -> None:
    await store.upsert("Docs", SAMPLE)  # the case of the name is kept (quoted)
    conn = await asyncpg.connect(postgres_url)
    try:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1", f"{unique}_Docs"
        )
        column = await conn.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass($1) AND attname = 'embedding'",
            f'"{unique}_Docs"',
        )
    finally:
        await conn.close()
    definitions = " | ".join(row["indexdef"] for row in indexes)
    assert "USING hnsw (embedding vector_cosine_ops)" in definitions
    assert "USING gin (metadata jsonb_path_ops)" in definitions
    assert column == "vector(4)"


async def test_stores_on_one_database_share_collections(
    store: PgVectorStore, postgres_url: str, unique: str
) -> None:
    other = PgVectorStore(postgres_url, table_prefix=f"{unique}_")
    try:
        # Both create the same new collection at once: one table, all items.
        await asyncio.gather(
            store.upsert("shared", random_items(100, 4, seed=1)),
            other.upsert("shared", random_items(100, 4, seed=2, start=100)),
        )
        assert await store.count("shared") == await other.count("shared") == 200
        assert await other.delete("shared", where={"parity": "odd"}) == 100
        assert await store.count("shared") == 100
    finally:
        await other.aclose()


async def test_a_selective_filter_still_finds_k_items(store: PgVectorStore) -> None:
    items = random_items(2000, 16, seed=4)
    rare = {f"v{i}" for i in range(0, 2000, 100)}  # 20 items
    tagged = [
        VectorItem(it.id, it.vector, it.text, {**it.metadata, "rare": it.id in rare})
        for it in items
    ]
    await store.upsert("big", tagged)  # 2000 rows: several statements, one transaction
    assert await store.count("big") == 2000
    query = [random.Random(9).gauss(0, 1) for _ in range(16)]
    hits = await store.search("big", query, k=15, where={"rare": True})
    wanted = [it for it in tagged if it.id in rare]
    assert [h.id for h in hits] == brute_force(wanted, query, 15)


async def test_a_database_without_the_extension_gets_it(postgres_url: str, unique: str) -> None:
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f'CREATE DATABASE "{unique}"')
    try:
        url = postgres_url.rsplit("/", 1)[0] + f"/{unique}"
        fresh = PgVectorStore(url, table_prefix="v_")
        await fresh.upsert("docs", SAMPLE)
        assert [h.id for h in await fresh.search("docs", E1, k=1)] == ["e1"]
        await fresh.aclose()
    finally:
        await admin.execute(f'DROP DATABASE "{unique}" WITH (FORCE)')
        await admin.close()


async def test_postgres_away_is_memory_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PgVectorStore(f"postgresql://postgres@127.0.0.1:{port}/x", timeout_s=5)
    for call in (
        store.upsert("docs", SAMPLE),
        store.search("docs", E1, k=1),
        store.count("docs"),
        store.delete("docs", ids=["e1"]),
    ):
        with pytest.raises(MemoryUnavailable, match="cannot be reached") as failed:
            await call
        assert failed.value.details == {"backend": "pgvector", "retryable": True}
    await store.aclose()


async def test_pgvector_checks_its_arguments(store: PgVectorStore, postgres_url: str) -> None:
    with pytest.raises(ConfigError):
        PgVectorStore("redis://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="table_prefix"):
        PgVectorStore(postgres_url, table_prefix='x"; DROP TABLE y; --')
    with pytest.raises(InvalidRequest, match="too long"):
        await store.upsert("c" * 60, SAMPLE)
    # A store pickles without its pool (it crosses to Ray replicas), and works there.
    await store.upsert("docs", SAMPLE)
    copy = pickle.loads(pickle.dumps(store))
    assert await copy.count("docs") == len(SAMPLE)
    await copy.aclose()
