"""``ServePeer``: another agent's Serve application as a ``Peer``.

The sub-run request crosses the Ray hop as a plain dict (``RunRequest.to_dict``),
with the trace parent, the remaining deadline and the call chain; the result comes
back as a value (``serve/outcome.py``) and is typed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import Event, RunResult, event_from_dict
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.errors import AgentUnavailable
from astromesh_ray.serve.handles import (
    RAY_FAILURES,
    AppHandle,
    agent_app_name,
    describe,
    failure,
    stream_outcomes,
)
from astromesh_ray.serve.outcome import unwrap


class ServePeer:
    """Peer agent ``agent``, reached by handle to its application."""

    def __init__(self, agent: str) -> None:
        self.name = agent
        self._app = AppHandle(agent_app_name(agent))

    def _unavailable(self, exc: BaseException) -> AgentUnavailable:
        self._app.forget()
        return AgentUnavailable(
            f"agent {self.name!r} is unavailable: its application {self._app.app!r} "
            f"failed: {describe(exc)}",
            hint="check `serve status`; redeploy the agent's application",
            agent=self.name,
            app=self._app.app,
        )

    async def call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``method`` of the agent's deployment with ``payload``, unwrapped (its errors
        raised as their type, Ray's as ``AgentUnavailable``).  Cancelled, it cancels
        the remote call too: awaiting a response does not stop the remote work."""
        try:
            handle = await self._app.get()
            response = getattr(handle, method).remote(payload)
            try:
                outcome = await response
            except asyncio.CancelledError:
                response.cancel()
                raise
        except RAY_FAILURES as exc:
            raise failure(exc, self._unavailable) from None
        result: dict[str, Any] = unwrap(outcome)
        return result

    async def run(self, request: RunRequest) -> RunResult:
        return RunResult.from_dict(await self.call("run", request.to_dict()))

    async def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        try:
            handle = await self._app.get()
        except RAY_FAILURES as exc:
            raise failure(exc, self._unavailable) from None
        outcomes = stream_outcomes(handle, "stream", request.to_dict(), self._unavailable)
        async with closing_stream(outcomes):  # stopped early: the peer's run stops too
            async for outcome in outcomes:
                yield event_from_dict(unwrap(outcome))
