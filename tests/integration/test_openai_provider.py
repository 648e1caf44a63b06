"""OpenAIProvider against ScriptedOpenAIServer over real loopback HTTP.

The server's wire format is itself checked with the official ``openai`` client, so
passing here means the provider speaks what real OpenAI-compatible servers speak.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest

from astromesh_ray.core.messages import (
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolCall,
    ToolSchema,
)
from astromesh_ray.core.providers import Provider, provider_class
from astromesh_ray.core.providers.openai import OpenAIProvider
from astromesh_ray.errors import ConfigError, ProviderError
from astromesh_ray.testing import ScriptedOpenAIServer

pytestmark = pytest.mark.integration

WEATHER = ToolSchema(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
)


@pytest.fixture
def servers() -> Iterator[list[ScriptedOpenAIServer]]:
    """Servers a test starts through ``_serve``; all stopped afterwards."""
    started: list[ScriptedOpenAIServer] = []
    yield started
    for server in started:
        server.stop()


def _serve(
    servers: list[ScriptedOpenAIServer], *steps: str | dict[str, Any], **kwargs: Any
) -> ScriptedOpenAIServer:
    server = ScriptedOpenAIServer(steps, **kwargs).start()
    servers.append(server)
    return server


def _provider(endpoint: str, **kwargs: Any) -> OpenAIProvider:
    options: dict[str, Any] = {"name": "test:vllm", "kind": "vllm", "model": "tiny"}
    options.update(kwargs)
    return OpenAIProvider(endpoint=endpoint, **options)


def _ask(text: str, **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(messages=[Message(role="user", content=text)], **kwargs)


async def _collect(stream: AsyncIterator[CompletionChunk]) -> list[CompletionChunk]:
    return [chunk async for chunk in stream]


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- OpenAIProvider ----------------------------------------------------------------------


def test_registry_resolves_every_openai_kind_to_a_provider() -> None:
    for kind in ("openai", "openai_compat", "vllm", "llamacpp"):
        cls = provider_class(kind)
        assert cls is OpenAIProvider
        assert isinstance(cls(name=kind, kind=kind, model="m", endpoint="http://h/v1"), Provider)
    with pytest.raises(ConfigError, match="'vllm' needs an endpoint"):
        OpenAIProvider(name="v", kind="vllm", model="m")


def test_text_completion_and_parameter_merge(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(servers, "Paris is sunny today")
    provider = _provider(server.url, parameters={"temperature": 0.0, "max_tokens": 64})
    request = _ask("weather in Paris?", parameters={"max_tokens": 8, "model": "ignored"})
    completion = asyncio.run(provider.complete(request))
    assert completion.message.content == "Paris is sunny today"
    assert completion.message.tool_calls == []
    assert completion.finish_reason == "stop"
    assert completion.provider == "test:vllm"
    assert completion.model == "tiny"
    body = server.requests[0]
    assert body["model"] == "tiny"  # parameters cannot replace the model
    assert body["temperature"] == 0.0 and body["max_tokens"] == 8  # request wins
    assert body["messages"] == [{"role": "user", "content": "weather in Paris?"}]
    assert "tools" not in body and body["stream"] is False
    # usage is words: prompt "weather in Paris?" = 3, answer = 4
    assert completion.usage.to_dict() == {
        "input_tokens": 3,
        "output_tokens": 4,
        "total_tokens": 7,
        "calls": 1,
        "cost_usd": 0.0,  # priced by the router, not the provider
    }


def test_tool_call_round_trip_on_the_wire(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(
        servers,
        {
            "tool_calls": [
                {
                    "id": "call_w1",
                    "name": "get_weather",
                    "arguments": {"city": "Paris", "unit": "C"},
                }
            ]
        },
        "It is 21 C in Paris",
    )
    provider = _provider(server.url)
    system = Message(role="system", content="You answer weather questions.")
    user = Message(role="user", content="Weather in Paris?")

    async def conversation() -> tuple[Any, Any]:
        first = await provider.complete(CompletionRequest(messages=[system, user], tools=[WEATHER]))
        result = Message(
            role="tool", content='{"temp": 21}', tool_call_id="call_w1", name="get_weather"
        )
        second = await provider.complete(
            CompletionRequest(messages=[system, user, first.message, result], tools=[WEATHER])
        )
        await provider.aclose()
        return first, second

    first, second = asyncio.run(conversation())
    assert first.finish_reason == "tool_calls"
    assert first.message.tool_calls == [
        ToolCall(id="call_w1", name="get_weather", arguments={"city": "Paris", "unit": "C"})
    ]
    assert second.message.content == "It is 21 C in Paris"
    assert server.requests[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    sent = server.requests[1]["messages"]
    assert sent[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_w1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
            }
        ],
    }
    assert sent[3] == {"role": "tool", "tool_call_id": "call_w1", "content": '{"temp": 21}'}
    server.assert_consumed()


def test_stream_text_and_usage(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(servers, "one two three four")
    provider = _provider(server.url)
    chunks = asyncio.run(_collect(provider.stream(_ask("count to four please"))))
    assert [c.text for c in chunks[:-1]] == ["one ", "two ", "three ", "four"]
    final = chunks[-1]
    assert final.text == "" and final.tool_calls == []
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.calls) == (4, 4, 1)
    assert server.requests[0]["stream"] is True
    assert server.requests[0]["stream_options"] == {"include_usage": True}


def test_streamed_tool_calls_are_reassembled(servers: list[ScriptedOpenAIServer]) -> None:
    nested = {"query": "ray serve autoscaling", "filters": {"year": [2025, 2026]}, "k": 5}
    server = _serve(
        servers,
        {
            "tool_calls": [
                {"id": "a", "name": "search", "arguments": nested},
                {"id": "b", "name": "get_weather", "arguments": {"city": "Oslo"}},
            ]
        },
    )
    provider = _provider(server.url)
    chunks = asyncio.run(_collect(provider.stream(_ask("find it", tools=[WEATHER]))))
    assert all(c.text == "" for c in chunks)
    with_calls = [c for c in chunks if c.tool_calls]
    assert len(with_calls) == 1 and with_calls[0] is chunks[-1]
    assert chunks[-1].tool_calls == [
        ToolCall(id="a", name="search", arguments=nested),
        ToolCall(id="b", name="get_weather", arguments={"city": "Oslo"}),
    ]
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens > 0


def test_api_key_sent_as_bearer_from_env(
    servers: list[ScriptedOpenAIServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _serve(servers, "ok", "ok again", require_api_key="sk-test-123")
    provider = _provider(server.url, kind="openai_compat", api_key_env="ASTRO_TEST_KEY")
    monkeypatch.setenv("ASTRO_TEST_KEY", "sk-test-123")
    assert asyncio.run(provider.complete(_ask("hi"))).message.content == "ok"
    assert server.request_headers[0]["authorization"] == "Bearer sk-test-123"
    # the key is read at call time: rotating it needs no new provider
    monkeypatch.setenv("ASTRO_TEST_KEY", "sk-rotated")
    with pytest.raises(ProviderError) as info:
        asyncio.run(provider.complete(_ask("hi")))
    assert server.request_headers[1]["authorization"] == "Bearer sk-rotated"
    assert info.value.details["status"] == 401


def test_401_is_not_retryable_and_hint_names_the_variable(
    servers: list[ScriptedOpenAIServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _serve(servers, "never", require_api_key="right")
    monkeypatch.setenv("ASTRO_TEST_KEY", "wrong")
    provider = _provider(server.url, api_key_env="ASTRO_TEST_KEY")
    with pytest.raises(ProviderError) as info:
        asyncio.run(provider.complete(_ask("hi")))
    error = info.value
    assert error.details["status"] == 401
    assert error.details["provider"] == "test:vllm"
    assert not error.retryable
    assert "Incorrect API key" in error.message
    assert error.hint is not None and "ASTRO_TEST_KEY" in error.hint
    assert server.remaining == 1  # a rejected request consumes no step


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (408, True), (400, False)]
)
def test_http_errors_carry_status_backend_message_and_retryability(
    servers: list[ScriptedOpenAIServer], status: int, retryable: bool
) -> None:
    server = _serve(servers, {"status": status, "error": f"backend says {status}"})
    provider = _provider(server.url)
    with pytest.raises(ProviderError) as info:
        asyncio.run(provider.complete(_ask("hi")))
    assert info.value.details["status"] == status
    assert info.value.retryable is retryable
    assert f"backend says {status}" in info.value.message


def test_stream_http_error_is_mapped(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(servers, {"status": 502, "error": "upstream gone"})
    with pytest.raises(ProviderError, match="upstream gone") as info:
        asyncio.run(_collect(_provider(server.url).stream(_ask("hi"))))
    assert info.value.retryable and info.value.details["status"] == 502


def test_exhausted_script_is_a_retryable_500(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(servers)
    with pytest.raises(ProviderError, match="script exhausted") as info:
        asyncio.run(_provider(server.url).complete(_ask("hi")))
    assert info.value.details["status"] == 500


@pytest.mark.parametrize(
    ("kind", "hint_part"),
    [
        ("ollama", "start Ollama (`ollama serve`)"),
        ("vllm", "start the vllm server at"),
        ("llamacpp", "start the llamacpp server at"),
        ("openai_compat", "check network access to"),
    ],
)
def test_connection_refused_is_retryable_with_a_hint(kind: str, hint_part: str) -> None:
    endpoint = f"http://127.0.0.1:{_unused_port()}/v1"
    provider = OpenAIProvider(name=f"{kind}:m", kind=kind, model="m", endpoint=endpoint)
    for call in (provider.complete, lambda r: _collect(provider.stream(r))):
        with pytest.raises(ProviderError) as info:
            asyncio.run(call(_ask("hi")))
        assert info.value.retryable
        assert info.value.details["status"] is None
        assert info.value.hint is not None and hint_part in info.value.hint
        assert endpoint in info.value.hint
    if kind == "ollama":
        assert "`ollama pull m`" in str(info.value.hint)


def test_timeout_is_retryable(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(servers, {"content": "late", "delay_s": 2.0})
    provider = _provider(server.url, timeout_s=0.3)
    with pytest.raises(ProviderError, match=r"within 0\.3s") as info:
        asyncio.run(provider.complete(_ask("hi")))
    assert info.value.retryable


@pytest.mark.parametrize("streamed", [False, True])
def test_malformed_tool_arguments(servers: list[ScriptedOpenAIServer], streamed: bool) -> None:
    server = _serve(
        servers, {"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Par'}]}
    )
    provider = _provider(server.url)
    request = _ask("hi", tools=[WEATHER])
    if streamed:
        chunks = asyncio.run(_collect(provider.stream(request)))
        calls = [c for chunk in chunks for c in chunk.tool_calls]
    else:
        calls = asyncio.run(provider.complete(request)).message.tool_calls
    # Not a provider failure: the call comes back marked, and the engine tells the model.
    assert [(c.name, c.arguments, c.invalid_arguments) for c in calls] == [
        ("get_weather", {}, '{"city": "Par')
    ]


def test_missing_openai_key_fails_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    provider = OpenAIProvider(name="openai:gpt", kind="openai", model="gpt-4o-mini")
    assert provider.endpoint == "https://api.openai.com/v1"
    with pytest.raises(ProviderError) as info:
        asyncio.run(provider.complete(_ask("hi")))
    assert info.value.hint == "set OPENAI_API_KEY"
    assert not info.value.retryable


def test_ollama_root_endpoint_gets_v1_appended(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(servers, "hello from ollama")
    root = server.url.removesuffix("/v1")
    provider = OpenAIProvider(name="ollama:tiny", kind="ollama", model="tiny", endpoint=root)
    assert provider.endpoint == server.url
    assert OpenAIProvider(name="x", kind="ollama", model="m").endpoint == (
        "http://localhost:11434/v1"
    )
    assert asyncio.run(provider.complete(_ask("hi"))).message.content == "hello from ollama"


def test_client_survives_event_loop_changes_and_pickling(
    servers: list[ScriptedOpenAIServer],
) -> None:
    server = _serve(servers, "first", "second", "third")
    provider = _provider(server.url)
    assert asyncio.run(provider.complete(_ask("a"))).message.content == "first"
    # a new asyncio.run() is a new loop: the pooled client must be rebuilt, not reused
    assert asyncio.run(provider.complete(_ask("b"))).message.content == "second"
    clone = pickle.loads(pickle.dumps(provider))
    assert asyncio.run(clone.complete(_ask("c"))).message.content == "third"


def test_health(servers: list[ScriptedOpenAIServer], monkeypatch: pytest.MonkeyPatch) -> None:
    server = _serve(servers)
    provider = _provider(server.url)
    assert asyncio.run(provider.health()) is True
    guarded = _serve(servers, require_api_key="k")
    assert asyncio.run(_provider(guarded.url).health()) is False
    monkeypatch.setenv("ASTRO_TEST_KEY", "k")
    assert asyncio.run(_provider(guarded.url, api_key_env="ASTRO_TEST_KEY").health()) is True
    server.stop()
    assert asyncio.run(provider.health()) is False


# -- the server's wire format, checked with the official openai client ------------------


def _client(server: ScriptedOpenAIServer, key: str = "sk-any") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=10)


def test_openai_client_text_and_models(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(servers, "hello world", model="served-model")
    client = _client(server)
    assert [m.id for m in client.models.list()] == ["served-model"]
    response = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "say hello"}]
    )
    assert response.choices[0].message.content == "hello world"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (2, 2)


def test_openai_client_tool_calls(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(
        servers, {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]}
    )
    response = _client(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": WEATHER.name,
                    "description": WEATHER.description,
                    "parameters": WEATHER.parameters,
                },
            }
        ],
    )
    calls = response.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Rome"}
    assert response.choices[0].finish_reason == "tool_calls"


def test_openai_client_stream_accumulates_tool_calls_and_usage(
    servers: list[ScriptedOpenAIServer],
) -> None:
    server = _serve(
        servers,
        {
            "content": "let me check",
            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
        },
    )
    with _client(server).chat.completions.stream(
        model="tiny",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "let me check"
    assert message.tool_calls is not None
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert final.usage is not None and final.usage.prompt_tokens == 3


def test_openai_client_error_classes(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(servers, {"status": 500, "error": "kaboom"}, require_api_key="good")
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="bad").chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.InternalServerError, match="kaboom"):
        _client(server, key="good").chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}]
        )


def test_raw_sse_splits_arguments_and_ends_with_usage_then_done(
    servers: list[ScriptedOpenAIServer],
) -> None:
    server = _serve(servers, {"tool_calls": [{"name": "f", "arguments": {"a": "b c d e"}}]})
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    fragments = [
        tc["function"].get("arguments", "")
        for c in chunks
        for ch in c["choices"]
        for tc in ch["delta"].get("tool_calls", [])
    ]
    assert fragments[0] == "" and len([f for f in fragments if f]) >= 2
    assert "".join(fragments) == '{"a": "b c d e"}'
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_server_validates_requests_and_steps() -> None:
    with ScriptedOpenAIServer(["unused"]) as server:
        url = f"{server.url}/chat/completions"
        no_model = httpx.post(url, json={"messages": [{"role": "user", "content": "x"}]})
        assert no_model.status_code == 422 and no_model.json()["error"]["param"] == "model"
        no_messages = httpx.post(url, json={"model": "m"})
        assert no_messages.status_code == 422
        assert server.remaining == 1
        with pytest.raises(AssertionError, match="1 step"):
            server.assert_consumed()
    with pytest.raises(httpx.ConnectError):  # leaving the block stopped the server
        httpx.get(f"{server.url}/models")
    with pytest.raises(ValueError, match="unknown step keys"):
        ScriptedOpenAIServer([{"contnet": "typo"}])


# -- reasoning and tool-argument deltas -----------------------------------------------

THINKING = {
    "reasoning": "The user wants the weather in two cities.",
    "content": "Checking both.",
    "tool_calls": [
        {"id": "call_w1", "name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}},
        {"id": "call_w2", "name": "get_weather", "arguments": {"city": "Rome"}},
    ],
}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_stream_reasoning_and_tool_argument_deltas(
    servers: list[ScriptedOpenAIServer], field: str
) -> None:
    server = _serve(servers, THINKING, reasoning_field=field)
    chunks = asyncio.run(_collect(_provider(server.url).stream(_ask("weather?", tools=[WEATHER]))))
    *deltas, final = chunks
    # Reasoning arrives first, word by word, apart from the answer text.
    assert [c.reasoning for c in deltas if c.reasoning] == [
        "The ",
        "user ",
        "wants ",
        "the ",
        "weather ",
        "in ",
        "two ",
        "cities.",
    ]
    first_text = next(i for i, c in enumerate(deltas) if c.text)
    assert not any(c.reasoning for c in deltas[first_text:])
    assert "".join(c.text for c in deltas) == "Checking both."
    # Tool-call arguments stream as the server cuts them: id and name first.
    args = [d for c in deltas for d in c.tool_args]
    assert [(d.index, d.id, d.name, d.arguments) for d in args if d.name] == [
        (0, "call_w1", "get_weather", ""),
        (1, "call_w2", "get_weather", ""),
    ]
    assert [d.id for d in args if not d.name] == [""] * (len(args) - 2)
    for index, call in enumerate(THINKING["tool_calls"]):  # type: ignore[arg-type]
        pieces = [d.arguments for d in args if d.index == index and d.arguments]
        assert len(pieces) == 3 and json.loads("".join(pieces)) == call["arguments"]
    # The last chunk still has the whole calls, and nothing of the deltas.
    assert final.is_last and final.finish_reason == "tool_calls"
    assert [(c.id, c.arguments) for c in final.tool_calls] == [
        ("call_w1", {"city": "Paris", "unit": "C"}),
        ("call_w2", {"city": "Rome"}),
    ]
    assert (final.text, final.reasoning, final.tool_args) == ("", "", [])
    assert final.usage is not None and final.usage.output_tokens > 0


def test_whole_answer_with_reasoning(servers: list[ScriptedOpenAIServer]) -> None:
    server = _serve(servers, {"reasoning": "two plus two", "content": "4"})
    completion = asyncio.run(_provider(server.url).complete(_ask("2+2?")))
    assert completion.message.content == "4"
    assert completion.usage.output_tokens == 4  # reasoning tokens are completion tokens


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_openai_client_reads_the_reasoning(servers: list[ScriptedOpenAIServer], field: str) -> None:
    server = _serve(
        servers, {"reasoning": "hmm, let me see", "content": "yes"}, reasoning_field=field
    )
    client = _client(server)
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "well?"}], stream=True
    )
    pieces = [
        (choice.delta.model_extra or {}).get(field) or ""
        for chunk in stream
        for choice in chunk.choices
    ]
    assert "".join(pieces) == "hmm, let me see"
    server.add_steps({"reasoning": "again", "content": "no"})
    whole = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "well?"}]
    )
    assert (whole.choices[0].message.model_extra or {})[field] == "again"
    assert whole.choices[0].message.content == "no"
