"""Pipeline (stages in order, a failing stage names itself), Supervisor (workers
through native tool calls, in parallel) and Swarm (handoffs carry the
conversation; the last speaker answers; bounded by max_iterations)."""

from __future__ import annotations

from pathlib import Path

import pytest

from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.errors import ProviderError, RunLimitExceeded, RunTimeout
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import agent_yaml, load_agents
from .pattern_helpers import SlowProvider, last_text, run, stream

CALC = {"name": "calculator", "type": "builtin"}


# -- pipeline ---------------------------------------------------------------------------


def pipeline(tmp_path: Path, stages: list[dict[str, object]], **more: object) -> dict[str, object]:
    return load_agents(  # type: ignore[return-value]
        tmp_path,
        agent_yaml(
            "pipe",
            tools=[CALC],
            orchestration={"pattern": "pipeline", "stages": stages, **more},
        ),
        agent_yaml("reviewer"),
    )


async def test_each_stage_output_is_the_next_stage_input(tmp_path: Path) -> None:
    seen: list[str] = []

    def rewrite(request: CompletionRequest) -> str:
        seen.append(last_text(request))
        return "2*21"

    def review(request: CompletionRequest) -> str:
        seen.append(last_text(request))
        return "reviewed: " + last_text(request)

    stages = [
        {"name": "rewrite", "prompt": "As an expression: {{ input }}"},
        {"name": "compute", "tool": "calculator"},
        {"name": "review", "agent": "reviewer"},
    ]
    out = await stream(
        pipeline(tmp_path, stages),
        {"pipe": ScriptedProvider([rewrite]), "reviewer": ScriptedProvider([review])},
        "pipe",
        "twice twenty-one",
    )
    assert out.result is not None and out.result.answer == "reviewed: 42"
    assert seen == ["As an expression: twice twenty-one", "42"]
    assert [t for t in out.types if t != "model_call"] == [
        "run_started",
        "task_started",
        "task_finished",
        "step:task",
        "task_started",
        "tool_call",
        "tool_result",
        "step:tool_call",
        "task_finished",
        "step:task",
        "task_started",
        "task_finished",
        "step:task",
        "step:answer",
    ]
    assert [(e["id"], e["input"]) for e in out.events if e["type"] == "task_started"] == [
        ("rewrite", "twice twenty-one"),
        ("compute", "2*21"),
        ("review", "42"),
    ]
    steps = [s for s in out.result.steps if s.type == "task"]
    assert steps[2].sub_run_id is not None
    # Not the last stage: its tokens are not streamed (the answer came from an agent).
    assert out.tokens == []
    assert out.result.iterations == 2


async def test_a_failing_stage_names_itself(tmp_path: Path) -> None:
    stages = [
        {"name": "first", "prompt": "{{ input }}"},
        {"name": "second", "agent": "reviewer"},
    ]
    down = ProviderError("reviewer model down", provider="x", status=500)
    with pytest.raises(ProviderError, match=r"pipeline stage 'second' \(2 of 2\) failed") as info:
        await run(
            pipeline(tmp_path, stages),
            {"pipe": ScriptedProvider(["ok"]), "reviewer": ScriptedProvider([down])},
            "pipe",
            "go",
        )
    assert info.value.details["stage"] == "second"
    assert info.value.details["trace"]


async def test_a_tool_stage_with_arguments_and_a_last_prompt_stage_streaming(
    tmp_path: Path,
) -> None:
    stages = [
        {"name": "compute", "tool": "calculator", "arguments": {"expression": "{{ input }}+1"}},
        {"name": "explain", "prompt": "Explain {{ input }} for {{ query }}"},
    ]

    def explain(request: CompletionRequest) -> str:
        assert last_text(request) == "Explain 3 for 1+1"
        return "three"

    out = await stream(
        pipeline(tmp_path, stages),
        {"pipe": ScriptedProvider([explain]), "reviewer": ScriptedProvider([])},
        "pipe",
        "1+1",
    )
    assert out.result is not None and out.result.answer == "three"
    assert "".join(t["text"] for t in out.tokens) == "three"


async def test_a_tool_stage_error_fails_the_stage(tmp_path: Path) -> None:
    stages = [{"name": "compute", "tool": "calculator"}]
    with pytest.raises(Exception, match=r"pipeline stage 'compute' \(1 of 1\) failed"):
        await run(
            pipeline(tmp_path, stages),
            {"pipe": ScriptedProvider([]), "reviewer": ScriptedProvider([])},
            "pipe",
            "not an expression",
        )


async def test_a_slow_stage_is_a_timeout_naming_it(tmp_path: Path) -> None:
    stages = [{"name": "slow", "prompt": "{{ input }}"}]
    with pytest.raises(RunTimeout, match=r"\(in pipeline stage .slow. \(1 of 1\)\)"):
        await run(
            pipeline(tmp_path, stages, timeout_seconds=0.3),
            {"pipe": SlowProvider(5.0), "reviewer": ScriptedProvider([])},
            "pipe",
            "go",
        )


# -- supervisor -------------------------------------------------------------------------


def supervisor(tmp_path: Path, **more: object) -> dict[str, object]:
    return load_agents(  # type: ignore[return-value]
        tmp_path,
        agent_yaml(
            "boss",
            orchestration={"pattern": "supervisor", "workers": ["math", "words"], **more},
        ),
        agent_yaml("math", tools=[CALC]),
        agent_yaml("words"),
    )


async def test_the_supervisor_delegates_in_parallel_through_tool_calls(tmp_path: Path) -> None:
    both = [
        ToolCall("d1", "math", {"query": "6*7"}),
        ToolCall("d2", "words", {"query": "say hi"}),
    ]

    def offered(request: CompletionRequest) -> list[ToolCall]:
        assert sorted(t.name for t in request.tools) == ["math", "words"]
        return both

    def reads(request: CompletionRequest) -> str:
        results = [m.content for m in request.messages if m.role == "tool"]
        assert results == ["42", "hi"]
        return "42 and hi"

    math = ScriptedProvider(
        [ToolCall("c", "calculator", {"expression": "6*7"}), lambda r: last_text(r)]
    )
    out = await stream(
        supervisor(tmp_path),
        {
            "boss": ScriptedProvider([offered, reads]),
            "math": math,
            "words": ScriptedProvider(["hi"]),
        },
        "boss",
        "go",
    )
    assert out.result is not None and out.result.answer == "42 and hi"
    assert [t for t in out.types if t != "model_call"] == [
        "run_started",
        "delegate",
        "delegate",
        "tool_call",
        "tool_call",
        "tool_result",
        "step:tool_call",
        "tool_result",
        "step:tool_call",
        "step:answer",
    ]
    assert [
        (e["peer"], e["query"], e["call_id"]) for e in out.events if e["type"] == "delegate"
    ] == [
        ("math", "6*7", "d1"),
        ("words", "say hi", "d2"),
    ]
    # The workers' own model and tool calls are in the one trace; their model calls
    # count against the supervisor's max_iterations.
    names = [s.name for s in out.result.trace]
    assert names.count("tool_call") == 3  # two delegations and math's calculator
    assert out.result.iterations == 2 + 2 + 1
    assert {t["role"] for t in out.tokens} == {"supervisor"}


async def test_workers_spend_the_supervisors_model_calls(tmp_path: Path) -> None:
    loop = ToolCall("c", "calculator", {"expression": "1+1"})

    def reads(request: CompletionRequest) -> str:
        assert "max_iterations=1" in last_text(request)  # math had 3 - 1 - 1 for itself
        return "math gave up"

    math = ScriptedProvider([loop])
    result = await run(
        supervisor(tmp_path, max_iterations=3),
        {
            "boss": ScriptedProvider([ToolCall("d1", "math", {"query": "x"}), reads]),
            "math": math,
            "words": ScriptedProvider([]),
        },
        "boss",
        "go",
    )
    # One call kept for the supervisor to read the result; the worker's call counts.
    assert result.answer == "math gave up"
    assert result.iterations == 3


# -- swarm ------------------------------------------------------------------------------


def swarm(tmp_path: Path, **more: object) -> dict[str, object]:
    return load_agents(  # type: ignore[return-value]
        tmp_path,
        agent_yaml(
            "desk", orchestration={"pattern": "swarm", "members": ["triage", "billing"], **more}
        ),
        agent_yaml("triage", prompts={"system": "You triage."}),
        agent_yaml("billing", prompts={"system": "You do billing."}, tools=[CALC]),
    )


async def test_control_and_the_conversation_pass_by_handoff(tmp_path: Path) -> None:
    def triage_first(request: CompletionRequest) -> ToolCall:
        assert request.messages[0].content == "You triage."
        assert [t.name for t in request.tools] == ["transfer_to_billing"]
        return ToolCall("h1", "transfer_to_billing", {"reason": "a refund"})

    def billing(request: CompletionRequest) -> object:
        roles = [m.role for m in request.messages]
        if roles[-1] == "tool" and request.messages[-1].name == "calculator":
            return ToolCall("h2", "transfer_to_triage", {"reason": "done"})
        # Billing sees its own prompt, then the conversation: the user's message, the
        # handoff call and its result, in order.
        assert request.messages[0].content == "You do billing."
        assert roles == ["system", "user", "assistant", "tool"]
        assert request.messages[2].tool_calls[0].id == "h1"
        assert request.messages[3].tool_call_id == "h1"
        assert sorted(t.name for t in request.tools) == ["calculator", "transfer_to_triage"]
        return ToolCall("c1", "calculator", {"expression": "10-3"})

    def triage_last(request: CompletionRequest) -> str:
        # Every tool result follows its own call, across both members' turns.
        messages = request.messages
        for i, m in enumerate(messages):
            if m.role == "tool":
                calls = [c.id for p in messages[:i] if p.role == "assistant" for c in p.tool_calls]
                assert m.tool_call_id in calls
        return "Refunded 7."

    out = await stream(
        swarm(tmp_path),
        {
            "desk": ScriptedProvider([]),
            "triage": ScriptedProvider([triage_first, triage_last]),
            "billing": ScriptedProvider([billing, billing]),
        },
        "desk",
        "refund please",
    )
    assert out.result is not None and out.result.answer == "Refunded 7."
    handoffs = [
        (e["from_agent"], e["to_agent"], e["reason"]) for e in out.events if e["type"] == "handoff"
    ]
    assert handoffs == [("triage", "billing", "a refund"), ("billing", "triage", "done")]
    assert [s.type for s in out.result.steps] == [
        "tool_call",
        "handoff",
        "tool_call",
        "tool_call",
        "handoff",
        "answer",
    ]
    assert out.result.iterations == 4
    # Tokens stream from the member holding control, tagged with it: the last
    # speaker's are the answer.
    assert {t["task"] for t in out.tokens} <= {"triage", "billing"}
    assert "".join(t["text"] for t in out.tokens if t["task"] == "triage") == "Refunded 7."
    # The swarm's transcript holds the whole conversation (what memory would save).
    assert out.result.messages[-1].content == "Refunded 7."


async def test_handoffs_are_bounded_by_max_iterations(tmp_path: Path) -> None:
    to_b = ToolCall("h", "transfer_to_billing", {})
    to_a = ToolCall("h", "transfer_to_triage", {})
    with pytest.raises(RunLimitExceeded) as info:
        await run(
            swarm(tmp_path, max_iterations=3),
            {
                "desk": ScriptedProvider([]),
                "triage": ScriptedProvider([to_b, to_b]),
                "billing": ScriptedProvider([to_a]),
            },
            "desk",
            "go",
        )
    assert info.value.http_status == 504
    assert [s["name"] for s in info.value.details["trace"]].count("member_turn") == 3


async def test_concurrent_workers_share_the_model_calls_left(tmp_path: Path) -> None:
    loop = ToolCall("c", "calculator", {"expression": "1+1"})
    both = [ToolCall("d1", "math", {"query": "x"}), ToolCall("d2", "words", {"query": "y"})]
    words_loop = ScriptedProvider([ToolCall("w", "no_such_tool", {})] * 2)
    math = ScriptedProvider([loop, loop])
    # max_iterations 6: the supervisor's call leaves 5, one kept for it to read the
    # results, 2 for each worker; both spend them without answering.
    result = await run(
        supervisor(tmp_path, max_iterations=6),
        {"boss": ScriptedProvider([both, "both failed"]), "math": math, "words": words_loop},
        "boss",
        "go",
    )
    assert len(math.requests) == 2 and len(words_loop.requests) == 2
    assert result.answer == "both failed"
    assert result.iterations == 6


async def test_a_second_handoff_in_one_answer_reads_as_not_made(tmp_path: Path) -> None:
    two = [
        ToolCall("h1", "transfer_to_billing", {}),
        ToolCall("h2", "transfer_to_billing", {"reason": "again"}),
    ]

    def billing(request: CompletionRequest) -> str:
        tools = [m for m in request.messages if m.role == "tool"]
        assert [m.tool_call_id for m in tools] == ["h1", "h2"]
        assert tools[0].content.startswith("Transferred to billing")
        assert "control already passed to billing" in (tools[1].content or "")
        return "billing here"

    result = await run(
        swarm(tmp_path),
        {
            "desk": ScriptedProvider([]),
            "triage": ScriptedProvider([two]),
            "billing": ScriptedProvider([billing]),
        },
        "desk",
        "go",
    )
    assert result.answer == "billing here"
    assert [s.type for s in result.steps].count("handoff") == 1


async def test_members_see_the_swarms_earlier_turns(tmp_path: Path) -> None:
    from astromesh_ray.core.build import LocalAgents
    from astromesh_ray.core.context import RunRequest

    agents = load_agents(
        tmp_path,
        agent_yaml(
            "desk",
            orchestration={"pattern": "swarm", "members": ["triage", "billing"]},
            memory={"conversational": {"backend": "in_memory"}},
        ),
        agent_yaml("triage"),
        agent_yaml("billing"),
    )

    def second_turn(request: CompletionRequest) -> str:
        texts = [m.content for m in request.messages if m.role in ("user", "assistant")]
        assert texts == ["my name is Ada", "hello", "what is my name?"]
        return "Ada"

    local = LocalAgents(
        agents,
        scripted={
            "desk": ScriptedProvider([]),
            "triage": ScriptedProvider(["hello", second_turn]),
            "billing": ScriptedProvider([]),
        },
    )
    try:
        desk = await local.runtime("desk")
        await desk.run(RunRequest(query="my name is Ada", session_id="s1"))
        result = await desk.run(RunRequest(query="what is my name?", session_id="s1"))
    finally:
        await local.aclose()
    assert result.answer == "Ada"
