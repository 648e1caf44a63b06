"""``FallbackProvider``: try providers in order until one answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from astromesh_ray.core.messages import Completion, CompletionChunk, CompletionRequest
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.errors import ProviderError


class FallbackProvider:
    """A ``Provider`` that calls ``providers[0]`` and, when it raises ``ProviderError``,
    the next one, and so on.  If all fail, one ``ProviderError`` lists every attempt
    and joins their hints, so the user learns everything to start or set at once.

    A stream falls back only before its first chunk: after that the client has
    already seen part of an answer.
    """

    def __init__(self, providers: Sequence[Provider]) -> None:
        if not providers:
            raise ValueError("FallbackProvider needs at least one provider")
        self.providers = list(providers)
        self.name = " -> ".join(p.name for p in self.providers)

    async def complete(self, request: CompletionRequest) -> Completion:
        failures: list[ProviderError] = []
        for provider in self.providers:
            try:
                completion = await provider.complete(request)
            except ProviderError as exc:
                failures.append(exc)
                continue
            if failures:
                completion.location["fallback_from"] = ",".join(
                    str(f.details.get("provider", "?")) for f in failures
                )
            return completion
        raise self._all_failed(failures)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        failures: list[ProviderError] = []
        for provider in self.providers:
            started = False
            try:
                async for chunk in provider.stream(request):
                    started = True
                    yield chunk
                return
            except ProviderError as exc:
                if started:
                    raise
                failures.append(exc)
        raise self._all_failed(failures)

    async def health(self) -> bool:
        for provider in self.providers:
            if await provider.health():
                return True
        return False

    async def aclose(self) -> None:
        for provider in self.providers:
            await provider.aclose()

    def _all_failed(self, failures: list[ProviderError]) -> ProviderError:
        if len(failures) == 1:
            return failures[0]
        # Each provider's message already starts with its name.
        message = "every model provider failed: " + "; ".join(f.message for f in failures)
        hints = [f.hint for f in failures if f.hint]
        last = failures[-1]
        return ProviderError(
            message,
            hint="; or ".join(hints) if hints else None,
            provider=self.name,
            status=last.details.get("status"),
            retryable=any(f.retryable for f in failures),
            attempts=[f.to_dict() for f in failures],
        )
