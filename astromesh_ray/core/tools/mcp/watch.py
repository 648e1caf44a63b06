"""What ``SessionConnection`` keeps about its sessions: one opened session
(``Session``), its transport's read stream watched for its end (``WatchedRead``),
how long to wait between starts in a row (``backoff_s``), and how a failure is told
in one line (``reason_of``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
from mcp import Client

__all__ = ["BACKOFF_BASE_S", "BACKOFF_CAP_S", "Session", "WatchedRead", "backoff_s", "reason_of"]

# Backoff between starts in a row: none for the first restart, then 0.5 s doubling
# up to BACKOFF_CAP_S.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


def backoff_s(failures: int) -> float:
    """Seconds to wait before start number ``failures + 1`` after ``failures``
    failures in a row: 0 after the first, then 0.5, 1, 2, ... up to the cap."""
    if failures <= 1:
        return 0.0
    return float(min(BACKOFF_BASE_S * 2 ** (failures - 2), BACKOFF_CAP_S))


def reason_of(exc: BaseException) -> str:
    """A one-line reason for a failure (the first leaf of an exception group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


@dataclass(eq=False)
class Session:
    """One opened session: its ``Client``, and whether its transport has ended."""

    number: int
    client: Client | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    listener: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.client is not None and not self.ended.is_set()


class WatchedRead:
    """The transport's read stream, telling ``on_end`` when it ends (the server
    exited or hung up): the session is then known dead before the next call."""

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    def __aiter__(self) -> WatchedRead:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> WatchedRead:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._on_end()
        result: bool | None = await self._inner.__aexit__(exc_type, exc, tb)
        return result
