"""Circuit-breaker state shared by the whole cluster: one named Ray actor.

Every agent replica asks the same ``BreakerActor`` before calling a provider
deployment, so when one replica sees a provider fail, all of them stop calling it
at once (DESIGN.md §3: cluster-wide state lives in one named actor per concern).
"""

from __future__ import annotations

import time
from typing import Any

import ray

from astromesh_ray.core.breaker import BreakerPolicy, CircuitBreakers, State

ACTOR_NAME = "astromesh-breakers"
ACTOR_NAMESPACE = "astromesh"


class _OffsetClock:
    """``time.monotonic`` plus an offset an operator (or a test) can advance."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@ray.remote(num_cpus=0, max_restarts=-1)
class BreakerActor:
    """Owns every provider's breaker.  An async actor: calls never block each other."""

    def __init__(self) -> None:
        self._clock = _OffsetClock()
        self._breakers = CircuitBreakers(clock=self._clock)

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State]:
        return self._breakers.allow(key, policy)

    async def success(self, key: str, policy: BreakerPolicy) -> State:
        return self._breakers.success(key, policy)

    async def failure(self, key: str, policy: BreakerPolicy, error: str = "") -> State:
        return self._breakers.failure(key, policy, error)

    async def release(self, key: str, policy: BreakerPolicy) -> None:
        self._breakers.release(key, policy)

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        return self._breakers.snapshot()

    async def advance_clock(self, seconds: float) -> None:
        """Move the breakers' clock forward: ends cooldowns early (operations, tests)."""
        self._clock.offset += seconds


def breaker_actor() -> Any:
    """The cluster's breaker actor, created by whichever replica asks first."""
    return BreakerActor.options(  # type: ignore[attr-defined]
        name=ACTOR_NAME, namespace=ACTOR_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()


class ServeBreakerStore:
    """``BreakerStore`` over the cluster-wide actor."""

    def __init__(self) -> None:
        self._actor: Any = None

    def _get(self) -> Any:
        if self._actor is None:
            self._actor = breaker_actor()
        return self._actor

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State]:
        result: tuple[bool, State] = await self._get().allow.remote(key, policy)
        return result

    async def success(self, key: str, policy: BreakerPolicy) -> State:
        state: State = await self._get().success.remote(key, policy)
        return state

    async def failure(self, key: str, policy: BreakerPolicy, error: str = "") -> State:
        state: State = await self._get().failure.remote(key, policy, error)
        return state

    async def release(self, key: str, policy: BreakerPolicy) -> None:
        await self._get().release.remote(key, policy)

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        snap: dict[str, dict[str, Any]] = await self._get().snapshot.remote()
        return snap
