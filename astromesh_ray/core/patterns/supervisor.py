"""Supervisor: a model that delegates to worker agents through native tool calls.

Workers are other agents (``orchestration.workers`` and the agent's ``type: agent``
tools); each is offered as a tool taking ``{"query"}``.  A call to one is a sub-run
of that agent through its ``Peer`` (under Serve: the worker's own application),
announced by a ``delegate`` event; several calls in one answer run at once.  The
supervisor reads the workers' answers and delegates again or answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Delegate, Event
from astromesh_ray.core.messages import ToolCall
from astromesh_ray.core.patterns.react import tool_loop


class SupervisorPattern:
    """Delegate (in parallel when asked) → read → answer."""

    name = "supervisor"
    roles: tuple[str, ...] = ("supervisor",)
    final_role = "supervisor"

    def __init__(self, workers: dict[str, str]) -> None:
        self.workers = dict(workers)  # tool name -> agent

    def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]:
        def announce(calls: list[ToolCall]) -> list[Event]:
            events: list[Event] = []
            for call in calls:
                name = call.name
                if name in self.workers:
                    query = str(call.arguments.get("query", ""))
                    events.append(
                        Delegate(
                            iteration=state.iterations,
                            peer=self.workers[name],
                            query=query,
                            call_id=call.id,
                        )
                    )
            return events

        return tool_loop(ctx, state, "supervisor", final=True, before_round=announce)
