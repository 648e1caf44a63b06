"""A swarm whose members speak different wire formats: one on the OpenAI API, one on
Ollama's ``/api/chat``, each over its loopback server (which refuses, as the real API
does, a history whose tool results do not follow their calls: ``chat_checks.py``).

The conversation crosses the handoff in both directions: each member's tool call
and result (and its handoff call and result) reach the other member's API in order,
in that API's own format, and every request is accepted.  No Ray.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from astromesh_ray.core.build import LocalAgents
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import HandoffStep, RunFinished, Token
from astromesh_ray.spec import load_agent
from astromesh_ray.testing import ScriptedOllamaServer, ScriptedOpenAIServer

OLLAMA_MODEL = "llama3.1:8b"
OPENAI_MODEL = "gpt-4o-mini"


@pytest.fixture
def openai() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(model=OPENAI_MODEL) as server:
        yield server


@pytest.fixture
def ollama() -> Iterator[ScriptedOllamaServer]:
    with ScriptedOllamaServer(models=[OLLAMA_MODEL]) as server:
        yield server


def _member(name: str, model: dict[str, Any], prompt: str) -> dict[str, Any]:
    return {
        "apiVersion": "astromesh/v1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {
            "model": {"primary": model},
            "prompts": {"system": prompt},
            "orchestration": {"pattern": "react", "max_iterations": 4},
            "tools": [{"name": "calculator", "type": "builtin"}],
        },
    }


def _agents(
    tmp_path: Path, openai: ScriptedOpenAIServer, ollama: ScriptedOllamaServer, first: str
) -> LocalAgents:
    """``desk-swarm`` with members ``openai-desk`` and ``ollama-desk`` (``first``
    starts), written as YAML files and loaded by the real loader."""
    members = {
        "openai-desk": _member(
            "openai-desk",
            {"provider": "openai_compat", "model": OPENAI_MODEL, "endpoint": openai.url},
            "You are the OpenAI desk.",
        ),
        "ollama-desk": _member(
            "ollama-desk",
            {"provider": "ollama", "model": OLLAMA_MODEL, "endpoint": ollama.url},
            "You are the Ollama desk.",
        ),
    }
    order = [first, *(m for m in members if m != first)]
    swarm = {
        "apiVersion": "astromesh/v1",
        "kind": "Agent",
        "metadata": {"name": "desk-swarm"},
        "spec": {
            "model": {"primary": {"provider": "ollama", "model": OLLAMA_MODEL}},
            "orchestration": {"pattern": "swarm", "max_iterations": 8, "members": order},
        },
    }
    agents = {}
    for doc in (swarm, *members.values()):
        path = tmp_path / f"{doc['metadata']['name']}.agent.yaml"
        path.write_text(yaml.safe_dump(doc))
        agents[doc["metadata"]["name"]] = load_agent(path)
    return LocalAgents(agents)


async def _run(local: LocalAgents, query: str) -> Any:
    try:
        return await (await local.runtime("desk-swarm")).run(RunRequest(query=query))
    finally:
        await local.aclose()


def _calc(expression: str) -> dict[str, Any]:
    return {"tool_calls": [{"name": "calculator", "arguments": {"expression": expression}}]}


def _transfer(member: str, reason: str) -> dict[str, Any]:
    name = "transfer_to_" + member.replace("-", "_")
    return {"tool_calls": [{"name": name, "arguments": {"reason": reason}}]}


def _ollama_view(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What an Ollama request's conversation says, without system prompts."""
    out: list[tuple[Any, ...]] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]]
            out.append(("assistant", calls))
        elif m["role"] == "tool":
            out.append(("tool", m["tool_name"], m["content"]))
        elif m["role"] != "system":
            out.append((m["role"], m["content"]))
    return out


def _openai_view(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What an OpenAI request's conversation says, without system prompts; call
    arguments decoded (they travel as JSON strings)."""
    out: list[tuple[Any, ...]] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [
                (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in m["tool_calls"]
            ]
            out.append(("assistant", calls))
        elif m["role"] == "tool":
            out.append(("tool", m["tool_call_id"], m["content"]))
        elif m["role"] != "system":
            out.append((m["role"], m["content"]))
    return out


async def test_openai_member_hands_off_to_ollama_and_back(
    tmp_path: Path, openai: ScriptedOpenAIServer, ollama: ScriptedOllamaServer
) -> None:
    openai.add_steps(
        _calc("6*7"),
        _transfer("ollama-desk", "needs the Ollama desk"),
        "Six times seven, plus one, is 43.",
    )
    ollama.add_steps(_calc("42+1"), _transfer("openai-desk", "back to you"))
    local = _agents(tmp_path, openai, ollama, first="openai-desk")
    result = await _run(local, "What is 6*7+1?")

    assert result.status == "completed"
    assert result.answer == "Six times seven, plus one, is 43."
    assert openai.refused == [] and ollama.refused == []
    openai.assert_consumed()
    ollama.assert_consumed()
    assert [r["model"] for r in openai.requests] == [OPENAI_MODEL] * 3
    # Ollama got the OpenAI member's calls (arguments as objects) and their results,
    # in order, paired by tool name; then its own.
    openai_turn = [
        ("user", "What is 6*7+1?"),
        ("assistant", [("calculator", {"expression": "6*7"})]),
        ("tool", "calculator", "42"),
        ("assistant", [("transfer_to_ollama_desk", {"reason": "needs the Ollama desk"})]),
        ("tool", "transfer_to_ollama_desk", "Transferred to ollama-desk: it answers from here on."),
    ]
    first, second = (_ollama_view(r["messages"]) for r in ollama.requests)
    assert first == openai_turn
    assert second == [
        *openai_turn,
        ("assistant", [("calculator", {"expression": "42+1"})]),
        ("tool", "calculator", "43"),
    ]
    assert ollama.requests[0]["messages"][0] == {
        "role": "system",
        "content": "You are the Ollama desk.",
    }
    # Back on OpenAI: the whole conversation, Ollama's calls with ids of their own
    # (Ollama gives none; each of its answers numbers its calls from call_0).
    back = openai.requests[2]["messages"]
    assert back[0] == {"role": "system", "content": "You are the OpenAI desk."}
    view = _openai_view(back)
    own = [i for i, m in enumerate(view) if m[0] == "assistant"]
    ids = [call[0] for i in own for call in view[i][1]]
    assert len(set(ids)) == len(ids) == 4
    assert [(m[0], *m[1][0][1:]) if m[0] == "assistant" else m for m in view] == [
        ("user", "What is 6*7+1?"),
        ("assistant", "calculator", {"expression": "6*7"}),
        ("tool", ids[0], "42"),
        ("assistant", "transfer_to_ollama_desk", {"reason": "needs the Ollama desk"}),
        ("tool", ids[1], "Transferred to ollama-desk: it answers from here on."),
        ("assistant", "calculator", {"expression": "42+1"}),
        ("tool", ids[2], "43"),
        ("assistant", "transfer_to_openai_desk", {"reason": "back to you"}),
        ("tool", ids[3], "Transferred to openai-desk: it answers from here on."),
    ]
    assert ids[2:] == ["call_0", "call_0_2"]
    handoffs = [(s.to_agent, s.reason) for s in result.steps if isinstance(s, HandoffStep)]
    assert handoffs == [("ollama-desk", "needs the Ollama desk"), ("openai-desk", "back to you")]


async def test_ollama_member_hands_off_to_openai(
    tmp_path: Path, openai: ScriptedOpenAIServer, ollama: ScriptedOllamaServer
) -> None:
    ollama.add_steps(_calc("2**10"), _transfer("openai-desk", "OpenAI finishes"))
    openai.add_steps(_calc("1024-24"), "2**10 - 24 is 1000.")
    local = _agents(tmp_path, openai, ollama, first="ollama-desk")
    result = await _run(local, "What is 2**10 - 24?")

    assert result.status == "completed" and result.answer == "2**10 - 24 is 1000."
    assert openai.refused == [] and ollama.refused == []
    openai.assert_consumed()
    ollama.assert_consumed()
    ollama_turn = [
        ("user", "What is 2**10 - 24?"),
        ("assistant", [("call_0", "calculator", {"expression": "2**10"})]),
        ("tool", "call_0", "1024"),
        # Ollama numbered this call call_0 too: it goes out to OpenAI renamed.
        ("assistant", [("call_0_2", "transfer_to_openai_desk", {"reason": "OpenAI finishes"})]),
        ("tool", "call_0_2", "Transferred to openai-desk: it answers from here on."),
    ]
    first, second = (_openai_view(r["messages"]) for r in openai.requests)
    assert first == ollama_turn
    openai_call = second[len(ollama_turn)][1][0]
    assert second == [
        *ollama_turn,
        ("assistant", [(openai_call[0], "calculator", {"expression": "1024-24"})]),
        ("tool", openai_call[0], "1000"),
    ]
    assert openai.requests[0]["messages"][0]["content"] == "You are the OpenAI desk."


def test_each_server_refuses_a_tool_result_without_its_call(
    openai: ScriptedOpenAIServer, ollama: ScriptedOllamaServer
) -> None:
    """A history only a bug would produce: the tool result of a call that is not in
    it.  Each server answers its API's 400 and consumes no step."""
    openai.add_steps("never")
    ollama.add_steps("never")
    orphan = [
        {"role": "user", "content": "What is 6*7?"},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    response = httpx.post(
        f"{openai.url}/chat/completions", json={"model": OPENAI_MODEL, "messages": orphan}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Invalid parameter: messages with role 'tool' must be a response to a "
            "preceeding message with 'tool_calls'.",
            "type": "invalid_request_error",
            "param": "messages.[1].role",
            "code": None,
        }
    }
    orphan[1] = {"role": "tool", "tool_name": "calculator", "content": "42"}
    response = httpx.post(
        f"{ollama.url}/api/chat",
        json={"model": OLLAMA_MODEL, "messages": orphan, "stream": False},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith('invalid message at index 1: a message with role "tool" must follow')
    assert openai.refused and ollama.refused
    assert openai.remaining == ollama.remaining == 1


def test_openai_server_refuses_a_call_left_unanswered(openai: ScriptedOpenAIServer) -> None:
    """The other half: a tool call whose result is missing when the user speaks again."""
    openai.add_steps("never")
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "1+1"}'},
    }
    messages = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "user", "content": "and?"},
    ]
    response = httpx.post(
        f"{openai.url}/chat/completions", json={"model": OPENAI_MODEL, "messages": messages}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        "call_9"
    )
    assert openai.remaining == 1


async def test_a_streamed_swarm_crosses_both_wires(
    tmp_path: Path, openai: ScriptedOpenAIServer, ollama: ScriptedOllamaServer
) -> None:
    """The same handoffs with every model call streamed (SSE from OpenAI, NDJSON from
    Ollama): the last speaker's tokens are the answer."""
    openai.add_steps(_calc("6*7"), _transfer("ollama-desk", "over to you"))
    ollama.add_steps(_calc("42+1"), "It is 43.")
    local = _agents(tmp_path, openai, ollama, first="openai-desk")
    try:
        runtime = await local.runtime("desk-swarm")
        events = [e async for e in runtime.stream(RunRequest(query="What is 6*7+1?"))]
    finally:
        await local.aclose()
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.result.answer == "It is 43."
    tokens = "".join(e.text for e in events if isinstance(e, Token) and e.channel == "answer")
    assert tokens == "It is 43."
    assert openai.refused == [] and ollama.refused == []
    openai.assert_consumed()
    ollama.assert_consumed()
    assert all(r["stream"] is True for r in [*openai.requests, *ollama.requests])
    assert _ollama_view(ollama.requests[1]["messages"])[1:] == [
        ("assistant", [("calculator", {"expression": "6*7"})]),
        ("tool", "calculator", "42"),
        ("assistant", [("transfer_to_ollama_desk", {"reason": "over to you"})]),
        ("tool", "transfer_to_ollama_desk", "Transferred to ollama-desk: it answers from here on."),
        ("assistant", [("calculator", {"expression": "42+1"})]),
        ("tool", "calculator", "43"),
    ]
