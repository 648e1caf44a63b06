"""What several patterns share: asking a role for validated JSON (a plan, the
subtasks of a fan-out), the prompt of a task, budgets of model calls, and the
final answer from a synthesizer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event
from astromesh_ray.core.messages import Message
from astromesh_ray.core.steps import ModelStep, record_answer
from astromesh_ray.core.structured import parse_structured
from astromesh_ray.errors import RunError, RunLimitExceeded

Check = Callable[[Any], str | None]
"""A check beyond the JSON Schema (ids unique, dependencies known...): the problem,
or ``None``."""


class JsonAsk:
    """Ask ``role`` for JSON matching ``schema`` (decoded under it where the provider
    can); a reply that does not parse or pass ``check`` is sent back once with the
    error, then the run fails (``RunError`` with ``reason``).  Iterate it for the
    events, then read ``value``."""

    def __init__(
        self,
        ctx: RunContext,
        state: TurnState,
        *,
        role: str,
        messages: Sequence[Message],
        schema: Mapping[str, Any],
        check: Check,
        what: str,
        reason: str,
    ) -> None:
        self.ctx, self.state = ctx, state
        self.role = role
        self.messages = list(messages)
        self.schema = dict(schema)
        self.check = check
        self.what = what
        self.reason = reason
        self.value: Any = None
        self.iteration = 0

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._run()

    async def _run(self) -> AsyncIterator[Event]:
        validator = Draft202012Validator(self.schema)
        messages = self.messages
        problem = ""
        for attempt in (1, 2):
            step = ModelStep(
                self.ctx,
                self.state,
                role=self.role,
                messages=messages,
                tools=False,
                output_schema=self.schema,
                stream=False,
            )
            async for event in step:
                yield event
            self.iteration = step.iteration
            text = step.message.content or ""
            value, problem_or_none = parse_structured(text, validator)
            if problem_or_none is None:
                problem_or_none = self.check(value)
            if problem_or_none is None:
                self.value = value
                return
            problem = problem_or_none
            if attempt == 2:
                break
            messages = [
                *messages,
                Message(role="assistant", content=text),
                Message(
                    role="user",
                    content=f"That {self.what} is invalid: {problem}. Answer again with only "
                    "JSON matching this schema:\n" + json.dumps(self.schema),
                ),
            ]
        raise RunError(
            f"the {self.role} role wrote an invalid {self.what} twice: {problem}",
            hint=f"use a stronger model for the {self.role} role (spec.model.roles)",
            run_id=self.ctx.run_id,
            reason=self.reason,
        )


def base_prompt(state: TurnState) -> list[Message]:
    """The run's system prompt (if any), for the prompts of its tasks."""
    return [m for m in state.messages[:1] if m.role == "system"]


def results_text(results: Sequence[tuple[str, str, bool]]) -> str:
    """``(name, output, failed)`` results as the text a synthesizer reads."""
    lines = []
    for name, output, failed in results:
        mark = "FAILED: " if failed else ""
        lines.append(f"## {name}\n{mark}{output}")
    return "\n\n".join(lines)


async def synthesize(
    ctx: RunContext, state: TurnState, role: str, results: str, instruction: str
) -> AsyncIterator[Event]:
    """The final answer from ``role``, which sees the conversation and ``results``
    (streamed: it is the final speaker; decoded under the output schema)."""
    # The results are for this call only: the transcript (what memory saves) keeps
    # the user's message and the answer.
    messages = [*state.messages, Message(role="user", content=f"{instruction}\n\n{results}")]
    step = ModelStep(
        ctx, state, role=role, messages=messages, tools=False, output_schema=ctx.output_schema
    )
    async for event in step:
        yield event
    yield record_answer(state, step)


def share(ctx: RunContext, state: TurnState, count: int, reserve: int, what: str) -> int:
    """Model calls each of ``count`` concurrent tasks may spend, keeping ``reserve``
    for what follows (the synthesizer); a limit error when not even one each fits."""
    left = ctx.iterations_left(state) - reserve
    if count <= 0:
        return 0
    if left < count:
        raise RunLimitExceeded(
            f"max_iterations={ctx.max_iterations} leaves {max(left, 0)} model call(s) for "
            f"{count} {what} (and {reserve} after them)",
            hint="raise spec.orchestration.max_iterations",
            run_id=ctx.run_id,
            reason="max_iterations",
        )
    return left // count


def most_tasks(ctx: RunContext, state: TurnState, what: str) -> int:
    """How many tasks a splitter or planner may write: one model call each, after its
    own call and before the synthesizer's; a limit error when not one fits."""
    most = ctx.iterations_left(state) - 2
    if most < 1:
        raise RunLimitExceeded(
            f"max_iterations={ctx.max_iterations} leaves no model call for {what} (one "
            "to write them and one to answer are needed too)",
            hint="raise spec.orchestration.max_iterations",
            run_id=ctx.run_id,
            reason="max_iterations",
        )
    return most


def at_most(schema: Mapping[str, Any], key: str, cap: int, most: int) -> dict[str, Any]:
    """``schema`` whose array ``key`` holds at most ``min(cap, most)`` items."""
    copy = json.loads(json.dumps(schema))
    copy["properties"][key]["maxItems"] = min(cap, most)
    return dict(copy)
