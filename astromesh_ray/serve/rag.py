"""RAG pipelines over HTTP: what the gateway's ``/v1/rag/{pipeline}/...`` routes run.

POST /v1/rag/{pipeline}/ingest  {documents: [{name, content, content_type?, encoding?}]}
                                -> the IngestReport (added / replaced / unchanged ...)
POST /v1/rag/{pipeline}/search  {query, top_k?, score_threshold?} -> {results: [...]}

The pipeline runs in the gateway replica, with a ``ServeMemoryFactory``: an embedded
store (FAISS, Qdrant local mode) is the same owner actor the agents' rag tools
search, a network store (pgvector) is reached through this replica's pool.  A
document is text (``encoding: utf-8``, the default) or, for PDFs and other binary
files, base64.  The gateway's body limit (``serve/http.py`` ``MAX_BODY_BYTES``)
bounds a request; documents that cannot be read are a 422 naming the field
(``documents[1].content``); an unknown pipeline is a 404.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from astromesh_ray.core.memory.factory import MemoryDefaults, default_memory_factory
from astromesh_ray.core.rag.pipeline import RagPipelines, SourceDocument
from astromesh_ray.errors import InvalidRequest
from astromesh_ray.serve.http import BODY_CONFIG, MAX_BODY_BYTES, MAX_QUERY_CHARS, whole_number
from astromesh_ray.serve.memory import ServeMemoryFactory
from astromesh_ray.spec.rag import RAGPipelineSpec

__all__ = ["DocumentBody", "GatewayRag", "IngestBody", "RagSearchBody"]

MAX_DOCUMENTS = 100


class DocumentBody(BaseModel):
    """One document of ``POST /v1/rag/{pipeline}/ingest``."""

    model_config = BODY_CONFIG

    name: str = Field(
        min_length=1,
        max_length=500,
        description="The document's name (its source): ingesting the same name again "
        "replaces its chunks; its extension picks the loader unless content_type is given.",
    )
    content: str = Field(
        max_length=MAX_BODY_BYTES, description="The document: text, or base64 (encoding)."
    )
    content_type: str | None = Field(
        default=None,
        max_length=100,
        description="text/plain, text/markdown, text/html or application/pdf.",
    )
    encoding: Literal["utf-8", "base64"] = Field(
        default="utf-8", description="How content is sent: as text, or base64 bytes (PDFs)."
    )


class IngestBody(BaseModel):
    """``POST /v1/rag/{pipeline}/ingest``."""

    model_config = BODY_CONFIG

    documents: list[DocumentBody] = Field(
        min_length=1, max_length=MAX_DOCUMENTS, description="Documents to ingest."
    )


class RagSearchBody(BaseModel):
    """``POST /v1/rag/{pipeline}/search``."""

    model_config = BODY_CONFIG

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="Text to search for.")
    top_k: int | None = Field(
        default=None, ge=1, le=100, description="Chunks returned (default: the pipeline's)."
    )
    score_threshold: float | None = Field(
        default=None, ge=0, le=1, description="Minimum similarity (default: the pipeline's)."
    )

    _whole_top_k = field_validator("top_k", mode="before")(whole_number)


def _document(index: int, body: DocumentBody) -> SourceDocument:
    content: bytes | str = body.content
    if body.encoding == "base64":
        try:
            content = base64.b64decode(body.content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                f"documents[{index}].content is not valid base64",
                field=f"documents[{index}].content",
            ) from None
    return SourceDocument(body.name, content, content_type=body.content_type)


class GatewayRag:
    """The configuration's pipelines in the gateway replica, built on first use."""

    def __init__(
        self, specs: Mapping[str, RAGPipelineSpec], defaults: MemoryDefaults | None
    ) -> None:
        memory = ServeMemoryFactory(defaults or default_memory_factory().defaults)
        self.pipelines = RagPipelines(specs, memory)

    async def ingest(self, name: str, body: IngestBody) -> dict[str, Any]:
        pipeline = self.pipelines.get(name)  # 404 before anything is decoded
        documents = [_document(i, d) for i, d in enumerate(body.documents)]
        report = await pipeline.ingest(documents)
        return report.to_dict()

    async def search(self, name: str, body: RagSearchBody) -> dict[str, Any]:
        pipeline = self.pipelines.get(name)
        hits = await pipeline.search(body.query, body.top_k, body.score_threshold)
        return {
            "pipeline": name,
            "collection": pipeline.collection,
            "query": body.query,
            "results": [h.to_dict() for h in hits],
        }

    async def aclose(self) -> None:
        await self.pipelines.memory.aclose()
