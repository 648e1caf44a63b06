"""Lifecycle stages around the pattern: ``prepare`` before it, event transformers
around its stream, ``finish`` after it.

    prepare stages  (input guardrails → memory load → prompts)
    pattern.run(ctx, state)  ──events──►  transformers (output guardrails → metrics)
    finish stages   (memory save → episodic record)

A stage object may implement several protocols (``memory`` both loads and saves).

Each stage is a small object behind one of three protocols, chosen for an agent
from its YAML through ``STAGES`` (in order; a factory returns ``None`` when the
agent does not ask for its stage), and testable alone with the scripted model.
The runtime names the stage in any error it raises.  With no transformers the
pattern's events reach the caller directly: an empty chain costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.errors import AstromeshError, RunError

if TYPE_CHECKING:
    from astromesh_ray.core.guardrails.build import GuardrailEnv
    from astromesh_ray.core.memory.agent import AgentMemory
    from astromesh_ray.spec import AgentSpec


@runtime_checkable
class PrepareStage(Protocol):
    """Runs before the pattern: fills the transcript, checks input."""

    name: str

    async def prepare(self, ctx: RunContext, state: TurnState) -> None: ...


@runtime_checkable
class FinishStage(Protocol):
    """Runs after the pattern, with the error the run ended on (``None``: it answered)."""

    name: str

    async def finish(
        self, ctx: RunContext, state: TurnState, error: AstromeshError | None
    ) -> None: ...


@runtime_checkable
class EventTransformer(Protocol):
    """Wraps the pattern's event stream (may drop, change or add events, and change
    ``state.answer`` before the result is built)."""

    name: str

    def transform(
        self, ctx: RunContext, state: TurnState, events: AsyncIterator[Event]
    ) -> AsyncIterator[Event]: ...


@dataclass(frozen=True)
class Stages:
    """The stages of one agent, in the order they run."""

    prepare: tuple[PrepareStage, ...] = ()
    transformers: tuple[EventTransformer, ...] = ()
    finish: tuple[FinishStage, ...] = ()

    @property
    def names(self) -> list[str]:
        return [
            *(s.name for s in self.prepare),
            *(t.name for t in self.transformers),
            *(f.name for f in self.finish),
        ]


@dataclass(frozen=True)
class StageEnv:
    """What stages get from whoever builds the runtime besides the YAML: the agent's
    memory backends, the secret values (API keys in the environment) that must
    never be logged, and what guardrails keep state in (vault, ledger, embedders)."""

    memory: AgentMemory | None = None
    secrets: tuple[str, ...] = ()
    guardrails: GuardrailEnv | None = None


StageFactory = Callable[["AgentSpec", StageEnv], Any]

# name -> "module:factory", imported lazily.  A factory takes the AgentSpec and the
# StageEnv and returns the stage (a PrepareStage, EventTransformer or FinishStage,
# or several at once) or None when the agent's YAML does not ask for it.  The order
# here is the order they run in.
STAGES: dict[str, str] = {
    # First: nothing (memory recall, an embedder, a model) sees unchecked input.
    "guardrails_input": "astromesh_ray.core.guardrails.stages:input_stage",
    "memory": "astromesh_ray.core.memory.stages:memory_stage",
    "prompts": "astromesh_ray.core.prompts:prompt_stage",
    "guardrails_output": "astromesh_ray.core.guardrails.stages:output_stage",
    "episodic": "astromesh_ray.core.memory.stages:episodic_stage",
}


def stage_factory(name: str) -> StageFactory:
    """The factory of stage ``name``; a miss lists the valid names."""
    from astromesh_ray.errors import ConfigError

    try:
        target = STAGES[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}", hint="stages: " + ", ".join(STAGES)) from None
    module, _, attr = target.partition(":")
    factory: StageFactory = getattr(importlib.import_module(module), attr)
    return factory


def stages_for(agent: AgentSpec, env: StageEnv | None = None) -> Stages:
    """The stages ``agent``'s YAML asks for, each in its place."""
    env = env or StageEnv()
    prepare: list[PrepareStage] = []
    transformers: list[EventTransformer] = []
    finish: list[FinishStage] = []
    for name in STAGES:
        stage = stage_factory(name)(agent, env)
        if stage is None:
            continue
        placed = False
        if isinstance(stage, PrepareStage):
            prepare.append(stage)
            placed = True
        if isinstance(stage, EventTransformer):
            transformers.append(stage)
            placed = True
        if isinstance(stage, FinishStage):
            finish.append(stage)
            placed = True
        if not placed:
            raise TypeError(f"stage {name!r} implements no stage protocol")
    return Stages(tuple(prepare), tuple(transformers), tuple(finish))


def stage_error(name: str, exc: Exception) -> AstromeshError:
    """``exc``, raised inside stage ``name``, as an error naming the stage."""
    if isinstance(exc, AstromeshError):
        exc.details.setdefault("stage", name)
        return exc
    # A bug in a stage: say which one.
    error = RunError(f"stage {name!r} failed: {type(exc).__name__}: {exc}", stage=name)
    error.__cause__ = exc
    return error


async def in_stage(name: str, work: Awaitable[None]) -> None:
    """Await a stage's work; its errors name the stage."""
    try:
        await work
    except Exception as exc:
        raise stage_error(name, exc) from exc


# Set on an error that came up through a transformer from below it (the pattern or
# an earlier transformer): it is not that transformer's failure.
_FROM_BELOW = "__astromesh_from_below__"


async def stage_layer(name: str | None, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """``events`` with what goes wrong in them named: by transformer ``name``, unless
    it came from below (``name`` None: the pattern, only marked)."""
    try:
        async with closing_stream(events) as inner:
            async for event in inner:
                yield event
    except Exception as exc:
        if name is None or getattr(exc, _FROM_BELOW, False):
            setattr(exc, _FROM_BELOW, True)
            raise
        error = stage_error(name, exc)
        setattr(error, _FROM_BELOW, True)
        raise error from exc
