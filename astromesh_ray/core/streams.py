"""Closing what a consumer stops iterating."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

T = TypeVar("T")


async def aclose(stream: AsyncIterator[T]) -> None:
    """Close ``stream`` if it is a generator (closing a finished one costs nothing)."""
    if isinstance(stream, AsyncGenerator):
        await stream.aclose()


@asynccontextmanager
async def closing_stream(stream: AsyncIterator[T]) -> AsyncGenerator[AsyncIterator[T], None]:
    """``async with closing_stream(provider.stream(r)) as chunks``: the stream is
    closed when the block ends, however it ends.

    A consumer that stops early (an error, a timeout, a client gone) must close what
    it iterates, or the stream (and the HTTP response or remote generator behind it)
    stays open until the garbage collector finds it.
    """
    try:
        yield stream
    finally:
        await aclose(stream)
