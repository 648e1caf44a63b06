"""The gateway's OpenAI-compatible API on real Serve, driven by the official
``openai`` client, against a loopback OpenAI-compatible model server that records
what the agents sent it.

- Each agent is a model (``GET /v1/models``); an unknown one is ``NotFoundError``.
- A completion's content is the run's answer, its usage the run's usage; streamed,
  the content arrives word by word (the model server streams one word per chunk)
  and joins to the answer, with the usage chunk when asked for.
- The session (``user`` or ``X-Session-Id``) keeps an agent's conversational
  memory; for an agent without memory the request's earlier messages are the run's
  history, as the model server's recorded request shows.
- The agent's own tool calls arrive in the ``astromesh`` field, which the client
  keeps (``model_extra``) without errors; they are never ``tool_calls``.
- Bad bodies are ``BadRequestError`` naming the field; a failure before a stream's
  first output gets its HTTP status (and is not retried by the client), one after
  it ends the stream with an error the client raises.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from ray import serve

from astromesh_ray.testing import ScriptedOpenAIServer
from astromesh_ray.testing.scripted import count_words

from .conftest import agent_yaml, deployed

pytestmark = pytest.mark.integration


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


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("openai_api")
    (root / "agents").mkdir()
    (root / "agents" / "helper.agent.yaml").write_text(agent_yaml("helper", llm.url, HELPER))
    (root / "agents" / "keeper.agent.yaml").write_text(agent_yaml("keeper", llm.url, KEEPER))
    with deployed(root) as apps:
        yield serve_url
        for name in apps:
            serve.delete(name, _blocking=False)


@pytest.fixture(scope="module")
def client(api: str) -> OpenAI:
    return OpenAI(base_url=f"{api}/v1", api_key="x", timeout=60)


def _sent(llm: ScriptedOpenAIServer) -> list[tuple[str, Any]]:
    """Role and content of each message of the model server's last request."""
    return [(m["role"], m.get("content")) for m in llm.requests[-1]["messages"]]


def test_agents_are_the_models(client: OpenAI) -> None:
    models = client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in models.data] == [
        ("helper", "model", "astromesh"),
        ("keeper", "model", "astromesh"),
    ]
    assert client.models.retrieve("keeper").id == "keeper"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("nobody")
    assert missing.value.code == "model_not_found"


def test_a_completion_is_the_runs_answer(client: OpenAI, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps("Paris is the capital of France.")
    done = client.chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "Capital of France?"}]
    )
    choice = done.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Paris is the capital of France."
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert done.object == "chat.completion" and done.model == "helper"
    extra = done.model_extra or {}
    assert done.id == f"chatcmpl-{extra['astromesh']['run_id']}"
    assert extra["astromesh"]["status"] == "completed"
    assert done.usage is not None
    assert done.usage.completion_tokens == count_words("Paris is the capital of France.")
    assert done.usage.prompt_tokens == count_words("You help everyone. Capital of France?")
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    assert _sent(llm) == [("system", "You help everyone."), ("user", "Capital of France?")]


def test_content_parts_and_prompt_variables_through_extra_body(
    client: OpenAI, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("Hi Ada.")
    done = client.chat.completions.create(
        model="helper",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}],
            }
        ],
        extra_body={"context": {"customer": "Ada"}},
    )
    assert done.choices[0].message.content == "Hi Ada."
    assert _sent(llm) == [("system", "You help Ada."), ("user", "Hello\nthere")]


def test_streamed_content_arrives_in_pieces_and_joins_to_the_answer(
    client: OpenAI, llm: ScriptedOpenAIServer
) -> None:
    answer = "The quick brown fox jumps over the lazy dog."
    llm.add_steps(answer)
    chunks = list(
        client.chat.completions.create(
            model="helper",
            messages=[{"role": "user", "content": "Tell me a pangram."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert llm.requests[-1]["stream"] is True  # the agent streamed from the model
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) == count_words(answer) and "".join(pieces) == answer
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == count_words(answer)
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_without_include_usage_no_usage_chunk(client: OpenAI, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps("Short one.")
    chunks = list(
        client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Short one."


def test_the_stream_helper_accumulates_the_answer(
    client: OpenAI, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("Accumulated by the client.")
    with client.chat.completions.stream(
        model="helper", messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Accumulated by the client."
    assert final.choices[0].finish_reason == "stop"


def test_earlier_messages_are_the_history_of_an_agent_without_memory(
    client: OpenAI, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("You said blue.")
    client.chat.completions.create(
        model="helper",
        messages=[
            {"role": "system", "content": "Answer in three words."},
            {"role": "user", "content": "My colour is blue."},
            {"role": "assistant", "content": "Noted: blue."},
            {"role": "user", "content": "What colour did I say?"},
        ],
        user="no-memory-session",
    )
    assert _sent(llm) == [
        ("system", "You help everyone."),
        ("system", "Answer in three words."),
        ("user", "My colour is blue."),
        ("assistant", "Noted: blue."),
        ("user", "What colour did I say?"),
    ]


def test_the_session_keeps_memory_and_the_resent_conversation_is_not_doubled(
    client: OpenAI, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("Hello Ada.", "You are Ada.", "I do not know.")
    first = [{"role": "user", "content": "I am Ada."}]
    client.chat.completions.create(model="keeper", messages=first, user="ada-1")  # type: ignore[arg-type]
    # As OpenAI clients do: the whole conversation again, plus the new message.
    again = [
        *first,
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "Who am I?"},
    ]
    done = client.chat.completions.create(model="keeper", messages=again, user="ada-1")  # type: ignore[arg-type]
    assert done.choices[0].message.content == "You are Ada."
    assert (done.model_extra or {})["astromesh"]["session_id"] == "ada-1"
    assert _sent(llm) == [
        ("system", "You remember."),
        ("user", "I am Ada."),
        ("assistant", "Hello Ada."),
        ("user", "Who am I?"),
    ]
    # The X-Session-Id header names the session too; another session knows nothing.
    client.chat.completions.create(
        model="keeper",
        messages=[{"role": "user", "content": "Who am I?"}],
        extra_headers={"X-Session-Id": "someone-else"},
    )
    assert _sent(llm) == [("system", "You remember."), ("user", "Who am I?")]


def test_tool_activity_is_in_the_astromesh_field_streamed_and_whole(
    client: OpenAI, llm: ScriptedOpenAIServer
) -> None:
    call = {"name": "calculator", "arguments": {"expression": "(2+3)*4"}}
    llm.add_steps({"tool_calls": [call]}, "(2+3)*4 is 20.")
    chunks = list(
        client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "(2+3)*4?"}], stream=True
        )
    )
    extras = [(c.model_extra or {}).get("astromesh") for c in chunks]
    events = [e for e in extras if e is not None]
    assert [e["type"] for e in events] == ["tool_call", "tool_result", "run_finished"]
    assert events[0]["name"] == "calculator" and events[0]["arguments"] == call["arguments"]
    assert events[1]["id"] == events[0]["id"] and events[1]["content"] == "20"
    assert not [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    finished: Any = chunks[-1].to_dict()["astromesh"]
    assert finished["status"] == "completed"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "(2+3)*4 is 20."

    # Whole: the content is the final answer; what the model wrote alongside its
    # tool call is a `thought` step, next to the tool step.
    llm.add_steps({"content": "Let me compute.", "tool_calls": [call]}, "It is 20.")
    done = client.chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "(2+3)*4?"}]
    )
    assert done.choices[0].message.tool_calls is None
    assert done.choices[0].message.content == "It is 20."
    whole: Any = done.to_dict()["astromesh"]
    steps = {s["type"]: s for s in whole["steps"]}
    assert steps["thought"]["content"] == "Let me compute."
    tool = steps["tool_call"]
    assert tool["tool"] == "calculator" and tool["result"] == "20" and not tool["is_error"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 0.2}, "temperature"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"n": 2}, "n"),
        ({"extra_body": {"surprise": 1}}, "surprise"),
        ({"extra_body": {"context": {"query": "shadow"}}}, "context.query"),
        ({"user": "not a valid id"}, "user"),
    ],
)
def test_what_the_endpoint_does_not_honour_is_a_bad_request_naming_it(
    client: OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "hi"}], **extra
        )
    assert refused.value.param == param, refused.value.body
    assert refused.value.type == "invalid_request_error"


def test_non_text_parts_and_misplaced_messages_are_refused(client: OpenAI) -> None:
    image: Any = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="helper",
            messages=[{"role": "user", "content": [{"type": "text", "text": "see"}, image]}],
        )
    assert refused.value.param == "messages[0].content[1].type"
    assert "only text parts" in refused.value.message
    with pytest.raises(openai.BadRequestError) as last:
        client.chat.completions.create(
            model="helper",
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        )
    assert last.value.param == "messages[1].role"


def test_an_unknown_model_is_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found" and missing.value.param == "model"


def test_session_header_and_user_must_agree(api: str) -> None:
    reply = httpx.post(
        f"{api}/v1/chat/completions",
        json={"model": "keeper", "messages": [{"role": "user", "content": "x"}], "user": "a"},
        headers={"X-Session-Id": "b"},
        timeout=60,
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "user"
    reply = httpx.post(f"{api}/v1/chat/completions", content=b"{not json", timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"


def test_a_failure_before_the_first_output_has_its_status_and_is_not_retried(
    client: OpenAI, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps({"status": 400, "error": "scripted refusal"})
    before = len(llm.requests)
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert failed.value.status_code == 502 and failed.value.code == "provider_error"
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert len(llm.requests) == before + 1  # the client (max_retries=2) did not retry
    llm.assert_consumed()


def test_a_failure_after_the_stream_started_ends_it_with_an_error(
    api: str, client: OpenAI, llm: ScriptedOpenAIServer
) -> None:
    call = {"name": "calculator", "arguments": {"expression": "1+1"}}
    llm.add_steps({"tool_calls": [call]}, {"status": 400, "error": "scripted refusal"})
    seen: list[Any] = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "1+1?"}], stream=True
        ):
            seen.append(chunk)
    assert [(c.model_extra or {})["astromesh"]["type"] for c in seen[1:]] == [
        "tool_call",
        "tool_result",
    ]
    body = failed.value.body
    assert isinstance(body, dict) and body["code"] == "provider_error"
    llm.assert_consumed()
    # On the wire: the error is the last data line, with no [DONE] after it.
    llm.add_steps({"tool_calls": [call]}, {"status": 400, "error": "scripted refusal"})
    with httpx.stream(
        "POST",
        f"{api}/v1/chat/completions",
        json={"model": "helper", "messages": [{"role": "user", "content": "1+1?"}], "stream": True},
        timeout=60,
    ) as reply:
        lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert json.loads(lines[-1][6:])["error"]["type"] == "server_error"
    assert "data: [DONE]" not in lines
