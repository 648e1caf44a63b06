"""The ``VectorStore`` contract, on every embedded store, plus what is FAISS's and
Qdrant's own (snapshots, tombstones, compaction, local-mode directories).

``VectorStoreContract`` is the contract itself: a class of tests over a ``store``
fixture.  Here it runs on FAISS (in memory and with a snapshot directory) and
Qdrant local mode (in memory and on disk); the pgvector and Chroma integration
tests run the same class against their servers.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from astromesh_ray.core.memory.base import VectorItem, VectorStore
from astromesh_ray.core.memory.semantic.faiss import EXACT_LIMIT, FaissStats, FaissVectorStore
from astromesh_ray.core.memory.semantic.faiss_collection import SUFFIX, normalise, read_snapshot
from astromesh_ray.core.memory.semantic.qdrant import QdrantVectorStore, point_id
from astromesh_ray.errors import ConfigError, InvalidRequest, MemoryUnavailable

# Four unit-ish directions in 4-d: easy to reason about scores.
E1 = [1.0, 0.0, 0.0, 0.0]
E2 = [0.0, 1.0, 0.0, 0.0]
NEAR_E1 = [0.9, 0.1, 0.0, 0.0]
MIDDLE = [1.0, 1.0, 0.0, 0.0]
OPPOSITE = [-1.0, 0.0, 0.0, 0.0]


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def item(id_: str, vector: list[float], **metadata: Any) -> VectorItem:
    return VectorItem(id_, vector, f"text of {id_}", metadata)


SAMPLE = [
    item("e1", E1, namespace="n", agent="a", session="s1", rank=1, pinned=True),
    item("near", NEAR_E1, namespace="n", agent="a", session="s1", rank=2, pinned=False),
    item("mid", MIDDLE, namespace="n", agent="a", session="s2", rank=1.0, pinned=False),
    item("e2", E2, namespace="n", agent="b", session="s2", rank=3, pinned=True),
    item("opp", OPPOSITE, namespace="n", agent="a", session="s3", rank=4),
]


class VectorStoreContract:
    """What every ``VectorStore`` promises (core/memory/base.py)."""

    async def test_search_ranks_by_cosine_similarity_best_first(self, store: VectorStore) -> None:
        assert isinstance(store, VectorStore)
        await store.upsert("docs", SAMPLE)
        hits = await store.search("docs", E1, k=3)
        assert [h.id for h in hits] == ["e1", "near", "mid"]
        for hit, vector in zip(hits, [E1, NEAR_E1, MIDDLE], strict=True):
            assert hit.score == pytest.approx(cosine(E1, vector), abs=1e-5)
        assert hits[0].text == "text of e1"
        assert hits[0].metadata == {
            "namespace": "n",
            "agent": "a",
            "session": "s1",
            "rank": 1,
            "pinned": True,
        }
        # Length does not matter, only direction.
        scaled = await store.search("docs", [5.0, 0.0, 0.0, 0.0], k=1)
        assert scaled[0].id == "e1" and scaled[0].score == pytest.approx(1.0, abs=1e-5)
        everything = await store.search("docs", E1, k=50)
        assert [h.id for h in everything] == ["e1", "near", "mid", "e2", "opp"]
        assert everything[-1].score == pytest.approx(-1.0, abs=1e-5)

    async def test_upsert_replaces_items_with_the_same_id(self, store: VectorStore) -> None:
        await store.upsert("docs", SAMPLE)
        await store.upsert("docs", [VectorItem("e1", E2, "moved", {"session": "s9"})])
        assert await store.count("docs") == len(SAMPLE)
        hits = await store.search("docs", E2, k=2)
        assert {h.id for h in hits} == {"e1", "e2"}
        moved = next(h for h in hits if h.id == "e1")
        assert moved.text == "moved" and moved.metadata == {"session": "s9"}
        assert await store.count("docs", {"session": "s1"}) == 1  # only "near" is left there

    async def test_an_id_given_twice_in_one_batch_keeps_the_last(self, store: VectorStore) -> None:
        await store.upsert("docs", [VectorItem("x", E1, "first"), VectorItem("x", E2, "second")])
        assert await store.count("docs") == 1
        [hit] = await store.search("docs", E2, k=5)
        assert (hit.id, hit.text) == ("x", "second")

    async def test_collections_are_apart(self, store: VectorStore) -> None:
        await store.upsert("docs", SAMPLE)
        await store.upsert("other", [item("z", E2)])
        assert [h.id for h in await store.search("other", E1, k=5)] == ["z"]
        assert await store.count("docs") == len(SAMPLE)
        assert await store.count("other") == 1

    async def test_a_missing_collection_finds_nothing(self, store: VectorStore) -> None:
        assert await store.search("nowhere", E1, k=3) == []
        assert await store.count("nowhere") == 0
        assert await store.count("nowhere", {"agent": "a"}) == 0
        assert await store.delete("nowhere", ids=["x"]) == 0
        assert await store.delete("nowhere", where={"agent": "a"}) == 0

    async def test_another_dimension_is_an_invalid_request(self, store: VectorStore) -> None:
        await store.upsert("docs", SAMPLE)
        with pytest.raises(InvalidRequest, match="dimension"):
            await store.upsert("docs", [item("three", [1.0, 2.0, 3.0])])
        with pytest.raises(InvalidRequest, match="dimension"):
            await store.search("docs", [1.0, 2.0, 3.0], k=1)
        with pytest.raises(InvalidRequest, match="dimension"):
            # Mixed in one batch: nothing of it is stored.
            await store.upsert("docs", [item("ok", E1), item("bad", [1.0, 2.0])])
        assert await store.count("docs") == len(SAMPLE)
        # Each collection has its own dimension.
        await store.upsert("small", [item("three", [1.0, 2.0, 3.0])])
        assert await store.count("small") == 1

    async def test_where_is_an_equality_filter_on_every_key(self, store: VectorStore) -> None:
        await store.upsert("docs", SAMPLE)
        hits = await store.search("docs", E1, k=10, where={"session": "s1"})
        assert [h.id for h in hits] == ["e1", "near"]
        hits = await store.search("docs", E1, k=10, where={"agent": "a", "session": "s2"})
        assert [h.id for h in hits] == ["mid"]
        assert await store.search("docs", E1, k=10, where={"agent": "zzz"}) == []
        assert await store.search("docs", E1, k=10, where={"unknown_key": "a"}) == []
        # Numbers compare by value (1 == 1.0); booleans are not numbers.
        assert {h.id for h in await store.search("docs", E1, k=10, where={"rank": 1})} == {
            "e1",
            "mid",
        }
        assert {h.id for h in await store.search("docs", E1, k=10, where={"rank": 1.0})} == {
            "e1",
            "mid",
        }
        assert {h.id for h in await store.search("docs", E1, k=10, where={"pinned": True})} == {
            "e1",
            "e2",
        }
        assert await store.count("docs", {"namespace": "n"}) == 5
        assert await store.count("docs", {"agent": "a"}) == 4
        assert await store.count("docs", {"agent": "a", "pinned": False}) == 2
        assert await store.count("docs", {}) == 5  # an empty filter matches everything

    async def test_k_and_threshold_bound_the_results(self, store: VectorStore) -> None:
        await store.upsert("docs", SAMPLE)
        assert len(await store.search("docs", E1, k=2)) == 2
        threshold = cosine(E1, MIDDLE) - 1e-4  # e1, near and mid pass; e2 and opp do not
        hits = await store.search("docs", E1, k=10, threshold=threshold)
        assert [h.id for h in hits] == ["e1", "near", "mid"]
        assert all(h.score >= threshold for h in hits)
        hits = await store.search("docs", E1, k=10, threshold=0.99, where={"session": "s2"})
        assert hits == []

    async def test_delete_by_ids_where_or_both(self, store: VectorStore) -> None:
        await store.upsert("docs", SAMPLE)
        assert await store.delete("docs", ids=["e1", "missing"]) == 1
        assert await store.count("docs") == 4
        assert "e1" not in {h.id for h in await store.search("docs", E1, k=10)}
        # Both: only the ids that also match (near is in s1, mid is not).
        assert await store.delete("docs", ids=["near", "mid"], where={"session": "s1"}) == 1
        assert {h.id for h in await store.search("docs", E1, k=10)} == {"mid", "e2", "opp"}
        assert await store.delete("docs", where={"agent": "a"}) == 2
        assert [h.id for h in await store.search("docs", E1, k=10)] == ["e2"]
        assert await store.delete("docs", ids=[]) == 0
        assert await store.delete("docs", ids=["e1"]) == 0  # already gone
        with pytest.raises(InvalidRequest, match="ids or a non-empty where"):
            await store.delete("docs")
        with pytest.raises(InvalidRequest):
            await store.delete("docs", where={})
        # Deleted ids can come back.
        await store.upsert("docs", [item("e1", E1)])
        assert [h.id for h in await store.search("docs", E1, k=1)] == ["e1"]

    async def test_bad_arguments_are_invalid_requests(self, store: VectorStore) -> None:
        bad_calls: list[Callable[[], Any]] = [
            lambda: store.upsert("bad name!", [item("a", E1)]),
            lambda: store.upsert("", [item("a", E1)]),
            lambda: store.upsert("docs", [item("zero", [0.0, 0.0, 0.0, 0.0])]),
            lambda: store.upsert("docs", [item("nan", [math.nan, 1.0, 0.0, 0.0])]),
            lambda: store.upsert("docs", [item("", E1)]),
            lambda: store.upsert("docs", [VectorItem("a", [], "empty")]),
            lambda: store.upsert("docs", [VectorItem("a", E1, "t", {"bad.key": 1})]),
            lambda: store.upsert("docs", [VectorItem("a", E1, "t", {"k": [1, 2]})]),  # type: ignore[dict-item]
            lambda: store.search("docs", E1, k=0),
            lambda: store.search("docs", E1, k=1, threshold=math.inf),
            lambda: store.search("docs", E1, k=1, where={"k": None}),  # type: ignore[dict-item]
            lambda: store.search("bad/name", E1, k=1),
            lambda: store.delete("docs", ids="e1"),
        ]
        for call in bad_calls:
            with pytest.raises(InvalidRequest):
                await call()
        assert await store.count("docs") == 0

    async def test_text_and_metadata_round_trip(self, store: VectorStore) -> None:
        meta: dict[str, Any] = {
            "s": "ünïcødé ✓",
            "i": 7,
            "f": 0.25,
            "t": True,
            "no": False,
            "dash-key_1": "x",
        }
        await store.upsert("docs", [VectorItem("id with spaces/ü", E1, "Grüße, 世界", meta)])
        [hit] = await store.search("docs", E1, k=1)
        assert (hit.id, hit.text) == ("id with spaces/ü", "Grüße, 世界")
        assert hit.metadata == meta
        assert isinstance(hit.metadata["i"], int) and isinstance(hit.metadata["t"], bool)
        assert await store.count("docs", {"s": "ünïcødé ✓", "f": 0.25}) == 1

    async def test_nul_and_lone_surrogates_are_stored_as_replacement_characters(
        self, store: VectorStore
    ) -> None:
        # What PDF extraction and broken JSON produce; PostgreSQL cannot store NUL and
        # UTF-8 cannot encode a surrogate: every store keeps U+FFFD instead.
        text = "pdf page\x00text \ud83d end"
        meta: dict[str, Any] = {
            "source": "a\x00b",
            "half": "\ud83d",
            "pair": "\ud83d\ude00",
            "n": 1,
        }
        await store.upsert("docs", [VectorItem("odd", E1, text, meta), item("plain", E2)])
        [hit] = await store.search("docs", E1, k=1)
        assert (hit.id, hit.text) == ("odd", "pdf page\ufffdtext \ufffd end")
        assert hit.metadata == {
            "source": "a\ufffdb",
            "half": "\ufffd",
            "pair": "\U0001f600",
            "n": 1,
        }
        # ``where`` values are cleaned alike, so they find what was stored.
        assert await store.count("docs", {"source": "a\x00b"}) == 1
        assert await store.count("docs", {"source": "a\ufffdb", "half": "\ud83d"}) == 1
        hits = await store.search("docs", E2, k=5, where={"pair": "\U0001f600"})
        assert [h.id for h in hits] == ["odd"]


@pytest.fixture(params=["faiss-memory", "faiss-directory", "qdrant-memory", "qdrant-path"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    made: VectorStore
    if request.param == "faiss-memory":
        made = FaissVectorStore()
    elif request.param == "faiss-directory":
        made = FaissVectorStore(tmp_path / "faiss")
    elif request.param == "qdrant-memory":
        made = QdrantVectorStore()
    else:
        made = QdrantVectorStore(path=str(tmp_path / "qdrant"))
    yield made
    await made.aclose()


class TestEmbeddedStores(VectorStoreContract):
    """The contract on FAISS and Qdrant local mode."""


# --------------------------------------------------------------------------- FAISS


def random_items(n: int, dim: int, seed: int = 7, start: int = 0) -> list[VectorItem]:
    rng = random.Random(seed)
    return [
        VectorItem(
            f"v{i}",
            [rng.gauss(0, 1) for _ in range(dim)],
            f"item {i}",
            {"parity": "even" if i % 2 == 0 else "odd", "i": i},
        )
        for i in range(start, start + n)
    ]


def brute_force(items: list[VectorItem], query: list[float], k: int) -> list[str]:
    matrix = np.array([it.vector for it in items], dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    q = np.array(query) / np.linalg.norm(query)
    order = np.argsort(-(matrix @ q), kind="stable")[:k]
    return [items[i].id for i in order]


async def test_faiss_snapshot_is_reloaded_by_a_new_store(tmp_path: Path) -> None:
    first = FaissVectorStore(tmp_path)
    await first.upsert("docs", SAMPLE)
    await first.upsert("other", random_items(50, 4))
    await first.delete("docs", ids=["near"])
    before = await first.search("docs", E1, k=5)
    other_before = await first.search("other", E2, k=10, where={"parity": "odd"})
    await first.aclose()

    second = FaissVectorStore(tmp_path)
    assert await second.search("docs", E1, k=5) == before
    assert await second.search("other", E2, k=10, where={"parity": "odd"}) == other_before
    assert await second.count("docs") == 4
    assert await second.count("other", {"parity": "even"}) == 25
    with pytest.raises(InvalidRequest, match="dimension"):  # the dimension came back too
        await second.upsert("docs", [item("x", [1.0, 2.0])])
    await second.aclose()


async def test_faiss_snapshots_are_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FaissVectorStore(tmp_path)
    await store.upsert("docs", SAMPLE)

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", refuse)
    with pytest.raises(MemoryUnavailable, match="snapshot") as failed:
        await store.upsert("docs", [item("new", E2)])
    assert failed.value.details["retryable"] is True
    # Nothing the caller was told failed stays stored: back to the last snapshot.
    assert await store.count("docs") == len(SAMPLE)
    with pytest.raises(MemoryUnavailable):
        await store.upsert("fresh", [item("a", E1)])
    assert await store.count("fresh") == 0
    monkeypatch.undo()
    # No temporary file is left behind; a stale one (a crash mid-write) is ignored.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.faiss-snapshot"]
    (tmp_path / ".docs.faiss-snapshot.999.tmp").write_bytes(b"torn")
    await store.aclose()
    reopened = FaissVectorStore(tmp_path)
    assert await reopened.count("docs") == len(SAMPLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.faiss-snapshot"]
    await reopened.aclose()


async def test_faiss_refuses_a_corrupt_snapshot_naming_it(tmp_path: Path) -> None:
    (tmp_path / "docs.faiss-snapshot").write_bytes(b"not a snapshot")
    with pytest.raises(MemoryUnavailable, match=r"docs\.faiss-snapshot") as failed:
        FaissVectorStore(tmp_path)
    assert failed.value.hint is not None and "move the file away" in failed.value.hint


async def test_faiss_tombstones_are_skipped_then_compacted(tmp_path: Path) -> None:
    dim = 8
    items = random_items(3000, dim)  # above EXACT_LIMIT: searches go through HNSW
    assert len(items) > EXACT_LIMIT
    store = FaissVectorStore(tmp_path, compact_fraction=0.25)
    await store.upsert("big", items)
    current = {it.id: it for it in items}
    others = {it.id: it for it in random_items(3000, dim, seed=8)}  # same ids, new vectors

    async def replace(ids: list[str]) -> None:
        moved = [VectorItem(i, others[i].vector, f"moved {i}", current[i].metadata) for i in ids]
        await store.upsert("big", moved)
        current.update((it.id, it) for it in moved)

    # Replacing 600 items leaves 600 tombstones: 600 of 3600, below the fraction.
    await replace([f"v{i}" for i in range(0, 3000, 5)])
    stats = await store.stats("big")
    assert stats is not None and (stats.live, stats.tombstones, stats.dim) == (3000, 600, dim)
    live = list(current.values())
    rng = random.Random(3)
    overlap = 0
    for _ in range(20):
        query = [rng.gauss(0, 1) for _ in range(dim)]
        hits = await store.search("big", query, k=10)
        assert len({h.id for h in hits}) == 10
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for hit in hits:  # the current vector and text of each, never a replaced one
            assert hit.score == pytest.approx(cosine(query, list(current[hit.id].vector)), abs=1e-4)
            assert hit.text == current[hit.id].text
        overlap += len({h.id for h in hits} & set(brute_force(live, query, 10)))
    assert overlap / 200 >= 0.9  # HNSW is approximate; at 8 dimensions, barely
    # Past the fraction (1200 of 4200): rebuilt from the live items, none lost.
    await replace([f"v{i}" for i in range(1, 3000, 5)])
    stats = await store.stats("big")
    assert stats is not None and (stats.live, stats.tombstones) == (3000, 0)
    # A delete rebuilds at once, whatever the fraction.
    doomed = {f"v{i}" for i in range(2, 3000, 5)} | {f"v{i}" for i in range(3, 3000, 5)}
    assert await store.delete("big", ids=sorted(doomed)) == 1200
    stats = await store.stats("big")
    assert stats is not None and (stats.live, stats.tombstones) == (1800, 0)
    live = [it for it in current.values() if it.id not in doomed]
    query = [rng.gauss(0, 1) for _ in range(dim)]
    expected = brute_force(live, query, 5)
    hits = await store.search("big", query, k=5)  # 1800 live: exact
    assert [h.id for h in hits] == expected
    assert hits[0].text == current[expected[0]].text
    await store.aclose()
    # The compacted collection is what the snapshot holds.
    reopened = FaissVectorStore(tmp_path)
    assert [h.id for h in await reopened.search("big", query, k=5)] == expected
    stats = await reopened.stats("big")
    assert stats is not None and (stats.live, stats.tombstones) == (1800, 0)
    await reopened.aclose()


async def test_faiss_delete_erases_the_vectors_from_memory_and_the_snapshot(
    tmp_path: Path,
) -> None:
    dim = 16
    items = random_items(200, dim, seed=21)
    store = FaissVectorStore(tmp_path)  # compact_fraction 0.25: one delete is far below it
    await store.upsert("docs", items)
    # A replacement's tombstone goes too: its old vector is erased with the rest.
    replaced = items[0]
    await store.upsert("docs", [VectorItem(replaced.id, E1 * 4, "new", replaced.metadata)])
    assert await store.delete("docs", where={"parity": "odd"}) == 100
    assert await store.stats("docs") == FaissStats(100, 0, dim)
    assert await store.delete("docs", ids=["v2"]) == 1  # one by id: compacted as well
    assert await store.stats("docs") == FaissStats(99, 0, dim)
    await store.aclose()

    path = tmp_path / f"docs{SUFFIX}"
    raw = path.read_bytes()
    snapshot = read_snapshot(path, 200)
    assert snapshot.index.ntotal == 99 and snapshot.tombstones == 0
    stored = snapshot.vectors()
    erased = [it for it in items if it.metadata["parity"] == "odd" or it.id in ("v0", "v2")]
    kept = [it for it in items if it not in erased]
    for it in erased:
        vector = normalise([it.vector])[0]
        assert not np.isclose(stored, vector, atol=1e-6).all(axis=1).any(), it.id
        assert vector.tobytes() not in raw, it.id
        assert f'"{it.id}"'.encode() not in raw or it.id == "v0", it.id
    for it in kept:  # what was not deleted is all there, unchanged
        assert normalise([it.vector])[0].tobytes() in raw
    assert normalise([E1 * 4])[0].tobytes() in raw  # v0's replacement stays


async def test_faiss_filtered_search_through_hnsw_finds_k_matches() -> None:
    dim = 8
    items = random_items(5000, dim, seed=11)
    store = FaissVectorStore()
    await store.upsert("big", items)
    evens = [it for it in items if it.metadata["parity"] == "even"]  # 2500: through HNSW
    assert len(evens) > EXACT_LIMIT
    rng = random.Random(5)
    overlap = 0
    for _ in range(20):
        query = [rng.gauss(0, 1) for _ in range(dim)]
        hits = await store.search("big", query, k=10, where={"parity": "even"})
        assert len(hits) == 10 and all(h.metadata["parity"] == "even" for h in hits)
        overlap += len({h.id for h in hits} & set(brute_force(evens, query, 10)))
    assert overlap / 200 >= 0.9
    # A selective filter is searched exactly, and finds k even among thousands.
    query = [rng.gauss(0, 1) for _ in range(dim)]
    wanted = [it for it in items if it.metadata["i"] in range(0, 5000, 250)]
    ids = {it.id for it in wanted}
    await store.upsert(
        "big",
        [VectorItem(it.id, it.vector, it.text, {**it.metadata, "tag": "rare"}) for it in wanted],
    )
    hits = await store.search("big", query, k=10, where={"tag": "rare"})
    assert [h.id for h in hits] == brute_force(wanted, query, 10) and {h.id for h in hits} <= ids
    await store.aclose()


async def test_faiss_rejects_bad_construction_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        FaissVectorStore(m=0)
    with pytest.raises(ConfigError):
        FaissVectorStore(compact_fraction=1.5)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="snapshot directory"):
        FaissVectorStore(blocker / "sub")


async def test_a_closed_faiss_store_says_so() -> None:
    store = FaissVectorStore()
    await store.aclose()
    with pytest.raises(MemoryUnavailable, match="closed"):
        await store.count("docs")


# --------------------------------------------------------------------------- Qdrant


async def test_qdrant_local_mode_persists_under_its_path(tmp_path: Path) -> None:
    first = QdrantVectorStore(path=str(tmp_path))
    await first.upsert("docs", SAMPLE)
    # One owner per directory: a second client is refused while the first is open.
    with pytest.raises(ConfigError, match="one owner"):
        QdrantVectorStore(path=str(tmp_path))
    await first.aclose()
    second = QdrantVectorStore(path=str(tmp_path))
    assert [h.id for h in await second.search("docs", E1, k=2)] == ["e1", "near"]
    with pytest.raises(InvalidRequest, match="dimension"):
        await second.upsert("docs", [item("x", [1.0, 2.0])])
    await second.aclose()


@pytest.mark.parametrize("local", ["memory", "path"])
async def test_qdrant_local_mode_keeps_the_event_loop_running(tmp_path: Path, local: str) -> None:
    # Local mode is NumPy and SQLite work: on the store's thread, not in the loop.
    store = QdrantVectorStore() if local == "memory" else QdrantVectorStore(path=str(tmp_path))
    rows = np.random.default_rng(1).standard_normal((5000, 384)).tolist()
    items = [VectorItem(f"v{i}", row, f"item {i}") for i, row in enumerate(rows)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0.05)
        before = ticks
        await store.upsert("big", items)
        during = ticks - before
    finally:
        task.cancel()
    assert during >= 5, f"the event loop ticked {during} times during the upsert"
    assert await store.count("big") == 5000
    [hit] = await store.search("big", rows[7], k=1)
    assert (hit.id, hit.text) == ("v7", "item 7")
    await store.aclose()
    with pytest.raises(MemoryUnavailable, match="closed"):
        await store.count("big")


def test_qdrant_point_ids_are_stable_uuids() -> None:
    assert point_id("a") == point_id("a") != point_id("b")
    assert len(point_id("any string / ü")) == 36


def test_qdrant_refuses_contradictory_arguments() -> None:
    with pytest.raises(ConfigError):
        QdrantVectorStore(url="http://127.0.0.1:6333", path="/tmp/x")
    with pytest.raises(ConfigError):
        QdrantVectorStore(api_key_env="QDRANT_KEY")


# --------------------------------------------------------------------------- Chroma


def test_chroma_without_its_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from astromesh_ray.core.memory.semantic.chroma import ChromaVectorStore

    monkeypatch.setitem(sys.modules, "chromadb", None)  # as if not installed
    with pytest.raises(ConfigError) as failed:
        ChromaVectorStore()
    assert failed.value.hint == "pip install 'astromesh-ray[chroma]'"
