"""PlanAndExecute: the planner writes a plan (a DAG of steps), the steps run, the
synthesizer answers from every step's result.

- The ``planner`` role answers a JSON plan: ``{"steps": [{"id", "task", "tool",
  "worker", "depends_on"}]}``; a plan that does not parse, names an unknown tool,
  worker or step, or has a cycle is sent back once with the error.
- Steps whose dependencies are done run together, as concurrent tasks (any replica
  of the agent under Serve): each a small tool-using loop of the ``executor`` role
  (offered only its ``tool`` when it names one), or a sub-run of its ``worker``
  agent.  A step reads the results of the steps it depends on.
- A failed step makes the planner plan again (it sees what is done and what
  failed), while model calls are left; ``fail_fast: true`` fails the run instead.
- The ``synthesizer`` role answers from every step's result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event, PlanEvent, PlannedTask, PlanStep
from astromesh_ray.core.messages import Message
from astromesh_ray.core.patterns.batch import Batch, TaskOutcome, TaskSpec
from astromesh_ray.core.patterns.common import (
    JsonAsk,
    at_most,
    base_prompt,
    most_tasks,
    results_text,
    share,
    synthesize,
)
from astromesh_ray.core.steps.records import record
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.errors import RunError, RunLimitExceeded

PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array",
            "minItems": 1,
            "maxItems": 32,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "minLength": 1, "maxLength": 64},
                    "task": {"type": "string", "minLength": 1},
                    "tool": {"type": ["string", "null"]},
                    "worker": {"type": ["string", "null"]},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["id", "task"],
            },
        }
    },
    "required": ["steps"],
}


class PlanAndExecutePattern:
    """Plan → execute the DAG (concurrently where it can) → synthesize."""

    name = "plan_and_execute"
    roles: tuple[str, ...] = ("planner", "executor", "synthesizer")
    final_role = "synthesizer"

    def __init__(self, *, fail_fast: bool = False, workers: tuple[str, ...] = ()) -> None:
        self.fail_fast = fail_fast
        self.workers = workers

    async def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]:
        done: dict[str, TaskOutcome] = {}
        failed: list[TaskOutcome] = []
        attempt = 0
        while True:
            attempt += 1
            ask = JsonAsk(
                ctx,
                state,
                role="planner",
                messages=self._planner_prompt(ctx, state, done, failed),
                schema=at_most(PLAN_SCHEMA, "steps", 32, most_tasks(ctx, state, "plan steps")),
                check=lambda plan: self._check(ctx, plan, done),
                what="plan",
                reason="invalid_plan",
            )
            async for event in ask:
                yield event
            plan = [_task(s) for s in ask.value["steps"]]
            yield PlanEvent(iteration=ask.iteration, attempt=attempt, steps=plan)
            yield record(state, PlanStep(iteration=ask.iteration, attempt=attempt, steps=plan))
            failed = []
            steps = self._execute(ctx, state, plan, done, failed)
            # Closed now if the run is abandoned here: its steps are cancelled with it.
            async with closing_stream(steps):
                async for event in steps:
                    yield event
            if not failed:
                break
            # A new plan needs a planner call, a call per step and the synthesizer's.
            if self.fail_fast or ctx.iterations_left(state) < 3:
                step = failed[0]
                why = step.error.message if step.error else ""
                if self.fail_fast:
                    raise RunError(
                        f"plan step {step.spec.name!r} failed: {why}",
                        hint="set fail_fast: false to re-plan around failed steps",
                        run_id=ctx.run_id,
                        reason="plan_step_failed",
                    )
                raise RunLimitExceeded(
                    f"plan step {step.spec.name!r} failed: {why}; no model calls are left "
                    "to plan again and answer",
                    hint="raise spec.orchestration.max_iterations",
                    run_id=ctx.run_id,
                    reason="max_iterations",
                )
        results = [(o.spec.name, o.output, False) for o in done.values()]
        async for event in synthesize(
            ctx,
            state,
            "synthesizer",
            results_text(results),
            "Answer the user's message above from the results of these plan steps.",
        ):
            yield event

    async def _execute(
        self,
        ctx: RunContext,
        state: TurnState,
        plan: list[PlannedTask],
        done: dict[str, TaskOutcome],
        failed: list[TaskOutcome],
    ) -> AsyncIterator[Event]:
        todo = {p.id: p for p in plan if p.id not in done}
        while todo:
            ready = [p for p in todo.values() if all(d in done for d in p.depends_on)]
            if not ready:  # a dependency failed: the rest waits for a new plan
                return
            budget = share(ctx, state, len(ready), 1, "plan steps")
            specs = [self._spec(ctx, state, p, done, budget) for p in ready]
            for p in ready:
                del todo[p.id]
            batch = Batch(ctx, state, specs, fail_fast=self.fail_fast)
            events = aiter(batch)
            async with closing_stream(events):
                async for event in events:
                    yield event
            for outcome in batch.outcomes.values():
                if outcome.error is None:
                    done[outcome.spec.id] = outcome
                else:
                    failed.append(outcome)
            if failed:
                return

    def _spec(
        self,
        ctx: RunContext,
        state: TurnState,
        step: PlannedTask,
        done: Mapping[str, TaskOutcome],
        budget: int,
    ) -> TaskSpec:
        inputs = "\n\n".join(
            f"Result of step {d} ({done[d].spec.input}):\n{done[d].output}" for d in step.depends_on
        )
        text = (
            f"You carry out one step of a plan for this request:\n{ctx.request.query}\n\n"
            + (inputs + "\n\n" if inputs else "")
            + f"Your step: {step.task}"
            + (f"\nUse the tool {step.tool!r}." if step.tool else "")
        )
        if step.worker:
            return TaskSpec(
                id=step.id,
                kind="plan_step",
                name=step.id,
                input=step.task,
                role="executor",
                messages=[Message(role="user", content=text)],
                max_iterations=budget,
                worker=step.worker,
            )
        return TaskSpec(
            id=step.id,
            kind="plan_step",
            name=step.id,
            input=step.task,
            role="executor",
            messages=[*base_prompt(state), Message(role="user", content=text)],
            tools=[step.tool] if step.tool else None,
            max_iterations=budget,
        )

    def _planner_prompt(
        self,
        ctx: RunContext,
        state: TurnState,
        done: Mapping[str, TaskOutcome],
        failed: list[TaskOutcome],
    ) -> list[Message]:
        tools = "\n".join(f"- {t.name}: {t.description}" for t in ctx.tools.schemas) or "(none)"
        workers = "\n".join(f"- {w}" for w in self.workers) or "(none)"
        text = (
            "Write a plan for the user's message above as JSON: "
            '{"steps": [{"id": "s1", "task": "...", "tool": null, "worker": null, '
            '"depends_on": []}]}.  A step may name one tool or one worker agent to use; '
            "steps that do not depend on each other run at the same time.\n"
            f"Tools:\n{tools}\nWorker agents:\n{workers}"
        )
        if done or failed:
            text += "\n\nSteps already done (depend on them by id; do not repeat them):\n"
            text += "\n".join(f"- {k}: {o.spec.input} -> {o.output[:500]}" for k, o in done.items())
            text += "\nSteps that failed (plan around them):\n"
            text += "\n".join(
                f"- {o.spec.id}: {o.spec.input} -> {o.error.message if o.error else ''}"
                for o in failed
            )
        return [*state.messages, Message(role="user", content=text)]

    def _check(self, ctx: RunContext, plan: Any, done: Mapping[str, TaskOutcome]) -> str | None:
        steps = plan["steps"]
        ids = [s["id"] for s in steps]
        if len(set(ids)) != len(ids):
            return "step ids must be unique"
        redone = sorted(set(ids) & set(done))
        if redone:
            return f"steps {', '.join(redone)} are already done: give new steps new ids"
        known = set(ids) | set(done)
        tools = set(ctx.tools.names)
        for s in steps:
            if s.get("tool") and s.get("worker"):
                return f"step {s['id']!r} names both a tool and a worker"
            if s.get("tool") and s["tool"] not in tools:
                listed = ", ".join(sorted(tools)) or "(none)"
                return f"step {s['id']!r} names tool {s['tool']!r}; tools: {listed}"
            if s.get("worker") and s["worker"] not in self.workers:
                listed = ", ".join(self.workers) or "(none)"
                return f"step {s['id']!r} names worker {s['worker']!r}; workers: {listed}"
            for d in s.get("depends_on") or []:
                if d not in known:
                    return f"step {s['id']!r} depends on unknown step {d!r}"
        graph = {s["id"]: set(s.get("depends_on") or []) - set(done) for s in steps}
        while graph:
            free = [k for k, deps in graph.items() if not deps]
            if not free:
                return "the steps depend on each other in a cycle: " + ", ".join(sorted(graph))
            for k in free:
                del graph[k]
            for deps in graph.values():
                deps.difference_update(free)
        return None


def _task(step: Mapping[str, Any]) -> PlannedTask:
    return PlannedTask(
        id=str(step["id"]),
        task=str(step["task"]),
        tool=step.get("tool") or None,
        worker=step.get("worker") or None,
        depends_on=[str(d) for d in step.get("depends_on") or []],
    )
