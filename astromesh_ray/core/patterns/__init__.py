"""Orchestration patterns by YAML name."""

from __future__ import annotations

from collections.abc import Mapping

from astromesh_ray.core.patterns.base import AfterStep, Pattern
from astromesh_ray.core.patterns.react import ReActPattern
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec.orchestration import OrchestrationSpec

PATTERNS = (
    "react",
    "plan_and_execute",
    "parallel_fan_out",
    "pipeline",
    "supervisor",
    "swarm",
)
"""The patterns that run (``glyph`` is refused by the loader)."""

PAUSING_PATTERNS = ("react", "supervisor")
"""Patterns whose turns can pause for the caller (client tools, approvals): the
others run tools inside tasks and sub-runs, which cannot."""


def pattern_for(
    orchestration: OrchestrationSpec, workers: Mapping[str, str] | None = None
) -> Pattern:
    """The pattern of ``spec.orchestration``; ``workers`` maps the supervisor's worker
    tool names to their agents.  A miss lists the valid names."""
    name = orchestration.pattern
    if name == "react":
        return ReActPattern()
    if name == "plan_and_execute":
        from astromesh_ray.core.patterns.plan_execute import PlanAndExecutePattern

        return PlanAndExecutePattern(
            fail_fast=orchestration.fail_fast, workers=tuple(orchestration.workers or ())
        )
    if name == "parallel_fan_out":
        from astromesh_ray.core.patterns.fan_out import ParallelFanOutPattern

        return ParallelFanOutPattern(
            branches=orchestration.branch_specs(), fail_fast=orchestration.fail_fast
        )
    if name == "pipeline":
        from astromesh_ray.core.patterns.pipeline import PipelinePattern

        return PipelinePattern(orchestration.stages or [])
    if name == "supervisor":
        from astromesh_ray.core.patterns.supervisor import SupervisorPattern

        return SupervisorPattern(dict(workers or {}))
    if name == "swarm":
        from astromesh_ray.core.patterns.swarm import SwarmPattern

        return SwarmPattern(orchestration.members or [])
    raise ConfigError(
        f"orchestration pattern {name!r} is not supported",
        hint="supported patterns: " + ", ".join(PATTERNS),
    )


def final_role(pattern: Pattern) -> str:
    """The role that speaks the final answer (re-asked for a structured answer)."""
    return str(getattr(pattern, "final_role", pattern.roles[0]))


__all__ = ["PATTERNS", "AfterStep", "Pattern", "ReActPattern", "final_role", "pattern_for"]
