"""Which delivered messages are new: a message id is claimed once, and a claim holds
for a TTL, so that Meta's redelivery of the same message runs the agent once.

Meta delivers at least once: a delivery it thinks failed (a slow answer, a network
error) comes again, maybe to another gateway replica.  So the claims live in one
named, detached Ray actor (``ChannelDedupeActor``) that every replica asks
(``ActorDedupeStore``): a sync actor runs one call at a time, which makes each
claim atomic across replicas.  ``MemoryDedupeStore`` is the same store in one
process: the actor's body, and each replica's fallback while the actor cannot be
reached (state actors fail open: a message is answered, deduplicated within that
replica only, rather than dropped or refused).

The actor keeps its claims in memory: it restarts by itself if it dies
(``max_restarts=-1``), with none, so a redelivery that arrives right after a
restart runs again.  Claims are bounded (``MAX_KEYS``): past that, the ones that
expire first are forgotten first.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import ray

from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE, NamedActorClient
from astromesh_ray.serve.handles import describe
from astromesh_ray.serve.outcome import ok
from astromesh_ray.serve.protocols.channels.base import ChannelUnavailable

__all__ = [
    "DEDUPE_ACTOR",
    "MAX_KEYS",
    "ActorDedupeStore",
    "ChannelDedupeActor",
    "DedupeStore",
    "MemoryDedupeStore",
]

DEDUPE_ACTOR = "astromesh-channel-dedupe"
"""The name of the claims actor (in the ``astromesh`` namespace)."""

MAX_KEYS = 200_000
"""The most claims one store holds (about 50 MB of ids)."""

CALL_TIMEOUT_S = 5.0


class DedupeStore(Protocol):
    """Claims of message ids."""

    async def claim(self, keys: Sequence[str], ttl_s: float) -> list[bool]:
        """For each key, True when it is new (now claimed for ``ttl_s`` seconds),
        False when it was claimed before and has not expired (a key twice in
        ``keys`` is new once)."""
        ...


class MemoryDedupeStore:
    """Claims in this process; ``clock`` (seconds, monotonic) is injectable."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._expires: dict[str, float] = {}
        # (expiry, key) of every claim made: stale pairs (a key claimed again after
        # it expired) are skipped when popped.
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expires)

    def claim_now(self, keys: Sequence[str], ttl_s: float) -> list[bool]:
        """``claim``, synchronously (the actor's body)."""
        now = self._clock()
        self._expire(now)
        claimed: list[bool] = []
        for key in keys:
            expires = self._expires.get(key)
            if expires is not None and expires > now:
                claimed.append(False)
                continue
            while len(self._expires) >= self._max_keys:
                self._forget_first()
            self._expires[key] = now + ttl_s
            heapq.heappush(self._heap, (now + ttl_s, key))
            claimed.append(True)
        return claimed

    async def claim(self, keys: Sequence[str], ttl_s: float) -> list[bool]:
        return self.claim_now(keys, ttl_s)

    def _expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            self._forget_first()

    def _forget_first(self) -> None:
        expires, key = heapq.heappop(self._heap)
        if self._expires.get(key) == expires:
            del self._expires[key]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class ChannelDedupeActor:
    """Owns the claims of every gateway replica (a sync actor: one call at a time)."""

    def __init__(self) -> None:
        self._store = MemoryDedupeStore()

    def claim(self, keys: list[str], ttl_s: float) -> dict[str, Any]:
        return ok(self._store.claim_now(keys, ttl_s))


class ActorDedupeStore(NamedActorClient):
    """A ``DedupeStore`` whose body is the ``ChannelDedupeActor``; its failures are
    ``ChannelUnavailable``."""

    def __init__(self, *, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        super().__init__(DEDUPE_ACTOR, call_timeout_s)

    async def claim(self, keys: Sequence[str], ttl_s: float) -> list[bool]:
        claimed: list[bool] = await self._call("claim", list(keys), ttl_s)
        return claimed

    def _unavailable(self, exc: BaseException) -> ChannelUnavailable:
        return ChannelUnavailable(
            f"the channel dedupe actor {self.actor_name} is unavailable: {describe(exc)}",
            hint="it restarts by itself if it died; check the Ray cluster",
            retryable=True,
        )

    def _timed_out(self, method: str) -> ChannelUnavailable:
        return ChannelUnavailable(
            f"the channel dedupe actor {self.actor_name} did not answer {method} within "
            f"{self.call_timeout_s:g}s",
            retryable=True,
        )

    def _lookup(self) -> Any:
        return ChannelDedupeActor.options(  # type: ignore[attr-defined]
            name=self.actor_name,
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
        ).remote()
