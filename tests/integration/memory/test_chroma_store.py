"""``ChromaVectorStore`` on a real (persistent, on-disk) Chroma: the ``VectorStore``
contract.

chromadb is the optional ``chroma`` extra, so these tests carry the ``chroma``
marker, which the default run deselects (``make test-chroma`` runs them).  Run
without chromadb installed they fail (ModuleNotFoundError), never skip.  The import
is in a fixture rather than at the top of the module so that the default run, which
imports every test module while collecting before it deselects, does not fail here.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.memory.base import VectorItem, VectorStore
from astromesh_ray.core.memory.semantic.chroma import ChromaVectorStore
from astromesh_ray.errors import InvalidRequest
from tests.unit.core.memory.test_vector_stores import E1, SAMPLE, VectorStoreContract

pytestmark = [pytest.mark.integration, pytest.mark.chroma]


@pytest.fixture(autouse=True)
def chromadb() -> Any:
    """The chromadb module: a test run without it fails loudly here."""
    return importlib.import_module("chromadb")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[VectorStore]:
    # A persistent client per test: in-memory clients of one process share their data.
    made = ChromaVectorStore(path=str(tmp_path / "chroma"))
    yield made
    await made.aclose()


class TestChromaContract(VectorStoreContract):
    """The contract on Chroma."""


async def test_chroma_persists_under_its_path(tmp_path: Path) -> None:
    first = ChromaVectorStore(path=str(tmp_path / "chroma"))
    await first.upsert("docs", SAMPLE)
    await first.aclose()
    second = ChromaVectorStore(path=str(tmp_path / "chroma"))
    assert [h.id for h in await second.search("docs", E1, k=2)] == ["e1", "near"]
    assert await second.count("docs", {"agent": "a"}) == 4
    await second.aclose()


async def test_chroma_refuses_names_it_cannot_take_as_invalid_requests(
    store: ChromaVectorStore,
) -> None:
    # Valid for the other stores, not for Chroma: 3 to 512 characters, a letter or
    # digit at both ends.  Refused by us, before Chroma sees them.
    for name in ["a", "ab", "docs-", "docs_", "a_"]:
        with pytest.raises(InvalidRequest, match="Chroma collection name"):
            await store.upsert(name, SAMPLE)
        with pytest.raises(InvalidRequest, match="Chroma collection name"):
            await store.search(name, E1, k=1)
        with pytest.raises(InvalidRequest, match="Chroma collection name"):
            await store.count(name)
        with pytest.raises(InvalidRequest, match="Chroma collection name"):
            await store.delete(name, ids=["e1"])
    for name in ["abc", "a-b", "x_1", "d" * 63]:
        await store.upsert(name, SAMPLE[:1])
        assert await store.count(name) == 1


async def test_chroma_reserves_its_marker_metadata_key(store: ChromaVectorStore) -> None:
    marker = {"_astromesh": True}
    with pytest.raises(InvalidRequest, match="reserved"):
        await store.upsert("docs", [VectorItem("a", E1, "t", {"agent": "a", **marker})])
    assert await store.count("docs") == 0
    await store.upsert("docs", [VectorItem("bare", E1, "no metadata")])
    with pytest.raises(InvalidRequest, match="reserved"):
        await store.search("docs", E1, k=1, where=marker)
    with pytest.raises(InvalidRequest, match="reserved"):
        await store.count("docs", marker)
    with pytest.raises(InvalidRequest, match="reserved"):
        await store.delete("docs", where=marker)
    [hit] = await store.search("docs", E1, k=1)
    assert hit.metadata == {}  # the marker is stored, never shown
