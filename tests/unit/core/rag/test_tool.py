"""``type: rag`` tools and the ``rag_query`` / ``rag_ingest`` built-ins in agent
turns driven by the scripted model (FAISS store, deterministic embedder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import LocalAgents, check_buildable
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.memory.base import VectorItem
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.rag.pipeline import RagPipelines, SourceDocument
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import AgentSpec
from astromesh_ray.testing import ScriptedProvider
from tests.unit.core.engine_helpers import agent_yaml, load_agents
from tests.unit.core.memory.memory_helpers import WordsEmbedder
from tests.unit.core.rag.corpus import FAQ_HTML, GUIDE_MD
from tests.unit.core.rag.rag_helpers import pipeline_spec, words_factory

PIPELINES = {"docs": pipeline_spec(description="The Orbital Widget manuals.")}


def agent(tmp_path: Path, *tools: dict[str, Any], **spec: Any) -> dict[str, AgentSpec]:
    return load_agents(tmp_path, agent_yaml("reader", tools=list(tools), **spec))


def echo_tool_result(request: CompletionRequest) -> str:
    return request.messages[-1].content or ""


async def turn(
    tmp_path: Path, agents: dict[str, AgentSpec], *steps: Any, ingest: bool = True
) -> tuple[Any, RagPipelines]:
    memory = words_factory(tmp_path)
    pipes = RagPipelines(PIPELINES, memory)
    if ingest:
        await pipes.get("docs").ingest(
            [SourceDocument("guide.md", GUIDE_MD), SourceDocument("faq.html", FAQ_HTML)]
        )
    provider = ScriptedProvider(list(steps))
    local = LocalAgents(agents, scripted={"reader": provider}, memory=memory, rag=PIPELINES)
    try:
        runtime = await local.runtime("reader")
        result = await runtime.run(RunRequest(query="question"))
        provider.assert_consumed()
        return result, pipes
    finally:
        await local.aclose()


async def test_rag_tool_returns_the_chunks_with_source_and_score(tmp_path: Path) -> None:
    agents = agent(
        tmp_path, {"name": "search_docs", "type": "rag", "rag": {"pipeline": "docs", "top_k": 2}}
    )

    def call(request: CompletionRequest) -> ToolCall:
        [tool] = request.tools
        assert tool.name == "search_docs" and tool.description == "The Orbital Widget manuals."
        assert tool.parameters["required"] == ["query"]
        return ToolCall("c1", "search_docs", {"query": "lamp blinks red battery empty"})

    result, _ = await turn(tmp_path, agents, call, echo_tool_result)
    step = result.steps[0]
    assert not step.is_error
    assert "[1] guide.md > Orbital Widget Guide > Troubleshooting (score" in result.answer
    assert "its battery is empty: charge it for two hours." in result.answer
    assert result.answer.count("\n[") == 2  # top_k of the tool, not the pipeline's 5


async def test_rag_query_and_rag_ingest_builtins(tmp_path: Path) -> None:
    agents = agent(
        tmp_path,
        {"name": "rag_ingest", "type": "builtin", "config": {"pipeline": "docs"}},
        {"name": "rag_query", "type": "builtin", "config": {"pipeline": "docs"}},
    )
    note = {"name": "notes/parking.md", "content": "# Parking\n\nVisitors park on level minus two."}

    def ingest(request: CompletionRequest) -> ToolCall:
        assert sorted(t.name for t in request.tools) == ["rag_ingest", "rag_query"]
        return ToolCall("c1", "rag_ingest", {"documents": [note]})

    def query(request: CompletionRequest) -> ToolCall:
        assert '"added": 1' in (request.messages[-1].content or "")
        return ToolCall("c2", "rag_query", {"query": "where do visitors park", "top_k": 1})

    result, pipes = await turn(tmp_path, agents, ingest, query, echo_tool_result, ingest=False)
    assert "[1] notes/parking.md > Parking" in result.answer
    assert "Visitors park on level minus two." in result.answer
    assert await pipes.get("docs").count("notes/parking.md") == 1


async def test_rag_ingest_declares_side_effects_and_refuses_pdf_names(tmp_path: Path) -> None:
    agents = agent(
        tmp_path, {"name": "rag_ingest", "type": "builtin", "config": {"pipeline": "docs"}}
    )
    bad = {"documents": [{"name": "scan.pdf", "content": "text"}]}
    result, _ = await turn(
        tmp_path, agents, ToolCall("c1", "rag_ingest", bad), echo_tool_result, ingest=False
    )
    assert result.steps[0].is_error
    assert "a PDF cannot be written as text" in result.answer

    from astromesh_ray.core.tools.builtins import builtin_tool
    from astromesh_ray.core.tools.builtins.rag import RagIngestTool
    from astromesh_ray.core.tools.env import ToolEnv
    from astromesh_ray.core.tools.services import local_tool_services
    from astromesh_ray.spec.tools import BuiltinToolSpec

    spec = BuiltinToolSpec(name="rag_ingest", type="builtin", config={"pipeline": "docs"})
    tool = builtin_tool(
        spec, ToolEnv(agent=agents["reader"], services=local_tool_services(), rag=PIPELINES)
    )
    assert isinstance(tool, RagIngestTool) and tool.side_effects is True


async def test_collection_searches_the_agents_semantic_store(tmp_path: Path) -> None:
    semantic = {"semantic": {"backend": "faiss", "index_turns": False}}
    agents = agent(
        tmp_path,
        {"name": "kb", "type": "rag", "rag": {"collection": "facts", "top_k": 1}},
        memory=semantic,
    )
    memory = words_factory(tmp_path)
    store = memory.vectors(agents["reader"].spec.memory.semantic)  # type: ignore[union-attr]
    texts = ["The cafeteria opens at noon.", "The library closes at eight."]
    vectors = await WordsEmbedder().embed(texts)
    await store.upsert(
        "facts",
        [
            VectorItem(f"f{i}", v, t, {"source": "handbook"})
            for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
        ],
    )
    provider = ScriptedProvider(
        [ToolCall("c1", "kb", {"query": "when does the library close"}), echo_tool_result]
    )
    local = LocalAgents(agents, scripted={"reader": provider}, memory=memory)
    try:
        result = await (await local.runtime("reader")).run(RunRequest(query="q"))
    finally:
        await local.aclose()
    assert "[1] handbook (score" in result.answer and "library closes at eight" in result.answer
    assert "cafeteria" not in result.answer


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        (
            {"name": "s", "type": "rag", "rag": {"pipeline": "nope"}},
            "tool 's': there is no RAG pipeline named 'nope'",
        ),
        (
            {"name": "s", "type": "rag", "rag": {"collection": "facts"}},
            "this agent declares no spec.memory.semantic",
        ),
        (
            {"name": "rag_query", "type": "builtin", "config": {}},
            "config.pipeline: Field required",
        ),
        (
            {"name": "rag_query", "type": "builtin", "config": {"pipeline": "docs", "k": 3}},
            "unknown config key 'k'",
        ),
    ],
)
def test_build_checks_name_the_problem(tmp_path: Path, tool: dict[str, Any], message: str) -> None:
    agents = agent(tmp_path, tool)
    with pytest.raises(ConfigError) as info:
        check_buildable(agents.values(), rag=PIPELINES)
    assert message in info.value.message


def test_building_the_toolset_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    agents = agent(tmp_path, {"name": "s", "type": "rag", "rag": {"pipeline": "docs"}})
    check_buildable(agents.values(), rag=PIPELINES)
    assert not (tmp_path / "data").exists()
