"""The ``onnx`` provider on a tiny Llama built here, checked against ``transformers``.

``astromesh_ray.testing.tiny_llama`` trains a byte-level BPE tokenizer, builds a
2-layer Llama with seeded random weights and exports its decoder to ONNX with a KV
cache.  The same weights run in ``transformers`` and in ONNX Runtime, so greedy
decoding must give exactly the same token ids.  Random weights never write a tool
call, so the tool-call tests replace only the token-choosing step with scripted ids:
chat template, tokenizer, detokenization, ``ChatFormat`` parsing and message
normalisation stay real.  Nothing is fetched from the Hugging Face Hub: the Hub tests
run offline, on a missing repo and on one planted in a private cache.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.messages import (
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolCall,
    ToolSchema,
)
from astromesh_ray.core.providers.base import provider_class
from astromesh_ray.core.providers.chat_format import ChatFormat
from astromesh_ray.core.providers.onnx import OnnxProvider
from astromesh_ray.core.providers.onnx_model import OnnxModel, Sampling
from astromesh_ray.errors import ConfigError, ProviderError
from astromesh_ray.spec import load_agent
from astromesh_ray.testing.tiny_llama import build_tiny_llama

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WEATHER = ToolSchema(
    name="get_weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the Hub: huggingface_hub reads the flag at import time."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="module")
def tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_model(folder: Path) -> Any:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder).eval()


@pytest.fixture
async def provider(folder: Path) -> AsyncIterator[OnnxProvider]:
    onnx = OnnxProvider(name="onnx:tiny", model=str(folder), options={"threads": 1})
    yield onnx
    await onnx.aclose()


def hf_greedy(hf_model: Any, prompt_ids: Sequence[int], new_tokens: int) -> list[int]:
    import torch

    ids = torch.tensor([list(prompt_ids)])
    out = hf_model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens
    )
    return [int(t) for t in out[0, len(prompt_ids) :]]


def ask(text: str, tools: Sequence[ToolSchema] = (), **parameters: Any) -> CompletionRequest:
    return CompletionRequest(
        messages=[Message(role="system", content="Be brief."), Message(role="user", content=text)],
        tools=list(tools),
        parameters=parameters,
    )


async def collect(stream: AsyncIterator[CompletionChunk]) -> list[CompletionChunk]:
    return [chunk async for chunk in stream]


def script_decoding(
    monkeypatch: pytest.MonkeyPatch, tokenizer: Any, *texts: str
) -> list[list[int]]:
    """Make the next generations emit ``texts`` (then ``<|im_end|>``) instead of
    choosing tokens; later ones decode for real.  Returns the prompt ids each
    generation received."""
    real = OnnxModel.generate
    scripted = [[*tokenizer.encode(t).ids, tokenizer.token_to_id("<|im_end|>")] for t in texts]
    prompts: list[list[int]] = []

    def generate(
        self: OnnxModel, prompt_ids: Sequence[int], max_tokens: int, sampling: Sampling
    ) -> Iterator[int]:
        prompts.append(list(prompt_ids))
        if len(prompts) > len(scripted):
            yield from real(self, prompt_ids, max_tokens, sampling)
        else:
            yield from scripted[len(prompts) - 1]

    monkeypatch.setattr(OnnxModel, "generate", generate)
    return prompts


# -- exact tokens --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Hello world!", "What is the weather in Paris?"])
async def test_greedy_ids_equal_transformers(
    provider: OnnxProvider, hf_model: Any, text: str
) -> None:
    request = ask(text, tools=[WEATHER] if "weather" in text else ())
    prompt_ids = await provider.encode_prompt(request)
    ids = await provider.generate_ids(prompt_ids, {"max_tokens": 12})
    assert ids == hf_greedy(hf_model, prompt_ids, 12)
    assert 0 < len(ids) <= 12


async def test_completion_text_is_the_decoding_of_the_greedy_ids(
    provider: OnnxProvider, tokenizer: Any
) -> None:
    request = ask("Hello world!", max_tokens=12)
    ids = await provider.generate_ids(await provider.encode_prompt(request), {"max_tokens": 12})
    completion = await provider.complete(request)
    assert completion.message.content == tokenizer.decode(ids).strip()
    assert completion.message.tool_calls == []
    assert completion.finish_reason == ("stop" if len(ids) < 12 else "length")
    assert (completion.provider, completion.model) == ("onnx:tiny", provider.model)


async def test_stream_deltas_add_up_to_the_completion(provider: OnnxProvider) -> None:
    request = ask("Hello world!", max_tokens=12)
    completion = await provider.complete(request)
    chunks = await collect(provider.stream(request))
    assert sum(1 for c in chunks if c.text) > 1  # it really streamed
    assert "".join(c.text for c in chunks) == completion.message.content
    last = chunks[-1]
    assert last.usage == completion.usage and last.finish_reason == completion.finish_reason
    assert all(c.usage is None for c in chunks[:-1])


async def test_usage_is_counted_by_the_tokenizer(
    provider: OnnxProvider, folder: Path, tokenizer: Any
) -> None:
    request = ask("What is the weather in Paris?", tools=[WEATHER], max_tokens=7)
    completion = await provider.complete(request)
    # The prompt as the model card's own template renders it, tokenized independently.
    template = __import__("json").loads((folder / "tokenizer_config.json").read_text())
    prompt = ChatFormat(template["chat_template"]).render(request.messages, request.tools)
    assert "get_weather" in prompt and prompt.endswith("<|im_start|>assistant\n")
    prompt_ids = tokenizer.encode(prompt).ids
    generated = await provider.generate_ids(prompt_ids, {"max_tokens": 7})
    assert completion.usage.input_tokens == len(prompt_ids)
    assert completion.usage.output_tokens == len(generated) == 7
    assert completion.usage.calls == 1


async def test_sampling_is_seeded_and_top_k_1_is_greedy(provider: OnnxProvider) -> None:
    prompt_ids = await provider.encode_prompt(ask("Hello world!"))
    greedy = await provider.generate_ids(prompt_ids, {"max_tokens": 12})

    async def sample(**params: Any) -> list[int]:
        return await provider.generate_ids(prompt_ids, {"max_tokens": 12, **params})

    first = await sample(temperature=1.0, seed=7)
    assert first == await sample(temperature=1.0, seed=7)
    assert first != await sample(temperature=1.0, seed=8)
    assert any([await sample(temperature=1.0, seed=s) != greedy for s in range(3)])
    # Sampling that can only keep the most likely token is greedy again.
    assert await sample(temperature=1.5, top_k=1, seed=3) == greedy
    assert await sample(temperature=1.5, top_p=1e-9, seed=3) == greedy
    texts = {
        (await provider.complete(ask("Hello world!", temperature=1.0, seed=11))).message.content
        for _ in range(2)
    }
    assert len(texts) == 1


# -- text assembly and tool calls (scripted token ids, everything else real) ----------


async def test_tool_call_is_parsed_from_generated_text(
    provider: OnnxProvider, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = 'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
    prompts = script_decoding(monkeypatch, tokenizer, text + "</tool_call>", text + "</tool_call>")
    request = ask("What is the weather in Paris?", tools=[WEATHER])
    completion = await provider.complete(request)
    call = ToolCall(id="call_0", name="get_weather", arguments={"city": "Paris"})
    assert completion.message == Message(
        role="assistant", content="Let me check.", tool_calls=[call]
    )
    assert completion.finish_reason == "tool_calls"
    assert completion.usage.output_tokens == len(tokenizer.encode(text + "</tool_call>").ids) + 1
    # The tools reached the model through the chat template.
    prompt = tokenizer.decode(prompts[0], skip_special_tokens=False)
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt

    chunks = await collect(provider.stream(request))
    assert "".join(c.text for c in chunks) == "Let me check."
    assert not any("<" in c.text for c in chunks)  # the call was held back, not streamed
    assert [c.tool_calls for c in chunks if c.tool_calls] == [[call]]
    assert chunks[-1].tool_calls == [call] and chunks[-1].finish_reason == "tool_calls"


async def test_multibyte_characters_stream_whole(
    provider: OnnxProvider, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "Café → 東京 😀 naïve ✓"
    ids = tokenizer.encode(text).ids
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some token splits a char
    script_decoding(monkeypatch, tokenizer, text)
    chunks = await collect(provider.stream(ask("Hi")))
    deltas = [c.text for c in chunks if c.text]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert chunks[-1].finish_reason == "stop"


async def test_stop_strings_end_the_text(
    provider: OnnxProvider, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    script_decoding(monkeypatch, tokenizer, "Hello there STOP and more", "Hello there STOP")
    completion = await provider.complete(ask("Hi", stop=["STOP"]))
    assert completion.message.content == "Hello there"
    assert completion.finish_reason == "stop"
    chunks = await collect(provider.stream(ask("Hi", stop="STOP")))
    assert "".join(c.text for c in chunks) == "Hello there"


async def test_react_turn_from_yaml_reaches_the_onnx_session(
    folder: Path,
    tmp_path: Path,
    tokenizer: Any,
    hf_model: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tool-calling ReAct turn: the first model call is scripted to call the
    calculator, the tool really runs, and the answer is the real greedy decoding of
    the follow-up prompt, which carries the tool's result."""
    path = tmp_path / "tiny-onnx.agent.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: astromesh/v1
            kind: Agent
            metadata:
              name: tiny-onnx
            spec:
              identity:
                description: "A tiny local model."
              model:
                primary:
                  provider: onnx
                  model: "{folder}"
                  parameters:
                    max_tokens: 8
                  options:
                    threads: 1
              prompts:
                system: "You are brief. Use the calculator."
              orchestration:
                pattern: react
                max_iterations: 3
              tools:
                - name: calculator
                  type: internal
                  description: "Evaluate an arithmetic expression."
            """
        )
    )
    runtime = build_runtime(load_agent(path))
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 3"}}</tool_call>'
    prompts = script_decoding(monkeypatch, tokenizer, call)
    try:
        result = await runtime.run(RunRequest(query="What is 2 + 3?"))
    finally:
        await runtime.aclose()

    assert len(prompts) == 2
    [step] = [s for s in result.to_dict()["steps"] if s["type"] == "tool_call"]
    assert (step["tool"], step["arguments"], step["is_error"]) == (
        "calculator",
        {"expression": "2 + 3"},
        False,
    )
    followup = tokenizer.decode(prompts[1], skip_special_tokens=False)
    assert f"<tool_response>\n{step['result']}\n</tool_response>" in followup
    expected = hf_greedy(hf_model, prompts[1], 8)
    assert result.answer and result.answer == tokenizer.decode(expected).strip()
    assert result.usage.calls == 2
    assert result.usage.input_tokens == len(prompts[0]) + len(prompts[1])


# -- loading, Hub, options -----------------------------------------------------------


async def test_loads_lazily_and_once_under_concurrent_first_calls(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Path] = []
    real = OnnxModel.load

    def counting(name: str, path: Path, **kwargs: Any) -> OnnxModel:
        loads.append(path)
        return real(name, path, **kwargs)

    monkeypatch.setattr(OnnxModel, "load", staticmethod(counting))
    onnx = OnnxProvider(name="onnx:tiny", model=str(folder), parameters={"max_tokens": 3})
    assert loads == []  # constructing loads nothing
    request = ask("Hello world!")
    first, second, healthy = await asyncio.gather(
        onnx.complete(request), onnx.complete(request), onnx.health()
    )
    assert loads == [folder] and healthy is True
    assert first.message == second.message
    # A provider crosses processes (Ray) without its session and loads its own.
    clone = pickle.loads(pickle.dumps(onnx))
    assert (await clone.complete(request)).message == first.message
    await onnx.aclose()
    await onnx.complete(request)  # after aclose, the next call loads again
    assert len(loads) == 3


async def test_hub_id_loads_from_the_cache_offline(folder: Path, tmp_path: Path) -> None:
    # The layout huggingface_hub keeps: refs/<branch> names a snapshot folder.
    repo = tmp_path / "hub" / "models--astromesh-tests--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit / "onnx"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        shutil.copy(folder / name, snapshot.parent / name)
    shutil.copy(folder / "model.onnx", snapshot / "model.onnx")  # the onnx/ layout
    hub = OnnxProvider(
        name="onnx:hub",
        model="astromesh-tests/tiny-llama",
        options={"cache_dir": str(tmp_path / "hub")},
    )
    local = OnnxProvider(name="onnx:local", model=str(folder))
    request = ask("Hello world!", max_tokens=6)
    try:
        # No tokenizer_config.json in the snapshot: the built-in ChatML template,
        # which is the same text, gives the same prompt and tokens.
        assert await hub.encode_prompt(request) == await local.encode_prompt(request)
        assert (await hub.complete(request)).message == (await local.complete(request)).message
    finally:
        await hub.aclose()
        await local.aclose()


def test_uncached_hub_id_offline_fails_with_a_clear_message(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """\
        import asyncio
        from astromesh_ray.core.messages import CompletionRequest, Message
        from astromesh_ray.core.providers.onnx import OnnxProvider
        from astromesh_ray.errors import ProviderError

        onnx = OnnxProvider(name="onnx:missing", model="astromesh-tests/not-in-any-cache")
        print("healthy:", asyncio.run(onnx.health()))
        try:
            asyncio.run(onnx.complete(CompletionRequest(messages=[Message("user", "hi")])))
        except ProviderError as exc:
            print("retryable:", exc.retryable)
            print("error:", exc)
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "healthy: False" in out
    assert "retryable: True" in out
    assert (
        "could not fetch model 'astromesh-tests/not-in-any-cache' from the Hugging Face Hub" in out
    )
    assert "HF_HUB_OFFLINE" in out  # huggingface_hub's reason is passed on
    assert "set model: to the local folder" in out


async def test_cuda_without_cuda_fails_clearly(folder: Path) -> None:
    import onnxruntime

    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    onnx = OnnxProvider(name="onnx:gpu", model=str(folder), options={"execution_provider": "cuda"})
    assert await onnx.health() is False
    with pytest.raises(ProviderError, match="CUDA is not available in this onnxruntime build"):
        await onnx.complete(ask("Hi"))


async def test_broken_or_missing_folders_fail_clearly(folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(folder / "model.onnx", broken / "model.onnx")
    onnx = OnnxProvider(name="onnx:broken", model=str(broken))
    assert await onnx.health() is False
    with pytest.raises(ProviderError, match=r"tokenizer\.json missing"):
        await onnx.complete(ask("Hi"))
    elsewhere = OnnxProvider(
        name="onnx:file", model=str(folder), options={"subfolder": "onnx", "file": "q4.onnx"}
    )
    with pytest.raises(ProviderError, match=r"onnx/q4\.onnx not found") as caught:
        await elsewhere.complete(ask("Hi"))
    assert caught.value.hint == "set the file option to the .onnx graph to use"
    gone = OnnxProvider(name="onnx:gone", model=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="does not exist"):
        await gone.complete(ask("Hi"))


async def test_context_limit_and_timeout(folder: Path) -> None:
    onnx = OnnxProvider(name="onnx:small", model=str(folder), options={"max_context": 8})
    with pytest.raises(ProviderError, match="the context holds 8"):
        await onnx.complete(ask("Hello world!"))
    slow = OnnxProvider(name="onnx:slow", model=str(folder), timeout_s=1e-9)
    with pytest.raises(ProviderError, match="generation took longer") as caught:
        await slow.complete(ask("Hello world!", max_tokens=20))
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"options": {"device": "gpu"}}, "unknown options 'device'"),
        ({"options": {"execution_provider": "tpu"}}, "must be 'cpu' or 'cuda'"),
        ({"options": {"threads": 0}}, "threads must be a positive integer"),
        ({"options": {"chat_template": "{% if %}"}}, "Jinja2 syntax error"),
        ({"endpoint": "http://localhost:1"}, "takes no endpoint"),
        ({"parameters": {"presence_penalty": 1}}, "unknown parameters 'presence_penalty'"),
        ({"parameters": {"top_p": 2}}, "top_p=2 is out of range"),
        ({"model": "not a model!"}, "neither a folder path nor a Hugging Face Hub repo id"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        OnnxProvider(**{"name": "onnx:x", "model": "owner/name", **kwargs})
    if "unknown options" in message:
        assert "execution_provider" in str(caught.value)  # the valid ones are listed


async def test_registry_and_request_parameters(provider: OnnxProvider) -> None:
    assert provider_class("onnx") is OnnxProvider
    with pytest.raises(ProviderError, match="unknown parameters 'tool_choice'"):
        await provider.complete(ask("Hi", tool_choice="auto"))
