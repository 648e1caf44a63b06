"""What one run needs, kept apart from what it changes.

``RunRequest`` is what a caller asks (a query, a session, template context, and for
a sub-run where it comes from).  ``RunContext`` is fixed for the whole run: models by
role, the tool index, peers, session, caller, deadline and trace position.
``TurnState`` is what the run builds up: the transcript, the steps, usage and the
answer.  Patterns read the context and change only the state, through the shared
steps (``core/steps/``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from astromesh_ray.core.messages import Message, Usage
from astromesh_ray.core.trace import Trace, TraceContext
from astromesh_ray.errors import InvalidRequest, RunError

if TYPE_CHECKING:
    from astromesh_ray.core.events import Event, RunResult, Step
    from astromesh_ray.core.guardrails.budget import RunBudget
    from astromesh_ray.core.memory.base import VectorHit
    from astromesh_ray.core.peers import Peer
    from astromesh_ray.core.providers.base import Provider
    from astromesh_ray.core.tasks import TaskRunner
    from astromesh_ray.core.tools.index import ToolIndex

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
"""What a session id may be: 1–128 characters, letters, digits and ``. _ : @ -``,
starting with a letter or digit (safe in keys, file names and URLs)."""

STORED_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,160}$")
"""A session id as stored: a client's, maybe behind its API key's ``<key id>@``
(``core/auth.py``; key ids are at most 32 characters)."""


def check_session_id(session: str, field: str = "session_id", *, client: bool = False) -> str:
    """``session`` if it is a valid session id (``client``: as a client sends it;
    else as stored), else ``InvalidRequest`` naming ``field``."""
    pattern = SESSION_ID if client else STORED_SESSION_ID
    if not isinstance(session, str) or not pattern.fullmatch(session):
        raise InvalidRequest(
            f"invalid {field} {str(session)[:40]!r}",
            hint="1 to 128 characters: letters, digits and . _ : @ -, starting with a "
            "letter or digit",
            field=field,
        )
    return session


# Names the prompt templates get from the runtime: a request `context` key with one
# of them would be silently shadowed, so it is refused instead.
RESERVED_CONTEXT_KEYS = ("query", "memory", "knowledge", "context")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked for the run (an API key's identity once keys exist; ``anonymous``
    on an open loopback server and in ``astromesh run``)."""

    id: str = "anonymous"
    scopes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "scopes": list(self.scopes)}

    @staticmethod
    def from_dict(data: Mapping[str, Any] | None) -> Caller:
        if not data:
            return ANONYMOUS
        return Caller(str(data.get("id") or "anonymous"), tuple(data.get("scopes") or ()))


ANONYMOUS = Caller()


@dataclass(slots=True)
class RunRequest:
    """What a caller asks of an agent.

    A top-level request has a query, maybe a session and template ``context``.  A
    sub-run (another agent calling this one) also says who started it
    (``parent_run_id``), the trace position to parent on (``trace_parent``, a W3C
    ``traceparent``), how many seconds of the caller's deadline are left
    (``deadline_s``), the agents up the call chain (``lineage``) and, for a handoff,
    the conversation so far (``history``).
    """

    query: str
    session_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    history: list[Message] = field(default_factory=list)
    parent_run_id: str | None = None
    trace_parent: str | None = None
    deadline_s: float | None = None
    lineage: tuple[str, ...] = ()
    caller: Caller = ANONYMOUS
    # The model calls the caller has left for this sub-run (``max_iterations`` counted
    # across sub-runs); ``None``: the agent's own limit.
    max_iterations: int | None = None
    # A swarm member's turn: the members it may hand the conversation to, and
    # ``continues``: ``history`` already holds the user's message (the conversation
    # so far), so none is added after it.
    handoffs: list[str] = field(default_factory=list)
    continues: bool = False

    def check(self) -> None:
        """Refuse what the runtime cannot honour (``InvalidRequest``, HTTP 422)."""
        if self.session_id is not None:
            check_session_id(self.session_id)
        shadowed = [k for k in RESERVED_CONTEXT_KEYS if k in self.context]
        if shadowed:
            raise InvalidRequest(
                "context keys "
                + ", ".join(map(repr, shadowed))
                + " are reserved: prompts get them from the runtime",
                hint="rename them; the reserved names are " + ", ".join(RESERVED_CONTEXT_KEYS),
                field="context." + shadowed[0],
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "session_id": self.session_id,
            "context": self.context,
            "history": [m.to_dict() for m in self.history],
            "parent_run_id": self.parent_run_id,
            "trace_parent": self.trace_parent,
            "deadline_s": self.deadline_s,
            "lineage": list(self.lineage),
            "caller": self.caller.to_dict(),
            "max_iterations": self.max_iterations,
            "handoffs": list(self.handoffs),
            "continues": self.continues,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RunRequest:
        return RunRequest(
            query=str(data["query"]),
            session_id=data.get("session_id"),
            context=dict(data.get("context") or {}),
            history=[Message.from_dict(m) for m in data.get("history") or []],
            parent_run_id=data.get("parent_run_id"),
            trace_parent=data.get("trace_parent"),
            deadline_s=data.get("deadline_s"),
            lineage=tuple(data.get("lineage") or ()),
            caller=Caller.from_dict(data.get("caller")),
            max_iterations=data.get("max_iterations"),
            handoffs=[str(h) for h in data.get("handoffs") or []],
            continues=bool(data.get("continues")),
        )


@dataclass(frozen=True, slots=True)
class RunContext:
    """Everything fixed for one run.  ``deadline`` is event-loop time.  Its
    ``request`` is the run's own copy: input guardrails redact ``request.query``
    in place, so everything after them sees the clean message."""

    run_id: str
    agent: str
    request: RunRequest
    models: Mapping[str, Provider]
    tools: ToolIndex
    peers: Mapping[str, Peer]
    deadline: float
    trace: TraceContext  # the run span: what steps parent their spans on by default
    lineage: tuple[str, ...]  # agents up the call chain, this one last
    max_iterations: int
    parameters: Mapping[str, Any]
    stream_tokens: bool
    # True when one timeout already bounds the whole run (``AgentRuntime.run``): the
    # steps then skip their own per-wait deadline.
    bounded: bool
    # True when the deadline is what a calling agent had left, not timeout_seconds.
    deadline_from_caller: bool
    where: Mapping[str, str]
    # Where the pattern's tasks (plan steps, branches) run: this process, or any
    # replica of the agent's application (``core/tasks.py``).
    tasks: TaskRunner
    # ``spec.output_schema`` as a JSON Schema: the final answer's shape.
    output_schema: Mapping[str, Any] | None = None
    # Set for a task's context: which task its events belong to.
    task: str | None = None
    # The agent's cost caps for this run (``cost_limit``): checked around every
    # model call (``core/guardrails/budget.py``).
    budget: RunBudget | None = None

    @property
    def session_id(self) -> str | None:
        return self.request.session_id

    @property
    def caller(self) -> Caller:
        return self.request.caller

    def model(self, role: str) -> Provider:
        """The routed model of ``role`` (``reasoner``, ``planner``, ``executor``, ...)."""
        try:
            return self.models[role]
        except KeyError:
            raise RunError(
                f"agent {self.agent!r} has no model for role {role!r}",
                hint="roles built for it: " + ", ".join(sorted(self.models)),
                run_id=self.run_id,
            ) from None

    def peer(self, name: str) -> Peer:
        """The peer agent ``name``."""
        try:
            return self.peers[name]
        except KeyError:
            raise RunError(
                f"agent {self.agent!r} has no peer agent {name!r}",
                hint="peers: " + (", ".join(sorted(self.peers)) or "(none)"),
                run_id=self.run_id,
            ) from None

    def remaining_s(self) -> float:
        """Seconds left before the deadline (negative once it passed)."""
        return self.deadline - asyncio.get_running_loop().time()

    def iterations_left(self, state: TurnState) -> int:
        """Model calls the run may still make."""
        return max(0, self.max_iterations - state.iterations)


@dataclass(slots=True)
class Recall:
    """What memory brought to a turn (the ``memory`` prepare stage): the session's
    history to replay, the running summary of what came before it, and the items
    semantic recall found for the query."""

    history: list[Message] = field(default_factory=list)
    summary: str | None = None
    semantic: list[VectorHit] = field(default_factory=list)


@dataclass(slots=True)
class TurnState:
    """What a run builds up.  ``messages`` is the transcript; once the run has
    answered it ends with the final assistant message, so it can be saved as is."""

    trace: Trace
    messages: list[Message] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    answer: str | None = None
    data: Any = None  # the structured answer (spec.output_schema), once validated
    # What the run is doing, when a pattern says (a pipeline stage): a timeout of the
    # whole turn names it.
    doing: str | None = None
    iterations: int = 0  # model calls made, counted against max_iterations
    recall: Recall = field(default_factory=Recall)
    # Where this turn's own messages start in ``messages`` (after the system prompt
    # and the replayed history): what the memory stage stores.
    turn_start: int = 0
    # Streams a step has open: the runtime closes them if the run is abandoned.
    open_streams: list[AsyncIterator[Any]] = field(default_factory=list)
    # Events a prepare stage produced (guardrail actions), sent after run_started.
    announce: list[Event] = field(default_factory=list)
    # The answer an input guardrail gave instead of the pattern (a refused topic):
    # the model is not called.
    refusal: str | None = None
    # The answer the caller gets when it differs from the one stored (``restore``
    # of redacted PII); None: ``answer``.
    delivered: str | None = None

    def on_abandon(self, stream: AsyncIterator[Any]) -> None:
        """Have the runtime close ``stream`` if the run ends while it is open."""
        self.open_streams.append(stream)

    def forget(self, stream: AsyncIterator[Any]) -> None:
        """``stream`` was closed by its step."""
        self.open_streams.remove(stream)


def turn_result(ctx: RunContext, state: TurnState, **fields: Any) -> RunResult:
    """The ``RunResult`` of a turn as it stands (answered, paused or handed off):
    its transcript, steps, usage, model calls, trace and structured answer;
    ``fields`` add or override (``status``, ``pending``, ``handoff_to``...)."""
    from astromesh_ray.core.events import RunResult

    values: dict[str, Any] = {
        "run_id": ctx.run_id,
        "agent": ctx.agent,
        "answer": (state.delivered if state.delivered is not None else state.answer) or "",
        "steps": state.steps,
        "usage": state.usage,
        "trace": state.trace.spans,
        "trace_id": state.trace.trace_id,
        "session_id": ctx.session_id,
        "parent_run_id": ctx.request.parent_run_id,
        "messages": state.messages,
        "where": dict(state.trace.where),
        "data": state.data,
        "iterations": state.iterations,
    }
    values.update(fields)
    return RunResult(**values)
