"""The circuit breaker: stop calling a provider that keeps failing, then probe it.

    closed --(failure_threshold consecutive failures)--> open
    open --(cooldown_s elapsed)--> half-open: exactly one probe request is let through
    half-open --probe succeeds--> closed        half-open --probe fails--> open again

``CircuitBreakers`` is the pure state machine, keyed by provider deployment, with an
injectable clock (tests advance it instead of sleeping).  ``BreakerStore`` is the
async interface the router talks to: ``LocalBreakerStore`` keeps the state in this
process; the serve layer implements it over one named Ray actor so every agent
replica sees the same state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and for how long."""

    failure_threshold: int = 3
    cooldown_s: float = 60.0


@dataclass
class _Breaker:
    policy: BreakerPolicy
    state: State = "closed"
    failures: int = 0
    opened_at: float | None = None
    probe_in_flight: bool = False
    probe_started_at: float | None = None
    trips: int = 0
    last_error: str | None = None


@dataclass
class CircuitBreakers:
    """Breaker state per key.  Not thread-safe: one owner (a process or an actor)."""

    clock: Callable[[], float] = time.monotonic
    _breakers: dict[str, _Breaker] = field(default_factory=dict)

    def _get(self, key: str, policy: BreakerPolicy) -> _Breaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = _Breaker(policy)
        else:
            breaker.policy = policy  # the latest configuration wins
        return breaker

    def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State]:
        """May a request go to ``key`` now?  Returns the decision and the state."""
        breaker = self._get(key, policy)
        if breaker.state == "open":
            assert breaker.opened_at is not None
            if self.clock() - breaker.opened_at < policy.cooldown_s:
                return False, "open"
            breaker.state = "half_open"
            breaker.probe_in_flight = False
        if breaker.state == "half_open":
            # One probe at a time.  A probe whose caller vanished (cancelled, timed
            # out) never reports back: after another cooldown its slot is given again.
            started = breaker.probe_started_at
            probing = breaker.probe_in_flight and started is not None
            if probing and self.clock() - (started or 0.0) < policy.cooldown_s:
                return False, "half_open"
            breaker.probe_in_flight = True
            breaker.probe_started_at = self.clock()
            return True, "half_open"
        return True, "closed"

    def success(self, key: str, policy: BreakerPolicy) -> State:
        breaker = self._get(key, policy)
        breaker.state, breaker.failures, breaker.opened_at = "closed", 0, None
        breaker.probe_in_flight = False
        return breaker.state

    def failure(self, key: str, policy: BreakerPolicy, error: str = "") -> State:
        breaker = self._get(key, policy)
        breaker.failures += 1
        breaker.last_error = error or breaker.last_error
        if breaker.state == "half_open" or breaker.failures >= policy.failure_threshold:
            if breaker.state != "open":
                breaker.trips += 1
            breaker.state, breaker.opened_at = "open", self.clock()
            breaker.probe_in_flight = False
        return breaker.state

    def release(self, key: str, policy: BreakerPolicy) -> None:
        """A let-through request ended without telling anything about the provider
        (e.g. the caller's own fault): free the half-open probe slot."""
        self._get(key, policy).probe_in_flight = False

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        out: dict[str, dict[str, Any]] = {}
        for key, b in self._breakers.items():
            remaining = (
                max(0.0, b.policy.cooldown_s - (now - b.opened_at))
                if b.state == "open" and b.opened_at is not None
                else 0.0
            )
            out[key] = {
                "state": b.state,
                "consecutive_failures": b.failures,
                "trips": b.trips,
                "cooldown_remaining_s": round(remaining, 3),
                "failure_threshold": b.policy.failure_threshold,
                "cooldown_s": b.policy.cooldown_s,
                "last_error": b.last_error,
            }
        return out


class BreakerStore(Protocol):
    """Where breaker state lives (this process, or a cluster-wide actor)."""

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State]: ...

    async def success(self, key: str, policy: BreakerPolicy) -> State: ...

    async def failure(self, key: str, policy: BreakerPolicy, error: str = "") -> State: ...

    async def release(self, key: str, policy: BreakerPolicy) -> None: ...

    async def snapshot(self) -> dict[str, dict[str, Any]]: ...


class LocalBreakerStore:
    """Breakers in this process (``astromesh run``, unit tests)."""

    def __init__(self, breakers: CircuitBreakers | None = None) -> None:
        self.breakers = breakers or CircuitBreakers()

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State]:
        return self.breakers.allow(key, policy)

    async def success(self, key: str, policy: BreakerPolicy) -> State:
        return self.breakers.success(key, policy)

    async def failure(self, key: str, policy: BreakerPolicy, error: str = "") -> State:
        return self.breakers.failure(key, policy, error)

    async def release(self, key: str, policy: BreakerPolicy) -> None:
        self.breakers.release(key, policy)

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.breakers.snapshot()


class ManualClock:
    """A clock that only moves when told to (tests, and the breaker actor's ``advance``)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
