"""What the RAG unit tests share: a pipeline spec, and a pipeline on a FAISS store
in a temporary directory with the deterministic bag-of-words embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astromesh_ray.core.memory.factory import MemoryDefaults
from astromesh_ray.core.rag.pipeline import RagPipeline
from astromesh_ray.spec.rag import RAGPipelineSpec
from tests.unit.core.memory.memory_helpers import WordsFactory


def pipeline_spec(name: str = "docs", **spec: Any) -> RAGPipelineSpec:
    body = {"chunking": {"strategy": "heading", "size": 300, "overlap": 30}, **spec}
    return RAGPipelineSpec.model_validate(
        {
            "apiVersion": "astromesh/v1",
            "kind": "RAGPipeline",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def words_factory(tmp_path: Path) -> WordsFactory:
    return WordsFactory(MemoryDefaults(data_dir=str(tmp_path / "data")))


def make_pipeline(tmp_path: Path, **spec: Any) -> tuple[RagPipeline, WordsFactory]:
    memory = words_factory(tmp_path)
    return RagPipeline.from_spec(pipeline_spec(**spec), memory), memory
