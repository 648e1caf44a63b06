"""Tool call ids on the OpenAI wire (``openai_wire.wire_messages``): each sent once
per request, whatever provider made the history.

Ollama (and llama.cpp) give calls no ids; ours number them per answer, so a
conversation with several such answers repeats ``call_0``, which strict servers (the
loopback ``ScriptedOpenAIServer`` among them, ``testing/chat_checks.py``) refuse.
"""

from __future__ import annotations

from typing import Any

from astromesh_ray.core.messages import CompletionRequest, Message, ToolCall
from astromesh_ray.core.providers.openai_wire import OpenAIChatWire, wire_messages
from astromesh_ray.testing.chat_checks import openai_messages_refusal


def _asks(*calls: tuple[str, str]) -> Message:
    return Message(
        role="assistant",
        tool_calls=[ToolCall(id=i, name=n, arguments={"x": 1}) for i, n in calls],
    )


def _answer(call_id: str, name: str, content: str) -> Message:
    return Message(role="tool", content=content, tool_call_id=call_id, name=name)


def _ids(wire: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for m in wire:
        if m.get("tool_calls"):
            out.append(("calls", *(c["id"] for c in m["tool_calls"])))
        elif m["role"] == "tool":
            out.append(("tool", m["tool_call_id"], m["content"]))
    return out


def test_ids_repeated_across_answers_go_out_renamed_with_their_results() -> None:
    history = [
        Message(role="user", content="go"),
        _asks(("call_0", "calculator")),  # an Ollama answer
        _answer("call_0", "calculator", "42"),
        _asks(("call_0", "search"), ("call_1", "calculator")),  # the next one
        _answer("call_1", "calculator", "7"),
        _answer("call_0", "search", "found"),
        _asks(
            ("call_0", "transfer_to_b"),
        ),
        _answer("call_0", "transfer_to_b", "Transferred"),
        Message(role="user", content="again"),
        _asks(("call_0_2", "calculator")),  # a rename never takes an id in the request
        _answer("call_0_2", "calculator", "1"),
    ]
    wire = wire_messages(history)
    assert _ids(wire) == [
        ("calls", "call_0"),  # the first use keeps its id
        ("tool", "call_0", "42"),
        ("calls", "call_0_3", "call_1"),
        ("tool", "call_1", "7"),
        ("tool", "call_0_3", "found"),
        ("calls", "call_0_4"),
        ("tool", "call_0_4", "Transferred"),
        ("calls", "call_0_2"),
        ("tool", "call_0_2", "1"),
    ]
    assert openai_messages_refusal(wire) is None
    # The history is the engine's: it is not changed.
    assert history[3].tool_calls[0].id == "call_0" and history[5].tool_call_id == "call_0"


def test_unique_ids_go_out_unchanged() -> None:
    history = [
        Message(role="user", content="go"),
        _asks(("call_abc", "calculator"), ("call_def", "calculator")),
        _answer("call_abc", "calculator", "1"),
        _answer("call_def", "calculator", "2"),
        _asks(
            ("call_0", "transfer_to_b"),
        ),
        _answer("call_0", "transfer_to_b", "Transferred"),
    ]
    body = OpenAIChatWire(name="o", model="m", source="s").body(
        CompletionRequest(messages=history), stream=False
    )
    assert _ids(body["messages"]) == [
        ("calls", "call_abc", "call_def"),
        ("tool", "call_abc", "1"),
        ("tool", "call_def", "2"),
        ("calls", "call_0"),
        ("tool", "call_0", "Transferred"),
    ]


def test_one_answer_repeating_an_id_gets_one_per_call() -> None:
    # A server that numbered two calls of one answer alike: results pair in order.
    history = [
        Message(role="user", content="go"),
        _asks(("dup", "calculator"), ("dup", "search")),
        _answer("dup", "calculator", "1"),
        _answer("dup", "search", "2"),
    ]
    wire = wire_messages(history)
    assert _ids(wire) == [("calls", "dup", "dup_2"), ("tool", "dup", "1"), ("tool", "dup_2", "2")]
    assert openai_messages_refusal(wire) is None
