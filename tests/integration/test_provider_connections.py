"""The HTTP providers' connections: dropped ones are marked and retried once, at once;
pools are as large as the deployment's concurrency and keep every connection alive.

A ``FlakyProxy`` (a raw asyncio server) stands between each provider and its
scripted server: it resets or closes connections on the requests its plan says,
and counts the connections the provider opens.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from astromesh_ray.core.messages import CompletionChunk, CompletionRequest, Message
from astromesh_ray.core.providers.base import Provider, local_provider
from astromesh_ray.core.providers.http import DEFAULT_MAX_CONNECTIONS
from astromesh_ray.core.providers.ollama import OllamaProvider
from astromesh_ray.core.providers.openai import OpenAIProvider
from astromesh_ray.core.providers.retry import RetryingProvider
from astromesh_ray.core.providers.tgi import TGIProvider
from astromesh_ray.errors import ProviderError
from astromesh_ray.spec import DeploymentSpec, ModelEndpoint
from astromesh_ray.testing import ScriptedOllamaServer, ScriptedOpenAIServer, ScriptedTGIServer
from tests.integration.flaky_proxy import Action, FlakyProxy

pytestmark = pytest.mark.integration

ASK = CompletionRequest(messages=[Message(role="user", content="hi")])
KINDS = ("openai", "ollama", "tgi")


@contextmanager
def backend(
    kind: str, plan: list[Action], answers: list[Any], **provider: Any
) -> Iterator[tuple[Provider, FlakyProxy, Any]]:
    """A provider of ``kind`` reaching a scripted server through a ``FlakyProxy``."""
    server: Any
    client: Provider
    if kind == "openai":
        server = ScriptedOpenAIServer(answers).start()
        proxy = FlakyProxy(server.url.removesuffix("/v1"), plan).start()
        client = OpenAIProvider(
            name="compat:m", kind="openai_compat", model="m", endpoint=f"{proxy.url}/v1", **provider
        )
    elif kind == "ollama":
        server = ScriptedOllamaServer(answers, models=["m:latest"]).start()
        proxy = FlakyProxy(server.url, plan).start()
        client = OllamaProvider(name="ollama:m", model="m", endpoint=proxy.url, **provider)
    else:
        server = ScriptedTGIServer(answers).start()
        proxy = FlakyProxy(server.url, plan).start()
        client = TGIProvider(name="hf_tgi:m", model="m", endpoint=proxy.url, **provider)
    try:
        yield client, proxy, server
    finally:
        proxy.stop()
        server.stop()


async def _collect(stream: AsyncIterator[CompletionChunk]) -> list[CompletionChunk]:
    return [chunk async for chunk in stream]


def _text(chunks: list[CompletionChunk]) -> str:
    return "".join(c.text for c in chunks)


def _no_sleep() -> tuple[Callable[[float], Any], list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return sleep, waits


# -- dropped connections -----------------------------------------------------------------


@pytest.mark.parametrize("drop", ["reset", "close"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_dropped_connection_is_marked(kind: str, drop: Action) -> None:
    with backend(kind, [drop, drop], ["never sent"]) as (provider, _, server):
        try:
            with pytest.raises(ProviderError) as complete:
                await provider.complete(ASK)
            with pytest.raises(ProviderError) as stream:
                await _collect(provider.stream(ASK))
        finally:
            await provider.aclose()
        for caught in (complete, stream):
            assert caught.value.details["connection_lost"] is True
            assert caught.value.retryable and caught.value.details["status"] is None
            assert "lost" in caught.value.message
        assert server.remaining == 1  # the proxy dropped both before the server saw them


@pytest.mark.parametrize("drop", ["reset", "close"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_dropped_connection_is_retried_once_at_once(kind: str, drop: Action) -> None:
    sleep, waits = _no_sleep()
    with backend(kind, [drop, "pass", drop], ["whole answer", "streamed answer"]) as (
        provider,
        proxy,
        server,
    ):
        # max_retries=0: no retry for anything else, yet a lost connection gets one.
        retrying = RetryingProvider(provider, max_retries=0, sleep=sleep)
        try:
            completion = await retrying.complete(ASK)
            chunks = await _collect(retrying.stream(ASK))
        finally:
            await retrying.aclose()
        assert completion.message.content == "whole answer"
        assert completion.location["retries"] == "1"
        assert _text(chunks) == "streamed answer"
        assert waits == []  # at once
        assert [action for _, action in proxy.requests] == [drop, "pass", drop, "pass"]
        server.assert_consumed()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_connection_dropped_twice_is_not_retried_again(kind: str) -> None:
    with backend(kind, ["reset", "close"], ["never sent"]) as (provider, proxy, server):
        retrying = RetryingProvider(provider, max_retries=2)
        try:
            with pytest.raises(ProviderError) as caught:
                await retrying.complete(ASK)
        finally:
            await retrying.aclose()
        assert caught.value.details["connection_lost"] is True
        assert caught.value.details["attempts_made"] == 2
        assert len(proxy.requests) == 2 and server.remaining == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_reused_keep_alive_connection_reset_is_retried(kind: str) -> None:
    with backend(kind, ["pass", "reset"], ["first", "second"]) as (provider, proxy, server):
        retrying = RetryingProvider(provider, max_retries=0)
        try:
            assert (await retrying.complete(ASK)).message.content == "first"
            assert (await retrying.complete(ASK)).message.content == "second"
        finally:
            await retrying.aclose()
        # The reset hit the pooled connection the first answer came on; the retry
        # opened a new one.
        (first, _), (reused, action), (fresh, _) = proxy.requests
        assert first == reused == 1 and action == "reset" and fresh == 2
        server.assert_consumed()


async def test_a_stream_cut_after_its_first_chunk_is_not_retried() -> None:
    answer = " ".join(f"word{i}" for i in range(40))
    with backend("openai", ["cut"], [answer, "unused"]) as (provider, proxy, server):
        retrying = RetryingProvider(provider, max_retries=2)
        received: list[CompletionChunk] = []
        try:
            with pytest.raises(ProviderError) as caught:
                async for chunk in retrying.stream(ASK):
                    received.append(chunk)
        finally:
            await retrying.aclose()
        assert received and answer.startswith(_text(received))  # part of the answer came
        assert caught.value.details["connection_lost"] is True
        assert len(proxy.requests) == 1 and server.remaining == 1


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("kind", KINDS)
async def test_refused_connections_and_timeouts_are_not_connection_losses(kind: str) -> None:
    url = f"http://127.0.0.1:{_unused_port()}"
    refused: Provider = {
        "openai": lambda: OpenAIProvider(
            name="x", kind="openai_compat", model="m", endpoint=f"{url}/v1"
        ),
        "ollama": lambda: OllamaProvider(name="x", model="m", endpoint=url),
        "tgi": lambda: TGIProvider(name="x", model="m", endpoint=url),
    }[kind]()
    retrying = RetryingProvider(refused, max_retries=0)
    with pytest.raises(ProviderError) as caught:
        await retrying.complete(ASK)
    await retrying.aclose()
    assert caught.value.details["connection_lost"] is False
    assert caught.value.details["attempts_made"] == 1  # the server is down: no retry

    slow = {"content" if kind != "tgi" else "text": "late", "delay_s": 2.0}
    with backend(kind, [], [slow], timeout_s=0.3) as (provider, _, _):
        try:
            with pytest.raises(ProviderError) as late:
                await RetryingProvider(provider, max_retries=0).complete(ASK)
        finally:
            await provider.aclose()
    assert "within 0.3s" in late.value.message
    assert not late.value.details.get("connection_lost")


async def test_32_concurrent_callers_through_dropping_connections_all_succeed() -> None:
    # Every fourth request's connection is reset: each caller's one immediate retry
    # absorbs it, so none fails (and nothing would reach a circuit breaker).
    plan: list[Action] = ["pass", "pass", "pass", "reset"] * 8
    answers = [f"answer {i}" for i in range(32)]
    with backend("openai", plan, answers, max_connections=32) as (provider, proxy, server):
        retrying = RetryingProvider(provider, max_retries=0)
        try:
            results = await asyncio.gather(*(retrying.complete(ASK) for _ in range(32)))
        finally:
            await retrying.aclose()
        assert sorted(r.message.content or "" for r in results) == sorted(answers)
        assert sum(1 for _, action in proxy.requests if action == "reset") == 8
        server.assert_consumed()


# -- pool sizing -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_the_pool_opens_max_connections_and_keeps_them_all_alive(kind: str) -> None:
    step: dict[str, Any] = {"content" if kind != "tgi" else "text": "ok", "delay_s": 0.2}
    with backend(kind, [], [step] * 20, max_connections=4) as (provider, proxy, server):
        assert getattr(provider, "max_connections") == 4  # noqa: B009 - not in the protocol
        try:
            for _ in range(2):  # a second wave reuses every connection of the first
                await asyncio.gather(*(provider.complete(ASK) for _ in range(10)))
        finally:
            await provider.aclose()
        assert proxy.max_open == 4
        assert proxy.connections == 4
        server.assert_consumed()


async def test_a_pool_as_large_as_the_load_opens_no_new_connections() -> None:
    # httpx's default (20 kept alive) would open 10 more for the second wave of 30.
    step = {"content": "ok", "delay_s": 0.2}
    with backend("openai", [], [step] * 60, max_connections=30) as (provider, proxy, server):
        try:
            for _ in range(2):
                await asyncio.gather(*(provider.complete(ASK) for _ in range(30)))
        finally:
            await provider.aclose()
        assert proxy.connections == proxy.max_open == 30
        server.assert_consumed()


@pytest.mark.parametrize(
    ("provider", "options"),
    [("openai", {}), ("ollama", {}), ("hf_tgi", {}), ("vllm", {}), ("llamacpp", {})],
)
def test_local_provider_sizes_the_pool_to_the_deployment(
    provider: str, options: dict[str, Any]
) -> None:
    def build(deployment: DeploymentSpec | None) -> Any:
        return local_provider(
            ModelEndpoint(
                provider=provider,
                model="m",
                endpoint="http://127.0.0.1:9/v1",
                deployment=deployment,
                options=options,
            )
        )

    assert build(DeploymentSpec(max_ongoing_requests=7)).max_connections == 7
    assert build(DeploymentSpec()).max_connections == DEFAULT_MAX_CONNECTIONS
    assert build(None).max_connections == DEFAULT_MAX_CONNECTIONS


def test_the_default_pool_is_a_provider_deployment_replica_s_concurrency() -> None:
    from astromesh_ray.serve.providers import ProviderDeployment

    assert ProviderDeployment.max_ongoing_requests == DEFAULT_MAX_CONNECTIONS  # type: ignore[attr-defined]


def test_a_provider_deployment_keeps_one_connection_per_request_it_takes(
    serve_url: str,
) -> None:
    """A provider deployment built as the builders build it, on real Serve: the YAML's
    ``max_ongoing_requests`` caps the replica and sizes its pool, every connection of
    which stays open from one wave of calls to the next."""
    from ray import serve

    from astromesh_ray.serve.builders import serve_options
    from astromesh_ray.serve.outcome import unwrap
    from astromesh_ray.serve.providers import ProviderDeployment

    step = {"content": "ok", "delay_s": 0.3}
    with backend("openai", [], [step] * 12) as (_, proxy, server):
        endpoint = ModelEndpoint(
            provider="openai_compat",
            model="m",
            endpoint=f"{proxy.url}/v1",
            deployment=DeploymentSpec(max_ongoing_requests=3),
        )
        options = serve_options(ProviderDeployment, endpoint.deployment)
        assert options["max_ongoing_requests"] == 3
        app = ProviderDeployment.options(**options).bind(endpoint)  # type: ignore[attr-defined]
        handle = serve.run(app, name="pool-size", route_prefix=None)
        try:
            for _ in range(2):
                responses = [handle.complete.remote(ASK.to_dict()) for _ in range(6)]
                outcomes = [unwrap(r.result(timeout_s=30)) for r in responses]
                assert [o["message"]["content"] for o in outcomes] == ["ok"] * 6
        finally:
            serve.delete("pool-size")
        assert proxy.max_open == 3 and proxy.connections == 3
        server.assert_consumed()
