"""OllamaProvider against ScriptedOllamaServer over real loopback HTTP.

The server's wire format is itself checked with the official ``ollama`` client, so
passing here means the provider speaks what a real Ollama speaks.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import RunFinished
from astromesh_ray.core.messages import (
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolCall,
    ToolSchema,
)
from astromesh_ray.core.providers import Provider, provider_class
from astromesh_ray.core.providers.ollama import OllamaProvider
from astromesh_ray.errors import ConfigError, ProviderError
from astromesh_ray.spec import load_agent
from astromesh_ray.testing import ScriptedOllamaServer

pytestmark = pytest.mark.integration

MODEL = "llama3.1:8b"
WEATHER = ToolSchema(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
)
WIRE_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": WEATHER.parameters,
    },
}


@pytest.fixture
def servers() -> Iterator[list[ScriptedOllamaServer]]:
    """Servers a test starts through ``_serve``; all stopped afterwards."""
    started: list[ScriptedOllamaServer] = []
    yield started
    for server in started:
        server.stop()


def _serve(
    servers: list[ScriptedOllamaServer], *steps: str | dict[str, Any], **kwargs: Any
) -> ScriptedOllamaServer:
    server = ScriptedOllamaServer(steps, **kwargs).start()
    servers.append(server)
    return server


def _provider(endpoint: str, **kwargs: Any) -> OllamaProvider:
    options: dict[str, Any] = {"name": f"ollama:{MODEL}", "model": MODEL}
    options.update(kwargs)
    return OllamaProvider(endpoint=endpoint, **options)


def _ask(text: str, **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(messages=[Message(role="user", content=text)], **kwargs)


async def _collect(stream: AsyncIterator[CompletionChunk]) -> list[CompletionChunk]:
    return [chunk async for chunk in stream]


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the server's wire format, checked with the official ollama client ------------------


async def test_ollama_client_chat_whole_and_streamed(servers: list[ScriptedOllamaServer]) -> None:
    server = _serve(servers, "hello there world", "one two three")
    client = ollama.AsyncClient(host=server.url)
    whole = await client.chat(model=MODEL, messages=[{"role": "user", "content": "say hi"}])
    assert whole.message.role == "assistant" and whole.message.content == "hello there world"
    assert whole.done is True and whole.done_reason == "stop" and whole.model == MODEL
    assert (whole.prompt_eval_count, whole.eval_count) == (2, 3)
    parts = [
        part
        async for part in await client.chat(
            model=MODEL, messages=[{"role": "user", "content": "count"}], stream=True
        )
    ]
    assert [p.message.content for p in parts] == ["one ", "two ", "three", ""]
    assert [p.done for p in parts] == [False, False, False, True]
    assert parts[-1].eval_count == 3 and parts[-1].prompt_eval_count == 1
    assert server.requests[0]["stream"] is False and server.requests[1]["stream"] is True
    server.assert_consumed()


async def test_ollama_client_tool_calls_whole_with_object_arguments(
    servers: list[ScriptedOllamaServer],
) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Rome", "unit": "C"}}
    server = _serve(servers, {"tool_calls": [call]}, {"tool_calls": [call]}, "21 C in Rome")
    client = ollama.AsyncClient(host=server.url)
    messages: list[Any] = [{"role": "user", "content": "weather in Rome?"}]
    response = await client.chat(model=MODEL, messages=messages, tools=[WIRE_WEATHER])
    calls = response.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert dict(calls[0].function.arguments) == {"city": "Rome", "unit": "C"}
    streamed = [
        p
        async for p in await client.chat(
            model=MODEL, messages=messages, tools=[WIRE_WEATHER], stream=True
        )
    ]
    with_calls = [p for p in streamed if p.message.tool_calls]
    assert len(with_calls) == 1 and not with_calls[0].done
    assert dict(with_calls[0].message.tool_calls[0].function.arguments) == {  # type: ignore[index]
        "city": "Rome",
        "unit": "C",
    }
    # The client's own round trip (call + result by tool_name) is accepted by the server.
    followup = [
        *messages,
        response.message,
        {"role": "tool", "tool_name": "get_weather", "content": "21"},
    ]
    final = await client.chat(model=MODEL, messages=followup)
    assert final.message.content == "21 C in Rome"
    sent = server.requests[2]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome", "unit": "C"}
    assert sent[2] == {"role": "tool", "content": "21", "tool_name": "get_weather"}


async def test_ollama_client_list_version_and_errors(servers: list[ScriptedOllamaServer]) -> None:
    server = _serve(
        servers,
        {"status": 500, "error": "kaboom"},
        {"content": "partial answer", "stream_error": "runner crashed"},
        models=[MODEL, "qwen2.5:0.5b"],
    )
    client = ollama.AsyncClient(host=server.url)
    listed = await client.list()
    assert [m.model for m in listed.models] == [MODEL, "qwen2.5:0.5b"]
    assert listed.models[0].details is not None and listed.models[0].details.format == "gguf"
    version = httpx.get(f"{server.url}/api/version")
    assert version.status_code == 200 and version.json()["version"].count(".") == 2
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat(model="mistral", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404
    assert missing.value.error == 'model "mistral" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError, match="kaboom") as failed:
        await client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 500
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError, match="runner crashed"):
        async for part in await client.chat(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            seen.append(part.message.content or "")
    assert seen == ["partial ", "answer"]
    server.assert_consumed()


def test_server_wire_details_and_request_validation() -> None:
    with ScriptedOllamaServer(["a b"], models=["llama3.1:latest"]) as server:
        url = f"{server.url}/api/chat"
        # Ollama streams unless told not to; a bare name means its :latest tag.
        user = [{"role": "user", "content": "x"}]
        with httpx.stream("POST", url, json={"model": "llama3.1", "messages": user}) as response:
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in response.iter_lines() if line]
        assert [line["done"] for line in lines] == [False, False, True]
        assert lines[-1]["done_reason"] == "stop" and lines[-1]["created_at"].endswith("Z")
        no_model = httpx.post(url, json={"messages": user})
        assert no_model.status_code == 400 and no_model.json() == {"error": "model is required"}
        # The mistake an OpenAI-minded client makes: tool-call arguments as a string.
        stringly = [
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
        ]
        bad = httpx.post(url, json={"model": "llama3.1", "messages": stringly})
        assert bad.status_code == 400 and "cannot unmarshal string" in bad.json()["error"]
        load = httpx.post(url, json={"model": "llama3.1", "messages": [], "stream": False})
        assert load.json()["done_reason"] == "load"
        assert server.remaining == 0 and httpx.get(server.url).text == "Ollama is running"
    with pytest.raises(ValueError, match="unknown step keys"):
        ScriptedOllamaServer([{"contnet": "typo"}])


# -- OllamaProvider ----------------------------------------------------------------------


def test_registry_and_endpoint_normalisation() -> None:
    cls = provider_class("ollama")
    assert cls is OllamaProvider
    assert isinstance(cls(name="o", kind="ollama", model=MODEL), Provider)
    assert OllamaProvider(name="o", model="m").endpoint == "http://localhost:11434"
    for given in ("http://h:11434/v1", "http://h:11434/v1/", "http://h:11434/"):
        assert OllamaProvider(name="o", model="m", endpoint=given).endpoint == "http://h:11434"


async def test_text_completion_exact_body_and_usage(servers: list[ScriptedOllamaServer]) -> None:
    server = _serve(servers, "Paris is sunny today")
    provider = _provider(server.url, parameters={"temperature": 0.0, "num_predict": 64})
    request = _ask(
        "weather in Paris?", parameters={"max_tokens": 8, "top_k": 20, "stop": ["\n"], "seed": 7}
    )
    try:
        completion = await provider.complete(request)
    finally:
        await provider.aclose()
    assert completion.message.content == "Paris is sunny today"
    assert completion.message.tool_calls == []
    assert (completion.finish_reason, completion.provider, completion.model) == (
        "stop",
        f"ollama:{MODEL}",
        MODEL,
    )
    assert server.requests[0] == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "weather in Paris?"}],
        "stream": False,
        # the request's max_tokens beats the default num_predict: same Ollama key
        "options": {"temperature": 0.0, "num_predict": 8, "top_k": 20, "stop": ["\n"], "seed": 7},
    }
    usage = completion.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens, usage.calls) == (
        3,
        4,
        7,
        1,
    )


async def test_tool_call_round_trip_on_the_wire(servers: list[ScriptedOllamaServer]) -> None:
    server = _serve(
        servers,
        {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]},
        "It is 21 C in Paris",
    )
    provider = _provider(server.url, parameters={"max_tokens": 100, "repeat_penalty": 1.1})
    system = Message(role="system", content="You answer weather questions.")
    user = Message(role="user", content="Weather in Paris?")
    first = await provider.complete(CompletionRequest(messages=[system, user], tools=[WEATHER]))
    assert first.finish_reason == "tool_calls"  # Ollama itself says "stop"
    assert first.message.tool_calls == [
        ToolCall(id="call_0", name="get_weather", arguments={"city": "Paris", "unit": "C"})
    ]
    # A tool message without a name gets it from the call it answers (Ollama pairs by name).
    result = Message(role="tool", content='{"temp": 21}', tool_call_id="call_0")
    second = await provider.complete(
        CompletionRequest(messages=[system, user, first.message, result], tools=[WEATHER])
    )
    await provider.aclose()
    assert second.message.content == "It is 21 C in Paris"
    assert second.finish_reason == "stop"
    body = server.requests[1]
    assert body["tools"] == [WIRE_WEATHER]
    assert body["options"] == {"num_predict": 100, "repeat_penalty": 1.1}
    assert body["messages"] == [
        {"role": "system", "content": "You answer weather questions."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}
            ],
        },
        {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"},
    ]
    server.assert_consumed()


async def test_stream_text_tool_calls_and_usage(servers: list[ScriptedOllamaServer]) -> None:
    nested = {"query": "ray serve", "filters": {"year": [2025, 2026]}, "k": 5}
    server = _serve(
        servers,
        "one two three four",
        {
            "content": "let me look",
            "tool_calls": [
                {"name": "search", "arguments": nested},
                {"id": "srv_7", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
            ],
        },
    )
    provider = _provider(server.url)
    chunks = await _collect(provider.stream(_ask("count to four please")))
    assert [c.text for c in chunks[:-1]] == ["one ", "two ", "three ", "four"]
    final = chunks[-1]
    assert final.text == "" and final.tool_calls == [] and final.finish_reason == "stop"
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.calls) == (4, 4, 1)
    assert server.requests[0]["stream"] is True
    chunks = await _collect(provider.stream(_ask("find it", tools=[WEATHER])))
    assert "".join(c.text for c in chunks) == "let me look"
    assert [c for c in chunks if c.tool_calls] == [chunks[-1]]  # emitted whole, at the end
    assert chunks[-1].tool_calls == [
        ToolCall(id="call_0", name="search", arguments=nested),
        ToolCall(id="srv_7", name="get_weather", arguments={"city": "Oslo"}),  # string decoded
    ]
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens > 0
    await provider.aclose()


async def test_missing_model_is_404_with_pull_hint(servers: list[ScriptedOllamaServer]) -> None:
    server = _serve(servers, "never", models=["qwen2.5:0.5b"])
    provider = _provider(server.url)
    for call in (provider.complete, lambda r: _collect(provider.stream(r))):
        with pytest.raises(ProviderError) as info:
            await call(_ask("hi"))
        error = info.value
        assert error.details["status"] == 404 and not error.retryable
        assert f'model "{MODEL}" not found' in error.message
        assert error.hint is not None and f"ollama pull {MODEL}" in error.hint
    assert server.remaining == 1  # a refused request consumes no step
    await provider.aclose()


async def test_connection_refused_is_retryable_with_a_hint() -> None:
    endpoint = f"http://127.0.0.1:{_unused_port()}"
    provider = _provider(endpoint)
    for call in (provider.complete, lambda r: _collect(provider.stream(r))):
        with pytest.raises(ProviderError) as info:
            await call(_ask("hi"))
        assert info.value.retryable and info.value.details["status"] is None
        assert info.value.hint == (
            f"start Ollama (`ollama serve`) at {endpoint} and pull the model "
            f"(`ollama pull {MODEL}`)"
        )
    await provider.aclose()


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (400, False)])
async def test_http_errors_carry_status_and_retryability(
    servers: list[ScriptedOllamaServer], status: int, retryable: bool
) -> None:
    server = _serve(servers, {"status": status, "error": f"backend says {status}"})
    with pytest.raises(ProviderError, match=f"backend says {status}") as info:
        await _provider(server.url).complete(_ask("hi"))
    assert info.value.details["status"] == status and info.value.retryable is retryable


async def test_mid_stream_error_line_is_a_provider_error(
    servers: list[ScriptedOllamaServer],
) -> None:
    server = _serve(servers, {"content": "half an", "stream_error": "model runner has stopped"})
    seen: list[str] = []
    with pytest.raises(ProviderError, match="model runner has stopped") as info:
        async for chunk in _provider(server.url).stream(_ask("hi")):
            seen.append(chunk.text)
    assert seen == ["half ", "an"] and info.value.retryable


async def test_malformed_string_arguments_are_marked(servers: list[ScriptedOllamaServer]) -> None:
    server = _serve(servers, {"tool_calls": [{"name": "get_weather", "arguments": '{"ci'}]})
    completion = await _provider(server.url).complete(_ask("hi", tools=[WEATHER]))
    [call] = completion.message.tool_calls
    assert (call.arguments, call.invalid_arguments) == ({}, '{"ci')


async def test_health(servers: list[ScriptedOllamaServer]) -> None:
    server = _serve(servers, models=["llama3.1:latest", MODEL])
    assert await _provider(server.url).health() is True
    assert await _provider(server.url, model="llama3.1").health() is True  # :latest implied
    assert await _provider(server.url, model="mistral").health() is False  # not pulled
    guarded = _serve(servers, require_api_key="tok")
    assert await _provider(guarded.url).health() is False  # 401
    provider = _provider(server.url)
    server.stop()
    assert await provider.health() is False  # down: never raises


async def test_bearer_token_headers_keep_alive_and_format(
    servers: list[ScriptedOllamaServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _serve(servers, '{"ok": true}', require_api_key="tok-1")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    provider = _provider(
        server.url,
        api_key_env="ASTRO_OLLAMA_KEY",
        options={"keep_alive": "10m", "format": schema, "headers": {"X-Team": "cx"}},
    )
    monkeypatch.delenv("ASTRO_OLLAMA_KEY", raising=False)
    with pytest.raises(ProviderError) as info:
        await provider.complete(_ask("hi"))
    assert info.value.details["status"] == 401 and info.value.hint == "set ASTRO_OLLAMA_KEY"
    monkeypatch.setenv("ASTRO_OLLAMA_KEY", "tok-1")
    assert (await provider.complete(_ask("hi"))).message.content == '{"ok": true}'
    await provider.aclose()
    headers = server.request_headers[-1]
    assert headers["authorization"] == "Bearer tok-1" and headers["x-team"] == "cx"
    assert server.requests[-1]["keep_alive"] == "10m"
    assert server.requests[-1]["format"] == schema


def test_options_and_parameters_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"unknown options 'organization'") as info:
        OllamaProvider(name="o", model="m", options={"organization": "x"})
    assert all(k in str(info.value.hint) for k in ("keep_alive", "format", "headers"))
    with pytest.raises(ConfigError, match=r"options\.format"):
        OllamaProvider(name="o", model="m", options={"format": "yaml"})
    with pytest.raises(ConfigError, match=r"options\.keep_alive"):
        OllamaProvider(name="o", model="m", options={"keep_alive": True})
    assert OllamaProvider(name="o", model="m", options={"keep_alive": -1}).keep_alive == -1
    with pytest.raises(ConfigError, match="'temprature'") as bad:
        OllamaProvider(name="o", model="m", parameters={"temprature": 0.1})
    assert "num_ctx" in str(bad.value.hint) and "max_tokens" in str(bad.value.hint)


async def test_unknown_request_parameter_fails_before_sending(
    servers: list[ScriptedOllamaServer],
) -> None:
    server = _serve(servers, "never")
    with pytest.raises(ProviderError, match="unknown sampling parameter 'logit_bias'") as info:
        await _provider(server.url).complete(_ask("hi", parameters={"logit_bias": {}}))
    assert not info.value.retryable and server.requests == []


def test_client_survives_event_loop_changes_and_pickling(
    servers: list[ScriptedOllamaServer],
) -> None:
    server = _serve(servers, "first", "second", "third")
    provider = _provider(server.url)
    assert asyncio.run(provider.complete(_ask("a"))).message.content == "first"
    # a new asyncio.run() is a new loop: the pooled client must be rebuilt, not reused
    assert asyncio.run(provider.complete(_ask("b"))).message.content == "second"
    clone = pickle.loads(pickle.dumps(provider))
    assert asyncio.run(clone.complete(_ask("c"))).message.content == "third"


# -- a whole ReAct turn from agent YAML --------------------------------------------------

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: calc
spec:
  model:
    primary:
      provider: ollama
      model: llama3.1:8b
      endpoint: "{url}"
      parameters:
        temperature: 0.1
        max_tokens: 64
  prompts:
    system: "Use the calculator for arithmetic."
  orchestration:
    pattern: react
    max_iterations: 3
  tools:
    - name: calculator
      type: builtin
"""


@pytest.mark.parametrize("streamed", [False, True])
async def test_react_turn_from_agent_yaml(
    servers: list[ScriptedOllamaServer], tmp_path: Path, streamed: bool
) -> None:
    server = _serve(
        servers,
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "(2+3)*4"}}]},
        "The answer is 20",
    )
    path = tmp_path / "calc.agent.yaml"
    path.write_text(AGENT.format(url=server.url))
    runtime = build_runtime(load_agent(path))
    request = RunRequest(query="What is (2+3)*4?")
    if streamed:
        events = [e async for e in runtime.stream(request)]
        assert [getattr(e, "name", None) for e in events if e.type == "tool_call"] == ["calculator"]
        last = events[-1]
        assert isinstance(last, RunFinished)
        result = last.result.to_dict()
    else:
        result = (await runtime.run(request)).to_dict()
    assert result["answer"] == "The answer is 20"
    assert [(s["tool"], s["result"]) for s in result["steps"] if "tool" in s] == [
        ("calculator", "20")
    ]
    assert result["usage"]["calls"] == 2 and result["usage"]["output_tokens"] > 0
    first, second = server.requests
    assert first["stream"] is streamed
    assert first["options"] == {"temperature": 0.1, "num_predict": 64}
    assert [t["function"]["name"] for t in first["tools"]] == ["calculator"]
    assert second["messages"][-2]["tool_calls"] == [
        {"function": {"name": "calculator", "arguments": {"expression": "(2+3)*4"}}}
    ]
    assert second["messages"][-1] == {"role": "tool", "content": "20", "tool_name": "calculator"}
    server.assert_consumed()


# -- thinking and tool-argument deltas --------------------------------------------------


async def test_ollama_client_reads_thinking_only_when_asked(
    servers: list[ScriptedOllamaServer],
) -> None:
    step = {"thinking": "two plus two is four", "content": "4"}
    server = _serve(servers, step, step, step)
    client = ollama.AsyncClient(host=server.url)
    ask = [{"role": "user", "content": "2+2?"}]
    whole = await client.chat(model=MODEL, messages=ask, think=True)
    assert whole.message.thinking == "two plus two is four" and whole.message.content == "4"
    parts = [p async for p in await client.chat(model=MODEL, messages=ask, think=True, stream=True)]
    assert "".join(p.message.thinking or "" for p in parts) == "two plus two is four"
    assert [p.message.content for p in parts if p.message.content] == ["4"]
    plain = await client.chat(model=MODEL, messages=ask)  # a model asked not to think
    assert plain.message.thinking is None and plain.message.content == "4"
    assert [r.get("think") for r in server.requests] == [True, True, None]


async def test_thinking_streams_as_reasoning_deltas(servers: list[ScriptedOllamaServer]) -> None:
    server = _serve(servers, {"thinking": "Let me add them up.", "content": "Four."}, "4")
    provider = _provider(server.url, options={"think": True})
    try:
        *deltas, final = await _collect(provider.stream(_ask("2+2?")))
        whole = await provider.complete(_ask("2+2?"))
    finally:
        await provider.aclose()
    assert [c.reasoning for c in deltas if c.reasoning] == ["Let ", "me ", "add ", "them ", "up."]
    assert "".join(c.text for c in deltas) == "Four."
    first_text = next(i for i, c in enumerate(deltas) if c.text)
    assert not any(c.reasoning for c in deltas[first_text:])
    assert final.is_last and final.reasoning == "" and final.usage is not None
    assert final.usage.output_tokens == 6  # thinking counts as generated tokens
    assert whole.message.content == "4"
    assert [r["think"] for r in server.requests] == [True, True]
    with pytest.raises(ConfigError, match=r"options\.think"):
        OllamaProvider(name="o", model="m", options={"think": "deep"})


async def test_each_tool_call_s_arguments_stream_as_it_arrives(
    servers: list[ScriptedOllamaServer],
) -> None:
    server = _serve(
        servers,
        {
            "tool_calls": [
                {"name": "search", "arguments": {"q": "ray"}},
                {"id": "srv_7", "name": "get_weather", "arguments": {"city": "Oslo"}},
            ]
        },
    )
    provider = _provider(server.url)
    try:
        *deltas, final = await _collect(provider.stream(_ask("find it", tools=[WEATHER])))
    finally:
        await provider.aclose()
    args = [d for c in deltas for d in c.tool_args]
    assert [(d.index, d.id, d.name, json.loads(d.arguments)) for d in args] == [
        (0, "call_0", "search", {"q": "ray"}),
        (1, "srv_7", "get_weather", {"city": "Oslo"}),
    ]
    # The same ids as the whole calls in the last chunk.
    assert [c.id for c in final.tool_calls] == ["call_0", "srv_7"]
