"""``kind: RAGPipeline``: documents cut into chunks, embedded, stored and searched.

A pipeline names how files are read (``loaders``, chosen by file extension), how
their text is cut (``chunking``), the embedding model (``embedding``, the same block
as semantic memory's) and the vector store (``store``: the semantic memory backends),
and what a search returns (``top_k``, ``score_threshold``).  Agents search it with a
``type: rag`` tool or the ``rag_query`` built-in; ``astromesh ingest`` and
``POST /v1/rag/{pipeline}/ingest`` fill it.

Files live in ``<config>/rag/*.yaml`` (the original Astromesh's
``config/rag/*.rag.yaml`` match too).  Keys of the original's shape are accepted
where they mean the same: ``chunking.chunk_size`` (for ``size``), ``embeddings``
(for ``embedding``) and ``vector_store`` (for ``store``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field, model_validator

from astromesh_ray.spec.base import ApiVersion, MetadataSpec, StrictModel, count_present, rule_error
from astromesh_ray.spec.memory import ConnectionSpec, EmbeddingSpec, VectorBackend

LoaderName = Literal["text", "markdown", "html", "pdf"]
"""Document formats a pipeline reads."""

LOADER_EXTENSIONS: dict[str, LoaderName] = {
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
"""File extension (lower case) -> the loader that reads it."""

_ALL_LOADERS: tuple[LoaderName, ...] = ("text", "markdown", "html", "pdf")

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
"""What every vector store accepts as a collection name."""


def _one_of_keys(data: Any, key: str, alias: str) -> None:
    if len(count_present(data, key, alias)) > 1:
        raise rule_error(alias, f"give either {key} or {alias} (its alias), not both")


class ChunkingSpec(StrictModel):
    """How a document's text is cut into the chunks that are embedded and returned."""

    schema_aliases: ClassVar[dict[str, str]] = {"chunk_size": "size"}

    strategy: Literal["fixed", "heading"] = Field(
        default="fixed",
        description="fixed: pieces of at most `size` characters, cut between words, each "
        "overlapping the previous one by about `overlap` characters; heading: one chunk "
        "per section of a markdown or HTML document (its heading path kept with it), "
        "long sections cut as fixed does; text and PDF documents, which have no "
        "headings, are cut as fixed.",
    )
    size: int = Field(
        default=800,
        ge=50,
        le=20_000,
        validation_alias=AliasChoices("size", "chunk_size"),
        serialization_alias="size",
        description="Characters per chunk at most (`chunk_size` is the original "
        "Astromesh's name).  The local MiniLM embedder reads about 1,000 characters of "
        "English per chunk (256 tokens); past that a chunk is embedded by its start.",
    )
    overlap: int = Field(
        default=100,
        ge=0,
        description="Characters a chunk repeats from the end of the previous one "
        "(whole words); less than size.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_size(cls, data: Any) -> Any:
        _one_of_keys(data, "size", "chunk_size")
        return data

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSpec:
        if self.overlap >= self.size:
            raise rule_error(
                "overlap", f"overlap ({self.overlap}) must be less than size ({self.size})"
            )
        return self


class RagStoreSpec(StrictModel):
    """The vector store holding a pipeline's chunks (the semantic memory backends)."""

    backend: VectorBackend = Field(
        default="faiss",
        description="pgvector (PostgreSQL), qdrant (local mode in the data directory, or a "
        "server URL), faiss (an index owned by one Ray actor, snapshot to the data "
        "directory), chromadb (optional extra).",
    )
    connection: ConnectionSpec | None = Field(
        default=None,
        description="Store location (default: runtime.yaml spec.memory for the backend).",
    )
    collection: str | None = Field(
        default=None,
        pattern=COLLECTION_PATTERN,
        description="Collection name (default: the pipeline's name).",
    )


class RagBodySpec(StrictModel):
    """``spec`` of a RAGPipeline."""

    schema_aliases: ClassVar[dict[str, str]] = {
        "embeddings": "embedding",
        "vector_store": "store",
    }

    description: str | None = Field(
        default=None,
        description="What the documents are about: the search tool's description for the "
        "model (default: 'Search the <name> documents').",
    )
    loaders: list[LoaderName] = Field(
        default_factory=lambda: list(_ALL_LOADERS),
        min_length=1,
        description="Formats this pipeline reads; each file's format comes from its "
        "extension (.txt .text .rst: text; .md .markdown: markdown; .html .htm: html; "
        ".pdf: pdf), or from content_type over HTTP.",
    )
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec, description="How to cut.")
    embedding: EmbeddingSpec = Field(
        default_factory=EmbeddingSpec,
        validation_alias=AliasChoices("embedding", "embeddings"),
        serialization_alias="embedding",
        description="The embedding model (as semantic memory's; `embeddings` is the "
        "original Astromesh's key).",
    )
    store: RagStoreSpec = Field(
        default_factory=RagStoreSpec,
        validation_alias=AliasChoices("store", "vector_store"),
        serialization_alias="store",
        description="The vector store (`vector_store` is the original Astromesh's key).",
    )
    top_k: int = Field(default=5, ge=1, le=100, description="Chunks a search returns.")
    score_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Minimum cosine similarity of a returned chunk (default: none).",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_key_each(cls, data: Any) -> Any:
        _one_of_keys(data, "embedding", "embeddings")
        _one_of_keys(data, "store", "vector_store")
        return data


class RAGPipelineSpec(StrictModel):
    """A whole ``kind: RAGPipeline`` document."""

    api_version: ApiVersion = Field(alias="apiVersion", description="Format version.")
    kind: Literal["RAGPipeline"] = Field(description="Document kind.")
    metadata: MetadataSpec = Field(description="Name, version, namespace, labels.")
    spec: RagBodySpec = Field(default_factory=RagBodySpec, description="The pipeline.")

    @model_validator(mode="after")
    def _collection_name(self) -> RAGPipelineSpec:
        if self.spec.store.collection is None and len(self.metadata.name) > 63:
            raise rule_error(
                ("metadata", "name"),
                "a pipeline name longer than 63 characters cannot name its collection",
            )
        return self

    @property
    def name(self) -> str:
        """``metadata.name``."""
        return self.metadata.name

    @property
    def collection(self) -> str:
        """The collection holding the chunks: ``store.collection``, else the name."""
        return self.spec.store.collection or self.metadata.name
