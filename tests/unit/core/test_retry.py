from __future__ import annotations

import email.utils
from typing import Any

import pytest

from astromesh_ray.core.messages import CompletionChunk, CompletionRequest, Message
from astromesh_ray.core.providers.retry import RetryingProvider, parse_retry_after
from astromesh_ray.errors import ProviderError
from astromesh_ray.testing import ScriptedProvider

REQ = CompletionRequest(messages=[Message("user", "hi")])


def err(status: int | None, retry_after: float | None = None) -> ProviderError:
    return ProviderError(f"HTTP {status}", provider="p", status=status, retry_after_s=retry_after)


def retrying(steps: list[object], **kw: float) -> tuple[RetryingProvider, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    inner = ScriptedProvider(steps, name="p")
    return RetryingProvider(inner, sleep=sleep, **kw), waits  # type: ignore[arg-type]


async def test_backs_off_exponentially_then_succeeds() -> None:
    provider, waits = retrying([err(503), err(500), "ok"], max_retries=2, base_delay_s=0.5)
    completion = await provider.complete(REQ)
    assert completion.message.content == "ok"
    assert waits == [0.5, 1.0]
    assert completion.location["retries"] == "2"


async def test_honours_retry_after_and_gives_up_when_it_is_too_long() -> None:
    provider, waits = retrying([err(429, 3.0), "ok"], max_delay_s=8)
    assert (await provider.complete(REQ)).message.content == "ok"
    assert waits == [3.0]
    provider, waits = retrying([err(429, 30.0)], max_delay_s=8)
    with pytest.raises(ProviderError, match="HTTP 429"):
        await provider.complete(REQ)
    assert waits == []  # the router can fall back now instead of waiting 30 s


@pytest.mark.parametrize("status", [None, 400, 401, 404, 422])
async def test_does_not_retry_what_retrying_cannot_fix(status: int | None) -> None:
    provider, waits = retrying([err(status)])
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQ)
    assert waits == [] and info.value.details["attempts_made"] == 1


async def test_gives_up_after_max_retries() -> None:
    provider, waits = retrying([err(502), err(502), err(502)], max_retries=2)
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQ)
    assert len(waits) == 2 and info.value.details["attempts_made"] == 3


async def test_stream_retries_before_the_first_chunk() -> None:
    provider, waits = retrying([err(503), "streamed text"])
    chunks = [c async for c in provider.stream(REQ)]
    assert "".join(c.text for c in chunks) == "streamed text" and waits == [0.5]


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30)


def lost() -> ProviderError:
    return ProviderError("connection lost", provider="p", status=None, connection_lost=True)


async def test_a_lost_connection_is_retried_once_at_once_even_without_retries() -> None:
    provider, waits = retrying([lost(), "ok"], max_retries=0)
    completion = await provider.complete(REQ)
    assert completion.message.content == "ok" and completion.location["retries"] == "1"
    assert waits == []


async def test_a_connection_lost_twice_is_not_retried_again() -> None:
    provider, waits = retrying([lost(), lost()], max_retries=0)
    with pytest.raises(ProviderError, match="connection lost") as info:
        await provider.complete(REQ)
    assert info.value.details["attempts_made"] == 2 and waits == []


async def test_the_reconnect_does_not_use_up_the_backoff_retries() -> None:
    provider, waits = retrying([lost(), err(503), err(502), "ok"], max_retries=2)
    completion = await provider.complete(REQ)
    assert completion.message.content == "ok" and completion.location["retries"] == "3"
    assert waits == [0.5, 1.0]


async def test_stream_reconnects_before_the_first_chunk_only() -> None:
    provider, waits = retrying([lost(), "streamed text"], max_retries=0)
    chunks = [c async for c in provider.stream(REQ)]
    assert "".join(c.text for c in chunks) == "streamed text" and waits == []

    class CutMidStream(ScriptedProvider):
        async def _chunks(self, request: CompletionRequest, answer: Any) -> Any:
            yield CompletionChunk(text="partial ")
            raise lost()

    cut = RetryingProvider(CutMidStream(["never finished"]), max_retries=2)
    received: list[CompletionChunk] = []
    with pytest.raises(ProviderError, match="connection lost"):
        async for chunk in cut.stream(REQ):
            received.append(chunk)
    # The caller has part of the answer: no second call (the script has one step).
    assert [c.text for c in received] == ["partial "]
