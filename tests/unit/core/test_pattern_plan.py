"""PlanAndExecute: the plan is validated (and sent back once), its steps run as a
DAG (independent ones together), a failed step is re-planned, the synthesizer
answers from every step; limits end the run with the partial trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.errors import ProviderError, RunError, RunLimitExceeded, RunTimeout
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import agent_yaml, load_agents
from .pattern_helpers import SlowProvider, last_text, run, stream

CALC = {"name": "calculator", "type": "builtin"}


def plan(*steps: dict[str, object]) -> str:
    return json.dumps({"steps": list(steps)})


def planner_executor(plans: list[str], answers: dict[str, object], final: str = "final answer"):
    """One callable step answering by what each call is: a plan (from ``plans``, in
    order), a step (by its task, from ``answers``), or the synthesis."""
    plans = list(plans)

    def answer(request: CompletionRequest) -> object:
        text = last_text(request)
        if "Write a plan" in text or "That plan is invalid" in text:
            return plans.pop(0)
        if "Answer the user's message above from the results" in text:
            return final
        if request.messages[-1].role == "tool":
            return "step used its tool"
        for task, reply in answers.items():
            if f"Your step: {task}" in text:
                return reply
        raise AssertionError(f"unexpected model call: {text[:200]}")

    return answer


def agent(tmp_path: Path, **orchestration: object) -> dict[str, object]:
    return load_agents(  # type: ignore[return-value]
        tmp_path,
        agent_yaml(
            "planner-agent",
            tools=[CALC],
            orchestration={"pattern": "plan_and_execute", **orchestration},
        ),
    )


async def test_a_plan_runs_as_a_dag_and_the_synthesizer_sees_every_result(
    tmp_path: Path,
) -> None:
    steps = plan(
        {"id": "a", "task": "add", "tool": "calculator"},
        {"id": "b", "task": "think"},
        {"id": "c", "task": "combine", "depends_on": ["a", "b"]},
    )
    seen: list[CompletionRequest] = []
    answer = planner_executor(
        [steps],
        {
            "add": ToolCall("k1", "calculator", {"expression": "2+3"}),
            "think": "b done",
            "combine": "c done",
        },
    )

    def model(request: CompletionRequest) -> object:
        seen.append(request)
        return answer(request)

    scripted = ScriptedProvider([model] * 6)
    out = await stream(agent(tmp_path), {"planner-agent": scripted}, "planner-agent", "2+3?")
    assert out.result is not None and out.result.answer == "final answer"
    types = [t for t in out.types if t != "model_call"]
    # a and b start together; c only after both ended; the synthesizer last.
    assert types[:4] == ["run_started", "plan", "step:plan", "task_started"]
    started = [e["id"] for e in out.events if e["type"] == "task_started"]
    finished = [e["id"] for e in out.events if e["type"] == "task_finished"]
    assert started[:2] == ["a", "b"] and started[2] == "c"
    assert set(finished[:2]) == {"a", "b"} and finished[2] == "c"
    c_start = next(
        i for i, e in enumerate(out.events) if e == {**e, "type": "task_started", "id": "c"}
    )
    assert all(
        i < c_start
        for i, e in enumerate(out.events)
        if e["type"] == "task_finished" and e["id"] in ("a", "b")
    )
    assert types[-1] == "step:answer"
    # Step a called its tool, inside its task.
    tool_results = [e for e in out.events if e["type"] == "tool_result"]
    assert [(e["name"], e["task"], e["content"]) for e in tool_results] == [
        ("calculator", "a", "5")
    ]
    # The synthesizer read every step's result, and is the only one streaming tokens.
    synthesis = last_text(seen[-1])
    assert "step used its tool" in synthesis and "b done" in synthesis and "c done" in synthesis
    assert {t["role"] for t in out.tokens} == {"synthesizer"}
    # Steps c read the results it depends on.
    combine = next(r for r in seen if "Your step: combine" in last_text(r))
    assert "b done" in last_text(combine) and "step used its tool" in last_text(combine)
    # Step a was offered only its tool.
    add = next(r for r in seen if "Your step: add" in last_text(r))
    assert [t.name for t in add.tools] == ["calculator"]
    result = out.result
    types = [s.type for s in result.steps]
    # a and b end in either order (they run at once); c after both.
    assert types[0] == "plan" and types[-2:] == ["task", "answer"]
    assert sorted(types[1:-2]) == ["task", "task", "tool_call"]
    assert result.iterations == 6  # planner 1, a 2, b 1, c 1, synthesizer 1


async def test_a_malformed_plan_is_sent_back_once_with_the_error(tmp_path: Path) -> None:
    bad = plan({"id": "a", "task": "x", "depends_on": ["nope"]})
    good = plan({"id": "a", "task": "x"})
    seen: list[str] = []
    answer = planner_executor([bad, good], {"x": "x done"})

    def model(request: CompletionRequest) -> object:
        seen.append(last_text(request))
        return answer(request)

    result = await run(
        agent(tmp_path), {"planner-agent": ScriptedProvider([model] * 4)}, "planner-agent", "go"
    )
    assert result.answer == "final answer"
    assert "depends on unknown step 'nope'" in seen[1]
    assert [s.type for s in result.steps] == ["plan", "task", "answer"]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("not json at all", "not JSON"),
        (plan({"id": "a", "task": "x", "tool": "no_such_tool"}), "names tool 'no_such_tool'"),
        (
            plan(
                {"id": "a", "task": "x", "depends_on": ["b"]},
                {"id": "b", "task": "y", "depends_on": ["a"]},
            ),
            "cycle",
        ),
        (json.dumps({"steps": []}), "should be non-empty"),
    ],
)
async def test_a_plan_malformed_twice_fails_clearly(tmp_path: Path, bad: str, words: str) -> None:
    scripted = ScriptedProvider([bad, bad])
    with pytest.raises(RunError, match="planner role wrote an invalid plan twice") as info:
        await run(agent(tmp_path), {"planner-agent": scripted}, "planner-agent", "go")
    assert words in info.value.message
    assert info.value.details["reason"] == "invalid_plan"
    assert [s["name"] for s in info.value.details["trace"]].count("model_call") == 2


def with_worker(tmp_path: Path, **orchestration: object) -> dict[str, object]:
    return load_agents(  # type: ignore[return-value]
        tmp_path,
        agent_yaml(
            "planner-agent",
            orchestration={"pattern": "plan_and_execute", "workers": ["flaky"], **orchestration},
        ),
        agent_yaml("flaky"),
    )


async def test_a_failed_step_is_re_planned(tmp_path: Path) -> None:
    first = plan({"id": "a", "task": "ask", "worker": "flaky"})
    second = plan({"id": "b", "task": "do it yourself"})
    seen: list[str] = []
    answer = planner_executor([first, second], {"do it yourself": "b done"})

    def model(request: CompletionRequest) -> object:
        seen.append(last_text(request))
        return answer(request)

    flaky = ScriptedProvider([ProviderError("worker model down", provider="x", status=500)])
    out = await stream(
        with_worker(tmp_path),
        {"planner-agent": ScriptedProvider([model] * 4), "flaky": flaky},
        "planner-agent",
        "go",
    )
    assert out.result is not None and out.result.answer == "final answer"
    plans = [e for e in out.events if e["type"] == "plan"]
    assert [p["attempt"] for p in plans] == [1, 2]
    # The re-planner was told what failed.
    replan = next(t for t in seen[1:] if "Write a plan" in t)
    assert "Steps that failed" in replan and "worker model down" in replan
    tasks = [(e["id"], e["is_error"]) for e in out.events if e["type"] == "task_finished"]
    assert tasks == [("a", True), ("b", False)]
    assert "delegate" in out.types


async def test_fail_fast_fails_on_the_first_failed_step(tmp_path: Path) -> None:
    first = plan({"id": "a", "task": "ask", "worker": "flaky"})
    flaky = ScriptedProvider([ProviderError("worker model down", provider="x", status=500)])
    with pytest.raises(RunError, match="plan step 'a' failed") as info:
        await run(
            with_worker(tmp_path, fail_fast=True),
            {"planner-agent": ScriptedProvider([first]), "flaky": flaky},
            "planner-agent",
            "go",
        )
    assert info.value.details["reason"] == "plan_step_failed"
    assert info.value.details["trace"]  # the partial trace


async def test_too_few_model_calls_for_a_plan_is_a_limit_error(tmp_path: Path) -> None:
    with pytest.raises(RunLimitExceeded, match="max_iterations=2 leaves no model call") as info:
        await run(
            agent(tmp_path, max_iterations=2),
            {"planner-agent": ScriptedProvider([])},
            "planner-agent",
            "go",
        )
    assert info.value.http_status == 504


async def test_a_plan_longer_than_the_calls_left_is_sent_back(tmp_path: Path) -> None:
    long = plan(*({"id": k, "task": "x"} for k in "abcd"))
    short = plan({"id": "a", "task": "x"})
    seen: list[CompletionRequest] = []
    answer = planner_executor([long, short], {"x": "x done"})

    def model(request: CompletionRequest) -> object:
        seen.append(request)
        return answer(request)

    # max_iterations 5: a plan of at most 3 steps (the planner's call and the
    # synthesizer's are needed too); the 4-step plan is sent back.
    result = await run(
        agent(tmp_path, max_iterations=5),
        {"planner-agent": ScriptedProvider([model] * 4)},
        "planner-agent",
        "go",
    )
    assert result.answer == "final answer"
    assert seen[0].response_schema is not None
    assert seen[0].response_schema["properties"]["steps"]["maxItems"] == 3
    assert "is too long" in last_text(seen[1])


async def test_the_deadline_covers_the_steps(tmp_path: Path) -> None:
    steps = plan({"id": "a", "task": "x"})
    slow = SlowProvider(5.0)

    class PlanThenSlow(ScriptedProvider):
        async def complete(self, request: CompletionRequest):  # type: ignore[override]
            if "Write a plan" in last_text(request):
                return await super().complete(request)
            return await slow.complete(request)

    with pytest.raises(RunTimeout) as info:
        await run(
            agent(tmp_path, timeout_seconds=0.5),
            {"planner-agent": PlanThenSlow([steps])},
            "planner-agent",
            "go",
        )
    assert slow.calls == 1
    names = [s["name"] for s in info.value.details["trace"]]
    assert "task_call" in names and "model_call" in names
