"""``CachedBreakerStore``: the cluster-wide breakers, read from a copy in this replica.

While a breaker is closed, a model call costs no extra Ray round trip: ``allow`` and
``success`` are answered from the copy.  Only outcomes that change state go to the
breaker actor:

- every ``failure``;
- a ``success`` when the copy shows consecutive failures or a breaker not closed;
- ``allow`` when the copy shows an open breaker whose cooldown is over, or a
  half-open one: the actor hands out the one probe slot for the whole cluster;
- ``release`` when the copy shows a breaker not closed (only then can a probe
  slot be held).

The copy is kept fresh by a long poll (``BreakerBoard.poll``): one call per replica is
always pending at the actor, which answers it when the board's version moves.  The
subscription starts on first use, from the replica's own event loop; the first call
waits (briefly) for the first copy, so a fresh replica does not call a provider
whose circuit is open.  Answers to the calls above update the copy at once.

Fail open: when the actor cannot be reached, calls proceed as if the breaker were
closed (or as the copy last showed it), one warning is logged per outage, and the
subscription keeps retrying: its next call recreates the actor (``ActorLink``).  A
breaker actor that fails never turns a model call into an error.

Ray-free: ``serve/breaker.py`` gives it the Ray link; unit tests give it a
``BreakerBoard`` in the same process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from astromesh_ray.core.breaker import BreakerPolicy, BreakerStatus, State, snapshot_of
from astromesh_ray.serve.breaker_board import (
    BoardState,
    BreakerUnavailable,
    BreakerUpdate,
    HealthProbe,
)

_log = logging.getLogger("astromesh.breaker")


class BreakerRemote(Protocol):
    """The breaker actor as the cache sees it (``ActorLink``; a ``BreakerBoard`` in
    tests).  Raises ``BreakerUnavailable`` when it cannot be reached."""

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State, BreakerUpdate]: ...

    async def success(self, key: str, policy: BreakerPolicy) -> tuple[State, BreakerUpdate]: ...

    async def failure(
        self, key: str, policy: BreakerPolicy, error: str = ""
    ) -> tuple[State, BreakerUpdate]: ...

    async def release(self, key: str, policy: BreakerPolicy) -> BreakerUpdate: ...

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]: ...

    async def poll(
        self, subscriber: str, epoch: str | None, version: int, timeout_s: float = 30.0
    ) -> BoardState: ...

    async def register(self, probes: Sequence[HealthProbe]) -> None: ...


class BoardCaller:
    """A ``BreakerRemote`` made of one ``_call(method, *args)``: the typed methods
    once, for every way of reaching a board (the Ray actor, a board in tests)."""

    async def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        raise NotImplementedError

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State, BreakerUpdate]:
        result: tuple[bool, State, BreakerUpdate] = await self._call("allow", key, policy)
        return result

    async def success(self, key: str, policy: BreakerPolicy) -> tuple[State, BreakerUpdate]:
        result: tuple[State, BreakerUpdate] = await self._call("success", key, policy)
        return result

    async def failure(
        self, key: str, policy: BreakerPolicy, error: str = ""
    ) -> tuple[State, BreakerUpdate]:
        result: tuple[State, BreakerUpdate] = await self._call("failure", key, policy, error)
        return result

    async def release(self, key: str, policy: BreakerPolicy) -> BreakerUpdate:
        update: BreakerUpdate = await self._call("release", key, policy)
        return update

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        snap: dict[str, list[dict[str, Any]]] = await self._call("snapshot")
        return snap

    async def poll(
        self, subscriber: str, epoch: str | None, version: int, timeout_s: float = 30.0
    ) -> BoardState:
        # A long poll: the call itself may take its whole timeout, and then some.
        state: BoardState = await self._call(
            "poll", subscriber, epoch, version, timeout_s, timeout_s=timeout_s + 10.0
        )
        return state

    async def register(self, probes: Sequence[HealthProbe]) -> None:
        await self._call("register", list(probes))


class Outage:
    """Logs the breaker actor being unreachable once per outage, not once per call."""

    def __init__(self) -> None:
        self.down = False

    def failed(self, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            _log.warning(
                "circuit-breaker state is unavailable (%s): model calls proceed without it "
                "(fail open) until it is back",
                exc,
            )

    def recovered(self) -> None:
        if self.down:
            self.down = False
            _log.warning("circuit-breaker state is reachable again")


@dataclass
class _Entry:
    status: BreakerStatus
    version: int  # the board version this copy is from
    open_until: float  # local clock: when an open breaker's cooldown ends


class CachedBreakerStore:
    """A ``BreakerStore`` over ``remote`` that keeps a copy of its state in this
    process; see the module docstring.

    ``probes`` are registered with every new board this store meets (the actor may
    have been recreated since deploy time).  ``subscriber`` names this store at the
    board (``subscribers()``); unique by default.
    """

    def __init__(
        self,
        remote: BreakerRemote,
        *,
        probes: Sequence[HealthProbe] = (),
        subscriber: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_timeout_s: float = 30.0,
        sync_timeout_s: float = 5.0,
        retry_s: tuple[float, float] = (0.25, 5.0),
    ) -> None:
        self.remote = remote
        self.subscriber = subscriber or f"pid{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._probes = tuple(probes)
        self._clock = clock
        self._poll_timeout_s = poll_timeout_s
        self._sync_timeout_s = sync_timeout_s
        self._retry_s = retry_s
        self._entries: dict[tuple[str, BreakerPolicy], _Entry] = {}
        self._epoch: str | None = None
        self._version = -1
        self._registered: str | None = None  # the epoch our probes were registered with
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()  # the first poll answered (or failed)
        self._outage = Outage()
        self._closed = False

    # -- BreakerStore -----------------------------------------------------------------

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State]:
        entry = await self._entry(key, policy)
        if entry is None or entry.status.state == "closed":
            return True, "closed"
        if entry.status.state == "open" and self._clock() < entry.open_until:
            return False, "open"
        # Cooled down, or half-open: the actor hands out the cluster's one probe slot.
        try:
            allowed, state, update = await self.remote.allow(key, policy)
        except BreakerUnavailable as exc:
            self._outage.failed(exc)
            return True, entry.status.state
        self._note(update)
        return allowed, state

    async def success(self, key: str, policy: BreakerPolicy) -> State:
        entry = await self._entry(key, policy)
        if entry is None or (
            entry.status.state == "closed" and not entry.status.consecutive_failures
        ):
            return "closed"  # nothing to change
        try:
            state, update = await self.remote.success(key, policy)
        except BreakerUnavailable as exc:
            self._outage.failed(exc)
            return "closed"
        self._note(update)
        return state

    async def failure(self, key: str, policy: BreakerPolicy, error: str = "") -> State:
        entry = await self._entry(key, policy)
        try:
            state, update = await self.remote.failure(key, policy, error)
        except BreakerUnavailable as exc:
            self._outage.failed(exc)
            return entry.status.state if entry is not None else "closed"
        self._note(update)
        return state

    async def release(self, key: str, policy: BreakerPolicy) -> None:
        entry = await self._entry(key, policy)
        if entry is None or entry.status.state == "closed":
            return  # no probe slot can be held
        try:
            update = await self.remote.release(key, policy)
        except BreakerUnavailable as exc:
            self._outage.failed(exc)
            return
        self._note(update)

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        try:
            return await self.remote.snapshot()
        except BreakerUnavailable as exc:
            self._outage.failed(exc)
            return snapshot_of((k, p, e.status) for (k, p), e in self._entries.items())

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe now and wait (bounded) for the first copy, instead of on the first
        call (e.g. from a replica's async constructor).  Optional; idempotent."""
        await self._ready()

    async def aclose(self) -> None:
        """Stop the subscription (tests; a replica's ends with its process)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    # -- the copy -------------------------------------------------------------------------

    async def _entry(self, key: str, policy: BreakerPolicy) -> _Entry | None:
        await self._ready()
        return self._entries.get((key, policy))

    async def _ready(self) -> None:
        """Start the subscription if it is not running; the first time, wait for the
        first copy (bounded: a hung actor must not hold model calls)."""
        task = self._task
        if (task is None or task.done()) and not self._closed:
            if task is not None and not task.cancelled() and task.exception() is not None:
                _log.error("breaker subscription ended", exc_info=task.exception())
            self._task = asyncio.get_running_loop().create_task(
                self._subscribe(), name=f"breaker subscription {self.subscriber}"
            )
        if not self._synced.is_set():
            try:
                async with asyncio.timeout(self._sync_timeout_s):
                    await self._synced.wait()
            except TimeoutError:
                self._synced.set()  # wait once only; the subscription goes on trying
                self._outage.failed(
                    BreakerUnavailable(f"no answer within {self._sync_timeout_s:g} s")
                )

    async def _subscribe(self) -> None:
        delay = self._retry_s[0]
        while not self._closed:
            try:
                if self._probes and self._epoch is not None and self._registered != self._epoch:
                    await self.remote.register(self._probes)
                    self._registered = self._epoch
                state = await self.remote.poll(
                    self.subscriber, self._epoch, self._version, self._poll_timeout_s
                )
            except BreakerUnavailable as exc:
                self._outage.failed(exc)
                self._synced.set()  # callers proceed (fail open) instead of waiting
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_s[1])
                continue
            delay = self._retry_s[0]
            self._apply(state)
            self._synced.set()
            self._outage.recovered()

    def _apply(self, state: BoardState) -> None:
        if state.epoch != self._epoch:
            # A new board (the actor was recreated): nothing of the old one holds.
            self._entries.clear()
            self._epoch = state.epoch
        for key, policy, status in state.breakers:
            self._put(key, policy, status, state.version)
        self._version = state.version

    def _note(self, update: BreakerUpdate) -> None:
        """An answer to one of our calls: newer than the copy, unless the board it
        came from is not the one the copy is of (the poll will tell)."""
        if update.epoch == self._epoch:
            self._put(update.key, update.policy, update.status, update.version)

    def _put(self, key: str, policy: BreakerPolicy, status: BreakerStatus, version: int) -> None:
        held = self._entries.get((key, policy))
        if held is not None and held.version > version:
            return  # the copy already has something newer
        open_until = self._clock() + status.cooldown_remaining_s
        self._entries[key, policy] = _Entry(status, version, open_until)
