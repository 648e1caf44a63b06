"""``CachedBreakerStore`` driven by the breaker actor's own body (``BreakerBoard``) in
this process: which calls reach the "actor", how replicas' copies follow it, and
failing open when it is gone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from astromesh_ray.core.breaker import BreakerPolicy, ManualClock
from astromesh_ray.serve.breaker_board import (
    BoardState,
    BreakerBoard,
    BreakerUnavailable,
    HealthProbe,
)
from astromesh_ray.serve.breaker_cache import BoardCaller, CachedBreakerStore

POLICY = BreakerPolicy(failure_threshold=2, cooldown_s=60)
HOT = ("allow", "success", "failure", "release")


class FakeActor(BoardCaller):
    """The breaker actor in this process: a ``BreakerBoard`` that can be killed (every
    call raises ``BreakerUnavailable``) and recreated (a new board, a new epoch)."""

    def __init__(self) -> None:
        self.clock = ManualClock(1000.0)
        self.board = BreakerBoard(clock=self.clock)
        self.alive = True
        self.boards = [self.board]

    def kill(self) -> None:
        self.alive = False
        # Pending polls at the dead actor fail, as Ray fails them.
        self.board._bump()

    def recreate(self) -> None:
        self.board = BreakerBoard(clock=self.clock)
        self.boards.append(self.board)
        self.alive = True

    async def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        if not self.alive:
            raise BreakerUnavailable("ActorDiedError: killed")
        board = self.board
        result = await getattr(board, method)(*args)
        if not self.alive or board is not self.board:
            raise BreakerUnavailable("ActorDiedError: killed")  # died while the call waited
        return result

    async def hot_calls(self) -> int:
        calls = await self.board.calls()
        return sum(calls.get(m, 0) for m in HOT)


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (bounded) until ``condition`` holds: conditions, not sleeps, decide."""
    for _ in range(2000):
        if await condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting until {what}")


async def caught_up(board: BreakerBoard, count: int) -> bool:
    seen = await board.subscribers()
    subs = seen["subscribers"]
    return len(subs) >= count and all(
        s["epoch"] == seen["epoch"] and s["version"] == seen["version"] and s["waiting"]
        for s in subs.values()
    )


@pytest.fixture
async def actor() -> AsyncIterator[FakeActor]:
    yield FakeActor()


@pytest.fixture
async def stores(actor: FakeActor) -> AsyncIterator[list[CachedBreakerStore]]:
    """Two replicas' stores over the same actor."""
    made = [
        CachedBreakerStore(
            actor, subscriber=f"replica-{i}", clock=actor.clock, retry_s=(0.001, 0.01)
        )
        for i in range(2)
    ]
    yield made
    for store in made:
        await store.aclose()


async def test_closed_breakers_cost_no_call_to_the_actor(
    actor: FakeActor, stores: list[CachedBreakerStore]
) -> None:
    a, b = stores
    for store in (a, b, a, b):
        assert await store.allow("p", POLICY) == (True, "closed")
        assert await store.success("p", POLICY) == "closed"
        await store.release("p", POLICY)
    assert await actor.hot_calls() == 0
    assert (await actor.board.calls())["poll"] >= 2  # each replica subscribed


async def test_failures_open_the_circuit_for_every_replica(
    actor: FakeActor, stores: list[CachedBreakerStore]
) -> None:
    a, b = stores
    assert await a.allow("p", POLICY) == (True, "closed")
    assert await b.allow("p", POLICY) == (True, "closed")
    assert await a.failure("p", POLICY, "boom") == "closed"
    await until(lambda: caught_up(actor.board, 2), "both replicas saw the failure")
    # A success after a failure goes to the actor (it resets the count) ...
    assert await b.success("p", POLICY) == "closed"
    assert await actor.hot_calls() == 2
    await a.failure("p", POLICY, "boom")
    assert await b.failure("p", POLICY, "boom") == "open"
    await until(lambda: caught_up(actor.board, 2), "both replicas saw the open circuit")
    calls = await actor.hot_calls()
    # ... and an open circuit is refused by each replica's own copy.
    assert await a.allow("p", POLICY) == (False, "open")
    assert await b.allow("p", POLICY) == (False, "open")
    assert await actor.hot_calls() == calls


async def test_after_the_cooldown_exactly_one_replica_probes(
    actor: FakeActor, stores: list[CachedBreakerStore]
) -> None:
    a, b = stores
    await a.allow("p", POLICY)
    await b.allow("p", POLICY)
    await a.failure("p", POLICY)
    await a.failure("p", POLICY)
    await until(lambda: caught_up(actor.board, 2), "both replicas saw the open circuit")
    actor.clock.advance(61)  # the replicas' copies run on the same (manual) clock here
    # Cooled down: both ask the actor, which gives the one probe slot to one of them.
    assert await a.allow("p", POLICY) == (True, "half_open")
    assert await b.allow("p", POLICY) == (False, "half_open")
    # The probe succeeded: closed everywhere, and no calls any more.
    assert await a.success("p", POLICY) == "closed"
    await until(lambda: caught_up(actor.board, 2), "both replicas saw the closed circuit")
    calls = await actor.hot_calls()
    assert await b.allow("p", POLICY) == (True, "closed")
    assert await b.success("p", POLICY) == "closed"
    assert await actor.hot_calls() == calls


async def test_advancing_the_actors_clock_reaches_the_copies(
    actor: FakeActor, stores: list[CachedBreakerStore]
) -> None:
    a, b = stores
    await b.allow("p", POLICY)
    await a.failure("p", POLICY)
    await a.failure("p", POLICY)
    await until(lambda: caught_up(actor.board, 2), "both replicas saw the open circuit")
    await actor.board.advance_clock(61)  # the actor's clock only: copies hear of it
    await until(lambda: caught_up(actor.board, 2), "both replicas saw the new cooldown")
    assert await b.allow("p", POLICY) == (True, "half_open")


async def test_release_reaches_the_actor_only_when_a_probe_slot_can_be_held(
    actor: FakeActor, stores: list[CachedBreakerStore]
) -> None:
    a, b = stores
    await a.release("p", POLICY)
    assert await actor.hot_calls() == 0
    await a.failure("p", POLICY)
    await a.failure("p", POLICY)
    actor.clock.advance(61)
    assert await a.allow("p", POLICY) == (True, "half_open")
    await a.release("p", POLICY)  # e.g. the caller's own fault: the slot is free again
    assert await b.allow("p", POLICY) == (True, "half_open")


async def test_a_new_replica_waits_for_its_first_copy(actor: FakeActor) -> None:
    await actor.board.failure("p", POLICY)
    await actor.board.failure("p", POLICY)
    late = CachedBreakerStore(actor, clock=actor.clock)
    try:
        # Its very first call already knows the circuit is open: no provider call,
        # and no `allow` round trip either.
        assert await late.allow("p", POLICY) == (False, "open")
        assert (await actor.board.calls()).get("allow", 0) == 0
    finally:
        await late.aclose()


async def test_policies_do_not_share_a_breaker(
    actor: FakeActor, stores: list[CachedBreakerStore]
) -> None:
    a, b = stores
    strict = BreakerPolicy(failure_threshold=1, cooldown_s=60)
    assert await a.failure("p", strict) == "open"
    await until(lambda: caught_up(actor.board, 1), "replica a saw its own failure")
    assert await a.allow("p", strict) == (False, "open")
    assert await b.allow("p", POLICY) == (True, "closed")
    entries = (await b.snapshot())["p"]
    assert sorted((e["failure_threshold"], e["state"]) for e in entries) == [(1, "open")]


async def test_a_dead_actor_fails_open_warns_once_and_a_new_one_is_used(
    actor: FakeActor, stores: list[CachedBreakerStore], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = stores
    probes = [HealthProbe("provider-app", "p", POLICY, 30.0)]
    c = CachedBreakerStore(actor, probes=probes, clock=actor.clock, retry_s=(0.001, 0.01))
    try:
        await a.failure("p", POLICY)
        await a.failure("p", POLICY)
        assert await c.allow("p", POLICY) == (False, "open")
        await until(lambda: _registered(actor.board, "provider-app"), "c registered its probes")
        old_epoch = actor.board.epoch
        actor.kill()
        caplog.set_level(logging.WARNING, logger="astromesh.breaker")
        # Calls proceed: nothing raises, failures are "reported" into the void.
        for _ in range(3):
            assert await b.allow("q", POLICY) == (True, "closed")
            assert await b.failure("q", POLICY, "boom") == "closed"
            assert await b.success("q", POLICY) == "closed"
        warnings = [r for r in caplog.records if "fail open" in r.getMessage()]
        assert len(warnings) <= len(stores) + 1  # once per store and outage, not per call
        assert await b.snapshot() == {}
        actor.recreate()  # what ActorLink's next call does (get_if_exists)
        await until(lambda: caught_up(actor.board, 3), "every replica found the new actor")
        assert actor.board.epoch != old_epoch
        # The new actor knows nothing of the old open circuit: the copies dropped it.
        assert await c.allow("p", POLICY) == (True, "closed")
        # And the probes were registered with the new actor again.
        assert await _registered(actor.board, "provider-app")
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await c.aclose()


async def _registered(board: BreakerBoard, app: str) -> bool:
    return app in await board.probes()


async def test_a_hung_actor_does_not_hold_the_first_call_for_long() -> None:
    class Hung(FakeActor):
        async def poll(
            self, subscriber: str, epoch: str | None, version: int, timeout_s: float = 30.0
        ) -> BoardState:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    store = CachedBreakerStore(Hung(), sync_timeout_s=0.01)
    try:
        assert await store.allow("p", POLICY) == (True, "closed")
    finally:
        await store.aclose()
