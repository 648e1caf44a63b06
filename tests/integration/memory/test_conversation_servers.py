"""The ``ConversationStore`` contract on real Redis and PostgreSQL servers, and what
happens when a server restarts under a running session.

The contract runs on the shared servers (``redis_url``, ``postgres_url``), each test
under its own key / table prefix, removed afterwards.  The restart tests start
servers of their own on free ports, so they never disturb the shared ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
import redis.asyncio as aioredis

from astromesh_ray.core.memory.base import ConversationStore, SessionKey, StoredTurn
from astromesh_ray.core.memory.conversational import postgres
from astromesh_ray.core.memory.conversational.postgres import PostgresConversationStore
from astromesh_ray.core.memory.conversational.redis import RedisConversationStore
from astromesh_ray.errors import MemoryUnavailable
from tests.integration.conftest import free_port
from tests.integration.memory.servers import OwnPostgres, OwnRedis
from tests.unit.core.memory.test_conversation_local import (
    KEY,
    Backend,
    ConversationStoreContract,
    messages,
    new_turn,
    seqs,
)


class ServerBackend(Backend):
    """Stores on one server under one prefix: every ``open`` is a new store with its
    own connection pool; time is real time."""

    def __init__(self, kind: str, url: str, unique: str) -> None:
        self.kind = kind
        self.url = url
        self.unique = unique
        self.stores: list[ConversationStore] = []

    async def open(self, *, ttl_s: int | None = None) -> ConversationStore:
        store: ConversationStore
        if self.kind == "redis":
            store = RedisConversationStore(self.url, ttl_s=ttl_s, prefix=self.unique)
        else:
            store = PostgresConversationStore(
                self.url, ttl_s=ttl_s, table_prefix=f"{self.unique}_", max_size=5
            )
        self.stores.append(store)
        return store

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def aclose(self) -> None:
        for store in self.stores:
            await store.aclose()
        if self.kind == "redis":
            await drop_redis_keys(self.url, self.unique)
        else:
            await drop_postgres_tables(self.url, f"{self.unique}_")


async def drop_redis_keys(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def drop_postgres_tables(url: str, prefix: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            f"DROP TABLE IF EXISTS {prefix}conversation_turns, {prefix}conversation_sessions"
        )
    finally:
        await conn.close()


@pytest.fixture(params=["redis", "postgres"])
async def backend(
    request: pytest.FixtureRequest, redis_url: str, postgres_url: str, unique: str
) -> AsyncIterator[Backend]:
    url = redis_url if request.param == "redis" else postgres_url
    server = ServerBackend(request.param, url, unique)
    yield server
    await server.aclose()


class TestServerConversationStores(ConversationStoreContract):
    """The contract on ``RedisConversationStore`` and ``PostgresConversationStore``."""


async def test_redis_keys_expire_with_the_session_and_go_with_delete(
    redis_url: str, unique: str
) -> None:
    store = RedisConversationStore(redis_url, ttl_s=30, prefix=unique)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await store.append(KEY, new_turn("r1"))
        keys = sorted([k async for k in client.scan_iter(match=f"{unique}:*")])
        assert len(keys) == 4  # sessions set, meta, turns, runs
        for key in keys:
            assert 0 < await client.pttl(key) <= 30_000
        assert await store.delete(KEY)
        # The set emptied with its last member: nothing of ours is left.
        assert [k async for k in client.scan_iter(match=f"{unique}:*")] == []
    finally:
        await client.aclose()
        await store.aclose()
        await drop_redis_keys(redis_url, unique)


async def test_postgres_tables_carry_the_prefix(postgres_url: str, unique: str) -> None:
    store = PostgresConversationStore(postgres_url, table_prefix=f"{unique}_")
    try:
        await store.append(KEY, new_turn("r1"))
        conn = await asyncpg.connect(postgres_url)
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE $1 ORDER BY tablename",
                f"{unique}%",
            )
        finally:
            await conn.close()
        assert [r["tablename"] for r in tables] == [
            f"{unique}_conversation_sessions",
            f"{unique}_conversation_turns",
        ]
    finally:
        await store.aclose()
        await drop_postgres_tables(postgres_url, f"{unique}_")


async def test_postgres_appends_purge_expired_sessions(
    postgres_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "PURGE_EVERY_S", 0.0)  # every append purges
    store = PostgresConversationStore(postgres_url, ttl_s=1, table_prefix=f"{unique}_")
    try:
        gone = SessionKey(KEY.namespace, KEY.agent, "gone")
        await store.append(gone, new_turn("g1"))
        await asyncio.sleep(1.1)
        await store.append(KEY, new_turn("r1"))
        conn = await asyncpg.connect(postgres_url)
        try:
            for table in ("conversation_sessions", "conversation_turns"):
                rows = await conn.fetch(f"SELECT session FROM {unique}_{table}")
                assert [r["session"] for r in rows] == [KEY.session]
        finally:
            await conn.close()
    finally:
        await store.aclose()
        await drop_postgres_tables(postgres_url, f"{unique}_")


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_no_server_is_memory_unavailable(kind: str) -> None:
    port = free_port()  # nothing listens there
    store: ConversationStore
    if kind == "redis":
        store = RedisConversationStore(f"redis://127.0.0.1:{port}/0")
    else:
        store = PostgresConversationStore(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    started = time.monotonic()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.append(KEY, new_turn("r1")),
        lambda: store.history(KEY),
    ]
    for call in calls:
        with pytest.raises(MemoryUnavailable) as info:
            await call()
        assert info.value.details == {"backend": kind, "retryable": True}
    assert time.monotonic() - started < 5  # bounded retries, not a hang
    await store.aclose()


# --------------------------------------------------------------------------- restarts


Outcomes = dict[str, StoredTurn | MemoryUnavailable]


async def appended_before(store: ConversationStore) -> Outcomes:
    """A session under way before the restart."""
    turns = [await store.append(KEY, new_turn(f"before-{i}")) for i in range(3)]
    return {turn.run_id: turn for turn in turns}


async def append_through(store: ConversationStore, restart: Callable[[], None]) -> Outcomes:
    """Four writers append to one session without pause while ``restart`` (in a
    thread) takes the server down and up again; what each append ended with."""
    outcomes: Outcomes = {}
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            run_id = f"w{w}-{i}"
            i += 1
            try:
                outcomes[run_id] = await store.append(KEY, new_turn(run_id))
            except MemoryUnavailable as exc:  # anything else fails the test
                assert exc.details["retryable"] is True
                outcomes[run_id] = exc

    writers = [asyncio.create_task(writer(w)) for w in range(4)]
    await asyncio.sleep(0.1)
    await asyncio.to_thread(restart)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*writers)
    return outcomes


async def check_after_restart(store: ConversationStore, outcomes: Outcomes) -> None:
    """Every acknowledged turn kept its seq; a failed append retried with its run id
    is stored once; no partial or duplicated turn; later appends work."""
    failed = [r for r, o in outcomes.items() if isinstance(o, MemoryUnavailable)]
    assert failed, "the outage went unnoticed: no append failed"
    assert len(outcomes) > len(failed), "no append succeeded"
    for run_id in failed:
        await store.append(KEY, new_turn(run_id))
    after = await store.append(KEY, new_turn("after"))
    history = await store.history(KEY)
    assert seqs(history) == list(range(1, len(history.turns) + 1))
    assert sorted(t.run_id for t in history.turns) == sorted([*outcomes, "after"])
    assert history.turns[-1] == after
    for turn in history.turns:
        assert turn.messages == tuple(messages(turn.run_id))
        outcome = outcomes.get(turn.run_id)
        if isinstance(outcome, StoredTurn):
            assert outcome == turn


async def test_redis_store_rides_out_a_server_restart(own_redis: OwnRedis, unique: str) -> None:
    store = RedisConversationStore(own_redis.url, prefix=unique)
    outcomes = await appended_before(store)

    def restart() -> None:
        own_redis.kill()
        time.sleep(0.6)  # longer than the client's retries: some appends must fail
        own_redis.start()

    outcomes.update(await append_through(store, restart))
    await check_after_restart(store, outcomes)
    await store.aclose()


async def test_postgres_store_rides_out_a_server_restart(
    own_postgres: OwnPostgres, unique: str
) -> None:
    store = PostgresConversationStore(own_postgres.url, table_prefix=f"{unique}_", max_size=4)
    outcomes = await appended_before(store)

    def restart() -> None:
        own_postgres.stop("immediate")  # as in a crash: in-flight transactions die
        time.sleep(0.6)  # longer than the store's one retry: some appends must fail
        own_postgres.start()

    outcomes.update(await append_through(store, restart))
    await check_after_restart(store, outcomes)
    await store.aclose()
