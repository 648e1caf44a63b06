"""AG-UI on real Serve over HTTP: ``POST /v1/agui/{name}`` with a ``RunAgentInput``,
against a loopback OpenAI-compatible server that streams word by word.  Every SSE
event is parsed with the ``ag_ui.core`` Event union and the stream checked against
the protocol's sequence rules (``check_sequence``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ag_ui.core import Event, EventType
from pydantic import TypeAdapter
from ray import serve

from astromesh_ray.testing import ScriptedOpenAIServer
from tests.unit.serve.test_agui_events import check_sequence

from .conftest import agent_yaml, deployed

pytestmark = pytest.mark.integration

EVENTS: TypeAdapter[Any] = TypeAdapter(Event)
T = EventType


HELPER = """\
  prompts: {system: "You help {{ customer | default('everyone') }}."}
  tools:
    - {name: calculator, type: builtin}
"""
KEEPER = """\
  prompts: {system: "You remember."}
  memory:
    conversational: {backend: in_memory}
"""
PARTS = """\
  tools:
    - name: search_parts
      type: client
      description: Search parts inventory
      parameters:
        part_type: {type: string}
    - name: quote
      type: internal
      function: "tests.integration.tool_functions:quote"
      requires_approval: true
"""


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("agui")
    (root / "agents").mkdir()
    for name, body in (("helper", HELPER), ("keeper", KEEPER), ("parts", PARTS)):
        (root / "agents" / f"{name}.agent.yaml").write_text(agent_yaml(name, llm.url, body))
    with deployed(root) as apps:
        yield serve_url
        for name in apps:
            serve.delete(name, _blocking=False)


def _input(text: str = "Hi", thread: str = "thread-1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "threadId": thread,
        "runId": "client-run-1",
        "messages": [{"id": "u1", "role": "user", "content": text}],
    }
    body.update(fields)
    return body


def _run(
    api: str, agent: str, body: dict[str, Any], calls_before: tuple[str, ...] = ()
) -> list[Any]:
    """The run's AG-UI events, each parsed with the ag_ui.core models."""
    reply = httpx.post(f"{api}/v1/agui/{agent}", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in reply.text.split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") for b in blocks), blocks[:3]
    events = [EVENTS.validate_python(json.loads(b[len("data: ") :])) for b in blocks]
    check_sequence(events, calls_before)
    return events


def _of(events: list[Any], *kinds: EventType) -> list[Any]:
    return [e for e in events if e.type in kinds]


def _sent(llm: ScriptedOpenAIServer) -> list[tuple[str, Any]]:
    return [(m["role"], m.get("content")) for m in llm.requests[-1]["messages"]]


def test_a_streamed_answer_is_one_text_message_a_delta_per_word(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    answer = "Paris is the capital of France."
    llm.add_steps(answer)
    events = _run(api, "helper", _input("Capital of France?", state={"cart": ["P1"]}))
    started, finished = events[0], events[-1]
    assert (started.thread_id, started.run_id, started.protocol_version) == (
        "thread-1",
        "client-run-1",
        "1.0",
    )
    assert finished.type == T.RUN_FINISHED and finished.run_id == "client-run-1"
    ours = finished.result["run_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", ours) and started.metadata["astromesh"]["run_id"] == ours
    assert finished.result["answer"] == answer and finished.result["session_id"] == "thread-1"
    [start] = _of(events, T.TEXT_MESSAGE_START)
    deltas = _of(events, T.TEXT_MESSAGE_CONTENT)
    assert len(deltas) >= 2 and {d.message_id for d in deltas} == {start.message_id}
    assert "".join(d.delta for d in deltas) == answer
    assert llm.requests[-1]["stream"] is True
    usage = finished.usage[0]
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens > 0
    state = _of(events, T.STATE_SNAPSHOT)[-1].snapshot
    assert state["cart"] == ["P1"]
    assert state["astromesh"]["run_id"] == ours and state["astromesh"]["status"] == "completed"
    assert state["astromesh"]["iterations"] == 1
    llm.assert_consumed()


def test_a_tool_call_run_shows_the_call_and_its_result(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "(2+3)*4"}}]},
        "It is 20.",
    )
    events = _run(api, "helper", _input("What is (2+3)*4?"))
    [start] = _of(events, T.TOOL_CALL_START)
    [args] = _of(events, T.TOOL_CALL_ARGS)
    [end] = _of(events, T.TOOL_CALL_END)
    [result] = _of(events, T.TOOL_CALL_RESULT)
    assert start.tool_call_name == "calculator" and start.parent_message_id
    assert start.tool_call_id == args.tool_call_id == end.tool_call_id == result.tool_call_id
    assert json.loads(args.delta) == {"expression": "(2+3)*4"}
    assert result.content == "20"
    kinds = [e.type for e in events]
    assert kinds.index(T.TOOL_CALL_RESULT) < kinds.index(T.TEXT_MESSAGE_START)
    text = "".join(e.delta for e in _of(events, T.TEXT_MESSAGE_CONTENT))
    assert text == "It is 20." == events[-1].result["answer"]
    # The model read the result as the tool message answering its call.
    assert llm.requests[-1]["messages"][-1]["tool_call_id"] == start.tool_call_id
    llm.assert_consumed()


def test_earlier_messages_context_and_props_reach_the_model(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("You are Ada, in Lisbon.")
    body = _input(
        "Who am I?",
        messages=[
            {"id": "u1", "role": "user", "content": [{"type": "text", "text": "I am Ada."}]},
            {"id": "a1", "role": "assistant", "content": "Hello Ada."},
            {"id": "r1", "role": "reasoning", "content": "greet her"},
            {"id": "u2", "role": "user", "content": "Who am I?"},
        ],
        context=[{"description": "The user's city", "value": "Lisbon"}],
        forwardedProps={"customer": "ACME"},
    )
    _run(api, "helper", body)
    assert _sent(llm) == [
        ("system", "You help ACME."),
        ("system", "Context from the application:\n\nThe user's city:\nLisbon"),
        ("user", "I am Ada."),
        ("assistant", "Hello Ada."),
        ("user", "Who am I?"),
    ]
    llm.assert_consumed()


def test_an_agent_with_memory_gets_the_thread_from_its_memory(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("Hello Ada.", "You are Ada.")
    _run(api, "keeper", _input("I am Ada.", thread="keeper-thread"))
    second = _input(
        "Who am I?",
        thread="keeper-thread",
        messages=[
            {"id": "u1", "role": "user", "content": "I am Ada."},
            {"id": "a1", "role": "assistant", "content": "Hello Ada."},
            {"id": "u2", "role": "user", "content": "Who am I?"},
        ],
    )
    _run(api, "keeper", second)
    # The stored turn once (memory), not twice (memory and the client's messages).
    assert _sent(llm) == [
        ("system", "You remember."),
        ("user", "I am Ada."),
        ("assistant", "Hello Ada."),
        ("user", "Who am I?"),
    ]
    llm.assert_consumed()


def test_a_client_tool_interrupts_the_run_and_resume_answers_it(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "search_parts", "arguments": {"part_type": "brake pads"}}]},
        "Two options in stock.",
    )
    first = _run(api, "parts", _input("brake pads?", thread="parts-1"))
    [start] = _of(first, T.TOOL_CALL_START)
    assert start.tool_call_name == "search_parts"
    outcome = first[-1].outcome
    assert outcome.type == "interrupt"
    [interrupt] = outcome.interrupts
    ours = first[-1].result["run_id"]
    assert interrupt.id == f"{ours}:{start.tool_call_id}"
    assert (interrupt.reason, interrupt.tool_call_id) == ("client_tool", start.tool_call_id)
    assert first[-1].result["status"] == "requires_action"
    resume = [{"interruptId": interrupt.id, "status": "resolved", "payload": {"parts": ["P1"]}}]
    second = _run(
        api,
        "parts",
        _input("brake pads?", thread="parts-1", runId="client-run-2", resume=resume),
        calls_before=(start.tool_call_id,),
    )
    [result] = _of(second, T.TOOL_CALL_RESULT)
    assert (result.tool_call_id, result.content) == (start.tool_call_id, '{"parts":["P1"]}')
    assert second[-1].outcome.type == "success" and second[-1].result["run_id"] == ours
    assert "".join(e.delta for e in _of(second, T.TEXT_MESSAGE_CONTENT)) == "Two options in stock."
    assert llm.requests[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": start.tool_call_id,
        "content": '{"parts":["P1"]}',
    }
    # An interrupt is answered once.
    again = httpx.post(
        f"{api}/v1/agui/parts", json=_input(thread="parts-1", resume=resume), timeout=60
    )
    assert again.status_code == 404 and again.json()["error"]["code"] == "run_not_found"
    llm.assert_consumed()


def test_an_approval_refused_through_resume_reaches_the_model(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "quote", "arguments": {"part": "P1", "quantity": 2}}]},
        "Understood, no quote.",
    )
    first = _run(api, "parts", _input("quote P1", thread="parts-2"))
    [interrupt] = first[-1].outcome.interrupts
    assert interrupt.reason == "tool_approval"
    assert interrupt.response_schema["required"] == ["approved"]
    wrong_thread = httpx.post(
        f"{api}/v1/agui/parts",
        json=_input(thread="parts-3", resume=[{"interruptId": interrupt.id, "status": "resolved"}]),
        timeout=60,
    )
    assert wrong_thread.status_code == 422
    assert wrong_thread.json()["error"]["field"] == "threadId"
    no_payload = httpx.post(
        f"{api}/v1/agui/parts",
        json=_input(thread="parts-2", resume=[{"interruptId": interrupt.id, "status": "resolved"}]),
        timeout=60,
    )
    assert no_payload.status_code == 422
    assert no_payload.json()["error"]["field"] == "resume[0].payload"
    refusal = {"approved": False, "reason": "too pricey"}
    resume = [{"interruptId": interrupt.id, "status": "resolved", "payload": refusal}]
    second = _run(
        api,
        "parts",
        _input(thread="parts-2", resume=resume),
        calls_before=(interrupt.tool_call_id,),
    )
    [result] = _of(second, T.TOOL_CALL_RESULT)
    assert "too pricey" in result.content
    assert result.metadata["astromesh"]["is_error"] is True
    assert "too pricey" in llm.requests[-1]["messages"][-1]["content"]
    assert second[-1].result["answer"] == "Understood, no quote."
    llm.assert_consumed()


def test_a_failure_after_the_start_is_a_run_error_event(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps({"status": 400, "error": "bad request upstream"})
    events = _run(api, "helper", _input())
    assert events[-1].type == T.RUN_ERROR and events[-1].code == "provider_error"
    assert "bad request upstream" in events[-1].message
    llm.assert_consumed()


def test_an_unknown_agent_is_404(api: str) -> None:
    reply = httpx.post(f"{api}/v1/agui/nobody", json=_input(), timeout=30)
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "agent_not_found"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"messages": None}, "messages"),
        ({"threadId": "not a session id!"}, "threadId"),
        ({"tools": [{"name": "search", "description": "web search"}]}, "tools"),
        ({"messages": [{"id": "a", "role": "assistant", "content": "hi"}]}, "messages"),
        ({"surprise": 1}, "surprise"),
        ({"state": [1, 2]}, "state"),
        ({"forwardedProps": {"query": "x"}}, "forwardedProps.query"),
        (
            {
                "messages": [
                    {
                        "id": "u",
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "url", "value": "http://x/y.png"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        ({"resume": [{"interruptId": "nope", "status": "resolved"}]}, "resume[0].interruptId"),
    ],
)
def test_bad_input_is_422_naming_the_field(api: str, change: dict[str, Any], field: str) -> None:
    body = {**_input(), **change}
    body = {k: v for k, v in body.items() if v is not None}
    reply = httpx.post(f"{api}/v1/agui/helper", json=body, timeout=30)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_request" and error["field"] == field, error
