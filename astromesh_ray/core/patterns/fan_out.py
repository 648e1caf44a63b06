"""ParallelFanOut: split the request into subtasks, run them at once, merge.

Subtasks are ``orchestration.branches`` from YAML, or written by the ``splitter``
role (``{"subtasks": [...]}``, validated, sent back once when invalid).  Each runs
as a task (under Serve, a call to any replica of the agent's application): a
tool-using loop of the ``executor`` role.  A failed branch is reported to the
``synthesizer`` and the others' results are kept, unless ``fail_fast: true``; when
every branch failed the run fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event
from astromesh_ray.core.messages import Message
from astromesh_ray.core.patterns.batch import Batch, TaskSpec
from astromesh_ray.core.patterns.common import (
    JsonAsk,
    at_most,
    base_prompt,
    most_tasks,
    results_text,
    share,
    synthesize,
)
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.errors import RunError, RunLimitExceeded
from astromesh_ray.spec.orchestration import BranchSpec
from astromesh_ray.spec.templates import render

SUBTASKS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "subtasks": {
            "type": "array",
            "minItems": 1,
            "maxItems": 16,
            "items": {"type": "string", "minLength": 1},
        }
    },
    "required": ["subtasks"],
}


class ParallelFanOutPattern:
    """Split → branches at once → synthesize."""

    name = "parallel_fan_out"
    final_role = "synthesizer"

    def __init__(self, *, branches: Sequence[BranchSpec] = (), fail_fast: bool = False) -> None:
        self.branches = list(branches)
        self.fail_fast = fail_fast
        self.roles: tuple[str, ...] = (
            ("executor", "synthesizer")
            if self.branches
            else ("splitter", "executor", "synthesizer")
        )

    async def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]:
        if self.branches:
            tasks = [(b.name, render(b.task, query=ctx.request.query)) for b in self.branches]
        else:
            ask = JsonAsk(
                ctx,
                state,
                role="splitter",
                messages=[
                    *state.messages,
                    Message(
                        role="user",
                        content="Split the user's message above into independent subtasks "
                        'that can be worked on at the same time, as JSON: {"subtasks": '
                        '["...", "..."]}.',
                    ),
                ],
                schema=at_most(SUBTASKS_SCHEMA, "subtasks", 16, most_tasks(ctx, state, "subtasks")),
                check=lambda value: None,
                what="list of subtasks",
                reason="invalid_subtasks",
            )
            async for event in ask:
                yield event
            tasks = [(f"branch-{i}", t) for i, t in enumerate(ask.value["subtasks"], start=1)]
        budget = share(ctx, state, len(tasks), 1, "branches")
        specs = [
            TaskSpec(
                id=name,
                kind="branch",
                name=name,
                input=task,
                role="executor",
                messages=[
                    *base_prompt(state),
                    Message(
                        role="user",
                        content=f"You work on one part of this request:\n{ctx.request.query}"
                        f"\n\nYour part: {task}",
                    ),
                ],
                max_iterations=budget,
            )
            for name, task in tasks
        ]
        batch = Batch(ctx, state, specs, fail_fast=self.fail_fast)
        events = aiter(batch)
        # Closed now if the run is abandoned here: its branches are cancelled with it.
        async with closing_stream(events):
            async for event in events:
                yield event
        outcomes = [batch.outcomes[s.id] for s in specs]
        if all(o.error is not None for o in outcomes):
            first = outcomes[0]
            limited = all(isinstance(o.error, RunLimitExceeded) for o in outcomes)
            raise (RunLimitExceeded if limited else RunError)(
                f"every branch failed; {first.spec.name!r}: "
                f"{first.error.message if first.error else ''}",
                hint="raise spec.orchestration.max_iterations"
                if limited
                else "see the branches' steps in the trace",
                run_id=ctx.run_id,
                reason="max_iterations" if limited else "branch_failed",
            )
        results = [
            (
                f"{o.spec.name}: {o.spec.input}",
                o.error.message if o.error is not None else o.output,
                o.error is not None,
            )
            for o in outcomes
        ]
        async for event in synthesize(
            ctx,
            state,
            "synthesizer",
            results_text(results),
            "Answer the user's message above by merging the results of these parallel "
            "branches (a FAILED branch gave no result: say what is missing).",
        ):
            yield event
