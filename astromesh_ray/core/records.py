"""What a run records as its steps (``RunResult.steps``): one discriminated union,
``Step``.  Every recorded step is also streamed as a ``step`` event
(``core/events.py``, which re-exports these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field

# Serialization: every field is present in what is sent, so the schema marks them
# all required (defaults are for the constructor, not for clients).
_CONFIG = ConfigDict(json_schema_serialization_defaults_required=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThoughtStep:
    """Text the model wrote alongside tool calls (its reasoning before acting)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    role: str
    content: str
    task: str | None = None  # the plan step, branch or stage it belongs to
    type: Literal["thought"] = "thought"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStep:
    """One tool call and its result."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    id: str
    tool: str
    arguments: dict[str, Any]
    result: str
    is_error: bool
    duration_ms: float
    sub_run_id: str | None = None  # set when the tool was another agent
    task: str | None = None  # the plan step, branch or stage it belongs to
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True, kw_only=True)
class DelegateStep:
    """A sub-run of another agent (a peer) and what it answered."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    peer: str
    query: str
    sub_run_id: str
    answer: str
    type: Literal["delegate"] = "delegate"


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffStep:
    """Control of the conversation passed to another agent, which answered."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    to_agent: str
    reason: str
    sub_run_id: str
    type: Literal["handoff"] = "handoff"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedTask:
    """One step of a plan (``plan_and_execute``)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    id: str
    task: str
    tool: str | None = None
    worker: str | None = None
    depends_on: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanStep:
    """A plan the planner wrote (``attempt`` 1, or more after a re-plan)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    attempt: int
    steps: list[PlannedTask]
    type: Literal["plan"] = "plan"


TaskKind = Literal["plan_step", "branch", "stage"]
"""What a task of a pattern is: a plan step, a fan-out branch or a pipeline stage."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStep:
    """A plan step, fan-out branch or pipeline stage that ended: its output (or
    error), the model calls it spent, and where and when it ran."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    id: str
    kind: TaskKind
    name: str
    input: str
    output: str
    is_error: bool
    iterations: int
    where: dict[str, str]
    start_time: float
    duration_ms: float
    sub_run_id: str | None = None  # a worker or agent stage's run
    type: Literal["task"] = "task"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainStepRecord:
    """A ``spec.chain`` step after the turn: the agent it ran (or why not)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    agent: str
    ran: bool
    input: str
    answer: str | None
    error: str | None
    attempts: int
    sub_run_id: str | None = None
    type: Literal["chain"] = "chain"


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerStep:
    """The final answer."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG
    iteration: int
    content: str
    type: Literal["answer"] = "answer"


Step = Annotated[
    ThoughtStep
    | ToolStep
    | DelegateStep
    | HandoffStep
    | PlanStep
    | TaskStep
    | ChainStepRecord
    | AnswerStep,
    Field(discriminator="type"),
]
