"""The breaker actor's body, without Ray: cluster-wide breakers with a version number,
a long poll that tells replicas when it changes, and one health-probe loop per
provider deployment.

Replicas keep a copy of the breakers (``CachedBreakerStore``) and only talk to the
board for what changes state.  To stay fresh, each replica keeps one ``poll`` pending:
the board answers it as soon as its version moves past the one the replica has seen
(or after ``timeout_s``, so a lost replica does not hold a call forever).  ``epoch``
names one incarnation of the board: a recreated actor starts again at version 0,
and a replica that sees a new epoch drops its whole copy.

Tests (and operators) can ask ``subscribers()`` which replica has seen which version,
and wait until all have caught up instead of sleeping.

Ray-free, so unit tests drive a ``CachedBreakerStore`` with a board in the same
process; ``serve/breaker.py`` makes it the named actor.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from astromesh_ray.core.breaker import BreakerPolicy, BreakerStatus, CircuitBreakers, State
from astromesh_ray.spec.resolve import ModelEndpoint

T = TypeVar("T")
_log = logging.getLogger("astromesh.breaker")

# A probe answers at most this fast, or counts as failed (and never longer than its
# interval: the next round is due by then).
PROBE_TIMEOUT_S = 10.0
# A live subscriber polls again as soon as an answer reaches it; one that has not
# for this long after its last answer is forgotten (its replica went away), so
# "every subscriber has caught up" does not wait for it.
FORGET_AFTER_S = 5.0


class BreakerUnavailable(Exception):
    """The breaker actor cannot be reached (killed, died, restarting, hung).

    Not an ``AstromeshError``: it never reaches a client; stores fail open on it."""


@dataclass(frozen=True)
class BreakerUpdate:
    """One breaker after a call that may have changed it, at board ``version``."""

    epoch: str
    version: int
    key: str
    policy: BreakerPolicy
    status: BreakerStatus


@dataclass(frozen=True)
class BoardState:
    """Every breaker at board ``version``: the answer to a poll."""

    epoch: str
    version: int
    breakers: tuple[tuple[str, BreakerPolicy, BreakerStatus], ...]


@dataclass(frozen=True)
class HealthProbe:
    """Probe provider application ``app`` every ``interval_s`` and feed the result to
    the breaker of ``key`` under ``policy`` (registered by each agent that uses it).
    ``endpoint``: a remote API the agents call from their own replicas (no
    application): the prober asks the API itself."""

    app: str
    key: str
    policy: BreakerPolicy
    interval_s: float
    endpoint: ModelEndpoint | None = field(default=None, compare=False)


# Probe application ``app`` within ``timeout_s``: healthy, unhealthy, or None when it
# cannot tell (the application is not deployed yet): not counted either way.
Probe = Callable[[str, float], Awaitable[bool | None]]


@dataclass
class _Subscriber:
    epoch: str | None = None
    version: int = -1
    waiting: bool = False
    last_poll: float = 0.0


class BreakerBoard:
    """Breakers shared by every replica; see the module docstring.

    ``probe`` checks one provider application (the actor passes a Serve-handle probe);
    without it, ``register`` only records the registrations.  ``clock`` is the
    breakers' clock, which ``advance_clock`` can move forward (operations, tests).
    """

    def __init__(
        self,
        *,
        probe: Probe | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self.version = 0
        self._clock = clock
        self._offset = 0.0
        self.breakers = CircuitBreakers(clock=lambda: self._clock() + self._offset)
        self._changed = asyncio.Event()
        self._subscribers: dict[str, _Subscriber] = {}
        self._calls: Counter[str] = Counter()
        self._probe = probe
        self._sleep = sleep
        self._probes: dict[str, dict[tuple[str, BreakerPolicy], float]] = {}
        self._probe_tasks: dict[str, asyncio.Task[None]] = {}
        self._probe_results: dict[str, dict[str, Any]] = {}

    # -- what the router's store calls (the hot path) ---------------------------------

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State, BreakerUpdate]:
        self._calls["allow"] += 1
        (allowed, state), update = self._change(key, policy, self.breakers.allow)
        return allowed, state, update

    async def success(self, key: str, policy: BreakerPolicy) -> tuple[State, BreakerUpdate]:
        self._calls["success"] += 1
        return self._change(key, policy, self.breakers.success)

    async def failure(
        self, key: str, policy: BreakerPolicy, error: str = ""
    ) -> tuple[State, BreakerUpdate]:
        self._calls["failure"] += 1
        return self._change(key, policy, functools.partial(self.breakers.failure, error=error))

    async def release(self, key: str, policy: BreakerPolicy) -> BreakerUpdate:
        self._calls["release"] += 1
        _, update = self._change(key, policy, self.breakers.release)
        return update

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        self._calls["snapshot"] += 1
        return self.breakers.snapshot()

    # -- keeping replicas' copies fresh ---------------------------------------------

    async def poll(
        self, subscriber: str, epoch: str | None, version: int, timeout_s: float = 30.0
    ) -> BoardState:
        """Every breaker, as soon as the board's state differs from ``(epoch,
        version)`` (what ``subscriber`` has seen), or after ``timeout_s``."""
        self._calls["poll"] += 1
        sub = self._subscribers.setdefault(subscriber, _Subscriber())
        sub.epoch, sub.version, sub.last_poll = epoch, version, time.monotonic()
        if epoch == self.epoch and version >= self.version:
            changed = self._changed
            sub.waiting = True
            try:
                async with asyncio.timeout(timeout_s):
                    await changed.wait()
            except TimeoutError:
                pass  # nothing changed: the subscriber polls again
            finally:
                sub.waiting = False
                sub.last_poll = time.monotonic()
        return self.state()

    def state(self) -> BoardState:
        """Every breaker now."""
        return BoardState(self.epoch, self.version, tuple(self.breakers.statuses()))

    async def subscribers(self) -> dict[str, Any]:
        """The board's ``epoch`` and ``version``, and per subscriber the epoch and
        version it has seen and whether its poll is pending.  All have caught up when
        each one's ``(epoch, version)`` equals the board's."""
        now = time.monotonic()  # replicas' liveness: real time, not the breakers' clock
        for name, sub in list(self._subscribers.items()):
            if not sub.waiting and now - sub.last_poll > FORGET_AFTER_S:
                del self._subscribers[name]
        return {
            "epoch": self.epoch,
            "version": self.version,
            "subscribers": {
                name: {"epoch": s.epoch, "version": s.version, "waiting": s.waiting}
                for name, s in self._subscribers.items()
            },
        }

    # -- operations and tests ----------------------------------------------------------

    async def advance_clock(self, seconds: float) -> None:
        """Move the breakers' clock forward: ends cooldowns early (operations, tests).
        Every cooldown changed, so subscribers hear of it."""
        self._offset += seconds
        self._bump()

    async def calls(self) -> dict[str, int]:
        """How many calls each method has answered (a benchmark's and a test's view of
        the Ray round trips replicas make)."""
        return dict(self._calls)

    # -- health probes -------------------------------------------------------------------

    async def register(self, probes: Sequence[HealthProbe]) -> None:
        """Probe each probe's application every ``interval_s`` (the shortest interval
        any registration asked for), feeding each registered (key, policy) breaker.
        Idempotent: agents register at deploy time, and their replicas again when they
        meet a new board (the actor was recreated)."""
        self._calls["register"] += 1
        for probe in probes:
            registered = self._probes.setdefault(probe.app, {})
            target = (probe.key, probe.policy)
            registered[target] = min(probe.interval_s, registered.get(target, probe.interval_s))
            task = self._probe_tasks.get(probe.app)
            if self._probe is not None and (task is None or task.done()):
                self._probe_tasks[probe.app] = asyncio.get_running_loop().create_task(
                    self._probe_loop(probe.app, self._probe), name=f"probe {probe.app}"
                )

    async def probes(self) -> dict[str, dict[str, Any]]:
        """Per provider application: its interval, the breakers it feeds, and the last
        probe's result and count."""
        return {
            app: {
                "interval_s": min(targets.values()),
                "breakers": [
                    {"key": k, "failure_threshold": p.failure_threshold, "cooldown_s": p.cooldown_s}
                    for k, p in targets
                ],
                **self._probe_results.get(app, {"probes": 0, "healthy": None}),
            }
            for app, targets in self._probes.items()
        }

    async def _probe_loop(self, app: str, probe: Probe) -> None:
        while True:
            targets = self._probes[app]
            interval = min(targets.values())
            await self._sleep(interval)
            try:
                timeout = min(interval, PROBE_TIMEOUT_S)
                # The probe bounds its own wait; this bounds a probe that does not.
                healthy = await asyncio.wait_for(probe(app, timeout), timeout + 1.0)
            except Exception:
                # Broad on purpose: this is a probe.  Slow, unreachable or broken all mean
                # "unhealthy", and the loop must outlive any one failure.
                _log.debug("health probe of %s failed", app, exc_info=True)
                healthy = False
            seen = self._probe_results.setdefault(app, {"probes": 0, "healthy": None})
            seen["probes"] += 1
            seen["healthy"] = healthy
            if healthy is None:
                continue  # not deployed (yet): says nothing about the provider
            for key, policy in list(targets):
                self._change(key, policy, functools.partial(self.breakers.health, healthy=healthy))

    # -- internals -----------------------------------------------------------------------

    def _change(
        self, key: str, policy: BreakerPolicy, action: Callable[[str, BreakerPolicy], T]
    ) -> tuple[T, BreakerUpdate]:
        """Run ``action`` on one breaker; move the version when what replicas can see of
        it changed (a granted probe slot or a release does not)."""
        before = self._visible(key, policy)
        result = action(key, policy)
        if self._visible(key, policy) != before:
            self._bump()
        status = self.breakers.status(key, policy)
        return result, BreakerUpdate(self.epoch, self.version, key, policy, status)

    def _visible(self, key: str, policy: BreakerPolicy) -> tuple[str, int, int]:
        status = self.breakers.status(key, policy)
        return status.state, status.consecutive_failures, status.trips

    def _bump(self) -> None:
        self.version += 1
        # Wake every pending poll; later polls wait on a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()
