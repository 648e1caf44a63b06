"""ParallelFanOut: subtasks from YAML or the splitter, run at once as tasks, merged
by the synthesizer; a failed branch is reported (or fails the run with fail_fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.errors import ProviderError, RunError, RunLimitExceeded, RunTimeout
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import agent_yaml, load_agents
from .pattern_helpers import SlowProvider, last_text, run, stream

MERGE = "Answer the user's message above by merging"


def agents(tmp_path: Path, **orchestration: object) -> dict[str, object]:
    return load_agents(  # type: ignore[return-value]
        tmp_path,
        agent_yaml(
            "fan",
            tools=[{"name": "calculator", "type": "builtin"}],
            orchestration={"pattern": "parallel_fan_out", **orchestration},
        ),
    )


def branch_model(replies: dict[str, object], seen: list[CompletionRequest] | None = None):
    def answer(request: CompletionRequest) -> object:
        if seen is not None:
            seen.append(request)
        text = last_text(request)
        if MERGE in text:
            return "merged"
        if "Split the user's message" in text:
            return json.dumps({"subtasks": ["north", "south"]})
        if request.messages[-1].role == "tool":
            return f"used tool: {text}"
        for part, reply in replies.items():
            if f"Your part: {part}" in text:
                if isinstance(reply, BaseException):
                    raise reply
                return reply
        raise AssertionError(text[:200])

    return answer


async def test_yaml_branches_run_and_are_merged(tmp_path: Path) -> None:
    seen: list[CompletionRequest] = []
    model = branch_model(
        {
            "sum for {{ query }}": "unused",
            "sum for go": ToolCall("t", "calculator", {"expression": "1+1"}),
            "words for go": "words!",
        },
        seen,
    )
    out = await stream(
        agents(
            tmp_path,
            branches=["sum for {{ query }}", {"name": "words", "task": "words for {{ query }}"}],
        ),
        {"fan": ScriptedProvider([model] * 4)},
        "fan",
        "go",
    )
    assert out.result is not None and out.result.answer == "merged"
    no_models = [t for t in out.types if t != "model_call"]
    assert no_models[:3] == ["run_started", "task_started", "task_started"]
    assert no_models[-1] == "step:answer"
    assert [e["id"] for e in out.events if e["type"] == "task_started"] == ["branch-1", "words"]
    finished = {e["id"]: e for e in out.events if e["type"] == "task_finished"}
    assert finished["branch-1"]["output"] == "used tool: 2"
    assert finished["words"]["output"] == "words!"
    # Tool calls inside a branch run and are tagged with it.
    assert [(e["name"], e["task"]) for e in out.events if e["type"] == "tool_result"] == [
        ("calculator", "branch-1")
    ]
    merge = last_text(seen[-1])
    assert "used tool: 2" in merge and "words!" in merge
    assert {t["role"] for t in out.tokens} == {"synthesizer"}
    assert [s.type for s in out.result.steps].count("task") == 2


async def test_the_splitter_writes_the_subtasks(tmp_path: Path) -> None:
    model = branch_model({"north": "N", "south": "S"})
    out = await stream(agents(tmp_path), {"fan": ScriptedProvider([model] * 4)}, "fan", "go")
    assert out.result is not None and out.result.answer == "merged"
    assert [e["input"] for e in out.events if e["type"] == "task_started"] == ["north", "south"]
    roles = [e["role"] for e in out.events if e["type"] == "model_call"]
    assert roles[0] == "splitter" and roles[-1] == "synthesizer"
    assert sorted(roles[1:3]) == ["executor", "executor"]


async def test_a_failed_branch_is_reported_and_the_others_kept(tmp_path: Path) -> None:
    seen: list[CompletionRequest] = []
    model = branch_model(
        {"north": ProviderError("north is down", provider="x", status=500), "south": "S"}, seen
    )
    out = await stream(agents(tmp_path), {"fan": ScriptedProvider([model] * 4)}, "fan", "go")
    assert out.result is not None and out.result.answer == "merged"
    finished = {
        e["input"] if "input" in e else e["id"]: e
        for e in out.events
        if e["type"] == "task_finished"
    }
    errors = sorted(e["is_error"] for e in finished.values())
    assert errors == [False, True]
    merge = last_text(seen[-1])
    assert "FAILED: " in merge and "north is down" in merge and "S" in merge


async def test_fail_fast_fails_the_run(tmp_path: Path) -> None:
    model = branch_model({"a": ProviderError("a is down", provider="x", status=500), "b": "B"})
    scripted = ScriptedProvider([model] * 2)
    with pytest.raises(RunError, match=r"branch 'branch-1' failed: .*a is down") as info:
        await run(
            agents(tmp_path, branches=["a", "b"], fail_fast=True), {"fan": scripted}, "fan", "go"
        )
    assert info.value.details["reason"] == "branch_failed"
    scripted.discard_remaining()  # b may or may not have been asked before a failed


async def test_every_branch_failing_fails_the_run(tmp_path: Path) -> None:
    down = ProviderError("down", provider="x", status=500)
    model = branch_model({"a": down, "b": down})
    with pytest.raises(RunError, match="every branch failed"):
        await run(
            agents(tmp_path, branches=["a", "b"]),
            {"fan": ScriptedProvider([model] * 2)},
            "fan",
            "go",
        )


async def test_model_calls_are_counted_across_branches(tmp_path: Path) -> None:
    with pytest.raises(RunLimitExceeded, match=r"leaves 2 model call.* for 3 branches"):
        await run(
            agents(tmp_path, branches=["a", "b", "c"], max_iterations=3),
            {"fan": ScriptedProvider([])},
            "fan",
            "go",
        )


async def test_a_branch_looping_on_tools_stops_at_its_share(tmp_path: Path) -> None:
    loop = ToolCall("t", "calculator", {"expression": "1+1"})

    def model(request: CompletionRequest) -> object:
        text = last_text(request)
        if MERGE in text:
            return "merged"
        if "Your part: b" in text:
            return "B"
        return loop  # branch a keeps calling tools

    # max_iterations 5: 2 for each of 2 branches, 1 for the synthesizer; branch a
    # fails at its share, b answers, and the run still answers within 5 calls.
    scripted = ScriptedProvider([model] * 4)
    result = await run(
        agents(tmp_path, branches=["a", "b"], max_iterations=5), {"fan": scripted}, "fan", "go"
    )
    assert result.answer == "merged"
    tasks = {s.name: s for s in result.steps if s.type == "task"}
    assert tasks["branch-1"].is_error and "max_iterations=2" in tasks["branch-1"].output
    assert not tasks["branch-2"].is_error
    assert result.iterations == 4


async def test_the_deadline_ends_slow_branches_with_the_partial_trace(tmp_path: Path) -> None:
    slow = SlowProvider(5.0)
    out_error: RunTimeout | None = None
    try:
        await stream(
            agents(tmp_path, branches=["a", "b"], timeout_seconds=0.3), {"fan": slow}, "fan", "go"
        )
    except RunTimeout as exc:
        out_error = exc
    assert out_error is not None
    assert out_error.http_status == 504
    assert [s["name"] for s in out_error.details["trace"]].count("task_call") == 2
    assert slow.calls == 2
