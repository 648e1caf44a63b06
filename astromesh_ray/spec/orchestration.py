"""``spec.orchestration``: the pattern a turn runs and what that pattern needs.

Each pattern has its own blocks: ``branches``/``fail_fast`` (parallel_fan_out),
``stages`` (pipeline), ``workers`` (supervisor), ``members`` (swarm).  A block given
to a pattern that does not read it is refused, so nothing is parsed and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, Discriminator, Field, Tag, field_validator, model_validator

from astromesh_ray.spec.base import StrictModel, count_present, rule_error
from astromesh_ray.spec.templates import check_template

PatternName = Literal[
    "react", "plan_and_execute", "parallel_fan_out", "pipeline", "supervisor", "swarm", "glyph"
]
"""Orchestration patterns the YAML may name (``glyph`` is refused)."""

AGENT_NAME = r"^[a-z][a-z0-9-]*[a-z0-9]$"
BRANCH_VARIABLES = ("query",)
"""What a branch task template is given: the user's message."""
STAGE_VARIABLES = ("input", "query")
"""What a stage template is given: the previous stage's output and the user's message."""


class BranchSpec(StrictModel):
    """One fixed subtask of ``parallel_fan_out``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Branch name.")
    task: str = Field(
        min_length=1,
        description="What the branch does: a Jinja template over {{ query }} (the user's message).",
    )

    @model_validator(mode="after")
    def _parses(self) -> BranchSpec:
        check_template(self.task, "task", BRANCH_VARIABLES)
        return self


def _branch_form(value: Any) -> str:
    return "spec" if isinstance(value, (dict, BranchSpec)) else "text"


# A branch is a {name, task} mapping or a task text; which one is decided by the
# value's shape, so a bad mapping is reported as a mapping (not also as "not a string").
Branch = Annotated[
    Annotated[BranchSpec, Tag("spec")] | Annotated[str, Tag("text")],
    Discriminator(_branch_form),
]


class StageSpec(StrictModel):
    """One stage of ``pipeline``: a prompt, a tool or another agent.  Its input is
    the previous stage's output (the user's message for the first)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Stage name.")
    prompt: str | None = Field(
        default=None,
        description="A model step (with the agent's tools): a Jinja template over "
        "{{ input }} and {{ query }}.",
    )
    tool: str | None = Field(default=None, description="A tool of this agent to call.")
    arguments: dict[str, Any] | None = Field(
        default=None,
        description="The tool's arguments; string values are Jinja templates over "
        "{{ input }} and {{ query }} (default: the input as the tool's one required "
        "string parameter).",
    )
    agent: str | None = Field(
        default=None, pattern=AGENT_NAME, description="Another agent, asked the input."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> StageSpec:
        given = [k for k in ("prompt", "tool", "agent") if getattr(self, k) is not None]
        if len(given) != 1:
            raise rule_error(
                "name",
                f"stage {self.name!r} needs exactly one of prompt, tool or agent"
                + (f" (it has {', '.join(given)})" if given else ""),
            )
        if self.arguments is not None and self.tool is None:
            raise rule_error("arguments", "arguments apply to a tool stage only")
        if self.prompt is not None:
            check_template(self.prompt, "prompt", STAGE_VARIABLES)
        for key, value in (self.arguments or {}).items():
            if isinstance(value, str):
                check_template(value, ("arguments", key), STAGE_VARIABLES)
        return self


_OWNERS: dict[str, tuple[str, ...]] = {
    "branches": ("parallel_fan_out",),
    "fail_fast": ("parallel_fan_out", "plan_and_execute"),
    "stages": ("pipeline",),
    "workers": ("supervisor", "plan_and_execute"),
    "members": ("swarm",),
}


class OrchestrationSpec(StrictModel):
    """``spec.orchestration``: how turns are run."""

    schema_aliases: ClassVar[dict[str, str]] = {"timeout": "timeout_seconds"}

    pattern: PatternName = Field(default="react", description="Orchestration pattern.")
    max_iterations: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Model calls allowed per turn, counted across its branches, steps "
        "and sub-runs.",
    )
    timeout_s: float = Field(
        default=120,
        gt=0,
        validation_alias=AliasChoices("timeout_seconds", "timeout"),
        serialization_alias="timeout_seconds",
        description="Seconds a turn may take, sub-runs included (`timeout` is a "
        "deprecated spelling).",
    )
    role_map: dict[str, str] = Field(
        default_factory=dict, description="Pattern role → model role (spec.model.roles)."
    )
    branches: list[Branch] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="parallel_fan_out: fixed subtasks (a task text, or {name, task}); "
        "without it the splitter role writes them.",
    )
    fail_fast: bool = Field(
        default=False,
        description="parallel_fan_out / plan_and_execute: one failed branch or step fails "
        "the run (default: it is reported and the others are kept; a failed plan step "
        "is re-planned).",
    )
    stages: list[StageSpec] | None = Field(
        default=None, min_length=1, max_length=64, description="pipeline: the stages, in order."
    )
    workers: list[str] | None = Field(
        default=None,
        min_length=1,
        description="supervisor (and plan_and_execute steps): agents to delegate to, "
        "besides the agent's `type: agent` tools.",
    )
    members: list[str] | None = Field(
        default=None,
        min_length=2,
        description="swarm: the agents passing control to each other; the first starts.",
    )
    narrate: bool | None = Field(default=None, description="Narrate steps (refused).")
    max_repairs: int | None = Field(default=None, ge=0, description="Repair attempts (refused).")

    @model_validator(mode="before")
    @classmethod
    def _one_timeout(cls, data: Any) -> Any:
        if len(count_present(data, "timeout_seconds", "timeout", "timeout_s")) > 1:
            raise rule_error("timeout", "give timeout_seconds only (timeout is its old name)")
        return data

    @field_validator("branches")
    @classmethod
    def _branch_texts_parse(
        cls, branches: list[BranchSpec | str] | None
    ) -> list[BranchSpec | str] | None:
        for index, branch in enumerate(branches or []):
            if isinstance(branch, str):
                if not branch.strip():
                    raise rule_error((index,), "a branch needs a task")
                check_template(branch, (index,), BRANCH_VARIABLES)
        return branches

    @field_validator("workers", "members")
    @classmethod
    def _agent_names(cls, names: list[str] | None) -> list[str] | None:
        import re

        for index, name in enumerate(names or []):
            if not re.fullmatch(AGENT_NAME, name):
                raise rule_error((index,), f"{name!r} is not an agent name")
        if names is not None and len(set(names)) != len(names):
            raise rule_error((), "an agent is named twice")
        return names

    @model_validator(mode="after")
    def _blocks_of_the_pattern(self) -> OrchestrationSpec:
        for key, owners in _OWNERS.items():
            value = getattr(self, key)
            if value not in (None, False) and self.pattern not in owners:
                raise rule_error(
                    key,
                    f"{key} applies to the {' and '.join(owners)} pattern"
                    f"{'s' if len(owners) > 1 else ''}, not {self.pattern}",
                )
        if self.pattern == "pipeline" and not self.stages:
            raise rule_error("stages", "the pipeline pattern needs stages")
        if self.pattern == "swarm" and not self.members:
            raise rule_error("members", "the swarm pattern needs members (at least two agents)")
        names = [b.name for b in self.branch_specs()]
        if len(set(names)) != len(names):
            raise rule_error("branches", "branch names must be unique")
        stage_names = [s.name for s in self.stages or []]
        if len(set(stage_names)) != len(stage_names):
            raise rule_error("stages", "stage names must be unique")
        return self

    def branch_specs(self) -> list[BranchSpec]:
        """``branches`` with a name for each (``branch-1``... for plain task texts)."""
        return [
            b if isinstance(b, BranchSpec) else BranchSpec(name=f"branch-{i}", task=b)
            for i, b in enumerate(self.branches or [], start=1)
        ]
