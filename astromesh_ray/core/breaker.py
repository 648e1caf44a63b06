"""The circuit breaker: stop calling a provider that keeps failing, then probe it.

    closed --(failure_threshold consecutive failures)--> open
    open --(cooldown_s elapsed)--> half-open: exactly one probe request is let through
    half-open --probe succeeds--> closed        half-open --probe fails--> open again

``CircuitBreakers`` is the pure state machine with an injectable clock (tests advance
it instead of sleeping).  A breaker is keyed by provider deployment *and* policy: two
agents that call the same provider with different thresholds or cooldowns each get
their own breaker, so neither overwrites the other's configuration.

``BreakerStore`` is the async interface the router talks to: ``LocalBreakerStore``
keeps the state in this process; the serve layer implements it over one named Ray
actor (cached in each replica) so every agent replica sees the same state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

State = Literal["closed", "open", "half_open"]

# How bad each state is, for summaries that show one breaker per provider.
SEVERITY: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and for how long.  Hashable: part of a breaker's key."""

    failure_threshold: int = 3
    cooldown_s: float = 60.0


@dataclass(frozen=True)
class BreakerStatus:
    """What can be seen of one breaker from outside (snapshots, replica caches)."""

    state: State = "closed"
    consecutive_failures: int = 0
    trips: int = 0
    cooldown_remaining_s: float = 0.0
    last_error: str | None = None


CLOSED = BreakerStatus()


@dataclass
class _Breaker:
    state: State = "closed"
    failures: int = 0
    opened_at: float | None = None
    probe_in_flight: bool = False
    probe_started_at: float | None = None
    trips: int = 0
    last_error: str | None = None


@dataclass
class CircuitBreakers:
    """Breaker state per (key, policy).  Not thread-safe: one owner (a process or an
    actor)."""

    clock: Callable[[], float] = time.monotonic
    _breakers: dict[tuple[str, BreakerPolicy], _Breaker] = field(default_factory=dict)

    def _get(self, key: str, policy: BreakerPolicy) -> _Breaker:
        breaker = self._breakers.get((key, policy))
        if breaker is None:
            breaker = self._breakers[key, policy] = _Breaker()
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

    def health(self, key: str, policy: BreakerPolicy, healthy: bool) -> State:
        """Feed one health probe's result: a failed probe counts as a failure; a
        healthy one resets the count of a closed breaker, so only *consecutive*
        failures open it.  An open breaker is not closed by a probe: a real request
        decides that after the cooldown."""
        if not healthy:
            return self.failure(key, policy, "health check failed")
        breaker = self._get(key, policy)
        if breaker.state == "closed" and breaker.failures:
            return self.success(key, policy)
        return breaker.state

    def status(self, key: str, policy: BreakerPolicy) -> BreakerStatus:
        """What ``key``'s breaker under ``policy`` looks like now."""
        b = self._breakers.get((key, policy))
        if b is None:
            return CLOSED
        remaining = (
            max(0.0, policy.cooldown_s - (self.clock() - b.opened_at))
            if b.state == "open" and b.opened_at is not None
            else 0.0
        )
        return BreakerStatus(b.state, b.failures, b.trips, round(remaining, 3), b.last_error)

    def statuses(self) -> list[tuple[str, BreakerPolicy, BreakerStatus]]:
        """Every breaker: its key, policy and status."""
        return [(k, p, self.status(k, p)) for k, p in self._breakers]

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return snapshot_of(self.statuses())


def describe(policy: BreakerPolicy, status: BreakerStatus) -> dict[str, Any]:
    """One breaker as ``GET /v1/providers`` and snapshots show it."""
    return {
        "state": status.state,
        "consecutive_failures": status.consecutive_failures,
        "trips": status.trips,
        "cooldown_remaining_s": status.cooldown_remaining_s,
        "failure_threshold": policy.failure_threshold,
        "cooldown_s": policy.cooldown_s,
        "last_error": status.last_error,
    }


def snapshot_of(
    breakers: Iterable[tuple[str, BreakerPolicy, BreakerStatus]],
) -> dict[str, list[dict[str, Any]]]:
    """Breakers grouped by provider key, each as ``describe`` shows it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for key, policy, status in breakers:
        out.setdefault(key, []).append(describe(policy, status))
    return out


def find(entries: Iterable[dict[str, Any]], policy: BreakerPolicy) -> dict[str, Any] | None:
    """The entry of a snapshot's list that belongs to ``policy``, if any."""
    for entry in entries:
        if (
            entry.get("failure_threshold") == policy.failure_threshold
            and entry.get("cooldown_s") == policy.cooldown_s
        ):
            return entry
    return None


def most_severe(entries: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The worst of a provider's breakers (open > half-open > closed; then the one
    with most consecutive failures): what a one-breaker summary shows."""
    return max(
        entries,
        key=lambda e: (SEVERITY.get(str(e.get("state")), 0), e.get("consecutive_failures", 0)),
        default=None,
    )


class BreakerStore(Protocol):
    """Where breaker state lives (this process, or a cluster-wide actor).

    ``snapshot`` maps each provider key to its breakers, one per policy in use.
    """

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State]: ...

    async def success(self, key: str, policy: BreakerPolicy) -> State: ...

    async def failure(self, key: str, policy: BreakerPolicy, error: str = "") -> State: ...

    async def release(self, key: str, policy: BreakerPolicy) -> None: ...

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]: ...


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

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return self.breakers.snapshot()


class ManualClock:
    """A clock that only moves when told to (tests, and the breaker actor's ``advance``)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
