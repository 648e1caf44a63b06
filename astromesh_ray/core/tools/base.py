"""The tool interfaces: ``Toolset`` (the one shape for every kind of tool source),
``Tool`` (one callable tool inside a toolset), and what a call gets and returns.

A ``Toolset`` lists its tools (async: an MCP server has to be asked), calls one by
name with a ``ToolContext``, and closes.  Python functions, MCP servers, webhooks,
RAG and other agents are all toolsets; the runtime owns their lifecycle (listed
when the runtime starts, closed when it shuts down) and the shared tool step
(``core/steps/``) does what every call needs: permission check, argument
validation, timeout, result size cap and a span.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from astromesh_ray.core.messages import ToolSchema, Usage

if TYPE_CHECKING:
    from astromesh_ray.core.context import Caller
    from astromesh_ray.core.providers.base import Provider
    from astromesh_ray.core.trace import Span

DEFAULT_MAX_RESULT_CHARS = 20_000
"""A tool result longer than this is cut before the model reads it (per tool:
``max_result_chars`` in the agent YAML)."""


@dataclass
class ToolResult:
    """What a tool returned: ``content`` is what the model reads next.

    A tool that ran another agent also reports the model ``usage`` it spent, the
    ``spans`` of that sub-run (merged into the caller's trace) and its run id.
    """

    content: str
    is_error: bool = False
    data: Any = None
    usage: Usage | None = None
    spans: list[Span] = field(default_factory=list)
    sub_run_id: str | None = None
    iterations: int = 0  # model calls a sub-run spent (counted against the caller's)
    handoff: str | None = None  # a swarm handoff tool: the member control passes to


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool call knows about the run it serves.  ``deadline`` is event-loop
    time; ``trace_parent`` is the W3C ``traceparent`` of the tool's span; ``models``
    are the run's routed models by role (a tool that asks the agent's own model, such
    as ``text_summarize``, reports the usage in its result)."""

    run_id: str
    agent: str
    session_id: str | None
    caller: Caller
    deadline: float
    trace_parent: str
    lineage: tuple[str, ...]
    models: Mapping[str, Provider] = field(default_factory=lambda: MappingProxyType({}))
    iterations_left: int | None = None  # model calls the run may still make (sub-runs)

    def remaining_s(self) -> float:
        """Seconds left before the run's deadline."""
        return self.deadline - asyncio.get_running_loop().time()


Validator = Callable[[dict[str, Any]], dict[str, Any]]
"""Checks a call's arguments; returns them ready for the call (coerced where the tool
says so) or raises ``ToolError`` naming every bad argument."""


@dataclass(frozen=True, slots=True)
class ToolDef:
    """One tool a toolset offers: what the model is told, how arguments are checked,
    and its limits (``None``: the run's remaining time; the default size cap).

    ``side_effects``: a call changes something outside the agent (dry runs describe
    it instead); ``side_effects_of``, when given, says so per call (``http_request``:
    a GET has none, a POST has).  ``requires_approval``: the run pauses before each call until the
    caller approves it.  ``client``: the caller runs it (the run pauses until the
    caller posts its result; ``call`` is never used).
    """

    schema: ToolSchema
    validate: Validator
    timeout_s: float | None = None
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS
    side_effects: bool = False
    requires_approval: bool = False
    client: bool = False
    # A sub-run of another agent: its model calls count against the run's
    # max_iterations, so concurrent calls share what is left.
    sub_run: bool = False
    side_effects_of: Callable[[dict[str, Any]], bool] | None = None

    @property
    def name(self) -> str:
        return self.schema.name


@runtime_checkable
class Toolset(Protocol):
    """A source of tools.  Implementations: ``<Source>Toolset``."""

    name: str

    async def list_tools(self) -> Sequence[ToolDef]:
        """The tools offered now (called when the runtime starts)."""
        ...

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Run tool ``name`` with arguments its ``ToolDef.validate`` returned.  A failure
        the model should hear about is a ``ToolError``; anything else is a bug."""
        ...

    async def aclose(self) -> None:
        """Release what the toolset holds (subprocesses, connections)."""
        ...


@runtime_checkable
class Tool(Protocol):
    """One Python-level tool (a ``PythonTool``, or one wrapping it)."""

    @property
    def schema(self) -> ToolSchema: ...

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Check and coerce the model's arguments; ``ToolError`` when they are bad."""
        ...

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Run with validated arguments; ``ToolError`` for failures the model reads."""
        ...


def toolsets_health(toolsets: Sequence[Toolset]) -> dict[str, Any]:
    """The health of the toolsets that report one (MCP servers):
    ``{"status": "ok" | "degraded", "toolsets": {name: {...}}}``."""
    reports: dict[str, Any] = {}
    for toolset in toolsets:
        health = getattr(toolset, "health", None)
        report = health() if health is not None else None
        if report is not None:
            reports[toolset.name] = report
    down = any(r.get("status") not in (None, "ok") for r in reports.values())
    return {"status": "degraded" if down else "ok", "toolsets": reports}
