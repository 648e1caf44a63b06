"""``RagPipeline``: ingest documents into a vector collection, and search it.

Ingesting a document loads it (``loaders.py``), cuts it (``chunking.py``), embeds
the chunks and upserts them into the pipeline's collection with their ``source``
(the document's name), ``chunk_index``, ``heading``, ``page`` and ``fingerprint``.

Re-ingesting never duplicates: a chunk's id is derived from (source, chunk index),
so a new version overwrites the old chunks in place, and the old version's extra
chunks (indexes past the new count) are deleted after it.  A document whose
fingerprint (a hash of its content, format, chunking and embedder) is what the store
already holds for every chunk of that source is skipped as ``unchanged``.  The
document is searchable throughout: there is no moment when its old chunks are gone
and its new ones not yet written (unless the stored chunks were inconsistent, e.g.
after an ingest that failed half-way: then they are all removed and rewritten).

Stores and embedders come from a ``MemoryFactory``, so they are shared with memory
(one MiniLM model, one FAISS owner) and, under Serve, live in their actors and
deployments.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from astromesh_ray.core.memory.base import Embedder, VectorItem, VectorStore
from astromesh_ray.core.memory.factory import MemoryFactory, embedder_identity
from astromesh_ray.core.rag.chunking import Chunk, chunk_sections
from astromesh_ray.core.rag.loaders import format_of, load_document
from astromesh_ray.errors import InvalidRequest, PipelineNotFound
from astromesh_ray.spec.memory import SemanticMemorySpec
from astromesh_ray.spec.rag import LoaderName, RAGPipelineSpec

__all__ = [
    "DocumentReport",
    "IngestReport",
    "RagHit",
    "RagPipeline",
    "RagPipelines",
    "SourceDocument",
    "chunk_id",
]

Status = Literal["added", "replaced", "unchanged", "empty"]


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """A document to ingest: ``name`` is its source (a path, or the name it was posted
    under), ``content`` its bytes or text, ``format`` its loader (default: from
    ``content_type``, else from the name's extension)."""

    name: str
    content: bytes | str
    content_type: str | None = None
    format: LoaderName | None = None


@dataclass(frozen=True, slots=True)
class DocumentReport:
    """What ingesting one document did."""

    source: str
    status: Status
    chunks: int  # chunks of the document now in the store

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "status": self.status, "chunks": self.chunks}


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one ``ingest`` call did, document by document."""

    pipeline: str
    collection: str
    documents: list[DocumentReport] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for d in self.documents if d.status == status)

    @property
    def chunks_written(self) -> int:
        """Chunks embedded and stored (unchanged documents write none)."""
        return sum(d.chunks for d in self.documents if d.status in ("added", "replaced"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "collection": self.collection,
            "added": self.count("added"),
            "replaced": self.count("replaced"),
            "unchanged": self.count("unchanged"),
            "empty": self.count("empty"),
            "chunks_written": self.chunks_written,
            "documents": [d.to_dict() for d in self.documents],
        }


@dataclass(frozen=True, slots=True)
class RagHit:
    """One chunk found by a search."""

    text: str
    source: str
    score: float
    chunk_index: int
    heading: str = ""
    page: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "source": self.source,
            "score": self.score,
            "chunk_index": self.chunk_index,
            "heading": self.heading,
            "page": self.page,
        }


Progress = Callable[[int, int, DocumentReport], None]
"""``(documents done, documents in all, the report of the one just done)``."""


def chunk_id(pipeline: str, source: str, index: int) -> str:
    """The store id of chunk ``index`` of ``source`` in ``pipeline`` (stable across
    ingests; two pipelines sharing a collection never share an id)."""
    key = f"{pipeline}\0{source}".encode("utf-8", "surrogatepass")
    return f"rag-{hashlib.sha256(key).hexdigest()[:24]}-{index}"


class RagPipeline:
    """One RAGPipeline over its vector store and embedder (owned by the factory that
    built them, not by the pipeline)."""

    def __init__(self, spec: RAGPipelineSpec, store: VectorStore, embedder: Embedder) -> None:
        self.spec = spec
        self.store = store
        self.embedder = embedder
        self.name = spec.name
        self.collection = spec.collection
        # One document at a time per pipeline in this process: two ingests of the same
        # source must not interleave their count, upsert and delete.
        self._lock = asyncio.Lock()
        # What makes two ingests of the same bytes give the same chunks and vectors.
        self._settings = json.dumps(
            {
                "chunking": spec.spec.chunking.model_dump(mode="json"),
                "embedder": embedder_identity(spec.spec.embedding),
            },
            sort_keys=True,
        )

    @staticmethod
    def from_spec(spec: RAGPipelineSpec, memory: MemoryFactory) -> RagPipeline:
        """The pipeline of ``spec`` with its store and embedder from ``memory``."""
        body = spec.spec
        store = memory.vectors(
            SemanticMemorySpec(
                backend=body.store.backend,
                connection=body.store.connection,
                embedding=body.embedding,
            )
        )
        return RagPipeline(spec, store, memory.embedder(body.embedding))

    @property
    def description(self) -> str:
        return self.spec.spec.description or f"Search the {self.name} documents."

    def format_of(self, document: SourceDocument) -> LoaderName:
        """The loader that reads ``document`` (``InvalidRequest`` when none does)."""
        accepted = self.spec.spec.loaders
        if document.format is None:
            return format_of(document.name, document.content_type, accepted=accepted)
        if document.format not in accepted:
            raise InvalidRequest(
                f"document {document.name!r} is {document.format}, which this pipeline "
                "does not read",
                hint="its loaders: " + ", ".join(accepted),
                field="name",
            )
        return document.format

    async def ingest(
        self, documents: Sequence[SourceDocument], progress: Progress | None = None
    ) -> IngestReport:
        """Ingest ``documents`` one after the other.  All are loaded and checked first:
        a document that cannot be read fails the call before anything is stored."""
        names = [d.name for d in documents]
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise InvalidRequest(
                    f"documents[{i}]: a document needs a name", field=f"documents[{i}].name"
                )
            if names.index(name) != i:
                raise InvalidRequest(
                    f"documents[{i}]: document {name!r} is given twice",
                    field=f"documents[{i}].name",
                )
        prepared = [self._prepare(i, d) for i, d in enumerate(documents)]
        report = IngestReport(self.name, self.collection)
        for done, (name, fingerprint, chunks) in enumerate(prepared, 1):
            async with self._lock:
                result = await self._store_document(name, fingerprint, chunks)
            report.documents.append(result)
            if progress is not None:
                progress(done, len(prepared), result)
        return report

    def _prepare(self, i: int, document: SourceDocument) -> tuple[str, str, list[Chunk]]:
        try:
            fmt = self.format_of(document)
            sections = load_document(document.name, document.content, fmt)
        except InvalidRequest as exc:
            where = exc.details.get("field", "content")
            raise InvalidRequest(
                exc.message, hint=exc.hint, field=f"documents[{i}].{where}", document=document.name
            ) from None
        content = document.content
        raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
        fingerprint = hashlib.sha256(
            fmt.encode() + b"\0" + self._settings.encode() + b"\0" + raw
        ).hexdigest()
        return document.name, fingerprint, chunk_sections(sections, self.spec.spec.chunking)

    async def _store_document(
        self, source: str, fingerprint: str, chunks: list[Chunk]
    ) -> DocumentReport:
        store, collection = self.store, self.collection
        mine = {"pipeline": self.name, "source": source}
        before = await store.count(collection, mine)
        if before and before == len(chunks):
            same = await store.count(collection, {**mine, "fingerprint": fingerprint})
            if same == before:
                return DocumentReport(source, "unchanged", before)
        if not chunks:
            if before:
                await store.delete(collection, where=mine)
            return DocumentReport(source, "empty", 0)
        vectors = await self.embedder.embed([c.embedded_text() for c in chunks])
        items = [
            VectorItem(
                chunk_id(self.name, source, c.index),
                vector,
                c.text,
                _metadata(self.name, source, fingerprint, c),
            )
            for c, vector in zip(chunks, vectors, strict=True)
        ]
        await store.upsert(collection, items)
        if before > len(chunks):
            stale = [chunk_id(self.name, source, i) for i in range(len(chunks), before)]
            await store.delete(collection, ids=stale, where=mine)
        if before and await store.count(collection, mine) != len(chunks):
            # The stored chunks were not the 0..n-1 of one version (an ingest that
            # failed half-way): start the source over.
            await store.delete(collection, where=mine)
            await store.upsert(collection, items)
        return DocumentReport(source, "replaced" if before else "added", len(chunks))

    async def search(
        self, query: str, top_k: int | None = None, threshold: float | None = None
    ) -> list[RagHit]:
        """The chunks most similar to ``query``, best first: ``top_k`` of them (default
        the pipeline's), scoring at least ``threshold`` (default the pipeline's)."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidRequest("a search needs a non-empty query", field="query")
        k = top_k if top_k is not None else self.spec.spec.top_k
        floor = threshold if threshold is not None else self.spec.spec.score_threshold
        [vector] = await self.embedder.embed([query])
        hits = await self.store.search(
            self.collection, vector, k=k, threshold=floor, where={"pipeline": self.name}
        )
        return [_hit(h.text, h.score, h.metadata) for h in hits]

    async def count(self, source: str | None = None) -> int:
        """Chunks in the collection (of ``source`` only, when given)."""
        where = {"pipeline": self.name}
        if source is not None:
            where["source"] = source
        return await self.store.count(self.collection, where)


def _metadata(
    pipeline: str, source: str, fingerprint: str, chunk: Chunk
) -> dict[str, str | int | float | bool]:
    meta: dict[str, str | int | float | bool] = {
        # The pipeline's name sets its chunks apart from other items of a collection
        # it shares (with another pipeline, or with semantic memory).
        "pipeline": pipeline,
        "source": source,
        "chunk_index": chunk.index,
        "heading": chunk.heading,
        "fingerprint": fingerprint,
    }
    if chunk.page is not None:
        meta["page"] = chunk.page
    return meta


def _hit(text: str, score: float, meta: Mapping[str, Any]) -> RagHit:
    page = meta.get("page")
    return RagHit(
        text=text,
        source=str(meta.get("source", "")),
        score=float(score),
        chunk_index=int(meta.get("chunk_index", 0)),
        heading=str(meta.get("heading", "")),
        page=int(page) if isinstance(page, int | float) and not isinstance(page, bool) else None,
    )


class RagPipelines:
    """The configuration's pipelines by name, each built on first use from ``memory``
    (which owns and closes their stores and embedders)."""

    def __init__(self, specs: Mapping[str, RAGPipelineSpec], memory: MemoryFactory) -> None:
        self.specs = dict(specs)
        self.memory = memory
        self._built: dict[str, RagPipeline] = {}

    def get(self, name: str) -> RagPipeline:
        """Pipeline ``name``; ``PipelineNotFound`` (404) when there is none."""
        pipeline = self._built.get(name)
        if pipeline is None:
            spec = self.specs.get(name)
            if spec is None:
                known = ", ".join(sorted(self.specs)) or "(none: <config>/rag/*.yaml)"
                raise PipelineNotFound(
                    f"no RAG pipeline named {name!r}", hint=f"pipelines: {known}", pipeline=name
                )
            pipeline = self._built[name] = RagPipeline.from_spec(spec, self.memory)
        return pipeline
