"""``Peer``: another agent, run as a sub-run of this one.

A sub-run carries its parent's run id, the time left of the parent's deadline, the
trace position to parent its spans on, the chain of agents above it (``lineage``)
and, for a handoff, the conversation so far.  ``LocalPeer`` runs the other agent's
``AgentRuntime`` in this process (``astromesh run``, unit tests); the serve layer's
``ServePeer`` calls the other agent's Serve application by handle.  Either way the
caller gets a ``RunResult`` whose spans share its trace.

An agent calling itself, or a call that would close a cycle (A → B → A), is refused:
statically when the agents are built (``check_peer_graph``), and at run time from
the lineage (``sub_request``), which also catches cycles only a running system sees.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from astromesh_ray.core.context import Caller, RunRequest
from astromesh_ray.core.events import Event, RunResult
from astromesh_ray.core.messages import Message
from astromesh_ray.errors import ConfigError, RunError, RunLimitExceeded, RunTimeout

if TYPE_CHECKING:
    from astromesh_ray.core.runtime import AgentRuntime


@runtime_checkable
class Peer(Protocol):
    """Another agent.  Implementations: ``LocalPeer``, ``ServePeer``."""

    name: str

    async def run(self, request: RunRequest) -> RunResult:
        """Run one turn of the agent to its answer."""
        ...

    def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        """Run one turn, yielding its events; the last is ``run_finished``."""
        ...


class LocalPeer:
    """A peer whose runtime lives in this process, resolved on first use (so agents
    that call each other can be built in any order)."""

    def __init__(self, name: str, resolve: Callable[[], Awaitable[AgentRuntime]]) -> None:
        self.name = name
        self._resolve = resolve

    async def run(self, request: RunRequest) -> RunResult:
        runtime = await self._resolve()
        return await runtime.run(request)

    async def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        runtime = await self._resolve()
        async for event in runtime.stream(request):
            yield event


def sub_request(
    *,
    target: str,
    query: str,
    run_id: str,
    lineage: tuple[str, ...],
    remaining_s: float,
    trace_parent: str,
    caller: Caller,
    context: Mapping[str, Any] | None = None,
    history: list[Message] | None = None,
    session_id: str | None = None,
    max_iterations: int | None = None,
    handoffs: list[str] | None = None,
    continues: bool = False,
) -> RunRequest:
    """The request for a sub-run of ``target`` started by the last agent of
    ``lineage`` (run ``run_id``); refuses self-calls and cycles."""
    current = lineage[-1] if lineage else "?"
    if target in lineage:
        chain = " → ".join((*lineage[lineage.index(target) :], target))
        what = "call itself" if target == current else f"close a cycle ({chain})"
        raise RunError(
            f"agent {current!r} cannot call agent {target!r}: it would {what}",
            hint="an agent may not call itself or an agent above it in the call chain",
            run_id=run_id,
            reason="cycle",
        )
    if remaining_s <= 0:
        raise RunTimeout(
            f"agent {current!r} has no time left to call agent {target!r}",
            hint="raise spec.orchestration.timeout_seconds",
            run_id=run_id,
        )
    if max_iterations is not None and max_iterations <= 0:
        raise RunLimitExceeded(
            f"agent {current!r} has no model calls left (max_iterations) to call agent {target!r}",
            hint="raise spec.orchestration.max_iterations",
            run_id=run_id,
            reason="max_iterations",
        )
    return RunRequest(
        max_iterations=max_iterations,
        handoffs=list(handoffs or []),
        continues=continues,
        query=query,
        session_id=session_id,
        context=dict(context or {}),
        history=list(history or []),
        parent_run_id=run_id,
        trace_parent=trace_parent,
        deadline_s=remaining_s,
        lineage=lineage,
        caller=caller,
    )


def check_peer_graph(calls: Mapping[str, set[str]], known: set[str] | None = None) -> None:
    """Refuse peers that are unknown, an agent's own name, or part of a cycle.

    ``calls`` maps each agent to the agents it may call; ``known`` (default: the
    keys of ``calls``) is every agent that exists.  One ``ConfigError`` lists every
    problem.
    """
    known = set(calls) if known is None else known
    problems: list[str] = []
    for agent, peers in sorted(calls.items()):
        for peer in sorted(peers):
            if peer == agent:
                problems.append(f"agent {agent!r} calls itself")
            elif peer not in known:
                listed = ", ".join(sorted(known)) or "(none)"
                problems.append(
                    f"agent {agent!r} calls agent {peer!r}, which is not loaded (agents: {listed})"
                )
    seen: set[tuple[str, ...]] = set()
    for start in sorted(calls):
        for cycle in _cycles_from(start, calls):
            key = _canonical(cycle)
            if key not in seen:
                seen.add(key)
                problems.append("agents call each other in a cycle: " + " → ".join(cycle))
    if problems:
        raise ConfigError("\n".join(problems), problems=problems)


def _cycles_from(start: str, calls: Mapping[str, set[str]]) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []

    def walk(node: str, path: tuple[str, ...]) -> None:
        for peer in sorted(calls.get(node, ())):
            if peer == start and len(path) > 1:
                found.append((*path, start))
            elif peer not in path and peer in calls:
                walk(peer, (*path, peer))

    walk(start, (start,))
    return found


def _canonical(cycle: tuple[str, ...]) -> tuple[str, ...]:
    nodes = cycle[:-1]
    i = nodes.index(min(nodes))
    return nodes[i:] + nodes[:i]
