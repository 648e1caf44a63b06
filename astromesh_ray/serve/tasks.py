"""``ServeTaskRunner``: a pattern's tasks on any replica of the agent's own application.

A plan step or a fan-out branch (``core/tasks.py``) crosses the Ray hop as a plain
dict (``TaskRequest.to_dict``) to ``AgentDeployment.task`` of the agent's own
application, by handle: Serve's router spreads concurrent tasks over the replicas
(the one running the run included: replicas are async, so calling your own
deployment does not deadlock).  A run holds one of its replica's
``max_ongoing_requests`` while its tasks wait for theirs: when runs alone fill every
replica, their tasks queue until the runs' deadlines.  The result comes back as a
value (``serve/outcome.py``) and is typed again; the task's own failure is in it,
not raised.
"""

from __future__ import annotations

import asyncio

from astromesh_ray.core.tasks import TaskRequest, TaskResult
from astromesh_ray.errors import AgentUnavailable
from astromesh_ray.serve.handles import RAY_FAILURES, AppHandle, agent_app_name, describe, failure
from astromesh_ray.serve.outcome import unwrap


class ServeTaskRunner:
    """Tasks of agent ``agent``, run on whichever replica of its application Serve's
    router picks."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self._app = AppHandle(agent_app_name(agent))

    def _unavailable(self, exc: BaseException) -> AgentUnavailable:
        self._app.forget()
        return AgentUnavailable(
            f"agent {self.agent!r} could not run a task: its application {self._app.app!r} "
            f"failed: {describe(exc)}",
            hint="check `serve status`; redeploy the agent's application",
            agent=self.agent,
            app=self._app.app,
        )

    async def run(self, request: TaskRequest) -> TaskResult:
        try:
            handle = await self._app.get()
            response = handle.task.remote(request.to_dict())
            try:
                outcome = await response
            except asyncio.CancelledError:
                # The run gave up on the task (its deadline, a failed sibling under
                # fail_fast): awaiting a response does not stop the remote call itself.
                response.cancel()  # type: ignore[no-untyped-call]
                raise
        except RAY_FAILURES as exc:
            raise failure(exc, self._unavailable) from None
        return TaskResult.from_dict(unwrap(outcome))
