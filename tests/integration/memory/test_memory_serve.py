"""Memory through Ray Serve over real HTTP: multi-turn conversations on SQLite and
PostgreSQL, two replicas per agent, 40 concurrent turns of one session, semantic
recall on FAISS (one owner actor) with the offline embedder, the episodic log, and
the memory API routes, against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from ray import serve

from astromesh_ray.serve.embedders import ServeEmbedder
from astromesh_ray.serve.local import deploy_apps
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import POSTGRES_URL, REDIS_URL


def agent_doc(
    name: str,
    endpoint: str,
    memory: dict[str, Any],
    replicas: int = 1,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    doc = {
        "apiVersion": "astromesh/v1",
        "kind": "Agent",
        "metadata": {"name": name, "namespace": "memtest"},
        "spec": {
            "model": {"primary": {"provider": "openai_compat", "model": "m", "endpoint": endpoint}},
            "prompts": {"system": "Be brief."},
            "orchestration": {"max_iterations": 3, "timeout_seconds": 60},
            "memory": memory,
            "deployment": {"num_replicas": replicas, "max_ongoing_requests": 64},
            "tools": tools or [],
        },
    }
    return yaml.safe_dump(doc)


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("memconfig")
    (root / "runtime.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "astromesh/v1",
                "kind": "RuntimeConfig",
                "metadata": {"name": "memtest"},
                "spec": {
                    "memory": {
                        "data_dir": str(root / "data"),
                        "redis_url": REDIS_URL,
                        "postgres_url": POSTGRES_URL,
                    }
                },
            }
        )
    )
    agents = root / "agents"
    agents.mkdir()
    endpoint = llm.url
    (agents / "sq.agent.yaml").write_text(
        agent_doc(
            "sq",
            endpoint,
            {
                "conversational": {"backend": "sqlite", "max_turns": 2},
                "semantic": {
                    "backend": "faiss",
                    "index_turns": True,
                    "similarity_threshold": 0.35,
                    "max_results": 2,
                },
                "episodic": {"backend": "sqlite"},
            },
            replicas=2,
        )
    )
    (agents / "pg.agent.yaml").write_text(
        agent_doc(
            "pg",
            endpoint,
            {"conversational": {"backend": "postgres"}, "episodic": {"backend": "postgres"}},
            replicas=2,
        )
    )
    (agents / "rd.agent.yaml").write_text(
        agent_doc(
            "rd",
            endpoint,
            {"conversational": {"backend": "redis", "ttl": 600}},
            tools=[{"name": "calculator", "type": "builtin"}],
        )
    )
    (agents / "em.agent.yaml").write_text(
        agent_doc(
            "em",
            endpoint,
            {
                "semantic": {
                    "backend": "faiss",
                    "index_turns": True,
                    "scope": "agent",
                    "similarity_threshold": 0.3,
                    "embedding": {
                        "provider": "local",
                        "batch_size": 16,
                        "deployment": {"num_replicas": 1},
                    },
                }
            },
        )
    )
    apps = deploy_apps(load_config(root), config_dir=root)
    try:
        yield serve_url
    finally:
        for name in reversed(apps):
            serve.delete(name)


def run(api: str, agent: str, query: str, session: str) -> dict[str, Any]:
    reply = httpx.post(
        f"{api}/v1/agents/{agent}/run",
        json={"query": query, "session_id": session},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def sent(llm: ScriptedOpenAIServer) -> list[tuple[str, str]]:
    """The messages of the last request the model got."""
    return [(m["role"], m["content"]) for m in llm.requests[-1]["messages"]]


@pytest.mark.parametrize("agent", ["sq", "pg", "rd"])
def test_the_second_turn_carries_the_first_and_another_session_does_not(
    api: str, llm: ScriptedOpenAIServer, agent: str
) -> None:
    session, other = uuid.uuid4().hex, uuid.uuid4().hex
    llm.add_steps("Hello Ada.", "You are Ada.", "No idea.")
    run(api, agent, "I am Ada.", session)
    run(api, agent, "Who am I?", session)
    assert sent(llm)[0][0] == "system" and sent(llm)[0][1].startswith("Be brief.")
    assert sent(llm)[1:] == [
        ("user", "I am Ada."),
        ("assistant", "Hello Ada."),
        ("user", "Who am I?"),
    ]
    run(api, agent, "Who am I?", other)
    assert [m for m in sent(llm) if m[0] != "system"] == [("user", "Who am I?")]

    listed = httpx.get(f"{api}/v1/memory/{agent}/sessions", timeout=30).json()
    assert session in [s["session_id"] for s in listed["sessions"]]
    history = httpx.get(f"{api}/v1/memory/{agent}/sessions/{session}/history", timeout=30)
    assert history.status_code == 200, history.text
    turns = history.json()["turns"]
    assert [[m["content"] for m in t["messages"]] for t in turns] == [
        ["I am Ada.", "Hello Ada."],
        ["Who am I?", "You are Ada."],
    ]


@pytest.mark.parametrize("agent", ["sq", "pg"])
def test_forty_concurrent_turns_of_one_session_on_two_replicas(
    api: str, llm: ScriptedOpenAIServer, agent: str
) -> None:
    session = uuid.uuid4().hex
    answers = [f"answer {i}" for i in range(40)]
    queries = [f"question {i}" for i in range(40)]
    llm.add_steps(*answers)

    async def all_turns() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=180) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{api}/v1/agents/{agent}/run", json={"query": q, "session_id": session}
                    )
                    for q in queries
                )
            )

    replies = asyncio.run(all_turns())
    assert [r.status_code for r in replies] == [200] * 40, [r.text for r in replies][:3]
    replicas = {r.json()["where"]["replica"] for r in replies}
    assert len(replicas) == 2, replicas  # both replicas served turns of the session

    history = httpx.get(f"{api}/v1/memory/{agent}/sessions/{session}/history", timeout=30)
    turns = history.json()["turns"]
    assert [t["seq"] for t in turns] == list(range(1, 41))
    # Every turn is contiguous (its user message, then its answer) and every message
    # is there exactly once.
    assert all([m["role"] for m in t["messages"]] == ["user", "assistant"] for t in turns)
    assert sorted(t["messages"][0]["content"] for t in turns) == sorted(queries)
    assert sorted(t["messages"][1]["content"] for t in turns) == sorted(answers)
    by_run = {r.json()["run_id"]: r.json() for r in replies}
    for t in turns:  # each stored turn is the one its run answered
        assert t["messages"][1]["content"] == by_run[t["run_id"]]["answer"]


def test_semantic_recall_brings_back_what_the_window_dropped(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    session = uuid.uuid4().hex
    llm.add_steps("Noted.", "Fine.", "Okay.", "Teal.")
    run(api, "sq", "My favourite colour is teal.", session)
    run(api, "sq", "I live in Lisbon.", session)
    run(api, "sq", "I like trains.", session)
    run(api, "sq", "What is my favourite colour?", session)
    system = sent(llm)[0][1]
    # max_turns 2: the first turn is out of the window, but recall found it.
    assert ("user", "My favourite colour is teal.") not in sent(llm)
    assert "Relevant knowledge:" in system and "favourite colour is teal" in system

    found = httpx.post(
        f"{api}/v1/memory/sq/semantic/search",
        json={"query": "favourite colour", "session_id": session, "threshold": 0.2, "k": 5},
        timeout=60,
    )
    assert found.status_code == 200, found.text
    hits = found.json()["hits"]
    assert any("My favourite colour is teal." in h["text"] for h in hits), hits
    assert {h["metadata"]["session"] for h in hits} == {session}
    assert hits == sorted(hits, key=lambda h: -h["score"])
    # Semantic memory is per session here: another session recalls nothing of it.
    other = httpx.post(
        f"{api}/v1/memory/sq/semantic/search",
        json={"query": "favourite colour", "session_id": "someone-else", "threshold": 0.0},
        timeout=60,
    )
    assert other.json()["hits"] == []


def test_erasure_removes_a_session_from_every_backend(api: str, llm: ScriptedOpenAIServer) -> None:
    session = uuid.uuid4().hex
    llm.add_steps("Stored.")
    run(api, "sq", "My passport number is X123.", session)
    episodes = httpx.get(
        f"{api}/v1/memory/sq/episodes", params={"session_id": session}, timeout=30
    ).json()["episodes"]
    assert [e["type"] for e in episodes] == ["request", "model_call", "answer"]
    model_call = episodes[1]["data"]
    assert model_call["provider"] and model_call["usage"]["calls"] == 1
    assert model_call["duration_ms"] > 0

    erased = httpx.delete(f"{api}/v1/memory/sq/sessions/{session}", timeout=60)
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"] == {"conversation": 1, "semantic": 1, "episodic": 3}
    assert httpx.get(f"{api}/v1/memory/sq/sessions/{session}/history").status_code == 404
    left = httpx.get(f"{api}/v1/memory/sq/episodes", params={"session_id": session}).json()
    assert left["episodes"] == []
    hits = httpx.post(
        f"{api}/v1/memory/sq/semantic/search",
        json={"query": "passport number", "session_id": session, "threshold": 0.0},
        timeout=60,
    ).json()["hits"]
    assert hits == []


def test_fork_copies_a_session_to_a_new_id(api: str, llm: ScriptedOpenAIServer) -> None:
    session = uuid.uuid4().hex
    llm.add_steps("One.", "Two.")
    run(api, "pg", "first", session)
    forked = httpx.post(f"{api}/v1/memory/pg/sessions/{session}/fork", json={}, timeout=30)
    assert forked.status_code == 200, forked.text
    new = forked.json()["new_session_id"]
    assert new != session and forked.json()["turns"] == 1
    run(api, "pg", "second", new)
    assert [c for r, c in sent(llm) if r != "system"] == ["first", "One.", "second"]
    again = httpx.post(
        f"{api}/v1/memory/pg/sessions/{session}/fork", json={"new_session_id": new}, timeout=30
    )
    assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]


def test_one_agents_sessions_are_not_readable_through_another(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    session = uuid.uuid4().hex
    llm.add_steps("Secret kept.")
    run(api, "sq", "a secret", session)
    # The same session id through another agent's routes: that agent has no such session.
    for agent in ("pg", "rd"):
        reply = httpx.get(f"{api}/v1/memory/{agent}/sessions/{session}/history", timeout=30)
        assert reply.status_code == 404, reply.text
        assert session not in [
            s["session_id"]
            for s in httpx.get(f"{api}/v1/memory/{agent}/sessions", timeout=30).json()["sessions"]
        ]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/v1/memory/sq/sessions/..etc/history", None),
        ("get", "/v1/memory/sq/sessions/%2e%2e/history", None),
        ("get", "/v1/memory/sq/sessions/" + "x" * 200 + "/history", None),
        ("delete", "/v1/memory/sq/sessions/a%20b", None),
        ("post", "/v1/agents/sq/run", {"query": "hi", "session_id": "bad id"}),
        ("post", "/v1/memory/sq/semantic/search", {"query": "hi", "session_id": "no/slash"}),
        ("get", "/v1/memory/sq/episodes?type=nonsense", None),
        ("get", "/v1/memory/sq/sessions?limit=0", None),
    ],
)
def test_bad_memory_requests_are_422(api: str, method: str, path: str, body: Any) -> None:
    reply = httpx.request(method, api + path, json=body, timeout=30)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["code"] in ("invalid_request", "validation_error")


def test_a_traversal_in_a_session_path_reaches_no_route(api: str) -> None:
    reply = httpx.get(f"{api}/v1/memory/sq/sessions/..%2F..%2Fetc/history", timeout=30)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"


def test_memory_routes_of_an_unknown_agent_or_missing_memory_are_404(api: str) -> None:
    assert httpx.get(f"{api}/v1/memory/nobody/sessions", timeout=30).status_code == 404
    described = httpx.get(f"{api}/v1/agents/rd", timeout=30).json()
    assert described["memory"] == {
        "conversational": {"backend": "redis", "strategy": "sliding_window", "ttl": 600}
    }
    # `rd` has no episodic log and no semantic memory.
    assert httpx.get(f"{api}/v1/memory/rd/episodes", timeout=30).status_code == 404
    search = httpx.post(f"{api}/v1/memory/rd/semantic/search", json={"query": "x"}, timeout=30)
    assert search.status_code == 404


def test_an_embedder_with_a_deployment_is_one_batching_application(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    apps = serve.status().applications
    (name,) = [n for n in apps if n.startswith("embedder-local-")]
    assert apps[name].status == "RUNNING"
    session = uuid.uuid4().hex
    llm.add_steps("Stored.", "Blue.")
    run(api, "em", "The launch code is blue.", session)
    run(api, "em", "What is the launch code?", uuid.uuid4().hex)
    # Indexed and recalled through the embedder's own application.
    assert "The launch code is blue." in sent(llm)[0][1]

    embedder = ServeEmbedder(name)

    async def many() -> list[list[list[float]]]:
        return await asyncio.gather(*(embedder.embed([f"text {i}"]) for i in range(24)))

    vectors = asyncio.run(many())
    assert [len(v) for v in vectors] == [1] * 24 and {len(v[0]) for v in vectors} == {384}
    stats = serve.get_app_handle(name).stats.remote().result()
    assert stats["where"]["app"] == name
    # Concurrent calls shared batches (16 calls at most per batch, from the YAML).
    assert max(stats["batches"]) >= 2 and max(stats["batches"]) <= 16


def test_a_streamed_turn_is_stored_too(api: str, llm: ScriptedOpenAIServer) -> None:
    session = uuid.uuid4().hex
    llm.add_steps("Streamed answer.")
    with httpx.stream(
        "POST",
        f"{api}/v1/agents/rd/stream",
        json={"query": "stream me", "session_id": session},
        timeout=60,
    ) as reply:
        assert reply.status_code == 200
        events = [line for line in reply.iter_lines() if line.startswith("event: ")]
    assert events[-1] == "event: run_finished"
    history = httpx.get(f"{api}/v1/memory/rd/sessions/{session}/history", timeout=30).json()
    assert [[m["content"] for m in t["messages"]] for t in history["turns"]] == [
        ["stream me", "Streamed answer."]
    ]


def test_a_stored_tool_turn_replays_as_valid_openai_messages(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    session = uuid.uuid4().hex
    llm.add_steps(
        {
            "tool_calls": [
                {"id": "call_7", "name": "calculator", "arguments": {"expression": "6*7"}}
            ]
        },
        "It is 42.",
        "Yes, 42.",
    )
    run(api, "rd", "What is 6*7?", session)
    run(api, "rd", "Sure?", session)
    replayed = llm.requests[-1]["messages"]
    assert [m["role"] for m in replayed] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    call = replayed[2]["tool_calls"][0]
    assert call["id"] == "call_7" and call["type"] == "function"
    assert call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "6*7"}
    # The tool result answers that very call, as the OpenAI API requires.
    assert replayed[3]["tool_call_id"] == "call_7" and replayed[3]["content"] == "42"
    assert replayed[4]["content"] == "It is 42."
