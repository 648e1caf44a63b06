"""``BreakerBoard``, the breaker actor's body: versions, the long poll, and health
probes registered per provider application."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from astromesh_ray.core.breaker import BreakerPolicy, ManualClock
from astromesh_ray.serve.breaker_board import BreakerBoard, HealthProbe

POLICY = BreakerPolicy(failure_threshold=2, cooldown_s=60)
OTHER = BreakerPolicy(failure_threshold=5, cooldown_s=10)


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(2000):
        if await condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting until {what}")


async def test_a_poll_answers_at_once_when_behind_and_waits_when_current() -> None:
    board = BreakerBoard(clock=ManualClock())
    first = await board.poll("r1", None, -1)
    assert (first.epoch, first.version, first.breakers) == (board.epoch, 0, ())
    pending = asyncio.create_task(board.poll("r1", board.epoch, 0))
    await until(lambda: _waiting(board, "r1"), "r1's poll is pending at the board")
    assert not pending.done()
    state, update = await board.failure("p", POLICY, "boom")
    assert state == "closed" and update.version == 1
    answer = await pending
    assert answer.version == 1
    [(key, policy, status)] = answer.breakers
    assert (key, policy, status.consecutive_failures, status.last_error) == ("p", POLICY, 1, "boom")
    seen = await board.subscribers()
    assert seen["subscribers"]["r1"] == {"epoch": board.epoch, "version": 0, "waiting": False}


async def _waiting(board: BreakerBoard, name: str) -> bool:
    subs = (await board.subscribers())["subscribers"]
    return bool(subs.get(name, {}).get("waiting"))


async def test_the_version_moves_only_when_something_visible_changes() -> None:
    board = BreakerBoard(clock=ManualClock())
    await board.allow("p", POLICY)
    await board.success("p", POLICY)
    await board.release("p", POLICY)
    assert board.version == 0  # a closed breaker staying closed: nobody needs telling
    await board.failure("p", POLICY)
    await board.failure("p", POLICY)
    assert board.version == 2
    await board.advance_clock(61)  # every cooldown changed
    assert board.version == 3
    allowed, state, update = await board.allow("p", POLICY)
    assert (allowed, state, update.status.state) == (True, "half_open", "half_open")
    assert board.version == 4
    assert await board.calls() == {"allow": 2, "success": 1, "release": 1, "failure": 2}


async def test_probes_feed_every_registered_breaker_of_their_application() -> None:
    results: list[bool | None] = [None, False, False, True]
    asked: list[tuple[str, float]] = []

    async def probe(app: str, timeout_s: float) -> bool | None:
        asked.append((app, timeout_s))
        return results.pop(0) if results else True

    async def no_wait(seconds: float) -> None:
        await asyncio.sleep(0)

    board = BreakerBoard(clock=ManualClock(), probe=probe, sleep=no_wait)
    await board.register(
        [
            HealthProbe("provider-a", "a", POLICY, 30.0),
            HealthProbe("provider-a", "a", OTHER, 5.0),  # another agent, another policy
        ]
    )
    await board.register([HealthProbe("provider-a", "a", POLICY, 30.0)])  # idempotent

    async def probed(count: int) -> bool:
        return bool((await board.probes())["provider-a"]["probes"] >= count)

    await until(lambda: probed(4), "four probes ran")
    snap = {e["failure_threshold"]: e for e in (await board.snapshot())["a"]}
    # None (not deployed yet) was not counted; two failures opened the 2-failure
    # breaker; the healthy probe then did not close it.  The 5-failure breaker saw the
    # same two failures, and the healthy probe reset its count.
    assert snap[2]["state"] == "open" and snap[2]["last_error"] == "health check failed"
    assert snap[5]["state"] == "closed" and snap[5]["consecutive_failures"] == 0
    assert asked[0] == ("provider-a", 5.0)  # the shortest interval asked for
    info = (await board.probes())["provider-a"]
    assert info["interval_s"] == 5.0 and len(info["breakers"]) == 2
    for task in board._probe_tasks.values():
        task.cancel()


async def test_a_crashing_probe_counts_as_unhealthy_and_the_loop_goes_on() -> None:
    async def probe(app: str, timeout_s: float) -> bool | None:
        raise RuntimeError("probe bug")

    async def no_wait(seconds: float) -> None:
        await asyncio.sleep(0)

    board = BreakerBoard(clock=ManualClock(), probe=probe, sleep=no_wait)
    await board.register([HealthProbe("provider-a", "a", POLICY, 1.0)])

    async def opened() -> bool:
        entries = (await board.snapshot()).get("a", [])
        return bool(entries) and entries[0]["state"] == "open"

    await until(opened, "the failing probes opened the breaker")
    for task in board._probe_tasks.values():
        task.cancel()
