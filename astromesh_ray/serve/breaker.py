"""Circuit-breaker state shared by the whole cluster: one named Ray actor.

When one agent replica sees a provider fail, all of them stop calling it (DESIGN.md
§3: cluster-wide state lives in one named actor per concern).  The actor's body is
``BreakerBoard`` (``breaker_board.py``): breakers keyed by provider and policy, a
version number replicas long-poll, and one health-probe loop per provider
deployment, fed by registrations made at deploy time.

Two ``BreakerStore`` bodies reach it:

- ``ActorBreakerStore``: every call is one actor call (allow, then success or
  failure: two extra Ray round trips per model call).  The baseline, and what the
  gateway uses to read snapshots.
- ``ServeBreakerStore`` (a ``CachedBreakerStore``): a copy in the replica; while
  breakers are closed a model call makes no extra round trip.  What agent replicas use.

Both fail open: an actor that is gone is recreated on a later call, and meanwhile
model calls proceed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ray
from ray import serve
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayError,
)
from ray.serve.exceptions import RayServeException

from astromesh_ray.core.breaker import BreakerPolicy, State
from astromesh_ray.core.build import prepared
from astromesh_ray.core.patterns import pattern_for
from astromesh_ray.core.providers.base import Provider, local_provider
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE
from astromesh_ray.serve.breaker_board import (
    BreakerBoard,
    BreakerUnavailable,
    HealthProbe,
)
from astromesh_ray.serve.breaker_cache import (
    BoardCaller,
    BreakerRemote,
    CachedBreakerStore,
    Outage,
)
from astromesh_ray.serve.handles import AppHandle
from astromesh_ray.serve.providers import provider_app_name
from astromesh_ray.spec import AgentSpec, ProviderEntrySpec, ProviderRoutingSpec, resolve_route

ACTOR_NAME = "astromesh-breakers"
# A call on the hot path waits this long for the actor before failing open.
CALL_TIMEOUT_S = 5.0
# After a failed call, the link does not try the actor again for this long: during an
# outage, calls fail open at once instead of each paying a lookup.
RETRY_AFTER_S = 0.5

_log = logging.getLogger("astromesh.breaker")


class ServeAppProbe:
    """Health of a provider: its Serve application's ``health`` method, or, for a
    remote API the agents call from their replicas (a probe with an ``endpoint``),
    the API's own health, asked with a one-connection client kept here."""

    def __init__(self) -> None:
        self._apps: dict[str, AppHandle] = {}
        self._remote: dict[str, Provider] = {}

    def learn(self, probes: Iterable[HealthProbe]) -> None:
        """Note which probed names are remote APIs rather than applications."""
        for probe in probes:
            if probe.endpoint is not None and probe.app not in self._remote:
                self._remote[probe.app] = local_provider(probe.endpoint, max_connections=1)

    async def __call__(self, app: str, timeout_s: float) -> bool | None:
        remote = self._remote.get(app)
        if remote is not None:
            return bool(await asyncio.wait_for(remote.health(), timeout_s))
        found = self._apps.setdefault(app, AppHandle(app))
        try:
            handle = await found.get()
        except RayServeException:
            return None  # not deployed (yet), or Serve not running: not counted
        try:
            return bool(await asyncio.wait_for(handle.health.remote(), timeout_s))
        except BaseException:
            found.forget()  # look it up again: it may have been redeployed
            raise


@ray.remote(num_cpus=0, max_restarts=-1)
class BreakerActor(BreakerBoard):
    """The named actor: a ``BreakerBoard`` probing provider applications through
    Serve.  Async (its methods are coroutines): one pending poll per replica is cheap.
    Restarted if its process dies; a restarted board has a new epoch."""

    def __init__(self) -> None:
        self._prober = ServeAppProbe()
        super().__init__(probe=self._prober)

    async def register(self, probes: Sequence[HealthProbe]) -> None:
        self._prober.learn(probes)
        await super().register(probes)


def breaker_actor() -> Any:
    """The cluster's breaker actor, created if it does not exist (detached, in
    namespace ``astromesh``, so it outlives whoever created it)."""
    return BreakerActor.options(  # type: ignore[attr-defined]  # ray.remote wraps the class
        name=ACTOR_NAME, namespace=ACTOR_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()


def ensure_breaker_actor(probes: Sequence[HealthProbe] = ()) -> None:
    """At deploy time (in the application builders): create the breaker actor and
    register ``probes``, so neither waits for the first request.  Without a Ray
    connection (offline builds, unit tests) it does nothing; a failure is logged,
    never raised: the replicas create the actor and register again when they start."""
    if not ray.is_initialized():
        return
    try:
        actor = breaker_actor()
        ray.get(actor.register.remote(list(probes)), timeout=60)
    except RayError as exc:
        _log.warning("could not prepare the circuit-breaker actor at deploy time: %s", exc)


def agent_probes(
    agent: AgentSpec,
    providers: Mapping[str, ProviderEntrySpec],
    routing: ProviderRoutingSpec | None = None,
    roles: Iterable[str] | None = None,
) -> list[HealthProbe]:
    """The health probes ``agent`` asks for: for each of its roles' routes with a
    ``health_check_interval``, each endpoint (its provider application, or the remote
    API itself when the agent calls it from its replicas), with the route's breaker
    policy (the same ``BreakerPolicy`` its router uses).

    ``roles``: the model roles to look at (default: the pattern's roles and every
    role the agent declares)."""
    agent = prepared(agent)
    if roles is None:
        roles = [*pattern_for(agent.spec.orchestration).roles, *agent.spec.model.roles]
    found: dict[tuple[str, BreakerPolicy], HealthProbe] = {}
    for role in roles:
        route = resolve_route(agent, providers, routing, role=role)
        if not route.health_check_interval_s:
            continue
        policy = BreakerPolicy(route.failure_threshold, route.cooldown_s)
        for endpoint in route.endpoints:
            probe = HealthProbe(
                provider_app_name(endpoint),
                endpoint.key,
                policy,
                route.health_check_interval_s,
                # A remote API called from the agent's replicas: probed directly.
                endpoint=None if endpoint.dedicated else endpoint,
            )
            held = found.get((endpoint.key, policy))
            if held is None or held.interval_s > probe.interval_s:
                found[endpoint.key, policy] = probe
    return list(found.values())


# The actor killed, dead, restarting or hung.  Not RayTaskError: our own code raising
# inside the actor is a bug, which must surface, not switch the breakers off.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    RayActorError,
    ActorUnavailableError,
    GetTimeoutError,
    TimeoutError,
)


class ActorLink(BoardCaller):
    """The breaker actor as a ``BreakerRemote``: looked up (or created) on first use
    and again after a failure; Ray failures and timeouts become
    ``BreakerUnavailable``."""

    def __init__(
        self, *, call_timeout_s: float = CALL_TIMEOUT_S, retry_after_s: float = RETRY_AFTER_S
    ) -> None:
        self._actor: Any = None
        self._call_timeout_s = call_timeout_s
        self._retry_after_s = retry_after_s
        self._retry_at = 0.0

    async def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        try:
            if self._actor is None:
                if time.monotonic() < self._retry_at:
                    raise BreakerUnavailable("the breaker actor failed moments ago")
                # Looking up (or creating) a named actor blocks on the GCS: off the loop.
                self._actor = await asyncio.to_thread(breaker_actor)
            ref = getattr(self._actor, method).remote(*args)
            return await asyncio.wait_for(ref, timeout_s or self._call_timeout_s)
        except _UNREACHABLE as exc:
            # Killed, died, restarting, or hung: find (or create) it again later.
            self._actor = None
            self._retry_at = time.monotonic() + self._retry_after_s
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            raise BreakerUnavailable(f"{type(exc).__name__}: {first_line}") from exc


class ActorBreakerStore:
    """``BreakerStore`` with every call going to the actor: two extra Ray round trips
    per model call (the baseline ``ServeBreakerStore`` is measured against), and
    what the gateway reads snapshots with.  Fails open."""

    def __init__(self, link: BreakerRemote | None = None) -> None:
        self.link: BreakerRemote = link or ActorLink()
        self._outage = Outage()

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State]:
        try:
            allowed, state, _ = await self.link.allow(key, policy)
        except BreakerUnavailable as exc:
            self._outage.failed(exc)
            return True, "closed"
        self._outage.recovered()
        return allowed, state

    async def success(self, key: str, policy: BreakerPolicy) -> State:
        try:
            state, _ = await self.link.success(key, policy)
        except BreakerUnavailable as exc:
            self._outage.failed(exc)
            return "closed"
        self._outage.recovered()
        return state

    async def failure(self, key: str, policy: BreakerPolicy, error: str = "") -> State:
        try:
            state, _ = await self.link.failure(key, policy, error)
        except BreakerUnavailable as exc:
            self._outage.failed(exc)
            return "closed"
        self._outage.recovered()
        return state

    async def release(self, key: str, policy: BreakerPolicy) -> None:
        try:
            await self.link.release(key, policy)
        except BreakerUnavailable as exc:
            self._outage.failed(exc)
            return
        self._outage.recovered()

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        try:
            snap = await self.link.snapshot()
        except BreakerUnavailable as exc:
            self._outage.failed(exc)
            return {}
        self._outage.recovered()
        return snap


class ServeBreakerStore(CachedBreakerStore):
    """What agent replicas use: the cluster-wide breakers through a copy kept in the
    replica (``CachedBreakerStore`` over ``ActorLink``).  ``probes``
    (``agent_probes(...)``) are registered again whenever the actor is new."""

    def __init__(self, probes: Sequence[HealthProbe] = (), *, subscriber: str | None = None):
        super().__init__(ActorLink(), probes=probes, subscriber=subscriber or _replica_name())


def _replica_name() -> str | None:
    try:
        context = serve.get_replica_context()
    except RayServeException:
        return None  # not in a replica: a unique default name
    # Unique even when one replica holds two stores.
    return f"{context.app_name}/{context.replica_id.unique_id}/{uuid.uuid4().hex[:6]}"
