"""Where redaction placeholders live: ``[EMAIL_1]`` stands for the same address in
every turn of a session, so the model can still refer to "the same email", and
``restore: true`` can put the original back in the answer to that session's caller.

``PlaceholderVault`` is the interface; ``LocalVault`` keeps them in this process
(``astromesh run``, tests).  Under Serve one named actor keeps them for every
replica (``serve/guardrail_state.py``).  Originals are kept in memory only, never
written to disk, logged or traced, and are forgotten ``ttl_s`` after the scope's
last use (24 h by default): a restarted vault numbers afresh.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

VAULT_TTL_S = 24 * 3600.0
MAX_SCOPES = 100_000
"""Scopes kept at most; the least recently used go first."""


class PlaceholderVault(Protocol):
    """Placeholders by scope (an agent's session, or a single run without one)."""

    async def assign(self, scope: str, items: Sequence[tuple[str, str]]) -> list[str]:
        """The placeholder of each ``(entity, original)``: the one already given to
        that original in ``scope``, else the next of its entity (``[EMAIL_2]``)."""
        ...

    async def originals(self, scope: str) -> dict[str, str]:
        """Every placeholder of ``scope`` with its original."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class ScopePlaceholders:
    """The placeholders of one scope."""

    by_original: dict[tuple[str, str], str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    used: float = 0.0

    def assign(self, items: Sequence[tuple[str, str]]) -> list[str]:
        out = []
        for entity, original in items:
            key = (entity, original)
            placeholder = self.by_original.get(key)
            if placeholder is None:
                n = self.counts.get(entity, 0) + 1
                self.counts[entity] = n
                placeholder = f"[{placeholder_label(entity)}_{n}]"
                self.by_original[key] = placeholder
            out.append(placeholder)
        return out

    def originals(self) -> dict[str, str]:
        return {p: original for (_, original), p in self.by_original.items()}


_LABELS = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "SSN",
    "IP_ADDRESS": "IP",
}


def placeholder_label(entity: str) -> str:
    """The label in an entity's placeholders: ``EMAIL`` for ``EMAIL_ADDRESS``..."""
    return _LABELS.get(entity, entity)


class ScopeTable:
    """Scopes by name, forgotten ``ttl_s`` after their last use (the body of every
    vault: in this process, or in the vault actor)."""

    def __init__(self, ttl_s: float = VAULT_TTL_S, max_scopes: int = MAX_SCOPES) -> None:
        self.ttl_s = ttl_s
        self.max_scopes = max_scopes
        self._scopes: dict[str, ScopePlaceholders] = {}

    def scope(self, name: str) -> ScopePlaceholders:
        now = time.monotonic()
        self._expire(now)
        found = self._scopes.pop(name, None) or ScopePlaceholders()
        found.used = now
        self._scopes[name] = found  # most recently used last
        while len(self._scopes) > self.max_scopes:
            del self._scopes[next(iter(self._scopes))]
        return found

    def _expire(self, now: float) -> None:
        for name in [n for n, s in self._scopes.items() if now - s.used > self.ttl_s]:
            del self._scopes[name]


class LocalVault:
    """A ``PlaceholderVault`` in this process."""

    def __init__(self, ttl_s: float = VAULT_TTL_S) -> None:
        self._table = ScopeTable(ttl_s)

    async def assign(self, scope: str, items: Sequence[tuple[str, str]]) -> list[str]:
        return self._table.scope(scope).assign(items)

    async def originals(self, scope: str) -> dict[str, str]:
        return self._table.scope(scope).originals()

    async def aclose(self) -> None:
        return None
