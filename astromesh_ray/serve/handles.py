"""The one place a Serve application is looked up by name, called, and its failures
named.

Provider deployments, peer agents, the gateway's agents and the breaker actor's
health probes all reach applications through ``AppHandle``: looked up on first use
(``serve deploy`` starts applications in any order; the lookup asks the controller,
so it runs off the event loop), forgotten after a failure so a redeployed application
is found again.  ``RAY_FAILURES`` are the exceptions that mean "the application
could not be reached or its replica died", as opposed to a bug in our own code;
``stream`` guards a streamed call the same way everywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

RAY_FAILURES: tuple[type[BaseException], ...] = (RayError, RayServeException)
"""Ray or Serve failing a call: no such application, no replica, back-pressure, a
replica that died mid-call, or (``RayTaskError``) code raising in the replica.
``failure`` tells them apart."""


def failure(exc: BaseException, unavailable: Callable[[BaseException], Exception]) -> Exception:
    """What a Ray failure means for the caller: ``unavailable(exc)`` when the
    application could not be reached or its replica died (a provider to fall back
    from, an agent to report as 503); a ``RunError`` when our own code raised inside
    the replica, which is a bug, not the application being away."""
    from astromesh_ray.errors import RunError

    if isinstance(exc, RayTaskError):
        return RunError(
            f"internal error in a Serve replica: {describe(exc)}",
            hint="see the replica's log for the traceback",
        )
    return unavailable(exc)


def describe(exc: BaseException) -> str:
    """A one-line account of a Ray failure (its messages can carry whole remote
    tracebacks: keep the first line)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


class AppHandle:
    """A handle to Serve application ``app``, looked up lazily."""

    __slots__ = ("_handle", "app")

    def __init__(self, app: str) -> None:
        self.app = app
        self._handle: DeploymentHandle[Any] | None = None

    async def get(self) -> DeploymentHandle[Any]:
        """The handle; raises ``RayServeException`` when the application does not exist."""
        if self._handle is None:
            # A lookup at the Serve controller blocks: not on the event loop.
            self._handle = await asyncio.to_thread(serve.get_app_handle, self.app)
        return self._handle

    def forget(self) -> None:
        """Look the application up again next time (it may have been redeployed)."""
        self._handle = None

    def __getstate__(self) -> dict[str, Any]:
        return {"app": self.app, "_handle": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.app = state["app"]
        self._handle = None


async def stream_outcomes(
    handle: DeploymentHandle[Any],
    method: str,
    body: Any,
    failed: Callable[[BaseException], Exception],
) -> AsyncIterator[Any]:
    """The outcomes ``handle.<method>`` streams for ``body``.  A Ray failure while
    starting or waiting becomes ``failure(exc, failed)``; what the consumer throws in
    at ``yield`` is not guarded (it is not the application failing).  A consumer that
    stops early (and closes this generator) cancels the remote call."""
    try:
        call = getattr(handle.options(stream=True), method)
        outcomes = cast(DeploymentResponseGenerator[Any], call.remote(body))
    except RAY_FAILURES as exc:
        raise failure(exc, failed) from None
    done = False
    try:
        while True:
            try:
                outcome = await outcomes.__anext__()
            except StopAsyncIteration:
                done = True
                return
            except RAY_FAILURES as exc:
                done = True
                raise failure(exc, failed) from None
            yield outcome
    finally:
        if not done:
            # The consumer stopped early: stop the replica's generator too (a model
            # generating for nobody, a peer running on).
            outcomes.cancel()  # type: ignore[no-untyped-call]


def agent_app_name(agent: str) -> str:
    """The Serve application of agent ``agent``."""
    return f"agent-{agent}"
