"""In-cluster vLLM (``serve/vllm.py``, ``serve/vllm_chat.py``) without a GPU or vLLM.

What runs for real: Ray's ``LLMConfig`` validation of the config we build from YAML,
Ray's Serve and autoscaler schemas for ``deployments/gpu-vllm.yaml`` and
``cluster/gpu.yaml``, the translation to and from the OpenAI wire format (checked
against the ``openai`` package's own request and response types, which vLLM's
mirror), and a ReAct turn over real Serve through the real ``ProviderMethods`` and
``VLLMChatAdapter`` in a replica whose engine is scripted.  What cannot run here is
vLLM itself: the engine, ``ChatCompletionRequest`` and GPU placement.
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from pydantic import TypeAdapter
from ray import serve

from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolArgsDelta,
    ToolCall,
    ToolSchema,
)
from astromesh_ray.core.providers.openai_wire import OpenAIChatWire
from astromesh_ray.errors import ConfigError, ProviderError
from astromesh_ray.serve.builders import BUILDERS, deploy_config, plan, provider_endpoints
from astromesh_ray.serve.outcome import unwrap
from astromesh_ray.serve.providers import ServeProvider
from astromesh_ray.serve.vllm import (
    INSTALL_HINT,
    gpus_per_replica,
    in_cluster,
    llm_config,
    vllm_app,
)
from astromesh_ray.serve.vllm_chat import ProviderMethods, VLLMChatAdapter, stream_chunks
from astromesh_ray.spec import DeploymentSpec, ModelEndpoint, load_config

ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIG = ROOT / "deployments" / "gpu-vllm"
MODEL = "Qwen/Qwen2.5-7B-Instruct"
NAME = f"vllm:{MODEL}"


def endpoint(options: dict[str, Any], deployment: dict[str, Any] | None = None) -> ModelEndpoint:
    spec = DeploymentSpec.model_validate(deployment) if deployment is not None else None
    return ModelEndpoint(provider="vllm", model=MODEL, options=options, deployment=spec)


def gpu_endpoint() -> ModelEndpoint:
    (only,) = provider_endpoints(load_config(GPU_CONFIG)).values()
    return only


# -- LLMConfig from YAML ---------------------------------------------------------------


def test_llm_config_from_the_gpu_example_yaml() -> None:
    from ray.llm._internal.common.placement import PlacementGroupConfig

    ep = gpu_endpoint()
    assert in_cluster(ep)
    config = llm_config(ep)  # Ray's own LLMConfig validated it

    assert config.model_id == "qwen2.5-32b-instruct"
    assert config.model_loading_config.model_source == "Qwen/Qwen2.5-32B-Instruct"
    assert config.engine_kwargs == {
        "tensor_parallel_size": 2,
        "max_model_len": 8192,
        "gpu_memory_utilization": 0.9,
        "enable_auto_tool_choice": True,
        "tool_call_parser": "hermes",
        "enable_prefix_caching": True,
    }
    assert config.max_request_context_length == 8192
    assert config.accelerator_type == "H100"
    assert config.accelerator_config.kind == "gpu"

    deployment = config.deployment_config
    assert deployment["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 16.0,
        "upscale_delay_s": 30.0,
        "downscale_delay_s": 600.0,
    }
    assert deployment["max_ongoing_requests"] == 64
    # GPUs belong to the engine workers' bundles; the replica actor keeps its CPUs.
    assert deployment["ray_actor_options"] == {"num_cpus": 2.0}
    assert config.placement_group_config == {"bundle_per_worker": {"GPU": 1.0}}
    bundles = PlacementGroupConfig(**config.placement_group_config)
    assert bundles.bundle_per_worker is not None and bundles.bundle_per_worker.GPU == 1.0
    assert gpus_per_replica(ep) == 2.0


def test_fractional_gpus_pipeline_parallel_and_placement() -> None:
    ep = endpoint(
        {
            "mode": "in_cluster",
            "tensor_parallel_size": 2,
            "pipeline_parallel_size": 2,
            "placement_strategy": "STRICT_PACK",
            "accelerator_type": "A10",  # Ray's own alias of A10G
        },
        {"num_replicas": 3, "ray_actor_options": {"num_gpus": 0.5, "resources": {"big": 1}}},
    )
    config = llm_config(ep)
    assert config.model_id == MODEL and config.model_loading_config.model_source == MODEL
    assert config.engine_kwargs == {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}
    assert config.placement_group_config == {
        "bundle_per_worker": {"GPU": 0.5},
        "strategy": "STRICT_PACK",
    }
    assert config.accelerator_type == "A10G"
    assert config.deployment_config == {
        "num_replicas": 3,
        "ray_actor_options": {"resources": {"big": 1.0}},
    }
    assert gpus_per_replica(ep) == 2.0  # 0.5 x 2 x 2


@pytest.mark.parametrize(
    ("ep", "message", "hint"),
    [
        (
            endpoint({"mode": "in_cluster", "tensor_parallel": 2}),
            "unknown 'tensor_parallel'",
            "did you mean 'tensor_parallel_size'? valid options: mode (",
        ),
        (
            endpoint({"tensor_parallel_size": 2}),
            "'tensor_parallel_size' only apply to in-cluster vLLM",
            "add `mode: in_cluster`",
        ),
        (endpoint({"mode": "external"}), "'external' is not a mode", "only mode is 'in_cluster'"),
        (
            ModelEndpoint(provider="ollama", model="m", options={"mode": "in_cluster"}),
            "provider 'ollama' has no in-cluster mode",
            "provider: vllm",
        ),
        (
            endpoint({"mode": "in_cluster", "tensor_parallel_size": 0}),
            "options.tensor_parallel_size: Input should be greater than or equal to 1",
            None,
        ),
        (
            endpoint({"mode": "in_cluster", "gpu_memory_utilization": 1.5}),
            "options.gpu_memory_utilization: Input should be less than or equal to 1",
            None,
        ),
        (
            endpoint({"mode": "in_cluster", "accelerator_type": "H1000"}),
            "'H1000' is not a Ray accelerator type",
            "did you mean 'H100'?",
        ),
        (
            endpoint({"mode": "in_cluster", "engine_kwargs": {"max_model_len": 4096}}),
            "engine_kwargs: 'max_model_len' cannot be set here",
            "as options of their own",
        ),
        (
            ModelEndpoint(
                provider="vllm",
                model=MODEL,
                endpoint="http://gpu:8000/v1",
                options={"mode": "in_cluster"},
            ),
            "endpoint has no meaning for an in-cluster model",
            "drop `mode: in_cluster`",
        ),
        (
            endpoint({"mode": "in_cluster"}, {"ray_actor_options": {"num_gpus": 0}}),
            "num_gpus must be above 0",
            "external vLLM server",
        ),
    ],
)
def test_option_mistakes_are_config_errors(
    ep: ModelEndpoint, message: str, hint: str | None
) -> None:
    with pytest.raises(ConfigError) as caught:
        if in_cluster(ep):
            llm_config(ep)
    assert message in caught.value.message
    if hint is not None:
        assert caught.value.hint is not None and hint in caught.value.hint


def test_external_vllm_is_untouched() -> None:
    # No mode: the OpenAI-compatible client, with only its own options.
    assert not in_cluster(endpoint({}))
    assert not in_cluster(endpoint({"organization": "org-1"}))


def test_a_bad_option_fails_deploy_config_before_the_cluster(tmp_path: Path) -> None:
    for name in ("runtime.yaml", "agents/assistant.agent.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((GPU_CONFIG / name).read_text())
    providers = (GPU_CONFIG / "providers.yaml").read_text()
    (tmp_path / "providers.yaml").write_text(providers.replace("max_model_len", "max_len"))
    with pytest.raises(ConfigError, match="unknown 'max_len'"):
        plan(load_config(tmp_path), str(tmp_path))


# -- without vLLM ----------------------------------------------------------------------


def test_missing_vllm_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail as it does on a node without ray[llm],
    # whether or not this machine happens to have vLLM.
    monkeypatch.setitem(sys.modules, "ray.serve.llm", None)
    (name,) = provider_endpoints(load_config(GPU_CONFIG))
    with pytest.raises(ConfigError) as caught:
        BUILDERS["provider_app"]({"config_dir": str(GPU_CONFIG), "provider": name})
    assert INSTALL_HINT in caught.value.message
    assert "pip install ray[llm]==2.60.0" in INSTALL_HINT
    assert caught.value.hint is not None and "cluster/gpu.yaml" in caught.value.hint


def test_option_mistakes_are_reported_before_missing_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray.serve.llm", None)
    with pytest.raises(ConfigError, match="unknown 'tp'"):
        vllm_app(endpoint({"mode": "in_cluster", "tp": 2}))


def test_importing_the_builders_does_not_import_vllm_or_ray_serve_llm() -> None:
    code = (
        "import sys, astromesh_ray.serve.builders, astromesh_ray.serve.vllm_chat\n"
        "print(sorted(m for m in sys.modules if m.startswith(('vllm', 'ray.serve.llm'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


# -- translation -----------------------------------------------------------------------

WEATHER = ToolSchema(
    name="get_weather",
    description="Weather in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
CONVERSATION = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="Weather in Paris and Rome?"),
    Message(
        role="assistant",
        content=None,
        tool_calls=[ToolCall(id="call-1", name="get_weather", arguments={"city": "Paris"})],
    ),
    Message(role="tool", content="18C, sunny", tool_call_id="call-1", name="get_weather"),
]


# The wire format the adapter speaks with Ray's LLMServer (core/providers/openai_wire.py,
# the same code OpenAIProvider speaks to a vLLM server over HTTP).
WIRE = OpenAIChatWire(name=NAME, model="served-name", source="vLLM")
ASK = CompletionRequest(messages=[Message(role="user", content="Weather in Paris?")])


def chat_body(request: CompletionRequest, model_id: str, *, stream: bool) -> dict[str, Any]:
    wire = OpenAIChatWire(name=NAME, model=model_id, source="vLLM")
    return wire.body(request, stream=stream)


def completion_from_response(data: Any, *, name: str, model_id: str) -> Completion:
    """What the adapter does with a whole answer: dump vLLM's pydantic response, read it."""
    wire = OpenAIChatWire(name=name, model=model_id, source="vLLM")
    return wire.completion(data.model_dump() if hasattr(data, "model_dump") else data, ASK)


def openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` validated as the OpenAI request vLLM's ``ChatCompletionRequest``
    mirrors; raises ``ValueError`` (pydantic) on a shape mismatch."""
    kind = CompletionCreateParamsStreaming if body["stream"] else CompletionCreateParamsNonStreaming
    checked = TypeAdapter(kind).validate_python(body)
    # Iterable fields validate lazily (the pydantic behaviour Ray works around):
    # consume them so every message, content part and tool call is checked.
    for message in checked["messages"]:
        for part in ("content", "tool_calls"):
            value = message.get(part)
            if value is not None and not isinstance(value, str):
                list(value)
    return body


def test_request_becomes_an_openai_chat_body() -> None:
    request = CompletionRequest(
        messages=CONVERSATION,
        tools=[WEATHER],
        parameters={"temperature": 0.1, "max_tokens": 64, "model": "ignored", "top_k": 5},
    )
    body = openai_request(chat_body(request, "served-name", stream=False))
    assert body["model"] == "served-name"
    assert (body["temperature"], body["max_tokens"], body["top_k"]) == (0.1, 64, 5)
    assert body["stream"] is False and "stream_options" not in body
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city.",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    assistant, tool = body["messages"][2], body["messages"][3]
    assert assistant["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',  # a JSON string on the wire, a dict in our types
    }
    assert tool == {"role": "tool", "tool_call_id": "call-1", "content": "18C, sunny"}

    streamed = openai_request(chat_body(request, "served-name", stream=True))
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}


def test_openai_request_check_catches_a_bad_shape() -> None:
    # The check above is a real one: a dict where the wire wants a JSON string fails.
    body = chat_body(CompletionRequest(messages=CONVERSATION), "m", stream=False)
    body["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    with pytest.raises(ValueError, match="arguments"):
        openai_request(body)


def chat_completion(
    *,
    content: str | None = None,
    calls: Sequence[tuple[str, str, str]] = (),
    usage: tuple[int, int] = (21, 7),
) -> ChatCompletion:
    """A non-streamed answer as vLLM builds it (the OpenAI response model)."""
    tool_calls = [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
        for cid, name, args in calls
    ]
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "served-name",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "tool_calls": tool_calls or None,
                    },
                    "finish_reason": "tool_calls" if calls else "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": sum(usage),
            },
        }
    )


def test_text_response_round_trip() -> None:
    completion = completion_from_response(
        chat_completion(content="Hello there."), name=NAME, model_id="served-name"
    )
    assert completion.message == Message(role="assistant", content="Hello there.")
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (21, 7)
    assert completion.usage.calls == 1
    assert (completion.model, completion.provider, completion.finish_reason) == (
        "served-name",
        NAME,
        "stop",
    )
    # And through the dict our deployments send over Ray.
    assert Completion.from_dict(completion.to_dict()) == completion


def test_tool_calls_with_json_string_arguments_become_dicts() -> None:
    response = chat_completion(
        calls=[
            ("chatcmpl-tool-a", "get_weather", '{"city": "Paris"}'),
            ("chatcmpl-tool-b", "get_weather", '{"city": "Rome", "unit": "C"}'),
            ("", "noop", ""),
        ]
    )
    completion = completion_from_response(response.model_dump(), name=NAME, model_id="m")
    assert completion.message.tool_calls == [
        ToolCall(id="chatcmpl-tool-a", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(id="chatcmpl-tool-b", name="get_weather", arguments={"city": "Rome", "unit": "C"}),
        ToolCall(id="call_2", name="noop", arguments={}),  # ids are filled in when missing
    ]
    assert completion.finish_reason == "tool_calls"


def test_malformed_tool_arguments_go_back_to_the_model() -> None:
    response = chat_completion(calls=[("c1", "get_weather", '{"city": "Par')])
    completion = completion_from_response(response, name=NAME, model_id="m")
    [call] = completion.message.tool_calls
    assert (call.name, call.arguments, call.invalid_arguments) == (
        "get_weather",
        {},
        '{"city": "Par',
    )


@pytest.mark.parametrize(
    ("code", "message", "retryable", "hint"),
    [
        (
            400,
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser',
            False,
            "tool_call_parser",
        ),
        (400, "This model's maximum context length is 8192 tokens", False, "max_model_len"),
        (503, "The engine is overloaded", True, None),
        (429, "Too many requests", True, None),
    ],
)
def test_error_responses_become_provider_errors(
    code: int, message: str, retryable: bool, hint: str | None
) -> None:
    # Ray 2.60's ErrorResponse(error=ErrorInfo(...)).model_dump() shape.
    error = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": code}}
    with pytest.raises(ProviderError) as caught:
        completion_from_response(error, name=NAME, model_id="m")
    assert message in caught.value.message
    assert caught.value.details["status"] == code
    assert caught.value.retryable is retryable
    assert (caught.value.hint is not None and hint in caught.value.hint) if hint else True


def sse(chunk: dict[str, Any]) -> str:
    """One server-sent event exactly as vLLM writes it (``data: <json>\\n\\n``)."""
    return f"data: {ChatCompletionChunk.model_validate(chunk).model_dump_json()}\n\n"


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "served-name",
            "choices": choices,
            **extra,
        }
    )


def tool_stream() -> list[list[str]]:
    """A streamed answer with text and two tool calls, batched as Ray's LLMServer
    batches events (lists of SSE strings), usage in the last event."""
    return [
        [chunk({"role": "assistant", "content": ""}), chunk({"content": "Let me "})],
        [chunk({"content": "check."})],
        [
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "chatcmpl-tool-a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        ],
        [
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "chatcmpl-tool-b",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                        }
                    ]
                }
            ),
            chunk({}, finish="tool_calls"),
            chunk(None, usage={"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}),
            "data: [DONE]\n\n",
        ],
    ]


def test_streamed_deltas_tool_calls_and_usage() -> None:
    decoder = WIRE.decoder(ASK)
    chunks = [c for batch in tool_stream() for c in stream_chunks(decoder, batch)]
    assert [c.text for c in chunks if c.text] == ["Let me ", "check."]
    # Tool-call arguments also stream as they arrive: id and name on a call's first.
    assert [d for c in chunks for d in c.tool_args] == [
        ToolArgsDelta(index=0, arguments="", id="chatcmpl-tool-a", name="get_weather"),
        ToolArgsDelta(index=0, arguments='{"city": '),
        ToolArgsDelta(index=0, arguments='"Paris"}'),
        ToolArgsDelta(
            index=1, arguments='{"city": "Rome"}', id="chatcmpl-tool-b", name="get_weather"
        ),
    ]
    last = decoder.finish()
    assert last.tool_calls == [
        ToolCall(id="chatcmpl-tool-a", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(id="chatcmpl-tool-b", name="get_weather", arguments={"city": "Rome"}),
    ]
    assert last.usage is not None
    assert (last.usage.input_tokens, last.usage.output_tokens, last.usage.calls) == (30, 12, 1)
    assert (last.finish_reason, last.model, last.text) == ("tool_calls", "served-name", "")
    assert CompletionChunk.from_dict(last.to_dict()) == last


def test_an_error_event_mid_stream_raises() -> None:
    decoder = WIRE.decoder(ASK)
    assert [c.text for c in stream_chunks(decoder, [chunk({"content": "Hi"})])] == ["Hi"]
    error = {"message": "engine died", "type": "InternalServerError", "code": 500}
    failure = f"data: {json.dumps({'error': error})}\n\n"
    with pytest.raises(ProviderError, match="engine died") as caught:
        stream_chunks(decoder, [failure])
    assert caught.value.retryable is True


def test_reasoning_streams_as_reasoning_deltas() -> None:
    # vLLM's reasoning parsers send reasoning_content; newer vLLM sends the same text
    # as reasoning too: it must come through once.
    batches = [
        [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "Six "})],
        [chunk({"reasoning_content": "sevens.", "reasoning": "sevens."})],
        [chunk({"reasoning": " Done."})],
        [chunk({"content": "42"}), chunk({}, finish="stop")],
    ]
    decoder = WIRE.decoder(ASK)
    chunks = [c for batch in batches for c in stream_chunks(decoder, batch)]
    assert [(c.reasoning, c.text) for c in chunks] == [
        ("Six ", ""),
        ("sevens.", ""),
        (" Done.", ""),
        ("", "42"),
    ]
    last = decoder.finish()
    assert last.reasoning == "" and last.finish_reason == "stop"


def test_an_answer_without_usage_is_estimated_not_free() -> None:
    response = chat_completion(content="x" * 40).model_dump()
    del response["usage"]
    completion = completion_from_response(response, name=NAME, model_id="m")
    assert completion.usage.output_tokens == 10 and completion.usage.input_tokens > 0
    decoder = WIRE.decoder(ASK)
    stream_chunks(decoder, [chunk({"content": "x" * 40}), chunk({}, finish="stop")])
    usage = decoder.finish().usage
    assert usage is not None and usage.output_tokens == 10 and usage.input_tokens > 0


# -- the replica side, in process ------------------------------------------------------


class ScriptedEngine:
    """What ``LLMServer.chat`` does, minus vLLM: an awaitable returning an async
    iterator; a streamed answer as batches of SSE strings, a whole one as a
    response object.  Each call consumes one step; requests are recorded."""

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self.steps = list(steps)
        self.requests: list[dict[str, Any]] = []
        self.healthy = True

    async def chat(self, request: dict[str, Any]) -> AsyncIterator[Any]:
        self.requests.append(request)
        step = self.steps.pop(0)
        return self._answer(step, bool(request["stream"]))

    async def _answer(self, step: dict[str, Any], stream: bool) -> AsyncIterator[Any]:
        if "error" in step:
            yield {"error": step["error"]}
            return
        calls = [
            (f"chatcmpl-tool-{i}", n, json.dumps(a))
            for i, (n, a) in enumerate(step.get("calls", []))
        ]
        if not stream:
            yield chat_completion(content=step.get("text"), calls=calls)
            return
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": word}) for word in step.get("text", "").split(" ")]
        for i, (cid, name, args) in enumerate(calls):
            head = {"index": i, "id": cid, "type": "function", "function": {"name": name}}
            events.append(chunk({"tool_calls": [head]}))
            events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": args}}]}))
        events.append(chunk({}, finish="tool_calls" if calls else "stop"))
        events.append(
            chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13})
        )
        for start in range(0, len(events), 2):  # Ray's batcher groups events
            yield events[start : start + 2]

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine dead")


def adapter(engine: ScriptedEngine, timeout_s: float | None = None) -> VLLMChatAdapter:
    return VLLMChatAdapter(
        name=NAME,
        model_id="served-name",
        chat=engine.chat,
        make_request=openai_request,
        check_health=engine.check_health,
        timeout_s=timeout_s,
        where={"app": "provider-x"},
    )


REQUEST = CompletionRequest(
    messages=[Message(role="user", content="Weather in Paris?")],
    tools=[WEATHER],
    parameters={"temperature": 0},
).to_dict()


async def test_adapter_complete_returns_an_outcome() -> None:
    engine = ScriptedEngine([{"calls": [("get_weather", {"city": "Paris"})]}, {"text": "Sunny."}])
    first = Completion.from_dict(unwrap(await adapter(engine).complete(REQUEST)))
    assert first.message.tool_calls == [
        ToolCall(id="chatcmpl-tool-0", name="get_weather", arguments={"city": "Paris"})
    ]
    assert first.location == {"app": "provider-x"}
    second = Completion.from_dict(unwrap(await adapter(engine).complete(REQUEST)))
    assert second.message.content == "Sunny." and second.usage.total_tokens == 28
    assert engine.requests[0]["model"] == "served-name" and engine.requests[0]["stream"] is False
    assert engine.steps == []  # every scripted answer was asked for


async def test_adapter_stream_returns_outcomes() -> None:
    engine = ScriptedEngine(
        [{"text": "It is sunny.", "calls": [("get_weather", {"city": "Rome"})]}]
    )
    chunks = [CompletionChunk.from_dict(unwrap(o)) async for o in adapter(engine).stream(REQUEST)]
    assert [c.text for c in chunks[:-1] if c.text] == ["It", "is", "sunny."]
    # The call's arguments streamed too, before the whole call in the last chunk.
    assert "".join(d.arguments for c in chunks[:-1] for d in c.tool_args) == '{"city": "Rome"}'
    assert chunks[-2].tool_args == [ToolArgsDelta(index=0, arguments='{"city": "Rome"}')]
    assert chunks[-1].tool_calls == [
        ToolCall(id="chatcmpl-tool-0", name="get_weather", arguments={"city": "Rome"})
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens == 4
    assert chunks[-1].location == {"app": "provider-x"}
    assert engine.requests[0]["stream_options"] == {"include_usage": True}
    assert engine.steps == []


async def test_adapter_errors_are_values() -> None:
    engine = ScriptedEngine([{"error": {"message": "bad", "type": "BadRequestError", "code": 400}}])
    outcome = await adapter(engine).complete(REQUEST)
    with pytest.raises(ProviderError, match="bad") as caught:
        unwrap(outcome)
    assert caught.value.details["status"] == 400

    # A parameter vLLM's request model refuses: a 400 the caller caused.
    bad = {**REQUEST, "parameters": {"temperature": "hot"}}
    streamed = [o async for o in adapter(ScriptedEngine([])).stream(bad)]
    assert len(streamed) == 1
    with pytest.raises(ProviderError, match="vLLM refused the request") as caught:
        unwrap(streamed[0])
    assert caught.value.retryable is False


async def test_adapter_timeout_and_health() -> None:
    class Stuck(ScriptedEngine):
        async def chat(self, request: dict[str, Any]) -> AsyncIterator[Any]:
            await asyncio.sleep(5)
            raise AssertionError("not reached")

    engine = Stuck([])
    with pytest.raises(ProviderError, match=r"no answer from vLLM within 0.05s") as caught:
        unwrap(await adapter(engine, timeout_s=0.05).complete(REQUEST))
    assert caught.value.retryable is True
    assert await adapter(engine).health() is True
    engine.healthy = False
    assert await adapter(engine).health() is False


# -- a ReAct turn over real Serve --------------------------------------------------------

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: gpu-calc
spec:
  model:
    primary: {providerRef: h100}
  orchestration: {pattern: react, max_iterations: 4, timeout_seconds: 30}
  tools:
    - name: calculator
      type: builtin
  deployment:
    ray_actor_options: {num_cpus: 0}
"""
PROVIDERS = """\
apiVersion: astromesh/v1
kind: ProviderConfig
metadata: {name: gpu}
spec:
  providers:
    h100:
      type: vllm
      models: [Qwen/Qwen2.5-7B-Instruct]
      parameters: {temperature: 0.0}
      options: {mode: in_cluster, tensor_parallel_size: 2, tool_call_parser: hermes}
      deployment:
        ray_actor_options: {num_gpus: 1}
"""


@serve.deployment(ray_actor_options={"num_cpus": 0})
class ScriptedLLMServer(ProviderMethods):
    """Stands in for ``AstromeshLLMServer`` on a machine without vLLM: the same
    ``ProviderMethods`` over a scripted ``chat``, under the provider app's name."""

    def __init__(self, steps: list[dict[str, Any]], settings: dict[str, Any]) -> None:
        self._engine = ScriptedEngine(steps)
        self.chat = self._engine.chat
        self.check_health = self._engine.check_health
        self.init_provider_methods(settings, openai_request)

    def seen(self) -> list[dict[str, Any]]:
        return self._engine.requests


@pytest.fixture(scope="module")
def gpu_api(
    serve_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ModelEndpoint]]:
    root = tmp_path_factory.mktemp("gpu")
    (root / "agents").mkdir()
    (root / "agents" / "gpu-calc.agent.yaml").write_text(AGENT)
    (root / "providers.yaml").write_text(PROVIDERS)
    loaded = load_config(root)
    (provider,) = provider_endpoints(loaded).values()
    steps = [
        {"calls": [("calculator", {"expression": "6*7"})]},
        {"text": "6*7 is 42."},
        {"text": "pong"},
        {"text": "streamed reply"},
    ]
    settings = {"name": NAME, "model_id": provider.model, "timeout_s": 30}
    names = []
    for app in plan(loaded, str(root)):
        if app.builder == "provider_app":
            # Where provider_app would build AstromeshLLMServer (vllm_app).
            assert in_cluster(provider) and app.name == provider.key
            built = ScriptedLLMServer.bind(steps, settings)
        else:
            built = BUILDERS[app.builder](app.args)
        serve.run(built, name=app.name, route_prefix=app.route_prefix, blocking=False)
        names.append(app.name)
    try:
        yield serve_url, provider
    finally:
        for name in reversed(names):
            serve.delete(name)


def test_react_turn_through_the_in_cluster_provider(gpu_api: tuple[str, ModelEndpoint]) -> None:
    url, provider = gpu_api
    reply = httpx.post(f"{url}/v1/agents/gpu-calc/run", json={"query": "What is 6*7?"}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"] == "6*7 is 42."
    assert body["steps"][0]["tool"] == "calculator" and body["steps"][0]["result"] == "42"
    assert body["usage"]["calls"] == 2
    # Some span of the trace ran in the provider's app (where the model ran).
    assert provider.key in {span["where"].get("app") for span in body["trace"]}

    seen = serve.get_app_handle(provider.key).seen.remote().result()
    first, second = seen[:2]
    assert first["model"] == MODEL and first["temperature"] == 0.0
    assert [t["function"]["name"] for t in first["tools"]] == ["calculator"]
    call = second["messages"][-2]["tool_calls"][0]
    assert call["function"] == {"name": "calculator", "arguments": '{"expression": "6*7"}'}
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": call["id"], "content": "42"}


async def test_serve_provider_calls_the_in_cluster_app_by_handle(
    gpu_api: tuple[str, ModelEndpoint],
) -> None:
    _, provider = gpu_api
    client = ServeProvider(provider)  # what the agent replica builds for this endpoint
    request = CompletionRequest(messages=[Message(role="user", content="ping")])
    completion = await client.complete(request)
    assert completion.message.content == "pong" and completion.provider == NAME
    assert completion.usage.total_tokens == 28 and completion.location["app"] == provider.key
    chunks = [c async for c in client.stream(request)]
    assert [c.text for c in chunks[:-1]] == ["streamed", "reply"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 13
    assert chunks[-1].location["app"] == provider.key
    assert await client.health() is True


# -- the Serve config and the cluster config -------------------------------------------


def test_gpu_serve_config_validates_and_matches_its_config_dir() -> None:
    from ray.serve.schema import ServeDeploySchema

    body = yaml.safe_load((ROOT / "deployments" / "gpu-vllm.yaml").read_text())
    schema = ServeDeploySchema.model_validate(body)
    assert [app.name for app in schema.applications][-1] == "gateway"
    config_dirs = {app["args"]["config_dir"] for app in body["applications"]}
    assert config_dirs == {"deployments/gpu-vllm"}
    loaded = load_config(ROOT / "deployments" / "gpu-vllm")
    assert sorted(loaded.agents) == ["assistant"]
    # The file is what `astromesh deploy-config` writes for that directory.
    assert body == deploy_config(loaded, "deployments/gpu-vllm", host="0.0.0.0")
    providers = [a for a in body["applications"] if a["import_path"].endswith(":provider_app")]
    assert [in_cluster(provider_endpoints(loaded)[a["args"]["provider"]]) for a in providers] == [
        True
    ]


def test_gpu_cluster_config_validates_offline_and_fits_the_model() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)  # raises on any schema violation (ints, unknown keys, ...)
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and set(types) == {"head", "cpu_worker", "gpu_worker"}
    gpu = types["gpu_worker"]
    assert (gpu["min_workers"], gpu["max_workers"]) == (0, 2)
    assert types["cpu_worker"]["min_workers"] >= 1
    assert gpu["resources"]["accelerator_type:H100"] == 1
    assert "GPU" not in types["cpu_worker"]["resources"]

    # The example model's replicas fit: max replicas x GPUs per replica <= GPU capacity,
    # and a replica's GPUs fit on one node (tensor parallelism stays on NVLink).
    ep = gpu_endpoint()
    per_replica = gpus_per_replica(ep)
    assert ep.deployment is not None and ep.deployment.autoscaling_config is not None
    max_replicas = ep.deployment.autoscaling_config.max_replicas
    assert max_replicas is not None
    assert per_replica <= gpu["resources"]["GPU"]
    assert max_replicas * per_replica <= gpu["max_workers"] * gpu["resources"]["GPU"]
    assert llm_config(ep).accelerator_type == "H100"
