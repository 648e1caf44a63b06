"""One WebSocket connection of ``WS /v1/ws/agent/{name}``: its turns, one at a
time, cancelled by a ``cancel`` message or the client leaving, with heartbeats in
between (the messages and frames are ``ws_session.py``'s).

Pure asyncio: no Ray, no Starlette (``websocket.py`` adapts a Starlette socket to
``Transport`` and ``GatewayCore.open_run`` to ``OpenRun``), so all of it is unit
tested without sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from astromesh_ray.errors import AstromeshError, InvalidRequest, RunError
from astromesh_ray.serve.outcome import failure
from astromesh_ray.serve.protocols.ws_session import (
    HEARTBEAT_FRAME,
    HEARTBEAT_S,
    CancelMessage,
    Refused,
    RunMessage,
    cancelled_frame,
    encode,
    error_frame,
    event_frame,
    parse_message,
)


class ClientGone(Exception):
    """The client closed the connection while a frame was being sent."""


class Transport(Protocol):
    """One accepted WebSocket, as the session uses it."""

    async def receive(self) -> str | bytes | None:
        """The next frame's text or bytes; ``None`` once the client is gone."""
        ...

    async def send(self, text: str) -> None:
        """Send a text frame; ``ClientGone`` when the client went away."""
        ...


class EventStream(Protocol):
    """One run's events (``RunEvents``): leaving the ``async with`` stops the run."""

    @property
    def run_id(self) -> str: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...


OpenRun = Callable[[dict[str, Any]], Awaitable[EventStream]]
"""Start a run from ``RunRequest`` fields; an error before its first event raises."""


@dataclass
class _Turn:
    session_id: str | None
    task: asyncio.Task[None] | None = None
    run_id: str | None = None  # once the run started


@dataclass
class WsConnection:
    """The turns of one connection, one at a time, with heartbeats in between.

    A turn pulls its next event only once the transport took the previous frame:
    nothing here queues frames (what the transport and Serve buffer behind it:
    ``websocket.py``).  A ``cancel`` message or the client going away cancels the
    turn's task, whose ``async with`` then stops the run.
    """

    transport: Transport
    open_run: OpenRun
    heartbeat_s: float = HEARTBEAT_S
    _turn: _Turn | None = field(default=None, init=False)  # the turn running now
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _sending: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame; frames of concurrent senders never interleave."""
        async with self._sending:
            await self.transport.send(encode(frame))

    async def serve(self) -> None:
        """Answer the client's messages until it goes away; then stop what runs."""
        self._spawn(self._heartbeats())
        try:
            while (data := await self.transport.receive()) is not None:
                message = parse_message(data)
                if isinstance(message, Refused):
                    await self.send(error_frame(message.error, "message"))
                elif isinstance(message, CancelMessage):
                    await self._cancel()
                else:
                    await self._start(message)
        except ClientGone:
            pass  # a refusal or cancellation frame found the client gone
        finally:
            await self._stop_all()

    async def _start(self, message: RunMessage) -> None:
        if self._turn is not None:
            await self.send(
                error_frame(
                    InvalidRequest(
                        "a turn is already running on this connection",
                        hint='wait for its "done", "error" or "cancelled" frame, or send '
                        '{"type": "cancel"}',
                        reason="turn_running",
                        run_id=self._turn.run_id,
                    ).to_dict(),
                    "message",
                )
            )
            return
        turn = self._turn = _Turn(message.session_id)
        turn.task = self._spawn(self._run(turn, message.request()))

    async def _cancel(self) -> None:
        turn = self._turn
        if turn is None or turn.task is None:
            await self.send(
                error_frame(
                    InvalidRequest(
                        "no turn is running on this connection",
                        hint="a cancel stops the turn started by the last query",
                        reason="no_turn",
                    ).to_dict(),
                    "message",
                )
            )
            return
        self._turn = None
        turn.task.cancel()
        await asyncio.wait({turn.task})  # the run is stopped once its task is done
        await self.send(cancelled_frame(turn.run_id, turn.session_id))

    async def _run(self, turn: _Turn, request: dict[str, Any]) -> None:
        """One turn: its events, then its ``done`` or ``error`` frame."""
        try:
            terminal = await self._stream(turn, request)
        except ClientGone:
            raise
        except Exception as exc:  # the turn's edge: a bug ends the turn as an error
            terminal = error_frame(
                failure(exc)["error"], "turn", run_id=turn.run_id, session_id=turn.session_id
            )
        # Over before its last frame is sent: a cancel from now on finds no turn, and
        # the next query may start one (its frames queue behind this one).
        if self._turn is turn:
            self._turn = None
        await self.send(terminal)

    async def _stream(self, turn: _Turn, request: dict[str, Any]) -> dict[str, Any]:
        try:
            events = await self.open_run(request)
        except AstromeshError as exc:
            return error_frame(exc.to_dict(), "turn", session_id=turn.session_id)
        turn.run_id = events.run_id
        terminal: dict[str, Any] | None = None
        async with events:
            try:
                async for event in events:
                    frame = event_frame(event)
                    if frame["type"] == "done":
                        terminal = frame
                        continue
                    await self.send(frame)  # pull the next event once this one is out
            except AstromeshError as exc:
                return error_frame(
                    exc.to_dict(), "turn", run_id=turn.run_id, session_id=turn.session_id
                )
        if terminal is None:
            raise RunError(f"run {turn.run_id}: its event stream ended without a result")
        return terminal

    async def _heartbeats(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.heartbeat_s)
                await self.send(HEARTBEAT_FRAME)
        except ClientGone:
            return

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _stop_all(self) -> None:
        """Cancel the running turn (which stops its run) and the heartbeats, and wait
        for them; a turn's own failure other than the client leaving is re-raised."""
        self._turn = None
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None and not isinstance(error, ClientGone):
                raise error
