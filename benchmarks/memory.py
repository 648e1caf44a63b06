"""Memory benchmark: vector stores against exact search, conversational stores side by side.

1. Vector stores.  10,000 random unit vectors of 384 dimensions (all-MiniLM-L6-v2's
   size) go into each store: ``FaissVectorStore`` (HNSW, snapshots to a temporary
   directory), ``QdrantVectorStore`` in local mode (in memory) and ``PgVectorStore`` on
   the test database (HNSW index).  200 random unit queries, k = 10, run one at a time
   through each store's ``search``; the baseline is exact brute-force search in NumPy
   (one matrix-vector product and a partial sort per query), timed query by query in
   alternation with the store's (so both see the same load from the rest of the
   machine), which is also the ground truth for recall@10.  Random high-dimensional data is the hard
   case for graph indexes (every point is nearly equidistant), so recall here is a
   floor, not what embeddings of real text give.
2. Conversational stores.  ``append`` of 200 turns (20 sessions of 10, a user and an
   assistant message each) and 200 ``history(last=20)`` reads on ``InMemory``,
   ``Sqlite`` (a temporary file), ``Redis`` and ``Postgres`` (the test servers), with
   the ratio to the in-memory store.

Everything it creates (tables, keys, files) is removed at the end.  PostgreSQL and
Redis are the test services (``scripts/test-services.sh``); their URLs come from
``ASTROMESH_TEST_POSTGRES_URL`` / ``ASTROMESH_TEST_REDIS_URL`` when set.

    .venv/bin/python benchmarks/memory.py
"""

from __future__ import annotations

import asyncio
import importlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import harness

# One BLAS thread for the exact baseline (a matrix-vector product per query), as a
# store searches one query on one core.  On 2 shared cores a two-thread BLAS is
# faster when idle (0.10 against 0.19 ms here) but waits on the busy core while
# PostgreSQL answers the store's query: its p50 went from 0.2 to 7 ms.  Read by NumPy's
# OpenBLAS when it loads, so set before the import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import numpy.typing as npt

from astromesh_ray.core.memory.base import NewTurn, SessionKey, VectorItem, VectorStore
from astromesh_ray.core.messages import Message

N = 10_000
DIM = 384
QUERIES = 200
WARMUP = 20
K = 10
BATCH = 1000  # items per upsert while loading
TURNS = 200
SESSIONS = 20
READS = 200

POSTGRES_URL = os.environ.get(
    "ASTROMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/astromesh_test"
)
REDIS_URL = os.environ.get("ASTROMESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

Matrix = npt.NDArray[np.float32]


@dataclass
class Timing:
    """Latencies of one operation, in seconds."""

    samples: list[float]

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def p50_ms(self) -> float:
        return 1000 * statistics.median(self.samples)

    @property
    def p95_ms(self) -> float:
        return 1000 * self.pct(0.95)


async def timed(calls: list[Callable[[], Awaitable[Any]]]) -> tuple[Timing, list[Any]]:
    samples: list[float] = []
    results: list[Any] = []
    for call in calls:
        start = time.perf_counter()
        results.append(await call())
        samples.append(time.perf_counter() - start)
    return Timing(samples), results


def unit_rows(rng: np.random.Generator, n: int) -> Matrix:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    out: Matrix = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


# -- vector stores ---------------------------------------------------------------------


@dataclass
class VectorRow:
    name: str
    load_s: float
    timing: Timing
    exact: Timing  # the baseline, timed query by query alternating with the store's
    recall: float


def exact_top(data: Matrix, q: Matrix) -> set[int]:
    """The baseline: brute force for one query (a matrix-vector product, a partial sort)."""
    scores = data @ q
    top = np.argpartition(-scores, K)[:K]
    return {int(i) for i in top}


async def bench_store(name: str, store: VectorStore, data: Matrix, queries: Matrix) -> VectorRow:
    items = [VectorItem(f"v{i}", row.tolist(), f"item {i}", {"i": i}) for i, row in enumerate(data)]
    start = time.perf_counter()
    for at in range(0, N, BATCH):
        await store.upsert("bench", items[at : at + BATCH])
    load_s = time.perf_counter() - start
    assert await store.count("bench") == N
    for q in queries[:WARMUP]:
        await store.search("bench", q.tolist(), k=K)
        exact_top(data, q)
    # Each query through the store, then exactly: both under the same load from the
    # rest of the machine.
    store_s: list[float] = []
    exact_s: list[float] = []
    recalls: list[float] = []
    for q in queries[WARMUP:]:
        vector = q.tolist()
        began = time.perf_counter()
        hits = await store.search("bench", vector, k=K)
        store_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        truth = exact_top(data, q)
        exact_s.append(time.perf_counter() - began)
        recalls.append(len({int(hit.id[1:]) for hit in hits} & truth) / K)
    return VectorRow(name, load_s, Timing(store_s), Timing(exact_s), statistics.mean(recalls))


async def drop_pg_tables(prefix: str) -> None:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        for row in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", prefix + "%"
        ):
            await conn.execute(f'DROP TABLE IF EXISTS "{row["tablename"]}" CASCADE')
    finally:
        await conn.close()


async def vector_section() -> list[str]:
    from astromesh_ray.core.memory.semantic.faiss import FaissVectorStore
    from astromesh_ray.core.memory.semantic.pgvector import PgVectorStore
    from astromesh_ray.core.memory.semantic.qdrant import QdrantVectorStore

    rng = np.random.default_rng(20261124)
    data = unit_rows(rng, N)
    queries = unit_rows(rng, WARMUP + QUERIES)  # the first WARMUP are not timed
    rows: list[VectorRow] = []
    with tempfile.TemporaryDirectory(prefix="astromesh-bench-") as tmp:
        faiss_store = FaissVectorStore(Path(tmp) / "faiss")
        rows.append(await bench_store("FAISS HNSW (m=32, ef=128)", faiss_store, data, queries))
        await faiss_store.aclose()
    qdrant_store = QdrantVectorStore()
    rows.append(await bench_store("Qdrant local mode", qdrant_store, data, queries))
    await qdrant_store.aclose()
    prefix = f"bench_{uuid.uuid4().hex[:8]}_"
    # pgvector's default graph (m=16, ef_construction=64), FAISS's search beam.
    pg_store = PgVectorStore(POSTGRES_URL, table_prefix=prefix, ef_search=128)
    try:
        rows.append(await bench_store("pgvector HNSW (m=16, ef=128)", pg_store, data, queries))
    finally:
        await pg_store.aclose()
        await drop_pg_tables(prefix)

    lines = [
        f"## Vector search: {N:,} random unit vectors, {DIM} dims, {QUERIES} queries, k={K}",
        "",
        "Baseline: exact NumPy search (recall 1 by definition), timed alternately with each",
        "store's queries.",
        "",
        "| store | load (s) | p50 (ms) | p95 (ms) | exact p50 (ms) | exact p95 (ms) "
        "| p50 / exact | recall@10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.load_s:.1f} | {row.timing.p50_ms:.2f} | {row.timing.p95_ms:.2f} "
            f"| {row.exact.p50_ms:.2f} | {row.exact.p95_ms:.2f} "
            f"| {row.timing.p50_ms / row.exact.p50_ms:.2f} | {row.recall:.3f} |"
        )
    return lines


# -- conversational stores -------------------------------------------------------------


def conversation_class(module: str, name: str) -> Any:
    """A conversational store class, imported now (another module may not exist yet)."""
    return getattr(
        importlib.import_module(f"astromesh_ray.core.memory.conversational.{module}"), name
    )


async def bench_conversation(store: Any, tag: str) -> tuple[Timing, Timing]:
    keys = [SessionKey("bench", "agent", f"{tag}-s{i}") for i in range(SESSIONS)]
    turns = [
        (
            keys[n % SESSIONS],
            NewTurn(
                run_id=f"run-{n}",
                messages=[
                    Message(role="user", content=f"question number {n} about the weather"),
                    Message(role="assistant", content=f"answer number {n}: sunny, 21 degrees"),
                ],
            ),
        )
        for n in range(TURNS)
    ]
    appends, _ = await timed([partial(store.append, key, turn) for key, turn in turns])
    reads, histories = await timed(
        [partial(store.history, keys[n % SESSIONS], last=20) for n in range(READS)]
    )
    assert all(len(h.turns) == TURNS // SESSIONS for h in histories)
    for key in keys:
        await store.delete(key)
    return appends, reads


async def clear_redis(prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
    finally:
        await client.aclose()


async def conversation_section() -> list[str]:
    header = [
        f"## Conversational stores: {TURNS} appends ({SESSIONS} sessions), "
        f"{READS} history(last=20) reads",
        "",
    ]
    try:
        classes = {
            "InMemory": conversation_class("memory", "InMemoryConversationStore"),
            "SQLite": conversation_class("sqlite", "SqliteConversationStore"),
            "Redis": conversation_class("redis", "RedisConversationStore"),
            "PostgreSQL": conversation_class("postgres", "PostgresConversationStore"),
        }
    except (ImportError, AttributeError) as exc:
        return [*header, f"skipped: the conversational stores are not there yet ({exc})"]
    tag = uuid.uuid4().hex[:8]
    results: dict[str, tuple[Timing, Timing]] = {}
    with tempfile.TemporaryDirectory(prefix="astromesh-bench-") as tmp:
        stores: dict[str, Any] = {
            "InMemory": classes["InMemory"](),
            "SQLite": classes["SQLite"](Path(tmp) / "memory.sqlite3"),
            "Redis": classes["Redis"](REDIS_URL, prefix=f"bench-{tag}"),
            "PostgreSQL": classes["PostgreSQL"](POSTGRES_URL, table_prefix=f"bench_{tag}_"),
        }
        try:
            for name, store in stores.items():
                results[name] = await bench_conversation(store, tag)
        finally:
            for store in stores.values():
                await store.aclose()
            await clear_redis(f"bench-{tag}")
            await drop_pg_tables(f"bench_{tag}_")
    base_append, base_read = results["InMemory"]
    lines = [
        *header,
        "| store | append p50 (ms) | append p95 (ms) | read p50 (ms) | read p95 (ms) "
        "| append / in-memory | read / in-memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (append, read) in results.items():
        lines.append(
            f"| {name} | {append.p50_ms:.3f} | {append.p95_ms:.3f} | {read.p50_ms:.3f} "
            f"| {read.p95_ms:.3f} | {append.p50_ms / base_append.p50_ms:.0f}x "
            f"| {read.p50_ms / base_read.p50_ms:.0f}x |"
        )
    return lines


async def main() -> None:
    started = time.perf_counter()
    blas = os.environ["OPENBLAS_NUM_THREADS"]
    for line in harness.machine(extra=f", NumPy {np.__version__} ({blas} BLAS thread)"):
        print(line)
    print()
    for line in await vector_section():
        print(line)
    print()
    for line in await conversation_section():
        print(line)
    print()
    print(f"total: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
