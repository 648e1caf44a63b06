"""The spend ledger behind ``cost_limit`` budgets: what each key has spent, and what
the model calls in flight have reserved, so concurrent calls cannot overspend a cap.

A *key* names what a cap counts (``budget.py`` builds them): a turn
(``turn:{agent}:{run_id}``), a session (``session:{agent}:{session_id}``) or an
agent's clock hour or UTC day (``agent:{agent}:hour:2026-11-05T14:00:00Z``).  Each key
has one amount per *metric*: ``tokens`` and ``usd`` are counted separately.

A call first ``reserve``s its estimate on every key it counts against; the ledger
checks, in one transaction, that for every line with a limit ``spent + reserved +
estimate <= limit``, and records the reservation (or refuses, recording nothing).
After the call ``settle`` replaces the reservation by the actual amount.  So calls
running at once never overspend a cap by more than one call's estimate error.

``SqliteLedger`` is the one implementation: in this process (``astromesh run``, unit
tests) and, under Serve, inside the guardrail-state actor
(``serve/guardrail_state.py``), which every replica reaches through ``ActorLedger``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from astromesh_ray.core.memory.sqlite_wal import use_wal
from astromesh_ray.errors import GuardrailUnavailable

T = TypeVar("T")

Metric = Literal["tokens", "usd"]
METRICS: tuple[Metric, ...] = ("tokens", "usd")

PRUNE_INTERVAL_S = 60.0
"""Expired keys and reservations are deleted at most this often (by ledger clock)."""


@dataclass(frozen=True, slots=True)
class Line:
    """One ``(key, metric)`` a call counts against.

    ``limit`` is the block limit a reservation is checked against (``None``: the
    amount is only recorded, e.g. for warn caps), ``cap`` the cap field it comes from
    (``max_tokens_per_session``), ``expires_at`` when the key's spend may be
    forgotten (the end of an hour window; ``None``: never)."""

    key: str
    metric: Metric
    limit: float | None = None
    cap: str | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Ask:
    """What one call wants to reserve: on every line of a metric ``m`` the amount
    ``base[m] + per_unit[m] * units``, where ``units`` (the call's output tokens) is
    the largest value in ``[min_units, max_units]`` that every limit allows."""

    lines: tuple[Line, ...]
    base: Mapping[Metric, float]
    per_unit: Mapping[Metric, float]
    max_units: int
    min_units: int = 1
    hold_ttl_s: float = 600.0

    def amount(self, metric: Metric, units: int) -> float:
        """What ``units`` output units cost in ``metric``."""
        return self.base.get(metric, 0.0) + self.per_unit.get(metric, 0.0) * units


@dataclass(frozen=True, slots=True)
class Refusal:
    """The line that left no room: what it has ``spent`` (settled), ``reserved`` (by
    calls in flight), and the least the call ``needed``."""

    line: Line
    spent: float
    reserved: float
    needed: float


@dataclass(frozen=True, slots=True)
class Grant:
    """The outcome of ``reserve``: the ``units`` granted (``0`` when ``refused``) and
    the line that lowered them below ``max_units`` (``binding``), if any."""

    units: int
    refused: Refusal | None = None
    binding: Line | None = None


@dataclass(frozen=True, slots=True)
class Standing:
    """A line's settled spend just ``before`` and just ``after`` one settlement."""

    line: Line
    before: float
    after: float


class Ledger(Protocol):
    """Spend and reservations by key and metric; see the module docstring."""

    async def reserve(self, hold: str, ask: Ask) -> Grant:
        """Atomically check every limited line of ``ask`` and, if they all leave
        room, record the reservation ``hold`` on every line of it."""
        ...

    async def settle(
        self, hold: str, lines: Sequence[Line], actual: Mapping[Metric, float]
    ) -> list[Standing]:
        """Drop reservation ``hold`` and add ``actual`` to each of ``lines`` (zero
        amounts release a hold: a call that failed).  Settling a hold that is gone
        (expired, or lost) still adds ``actual``."""
        ...

    async def drop(self, keys: Sequence[str]) -> None:
        """Forget the spend and reservations of ``keys`` (a turn that ended)."""
        ...

    async def spent(self, keys: Sequence[str]) -> dict[str, dict[str, float]]:
        """The settled spend of each of ``keys``, by metric (missing: nothing)."""
        ...

    async def aclose(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_spend (
    key TEXT NOT NULL,
    metric TEXT NOT NULL,
    amount REAL NOT NULL,
    expires_at REAL,
    PRIMARY KEY (key, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budget_holds (
    key TEXT NOT NULL,
    metric TEXT NOT NULL,
    hold TEXT NOT NULL,
    amount REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, metric, hold)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS budget_holds_by_hold ON budget_holds (hold);
"""


class SqliteLedger:
    """A ``Ledger`` in the SQLite file at ``path`` (``":memory:"``: in this process).

    Spend and reservations are rows of the file, so session and agent-period spend
    survive a restart; turn keys are rows too, which ``drop`` deletes when the turn
    ends (their ``expires_at`` covers a turn that never ends).  Every operation is
    one transaction (``BEGIN IMMEDIATE``) on one connection served by one worker
    thread: a reservation's check and record cannot interleave with another's, in
    this process or (WAL, busy timeout) in another one sharing the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._prune_at = 0.0

    # -- Ledger ------------------------------------------------------------------

    async def reserve(self, hold: str, ask: Ask) -> Grant:
        return await self._call(functools.partial(self._reserve, hold, ask))

    async def settle(
        self, hold: str, lines: Sequence[Line], actual: Mapping[Metric, float]
    ) -> list[Standing]:
        return await self._call(functools.partial(self._settle, hold, tuple(lines), dict(actual)))

    async def drop(self, keys: Sequence[str]) -> None:
        await self._call(functools.partial(self._drop, tuple(keys)))

    async def spent(self, keys: Sequence[str]) -> dict[str, dict[str, float]]:
        return await self._call(functools.partial(self._spent, tuple(keys)))

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close)
        executor.shutdown(wait=False)

    # -- the worker thread ---------------------------------------------------------

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="astromesh-ledger")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(self._run, work))
        except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
            raise GuardrailUnavailable(
                f"the budget ledger {self.path} cannot be used: {exc}",
                hint="check the file, its directory's permissions and free disk space",
                guardrail="cost_limit",
                retryable=isinstance(exc, sqlite3.OperationalError),
            ) from exc

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            use_wal(conn, self.path, self._busy_timeout_s)
            conn.executescript(_SCHEMA)
            self._conn = conn
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        if now < self._prune_at:
            return
        self._prune_at = now + PRUNE_INTERVAL_S
        conn.execute(
            "DELETE FROM budget_spend WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
        )
        conn.execute("DELETE FROM budget_holds WHERE expires_at <= ?", (now,))

    @staticmethod
    def _amounts(conn: sqlite3.Connection, line: Line, now: float) -> tuple[float, float]:
        row = conn.execute(
            "SELECT amount FROM budget_spend WHERE key = ? AND metric = ?"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (line.key, line.metric, now),
        ).fetchone()
        held = conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM budget_holds"
            " WHERE key = ? AND metric = ? AND expires_at > ?",
            (line.key, line.metric, now),
        ).fetchone()
        return (float(row[0]) if row else 0.0), float(held[0])

    def _reserve(self, hold: str, ask: Ask, conn: sqlite3.Connection) -> Grant:
        now = self._clock()
        self._prune(conn, now)
        units, binding = ask.max_units, None
        for line in ask.lines:
            if line.limit is None:
                continue
            spent, reserved = self._amounts(conn, line, now)
            room = line.limit - spent - reserved - ask.base.get(line.metric, 0.0)
            rate = ask.per_unit.get(line.metric, 0.0)
            if rate > 0:
                # A hair of tolerance: USD amounts are sums of float products.
                allowed = math.floor(room / rate + 1e-9)
            elif ask.base.get(line.metric, 0.0) > 0:
                allowed = ask.max_units if room >= 0 else -1
            else:
                # Nothing estimated (an unknown price): refuse only when nothing is left.
                allowed = ask.max_units if spent + reserved < line.limit else -1
            if allowed < ask.min_units:
                return Grant(
                    units=0,
                    refused=Refusal(line, spent, reserved, ask.amount(line.metric, ask.min_units)),
                )
            if allowed < units:
                units, binding = allowed, line
        expires = now + ask.hold_ttl_s
        conn.executemany(
            "INSERT OR REPLACE INTO budget_holds (key, metric, hold, amount, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(ln.key, ln.metric, hold, ask.amount(ln.metric, units), expires) for ln in ask.lines],
        )
        return Grant(units=units, binding=binding)

    def _settle(
        self,
        hold: str,
        lines: tuple[Line, ...],
        actual: dict[Metric, float],
        conn: sqlite3.Connection,
    ) -> list[Standing]:
        now = self._clock()
        conn.execute("DELETE FROM budget_holds WHERE hold = ?", (hold,))
        standings = []
        for line in lines:
            before, _ = self._amounts(conn, line, now)
            added = actual.get(line.metric, 0.0)
            after = before + added
            standings.append(Standing(line, before, after))
            if not added:
                continue  # nothing spent (a released hold): no row to write
            row = conn.execute(
                "SELECT expires_at FROM budget_spend WHERE key = ? AND metric = ?",
                (line.key, line.metric),
            ).fetchone()
            expires = line.expires_at
            if row is not None and row[0] is not None and expires is not None:
                expires = max(expires, float(row[0]))  # a sliding expiry only moves on
            conn.execute(
                "INSERT OR REPLACE INTO budget_spend (key, metric, amount, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (line.key, line.metric, after, expires),
            )
        return standings

    def _drop(self, keys: tuple[str, ...], conn: sqlite3.Connection) -> None:
        conn.executemany("DELETE FROM budget_spend WHERE key = ?", [(k,) for k in keys])
        conn.executemany("DELETE FROM budget_holds WHERE key = ?", [(k,) for k in keys])

    def _spent(
        self, keys: tuple[str, ...], conn: sqlite3.Connection
    ) -> dict[str, dict[str, float]]:
        now = self._clock()
        out: dict[str, dict[str, float]] = {}
        for key in keys:
            rows = conn.execute(
                "SELECT metric, amount FROM budget_spend WHERE key = ?"
                " AND (expires_at IS NULL OR expires_at > ?)",
                (key, now),
            ).fetchall()
            if rows:
                out[key] = {str(m): float(a) for m, a in rows}
        return out
