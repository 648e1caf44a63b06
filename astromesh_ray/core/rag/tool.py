"""``type: rag`` tools: a search over a RAG pipeline, or over a collection of the
agent's semantic memory store, as a tool the model calls with ``{"query": ...}``.

The result is the chunks found, best first, each with its source, heading and
score: as text for the model, and as ``data`` (``{"query", "results": [...]}``).

- ``rag: {pipeline: NAME}`` searches the configuration's ``kind: RAGPipeline``
  ``NAME`` (``env.rag``), with its embedder and store.
- ``rag: {collection: NAME}`` searches collection ``NAME`` of the store the agent's
  ``spec.memory.semantic`` names, embedding the query with that block's embedder (the
  collection must hold vectors of that model); an agent without semantic memory is
  refused at build time.

``top_k`` and ``score_threshold`` of the tool override the pipeline's.  Stores and
embedders come from ``env.memory`` (shared with memory, and under Serve living in
their actors and deployments); they are built on the first call, so building the
toolset (``astromesh validate``) opens and creates nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from astromesh_ray.core.memory.factory import MemoryFactory, default_memory_factory
from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.rag.pipeline import RagHit, RagPipeline, RagPipelines
from astromesh_ray.core.tools.base import ToolContext, ToolDef, ToolResult, Toolset
from astromesh_ray.core.tools.builders import limits_of
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.function import ToolLimits
from astromesh_ray.core.tools.validation import compile_validator
from astromesh_ray.errors import ConfigError, InvalidRequest, ToolError
from astromesh_ray.spec.memory import SemanticMemorySpec
from astromesh_ray.spec.rag import COLLECTION_PATTERN, RAGPipelineSpec
from astromesh_ray.spec.tools import RagToolSpec

__all__ = ["RagToolset", "build_rag_toolsets", "format_hits", "pipeline_spec", "query_schema"]


def query_schema(max_top_k: int | None = None) -> dict[str, Any]:
    """The arguments of a search tool: ``query``, and ``top_k`` when ``max_top_k``."""
    properties: dict[str, Any] = {
        "query": {"type": "string", "minLength": 1, "description": "What to search for."}
    }
    if max_top_k is not None:
        properties["top_k"] = {
            "type": "integer",
            "minimum": 1,
            "maximum": max_top_k,
            "description": "How many passages to return.",
        }
    return {
        "type": "object",
        "properties": properties,
        "required": ["query"],
        "additionalProperties": False,
    }


def format_hits(query: str, hits: Sequence[RagHit]) -> ToolResult:
    """The tool result of a search: numbered passages with source, heading and score."""
    data = {"query": query, "results": [h.to_dict() for h in hits]}
    if not hits:
        return ToolResult(content=f"No passages found for {query!r}.", data=data)
    lines = [f"{len(hits)} passage(s) for {query!r}, best first:"]
    for number, hit in enumerate(hits, 1):
        where = hit.source + (f" > {hit.heading}" if hit.heading else "")
        if hit.page is not None:
            where += f" (page {hit.page})"
        lines.append(f"\n[{number}] {where} (score {hit.score:.3f}, chunk {hit.chunk_index})")
        lines.append(hit.text)
    return ToolResult(content="\n".join(lines), data=data)


def pipeline_spec(name: str, env: ToolEnv, *, tool: str) -> RAGPipelineSpec:
    """The RAG pipeline ``name`` of the configuration (``env.rag``), or a
    ``ConfigError`` naming the tool and the pipelines there are."""
    spec = env.rag.get(name)
    if not isinstance(spec, RAGPipelineSpec):
        known = ", ".join(sorted(env.rag)) or "(none)"
        raise ConfigError(
            f"tool {tool!r}: there is no RAG pipeline named {name!r}",
            hint=f"RAG pipelines of this configuration ({'<config>/rag/*.yaml'}): {known}",
        )
    return spec


class Searcher(Protocol):
    """What a rag tool searches: a ``RagPipeline``, or a memory collection."""

    async def search(
        self, query: str, top_k: int | None = None, threshold: float | None = None
    ) -> list[RagHit]: ...


class CollectionSearch:
    """A collection of the agent's semantic memory store, searched like a pipeline."""

    def __init__(self, semantic: SemanticMemorySpec, collection: str, memory: MemoryFactory):
        self.collection = collection
        self.store = memory.vectors(semantic)
        self.embedder = memory.embedder(semantic.embedding)

    async def search(
        self, query: str, top_k: int | None = None, threshold: float | None = None
    ) -> list[RagHit]:
        [vector] = await self.embedder.embed([query])
        hits = await self.store.search(self.collection, vector, k=top_k or 5, threshold=threshold)
        return [
            RagHit(
                text=h.text,
                source=str(h.metadata.get("source") or self.collection),
                score=h.score,
                chunk_index=_int(h.metadata.get("chunk_index")),
                heading=str(h.metadata.get("heading") or ""),
            )
            for h in hits
        ]


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class RagTool:
    """One ``type: rag`` entry, resolved."""

    name: str
    description: str
    top_k: int | None
    threshold: float | None
    limits: ToolLimits
    pipeline: str | None = None  # else `collection` of the agent's semantic store
    collection: str | None = None


class RagToolset:
    """The agent's ``type: rag`` tools.  Pipelines and collection searches are built
    on first use from the memory factory (``env.memory``, else one of this toolset's
    own, closed with it)."""

    name = "rag"

    def __init__(
        self,
        tools: Sequence[RagTool],
        pipelines: Mapping[str, RAGPipelineSpec],
        semantic: SemanticMemorySpec | None,
        memory: MemoryFactory | None,
    ) -> None:
        self._tools = {t.name: t for t in tools}
        self._specs = dict(pipelines)
        self._semantic = semantic
        self._memory = memory
        self._own_memory: MemoryFactory | None = None
        self._pipelines: RagPipelines | None = None
        self._searchers: dict[str, Searcher] = {}
        self._schema = query_schema()

    def _factory(self) -> MemoryFactory:
        if self._memory is not None:
            return self._memory
        if self._own_memory is None:
            self._own_memory = default_memory_factory()
        return self._own_memory

    def _searcher(self, tool: RagTool) -> Searcher:
        found = self._searchers.get(tool.name)
        if found is None:
            if tool.pipeline is not None:
                if self._pipelines is None:
                    self._pipelines = RagPipelines(self._specs, self._factory())
                pipeline: RagPipeline = self._pipelines.get(tool.pipeline)
                found = pipeline
            else:
                assert self._semantic is not None and tool.collection is not None
                found = CollectionSearch(self._semantic, tool.collection, self._factory())
            self._searchers[tool.name] = found
        return found

    async def list_tools(self) -> Sequence[ToolDef]:
        return [
            ToolDef(
                schema=ToolSchema(name=t.name, description=t.description, parameters=self._schema),
                validate=compile_validator(t.name, self._schema),
                timeout_s=t.limits.timeout_s,
                max_result_chars=t.limits.max_result_chars,
                side_effects=bool(t.limits.side_effects),
            )
            for t in self._tools.values()
        ]

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        tool = self._tools[name]
        query = str(arguments["query"])
        try:
            hits = await self._searcher(tool).search(query, tool.top_k, tool.threshold)
        except InvalidRequest as exc:  # e.g. a query of only spaces: the model can fix it
            raise ToolError(exc.message, hint=exc.hint, tool=name) from None
        return format_hits(query, hits)

    async def aclose(self) -> None:
        if self._own_memory is not None:
            await self._own_memory.aclose()
            self._own_memory = None


def build_rag_toolsets(specs: Sequence[Any], env: ToolEnv) -> list[Toolset]:
    """The agent's ``type: rag`` tools as one ``RagToolset``; an unknown pipeline, or
    ``collection`` on an agent without semantic memory, is a ``ConfigError`` now."""
    semantic = env.agent.spec.memory.semantic if env.agent.spec.memory else None
    tools: list[RagTool] = []
    pipelines: dict[str, RAGPipelineSpec] = {}
    for spec in specs:
        assert isinstance(spec, RagToolSpec)
        rag = spec.rag
        if rag.pipeline is not None:
            pipeline = pipeline_spec(rag.pipeline, env, tool=spec.name)
            pipelines[pipeline.name] = pipeline
            description = spec.description or pipeline.spec.description
            description = description or f"Search the {pipeline.name} documents."
        else:
            if semantic is None:
                raise ConfigError(
                    f"tool {spec.name!r}: rag.collection searches a collection of the "
                    "agent's semantic memory store, and this agent declares no "
                    "spec.memory.semantic",
                    hint="declare spec.memory.semantic (its backend and embedding), or "
                    "search a RAG pipeline with rag.pipeline",
                )
            if not re.match(COLLECTION_PATTERN, rag.collection or ""):
                raise ConfigError(
                    f"tool {spec.name!r}: invalid rag.collection {rag.collection!r}",
                    hint="1 to 63 letters, digits, '_' or '-', starting with a letter or digit",
                )
            description = spec.description or f"Search the {rag.collection} collection."
        tools.append(
            RagTool(
                name=spec.name,
                description=description,
                # Not given: the pipeline's own (a collection search: 5).
                top_k=rag.top_k if "top_k" in rag.model_fields_set else None,
                threshold=rag.score_threshold,
                limits=limits_of(spec),
                pipeline=rag.pipeline,
                collection=rag.collection,
            )
        )
    return [RagToolset(tools, pipelines, semantic, env.memory)]
