"""RAG through Ray Serve over real HTTP: ``POST /v1/rag/{pipeline}/ingest`` and
``/search`` in the gateway (FAISS in its owner actor, the offline MiniLM embedder),
and an agent turn whose ``type: rag`` tool searches what was ingested, against a
real OpenAI-compatible server on loopback."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from ray import serve

from astromesh_ray.serve.local import deploy_apps
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedOpenAIServer
from tests.integration.rag.conftest import pipeline_doc, runtime_doc, write_yaml
from tests.unit.core.rag.corpus import FAQ_HTML, GUIDE_MD, MANUAL_PAGES, make_pdf


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("ragconfig")
    write_yaml(root / "runtime.yaml", runtime_doc(root / "data"))
    write_yaml(root / "rag" / "manuals.rag.yaml", pipeline_doc("manuals", {"backend": "faiss"}))
    agent = {
        "apiVersion": "astromesh/v1",
        "kind": "Agent",
        "metadata": {"name": "ragdesk"},
        "spec": {
            "model": {"primary": {"provider": "openai_compat", "model": "m", "endpoint": llm.url}},
            "prompts": {"system": "Answer from the manuals."},
            "orchestration": {"max_iterations": 3, "timeout_seconds": 120},
            "tools": [
                {
                    "name": "search_manuals",
                    "type": "rag",
                    "rag": {"pipeline": "manuals", "top_k": 2},
                }
            ],
        },
    }
    (root / "agents").mkdir()
    (root / "agents" / "ragdesk.agent.yaml").write_text(yaml.safe_dump(agent))
    apps = deploy_apps(load_config(root), config_dir=root)
    try:
        yield serve_url
    finally:
        for name in reversed(apps):
            serve.delete(name)


def post(api: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{api}{path}", json=body, timeout=180)


CORPUS = [
    {"name": "guide.md", "content": GUIDE_MD},
    {"name": "faq", "content": FAQ_HTML, "content_type": "text/html"},
    {
        "name": "manuals/safety.pdf",
        "content": base64.b64encode(make_pdf(MANUAL_PAGES)).decode(),
        "encoding": "base64",
    },
]


def test_ingest_search_reingest_and_an_agent_turn(api: str, llm: ScriptedOpenAIServer) -> None:
    first = post(api, "/v1/rag/manuals/ingest", {"documents": CORPUS})
    assert first.status_code == 200, first.text
    report = first.json()
    assert (report["added"], report["unchanged"], report["chunks_written"]) == (3, 0, 8)
    assert [d["source"] for d in report["documents"]] == ["guide.md", "faq", "manuals/safety.pdf"]

    again = post(api, "/v1/rag/manuals/ingest", {"documents": CORPUS})
    assert again.status_code == 200, again.text
    assert (again.json()["unchanged"], again.json()["chunks_written"]) == (3, 0)

    found = post(api, "/v1/rag/manuals/search", {"query": "Where do orders ship from?", "top_k": 1})
    assert found.status_code == 200, found.text
    [hit] = found.json()["results"]
    assert hit["source"] == "faq" and hit["heading"] == "Frequently asked questions > Shipping"
    assert hit["text"] == "Orders ship from Rotterdam within three business days."

    llm.add_steps(
        {
            "tool_calls": [
                {"name": "search_manuals", "arguments": {"query": "lens cleaning alcohol"}}
            ]
        },
        "Use a dry microfiber cloth, never alcohol.",
    )
    reply = post(api, "/v1/agents/ragdesk/run", {"query": "How do I clean the lens?"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["answer"] == "Use a dry microfiber cloth, never alcohol."
    tool_message = llm.requests[-1]["messages"][-1]
    assert tool_message["role"] == "tool"
    first_passage = tool_message["content"].split("\n[2]")[0]
    assert "[1] manuals/safety.pdf (page 2) (score" in first_passage
    assert "Wipe the lens with a dry microfiber cloth; never use alcohol." in first_passage

    changed = GUIDE_MD.replace("blinks red three times", "beeps five times")
    replaced = post(
        api, "/v1/rag/manuals/ingest", {"documents": [{"name": "guide.md", "content": changed}]}
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["documents"] == [
        {"source": "guide.md", "status": "replaced", "chunks": 4}
    ]
    every = post(api, "/v1/rag/manuals/search", {"query": "lamp battery", "top_k": 50}).json()
    assert len(every["results"]) == 8  # still 8 chunks: replaced, not duplicated
    texts = " ".join(h["text"] for h in every["results"])
    assert "beeps five times" in texts and "blinks red" not in texts


def test_refusals_name_the_problem(api: str) -> None:
    unknown = post(api, "/v1/rag/nope/ingest", {"documents": CORPUS[:1]})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "no RAG pipeline named 'nope'"
    assert unknown.json()["error"]["code"] == "pipeline_not_found"

    bad_name = post(
        api,
        "/v1/rag/manuals/ingest",
        {"documents": [CORPUS[0], {"name": "photo.png", "content": "x"}]},
    )
    assert bad_name.status_code == 422
    assert bad_name.json()["error"]["field"] == "documents[1].name"
    assert "no loader reads .png" in bad_name.json()["error"]["message"]

    bad_pdf = post(
        api,
        "/v1/rag/manuals/ingest",
        {"documents": [{"name": "x.pdf", "content": "!!!", "encoding": "base64"}]},
    )
    assert bad_pdf.status_code == 422
    assert bad_pdf.json()["error"]["field"] == "documents[0].content"

    missing = post(api, "/v1/rag/manuals/ingest", {"documents": [{"name": "a.md"}]})
    assert missing.status_code == 422
    assert missing.json()["error"]["fields"][0]["field"] == "documents.0.content"

    huge = post(
        api,
        "/v1/rag/manuals/ingest",
        {"documents": [{"name": "a.txt", "content": "x" * 1_100_000}]},
    )
    assert huge.status_code == 413
