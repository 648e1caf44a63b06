"""Handoff tools: how a swarm member passes control and the conversation on.

A member's turn in a swarm is asked with ``RunRequest.handoffs`` (the other
members).  Its model is then offered one tool per member, ``transfer_to_<name>``;
calling one records an ordinary tool call and result in the transcript (so the
history stays valid for every provider's API: each tool result follows its own
call) and ends the member's turn with status ``handoff``.  The swarm
(``patterns/swarm.py``) then runs the member named, with the conversation so far.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from astromesh_ray.core.context import RunContext, TurnState, turn_result
from astromesh_ray.core.events import RunResult
from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.steps.tools import HandedOff
from astromesh_ray.core.tools.base import ToolContext, ToolDef, ToolResult
from astromesh_ray.core.tools.index import ToolIndex
from astromesh_ray.core.tools.validation import compile_validator

HANDOFF_PREFIX = "transfer_to_"

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string", "description": "Why that agent should take over."}},
    "additionalProperties": False,
}


def handoff_tool_name(member: str) -> str:
    """The tool a member calls to hand control to ``member``."""
    return HANDOFF_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", member)


class HandoffToolset:
    """The handoff tools of one member's turn."""

    name = "handoffs"

    def __init__(self, members: Sequence[str]) -> None:
        self._members = {handoff_tool_name(m): m for m in members}

    async def list_tools(self) -> Sequence[ToolDef]:
        return self.tools()

    def tools(self) -> list[ToolDef]:
        return [
            ToolDef(
                schema=ToolSchema(
                    name=tool,
                    description=f"Hand the conversation and control to the agent {member!r}: "
                    "call it when that agent should answer the user from here on.",
                    parameters=_SCHEMA,
                ),
                validate=compile_validator(tool, _SCHEMA),
            )
            for tool, member in self._members.items()
        ]

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        member = self._members[name]
        reason = str(arguments.get("reason") or "")
        return ToolResult(
            content=f"Transferred to {member}: it answers from here on.",
            data=reason,
            handoff=member,
        )

    async def aclose(self) -> None:
        return None


def with_handoffs(tools: ToolIndex, members: Sequence[str]) -> ToolIndex:
    """``tools`` plus the handoff tools to ``members`` (unchanged when none)."""
    if not members:
        return tools
    toolset = HandoffToolset(members)
    return tools.with_tools(toolset, toolset.tools())


def handed_off(ctx: RunContext, state: TurnState, handoff: HandedOff) -> RunResult:
    """The result of a member's turn that handed control to another member."""
    return turn_result(
        ctx,
        state,
        answer="",
        status="handoff",
        handoff_to=handoff.to_agent,
        handoff_reason=handoff.reason,
    )
