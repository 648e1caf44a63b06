"""``ActorVectorStore`` over FAISS on the real local Ray cluster: one owner actor per
store, shared by every store object naming it, reloading its snapshot when it is
restarted, with errors re-raised as their own type."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from astromesh_ray.core.memory.base import VectorStore
from astromesh_ray.errors import InvalidRequest, MemoryUnavailable
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE
from astromesh_ray.serve.vectors import ActorVectorStore
from tests.unit.core.memory.test_vector_stores import E1, E2, SAMPLE, item

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def actors(serve_url: str) -> Iterator[list[str]]:
    """Names of the actors a test made; killed for good afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(ValueError):  # never created, or already gone
            ray.kill(ray.get_actor(name, namespace=ACTOR_NAMESPACE), no_restart=True)


def faiss_store(directory: Path, actors: list[str]) -> ActorVectorStore:
    store = ActorVectorStore("faiss", {"directory": str(directory)})
    actors.append(store.actor_name)
    return store


def owner(store: ActorVectorStore) -> Any:
    return ray.get_actor(store.actor_name, namespace=ACTOR_NAMESPACE)


async def pid_of(store: ActorVectorStore) -> str:
    where: dict[str, str] = await owner(store).location.remote()
    return where["pid"]


async def until_back(store: ActorVectorStore, collection: str) -> int:
    """The count, once the actor answers again (it is restarting meanwhile)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return await store.count(collection)
        except MemoryUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_restarted_actor_reloads_its_snapshot(tmp_path: Path, actors: list[str]) -> None:
    store = faiss_store(tmp_path / "faiss", actors)
    assert isinstance(store, VectorStore)
    await store.upsert("docs", SAMPLE)
    await store.delete("docs", ids=["near"])
    before = await store.search("docs", E1, k=10, where={"agent": "a"})
    first_pid = await pid_of(store)

    ray.kill(owner(store), no_restart=False)  # the process dies; Ray restarts it
    assert await until_back(store, "docs") == len(SAMPLE) - 1
    assert await pid_of(store) != first_pid  # really a new incarnation
    assert await store.search("docs", E1, k=10, where={"agent": "a"}) == before
    # And it keeps working (and persisting) after the restart.
    await store.upsert("docs", [item("late", E2)])
    assert await store.count("docs") == len(SAMPLE)
    await store.aclose()


async def test_qdrant_local_mode_in_its_actor_survives_a_restart(
    tmp_path: Path, actors: list[str]
) -> None:
    store = ActorVectorStore("qdrant", {"path": str(tmp_path / "qdrant")})
    actors.append(store.actor_name)
    await store.upsert("docs", SAMPLE)
    ray.kill(owner(store), no_restart=False)
    # The dead process's lock on the directory went with it: the new one opens it.
    assert await until_back(store, "docs") == len(SAMPLE)
    assert [h.id for h in await store.search("docs", E1, k=2)] == ["e1", "near"]


async def test_store_objects_naming_one_store_share_one_actor(
    tmp_path: Path, actors: list[str]
) -> None:
    one = faiss_store(tmp_path / "shared", actors)
    two = faiss_store(tmp_path / "shared", actors)
    elsewhere = faiss_store(tmp_path / "elsewhere", actors)
    assert one.actor_name == two.actor_name != elsewhere.actor_name
    await one.upsert("docs", SAMPLE)
    assert await two.count("docs") == len(SAMPLE)
    assert [h.id for h in await two.search("docs", E1, k=1)] == ["e1"]
    assert await elsewhere.count("docs") == 0
    assert await pid_of(one) == await pid_of(two) != await pid_of(elsewhere)
    # Concurrent writers through both objects: the owner serialises them.
    await asyncio.gather(
        *(one.upsert("many", [item(f"a{i}", E1)]) for i in range(10)),
        *(two.upsert("many", [item(f"b{i}", E2)]) for i in range(10)),
    )
    assert await one.count("many") == 20


async def test_errors_cross_the_actor_boundary_as_their_type(
    tmp_path: Path, actors: list[str]
) -> None:
    store = faiss_store(tmp_path / "faiss", actors)
    await store.upsert("docs", SAMPLE)
    with pytest.raises(InvalidRequest, match="dimension") as failed:
        await store.upsert("docs", [item("x", [1.0, 2.0])])
    assert failed.value.hint == "use one embedding model per collection"
    with pytest.raises(InvalidRequest, match="k must be"):
        await store.search("docs", E1, k=0)
    with pytest.raises(InvalidRequest, match="ids or a non-empty where"):
        await store.delete("docs")
    # A store that cannot be built says why, with its own error, on every call.
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "docs.faiss-snapshot").write_bytes(b"garbage")
    broken = faiss_store(broken_dir, actors)
    with pytest.raises(MemoryUnavailable, match="cannot load the snapshot"):
        await broken.count("docs")


async def test_an_actor_killed_for_good_is_created_again(tmp_path: Path, actors: list[str]) -> None:
    store = faiss_store(tmp_path / "faiss", actors)
    await store.upsert("docs", SAMPLE)
    ray.kill(owner(store), no_restart=True)
    # The handle it held is dead: said as MemoryUnavailable (retryable), then a new
    # owner is created from the same directory.
    assert await until_back(store, "docs") == len(SAMPLE)


def test_without_ray_it_is_memory_unavailable(tmp_path: Path) -> None:
    code = (
        "import asyncio\n"
        "from astromesh_ray.errors import MemoryUnavailable\n"
        "from astromesh_ray.serve.vectors import ActorVectorStore\n"
        f"store = ActorVectorStore('faiss', {{'directory': {str(tmp_path)!r}}})\n"
        "try:\n"
        "    asyncio.run(store.count('docs'))\n"
        "except MemoryUnavailable as exc:\n"
        "    print('unavailable:', exc.message)\n"
        "import ray\n"
        "print('initialized:', ray.is_initialized())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "unavailable: the faiss vector store lives in a Ray actor" in proc.stdout
    assert "initialized: False" in proc.stdout  # no private cluster was started


async def test_a_store_that_failed_to_build_is_built_again_once_it_can(
    tmp_path: Path, actors: list[str]
) -> None:
    from astromesh_ray.core.memory.semantic.qdrant import QdrantVectorStore
    from astromesh_ray.errors import ConfigError

    path = tmp_path / "qdrant"
    path.mkdir()
    holder = QdrantVectorStore(path=str(path))  # this process holds the directory's lock
    await holder.upsert("c", [item("a", E1)])
    store = ActorVectorStore("qdrant", {"path": str(path)})
    actors.append(store.actor_name)
    with pytest.raises(ConfigError):  # the actor cannot open what another process holds
        await store.count("c")
    await holder.aclose()  # the lock is released: a later call builds the store
    deadline = time.monotonic() + 30
    while True:
        try:
            assert await store.count("c") == 1
            break
        except ConfigError:
            assert time.monotonic() < deadline, "the actor never built its store again"
            await asyncio.sleep(0.5)
