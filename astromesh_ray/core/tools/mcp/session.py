"""``SessionConnection``: one MCP server reached through an ``mcp.Client`` session
that is kept open, and opened again when it ended.

The SDK's sessions and transports are anyio context managers: they must be entered
and left by one task.  Each session therefore lives in a task of its own (the
*owner*), which opens the transport and the ``Client``, and holds them until the
connection closes or the transport ends (a stdio server that exited, an HTTP server
that went away).  Calls from any task go through the open ``Client``.

- **Negotiation**: ``mode="auto"``: the current (stateless, 2026-07-28) revision
  when the server speaks it, else the 2025 ``initialize`` handshake.
- **Restarts**: a session that ended is opened again on the next use.  Starts that
  fail (or servers that die before a call succeeded) in a row are spaced by an
  exponential backoff, and after ``max_restarts`` of them the server is reported
  down (calls fail at once) until ``DOWN_RETRY_S`` has passed.  A call succeeding
  resets the count.
- **list_changed**: ``notifications/tools/list_changed`` (2025 sessions) and a
  ``subscriptions/listen`` stream (2026 sessions) both call the registered
  callbacks; so does a session opened again (its server may list other tools).
- **Timeouts**: a call that does not answer within its timeout is cancelled at the
  server (the SDK sends the cancellation) and the session stays open.

Subclasses say how to open the transport (``_transport``) and what to add to error
messages and health (``_detail``, ``_health``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from mcp import Client
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost
from mcp.shared.exceptions import MCPError
from mcp.types import Implementation, ToolListChangedNotification
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from astromesh_ray.core.tools.base import ToolResult
from astromesh_ray.core.tools.mcp.connection import (
    CONNECTION_CLOSED,
    REQUEST_TIMEOUT,
    McpToolInfo,
    protocol_error,
    server_down,
)
from astromesh_ray.core.tools.mcp.results import to_tool_result
from astromesh_ray.core.tools.mcp.watch import (
    BACKOFF_CAP_S,
    Session,
    WatchedRead,
    backoff_s,
    reason_of,
)
from astromesh_ray.errors import ToolError

__all__ = ["DOWN_RETRY_S", "SessionConnection"]

log = logging.getLogger("astromesh.tools.mcp")

CLIENT_INFO = Implementation(name="astromesh-ray", version="0.1.0")
# Opening a session (spawning a server, connecting, negotiating) may take this long.
START_TIMEOUT_S = 30.0
# A server past its restarts is tried again after this long.
DOWN_RETRY_S = 60.0
# Leaving a session (closing the transport, stopping a server) waits this long.
CLOSE_TIMEOUT_S = 10.0
# A lost listen stream is opened again after this long (doubling, up to the cap).
LISTEN_RETRY_S = 1.0
# A listing longer than this many pages is cut (a server paginating forever).
MAX_PAGES = 100


class SessionConnection(ABC):
    """An ``McpConnection`` over one kept-open session (see the module docstring).

    ``max_restarts``: failed starts in a row before the server is reported down
    (``None``: never, only the backoff; remote servers)."""

    transport_name = "mcp"

    def __init__(self, key: str, *, max_restarts: int | None) -> None:
        self.key = key
        self.max_restarts = max_restarts
        self._session: Session | None = None
        self._lock: asyncio.Lock | None = None
        self._numbers = 0
        self._failures = 0  # starts failed / sessions died, in a row
        self._restarts = 0  # sessions opened after the first
        self._last_attempt = float("-inf")
        self._last_error: str | None = None
        self._protocol: str | None = None
        self._read_only: set[str] = set()
        self._callbacks: list[Callable[[], None]] = []
        self._closing: set[asyncio.Future[None]] = set()
        self._closed = False

    # -- what subclasses provide -------------------------------------------------------

    @abstractmethod
    def _transport(self) -> AbstractAsyncContextManager[Any]:
        """A fresh SDK transport (an async context manager yielding the streams)."""

    async def _prepare(self) -> None:  # noqa: B027  # optional: most transports check nothing
        """Checks before each start (the network policy of a remote server)."""

    def _detail(self) -> str:
        """What to add to an error message (a stdio server's stderr)."""
        return ""

    def _health(self) -> dict[str, Any]:
        """Transport-specific health fields."""
        return {}

    # -- McpConnection -----------------------------------------------------------------

    async def list_tools(self) -> list[McpToolInfo]:
        client = await self._ensure()
        found: list[McpToolInfo] = []
        cursor: str | None = None
        try:
            for _ in range(MAX_PAGES):
                page = await client.list_tools(cursor=cursor)
                found.extend(McpToolInfo.of(tool) for tool in page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    break
        except (
            MCPError,
            ValidationError,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
        ) as exc:
            self._check_ended()
            raise self._with_detail(protocol_error(self.key, None, exc)) from None
        self._failures = 0
        self._read_only = {t.name for t in found if t.read_only}
        return found

    async def call_tool(
        self, name: str, arguments: dict[str, Any], timeout_s: float | None
    ) -> ToolResult:
        try:
            return await self._call(name, arguments, timeout_s)
        except ToolError as exc:
            if exc.details.get("lost") and name in self._read_only:
                # The server died under a call that changes nothing: send it once more
                # to the restarted server.
                log.info("MCP server %s died during a call to %s; calling again", self.key, name)
                return await self._call(name, arguments, timeout_s)
            raise

    async def _call(
        self, name: str, arguments: dict[str, Any], timeout_s: float | None
    ) -> ToolResult:
        client = await self._ensure(tool=name)
        try:
            # The SDK cancels the request at the server after timeout_s; the outer bound
            # only catches a transport that does not even get to send it.
            async with asyncio.timeout(None if timeout_s is None else timeout_s + 5.0):
                result = await client.call_tool(name, arguments, read_timeout_seconds=timeout_s)
        except TimeoutError:
            raise self._timed_out(name, timeout_s) from None
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise self._timed_out(name, timeout_s) from None
            if exc.code == CONNECTION_CLOSED:
                raise self._lost(name, exc) from None
            raise protocol_error(self.key, name, exc) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise self._lost(name, exc) from None
        except ValidationError as exc:
            raise protocol_error(self.key, name, exc) from None
        self._failures = 0
        return to_tool_result(self.key, name, result)

    def on_list_changed(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def health(self) -> dict[str, Any]:
        session = self._session
        report: dict[str, Any] = {"transport": self.transport_name, "restarts": self._restarts}
        if session is not None and session.alive:
            report["status"] = "ok"
        elif self._failures and self._last_error:
            report["status"] = "down"
            report["error"] = self._last_error
            report["failures_in_a_row"] = self._failures
        else:
            report["status"] = "idle"  # not started yet, or closed
        if self._protocol is not None:
            report["protocol"] = self._protocol
        report.update(self._health())
        return report

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await self._leave(session)

    # -- sessions ----------------------------------------------------------------------

    async def _ensure(self, tool: str | None = None) -> Client:
        """The open session's client, opening one when there is none (or it ended)."""
        session = self._session
        if session is not None and session.alive and session.client is not None:
            return session.client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            session = self._session
            if session is not None and session.alive and session.client is not None:
                return session.client
            if self._closed:
                raise server_down(self.key, "the connection is closed", tool=tool)
            if session is not None:
                self._session = None
                await self._leave(session)
            self._gate(tool)
            self._last_attempt = time.monotonic()
            try:
                await self._prepare()
                session = await self._start()
            except ToolError as exc:
                self._failed(exc.message)
                raise
            except Exception as exc:  # the transport's own failure: reported, not raised
                reason = reason_of(exc)
                self._failed(reason)
                raise server_down(self.key, reason + self._detail(), tool=tool) from None
            self._session = session
            if session.number > 1:
                self._restarts += 1
                self._changed()  # a server that came back may list other tools
            assert session.client is not None
            return session.client

    def _gate(self, tool: str | None) -> None:
        """Refuse a start during the backoff, or while the server is down."""
        if not self._failures:
            return
        since = time.monotonic() - self._last_attempt
        if self.max_restarts is not None and self._failures > self.max_restarts:
            wait = DOWN_RETRY_S - since
            if wait > 0:
                raise server_down(
                    self.key,
                    f"{self._last_error}; it failed {self._failures} times in a row "
                    f"(max_restarts {self.max_restarts}); it is tried again in {wait:.0f} s",
                    tool=tool,
                )
            return
        wait = backoff_s(self._failures) - since
        if wait > 0:
            raise server_down(
                self.key, f"{self._last_error}; it is tried again in {wait:.1f} s", tool=tool
            )

    def _failed(self, reason: str) -> None:
        self._failures += 1
        self._last_error = reason
        log.warning("MCP server %s: %s", self.key, reason)

    async def _start(self) -> Session:
        self._numbers += 1
        session = Session(self._numbers)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.task = asyncio.create_task(self._own(session, ready), name=f"mcp {self.key}")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await asyncio.shield(ready)
        except TimeoutError:
            await self._leave(session)
            raise server_down(
                self.key, f"it did not answer within {START_TIMEOUT_S:g} s" + self._detail()
            ) from None
        except asyncio.CancelledError:
            # Whoever started it went away: do not leave a half-open session behind.
            closing = asyncio.ensure_future(self._leave(session))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            raise
        except BaseException:
            await self._leave(session)
            raise
        return session

    async def _own(self, session: Session, ready: asyncio.Future[None]) -> None:
        """The owner task: open the session, hold it until it ends, close it."""
        try:
            transport = self._watched(session)
            async with Client(
                transport,
                mode="auto",
                cache=None,
                client_info=CLIENT_INFO,
                message_handler=self._on_message,
            ) as client:
                self._protocol = client.protocol_version
                session.client = client
                if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                    session.listener = asyncio.create_task(
                        self._listen(session, client), name=f"mcp listen {self.key}"
                    )
                ready.set_result(None)
                try:
                    await session.ended.wait()
                finally:
                    if session.listener is not None:
                        session.listener.cancel()
                        await asyncio.gather(session.listener, return_exceptions=True)
        except asyncio.CancelledError:
            if not ready.done():
                ready.set_exception(ToolError(f"MCP server {self.key!r}: start cancelled"))
            raise
        except BaseException as exc:  # the owner must report, whatever the transport raised
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            else:
                log.info("MCP server %s: session ended: %s", self.key, reason_of(exc))
        finally:
            session.ended.set()
            session.client = None

    @asynccontextmanager
    async def _watched(self, session: Session) -> AsyncIterator[tuple[Any, Any]]:
        """The subclass's transport, its read stream watched for its end."""
        async with self._transport() as (read, write):

            def ended() -> None:
                if not session.ended.is_set():
                    session.ended.set()
                    if not self._closed and session.client is not None:
                        # A session that served and then ended: the server died.
                        self._failed("the server closed the connection" + self._detail())

            yield WatchedRead(read, ended), write

    async def _leave(self, session: Session) -> None:
        session.ended.set()
        task = session.task
        if task is None or task.done():
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except Exception:  # closing: the owner already logged what ended it
            pass

    def _check_ended(self) -> None:
        session = self._session
        if session is not None and session.ended.is_set():
            self._session = None

    # -- notifications -----------------------------------------------------------------

    async def _on_message(self, message: Any) -> None:
        # 2026 sessions hear of changes on their listen stream (``_listen``), which
        # the SDK also hands here: counted once, there.
        if isinstance(message, ToolListChangedNotification):
            if self._protocol not in MODERN_PROTOCOL_VERSIONS:
                self._changed()
        elif isinstance(message, Exception):
            log.debug("MCP server %s sent something unreadable: %s", self.key, message)

    async def _listen(self, session: Session, client: Client) -> None:
        """Keep a ``subscriptions/listen`` stream open (2026 sessions).  A lost stream
        is opened again (backing off), and the tools are then re-listed: events are
        not replayed."""
        delay, first = LISTEN_RETRY_S, True
        while not session.ended.is_set():
            try:
                async with client.listen(tools_list_changed=True) as subscription:
                    if not first:
                        self._changed()  # what changed while the stream was lost
                    first, delay = False, LISTEN_RETRY_S
                    async for _event in subscription:
                        self._changed()
                return  # the server closed it gracefully
            except ListenNotSupportedError:
                return
            except (SubscriptionLost, MCPError, TimeoutError) as exc:
                if session.ended.is_set():
                    return
                log.debug("MCP server %s: listen stream lost: %s", self.key, reason_of(exc))
            except Exception:  # the transport's own failure: listening is best effort
                if session.ended.is_set():
                    return
                log.info("MCP server %s: listen stream failed", self.key, exc_info=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP_S)

    def _changed(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:  # one watcher failing must not stop the others
                log.warning(
                    "MCP server %s: a list_changed callback failed", self.key, exc_info=True
                )

    # -- errors -----------------------------------------------------------------------

    def _timed_out(self, name: str, timeout_s: float | None) -> ToolError:
        return ToolError(
            f"tool {name!r} of MCP server {self.key!r} did not answer within "
            f"{timeout_s or 0:g} s; the call was cancelled",
            hint="call it again with a smaller request, or do without it",
            tool=name,
            server=self.key,
        )

    def _lost(self, name: str, exc: BaseException) -> ToolError:
        self._check_ended()
        error = self._with_detail(protocol_error(self.key, name, exc))
        error.details["lost"] = True
        return error

    def _with_detail(self, error: ToolError) -> ToolError:
        detail = self._detail()
        if detail:
            error.message += detail
            error.args = (error.message,)
        return error
