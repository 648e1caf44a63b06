"""A RAG pipeline on real components: the corpus read from disk, embedded with the
offline MiniLM model, stored in FAISS and in pgvector; a ``type: rag`` tool in an
agent turn (scripted model) returns the right chunk; re-ingesting is idempotent and
a changed file's chunks are replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import LocalAgents
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.memory.factory import memory_factory
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.rag.files import collect_files, read_documents
from astromesh_ray.core.rag.pipeline import RagPipelines
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedProvider
from tests.integration.rag.conftest import pipeline_doc, runtime_doc, write_yaml

AGENT = {
    "apiVersion": "astromesh/v1",
    "kind": "Agent",
    "metadata": {"name": "support"},
    "spec": {
        "model": {"primary": {"provider": "ollama", "model": "m"}},
        "tools": [{"name": "search_manuals", "type": "rag", "rag": {"pipeline": "manuals"}}],
    },
}


@pytest.fixture(params=["faiss", "pgvector"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    store: dict[str, Any] = {"backend": request.param}
    if request.param == "pgvector":
        store["collection"] = request.getfixturevalue("pg_collection")
    root = tmp_path / "config"
    write_yaml(root / "runtime.yaml", runtime_doc(tmp_path / "data"))
    write_yaml(root / "rag" / "manuals.rag.yaml", pipeline_doc("manuals", store))
    write_yaml(root / "agents" / "support.agent.yaml", AGENT)
    return root


def echo(request: CompletionRequest) -> str:
    return request.messages[-1].content or ""


async def test_ingest_ask_reingest_and_replace(
    config: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(corpus.parent)  # sources are named relative to it: docs/...
    loaded = load_config(config)
    memory = memory_factory(loaded)
    pipelines = RagPipelines(loaded.rag_pipelines, memory)
    pipeline = pipelines.get("manuals")
    files = collect_files([corpus], pipeline.spec.spec.loaders)
    assert [f.name for f in files] == ["faq.html", "guide.md", "safety.pdf", "notes.txt"]

    first = await pipeline.ingest(read_documents(files))
    assert first.count("added") == 4
    total = await pipeline.count()
    assert total == first.chunks_written == 9

    provider = ScriptedProvider(
        [ToolCall("c1", "search_manuals", {"query": "How long is the warranty?"}), echo]
    )
    agents = LocalAgents(
        loaded.agents, scripted={"support": provider}, memory=memory, rag=loaded.rag_pipelines
    )
    try:
        result = await (await agents.runtime("support")).run(RunRequest(query="warranty?"))
        provider.assert_consumed()
        assert result.answer.startswith("3 passage(s) for 'How long is the warranty?'")
        first_hit = result.answer.split("\n[2]")[0]
        assert "[1] docs/faq.html > Frequently asked questions > Warranty (score" in first_hit
        assert "five year warranty covering the motor and the light" in first_hit

        [pdf] = await pipeline.search("Can I clean the lens with alcohol?", top_k=1)
        assert (pdf.source, pdf.page) == ("docs/manuals/safety.pdf", 2)
        assert "never use alcohol" in pdf.text

        again = await pipeline.ingest(read_documents(files))
        assert again.count("unchanged") == 4 and again.chunks_written == 0
        assert await pipeline.count() == total

        guide = corpus / "guide.md"
        old = "If the lamp blinks red three times, its battery is empty: charge it for two hours."
        new = "If the lamp hums loudly, the fan is clogged: blow it out with compressed air."
        guide.write_text(guide.read_text().replace(old, new))
        changed = await pipeline.ingest(read_documents(files))
        statuses = {d.source: d.status for d in changed.documents}
        assert statuses["docs/guide.md"] == "replaced"
        assert sorted(statuses.values()).count("unchanged") == 3
        assert await pipeline.count("docs/guide.md") == 4
        assert await pipeline.count() == total
        [hit] = await pipeline.search("What does it mean when the lamp hums?", top_k=1)
        assert hit.source == "docs/guide.md" and "compressed air" in hit.text
        everything = await pipeline.search("lamp battery blinks red charge", top_k=20)
        assert not any("blinks red" in h.text for h in everything)
    finally:
        await agents.aclose()
