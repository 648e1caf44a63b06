"""The OpenAI chat wire format over runs: request parsing, completions, chunks and
errors.  Chunks and completions are validated against the official ``openai``
client's own types (strict validation, stricter than the client's parsing)."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from astromesh_ray.core.events import (
    Delegate,
    ModelCall,
    RunFinished,
    RunResult,
    RunStarted,
    Token,
    ToolCallEvent,
    ToolResultEvent,
    ToolStep,
    event_to_dict,
)
from astromesh_ray.core.messages import Message, ToolCall, Usage
from astromesh_ray.errors import (
    AgentNotFound,
    AgentUnavailable,
    BudgetExceeded,
    InvalidRequest,
    MemoryUnavailable,
    RunError,
)
from astromesh_ray.serve.protocols.openai_chat import (
    ChunkWriter,
    completion,
    openai_error,
    parse_chat_request,
    stream_error,
)

USER = {"role": "user", "content": "What is 2+2?"}


def refusal(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        parse_chat_request(body)
    return refused.value


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "helper", "messages": list(messages or [USER]), **fields}


# -- requests -------------------------------------------------------------------------


def test_the_last_user_message_is_the_query() -> None:
    request = parse_chat_request(chat())
    assert request.model == "helper" and not request.stream
    assert request.run_body(None, with_history=True) == {
        "query": "What is 2+2?",
        "session_id": None,
        "context": {},
        "history": [],
    }


def test_text_parts_are_joined_by_a_newline() -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert parse_chat_request(chat({"role": "user", "content": parts})).query == "one\ntwo"


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ({"type": "image_url", "image_url": {"url": "x"}}, "messages[0].content[1].type"),
        ({"type": "input_audio", "input_audio": {}}, "messages[0].content[1].type"),
        ({"type": "text", "text": 3}, "messages[0].content[1]"),
        ({"type": "text", "text": "x", "cache_control": {}}, "messages[0].content[1]"),
        ("plain", "messages[0].content[1].type"),
    ],
)
def test_non_text_parts_are_refused_naming_the_part(part: Any, field: str) -> None:
    content = [{"type": "text", "text": "look"}, part]
    error = refusal(chat({"role": "user", "content": content}))
    assert error.details["field"] == field
    assert error.message.startswith(field + ":")


def test_earlier_messages_become_the_history() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    request = parse_chat_request(
        chat(
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Use f.", "name": "ada"},
            {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None},
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
            {"role": "assistant", "content": "f is done.", "annotations": []},
            USER,
        )
    )
    assert request.history() == [
        Message("system", "Be brief."),
        Message("user", "Use f.", name="ada"),
        Message("assistant", None, [ToolCall("c1", "f", {"a": 1})]),
        Message("tool", "done", tool_call_id="c1"),
        Message("assistant", "f is done."),
    ]
    body = request.run_body("s-1", with_history=True)
    assert body["session_id"] == "s-1" and len(body["history"]) == 5
    assert Message.from_dict(body["history"][2]).tool_calls == [ToolCall("c1", "f", {"a": 1})]
    assert request.run_body("s-1", with_history=False)["history"] == []


@pytest.mark.parametrize(
    ("extra", "field", "says"),
    [
        ({"tools": []}, "tools", "client-side tools"),
        ({"tool_choice": "auto"}, "tool_choice", "client-side tools"),
        ({"functions": []}, "functions", "client-side tools"),
        ({"temperature": 0}, "temperature", "agent's YAML"),
        ({"max_tokens": 10}, "max_tokens", "agent's YAML"),
        ({"response_format": {"type": "json_object"}}, "response_format", "agent's YAML"),
        ({"metadata": {}}, "metadata", "unknown field"),
        ({"n": 2}, "n", "n=1"),
        ({"stream": "yes"}, "stream", "boolean"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream is true"),
        ({"stream": True, "stream_options": {"obfuscate": 1}}, "stream_options.obfuscate", ""),
        ({"user": 7}, "user", "string"),
        ({"model": ""}, "model", ""),
    ],
)
def test_fields_that_are_not_honoured_are_refused(
    extra: dict[str, Any], field: str, says: str
) -> None:
    error = refusal(chat(**extra))
    assert error.details["field"] == field and says in error.message
    assert error.http_status == 422  # 400 in OpenAI's shape (openai_error)


def test_n_of_one_and_null_optional_fields_are_accepted() -> None:
    request = parse_chat_request(chat(n=1, user=None, stream=True, stream_options={}))
    assert request.stream and request.stream_options is not None


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "assistant", "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": "  "}], "messages[0].content"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "function", "content": "x"}, USER], "messages[0].role"),
        ([{"role": "user", "content": "x", "tool_call_id": "c"}, USER], "messages[0].tool_call_id"),
        (
            [{"role": "tool", "tool_call_id": "c9", "content": "x"}, USER],
            "messages[0].tool_call_id",
        ),
        ([{"role": "assistant", "content": "x", "refusal": "no"}, USER], "messages[0].refusal"),
        ([{"role": "user", "content": "x", "extra": 1}, USER], "messages[0].extra"),
        ([], "messages"),
    ],
)
def test_malformed_messages_are_refused_naming_the_field(
    messages: list[dict[str, Any]], field: str
) -> None:
    assert refusal({"model": "helper", "messages": messages}).details["field"] == field


def test_tool_calls_in_the_history_must_be_answered_and_well_formed() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    unanswered = chat({"role": "assistant", "content": None, "tool_calls": [call]}, USER)
    error = refusal(unanswered)
    assert error.details["field"] == "messages[1].role" and "c1" in error.message
    bad = {**call, "function": {"name": "f", "arguments": "not json"}}
    error = refusal(chat({"role": "assistant", "tool_calls": [bad]}, USER))
    assert error.details["field"] == "messages[0].tool_calls[0].function.arguments"


def test_the_query_has_the_same_length_cap_as_the_rest_api() -> None:
    error = refusal(chat({"role": "user", "content": "x" * 100_001}))
    assert error.details["field"] == "messages[0].content"


def test_the_session_is_the_header_or_the_user_field() -> None:
    request = parse_chat_request(chat(user="ada-1"))
    assert request.session(None) == "ada-1"
    assert request.session("ada-1") == "ada-1"
    assert parse_chat_request(chat()).session("from-header") == "from-header"
    assert parse_chat_request(chat()).session(None) is None
    with pytest.raises(InvalidRequest) as clash:
        request.session("someone-else")
    assert clash.value.details["field"] == "user"
    with pytest.raises(InvalidRequest) as bad:
        parse_chat_request(chat()).session("no spaces")
    assert bad.value.details["field"] == "X-Session-Id"


def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert refusal([USER]).message == "the request body must be a JSON object"  # type: ignore[arg-type]


# -- completions and chunks -----------------------------------------------------------


def result(answer: str = "4.", **fields: Any) -> dict[str, Any]:
    step = ToolStep(
        iteration=1,
        id="call_1",
        tool="calculator",
        arguments={"expression": "2+2"},
        result="4",
        is_error=False,
        duration_ms=1.0,
    )
    values: dict[str, Any] = {
        "run_id": "ab" * 16,
        "agent": "helper",
        "answer": answer,
        "steps": [step],
        "usage": Usage(input_tokens=12, output_tokens=3, calls=2, cost_usd=0.5),
        "trace": [],
        "trace_id": "cd" * 16,
        "session_id": "s-1",
        **fields,
    }
    return RunResult(**values).to_dict()


def test_a_result_is_a_chat_completion() -> None:
    body = completion(result(), "helper", 1700000000)
    parsed = ChatCompletion.model_validate(body)
    assert parsed.id == "chatcmpl-" + "ab" * 16 and parsed.created == 1700000000
    assert parsed.choices[0].message.content == "4." and parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (12, 3)
    assert parsed.usage.total_tokens == 15
    extra = (parsed.model_extra or {})["astromesh"]
    assert extra["session_id"] == "s-1" and extra["status"] == "completed"
    assert extra["cost_usd"] == 0.5
    assert [(s["tool"], s["result"]) for s in extra["steps"]] == [("calculator", "4")]


def events(*items: Any) -> list[dict[str, Any]]:
    return [event_to_dict(e) for e in items]


def token(text: str, channel: str = "answer") -> Token:
    return Token(text=text, channel=channel, iteration=1, role="reasoner")  # type: ignore[arg-type]


START = RunStarted(run_id="ab" * 16, agent="helper", session_id=None, trace_id="cd" * 16)
MODEL_CALL = ModelCall(
    iteration=1,
    role="reasoner",
    provider="p",
    model="m",
    usage=Usage(),
    finish_reason="stop",
    duration_ms=1.0,
    span_id="s",
    where={},
)


def write(writer: ChunkWriter, stream: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [writer.event(e) for e in stream]


def test_nothing_is_written_before_the_runs_first_output() -> None:
    writer = ChunkWriter("helper", 1, include_usage=False)
    quiet = events(START, token("hmm", "reasoning"), token('{"a"', "tool_args"), MODEL_CALL)
    assert write(writer, quiet) == [[], [], [], []] and not writer.started
    first = writer.event(event_to_dict(token("Four")))
    assert [c["choices"][0]["delta"] for c in first] == [
        {"role": "assistant", "content": ""},
        {"content": "Four"},
    ]
    (then,) = writer.event(event_to_dict(token(".")))
    assert then["choices"][0]["delta"] == {"content": "."} and then["id"] == first[0]["id"]


def test_a_stream_of_chunks_with_usage() -> None:
    writer = ChunkWriter("helper", 7, include_usage=True)
    stream = events(START, token("4"), token("."), MODEL_CALL)
    stream.append({"type": "run_finished", "result": result()})
    chunks = [c for batch in write(writer, stream) for c in batch]
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    assert {p.id for p in parsed} == {"chatcmpl-" + "ab" * 16}
    assert [p.choices[0].delta.content for p in parsed[:-1]] == ["", "4", ".", None]
    assert [p.choices[0].finish_reason for p in parsed[:-1]] == [None, None, None, "stop"]
    assert parsed[-1].choices == [] and parsed[-1].usage is not None
    assert parsed[-1].usage.total_tokens == 15
    assert all(p.usage is None for p in parsed[:-1])
    finish = (parsed[-2].model_extra or {})["astromesh"]
    assert finish["type"] == "run_finished" and finish["run_id"] == "ab" * 16
    assert writer.finished


def test_without_include_usage_there_is_no_usage_chunk_nor_field() -> None:
    writer = ChunkWriter("helper", 7, include_usage=False)
    chunks = writer.event({"type": "run_finished", "result": result()})
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_an_answer_that_was_not_streamed_is_sent_whole() -> None:
    writer = ChunkWriter("helper", 7, include_usage=False)
    writer.event(event_to_dict(START))
    chunks = writer.event({"type": "run_finished", "result": result("A whole answer.")})
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[:2] == [{"role": "assistant", "content": ""}, {"content": "A whole answer."}]


def test_tool_activity_rides_in_the_astromesh_field_never_as_tool_calls() -> None:
    writer = ChunkWriter("helper", 7, include_usage=False)
    call = ToolCallEvent(iteration=1, id="call_1", name="calculator", arguments={"x": 1})
    done = ToolResultEvent(
        iteration=1, id="call_1", name="calculator", content="4", is_error=False, duration_ms=2
    )
    delegate = Delegate(iteration=1, peer="other", query="q")
    chunks = [c for batch in write(writer, events(START, call, done, delegate)) for c in batch]
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    assert parsed[0].choices[0].delta.role == "assistant"
    surfaced = [(p.model_extra or {}).get("astromesh") for p in parsed[1:]]
    assert surfaced == events(call, done, delegate)
    assert all(p.choices[0].delta.tool_calls is None for p in parsed)
    assert all(p.choices[0].delta.content is None for p in parsed[1:])


def test_a_paused_run_says_so_in_the_finish_chunk() -> None:
    pending = {"id": "c1", "name": "ask", "arguments": {}, "kind": "client", "iteration": 1}
    paused = result("", status="requires_action", pending=[])
    paused["pending"] = [pending]
    finish = ChunkWriter("helper", 7, include_usage=False).event(
        event_to_dict(RunFinished(result=RunResult.from_dict(paused)))
    )[-1]
    assert finish["astromesh"]["status"] == "requires_action"
    assert finish["astromesh"]["pending"] == [pending]


def test_a_model_entry_is_an_openai_model() -> None:
    entry = {"id": "helper", "object": "model", "created": 0, "owned_by": "astromesh"}
    assert Model.model_validate(entry).owned_by == "astromesh"


# -- errors ---------------------------------------------------------------------------


def test_an_invalid_request_is_a_400_naming_the_param() -> None:
    status, body, headers = openai_error(InvalidRequest("bad", field="messages[0].content"))
    assert status == 400 and headers == {"x-should-retry": "false"}
    assert body["error"] == {
        "code": "invalid_request",
        "message": "bad",
        "hint": None,
        "field": "messages[0].content",
        "type": "invalid_request_error",
        "param": "messages[0].content",
    }


def test_an_unknown_agent_is_an_unknown_model() -> None:
    status, body, _ = openai_error(AgentNotFound("no agent named 'x'"))
    assert status == 404
    assert (body["error"]["code"], body["error"]["param"]) == ("model_not_found", "model")


def test_retries_are_advised_only_where_they_can_help() -> None:
    budget = BudgetExceeded("cap", cap="max_tokens_per_hour", retry_after_s=30.5)
    status, body, headers = openai_error(budget)
    assert status == 429 and body["error"]["type"] == "insufficient_quota"
    assert headers == {"x-should-retry": "true", "Retry-After": "30"}
    assert openai_error(BudgetExceeded("cap", cap="session"))[2] == {"x-should-retry": "false"}
    assert openai_error(AgentUnavailable("down"))[2] == {"x-should-retry": "true"}
    assert openai_error(MemoryUnavailable("db", retryable=False))[2] == {"x-should-retry": "false"}
    status, body, headers = openai_error(RunError("boom", run_id="r"))
    assert (status, body["error"]["type"], headers["x-should-retry"]) == (
        500,
        "server_error",
        "false",
    )
    assert stream_error(RunError("boom"))["error"]["message"] == "boom"
