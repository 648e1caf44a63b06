"""``RetryingProvider``: retry rate-limited and failing calls with exponential
backoff, honouring the server's ``Retry-After``.

Only answers that say "try again" are retried (HTTP 429 and 5xx), and, once and at
once, a connection the backend dropped.  A provider that cannot be reached at all is
not: the router's fallback and circuit breaker handle that faster than waiting.  A
``Retry-After`` longer than ``max_delay_s`` is not waited for either: the error goes
up so the router can try another candidate.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from astromesh_ray.core.messages import Completion, CompletionChunk, CompletionRequest
from astromesh_ray.core.providers.base import Provider, closing_stream
from astromesh_ray.errors import ProviderError


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def worth_retrying(exc: ProviderError) -> bool:
    """Whether the answer said "try again" (HTTP 429 or 5xx)."""
    status = exc.details.get("status")
    return isinstance(status, int) and (status == 429 or status >= 500)


def connection_was_lost(exc: ProviderError) -> bool:
    """Whether the backend dropped the connection the call was using (the providers
    mark it ``connection_lost``): a fresh connection will most likely do."""
    return exc.details.get("connection_lost") is True


@dataclass
class _Attempts:
    """What one call has retried so far."""

    backoffs: int = 0  # retries after a delay, up to max_retries
    reconnected: bool = False  # the one immediate retry of a dropped connection

    @property
    def retries(self) -> int:
        return self.backoffs + int(self.reconnected)


class RetryingProvider:
    """A ``Provider`` that retries ``inner`` up to ``max_retries`` times.

    Besides those, a call whose connection the backend dropped (a pooled keep-alive
    connection the server had closed, a reset) is retried once more, at once, even
    with ``max_retries`` 0: under load servers close idle connections while a client
    is reusing them, and counting that against the circuit breaker would open it for
    a backend that is fine.  Streams are retried only before their first chunk.
    """

    def __init__(
        self,
        inner: Provider,
        *,
        max_retries: int = 2,
        base_delay_s: float = 0.5,
        max_delay_s: float = 8.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_retries = max_retries
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep

    def _delay(self, exc: ProviderError, attempt: int) -> float | None:
        """Seconds before the next attempt, or None to give up now."""
        if attempt >= self.max_retries or not worth_retrying(exc):
            return None
        hinted = exc.details.get("retry_after_s")
        if isinstance(hinted, (int, float)):
            wait = float(hinted)
            return wait if wait <= self.max_delay_s else None
        return min(self.max_delay_s, self.base_delay_s * 2.0**attempt)

    async def _again(self, exc: ProviderError, attempts: _Attempts) -> bool:
        """Wait as long as ``exc`` asks and say True, or say False to give up."""
        if connection_was_lost(exc) and not attempts.reconnected:
            attempts.reconnected = True
            return True  # at once: nothing is wrong with the backend itself
        delay = self._delay(exc, attempts.backoffs)
        if delay is None:
            exc.details.setdefault("attempts_made", attempts.retries + 1)
            return False
        await self._sleep(delay)
        attempts.backoffs += 1
        return True

    async def complete(self, request: CompletionRequest) -> Completion:
        attempts = _Attempts()
        while True:
            try:
                completion = await self.inner.complete(request)
            except ProviderError as exc:
                if await self._again(exc, attempts):
                    continue
                raise
            if attempts.retries:
                completion.location["retries"] = str(attempts.retries)
            return completion

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        attempts = _Attempts()
        while True:
            started = False
            try:
                async with closing_stream(self.inner.stream(request)) as chunks:
                    async for chunk in chunks:
                        started = True
                        yield chunk
                return
            except ProviderError as exc:
                # Mid-stream the caller already has part of the answer: never again.
                if started or not await self._again(exc, attempts):
                    raise

    async def health(self) -> bool:
        return await self.inner.health()

    async def aclose(self) -> None:
        await self.inner.aclose()
