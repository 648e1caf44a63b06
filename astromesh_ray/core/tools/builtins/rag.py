"""``rag_query`` and ``rag_ingest``: the original Astromesh's RAG built-ins, on a
``kind: RAGPipeline`` of the configuration (``config: {pipeline: NAME}``).

- ``rag_query {query, top_k?}`` searches the pipeline as a ``type: rag`` tool does
  (chunks with source, heading and score).
- ``rag_ingest {documents: [{name, content}]}`` ingests text the model wrote: each
  document's format comes from its name's extension (``.md`` markdown, ``.html``
  HTML, anything else plain text; PDFs cannot be written as text).  A document
  ingested again under the same name replaces its chunks.  It changes the knowledge
  base, so it declares side effects (described, not done, under
  ``permissions.execution.dry_run``).

The pipeline's store and embedder come from ``env.memory`` and are built on the first
call.  Without a memory factory in the environment (a runtime built by hand without
one), the tool uses a factory of this process with ``./data`` as data directory.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import pydantic

from astromesh_ray.core.memory.factory import MemoryFactory, default_memory_factory
from astromesh_ray.core.rag.pipeline import RagPipeline, SourceDocument
from astromesh_ray.core.rag.tool import format_hits, pipeline_spec, query_schema
from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.tools.builtins.schema_tool import (
    SchemaTool,
    ToolConfig,
    json_result,
    parse_config,
)
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.errors import InvalidRequest, ToolError
from astromesh_ray.spec.rag import LOADER_EXTENSIONS, LoaderName, RAGPipelineSpec
from astromesh_ray.spec.tools import BuiltinToolSpec

__all__ = ["rag_ingest", "rag_query"]


class QueryConfig(ToolConfig):
    """``config`` of ``rag_query``."""

    pipeline: str = pydantic.Field(description="The RAGPipeline to search.")
    top_k: int | None = pydantic.Field(
        default=None, ge=1, le=100, description="Passages returned (default: the pipeline's)."
    )
    score_threshold: float | None = pydantic.Field(
        default=None, ge=0, le=1, description="Minimum similarity (default: the pipeline's)."
    )


class IngestConfig(ToolConfig):
    """``config`` of ``rag_ingest``."""

    pipeline: str = pydantic.Field(description="The RAGPipeline to ingest into.")
    max_documents: int = pydantic.Field(
        default=10, ge=1, le=100, description="Documents per call at most."
    )
    max_document_chars: int = pydantic.Field(
        default=100_000, ge=1, description="Characters per document at most."
    )


class _PipelineTool(SchemaTool):
    """A built-in bound to one pipeline, built on its first call."""

    def __init__(
        self,
        name: str,
        description: str,
        parameters: dict[str, Any],
        spec: RAGPipelineSpec,
        memory: MemoryFactory | None,
    ) -> None:
        super().__init__(name, description, parameters)
        self._spec = spec
        self._memory = memory
        self._pipeline: RagPipeline | None = None

    def pipeline(self) -> RagPipeline:
        if self._pipeline is None:
            memory = self._memory or default_memory_factory()
            self._pipeline = RagPipeline.from_spec(self._spec, memory)
        return self._pipeline


class RagQueryTool(_PipelineTool):
    """``rag_query``: search the pipeline."""

    def __init__(
        self, spec: RAGPipelineSpec, config: QueryConfig, memory: MemoryFactory | None
    ) -> None:
        description = spec.spec.description or f"Search the {spec.name} documents."
        super().__init__("rag_query", description, query_schema(max_top_k=100), spec, memory)
        self._config = config

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        query = str(arguments["query"])
        top_k = arguments.get("top_k", self._config.top_k)
        try:
            hits = await self.pipeline().search(query, top_k, self._config.score_threshold)
        except InvalidRequest as exc:
            raise ToolError(exc.message, hint=exc.hint, tool=self.name) from None
        return format_hits(query, hits)


def _ingest_schema(config: IngestConfig) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "documents": {
                "type": "array",
                "minItems": 1,
                "maxItems": config.max_documents,
                "description": "Documents to add; one with a name already ingested replaces it.",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 200,
                            "description": "The document's name, e.g. notes/meeting.md "
                            "(.md: markdown, .html: HTML, else plain text).",
                        },
                        "content": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": config.max_document_chars,
                            "description": "The document's text.",
                        },
                    },
                    "required": ["name", "content"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["documents"],
        "additionalProperties": False,
    }


def _format(name: str) -> LoaderName:
    found = LOADER_EXTENSIONS.get(PurePath(name).suffix.lower(), "text")
    if found == "pdf":
        raise ToolError(
            f"document {name!r}: a PDF cannot be written as text",
            hint="give it a .md, .html or .txt name",
            tool="rag_ingest",
        )
    return found


class RagIngestTool(_PipelineTool):
    """``rag_ingest``: add documents the model wrote to the pipeline."""

    side_effects = True

    def __init__(
        self, spec: RAGPipelineSpec, config: IngestConfig, memory: MemoryFactory | None
    ) -> None:
        description = (
            f"Add text documents to the {spec.name} knowledge base (searchable right "
            "after); a document with a name already ingested replaces it."
        )
        super().__init__("rag_ingest", description, _ingest_schema(config), spec, memory)

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        documents = [
            SourceDocument(str(d["name"]), str(d["content"]), format=_format(str(d["name"])))
            for d in arguments["documents"]
        ]
        try:
            report = await self.pipeline().ingest(documents)
        except InvalidRequest as exc:
            raise ToolError(exc.message, hint=exc.hint, tool=self.name) from None
        return json_result(report.to_dict())


def rag_query(spec: BuiltinToolSpec, env: ToolEnv) -> RagQueryTool:
    """The ``rag_query`` built-in of this agent."""
    config = parse_config(spec, QueryConfig)
    return RagQueryTool(pipeline_spec(config.pipeline, env, tool=spec.name), config, env.memory)


def rag_ingest(spec: BuiltinToolSpec, env: ToolEnv) -> RagIngestTool:
    """The ``rag_ingest`` built-in of this agent."""
    config = parse_config(spec, IngestConfig)
    return RagIngestTool(pipeline_spec(config.pipeline, env, tool=spec.name), config, env.memory)
