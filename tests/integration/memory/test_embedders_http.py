"""``OpenAIEmbedder`` and ``OllamaEmbedder`` over real loopback HTTP.

The servers' embedding routes are themselves checked with the official ``openai``
and ``ollama`` clients, so passing here means the embedders speak what real
servers speak.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import ollama
import openai
import pytest

from astromesh_ray.core.memory.base import Embedder
from astromesh_ray.core.memory.embedders.ollama import OllamaEmbedder
from astromesh_ray.core.memory.embedders.openai import OpenAIEmbedder
from astromesh_ray.errors import MemoryUnavailable
from astromesh_ray.testing import ScriptedOllamaServer, ScriptedOpenAIServer
from astromesh_ray.testing.openai_server import fake_embedding

pytestmark = pytest.mark.integration

TEXTS = ["alpha", "beta gamma", "delta", "epsilon zeta eta", "theta"]
OLLAMA_MODEL = "all-minilm:latest"


@pytest.fixture
def openai_server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as server:
        yield server


@pytest.fixture
def ollama_server() -> Iterator[ScriptedOllamaServer]:
    with ScriptedOllamaServer(models=[OLLAMA_MODEL]) as server:
        yield server


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------- servers


async def test_openai_server_speaks_embeddings_to_the_official_client(
    openai_server: ScriptedOpenAIServer,
) -> None:
    client = openai.AsyncOpenAI(base_url=openai_server.url, api_key="sk-test", max_retries=0)
    try:
        # The client asks for base64 float32 by default and decodes it.
        response = await client.embeddings.create(model="emb", input=TEXTS)
        floats = await client.embeddings.create(
            model="emb", input="alpha", encoding_format="float", dimensions=8
        )
    finally:
        await client.close()
    assert response.model == "emb" and response.object == "list"
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    for data, text in zip(response.data, TEXTS, strict=True):
        assert data.object == "embedding"
        np.testing.assert_allclose(data.embedding, fake_embedding(text, 32), atol=1e-6)
    assert response.usage.prompt_tokens == response.usage.total_tokens == 8  # words
    assert floats.data[0].embedding == pytest.approx(fake_embedding("alpha", 8))
    assert openai_server.embedding_requests[0]["encoding_format"] == "base64"


async def test_openai_server_refuses_bad_embedding_requests(
    openai_server: ScriptedOpenAIServer,
) -> None:
    client = openai.AsyncOpenAI(base_url=openai_server.url, api_key="sk-test", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError, match="input"):
            await client.embeddings.create(model="emb", input=[""])
        openai_server.fail_embeddings(503, "overloaded")
        with pytest.raises(openai.InternalServerError, match="overloaded"):
            await client.embeddings.create(model="emb", input=["x"])
    finally:
        await client.close()


async def test_ollama_server_speaks_embed_to_the_official_client(
    ollama_server: ScriptedOllamaServer,
) -> None:
    client = ollama.AsyncClient(host=ollama_server.url)
    response = await client.embed(model=OLLAMA_MODEL, input=TEXTS)
    assert response.model == OLLAMA_MODEL
    assert len(response.embeddings) == len(TEXTS)
    for vector, text in zip(response.embeddings, TEXTS, strict=True):
        assert list(vector) == pytest.approx(fake_embedding(text, 32))
    single = await client.embed(model="all-minilm", input="alpha")  # bare name: :latest
    assert list(single.embeddings[0]) == pytest.approx(fake_embedding("alpha", 32))
    with pytest.raises(ollama.ResponseError, match="not found") as missing:
        await client.embed(model="nomic-embed-text", input="x")
    assert missing.value.status_code == 404


# --------------------------------------------------------------------------- OpenAI


async def test_openai_embedder_batches_and_orders_by_index(
    openai_server: ScriptedOpenAIServer,
) -> None:
    openai_server.embeddings_reversed = True  # clients must order by `index`
    embedder = OpenAIEmbedder("emb", endpoint=openai_server.url, batch_size=2)
    assert isinstance(embedder, Embedder)
    try:
        vectors = await embedder.embed(TEXTS)
    finally:
        await embedder.aclose()
    assert [r["input"] for r in openai_server.embedding_requests] == [
        ["alpha", "beta gamma"],
        ["delta", "epsilon zeta eta"],
        ["theta"],
    ]
    assert all(
        r == {"model": "emb", "input": r["input"], "encoding_format": "float"}
        for r in openai_server.embedding_requests
    )
    for vector, text in zip(vectors, TEXTS, strict=True):
        assert vector == pytest.approx(fake_embedding(text, 32))
        assert np.linalg.norm(vector) == pytest.approx(1.0)
    assert await embedder.embed([]) == []


async def test_openai_embedder_asks_for_dimensions(openai_server: ScriptedOpenAIServer) -> None:
    embedder = OpenAIEmbedder("text-embedding-3-small", endpoint=openai_server.url, dimensions=8)
    [vector] = await embedder.embed(["alpha"])
    await embedder.aclose()
    assert len(vector) == 8 and openai_server.embedding_requests[0]["dimensions"] == 8


async def test_openai_embedder_sends_a_key_only_where_the_provider_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-only")
    monkeypatch.setenv("EMBED_KEY", "sk-right")
    with ScriptedOpenAIServer(require_api_key="sk-right") as server:
        # Not api.openai.com: OPENAI_API_KEY stays home, so the server refuses.
        anonymous = OpenAIEmbedder("emb", endpoint=server.url)
        with pytest.raises(MemoryUnavailable, match="HTTP 401") as refused:
            await anonymous.embed(["x"])
        assert refused.value.details["status"] == 401
        assert refused.value.details["retryable"] is False
        assert refused.value.hint is not None and "api_key_env" in refused.value.hint
        assert "authorization" not in server.embedding_headers[0]
        keyed = OpenAIEmbedder("emb", endpoint=server.url, api_key_env="EMBED_KEY")
        assert len((await keyed.embed(["x"]))[0]) == 32
        assert server.embedding_headers[1]["authorization"] == "Bearer sk-right"
        await anonymous.aclose()
        await keyed.aclose()
    # OpenAI itself needs a key: without one nothing is sent at all.
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(MemoryUnavailable, match=r"OPENAI_API_KEY is not set"):
        await OpenAIEmbedder("text-embedding-3-small").embed(["x"])


async def test_openai_embedder_failures_are_memory_unavailable(
    openai_server: ScriptedOpenAIServer,
) -> None:
    embedder = OpenAIEmbedder("emb", endpoint=openai_server.url)
    openai_server.fail_embeddings(500, "the GPU fell over")
    with pytest.raises(MemoryUnavailable, match="the GPU fell over") as failed:
        await embedder.embed(["x"])
    assert failed.value.details == {"backend": "openai:emb", "status": 500, "retryable": True}
    openai_server.fail_embeddings(400, "input too long")
    with pytest.raises(MemoryUnavailable, match="input too long") as failed:
        await embedder.embed(["x"])
    assert failed.value.details["retryable"] is False
    await embedder.aclose()


# --------------------------------------------------------------------------- Ollama


async def test_ollama_embedder_batches_in_order(ollama_server: ScriptedOllamaServer) -> None:
    # A /v1 endpoint (its OpenAI API) is taken back to the native root.
    embedder = OllamaEmbedder(OLLAMA_MODEL, endpoint=f"{ollama_server.url}/v1", batch_size=3)
    assert isinstance(embedder, Embedder)
    vectors = await embedder.embed(TEXTS)
    await embedder.aclose()
    assert [r["input"] for r in ollama_server.embedding_requests] == [TEXTS[:3], TEXTS[3:]]
    assert all(r["model"] == OLLAMA_MODEL for r in ollama_server.embedding_requests)
    for vector, text in zip(vectors, TEXTS, strict=True):
        assert vector == pytest.approx(fake_embedding(text, 32))


async def test_ollama_embedder_failures_are_memory_unavailable(
    ollama_server: ScriptedOllamaServer,
) -> None:
    missing = OllamaEmbedder("nomic-embed-text", endpoint=ollama_server.url)
    with pytest.raises(MemoryUnavailable, match="not found") as failed:
        await missing.embed(["x"])
    assert failed.value.hint == "pull the model (`ollama pull nomic-embed-text`)"
    assert failed.value.details["status"] == 404
    embedder = OllamaEmbedder(OLLAMA_MODEL, endpoint=ollama_server.url)
    ollama_server.fail_embeddings(500, "llama runner process has terminated")
    with pytest.raises(MemoryUnavailable, match="runner process") as failed:
        await embedder.embed(["x"])
    assert failed.value.details["retryable"] is True
    await missing.aclose()
    await embedder.aclose()


# --------------------------------------------------------------------------- down


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_a_server_that_is_down_is_memory_unavailable(kind: str) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    embedder: OpenAIEmbedder | OllamaEmbedder = (
        OpenAIEmbedder("emb", endpoint=f"{url}/v1", timeout_s=5)
        if kind == "openai"
        else OllamaEmbedder(OLLAMA_MODEL, endpoint=url, timeout_s=5)
    )
    with pytest.raises(MemoryUnavailable, match="cannot reach") as failed:
        await embedder.embed(["x"])
    assert failed.value.details["retryable"] is True
    assert failed.value.details["backend"] == embedder.name
    if kind == "ollama":
        assert failed.value.hint is not None and "ollama serve" in failed.value.hint
    await embedder.aclose()
