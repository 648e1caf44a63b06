"""The ``EpisodicLog`` contract on real PostgreSQL (``PostgresEpisodicLog``), plus
what only a server gives: schema creation racing across replicas, ``jsonb`` data,
surviving the server dropping our connections, and a server that is not there.

Each test has its own table prefix (``unique``) and drops its tables after.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from astromesh_ray.core.memory.base import EpisodicLog
from astromesh_ray.core.memory.episodic.postgres import PostgresEpisodicLog
from astromesh_ray.errors import ConfigError, MemoryUnavailable
from tests.unit.core.memory.test_episodic_sqlite import (
    EpisodicBackend,
    EpisodicLogContract,
    ep,
    names,
    q,
)

pytestmark = pytest.mark.integration


class PostgresBackend(EpisodicBackend):
    refused = asyncpg.exceptions.RaiseError  # RAISE EXCEPTION in the trigger

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def open(self) -> PostgresEpisodicLog:
        return PostgresEpisodicLog(self.url, table_prefix=self.prefix)

    async def poison(self, log: EpisodicLog) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(
                f"""
                CREATE FUNCTION {self.prefix}poison() RETURNS trigger AS $$
                BEGIN
                    IF NEW.data::text LIKE '%poison%' THEN RAISE EXCEPTION 'poisoned'; END IF;
                    RETURN NEW;
                END $$ LANGUAGE plpgsql;
                CREATE TRIGGER {self.prefix}poison BEFORE INSERT ON {self.prefix}episodes
                    FOR EACH ROW EXECUTE FUNCTION {self.prefix}poison();
                """
            )
        finally:
            await conn.close()


@pytest.fixture
async def backend(postgres_url: str, unique: str) -> AsyncIterator[PostgresBackend]:
    yield PostgresBackend(postgres_url, unique)
    await _drop(postgres_url, unique)


async def _drop(url: str, prefix: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            f"DROP TABLE IF EXISTS {prefix}episodes CASCADE; "
            f"DROP FUNCTION IF EXISTS {prefix}poison()"
        )
    finally:
        await conn.close()


class TestPostgresEpisodicLog(EpisodicLogContract):
    pass


async def test_replicas_creating_the_table_at_once_all_succeed(
    backend: PostgresBackend,
) -> None:
    logs = [backend.open() for _ in range(4)]
    try:
        await asyncio.gather(*(log.append([ep(ts=float(i), n=i)]) for i, log in enumerate(logs)))
        assert names(await logs[0].query(q())) == [0, 1, 2, 3]
    finally:
        for log in logs:
            await log.aclose()


async def test_data_is_jsonb_and_indexed(backend: PostgresBackend) -> None:
    log = backend.open()
    try:
        await log.append([ep(ts=1.0, n="a", data={"tokens": 12})])
    finally:
        await log.aclose()
    conn = await asyncpg.connect(backend.url)
    try:
        kind = await conn.fetchval(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = $1 AND column_name = 'data'",
            f"{backend.prefix}episodes",
        )
        tokens = await conn.fetchval(f"SELECT data->>'tokens' FROM {backend.prefix}episodes")
        indexes = {
            row["indexdef"].split(" USING btree ")[1]
            for row in await conn.fetch(
                "SELECT indexdef FROM pg_indexes WHERE tablename = $1",
                f"{backend.prefix}episodes",
            )
        }
    finally:
        await conn.close()
    assert kind == "jsonb"
    assert tokens == "12"
    assert {
        "(namespace, agent, ts, id)",
        "(namespace, agent, session, ts, id)",
        "(namespace, agent, type, ts)",
        "(run_id)",
    } <= indexes


async def test_calls_after_the_server_dropped_our_connections_succeed(
    backend: PostgresBackend,
) -> None:
    """What a server restart does to a pool: every connection it holds is terminated
    (``pg_terminate_backend`` is what shutdown does to each backend)."""
    log = PostgresEpisodicLog(backend.url, table_prefix=backend.prefix, min_size=3, max_size=3)
    try:
        await log.append([ep(ts=1.0, n="before")])
        for n, call in enumerate(("append", "query", "delete", "append")):
            killed = await _terminate_backends_of(backend)
            assert killed >= 1
            if call == "append":
                await log.append([ep(ts=2.0 + n, n=f"after-{n}")])
            elif call == "query":
                assert names(await log.query(q()))[:2] == ["before", "after-0"]
            else:
                assert await log.delete_session("default", "support", "nobody") == 0
        # Appends retried after a lost connection are stored once.
        assert names(await log.query(q())) == ["before", "after-0", "after-3"]
    finally:
        await log.aclose()


async def _terminate_backends_of(backend: PostgresBackend) -> int:
    """Terminate every connection of this test's log (named after its table)."""
    conn = await asyncpg.connect(backend.url)
    try:
        return len(
            await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1",
                f"astromesh:{backend.prefix}episodes",
            )
        )
    finally:
        await conn.close()


async def test_a_server_that_is_not_there_is_unavailable_without_leaking_the_password() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = PostgresEpisodicLog(f"postgresql://app:hunter2-secret@127.0.0.1:{port}/db", timeout_s=2)
    for call in (log.append([ep(ts=1.0)]), log.query(q())):
        with pytest.raises(MemoryUnavailable) as caught:
            await call
        assert caught.value.details == {"backend": "postgres", "retryable": True}
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert "hunter2-secret" not in str(caught.value)
    await log.aclose()


async def test_a_database_that_does_not_exist_is_unavailable_and_not_retryable(
    postgres_url: str, unique: str
) -> None:
    url = postgres_url.rsplit("/", 1)[0] + f"/{unique}_missing"
    log = PostgresEpisodicLog(url, table_prefix=unique)
    with pytest.raises(MemoryUnavailable) as caught:
        await log.query(q())
    assert caught.value.details["retryable"] is False
    assert "does not exist" in str(caught.value)
    await log.aclose()


def test_bad_settings_are_config_errors() -> None:
    url = "postgresql://postgres@127.0.0.1/x"
    with pytest.raises(ConfigError, match="table_prefix"):
        PostgresEpisodicLog(url, table_prefix="Bad-Prefix")
    with pytest.raises(ConfigError, match="table_prefix"):
        PostgresEpisodicLog(url, table_prefix="x" * 41)
    with pytest.raises(ConfigError, match="pool sizes"):
        PostgresEpisodicLog(url, min_size=3, max_size=2)
