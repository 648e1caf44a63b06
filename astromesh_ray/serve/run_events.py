"""``RunEvents``: one run's events as the gateway receives them from the agent's
application, for every protocol that streams (SSE, WebSocket, OpenAI chunks, A2A,
AG-UI) to translate.

    events = await gateway.open_run(name, body, traceparent)   # errors before the
    async with events:                                          # first event raise
        async for event in events:      # dicts (``event_to_dict``); the last is
            ...                         # run_finished, or AstromeshError is raised

The gateway's span is ended with the run and put first in the result's (or the
error's) ``trace``; the ``RunObserver`` (the gateway's telemetry) hears of the
first token and of the run's end, once: finished, failed, or cancelled.  Leaving
the ``async with`` early (a client gone, a cancel) closes the stream, which
cancels the run in the agent replica and with it the model call it was streaming.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol

from astromesh_ray.core.events import ErrorEvent, event_to_dict
from astromesh_ray.core.streams import aclose
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import AstromeshError
from astromesh_ray.serve.outcome import unwrap


def prepend(body: dict[str, Any], span: Span) -> None:
    """Put the gateway's span first in a result's (or an error's) ``trace``."""
    trace = body.get("trace")
    if isinstance(trace, list):
        trace.insert(0, span.to_dict())


class RunObserver(Protocol):
    """Told how a streamed run goes (``serve/telemetry.py``'s ``RunRecord``); only
    the first of ``finished``/``failed``/``cancelled`` counts."""

    def first_token(self) -> None: ...
    def finished(self, result: dict[str, Any]) -> None: ...
    def failed(self, error: BaseException) -> None: ...
    def cancelled(self) -> None: ...


class RunEvents:
    """The events of one run, streamed; iterate once."""

    def __init__(
        self,
        first: dict[str, Any],
        outcomes: AsyncIterator[Any],
        span: Span,
        observer: RunObserver | None = None,
    ) -> None:
        self.first = first  # run_started (already received)
        self.span = span
        self._outcomes = outcomes
        self._observer = observer
        self.result: dict[str, Any] | None = None  # run_finished's result, once seen

    @property
    def run_id(self) -> str:
        return str(self.first.get("run_id", ""))

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        yield self.first
        try:
            async for outcome in self._outcomes:
                event: dict[str, Any] = unwrap(outcome)
                kind = event.get("type")
                if kind == "token" and self._observer is not None:
                    self._observer.first_token()
                elif kind == "run_finished":
                    self.span.end()
                    prepend(event["result"], self.span)
                    self.result = event["result"]
                    if self._observer is not None:
                        self._observer.finished(event["result"])
                yield event
        except AstromeshError as exc:
            self.span.end(exc.message)
            prepend(exc.details, self.span)
            if self._observer is not None:
                self._observer.failed(exc)
            raise

    async def aclose(self) -> None:
        """Stop the run (if it still runs) and release its stream."""
        if self.span.duration_ms is None:
            self.span.end("cancelled")
        if self._observer is not None:
            self._observer.cancelled()  # nothing when the run already ended
        await aclose(self._outcomes)

    async def __aenter__(self) -> RunEvents:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def error_event(exc: AstromeshError) -> dict[str, Any]:
    """The ``error`` event a stream ends with when the run failed after it started."""
    return event_to_dict(ErrorEvent.from_error(exc))


async def sse_events(events: RunEvents) -> AsyncIterator[str]:
    """A run's events as Server-Sent Events (``event: <type>``, ``data: <json>``); a
    failure after the first event is an ``error`` event."""
    async with events:
        try:
            async for event in events:
                yield sse(event)
        except AstromeshError as exc:
            yield sse(error_event(exc))


def sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
