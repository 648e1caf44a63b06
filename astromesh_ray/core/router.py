"""``ModelRouter``: choose among an agent's model candidates, fall back on failure,
and keep away from providers whose circuit breaker is open.

Strategies (``spec.model.routing.strategy`` / ``default.strategy``):

- ``cost_optimized``: cheapest first, by price table × estimated tokens;
- ``latency_optimized``: lowest moving-average latency first, untried ones probed first;
- ``quality_first``: highest declared ``quality`` first;
- ``round_robin``: rotate the starting candidate on every call;
- ``capability_match``: the declared order, less the candidates that lack what the
  request needs (see ``astromesh_ray.core.capabilities``); each dropped one is on the
  route with what it lacks;
- none: the declared order (primary, then fallback).

Within one request, when a candidate fails (raises ``ProviderError``) the next one in
that order is tried.  Any other exception is not the provider failing but a bug or a
cancellation: it frees the breaker's probe slot and propagates unchanged.  Every
decision (candidate, reason, breaker state, outcome) is recorded on the
``Completion.route`` (the last stream chunk's ``route``) so the run trace shows it.

Health checks: with ``health_check_interval_s`` the router probes its candidates
itself (in-process use).  Under Serve the breaker actor probes each provider
deployment once for the whole cluster, and routers are built without an interval.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from astromesh_ray.core.breaker import BreakerPolicy, BreakerStore, LocalBreakerStore, find
from astromesh_ray.core.capabilities import Screen, screen, unfit_error
from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Usage,
)
from astromesh_ray.core.pricing import Price
from astromesh_ray.core.providers.base import Provider, closing_stream
from astromesh_ray.errors import ProviderError

Strategy = Literal[
    "cost_optimized", "latency_optimized", "quality_first", "round_robin", "capability_match"
]

# Errors that are the caller's fault say nothing about the provider's health.
CALLER_FAULT = frozenset({400, 401, 403, 404, 413, 422})
_EWMA_ALPHA = 0.3
_PROBE_TIMEOUT_S = 10.0
_log = logging.getLogger("astromesh.router")
_DEFAULT_OUTPUT_TOKENS = 256


@dataclass
class Candidate:
    """One provider the router may call, with what the strategies need to rank it."""

    key: str  # the provider deployment's name: breaker and latency are tracked by it
    provider: Provider
    price: Price | None = None
    quality: int | None = None
    # For capability_match: None is "not declared" (never dropped), else the whole set.
    capabilities: frozenset[str] | None = None


class ModelRouter:
    """A ``Provider`` over several candidates; see the module docstring."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        *,
        strategy: Strategy | None = None,
        breakers: BreakerStore | None = None,
        policy: BreakerPolicy | None = None,
        fallback: bool = True,
        health_check_interval_s: float | None = None,
    ) -> None:
        if not candidates:
            raise ValueError("ModelRouter needs at least one candidate")
        self.candidates = list(candidates)
        self.strategy = strategy
        self.breakers = breakers or LocalBreakerStore()
        self.policy = policy or BreakerPolicy()
        self.fallback = fallback
        self.name = " | ".join(c.provider.name for c in self.candidates)
        self._latency: dict[str, float] = {}
        self._turn = itertools.count()
        self.health_check_interval_s = health_check_interval_s
        self._health_task: asyncio.Task[None] | None = None

    # -- health checks -------------------------------------------------------------

    def start_health_checks(self) -> bool:
        """Probe every candidate each ``health_check_interval_s`` in the background; a
        failed probe counts against its breaker, so a dead provider is skipped before
        a user request fails on it.  Needs a running event loop; idempotent."""
        if not self.health_check_interval_s:
            return False
        if self._health_task is not None and not self._health_task.done():
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._health_task = loop.create_task(self._health_loop(self.health_check_interval_s))
        return True

    async def check_health(self) -> dict[str, bool]:
        """Probe every candidate once and feed the breakers; returns health by key.

        A failed (or hung) probe counts as a failure; a healthy one resets the count
        of a closed breaker, so only *consecutive* failures open it.  An open breaker
        is not closed by a probe: a real request decides that after the cooldown.
        """
        results = await asyncio.gather(*(self._probe(c) for c in self.candidates))
        states = await self.breakers.snapshot()
        for candidate, healthy in zip(self.candidates, results, strict=True):
            state = find(states.get(candidate.key, []), self.policy) or {}
            if not healthy:
                await self.breakers.failure(candidate.key, self.policy, "health check failed")
            elif state.get("state") == "closed" and state.get("consecutive_failures"):
                await self.breakers.success(candidate.key, self.policy)
        return {c.key: h for c, h in zip(self.candidates, results, strict=True)}

    async def _probe(self, candidate: Candidate) -> bool:
        timeout = min(self.health_check_interval_s or _PROBE_TIMEOUT_S, _PROBE_TIMEOUT_S)
        try:
            return bool(await asyncio.wait_for(candidate.provider.health(), timeout))
        except Exception:
            # Broad on purpose: this is a probe, not a request.  Slow, unreachable or
            # broken (even a bug in a client's health()) all mean "unhealthy", and the
            # loop must go on probing the other candidates.
            return False

    async def _health_loop(self, interval_s: float) -> None:
        while True:
            try:
                await self.check_health()
            except Exception:
                # A background loop nobody awaits: an error here would end it silently,
                # so log it (with its traceback) and try again next round.
                _log.warning("health check round failed", exc_info=True)
            await asyncio.sleep(interval_s)

    # -- ordering --------------------------------------------------------------

    def order(self, request: CompletionRequest) -> list[tuple[Candidate, str]]:
        """Candidates in the order to try them, each with the reason for its place
        (under ``capability_match``, only those that can serve ``request``)."""
        indexed = list(enumerate(self.candidates))
        if self.strategy == "capability_match":
            return screen(self.candidates, request).kept
        if self.strategy == "cost_optimized":
            tokens_in = _estimate_input_tokens(request)
            tokens_out = int(request.parameters.get("max_tokens") or _DEFAULT_OUTPUT_TOKENS)

            def cost(c: Candidate) -> float:
                if c.price is None:
                    return float("inf")
                return c.price.cost(Usage(tokens_in, tokens_out))

            ranked = sorted(indexed, key=lambda ic: (cost(ic[1]), ic[0]))
            return [
                (c, f"estimated cost ${cost(c):.6f}" if c.price else "price unknown")
                for _, c in ranked
            ]
        if self.strategy == "latency_optimized":
            ranked = sorted(
                indexed,
                key=lambda ic: (
                    ic[1].key in self._latency,
                    self._latency.get(ic[1].key, 0.0),
                    ic[0],
                ),
            )
            return [
                (c, f"mean latency {self._latency[c.key] * 1000:.1f} ms")
                if c.key in self._latency
                else (c, "untried: probing its latency")
                for _, c in ranked
            ]
        if self.strategy == "quality_first":
            ranked = sorted(indexed, key=lambda ic: (-(ic[1].quality or -1), ic[0]))
            return [(c, f"quality {c.quality}") for _, c in ranked]
        if self.strategy == "round_robin":
            start = next(self._turn) % len(indexed)
            rotated = indexed[start:] + indexed[:start]
            return [(c, f"round robin turn {start}") for _, c in rotated]
        return [(c, "primary" if i == 0 else "fallback") for i, c in indexed]

    # -- Provider protocol -------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion:
        self.start_health_checks()
        routing = _Routing(self, request)
        async with aclosing(routing.attempts()) as attempts:
            async for attempt in attempts:
                async with attempt:
                    completion = await attempt.candidate.provider.complete(request)
                    await attempt.succeeded(completion.usage)
                    completion.route = routing.route
                    return completion
        raise routing.failed()

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        self.start_health_checks()
        routing = _Routing(self, request)
        async with aclosing(routing.attempts()) as attempts:
            async for attempt in attempts:
                async with (
                    attempt,
                    closing_stream(attempt.candidate.provider.stream(request)) as chunks,
                ):
                    async for chunk in chunks:
                        if chunk.is_last:
                            # The last chunk: account for it before the caller sees it.
                            await attempt.succeeded(chunk.usage)
                            chunk.route = routing.route
                        attempt.yielded = True
                        yield chunk
                    return
        raise routing.failed()

    async def health(self) -> bool:
        for candidate in self.candidates:
            if await candidate.provider.health():
                return True
        return False

    async def aclose(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None
        for candidate in self.candidates:
            await candidate.provider.aclose()

    # -- internals -------------------------------------------------------------------

    def _plan(self, request: CompletionRequest) -> Screen[Candidate]:
        """The candidates to try (only the first without fallback), and, under
        ``capability_match``, those dropped for what they lack."""
        if self.strategy == "capability_match":
            found = screen(self.candidates, request)
        else:
            found = Screen((), kept=self.order(request))
        if not self.fallback:
            found.kept = found.kept[:1]
        return found

    async def _release(self, candidate: Candidate) -> None:
        # Shielded: when the caller is being cancelled, the release still completes.
        try:
            await asyncio.shield(self.breakers.release(candidate.key, self.policy))
        except asyncio.CancelledError:
            _log.warning("cancelled while releasing the breaker of %s", candidate.key)

    async def _record_failure(self, candidate: Candidate, exc: ProviderError) -> str:
        status = exc.details.get("status")
        if exc.details.get("caller_fault") or (isinstance(status, int) and status in CALLER_FAULT):
            await self.breakers.release(candidate.key, self.policy)
            return "closed (caller's fault: not counted)"
        return await self.breakers.failure(candidate.key, self.policy, exc.message)

    def _observe(self, candidate: Candidate, seconds: float) -> None:
        previous = self._latency.get(candidate.key)
        self._latency[candidate.key] = (
            seconds if previous is None else _EWMA_ALPHA * seconds + (1 - _EWMA_ALPHA) * previous
        )

    def _all_failed(
        self, failures: list[ProviderError], route: list[dict[str, Any]]
    ) -> ProviderError:
        if len(failures) == 1 and len(route) == 1:
            failures[0].details.setdefault("route", route)
            return failures[0]
        skipped = [s["candidate"] for s in route if s.get("outcome", "").startswith("skipped")]
        dropped = [
            f"{s['candidate']} ({s['reason']})" for s in route if s.get("outcome") == "dropped"
        ]
        parts = [f.message for f in failures]
        if skipped:
            parts.append("circuit open for " + ", ".join(skipped))
        if dropped:
            parts.append("dropped by capability_match: " + ", ".join(dropped))
        hints = [f.hint for f in failures if f.hint]
        if skipped:
            hints.append("open circuits close after their cooldown; see GET /v1/providers")
        last = failures[-1] if failures else None
        return ProviderError(
            "every model provider failed: " + "; ".join(parts),
            hint="; or ".join(hints) if hints else None,
            provider=self.name,
            status=last.details.get("status") if last else None,
            retryable=True,
            attempts=[f.to_dict() for f in failures],
            route=route,
        )


class _Routing:
    """One request's walk through the candidates: the attempt loop ``complete`` and
    ``stream`` share (admission, route, fallback, the all-failed error)."""

    def __init__(self, router: ModelRouter, request: CompletionRequest) -> None:
        self.router = router
        self.request = request
        self.route: list[dict[str, Any]] = []
        self.failures: list[ProviderError] = []
        self.unfit: ProviderError | None = None

    async def attempts(self) -> AsyncGenerator[_Attempt, None]:
        """The candidates to call, in order, each admitted by its breaker; a skipped
        one is recorded on the route, as is one dropped by ``capability_match``
        (first, with what it lacks).  The caller stops iterating on success; when the
        iteration ends, every candidate failed, was skipped or dropped: ``failed()``."""
        router = self.router
        plan = router._plan(self.request)
        for candidate, reason in plan.dropped:
            self.route.append(
                {
                    "candidate": candidate.key,
                    "provider": candidate.provider.name,
                    "reason": reason,
                    "outcome": "dropped",
                }
            )
        if not plan.kept:
            # Every candidate lacks what the request needs: nothing to call.
            self.unfit = unfit_error(router.name, plan, self.route)
            return
        for candidate, reason in plan.kept:
            allowed, state = await router.breakers.allow(candidate.key, router.policy)
            step: dict[str, Any] = {
                "candidate": candidate.key,
                "provider": candidate.provider.name,
                "reason": reason,
                "breaker": state,
            }
            self.route.append(step)
            if not allowed:
                step["outcome"] = "skipped: circuit open"
                continue
            yield _Attempt(self, candidate, step)

    def failed(self) -> ProviderError:
        """The error once no candidate answered (or none could serve the request)."""
        if self.unfit is not None:
            return self.unfit
        return self.router._all_failed(self.failures, self.route)


class _Attempt:
    """One call to one candidate, as an async context manager around the call.

    On leaving it, the outcome goes on the route step and to the breaker:

    - ``succeeded()`` was called: nothing more to do;
    - the block ended normally without it (a stream with no final chunk): success;
    - a ``ProviderError``: counted (unless it is the caller's fault) and suppressed,
      so the request falls back to the next candidate; re-raised when part of the answer
      was already ``yielded`` to the caller;
    - anything else (cancellation, a closed stream, a bug such as a ``TypeError``):
      it says nothing about the provider, so the probe slot is freed and the
      exception propagates unchanged.
    """

    def __init__(self, routing: _Routing, candidate: Candidate, step: dict[str, Any]) -> None:
        self.routing = routing
        self.candidate = candidate
        self.step = step
        self.yielded = False
        self._recorded = False
        self._started = time.perf_counter()

    async def __aenter__(self) -> _Attempt:
        self._started = time.perf_counter()
        return self

    async def succeeded(self, usage: Usage | None) -> None:
        """The provider answered: latency, breaker, and the price of ``usage``."""
        router, candidate = self.routing.router, self.candidate
        self._recorded = True
        router._observe(candidate, time.perf_counter() - self._started)
        self.step["outcome"] = "ok"
        self.step["breaker"] = await router.breakers.success(candidate.key, router.policy)
        if usage is not None and candidate.price is not None:
            usage.cost_usd = candidate.price.cost(usage)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._recorded:
            return False
        if exc is None:
            await self.succeeded(None)
            return False
        self._recorded = True
        router = self.routing.router
        if isinstance(exc, ProviderError):
            self.step["outcome"] = f"failed: {exc.message}"
            self.step["breaker"] = await router._record_failure(self.candidate, exc)
            if self.yielded:
                return False  # the client has seen part of this answer: no fallback
            self.routing.failures.append(exc)
            return True
        await router._release(self.candidate)
        return False


def _estimate_input_tokens(request: CompletionRequest) -> int:
    # ~4 characters per token: good enough to rank prices, no tokenizer needed.
    chars = sum(len(m.content or "") for m in request.messages)
    chars += sum(len(str(t.parameters)) + len(t.description) for t in request.tools)
    return max(1, chars // 4)
