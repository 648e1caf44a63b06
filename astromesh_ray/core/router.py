"""``ModelRouter``: choose among an agent's model candidates, fall back on failure,
and keep away from providers whose circuit breaker is open.

Strategies (``spec.model.routing.strategy`` / ``default.strategy``):

- ``cost_optimized``: cheapest first, by price table × estimated tokens;
- ``latency_optimized``: lowest moving-average latency first, untried ones probed first;
- ``quality_first``: highest declared ``quality`` first;
- ``round_robin``: rotate the starting candidate on every call;
- none: the declared order (primary, then fallback).

Within one request, when a candidate fails the next one in that order is tried.
Every decision (candidate, reason, breaker state, outcome) is recorded on the
``Completion.route`` so the run trace shows it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from astromesh_ray.core.breaker import BreakerPolicy, BreakerStore, LocalBreakerStore
from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Usage,
)
from astromesh_ray.core.pricing import Price
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.errors import AstromeshError, ProviderError

Strategy = Literal["cost_optimized", "latency_optimized", "quality_first", "round_robin"]

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
            state = states.get(candidate.key, {})
            if not healthy:
                await self.breakers.failure(candidate.key, self.policy, "health check failed")
            elif state.get("state") == "closed" and state.get("consecutive_failures"):
                await self.breakers.success(candidate.key, self.policy)
        return {c.key: h for c, h in zip(self.candidates, results, strict=True)}

    async def _probe(self, candidate: Candidate) -> bool:
        timeout = min(self.health_check_interval_s or _PROBE_TIMEOUT_S, _PROBE_TIMEOUT_S)
        try:
            return bool(await asyncio.wait_for(candidate.provider.health(), timeout))
        except Exception:  # a probe: slow, unreachable or broken all mean "unhealthy"
            return False

    async def _health_loop(self, interval_s: float) -> None:
        while True:
            try:
                await self.check_health()
            except Exception:  # e.g. the breaker actor restarting: try again next round
                _log.warning("health check round failed", exc_info=True)
            await asyncio.sleep(interval_s)

    # -- ordering --------------------------------------------------------------

    def order(self, request: CompletionRequest) -> list[tuple[Candidate, str]]:
        """Candidates in the order to try them, each with the reason for its place."""
        indexed = list(enumerate(self.candidates))
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
        route: list[dict[str, Any]] = []
        failures: list[ProviderError] = []
        for candidate, reason in self._plan(request):
            step = await self._admit(candidate, reason, route)
            if "outcome" in step:
                continue  # skipped: its circuit is open
            started = time.perf_counter()
            try:
                completion = await candidate.provider.complete(request)
            except asyncio.CancelledError:
                await self._release(candidate)  # the caller gave up: the call tells nothing
                raise
            except Exception as exc:
                error = _as_provider_error(candidate, exc)
                step["outcome"] = f"failed: {error.message}"
                step["breaker"] = await self._record_failure(candidate, error)
                failures.append(error)
                continue
            self._observe(candidate, time.perf_counter() - started)
            step["outcome"] = "ok"
            step["breaker"] = await self.breakers.success(candidate.key, self.policy)
            if candidate.price is not None:
                completion.usage.cost_usd = candidate.price.cost(completion.usage)
            completion.route = route
            return completion
        raise self._all_failed(failures, route)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        self.start_health_checks()
        route: list[dict[str, Any]] = []
        failures: list[ProviderError] = []
        for candidate, reason in self._plan(request):
            step = await self._admit(candidate, reason, route)
            if "outcome" in step:
                continue  # skipped: its circuit is open
            started = time.perf_counter()
            yielded = False
            try:
                async for chunk in candidate.provider.stream(request):
                    if chunk.usage is not None or chunk.finish_reason is not None:
                        # The last chunk: account for it before the caller sees it.
                        self._observe(candidate, time.perf_counter() - started)
                        step["outcome"] = "ok"
                        step["breaker"] = await self.breakers.success(candidate.key, self.policy)
                        if chunk.usage is not None and candidate.price is not None:
                            chunk.usage.cost_usd = candidate.price.cost(chunk.usage)
                        chunk.route = route
                    yielded = True
                    yield chunk
                if step.get("outcome") != "ok":
                    await self.breakers.success(candidate.key, self.policy)
                return
            except (asyncio.CancelledError, GeneratorExit):
                # The consumer went away (timeout, closed stream): unless the outcome
                # was already recorded, free the breaker's probe slot.
                if "outcome" not in step:
                    await self._release(candidate)
                raise
            except Exception as exc:
                error = _as_provider_error(candidate, exc)
                step["outcome"] = f"failed: {error.message}"
                step["breaker"] = await self._record_failure(candidate, error)
                if yielded:
                    raise error from exc  # the client has seen part of this answer
                failures.append(error)
        raise self._all_failed(failures, route)

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

    def _plan(self, request: CompletionRequest) -> list[tuple[Candidate, str]]:
        ordered = self.order(request)
        return ordered if self.fallback else ordered[:1]

    async def _admit(
        self, candidate: Candidate, reason: str, route: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Ask the breaker about ``candidate`` and record the decision on ``route``;
        the step already has an ``outcome`` when the candidate is skipped."""
        allowed, state = await self.breakers.allow(candidate.key, self.policy)
        step: dict[str, Any] = {
            "candidate": candidate.key,
            "provider": candidate.provider.name,
            "reason": reason,
            "breaker": state,
        }
        if not allowed:
            step["outcome"] = "skipped: circuit open"
        route.append(step)
        return step

    async def _release(self, candidate: Candidate) -> None:
        try:
            await asyncio.shield(self.breakers.release(candidate.key, self.policy))
        except (Exception, asyncio.CancelledError):
            _log.warning("could not release the breaker of %s", candidate.key, exc_info=True)

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
        parts = [f.message for f in failures]
        if skipped:
            parts.append("circuit open for " + ", ".join(skipped))
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


def _as_provider_error(candidate: Candidate, exc: Exception) -> ProviderError:
    # Whatever a candidate raises is that candidate failing: fall back, count it.
    if isinstance(exc, ProviderError):
        return exc
    detail = exc.message if isinstance(exc, AstromeshError) else f"{type(exc).__name__}: {exc}"
    return ProviderError(
        f"{candidate.provider.name}: {detail}",
        provider=candidate.provider.name,
        status=None,
        retryable=True,
    )


def _estimate_input_tokens(request: CompletionRequest) -> int:
    # ~4 characters per token: good enough to rank prices, no tokenizer needed.
    chars = sum(len(m.content or "") for m in request.messages)
    chars += sum(len(str(t.parameters)) + len(t.description) for t in request.tools)
    return max(1, chars // 4)
