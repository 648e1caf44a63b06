"""What a run records as steps, and the events that announce them."""

from __future__ import annotations

from astromesh_ray.core.context import TurnState
from astromesh_ray.core.events import AnswerStep, Step, StepEvent, ThoughtStep
from astromesh_ray.core.steps.model import ModelStep


def record(state: TurnState, step: Step) -> StepEvent:
    """Add ``step`` to the run's steps; returns the event announcing it."""
    state.steps.append(step)
    return StepEvent(step=step)


def record_thought(state: TurnState, step: ModelStep) -> StepEvent | None:
    """Keep the text a model wrote alongside its tool calls, and the assistant
    message in the transcript (the tool results answer it)."""
    message = step.message
    state.messages.append(message)
    if not message.content:
        return None
    return record(
        state,
        ThoughtStep(
            iteration=step.iteration, role=step.role, content=message.content, task=step.ctx.task
        ),
    )


def record_answer(state: TurnState, step: ModelStep) -> StepEvent:
    """The model's message is the run's answer: it ends the transcript."""
    message = step.message
    state.messages.append(message)
    state.answer = message.content or ""
    return record(state, AnswerStep(iteration=step.iteration, content=state.answer))
