"""``PgPool``: the one PostgreSQL connection pool of every postgres-backed memory store
(conversations, the episodic log, pgvector).

- The asyncpg pool is created on first use, one per event loop (a pool and its
  connections belong to the loop that made them), and set up once by the store's
  ``setup(connection)`` (its tables, the pgvector extension).
- ``run(what, work)`` runs ``work(connection, retry)`` on a pooled connection.  A
  connection lost under it (a server restart, an administrator, a dead socket) is
  retried once on a fresh connection, every idle one replaced first, with
  ``retry=True`` so work that must not be done twice can look for its first try.
- Failures leave as ``MemoryUnavailable``: retryable when the server is away or
  cannot serve now, not when the URL is wrong (no such database, user or password).
  Messages name the URL without its password.  Errors of our own SQL propagate.
- A copy (Ray pickles stores into replicas) opens its own pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from astromesh_ray.core.memory.redact import redact
from astromesh_ray.errors import ConfigError, MemoryUnavailable

log = logging.getLogger("astromesh.memory")
T = TypeVar("T")

RETRY_DELAY_S = 0.1
"""The pause before the one retry after a lost connection."""


class _ConnectionLost(Exception):
    """The server terminated the connection a call was using."""


# Retrying cannot help: the URL is wrong.
_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # user or password
    asyncpg.exceptions.InvalidCatalogNameError,  # no such database
)
# The connection went away under us: one retry on a fresh one.
_LOST: tuple[type[BaseException], ...] = (
    _ConnectionLost,
    OSError,  # refused, reset, unreachable, timed out (TimeoutError is an OSError)
    asyncpg.exceptions.PostgresConnectionError,  # 08xxx: ConnectionDoesNotExist, ...
    asyncpg.exceptions.InterfaceError,  # "connection is closed"
    asyncpg.exceptions.AdminShutdownError,  # terminated by a restart or an administrator
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,  # starting up or shutting down
)
# The server is up but cannot serve us now: the caller may try again later.
_BUSY: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: query cancelled, ...
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many clients, disk full
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, after a failover
)


def _closed(conn: Any) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.exceptions.InterfaceError:  # the pool already took it back as dead
        return True


class PgPool:
    """The connection pool of one postgres-backed store (see the module docstring).

    ``label`` says what the store keeps (in messages and, as ``astromesh:<label>``,
    in ``pg_stat_activity.application_name``); ``backend`` is the store's name in
    ``MemoryUnavailable.details``; ``timeout_s`` bounds connecting and each statement.
    """

    def __init__(
        self,
        url: str,
        *,
        label: str,
        backend: str,
        setup: Callable[[Any], Awaitable[None]],
        min_size: int = 1,
        max_size: int = 5,
        timeout_s: float = 10.0,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigError(
                f"pool sizes must satisfy 0 <= min_size <= max_size, max_size >= 1 "
                f"(got min_size={min_size}, max_size={max_size})"
            )
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {timeout_s!r}")
        self.url = url
        self.label = label
        self.backend = backend
        self.setup = setup
        self.min_size = min_size
        self.max_size = max_size
        self.timeout_s = float(timeout_s)
        self.application_name = f"astromesh:{label}"[:63]
        self.where = str(redact(url))  # for messages: the URL without its password
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None, "_loop": None, "_lock": None}

    async def run(self, what: str, work: Callable[[Any, bool], Awaitable[T]]) -> T:
        """``work(connection, retry)`` on a pooled connection (see the module docstring)."""
        for retry in (False, True):
            try:
                pool = await self._ready()
                async with pool.acquire() as conn:
                    try:
                        return await work(conn, retry)
                    except asyncpg.exceptions.InternalClientError as exc:
                        # asyncpg's answer to a statement sent on a connection whose
                        # termination notice arrived while it sat idle in the pool:
                        # lost, not a bug of ours, when the connection is now closed.
                        if not _closed(conn):
                            raise
                        raise _ConnectionLost(str(exc)) from exc
            except _REFUSED as exc:
                raise self._unavailable(what, exc, retryable=False) from exc
            except _LOST as exc:
                if retry:
                    raise self._unavailable(what, exc, retryable=True) from exc
                log.info("%s: connection lost during %s (%s); retrying once", self, what, exc)
                if self._pool is not None:
                    # Every idle connection may be dead too (a restart): replace them all.
                    with contextlib.suppress(*_LOST):
                        await self._pool.expire_connections()
                await asyncio.sleep(RETRY_DELAY_S)
            except _BUSY as exc:
                raise self._unavailable(what, exc, retryable=True) from exc
        raise AssertionError("unreachable: the retry either returns or raises")

    async def _ready(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._lock is None or self._loop is not loop:
            # A pool and its lock belong to one event loop; a new loop starts afresh.
            self._pool, self._loop, self._lock = None, loop, asyncio.Lock()
        async with self._lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self.url,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    timeout=self.timeout_s,
                    command_timeout=self.timeout_s,
                    server_settings={"application_name": self.application_name},
                )
                try:
                    async with pool.acquire() as conn:
                        await self.setup(conn)
                except BaseException:
                    pool.terminate()
                    raise
                self._pool = pool
        return self._pool

    def _unavailable(self, what: str, exc: BaseException, *, retryable: bool) -> MemoryUnavailable:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if retryable:
            message = f"PostgreSQL for {self.label} cannot be reached at {self.where}"
            hint = f"start PostgreSQL at {self.where}, or point the store at a running one"
        else:
            message = f"PostgreSQL for {self.label} at {self.where} refused the connection"
            hint = f"check the database name, user and password in {self.where}"
        return MemoryUnavailable(
            f"{message}: {what} failed: {why}",
            hint=hint,
            backend=self.backend,
            retryable=retryable,
        )

    async def aclose(self) -> None:
        """Close the pool (a later call opens a new one)."""
        pool, loop = self._pool, self._loop
        self._pool = self._loop = self._lock = None
        if pool is None:
            return
        if loop is not asyncio.get_running_loop():
            # Its connections belong to another (maybe closed) loop: drop them there.
            with contextlib.suppress(RuntimeError):
                pool.terminate()
            return
        try:
            await asyncio.wait_for(pool.close(), self.timeout_s)
        except TimeoutError:
            pool.terminate()  # calls still running after the timeout are cut off

    def __repr__(self) -> str:
        return f"PgPool({self.where!r}, {self.label!r})"
