"""``CompletionRequest.response_schema`` across Ray, and as each wire format asks for it.

The HTTP providers are checked against their loopback servers in
``tests/integration/test_structured_output.py``; here are the pieces that need no
server: the dict round trip, the OpenAI wire body (also what in-cluster vLLM gets),
and the TGI grammar rule.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from astromesh_ray.core.messages import CompletionRequest, Message, ToolSchema
from astromesh_ray.core.providers.onnx import OnnxProvider
from astromesh_ray.core.providers.openai import OpenAIProvider
from astromesh_ray.core.providers.openai_wire import OpenAIChatWire
from astromesh_ray.core.providers.structured import (
    llamacpp_response_format,
    openai_response_format,
    tgi_grammar,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "why": {"type": "string"}},
    "required": ["ok"],
}
JSON_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": SCHEMA, "strict": False},
}


def _ask(**kwargs: Any) -> CompletionRequest:
    return CompletionRequest(messages=[Message(role="user", content="ok?")], **kwargs)


def test_response_schema_round_trips_through_a_plain_dict() -> None:
    request = _ask(
        tools=[ToolSchema(name="t", description="d", parameters={"type": "object"})],
        parameters={"temperature": 0},
        trace_parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        response_schema=SCHEMA,
    )
    wire = json.loads(json.dumps(request.to_dict()))  # what crosses Ray and HTTP
    assert wire["response_schema"] == SCHEMA
    back = CompletionRequest.from_dict(wire)
    assert back == request
    assert back.response_schema == SCHEMA
    # A dict from before the field existed (or that leaves it out) has no schema.
    del wire["response_schema"]
    assert CompletionRequest.from_dict(wire).response_schema is None
    assert _ask().to_dict()["response_schema"] is None


def test_openai_body_without_a_schema_is_unchanged() -> None:
    wire = OpenAIChatWire(name="p", model="m", source="here")
    body = wire.body(_ask(parameters={"max_tokens": 5}), stream=False)
    assert body == {
        "max_tokens": 5,
        "model": "m",
        "messages": [{"role": "user", "content": "ok?"}],
        "stream": False,
    }
    # A response_format sampling parameter still goes through as it always did.
    json_mode = {"response_format": {"type": "json_object"}}
    assert wire.body(_ask(parameters=json_mode), stream=False)["response_format"] == {
        "type": "json_object"
    }


def test_openai_body_asks_for_json_schema_and_the_schema_wins() -> None:
    wire = OpenAIChatWire(name="p", model="m", source="here")
    request = _ask(parameters={"response_format": {"type": "json_object"}}, response_schema=SCHEMA)
    for stream in (False, True):
        body = wire.body(request, stream=stream, defaults={"response_format": {"type": "text"}})
        assert body["response_format"] == JSON_SCHEMA_FORMAT
        assert "guided_json" not in body
    # The body is a valid request by the official client's own types.
    body = wire.body(request, stream=False)
    assert TypeAdapter(CompletionCreateParamsNonStreaming).validate_python(body)


def test_each_kind_s_response_format() -> None:
    assert openai_response_format(SCHEMA) == JSON_SCHEMA_FORMAT
    assert llamacpp_response_format(SCHEMA) == {"type": "json_object", "schema": SCHEMA}
    for kind, expected in [
        ("openai_compat", JSON_SCHEMA_FORMAT),
        ("vllm", JSON_SCHEMA_FORMAT),
        ("ollama", JSON_SCHEMA_FORMAT),  # Ollama's /v1 takes OpenAI's structured outputs
        ("llamacpp", {"type": "json_object", "schema": SCHEMA}),
    ]:
        provider = OpenAIProvider(name=kind, kind=kind, model="m", endpoint="http://h/v1")
        body = provider._wire.body(_ask(response_schema=SCHEMA), stream=False)
        assert body["response_format"] == expected, kind


def test_tgi_grammar_needs_top_level_properties() -> None:
    assert tgi_grammar(SCHEMA) == {"type": "json", "value": SCHEMA}
    # TGI answers 422 "Grammar must have a 'properties' field": send nothing instead.
    assert tgi_grammar({"type": "object"}) is None
    assert tgi_grammar({"type": "array", "items": {"type": "string"}}) is None
    # An OpenAI-wire server whose format declines a schema gets no response_format.
    wire = OpenAIChatWire(name="p", model="m", source="here", response_format=tgi_grammar)
    assert "response_format" not in wire.body(_ask(response_schema={}), stream=False)
    assert wire.body(_ask(response_schema=SCHEMA), stream=False)["response_format"] == {
        "type": "json",
        "value": SCHEMA,
    }


def test_which_providers_constrain_decoding_natively() -> None:
    from astromesh_ray.core.providers.ollama import OllamaProvider
    from astromesh_ray.core.providers.tgi import TGIProvider

    assert OpenAIProvider.native_structured_output is True
    assert OllamaProvider.native_structured_output is True
    assert TGIProvider.native_structured_output is True
    assert OnnxProvider.native_structured_output is False


async def test_in_cluster_vllm_gets_the_json_schema_response_format() -> None:
    """``VLLMChatAdapter`` hands ``ray.serve.llm``'s ``ChatCompletionRequest`` the same
    OpenAI body: the schema as ``response_format`` json_schema, complete and stream."""
    from astromesh_ray.serve.vllm_chat import VLLMChatAdapter

    bodies: list[dict[str, Any]] = []
    answer = {
        "model": "served",
        "choices": [{"message": {"role": "assistant", "content": '{"ok": true}'}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 4},
    }

    async def chat(request: Any) -> AsyncIterator[Any]:
        if request["stream"]:
            delta = {"choices": [{"delta": {"content": '{"ok": true}'}, "finish_reason": "stop"}]}
            yield [f"data: {json.dumps(delta)}\n\n", "data: [DONE]\n\n"]
        else:
            yield answer

    async def healthy() -> None:
        return None

    def make_request(body: dict[str, Any]) -> dict[str, Any]:
        bodies.append(body)
        return body

    adapter = VLLMChatAdapter(
        name="vllm:m", model_id="served", chat=chat, make_request=make_request,
        check_health=healthy,
    )  # fmt: skip
    request = _ask(response_schema=SCHEMA).to_dict()
    whole = await adapter.complete(request)
    chunks = [c async for c in adapter.stream(request)]
    assert "error" not in whole, whole
    assert whole["ok"]["message"]["content"] == '{"ok": true}'
    assert all("ok" in c for c in chunks), chunks
    assert "".join(c["ok"]["text"] for c in chunks) == '{"ok": true}'
    assert [b["stream"] for b in bodies] == [False, True]
    assert all(b["response_format"] == JSON_SCHEMA_FORMAT for b in bodies)
    assert all("guided_json" not in b for b in bodies)
    # Without a schema the body has no response_format at all.
    await adapter.complete(_ask().to_dict())
    assert "response_format" not in bodies[-1]
