"""``RetryingProvider``: retry rate-limited and failing calls with exponential
backoff, honouring the server's ``Retry-After``.

Only answers that say "try again" are retried (HTTP 429 and 5xx).  A provider that
cannot be reached at all is not: the router's fallback and circuit breaker handle
that faster than waiting.  A ``Retry-After`` longer than ``max_delay_s`` is not
waited for either: the error goes up so the router can try another candidate.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from astromesh_ray.core.messages import Completion, CompletionChunk, CompletionRequest
from astromesh_ray.core.providers.base import Provider
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
    status = exc.details.get("status")
    return isinstance(status, int) and (status == 429 or status >= 500)


class RetryingProvider:
    """A ``Provider`` that retries ``inner`` up to ``max_retries`` times."""

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

    async def complete(self, request: CompletionRequest) -> Completion:
        attempt = 0
        while True:
            try:
                completion = await self.inner.complete(request)
            except ProviderError as exc:
                delay = self._delay(exc, attempt)
                if delay is None:
                    exc.details.setdefault("attempts_made", attempt + 1)
                    raise
                await self._sleep(delay)
                attempt += 1
                continue
            if attempt:
                completion.location["retries"] = str(attempt)
            return completion

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        attempt = 0
        while True:
            started = False
            try:
                async for chunk in self.inner.stream(request):
                    started = True
                    yield chunk
                return
            except ProviderError as exc:
                delay = None if started else self._delay(exc, attempt)
                if delay is None:
                    raise  # mid-stream: the caller already has part of the answer
                await self._sleep(delay)
                attempt += 1

    async def health(self) -> bool:
        return await self.inner.health()

    async def aclose(self) -> None:
        await self.inner.aclose()
