"""RAG integration tests: the corpus on disk, pipelines on FAISS (a data directory
per test) and pgvector (the shared test database, one table per test, dropped
after), with the offline MiniLM embedder."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.memory.conftest import POSTGRES_URL
from tests.unit.core.rag.corpus import write_corpus


def pipeline_doc(name: str, store: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body = {
        "description": "Orbital Widget manuals, FAQ and support notes.",
        "chunking": {"strategy": "heading", "size": 400, "overlap": 40},
        "embedding": {"provider": "local", "batch_size": 16},
        "store": store,
        "top_k": 3,
        **spec,
    }
    return {
        "apiVersion": "astromesh/v1",
        "kind": "RAGPipeline",
        "metadata": {"name": name},
        "spec": body,
    }


def runtime_doc(data_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "astromesh/v1",
        "kind": "RuntimeConfig",
        "metadata": {"name": "ragtest"},
        "spec": {"memory": {"data_dir": str(data_dir), "postgres_url": POSTGRES_URL}},
    }


def write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


async def _drop(table: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
    finally:
        await conn.close()


@pytest.fixture
def pg_collection() -> Iterator[str]:
    """A pgvector collection no other test uses; its table is dropped after."""
    name = "rag_" + uuid.uuid4().hex[:10]
    yield name
    asyncio.run(_drop("astromesh_vectors_" + name))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """The corpus under tmp_path/docs."""
    return write_corpus(tmp_path)
