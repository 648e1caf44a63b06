"""Guardrail state shared by every replica: one named, detached Ray actor per SQLite
file owns the budget ledger (``SqliteLedger``) and the redaction placeholders
(``ScopeTable``), so a cap holds cluster-wide and ``[EMAIL_1]`` means the same
address on every replica.

The actor restarts when it dies (``max_restarts=-1``) and reopens its file: session
and agent-period spend survives, placeholders (kept in memory only, never on disk)
are numbered afresh.  Calls are not replayed on a restart (``max_task_retries=0``):
a ``reserve`` replayed after its first attempt had committed would hold twice.

Clients: ``ActorLedger`` (a ``Ledger``) and ``ActorVault`` (a ``PlaceholderVault``).
They are picklable (the handle is dropped and looked up again on first use).  When
the actor cannot be reached or does not answer in time they raise
``GuardrailUnavailable`` (retryable): a call is never let through unchecked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from astromesh_ray.core.guardrails.ledger import Ask, Grant, Line, Metric, SqliteLedger, Standing
from astromesh_ray.core.guardrails.vault import VAULT_TTL_S, ScopeTable
from astromesh_ray.errors import GuardrailUnavailable
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE, NamedActorClient
from astromesh_ray.serve.handles import describe
from astromesh_ray.serve.outcome import failure, ok

CALL_TIMEOUT_S = 10.0


def actor_name(path: str) -> str:
    """The name of the guardrail-state actor owning the SQLite file ``path``."""
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return f"astromesh-guardrail-state-{digest}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class GuardrailStateActor:
    """Owns one budget ledger and one placeholder table; every method returns an
    outcome value (``serve/outcome.py``)."""

    def __init__(self, path: str, vault_ttl_s: float = VAULT_TTL_S) -> None:
        self._ledger = SqliteLedger(path)
        self._scopes = ScopeTable(vault_ttl_s)

    async def reserve(self, hold: str, ask: Ask) -> dict[str, Any]:
        try:
            return ok(await self._ledger.reserve(hold, ask))
        except Exception as exc:
            return failure(exc)

    async def settle(
        self, hold: str, lines: Sequence[Line], actual: Mapping[Metric, float]
    ) -> dict[str, Any]:
        try:
            return ok(await self._ledger.settle(hold, lines, actual))
        except Exception as exc:
            return failure(exc)

    async def drop(self, keys: Sequence[str]) -> dict[str, Any]:
        try:
            await self._ledger.drop(keys)
        except Exception as exc:
            return failure(exc)
        return ok(None)

    async def spent(self, keys: Sequence[str]) -> dict[str, Any]:
        try:
            return ok(await self._ledger.spent(keys))
        except Exception as exc:
            return failure(exc)

    async def assign(self, scope: str, items: Sequence[tuple[str, str]]) -> dict[str, Any]:
        # No await in between: one scope's numbering is never interleaved.
        try:
            return ok(self._scopes.scope(scope).assign(items))
        except Exception as exc:
            return failure(exc)

    async def originals(self, scope: str) -> dict[str, Any]:
        try:
            return ok(self._scopes.scope(scope).originals())
        except Exception as exc:
            return failure(exc)


class _ActorClient(NamedActorClient):
    """What both clients share: the actor of ``path`` and their errors."""

    guardrail = "cost_limit"

    def __init__(self, path: str, *, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        super().__init__(actor_name(path), call_timeout_s)
        self.path = path

    def _unavailable(self, exc: BaseException) -> GuardrailUnavailable:
        return GuardrailUnavailable(
            f"the guardrail-state actor {self.actor_name} is unavailable: {describe(exc)}",
            hint="it restarts by itself if it died; try again, or check the Ray cluster",
            guardrail=self.guardrail,
            retryable=True,
        )

    def _timed_out(self, method: str) -> GuardrailUnavailable:
        return GuardrailUnavailable(
            f"the guardrail-state actor {self.actor_name} did not answer {method} "
            f"within {self.call_timeout_s:g}s",
            hint="the actor may be starting or overloaded; try again",
            guardrail=self.guardrail,
            retryable=True,
        )

    def _lookup(self) -> Any:
        return GuardrailStateActor.options(  # type: ignore[attr-defined]
            name=self.actor_name,
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
        ).remote(self.path)


class ActorLedger(_ActorClient):
    """A ``Ledger`` whose body is the ``GuardrailStateActor`` of ``path``."""

    guardrail = "cost_limit"

    async def reserve(self, hold: str, ask: Ask) -> Grant:
        grant: Grant = await self._call("reserve", hold, ask)
        return grant

    async def settle(
        self, hold: str, lines: Sequence[Line], actual: Mapping[Metric, float]
    ) -> list[Standing]:
        standings: list[Standing] = await self._call("settle", hold, tuple(lines), dict(actual))
        return standings

    async def drop(self, keys: Sequence[str]) -> None:
        await self._call("drop", tuple(keys))

    async def spent(self, keys: Sequence[str]) -> dict[str, dict[str, float]]:
        found: dict[str, dict[str, float]] = await self._call("spent", tuple(keys))
        return found


class ActorVault(_ActorClient):
    """A ``PlaceholderVault`` whose body is the ``GuardrailStateActor`` of ``path``
    (the originals travel to the actor's memory, never to its file)."""

    guardrail = "pii_detection"

    async def assign(self, scope: str, items: Sequence[tuple[str, str]]) -> list[str]:
        placeholders: list[str] = await self._call(
            "assign", scope, [(str(e), str(o)) for e, o in items]
        )
        return placeholders

    async def originals(self, scope: str) -> dict[str, str]:
        found: dict[str, str] = await self._call("originals", scope)
        return found


__all__ = [
    "CALL_TIMEOUT_S",
    "ActorLedger",
    "ActorVault",
    "GuardrailStateActor",
    "actor_name",
]
