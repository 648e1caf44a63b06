"""The ``llamacpp`` provider against the real llama.cpp server.

``llama-cpp-python[server]`` serves a tiny random-weight Llama GGUF that the test
builds (``astromesh_ray.testing.tiny_gguf``).  Random weights decide nothing useful,
so the tests assert what the server guarantees: greedy decoding is deterministic,
the model never emits its stop token (a completion is exactly ``max_tokens`` long),
and ``chatml-function-calling`` constrains a forced tool call to the tool's JSON
Schema, so its arguments always parse and always satisfy the schema (and, likewise,
an answer to a request's ``response_schema``).
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolSchema,
)
from astromesh_ray.core.providers.base import local_provider
from astromesh_ray.core.providers.openai import OpenAIProvider
from astromesh_ray.core.tools.builtins.basic import calculator
from astromesh_ray.errors import ProviderError
from astromesh_ray.spec import load_agent, resolve_models
from astromesh_ray.testing.llamacpp_server import LlamaCppServer
from astromesh_ray.testing.tiny_gguf import build_tiny_gguf

pytestmark = pytest.mark.integration

# The grammar llama.cpp derives from this pattern only admits expressions the
# calculator can evaluate, so a random model still makes a call that succeeds.
EXPRESSION = r"^[1-9][0-9]? [+*] [1-9][0-9]?$"
CALCULATOR_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"expression": {"type": "string", "pattern": EXPRESSION}},
    "required": ["expression"],
}
CALCULATOR = ToolSchema(
    name="calculator",
    description="Evaluate an arithmetic expression.",
    parameters=CALCULATOR_PARAMETERS,
)
FORCE_CALCULATOR = {"type": "function", "function": {"name": "calculator"}}
GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    """The llama.cpp server on a freshly built tiny GGUF, shared by this module."""
    model = build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", seed=0)
    with LlamaCppServer(model) as running:
        print(f"llama.cpp server ready in {running.startup_s:.1f}s at {running.url}")
        yield running


def _provider(url: str, **kwargs: Any) -> OpenAIProvider:
    return OpenAIProvider(
        name="llamacpp:tiny", kind="llamacpp", model="tiny", endpoint=url, **kwargs
    )


def _ask(text: str, **parameters: Any) -> CompletionRequest:
    return CompletionRequest(messages=[Message(role="user", content=text)], parameters=parameters)


async def _collect(stream: AsyncIterator[CompletionChunk]) -> list[CompletionChunk]:
    return [chunk async for chunk in stream]


async def test_greedy_completion_is_deterministic_and_counted(server: LlamaCppServer) -> None:
    provider = _provider(server.url)
    try:
        first = await provider.complete(_ask("Hello, who are you?", **GREEDY))
        second = await provider.complete(_ask("Hello, who are you?", **GREEDY))
    finally:
        await provider.aclose()
    assert first.message.content, "the tiny model never emits EOS: text is never empty"
    assert first.message.content == second.message.content
    assert first.message.tool_calls == []
    assert first.model == "tiny"
    assert first.provider == "llamacpp:tiny"
    # EOS is unreachable for this model, so generation always runs to max_tokens.
    assert first.finish_reason == "length"
    assert first.usage.output_tokens == GREEDY["max_tokens"]
    assert first.usage.input_tokens > 0
    assert first.usage == second.usage
    assert first.usage.calls == 1


async def test_stream_reassembles_to_the_whole_completion(server: LlamaCppServer) -> None:
    provider = _provider(server.url)
    try:
        whole = await provider.complete(_ask("Tell me a story.", **GREEDY))
        chunks = await _collect(provider.stream(_ask("Tell me a story.", **GREEDY)))
    finally:
        await provider.aclose()
    texts = [c.text for c in chunks if c.text]
    assert len(texts) > 1, "llama.cpp streams token by token"
    assert "".join(texts) == whole.message.content
    last = chunks[-1]
    assert last.finish_reason == "length"
    assert last.tool_calls == []
    assert last.usage is not None and last.usage.calls == 1
    # The server reports no usage when streaming: counted with its tokenizer instead.
    assert last.usage.output_tokens == whole.usage.output_tokens  # max_tokens, greedy
    assert last.usage.input_tokens > 0


async def test_forced_tool_call_is_normalised(server: LlamaCppServer) -> None:
    provider = _provider(server.url)
    request = CompletionRequest(
        messages=[Message(role="user", content="What is 2 + 3?")],
        tools=[CALCULATOR],
        parameters={"temperature": 0, "max_tokens": 48, "tool_choice": FORCE_CALCULATOR},
    )
    try:
        completion = await provider.complete(request)
    finally:
        await provider.aclose()
    assert completion.finish_reason == "tool_calls"
    [call] = completion.message.tool_calls
    assert call.name == "calculator"
    assert call.id  # llama.cpp's own id; the engine pairs the result with it
    assert isinstance(call.arguments, dict)
    assert set(call.arguments) == {"expression"}
    assert re.fullmatch(EXPRESSION.strip("^$"), call.arguments["expression"])
    assert completion.usage.input_tokens > 0 and completion.usage.output_tokens > 0


VERDICT: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}


async def test_response_schema_constrains_the_real_server(server: LlamaCppServer) -> None:
    """The ``json_object`` + ``schema`` response format becomes llama.cpp's grammar: even
    random weights answer JSON matching the schema, then stop (the grammar leaves only
    the end of the answer), complete and streamed."""
    provider = _provider(server.url)
    request = CompletionRequest(
        messages=[Message(role="user", content="Is it ok? Answer in JSON.")],
        parameters={"temperature": 0, "max_tokens": 64},
        response_schema=VERDICT,
    )
    try:
        whole = await provider.complete(request)
        chunks = await _collect(provider.stream(request))
    finally:
        await provider.aclose()
    streamed = "".join(c.text for c in chunks)
    for text in (whole.message.content or "", streamed):
        answer = json.loads(text)
        jsonschema.validate(answer, VERDICT)
        assert set(answer) == {"ok"} and isinstance(answer["ok"], bool)
    assert whole.finish_reason == "stop"  # not "length": the grammar ended the answer
    assert chunks[-1].finish_reason == "stop"
    assert whole.usage.output_tokens < 64


def test_real_server_takes_json_object_with_a_schema_not_json_schema(
    server: LlamaCppServer,
) -> None:
    """Why the ``llamacpp`` kind does not send OpenAI's shape: llama-cpp-python's
    ``response_format.type`` is ``text`` or ``json_object`` only, and it answers
    anything else with a 500 (which a client would even retry)."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "ok?"}],
        "max_tokens": 64,
        "temperature": 0,
    }
    url = f"{server.url}/chat/completions"
    openai_shape = {"type": "json_schema", "json_schema": {"name": "answer", "schema": VERDICT}}
    refused = httpx.post(url, json={**body, "response_format": openai_shape}, timeout=60)
    assert refused.status_code == 500, refused.text
    assert "Input should be 'text' or 'json_object'" in refused.json()["error"]["message"]
    ours = {"type": "json_object", "schema": VERDICT}
    accepted = httpx.post(url, json={**body, "response_format": ours}, timeout=60)
    assert accepted.status_code == 200, accepted.text
    jsonschema.validate(json.loads(accepted.json()["choices"][0]["message"]["content"]), VERDICT)


@dataclass
class ForcedToolChoiceProvider:
    """Wraps a real provider: the first call must use ``tool``, later calls none.

    Random weights would pick whatever; forcing ``tool_choice`` makes a ReAct turn
    deterministic while every call still goes to the real server.  Records what it
    sent and what came back.
    """

    inner: OpenAIProvider
    tool: str
    sent: list[CompletionRequest] = field(default_factory=list)
    received: list[Completion] = field(default_factory=list)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.inner.name  # the trace names the real provider

    def _force(self, request: CompletionRequest) -> CompletionRequest:
        choice: Any = {"type": "function", "function": {"name": self.tool}}
        forced = CompletionRequest(
            messages=list(request.messages),
            tools=list(request.tools),
            parameters={**request.parameters, "tool_choice": choice if not self.sent else "none"},
        )
        self.sent.append(forced)
        return forced

    async def complete(self, request: CompletionRequest) -> Completion:
        completion = await self.inner.complete(self._force(request))
        self.received.append(completion)
        return completion

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        async for chunk in self.inner.stream(self._force(request)):
            yield chunk

    async def health(self) -> bool:
        return await self.inner.health()

    async def aclose(self) -> None:
        await self.inner.aclose()


AGENT_YAML = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: tiny-calc
spec:
  identity:
    description: "Does arithmetic with the calculator."
  model:
    primary:
      provider: llamacpp
      endpoint: "{url}"
      model: tiny
      parameters:
        temperature: 0
        max_tokens: 48
  prompts:
    system: "You are a calculator assistant. Use the calculator tool."
  orchestration:
    pattern: react
    max_iterations: 3
  tools:
    - name: calculator
      type: internal
      description: "Evaluate an arithmetic expression."
      parameters:
        type: object
        properties:
          expression:
            type: string
            pattern: "{pattern}"
        required: [expression]
"""


async def test_react_turn_with_a_real_tool_call(server: LlamaCppServer, tmp_path: Path) -> None:
    path = tmp_path / "tiny-calc.agent.yaml"
    path.write_text(AGENT_YAML.format(url=server.url, pattern=EXPRESSION))
    agent = load_agent(path)
    # The provider the YAML describes (the builtin calculator with the YAML's stricter
    # schema), wrapped only to force the tool choice.
    [endpoint] = resolve_models(agent, {})
    inner = local_provider(endpoint)
    assert isinstance(inner, OpenAIProvider)
    assert (inner.kind, inner.endpoint, inner.model) == ("llamacpp", server.url, "tiny")
    provider = ForcedToolChoiceProvider(inner=inner, tool="calculator")
    runtime = build_runtime(agent, provider=provider)
    try:
        result = await runtime.run(RunRequest(query="What is 2 + 3?"))
    finally:
        await provider.aclose()

    assert len(provider.received) == 2
    [call] = provider.received[0].message.tool_calls
    assert call.name == "calculator"
    expected = calculator(call.arguments["expression"])  # what the tool really answers
    [tool_step] = [s for s in result.to_dict()["steps"] if s["type"] == "tool_call"]
    assert tool_step["tool"] == "calculator"
    assert tool_step["arguments"] == call.arguments
    assert tool_step["is_error"] is False
    assert tool_step["result"] == expected

    # The second request carried the tool call and its result back to the server...
    followup = provider.sent[1].messages
    assert followup[-2].role == "assistant" and followup[-2].tool_calls == [call]
    assert followup[-1].role == "tool"
    assert (followup[-1].tool_call_id, followup[-1].content) == (call.id, expected)
    # ...and the answer is the server's text for it.
    final = provider.received[1]
    assert final.message.tool_calls == [] and final.message.content
    assert final.model == "tiny" and final.usage.output_tokens == 48
    assert result.answer == final.message.content
    assert result.usage.calls == 2
    assert result.usage.input_tokens == sum(c.usage.input_tokens for c in provider.received)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed on return: nothing listens there


async def test_unreachable_server_says_to_start_llamacpp() -> None:
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    provider = _provider(url, timeout_s=5.0)
    try:
        assert await provider.health() is False
        with pytest.raises(ProviderError) as caught:
            await provider.complete(_ask("hi", **GREEDY))
    finally:
        await provider.aclose()
    error = caught.value
    assert error.hint == f"start the llamacpp server at {url}"
    assert error.details["provider"] == "llamacpp:tiny"
    assert error.details["status"] is None
    assert error.retryable is True
    assert "cannot reach" in error.message


async def test_health_of_the_running_server(server: LlamaCppServer) -> None:
    provider = _provider(server.url)
    try:
        assert await provider.health() is True
    finally:
        await provider.aclose()


async def test_stream_usage_is_estimated_when_the_server_cannot_count(
    server: LlamaCppServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The real server, through a proxy that resets the connection of the token count
    request: the stream's usage falls back to the ~4 chars/token estimate (with a
    warning), never 0."""
    import logging

    from astromesh_ray.core.providers.openai_wire import estimate_usage
    from tests.integration.flaky_proxy import FlakyProxy

    with FlakyProxy(server.url.removesuffix("/v1"), ["pass", "reset"]) as proxy:
        provider = _provider(f"{proxy.url}/v1")
        request = _ask("Tell me a story.", **GREEDY)
        try:
            with caplog.at_level(logging.WARNING, logger="astromesh.providers"):
                chunks = await _collect(provider.stream(request))
        finally:
            await provider.aclose()
    text = "".join(c.text for c in chunks)
    assert text, "the tiny model never emits EOS: text is never empty"
    assert chunks[-1].usage == estimate_usage(request, text, [])
    assert chunks[-1].usage.input_tokens > 0 and chunks[-1].usage.output_tokens > 0
    assert [action for _, action in proxy.requests] == ["pass", "reset"]
    assert any("/extras/tokenize/count" in r.getMessage() for r in caplog.records)
