"""TGIProvider against ScriptedTGIServer over real loopback HTTP.

The server's wire format is checked first with the official ``text-generation`` client
(and, for the Messages API stream, the ``openai`` client TGI documents), so passing
here means the provider speaks what text-generation-inference speaks.
"""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import text_generation
from text_generation.types import FinishReason

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.messages import (
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolSchema,
)
from astromesh_ray.core.providers import Provider, provider_class
from astromesh_ray.core.providers.chat_format import ChatFormat
from astromesh_ray.core.providers.tgi import TGIProvider
from astromesh_ray.errors import ConfigError, ProviderError
from astromesh_ray.spec import load_agent
from astromesh_ray.testing import ScriptedTGIServer
from astromesh_ray.testing.scripted import count_words

pytestmark = [
    pytest.mark.integration,
    # text-generation 0.7 (the last release) still calls pydantic's deprecated .dict()
    pytest.mark.filterwarnings("ignore:The `dict` method is deprecated:DeprecationWarning"),
]

WEATHER = ToolSchema(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.fixture
def servers() -> Iterator[list[ScriptedTGIServer]]:
    started: list[ScriptedTGIServer] = []
    yield started
    for server in started:
        server.stop()


def _serve(servers: list[ScriptedTGIServer], *steps: str | dict[str, Any], **kw: Any) -> Any:
    server = ScriptedTGIServer(steps, **kw).start()
    servers.append(server)
    return server


def _provider(endpoint: str, **kwargs: Any) -> TGIProvider:
    return TGIProvider(name="hf_tgi:tiny", model="org/tiny", endpoint=endpoint, **kwargs)


def _ask(text: str, **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(messages=[Message(role="user", content=text)], **kwargs)


async def _collect(stream: AsyncIterator[CompletionChunk]) -> list[CompletionChunk]:
    return [chunk async for chunk in stream]


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the server's wire format, checked with the official text-generation client ---------


async def test_official_client_generate_parses_details(
    servers: list[ScriptedTGIServer],
) -> None:
    server = _serve(servers, "Hello there world")
    client = text_generation.AsyncClient(server.url, timeout=10)
    response = await client.generate(
        "say hello please", max_new_tokens=20, decoder_input_details=True
    )
    assert response.generated_text == "Hello there world"
    details = response.details
    assert details.finish_reason == FinishReason.EndOfSequenceToken
    assert [t.text for t in details.prefill] == ["say ", "hello ", "please"]
    assert [t.text for t in details.tokens] == ["Hello ", "there ", "world", "<|im_end|>"]
    assert [t.special for t in details.tokens] == [False, False, False, True]
    assert details.generated_tokens == 4  # three words and the EOS token
    assert server.request_paths == ["/"]  # the client uses TGI's compat route
    server.assert_consumed()


async def test_official_client_stream_honours_limits_and_stops(
    servers: list[ScriptedTGIServer],
) -> None:
    server = _serve(servers, "one two three four five", "alpha beta STOP gamma")
    client = text_generation.AsyncClient(server.url, timeout=10)
    events = [r async for r in client.generate_stream("count", max_new_tokens=3)]
    assert [e.token.text for e in events] == ["one ", "two ", "three "]
    assert [e.generated_text for e in events[:-1]] == [None, None]
    assert events[-1].generated_text == "one two three "
    assert events[-1].details is not None
    assert events[-1].details.finish_reason == FinishReason.Length
    assert events[-1].details.generated_tokens == 3
    events = [r async for r in client.generate_stream("go", stop_sequences=["STOP"])]
    assert events[-1].generated_text == "alpha beta STOP "  # TGI keeps the stop text
    assert events[-1].details is not None
    assert events[-1].details.finish_reason == FinishReason.StopSequence


async def test_official_client_error_classes(servers: list[ScriptedTGIServer]) -> None:
    server = _serve(
        servers,
        {"status": 422, "error": "Input validation error: too long"},
        {"status": 429, "error": "Model is overloaded"},
        {"status": 424, "error": "Request failed during generation: OOM"},
    )
    client = text_generation.AsyncClient(server.url, timeout=10)
    with pytest.raises(text_generation.errors.ValidationError, match="too long"):
        await client.generate("x")
    with pytest.raises(text_generation.errors.OverloadedError):
        await client.generate("x")
    # Errors inside a started stream arrive as events that the client raises.
    with pytest.raises(text_generation.errors.GenerationError, match="OOM"):
        [r async for r in client.generate_stream("x")]
    server.assert_consumed()


async def test_official_client_messages_api(servers: list[ScriptedTGIServer]) -> None:
    server = _serve(servers, "Bonjour tout le monde")
    client = text_generation.AsyncClient(server.url, timeout=10)
    response = await client.chat(messages=[{"role": "user", "content": "greet me in French"}])
    assert response.choices[0].message.content == "Bonjour tout le monde"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage["prompt_tokens"] == 4
    assert server.request_paths == ["/v1/chat/completions"]


async def test_huggingface_hub_inference_client(servers: list[ScriptedTGIServer]) -> None:
    # huggingface_hub's InferenceClient is text-generation's maintained successor.
    from huggingface_hub import AsyncInferenceClient

    server = _serve(servers, "alpha beta", "one two three")
    client = AsyncInferenceClient(base_url=server.url)
    whole = await client.text_generation("hi", details=True, max_new_tokens=10)
    assert whole.generated_text == "alpha beta"
    assert whole.details is not None and whole.details.finish_reason == "eos_token"
    events = [e async for e in await client.text_generation("hi", stream=True, details=True)]
    assert "".join(e.token.text for e in events if not e.token.special) == "one two three"
    assert events[-1].details is not None and events[-1].details.input_length == 1
    assert events[-1].generated_text == "one two three"


def test_openai_client_streams_messages_api_tool_calls(
    servers: list[ScriptedTGIServer],
) -> None:
    # TGI documents the openai client for its Messages API.
    server = _serve(servers, CALL)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0, timeout=10)
    with client.chat.completions.stream(
        model="tgi",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.prompt_tokens == 3


def test_raw_wire_format(servers: list[ScriptedTGIServer]) -> None:
    server = _serve(servers, "a b")
    body = {"inputs": "hi there", "parameters": {"details": True, "temperature": 0}}
    refused = httpx.post(f"{server.url}/generate", json=body)
    assert refused.status_code == 422
    assert refused.json() == {
        "error": "Input validation error: `temperature` must be strictly positive",
        "error_type": "validation",
    }
    assert server.remaining == 1  # a refused request consumes no step
    body["parameters"] = {"details": True}
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data:{") for line in lines)  # no space, as TGI writes it
    events = [json.loads(line[5:]) for line in lines]
    assert [e["index"] for e in events] == [1, 2, 3]
    assert events[-1]["token"]["special"] is True
    assert events[-1]["details"] == {
        "finish_reason": "eos_token",
        "generated_tokens": 3,
        "seed": None,
        "input_length": 2,
    }
    # A validation error inside a started stream: HTTP 200, then an error event.
    body["parameters"] = {"top_p": 1.0}
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert json.loads(lines[0][5:]) == {
        "error": "Input validation error: `top_p` must be > 0.0 and < 1.0",
        "error_type": "validation",
    }
    info = httpx.get(f"{server.url}/info").json()
    assert info["model_id"] == "scripted/tgi-model" and info["max_stop_sequences"] == 4
    assert httpx.get(f"{server.url}/health").status_code == 200
    with pytest.raises(ValueError, match="unknown step keys"):
        ScriptedTGIServer([{"txt": "typo"}])


# -- TGIProvider: /generate ---------------------------------------------------------------


def test_registry_resolves_hf_tgi() -> None:
    cls = provider_class("hf_tgi")
    assert cls is TGIProvider
    provider = cls(name="t", kind="hf_tgi", model="m")
    assert provider.endpoint == "http://localhost:8080"
    assert isinstance(provider, Provider)


def test_text_completion_maps_parameters_and_counts_usage(
    servers: list[ScriptedTGIServer],
) -> None:
    server = _serve(servers, "Paris is sunny today")
    provider = _provider(server.url, parameters={"temperature": 0.0, "max_tokens": 64})
    request = _ask("weather in Paris?", parameters={"max_tokens": 8, "top_p": 1.0})
    completion = asyncio.run(provider.complete(request))
    assert completion.message.content == "Paris is sunny today"
    assert completion.message.tool_calls == []
    assert (completion.finish_reason, completion.provider, completion.model) == (
        "stop",
        "hf_tgi:tiny",
        "org/tiny",
    )
    body = server.requests[0]
    assert server.request_paths == ["/generate"]
    assert body["parameters"] == {
        "max_new_tokens": 8,  # max_tokens renamed; the request's value wins
        "do_sample": False,  # temperature 0 means greedy; TGI refuses temperature 0
        "stop": ["<|im_end|>", "<|endoftext|>"],
        "details": True,
        "return_full_text": False,
    }  # top_p 1.0 ("no nucleus filter") is left out: TGI refuses it
    # usage: prompt from x-prompt-tokens, output from details (4 words + EOS)
    usage = completion.usage
    assert (usage.input_tokens, usage.output_tokens, usage.calls) == (
        count_words(body["inputs"]),
        5,
        1,
    )


def test_sampling_parameters_and_length_finish(servers: list[ScriptedTGIServer]) -> None:
    server = _serve(servers, "one two three four five six")
    provider = _provider(
        server.url, parameters={"temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 7}
    )
    completion = asyncio.run(provider.complete(_ask("count", parameters={"max_tokens": 2})))
    params = server.requests[0]["parameters"]
    assert params["temperature"] == 0.7 and params["do_sample"] is True
    assert (params["top_p"], params["top_k"], params["seed"]) == (0.9, 40, 7)
    assert completion.message.content == "one two"
    assert completion.finish_reason == "length"
    assert completion.usage.output_tokens == 2


def test_tool_call_parsed_and_prompt_is_chatml_with_tools(
    servers: list[ScriptedTGIServer],
) -> None:
    server = _serve(servers, f"Let me look. {CALL}", "It is 21 C in Paris.")
    provider = _provider(server.url)
    system = Message(role="system", content="You answer weather questions.")
    user = Message(role="user", content="Weather in Paris?")
    first = asyncio.run(provider.complete(CompletionRequest([system, user], tools=[WEATHER])))
    assert first.finish_reason == "tool_calls"
    assert first.message.content == "Let me look."
    [call] = first.message.tool_calls
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    assert isinstance(call.id, str) and call.id
    prompt = server.requests[0]["inputs"]
    assert prompt == ChatFormat().render([system, user], [WEATHER])
    assert prompt.startswith("<|im_start|>system\nYou answer weather questions.")
    assert '"name": "get_weather"' in prompt and "<tools>" in prompt
    assert prompt.endswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")

    result = Message(role="tool", content='{"temp": 21}', tool_call_id=call.id, name=call.name)
    second = asyncio.run(
        provider.complete(CompletionRequest([system, user, first.message, result], [WEATHER]))
    )
    assert second.message.content == "It is 21 C in Paris."
    prompt = server.requests[1]["inputs"]
    # the call is replayed in the assistant turn (Jinja's tojson sorts keys)
    assert (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in prompt
    )
    assert '<tool_response>\n{"temp": 21}\n</tool_response>' in prompt
    server.assert_consumed()


def test_stream_text_deltas_skip_special_tokens(servers: list[ScriptedTGIServer]) -> None:
    # A special token mid-stream: flagged special, and not in generated_text either.
    server = _serve(servers, "one two <|im_start|>three four")
    chunks = asyncio.run(_collect(_provider(server.url).stream(_ask("count to four please"))))
    deltas = [c.text for c in chunks if c.text]
    assert len(deltas) >= 3 and "".join(deltas) == "one two three four"
    assert not any("<|" in d for d in deltas)
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.tool_calls == [] and final.text == ""
    assert final.usage is not None
    prompt = server.requests[0]["inputs"]
    # 4 words, the special token and EOS: every generated token counts
    assert (final.usage.input_tokens, final.usage.output_tokens) == (count_words(prompt), 6)
    assert server.request_paths == ["/generate_stream"]


def test_streamed_tool_call_is_held_back_and_emitted_whole(
    servers: list[ScriptedTGIServer],
) -> None:
    two = CALL + '\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    server = _serve(servers, f"Checking both cities. {two}")
    chunks = asyncio.run(_collect(_provider(server.url).stream(_ask("Paris and Oslo?"))))
    deltas = [c.text for c in chunks if c.text]
    assert "".join(deltas) == "Checking both cities."
    assert not any("<" in d or "tool" in d for d in deltas)
    with_calls = [c for c in chunks if c.tool_calls]
    assert with_calls == [chunks[-1]]
    assert [(c.name, c.arguments) for c in chunks[-1].tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Oslo"}),
    ]
    assert len({c.id for c in chunks[-1].tool_calls}) == 2
    assert chunks[-1].finish_reason == "tool_calls"


def test_usage_estimated_when_the_server_reports_none(
    servers: list[ScriptedTGIServer],
) -> None:
    server = _serve(servers, "short answer")
    server.usage_headers = False  # as TGI versions without x-prompt-tokens
    completion = asyncio.run(_provider(server.url).complete(_ask("a question")))
    prompt = server.requests[0]["inputs"]
    assert completion.usage.input_tokens == math.ceil(len(prompt) / 4)
    assert completion.usage.output_tokens == 3  # still exact, from details


def test_custom_chat_template_and_stop_option(servers: list[ScriptedTGIServer]) -> None:
    template = (
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    server = _serve(servers, "Fine thanks. [user] and you?")
    provider = _provider(server.url, options={"chat_template": template, "stop": ["[user]"]})
    completion = asyncio.run(provider.complete(_ask("How are you?")))
    assert server.requests[0]["inputs"] == "[user] How are you?\n[assistant] "
    assert server.requests[0]["parameters"]["stop"] == ["<|im_end|>", "<|endoftext|>", "[user]"]
    # TGI stopped on "[user]" and kept it in the text; the provider cuts it off.
    assert completion.message.content == "Fine thanks."
    assert completion.finish_reason == "stop"
    # a template that does not compile is a config error, at build time
    with pytest.raises(ConfigError, match="Jinja2 syntax error"):
        _provider(server.url, options={"chat_template": "{% for %}"})


@pytest.mark.parametrize(
    ("status", "retryable"), [(422, False), (424, True), (429, True), (500, True), (503, True)]
)
def test_http_errors_carry_status_and_retryability(
    servers: list[ScriptedTGIServer], status: int, retryable: bool
) -> None:
    server = _serve(servers, {"status": status, "error": f"backend says {status}"})
    with pytest.raises(ProviderError) as info:
        asyncio.run(_provider(server.url).complete(_ask("hi")))
    assert info.value.details["status"] == status
    assert info.value.retryable is retryable
    assert f"backend says {status}" in info.value.message
    assert info.value.details["provider"] == "hf_tgi:tiny"


def test_stream_errors(servers: list[ScriptedTGIServer]) -> None:
    server = _serve(
        servers,
        {"status": 503, "error": "Model is loading"},
        {"status": 422, "error": "Input validation error: `inputs` too long"},
        {"text": "partial answer", "stream_error": "Request failed during generation: OOM"},
    )
    provider = _provider(server.url)
    with pytest.raises(ProviderError, match="Model is loading") as info:
        asyncio.run(_collect(provider.stream(_ask("hi"))))
    assert info.value.retryable and info.value.details["status"] == 503
    with pytest.raises(ProviderError, match="too long") as info:  # an in-stream event
        asyncio.run(_collect(provider.stream(_ask("hi"))))
    assert not info.value.retryable and info.value.details["error_type"] == "validation"
    with pytest.raises(ProviderError, match="OOM") as info:
        asyncio.run(_collect(provider.stream(_ask("hi"))))
    assert info.value.retryable and info.value.details["error_type"] == "generation"
    server.assert_consumed()


@pytest.mark.parametrize("mode", ["generate", "messages"])
def test_connection_refused_is_retryable_with_a_start_hint(mode: str) -> None:
    endpoint = f"http://127.0.0.1:{_unused_port()}"
    provider = TGIProvider(
        name="hf_tgi:m", model="org/m", endpoint=endpoint, options={"mode": mode}
    )
    for call in (provider.complete, lambda r: _collect(provider.stream(r))):
        with pytest.raises(ProviderError) as info:
            asyncio.run(call(_ask("hi")))
        assert info.value.retryable and info.value.details["status"] is None
        assert info.value.hint == (
            f"start text-generation-inference at {endpoint} "
            "(text-generation-launcher --model-id org/m)"
        )
    assert asyncio.run(provider.health()) is False


def test_health(servers: list[ScriptedTGIServer]) -> None:
    server = _serve(servers)
    provider = _provider(server.url)
    assert asyncio.run(provider.health()) is True
    server.healthy = False
    assert asyncio.run(provider.health()) is False
    server.healthy = True
    server.stop()
    assert asyncio.run(provider.health()) is False


def test_unknown_options_and_parameters_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown options 'organization'") as info:
        TGIProvider(name="x", model="m", options={"organization": "o"})
    assert info.value.hint is not None
    assert all(name in info.value.hint for name in ("mode", "chat_template", "stop", "headers"))
    with pytest.raises(ConfigError, match="option mode"):
        TGIProvider(name="x", model="m", options={"mode": "chat"})
    with pytest.raises(ConfigError, match="'presence_penalty'"):
        TGIProvider(name="x", model="m", parameters={"presence_penalty": 1})
    with pytest.raises(ConfigError, match="chat_template works in mode generate only"):
        TGIProvider(name="x", model="m", options={"mode": "messages", "chat_template": "x"})
    provider = TGIProvider(name="x", model="m")
    with pytest.raises(ProviderError, match="'logit_bias'") as refused:
        asyncio.run(provider.complete(_ask("hi", parameters={"logit_bias": {}})))
    assert not refused.value.retryable


def test_api_key_and_headers_are_sent(
    servers: list[ScriptedTGIServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _serve(servers, "ok", "never", require_api_key="hf_secret")
    monkeypatch.setenv("ASTRO_TGI_KEY", "hf_secret")
    provider = _provider(
        server.url, api_key_env="ASTRO_TGI_KEY", options={"headers": {"X-Team": "cx"}}
    )
    assert asyncio.run(provider.complete(_ask("hi"))).message.content == "ok"
    assert server.request_headers[0]["authorization"] == "Bearer hf_secret"
    assert server.request_headers[0]["x-team"] == "cx"
    monkeypatch.setenv("ASTRO_TGI_KEY", "wrong")
    with pytest.raises(ProviderError) as info:
        asyncio.run(provider.complete(_ask("hi")))
    assert info.value.details["status"] == 401 and not info.value.retryable
    assert info.value.hint == "check the API key in ASTRO_TGI_KEY"


def test_pickling_and_event_loop_changes(servers: list[ScriptedTGIServer]) -> None:
    server = _serve(servers, "first", "second", "third")
    template = "{% for m in messages %}{{ m.content }}{% endfor %}>>"
    provider = _provider(server.url, options={"chat_template": template})
    assert asyncio.run(provider.complete(_ask("a"))).message.content == "first"
    assert asyncio.run(provider.complete(_ask("b"))).message.content == "second"
    clone = pickle.loads(pickle.dumps(provider))  # a replica receives it like this
    assert asyncio.run(clone.complete(_ask("c"))).message.content == "third"
    assert server.requests[2]["inputs"] == "c>>"


# -- TGIProvider: messages mode (TGI's OpenAI-compatible API) ------------------------------


def test_messages_mode_round_trip(servers: list[ScriptedTGIServer]) -> None:
    server = _serve(servers, CALL, "It is 21 C.", "streamed words here")
    provider = _provider(
        server.url,
        options={"mode": "messages", "stop": ["END"]},
        parameters={"max_tokens": 50, "presence_penalty": 0.5},  # OpenAI's, passed on
    )
    user = Message(role="user", content="Weather in Paris?")
    first = asyncio.run(provider.complete(CompletionRequest([user], tools=[WEATHER])))
    assert first.finish_reason == "tool_calls"
    [call] = first.message.tool_calls
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    body = server.requests[0]
    assert server.request_paths[0] == "/v1/chat/completions"
    assert body["model"] == "org/tiny" and body["max_tokens"] == 50
    assert body["stop"] == ["END"] and body["presence_penalty"] == 0.5
    assert body["tools"][0]["function"]["name"] == "get_weather"

    result = Message(role="tool", content="21 C", tool_call_id=call.id, name=call.name)
    second = asyncio.run(provider.complete(CompletionRequest([user, first.message, result])))
    assert second.message.content == "It is 21 C."
    assert server.requests[1]["messages"][2]["tool_call_id"] == call.id

    chunks = asyncio.run(_collect(provider.stream(_ask("talk"))))
    assert "".join(c.text for c in chunks) == "streamed words here"
    assert chunks[-1].usage is not None and chunks[-1].usage.input_tokens == 1
    server.assert_consumed()


# -- a ReAct turn from agent YAML --------------------------------------------------------

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: tgi-calc
spec:
  model:
    primary:
      provider: hf_tgi
      model: some/model
      endpoint: "{url}"
      parameters:
        temperature: 0
  prompts:
    system: "You compute."
  tools:
    - name: calculator
      type: builtin
"""


def test_react_turn_through_build_runtime(servers: list[ScriptedTGIServer], tmp_path: Path) -> None:
    server = _serve(
        servers,
        '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>',
        "6 times 7 is 42.",
    )
    path = tmp_path / "calc.agent.yaml"
    path.write_text(AGENT.format(url=server.url))
    runtime = build_runtime(load_agent(path))
    result = asyncio.run(runtime.run(RunRequest(query="What is 6*7?")))
    assert result.answer == "6 times 7 is 42."
    [step] = [s for s in result.to_dict()["steps"] if s["type"] == "tool_call"]
    assert (step["tool"], step["arguments"], step["result"]) == (
        "calculator",
        {"expression": "6*7"},
        "42",
    )
    assert server.request_paths == ["/generate", "/generate"]
    first, second = (r["inputs"] for r in server.requests)
    assert first.startswith("<|im_start|>system\nYou compute.")
    assert '"name": "calculator"' in first  # the tool is offered in the prompt
    assert "<tool_response>\n42\n</tool_response>" in second
    assert server.requests[0]["parameters"]["do_sample"] is False
    assert result.usage.calls == 2
    assert result.usage.output_tokens > 0
    server.assert_consumed()
