"""Real memory servers: Redis and PostgreSQL with pgvector, made ready by
``scripts/test-services.sh`` (``make test`` runs it first).

Each test gets its own key prefix / table prefix, so tests never see each other's
data and leave nothing behind that a later run could trip on.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.memory.servers import OwnPostgres, OwnRedis

REDIS_URL = os.environ.get("ASTROMESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "ASTROMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/astromesh_test"
)


@pytest.fixture
def redis_url() -> str:
    """URL of the shared Redis server."""
    return REDIS_URL


@pytest.fixture
def postgres_url() -> str:
    """URL of the shared PostgreSQL test database (pgvector created in it)."""
    return POSTGRES_URL


@pytest.fixture
def unique() -> str:
    """A short name no other test uses: a prefix for keys, tables and collections."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    cluster = OwnPostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
        cluster.stop("immediate")
    finally:
        cluster.remove()
