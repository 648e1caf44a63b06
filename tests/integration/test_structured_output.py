"""``CompletionRequest.response_schema`` on the wire of every HTTP provider.

Each provider sends a schema in its backend's own shape for constrained decoding
(``core/providers/structured.py``); the loopback servers record the bodies and refuse
malformed fields as the real backends do, and the official clients' own structured
requests are accepted by them.  The real llama.cpp server's grammar is checked in
``test_llamacpp_provider.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
import text_generation
from pydantic import BaseModel
from text_generation.types import Grammar, GrammarType

from astromesh_ray.core.messages import CompletionChunk, CompletionRequest, Message
from astromesh_ray.core.providers.ollama import OllamaProvider
from astromesh_ray.core.providers.openai import OpenAIProvider
from astromesh_ray.core.providers.tgi import TGIProvider
from astromesh_ray.testing import ScriptedOllamaServer, ScriptedOpenAIServer, ScriptedTGIServer

pytestmark = [
    pytest.mark.integration,
    # text-generation 0.7 (the last release) still calls pydantic's deprecated .dict()
    pytest.mark.filterwarnings("ignore:The `dict` method is deprecated:DeprecationWarning"),
]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}
ANSWER = '{"ok": true}'
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": SCHEMA, "strict": False},
}
TGI_GRAMMAR = {"type": "json", "value": SCHEMA}
OLLAMA_MODEL = "llama3.1:8b"

Server = ScriptedOpenAIServer | ScriptedOllamaServer | ScriptedTGIServer


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _ask(text: str = "Is it ok?", **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(messages=[Message(role="user", content=text)], **kwargs)


async def _collect(stream: AsyncIterator[CompletionChunk]) -> list[CompletionChunk]:
    return [chunk async for chunk in stream]


async def _both(provider: Any, request: CompletionRequest) -> tuple[str, str]:
    """The answer text, whole and streamed (then the provider closed)."""
    try:
        whole = await provider.complete(request)
        chunks = await _collect(provider.stream(request))
    finally:
        await provider.aclose()
    return whole.message.content or "", "".join(c.text for c in chunks)


# -- OpenAI-compatible kinds ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("openai_compat", JSON_SCHEMA),
        ("vllm", JSON_SCHEMA),  # vLLM >= 0.12 ignores guided_json: response_format it is
        ("llamacpp", {"type": "json_object", "schema": SCHEMA}),
    ],
)
def test_openai_wire_kinds_send_their_response_format(
    servers: list[Server], kind: str, expected: dict[str, Any]
) -> None:
    server = ScriptedOpenAIServer([ANSWER, ANSWER]).start()
    servers.append(server)
    provider = OpenAIProvider(name=f"{kind}:tiny", kind=kind, model="tiny", endpoint=server.url)
    request = _ask(parameters={"max_tokens": 9}, response_schema=SCHEMA)
    assert asyncio.run(_both(provider, request)) == (ANSWER, ANSWER)
    whole, streamed = server.requests
    assert whole["response_format"] == expected
    assert streamed["response_format"] == expected
    assert (whole["stream"], streamed["stream"]) == (False, True)
    assert all("guided_json" not in body for body in server.requests)
    server.assert_consumed()


def test_openai_wire_body_without_a_schema_is_unchanged(servers: list[Server]) -> None:
    server = ScriptedOpenAIServer([ANSWER]).start()
    servers.append(server)
    provider = OpenAIProvider(name="vllm:tiny", kind="vllm", model="tiny", endpoint=server.url)
    asyncio.run(provider.complete(_ask(parameters={"max_tokens": 9})))
    assert server.requests == [
        {
            "max_tokens": 9,
            "model": "tiny",
            "messages": [{"role": "user", "content": "Is it ok?"}],
            "stream": False,
        }
    ]


def test_the_schema_beats_a_response_format_parameter(servers: list[Server]) -> None:
    server = ScriptedOpenAIServer([ANSWER, ANSWER]).start()
    servers.append(server)
    provider = OpenAIProvider(
        name="openai_compat:tiny",
        kind="openai_compat",
        model="tiny",
        endpoint=server.url,
        parameters={"response_format": {"type": "json_object"}},
    )
    asyncio.run(provider.complete(_ask()))
    asyncio.run(provider.complete(_ask(response_schema=SCHEMA)))
    assert server.requests[0]["response_format"] == {"type": "json_object"}
    assert server.requests[1]["response_format"] == JSON_SCHEMA


@pytest.mark.parametrize(
    ("response_format", "status", "param", "message"),
    [
        ("json", 400, "response_format", "expected an object, but got a string"),
        ({"type": "xml"}, 400, "response_format.type", "Invalid value: 'xml'"),
        ({"type": "json_schema"}, 400, "response_format.json_schema", "Missing required"),
        (
            {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
            400,
            "response_format.json_schema.name",
            "Missing required parameter",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "my answer", "schema": SCHEMA}},
            400,
            "response_format.json_schema.name",
            "does not match pattern",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": "{}"}},
            400,
            "response_format.json_schema.schema",
            "expected an object",
        ),
    ],
)
def test_openai_server_refuses_a_malformed_response_format(
    response_format: Any, status: int, param: str, message: str
) -> None:
    with ScriptedOpenAIServer([ANSWER]) as server:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": response_format,
        }
        refused = httpx.post(f"{server.url}/chat/completions", json=body)
        assert refused.status_code == status
        error = refused.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"
        assert message in error["message"]
        assert server.requests == [body]  # recorded even when refused...
        assert server.remaining == 1  # ...and no step consumed
        for accepted in (
            {"type": "text"},
            {"type": "json_object"},
            {"type": "json_object", "schema": SCHEMA},  # llama-cpp-python's extension
            JSON_SCHEMA,
        ):
            server.add_steps(ANSWER)
            ok = httpx.post(
                f"{server.url}/chat/completions", json={**body, "response_format": accepted}
            )
            assert ok.status_code == 200, ok.text


class Verdict(BaseModel):
    ok: bool


def test_openai_client_structured_parse_is_accepted(servers: list[Server]) -> None:
    """The official client's own structured-output request (a strict json_schema from
    a pydantic model) passes the server's checks, and it parses the answer."""
    server = ScriptedOpenAIServer([ANSWER]).start()
    servers.append(server)
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    completion = client.chat.completions.parse(
        model="tiny", messages=[{"role": "user", "content": "ok?"}], response_format=Verdict
    )
    assert completion.choices[0].message.parsed == Verdict(ok=True)
    sent = server.requests[0]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Verdict"
    assert sent["json_schema"]["schema"]["required"] == ["ok"]


# -- Ollama's /api/chat ------------------------------------------------------------------


def _ollama(servers: list[Server], *steps: str) -> ScriptedOllamaServer:
    server = ScriptedOllamaServer(steps, models=[OLLAMA_MODEL]).start()
    servers.append(server)
    return server


async def test_ollama_sends_the_schema_as_format(servers: list[Server]) -> None:
    server = _ollama(servers, ANSWER, ANSWER, ANSWER)
    provider = OllamaProvider(
        name=f"ollama:{OLLAMA_MODEL}",
        model=OLLAMA_MODEL,
        endpoint=server.url,
        options={"format": "json"},
    )
    assert await _both(provider, _ask(response_schema=SCHEMA)) == (ANSWER, ANSWER)
    await provider.complete(_ask())
    await provider.aclose()
    whole, streamed, plain = server.requests
    assert whole["format"] == SCHEMA and streamed["format"] == SCHEMA  # beats options
    assert (whole["stream"], streamed["stream"]) == (False, True)
    assert plain["format"] == "json"  # without a schema, options.format as before
    server.assert_consumed()


async def test_ollama_server_refuses_a_format_ollama_cannot_take(servers: list[Server]) -> None:
    server = _ollama(servers, ANSWER, ANSWER)
    url = f"{server.url}/api/chat"
    body = {"model": OLLAMA_MODEL, "messages": [{"role": "user", "content": "x"}]}
    expected = 'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'
    async with httpx.AsyncClient() as client:
        whole = await client.post(url, json={**body, "format": "yaml", "stream": False})
        streamed = await client.post(url, json={**body, "format": "yaml"})
    assert whole.status_code == 500 and whole.json() == {"error": expected}
    # A stream has already answered 200 when Ollama finds out: an error line.
    assert streamed.status_code == 200
    assert [json.loads(line) for line in streamed.text.splitlines()] == [{"error": expected}]
    assert server.remaining == 2  # no step consumed
    # The official client's structured request (a schema as format) is accepted.
    client = ollama.AsyncClient(host=server.url)
    answer = await client.chat(
        model=OLLAMA_MODEL, messages=[{"role": "user", "content": "ok?"}], format=SCHEMA
    )
    assert answer.message.content == ANSWER
    assert server.requests[-1]["format"] == SCHEMA
    json_mode = await client.chat(
        model=OLLAMA_MODEL, messages=[{"role": "user", "content": "ok?"}], format="json"
    )
    assert json_mode.message.content == ANSWER
    server.assert_consumed()


# -- TGI: /generate, /generate_stream and the Messages API ------------------------------


def _tgi(servers: list[Server], *steps: str) -> ScriptedTGIServer:
    server = ScriptedTGIServer(steps).start()
    servers.append(server)
    return server


def _tgi_provider(url: str, **kwargs: Any) -> TGIProvider:
    return TGIProvider(name="hf_tgi:tiny", model="org/tiny", endpoint=url, **kwargs)


def test_tgi_generate_sends_a_json_grammar(servers: list[Server]) -> None:
    server = _tgi(servers, ANSWER, ANSWER)
    provider = _tgi_provider(server.url, parameters={"grammar": {"type": "regex", "value": "x"}})
    assert asyncio.run(_both(provider, _ask(response_schema=SCHEMA))) == (ANSWER, ANSWER)
    assert server.request_paths == ["/generate", "/generate_stream"]
    for body in server.requests:
        assert body["parameters"]["grammar"] == TGI_GRAMMAR  # beats the grammar parameter
    server.assert_consumed()


def test_tgi_gets_no_grammar_for_a_schema_it_would_refuse(servers: list[Server]) -> None:
    server = _tgi(servers, "[1]", ANSWER)
    provider = _tgi_provider(server.url)
    no_properties = {"type": "array", "items": {"type": "integer"}}
    assert asyncio.run(provider.complete(_ask(response_schema=no_properties))).message.content
    asyncio.run(provider.complete(_ask()))
    assert all("grammar" not in body["parameters"] for body in server.requests)
    # What TGI would have answered had it been sent:
    body = {"inputs": "x", "parameters": {"grammar": {"type": "json", "value": no_properties}}}
    refused = httpx.post(f"{server.url}/generate", json=body)
    assert refused.status_code == 422
    assert refused.json() == {
        "error": "Input validation error: grammar is not valid: "
        "Grammar must have a 'properties' field",
        "error_type": "validation",
    }
    server.assert_consumed()


@pytest.mark.parametrize(
    ("grammar", "status", "message"),
    [
        ({"type": "xml", "value": "x"}, 422, "unknown variant `xml`"),
        ({"type": "json"}, 422, "missing field `value`"),
        ({"type": "regex", "value": {"a": 1}}, 422, "invalid type: map, expected a string"),
        ({"type": "json", "value": 7}, 422, "grammar is not supported"),
        ({"type": "json", "value": "{not json"}, 422, "grammar is not valid"),
        ({"type": "json", "value": {"type": "objekt", "properties": {}}}, 422, "not valid"),
    ],
)
def test_tgi_server_refuses_a_malformed_grammar(grammar: Any, status: int, message: str) -> None:
    with ScriptedTGIServer([ANSWER]) as server:
        body = {"inputs": "x", "parameters": {"grammar": grammar}}
        refused = httpx.post(f"{server.url}/generate", json=body)
        assert refused.status_code == status and message in refused.text
        chat = {"messages": [{"role": "user", "content": "x"}], "response_format": grammar}
        refused_chat = httpx.post(f"{server.url}/v1/chat/completions", json=chat)
        assert refused_chat.status_code == status and message in refused_chat.text
        assert server.remaining == 1  # no step consumed
        for accepted in (
            TGI_GRAMMAR,
            {"type": "json_object", "value": json.dumps(SCHEMA)},  # an alias, JSON text
            {"type": "json_schema", "value": {"name": "answer", "schema": SCHEMA}},
            {"type": "regex", "value": "[a-z]+"},
        ):
            server.add_steps(ANSWER)
            ok = httpx.post(
                f"{server.url}/generate", json={**body, "parameters": {"grammar": accepted}}
            )
            assert ok.status_code == 200, ok.text


async def test_tgi_official_client_grammar_is_accepted(servers: list[Server]) -> None:
    server = _tgi(servers, ANSWER)
    client = text_generation.AsyncClient(server.url, timeout=10)
    grammar = Grammar(type=GrammarType.Json, value=SCHEMA)
    response = await client.generate("ok?", max_new_tokens=20, grammar=grammar)
    assert response.generated_text == ANSWER
    # The client's Grammar is exactly what TGIProvider sends.
    assert server.requests[0]["parameters"]["grammar"] == TGI_GRAMMAR
    server.assert_consumed()


def test_tgi_messages_mode_sends_tgi_s_response_format(servers: list[Server]) -> None:
    server = _tgi(servers, ANSWER, ANSWER, ANSWER)
    provider = _tgi_provider(server.url, options={"mode": "messages"})
    assert asyncio.run(_both(provider, _ask(response_schema=SCHEMA))) == (ANSWER, ANSWER)
    asyncio.run(provider.complete(_ask()))
    assert server.request_paths == ["/v1/chat/completions"] * 3
    whole, streamed, plain = server.requests
    assert whole["response_format"] == TGI_GRAMMAR  # TGI's GrammarType, not OpenAI's shape
    assert streamed["response_format"] == TGI_GRAMMAR and streamed["stream"] is True
    assert "response_format" not in plain
    server.assert_consumed()
