"""``ServeTaskRunner``: a pattern's tasks on any replica of the agent's own application.

A plan step or a fan-out branch (``core/tasks.py``) crosses the Ray hop as a plain
dict (``TaskRequest.to_dict``) to ``AgentDeployment.task`` of the agent's own
application, by handle: Serve's router spreads concurrent tasks over the replicas
(the one running the run included: replicas are async, so calling your own
deployment does not deadlock).  A run holds one of its replica's
``max_ongoing_requests`` while its tasks wait for theirs: when runs alone fill every
replica, their tasks queue until the runs' deadlines.  The result comes back as a
value (``serve/outcome.py``) and is typed again; the task's own failure is in it,
not raised.  A task the run gives up on (its deadline, a failed sibling under
``fail_fast``) is cancelled where it runs.
"""

from __future__ import annotations

from astromesh_ray.core.tasks import TaskRequest, TaskResult
from astromesh_ray.serve.peers import ServePeer


class ServeTaskRunner:
    """Tasks of agent ``agent``, run on whichever replica of its application Serve's
    router picks."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self._app = ServePeer(agent)  # the same application, its ``task`` method

    async def run(self, request: TaskRequest) -> TaskResult:
        return TaskResult.from_dict(await self._app.call("task", request.to_dict()))
