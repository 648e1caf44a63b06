"""The ``Pattern`` protocol: an orchestration strategy over the shared steps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event


class Pattern(Protocol):
    """Decides what to do next until the run has an answer.

    ``run`` yields events as they happen and sets ``state.answer`` before it ends.
    It calls models, tools and peers only through the shared steps
    (``core/steps/``), which record usage, spans, steps and the transcript, and
    bound every wait by the run's deadline.  ``roles`` are the model roles it asks
    ``ctx.model`` for (``spec.model.roles`` / ``orchestration.role_map``).
    """

    name: str
    roles: tuple[str, ...]

    def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]: ...


class AfterStep(Protocol):
    """What runs once the pattern answered, before the finish stages: the structured
    answer check (``spec.output_schema``), the ``spec.chain`` steps."""

    name: str

    def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]: ...
