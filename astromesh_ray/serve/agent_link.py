"""``AgentLink``: how route code calls a method of agent X's replica; one seam, two
bodies.

Route code (``RouteCore`` and what builds on it: ``agent_routes.py``, the gateway's
memory routes and protocols) asks for "method ``m`` of agent ``name``" (``run``,
``stream``, ``resume``, ``resume_stream``, ``paused``, ``health``, ``memory``,
``recent_trace``: ``AgentDeployment``'s methods) and gets what the method returns (an
outcome, ``serve/outcome.py``, for all but ``health`` and ``recent_trace``):

- ``HandleLink``, the gateway's: by Serve handle to the agent's application, looked
  up once; a call that cannot be delivered, or is not answered within its patience,
  raises ``AgentUnavailable`` (503) and the application is looked up again next time;
  our own code raising in the replica is a ``RunError`` (``handles.failure``).
- ``LocalLink``, an agent application's own routes: the replica's methods, in
  process (no Serve hop).  The agent bounds its own time (``timeout_seconds``), so no
  patience applies; there is nothing to be unreachable.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus

from astromesh_ray.errors import AgentNotFound, AgentUnavailable
from astromesh_ray.serve.handles import RAY_FAILURES, AppHandle, describe, failure, stream_outcomes

# An application in these states has no replica to answer: a call would queue
# until the client gives up.  (UNHEALTHY may still have serving replicas; if it
# has none, the call runs into the patience deadline.)
_DOWN = frozenset({ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.DELETING})
CALL_FAILURES: tuple[type[BaseException], ...] = (*RAY_FAILURES, TimeoutError)
"""A call to an agent's application that failed to deliver, or took too long."""


def unavailable(name: str, app: str, reason: str) -> AgentUnavailable:
    return AgentUnavailable(
        f"agent {name!r} is unavailable: its application {app!r} {reason}",
        hint="check `serve status`; redeploy the agent's application",
        agent=name,
        app=app,
    )


class AgentLink(Protocol):
    """Calls of agent ``name``'s methods (see the module docstring)."""

    async def call(self, name: str, method: str, *args: Any, patience_s: float) -> Any:
        """What ``method(*args)`` returns."""
        ...

    async def open(
        self, name: str, method: str, body: dict[str, Any], patience_s: float
    ) -> tuple[Any, AsyncIterator[Any]]:
        """Start streaming method ``method(body)``: its first item (awaited within
        ``patience_s``), and the rest (close it to stop the method early)."""
        ...


class HandleLink:
    """Agents' applications, by Serve handle (``apps``: agent name -> application)."""

    def __init__(self, apps: Mapping[str, str]) -> None:
        self._apps = dict(apps)
        self._handles: dict[str, DeploymentHandle[Any]] = {}

    async def handle(self, name: str) -> DeploymentHandle[Any]:
        """Agent ``name``'s application (a known agent's), looked up once."""
        app = self._apps[name]
        handle = self._handles.get(name)
        if handle is None:
            try:
                # serve.status() blocks on the controller: not on the event loop.
                status = (await asyncio.to_thread(serve.status)).applications.get(app)
                handle = await AppHandle(app).get()  # raises when the app does not exist
            except RAY_FAILURES as exc:
                raise failure(
                    exc, lambda e: unavailable(name, app, f"cannot be reached: {describe(e)}")
                ) from None
            if status is not None and status.status in _DOWN:
                raise unavailable(name, app, f"is {status.status.value}")
            self._handles[name] = handle
        return handle

    def failed(self, name: str, exc: BaseException, patience_s: float) -> Exception:
        """What ``exc`` (one of ``CALL_FAILURES``) means for the caller."""
        self._handles.pop(name, None)  # look the application up again next time
        app = self._apps[name]
        if isinstance(exc, TimeoutError):
            return unavailable(name, app, f"did not answer within {patience_s:g} s")
        return failure(exc, lambda e: unavailable(name, app, f"failed: {describe(e)}"))

    async def call(self, name: str, method: str, *args: Any, patience_s: float) -> Any:
        handle = await self.handle(name)
        try:
            return await asyncio.wait_for(getattr(handle, method).remote(*args), patience_s)
        except CALL_FAILURES as exc:
            raise self.failed(name, exc, patience_s) from None

    async def open(
        self, name: str, method: str, body: dict[str, Any], patience_s: float
    ) -> tuple[Any, AsyncIterator[Any]]:
        handle = await self.handle(name)
        app = self._apps[name]

        def failed(exc: BaseException) -> Exception:
            self._handles.pop(name, None)  # look the application up again next time
            return unavailable(name, app, f"failed: {describe(exc)}")

        outcomes = stream_outcomes(handle, method, body, failed)
        try:
            first = await asyncio.wait_for(anext(outcomes), patience_s)
        except TimeoutError as exc:  # the cancelled wait cancelled the remote call
            raise self.failed(name, exc, patience_s) from None
        return first, outcomes


class LocalLink:
    """The methods of ``replica`` (an ``AgentDeployment``), for the one agent it runs."""

    def __init__(self, replica: Any, agent: str) -> None:
        self._replica = replica
        self._agent = agent

    def _own(self, name: str) -> None:
        # Serve's proxy only sends this agent's prefix here; a path naming another
        # agent is refused rather than run as this one.
        if name != self._agent:
            raise AgentNotFound(
                f"no agent named {name!r} in the application of agent {self._agent!r}",
                hint=f"agent {name!r} is served at /v1/agents/{name}",
            )

    async def call(self, name: str, method: str, *args: Any, patience_s: float) -> Any:
        self._own(name)
        result = getattr(self._replica, method)(*args)
        return await result if inspect.isawaitable(result) else result

    async def open(
        self, name: str, method: str, body: dict[str, Any], patience_s: float
    ) -> tuple[Any, AsyncIterator[Any]]:
        self._own(name)
        outcomes: AsyncIterator[Any] = getattr(self._replica, method)(body)
        # The replica's stream methods yield an outcome before they end (an error as
        # one): there is always a first.
        return await anext(outcomes), outcomes
