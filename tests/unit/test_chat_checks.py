"""The conversation checks of the loopback chat servers (``testing/chat_checks.py``):
what OpenAI and Ollama refuse, worded as each API words it."""

from __future__ import annotations

from typing import Any

import pytest

from astromesh_ray.testing.chat_checks import (
    SequenceProblem,
    ollama_decode_error,
    ollama_sequence_error,
    openai_messages_refusal,
    openai_response_format_refusal,
    tool_sequence_problem,
)

USER = {"role": "user", "content": "weather in Paris and Rome?"}


def _call(call_id: str, name: str = "get_weather", arguments: Any = '{"city": "Paris"}') -> Any:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _asks(*ids: str) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "tool_calls": [_call(i) for i in ids]}


def _answer(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "21"}


def test_a_valid_tool_loop_passes_both_apis() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        USER,
        _asks("a", "b"),
        _answer("b"),  # any order within the block
        _answer("a"),
        _asks("c"),
        _answer("c"),
        {"role": "assistant", "content": "21 and 21"},
        {"role": "user", "content": "thanks"},
    ]
    assert tool_sequence_problem(messages, by_id=True) is None
    assert openai_messages_refusal(messages) is None
    assert ollama_sequence_error(messages) is None


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([USER, _answer("a")], SequenceProblem("orphan", 1)),
        # A user message between the call and its result breaks the block.
        ([USER, _asks("a"), USER, _answer("a")], SequenceProblem("unanswered", 1, ("a",))),
        ([USER, _asks("a", "b"), _answer("a")], SequenceProblem("unanswered", 1, ("b",))),
        ([USER, _asks("a"), _answer("z")], SequenceProblem("unknown", 2, ("z",))),
        (
            [USER, _asks("a", "b"), _answer("a"), _answer("a")],
            SequenceProblem("duplicate", 3, ("a",), 2),
        ),
        # An id answered in an earlier block, reused: strict servers refuse it too.
        (
            [USER, _asks("a"), _answer("a"), _asks("a"), _answer("a")],
            SequenceProblem("duplicate", 4, ("a",), 2),
        ),
    ],
)  # fmt: skip
def test_tool_sequence_problems(messages: list[Any], problem: SequenceProblem) -> None:
    assert tool_sequence_problem(messages, by_id=True) == problem


def test_without_ids_only_position_counts() -> None:
    # Ollama pairs results by tool name: ids, and unanswered calls, are not its concern.
    assert tool_sequence_problem([USER, _asks("a"), _answer("z")], by_id=False) is None
    assert tool_sequence_problem([USER, _asks("a"), USER], by_id=False) is None
    assert tool_sequence_problem([USER, _asks("a"), USER, _answer("a")], by_id=False) == (
        SequenceProblem("orphan", 3)
    )


def test_openai_words_each_problem_as_openai_does() -> None:
    orphan = openai_messages_refusal([USER, _answer("a")])
    assert orphan is not None and orphan.status == 400
    assert orphan.body() == {
        "error": {
            "message": "Invalid parameter: messages with role 'tool' must be a response to a "
            "preceeding message with 'tool_calls'.",
            "type": "invalid_request_error",
            "param": "messages.[1].role",
            "code": None,
        }
    }
    unanswered = openai_messages_refusal([USER, _asks("a", "b", "c"), _answer("b")])
    assert unanswered is not None and unanswered.param == "messages.[1].role"
    assert unanswered.message == (
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        "a, c"
    )
    twice = openai_messages_refusal([USER, _asks("a"), _answer("a"), _asks("a"), _answer("a")])
    assert twice is not None and twice.param == "messages.[4].tool_call_id"
    assert twice.message == (
        "Invalid parameter: Duplicate value for 'tool_call_id' of 'a', "
        "in messages[2] and messages[4]."
    )


@pytest.mark.parametrize(
    ("message", "text", "param"),
    [
        (
            {"role": "tool", "content": "21"},
            "Missing required parameter: 'messages[1].tool_call_id'.",
            "messages[1].tool_call_id",
        ),
        (
            {"role": "assistant", "tool_calls": [_call("a", arguments={"city": "Paris"})]},
            "Invalid type for 'messages[1].tool_calls[0].function.arguments': expected a "
            "string, but got an object instead.",
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]},
            "Missing required parameter: 'messages[1].tool_calls[0].id'.",
            "messages[1].tool_calls[0].id",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": []},
            "Invalid 'messages[1].tool_calls': empty array. Expected an array with minimum "
            "length 1, but got an empty array instead.",
            "messages[1].tool_calls",
        ),
        ({"content": "hi"}, "Missing required parameter: 'messages[1].role'.", "messages[1].role"),
    ],
)
def test_openai_refuses_malformed_messages(message: dict[str, Any], text: str, param: str) -> None:
    refusal = openai_messages_refusal([USER, message])
    assert refusal is not None
    assert (refusal.message, refusal.param, refusal.status) == (text, param, 400)


def test_openai_response_format() -> None:
    assert openai_response_format_refusal(None) is None
    assert openai_response_format_refusal({"type": "json_object"}) is None
    refusal = openai_response_format_refusal({"type": "json_schema", "json_schema": {}})
    assert refusal is not None and refusal.code == "missing_required_parameter"
    assert refusal.message == "Missing required parameter: 'response_format.json_schema.name'."


def test_ollama_errors() -> None:
    string_arguments = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    }
    decode = ollama_decode_error([USER, string_arguments])
    assert decode is not None and decode.startswith("json: cannot unmarshal string")
    assert ollama_decode_error([USER]) is None
    orphan = [USER, {"role": "tool", "tool_name": "get_weather", "content": "21"}]
    assert ollama_sequence_error(orphan) == (
        'invalid message at index 1: a message with role "tool" must follow an assistant '
        'message with "tool_calls" or another "tool" message'
    )
