"""What a run reports: typed steps, typed events and the final result.

``Event`` is one discriminated union (by ``type``).  Its JSON Schema
(``event_json_schema``, printed by ``astromesh schema --kind Event``) is the one
contract for every stream a client sees: SSE, WebSocket and OpenAI-style streams are
adapters over it at the API edge.  ``Step`` is the union of what a run records in
``RunResult.steps``; every recorded step is also streamed as a ``step`` event.

Patterns never build these by hand: the shared steps (``core/steps/``) and the
runtime do.  Events are frozen slotted dataclasses (cheap to create: a run makes
several per model call); they become JSON only at the edge (``event_to_dict``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, PlainSerializer, TypeAdapter, WithJsonSchema
from typing_extensions import TypedDict

from astromesh_ray.core.messages import Message, Usage
from astromesh_ray.core.records import (  # the steps, re-exported with the events
    _CONFIG,
)
from astromesh_ray.core.records import (
    AnswerStep as AnswerStep,
)
from astromesh_ray.core.records import (
    ChainStepRecord as ChainStepRecord,
)
from astromesh_ray.core.records import (
    DelegateStep as DelegateStep,
)
from astromesh_ray.core.records import (
    HandoffStep as HandoffStep,
)
from astromesh_ray.core.records import (
    PlannedTask as PlannedTask,
)
from astromesh_ray.core.records import (
    PlanStep as PlanStep,
)
from astromesh_ray.core.records import (
    Step as Step,
)
from astromesh_ray.core.records import (
    TaskKind as TaskKind,
)
from astromesh_ray.core.records import (
    TaskStep as TaskStep,
)
from astromesh_ray.core.records import (
    ThoughtStep as ThoughtStep,
)
from astromesh_ray.core.records import (
    ToolStep as ToolStep,
)
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import AstromeshError


class UsageDict(TypedDict):
    """Token counts and cost, as sent to clients."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    calls: int
    cost_usd: float


class SpanDict(TypedDict):
    """One span of the run's trace, as sent to clients."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_time: float
    duration_ms: float | None
    status: Literal["ok", "error"]
    error: str | None
    where: dict[str, str]
    attributes: dict[str, Any]


# Usage and spans serialize through their own ``to_dict``; the schema of what that
# returns is given explicitly (a TypedDict as `return_type` trips a pydantic bug
# when the same one is used by several fields).
UsageField = Annotated[
    Usage,
    PlainSerializer(lambda u: u.to_dict(), return_type=dict[str, Any]),
    WithJsonSchema(TypeAdapter(UsageDict).json_schema(), mode="serialization"),
]
SpanField = Annotated[
    Span,
    PlainSerializer(lambda s: s.to_dict(), return_type=dict[str, Any]),
    WithJsonSchema(TypeAdapter(SpanDict).json_schema(), mode="serialization"),
]


# -- the result of a run --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingToolCall:
    """A tool call the run waits on: the caller runs it (``kind: client``, then posts
    its result) or decides on it (``kind: approval``, then approves or rejects it)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    id: str
    name: str
    arguments: dict[str, Any]
    kind: Literal["client", "approval"]
    iteration: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "arguments": self.arguments,
            "kind": self.kind,
            "iteration": self.iteration,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> PendingToolCall:
        return PendingToolCall(
            id=str(data["id"]),
            name=str(data["name"]),
            arguments=dict(data.get("arguments") or {}),
            kind=data["kind"],
            iteration=int(data.get("iteration") or 0),
        )


@dataclass(slots=True, kw_only=True)
class RunResult:
    """The outcome of one turn.  ``status`` is ``completed`` (``answer`` is set),
    ``requires_action``: the run is paused on the tool calls in ``pending`` (its
    ``answer`` is empty) until the caller posts their results or decisions, or
    ``handoff``: a swarm member's turn passed control to ``handoff_to``."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    run_id: str
    agent: str
    answer: str
    steps: list[Step]
    usage: UsageField
    trace: list[SpanField]
    trace_id: str
    session_id: str | None = None
    parent_run_id: str | None = None
    # The transcript of the turn: the prompt, tool calls and results, and the final
    # assistant message (what memory saves).
    messages: list[Message] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)  # where the agent itself ran
    status: Literal["completed", "requires_action", "handoff"] = "completed"
    pending: list[PendingToolCall] = field(default_factory=list)
    # The structured answer (``spec.output_schema``), parsed and validated.
    data: Any = None
    iterations: int = 0  # model calls spent, sub-runs included
    # status ``handoff`` (a swarm member): the member control passes to, and why.
    handoff_to: str | None = None
    handoff_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what the API returns)."""
        data: dict[str, Any] = _adapters().result.dump_python(self, mode="json")
        return data

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RunResult:
        """Rebuild a result sent as a value (a peer's sub-run over Ray)."""
        return RunResult(
            run_id=str(data["run_id"]),
            agent=str(data["agent"]),
            answer=str(data["answer"]),
            steps=_adapters().steps.validate_python(data.get("steps") or []),
            usage=Usage(
                **{k: v for k, v in dict(data.get("usage") or {}).items() if k != "total_tokens"}
            ),
            trace=[Span.from_dict(s) for s in data.get("trace") or []],
            trace_id=str(data.get("trace_id") or ""),
            session_id=data.get("session_id"),
            parent_run_id=data.get("parent_run_id"),
            messages=[Message.from_dict(m) for m in data.get("messages") or []],
            where=dict(data.get("where") or {}),
            status=data.get("status") or "completed",
            pending=[PendingToolCall.from_dict(p) for p in data.get("pending") or []],
            data=data.get("data"),
            iterations=int(data.get("iterations") or 0),
            handoff_to=data.get("handoff_to"),
            handoff_reason=str(data.get("handoff_reason") or ""),
        )


# -- events ---------------------------------------------------------------------------

Channel = Literal["answer", "reasoning", "tool_args"]
"""What a streamed token is: answer text, the model's separate reasoning, or a
fragment of a tool call's arguments."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted:
    """A run began."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    run_id: str
    agent: str
    session_id: str | None
    trace_id: str
    parent_run_id: str | None = None
    type: Literal["run_started"] = "run_started"


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    """A piece of a streamed model answer."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    text: str
    channel: Channel
    iteration: int
    role: str
    tool_index: int | None = None  # which tool call of the answer (channel tool_args)
    task: str | None = None  # a swarm member's name: the member holding control
    type: Literal["token"] = "token"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCall:
    """A model call ended: which provider answered, what it cost, where it ran."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    role: str
    provider: str
    model: str
    usage: UsageField
    finish_reason: str
    duration_ms: float
    span_id: str
    where: dict[str, str]
    task: str | None = None  # the plan step, branch or stage it belongs to
    type: Literal["model_call"] = "model_call"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallEvent:
    """The model asked for a tool call (it runs next)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    id: str
    name: str
    arguments: dict[str, Any]
    task: str | None = None  # the plan step, branch or stage it belongs to
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResultEvent:
    """A tool call ended; ``content`` is what the model reads next."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    id: str
    name: str
    content: str
    is_error: bool
    duration_ms: float
    sub_run_id: str | None = None
    task: str | None = None  # the plan step, branch or stage it belongs to
    type: Literal["tool_result"] = "tool_result"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepEvent:
    """A step was recorded in the run's ``steps``."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    step: Step
    type: Literal["step"] = "step"


@dataclass(frozen=True, slots=True, kw_only=True)
class Delegate:
    """A sub-run of another agent started."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    peer: str
    query: str
    span_id: str | None = None
    call_id: str | None = None  # the supervisor's tool call that delegates
    type: Literal["delegate"] = "delegate"


@dataclass(frozen=True, slots=True, kw_only=True)
class Handoff:
    """The conversation and control passed to another agent."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    from_agent: str
    to_agent: str
    reason: str
    type: Literal["handoff"] = "handoff"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanEvent:
    """The planner wrote a plan (``attempt`` > 1: a re-plan)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    attempt: int
    steps: list[PlannedTask]
    type: Literal["plan"] = "plan"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStarted:
    """A plan step, fan-out branch or pipeline stage started."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    id: str
    kind: TaskKind
    name: str
    input: str
    type: Literal["task_started"] = "task_started"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFinished:
    """A plan step, fan-out branch or pipeline stage ended (its ``task`` step has
    the details)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    id: str
    kind: TaskKind
    name: str
    is_error: bool
    output: str
    where: dict[str, str]
    duration_ms: float
    type: Literal["task_finished"] = "task_finished"


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardrailEvent:
    """A guardrail acted on input or output: ``detail`` says what it found by kind
    and count (``2 EMAIL_ADDRESS``), never the text itself."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    guardrail: str
    stage: Literal["input", "output"]
    action: Literal["block", "redact", "warn", "truncate"]
    detail: str
    type: Literal["guardrail"] = "guardrail"


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent:
    """The run failed; the last event of a failed stream.  ``error`` is the API's
    error body: ``code``, ``message``, ``hint`` and details (``run_id``, ``trace``...)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    error: dict[str, Any]
    type: Literal["error"] = "error"

    @staticmethod
    def from_error(exc: AstromeshError) -> ErrorEvent:
        return ErrorEvent(error=exc.to_dict())


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished:
    """The run ended with ``result``; the last event of a successful stream."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    result: RunResult
    type: Literal["run_finished"] = "run_finished"


Event = Annotated[
    RunStarted
    | Token
    | ModelCall
    | ToolCallEvent
    | ToolResultEvent
    | StepEvent
    | Delegate
    | Handoff
    | PlanEvent
    | TaskStarted
    | TaskFinished
    | GuardrailEvent
    | ErrorEvent
    | RunFinished,
    Field(discriminator="type"),
]
"""Everything a run streams, discriminated by ``type``."""


@dataclass(frozen=True)
class _Adapters:
    events: TypeAdapter[Event]
    steps: TypeAdapter[list[Step]]
    result: TypeAdapter[RunResult]


@functools.cache
def _adapters() -> _Adapters:
    # Built on first use: a replica that never serializes pays nothing at import.
    return _Adapters(TypeAdapter(Event), TypeAdapter(list[Step]), TypeAdapter(RunResult))


def event_to_dict(event: Event) -> dict[str, Any]:
    """An event as JSON-able data: ``{"type": ..., <its fields>}``."""
    data: dict[str, Any] = _adapters().events.dump_python(event, mode="json")
    return data


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """An event sent as data (a peer's stream over Ray), typed again."""
    if data.get("type") == "run_finished":
        return RunFinished(result=RunResult.from_dict(data["result"]))
    return _adapters().events.validate_python(data)


@functools.cache
def event_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one streamed event."""
    schema: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(_adapters().events.json_schema(mode="serialization"))
    schema["title"] = "Event"
    schema["description"] = (
        "One event of an astromesh-ray run stream (SSE, WebSocket, OpenAI-style "
        "streaming), discriminated by `type`."
    )
    return schema
