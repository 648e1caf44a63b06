from __future__ import annotations

import asyncio

import pytest

from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import RunFinished, Token
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.patterns import ReActPattern, pattern_for
from astromesh_ray.core.prompts import PromptSet, PromptStage
from astromesh_ray.core.runtime import AgentRuntime
from astromesh_ray.core.stages import Stages
from astromesh_ray.core.tools import FunctionToolset, PythonTool, Tool
from astromesh_ray.core.tools.python import resolve_python_tool
from astromesh_ray.errors import ConfigError, InvalidRequest, RunError, RunTimeout
from astromesh_ray.testing import ScriptedProvider


def make_runtime(
    provider: object,
    *,
    tools: list[Tool] | None = None,
    system: str = "You are terse.",
    templates: dict[str, str] | None = None,
    max_iterations: int = 5,
    timeout_s: float = 10.0,
) -> AgentRuntime:
    toolset = FunctionToolset(
        tools if tools is not None else [resolve_python_tool("calculator", None)]
    )
    prompts = PromptSet(system, templates, origin="t.agent.yaml")
    return AgentRuntime(
        name="t",
        models={"reasoner": provider},  # type: ignore[dict-item]
        pattern=ReActPattern(),
        stages=Stages(prepare=(PromptStage(prompts),)),
        toolsets=[toolset],
        max_iterations=max_iterations,
        timeout_s=timeout_s,
    )


async def test_react_calls_a_tool_then_answers() -> None:
    def second(req: CompletionRequest) -> str:
        tool_msg = req.messages[-1]
        assert (
            tool_msg.role == "tool" and tool_msg.tool_call_id == "c1" and tool_msg.content == "20"
        )
        assert req.messages[-2].tool_calls == [
            ToolCall("c1", "calculator", {"expression": "(2+3)*4"})
        ]
        return "It is 20."

    def first(req: CompletionRequest) -> ToolCall:
        assert [m.role for m in req.messages] == ["system", "user"]
        assert req.messages[0].content == "You are terse."
        assert [t.name for t in req.tools] == ["calculator"]
        return ToolCall("c1", "calculator", {"expression": "(2+3)*4"})

    provider = ScriptedProvider([first, second])
    result = await make_runtime(provider).run(RunRequest(query="what is (2+3)*4?", session_id="s1"))
    provider.assert_consumed()
    assert result.answer == "It is 20."
    assert result.session_id == "s1"
    assert [s.type for s in result.steps] == ["tool_call", "answer"]
    tool_step = result.steps[0]
    assert tool_step.type == "tool_call" and tool_step.result == "20" and not tool_step.is_error
    assert (
        result.usage.calls == 2 and result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    )
    names = [s.name for s in result.trace]
    assert names == ["run", "model_call", "tool_call", "model_call"]
    assert all(s.duration_ms is not None and "pid" in s.where for s in result.trace)
    # One trace: the run span is the root, every step its child.
    run_span = result.trace[0]
    assert run_span.parent_id is None and run_span.trace_id == result.trace_id
    assert {s.parent_id for s in result.trace[1:]} == {run_span.span_id}
    assert len({s.span_id for s in result.trace}) == 4
    # The transcript ends with the final assistant message, ready to be saved.
    assert [m.role for m in result.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert result.messages[-1].content == "It is 20."
    assert result.to_dict()["usage"]["total_tokens"] == result.usage.total_tokens


async def test_parallel_tool_calls_keep_their_order() -> None:
    calls = [
        ToolCall("a", "calculator", {"expression": "1+1"}),
        ToolCall("b", "calculator", {"expression": "2+2"}),
    ]

    def answer(req: CompletionRequest) -> str:
        tool_msgs = [m for m in req.messages if m.role == "tool"]
        assert [(m.tool_call_id, m.content) for m in tool_msgs] == [("a", "2"), ("b", "4")]
        return "2 and 4"

    provider = ScriptedProvider([calls, answer])
    result = await make_runtime(provider).run(RunRequest(query="q"))
    assert result.answer == "2 and 4"
    provider.assert_consumed()


async def test_tool_errors_are_fed_back_and_the_model_recovers() -> None:
    def check(req: CompletionRequest) -> ToolCall:
        assert req.messages[-1].content is not None
        assert (
            "invalid arguments" in req.messages[-1].content
            and "expression" in req.messages[-1].content
        )
        return ToolCall("2", "calculator", {"expression": "1+2"})

    provider = ScriptedProvider([ToolCall("1", "calculator", {"expr": "1+2"}), check, "3"])
    result = await make_runtime(provider).run(RunRequest(query="1+2?"))
    assert result.answer == "3"
    assert [getattr(s, "is_error", None) for s in result.steps] == [True, False, None]


async def test_malformed_tool_arguments_are_reported_to_the_model() -> None:
    def check(req: CompletionRequest) -> str:
        assert req.messages[-1].content is not None
        assert "were not a JSON object: '{\"expression\": 1+'" in req.messages[-1].content
        return "sorry"

    bad = ToolCall("1", "calculator", {}, invalid_arguments='{"expression": 1+')
    result = await make_runtime(ScriptedProvider([bad, check])).run(RunRequest(query="q"))
    assert result.answer == "sorry" and getattr(result.steps[0], "is_error", None) is True


async def test_max_iterations_bounds_the_loop() -> None:
    loop = [ToolCall(str(i), "calculator", {"expression": "1"}) for i in range(3)]
    provider = ScriptedProvider(loop)
    with pytest.raises(RunError) as info:
        await make_runtime(provider, max_iterations=3).run(RunRequest(query="loop"))
    provider.assert_consumed()
    assert info.value.details["reason"] == "max_iterations"
    # 3 model calls + the 2 tool rounds whose results a model call read; the last
    # round's tools are not run: nothing would read their results.
    assert [s["name"] for s in info.value.details["trace"]] == ["run"] + [
        "model_call",
        "tool_call",
    ] * 2 + ["model_call"]


async def test_timeout_bounds_the_run_and_keeps_the_partial_trace() -> None:
    async def slow(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return "done"

    provider = ScriptedProvider([ToolCall("1", "slow", {"seconds": 30})])
    runtime = make_runtime(provider, tools=[PythonTool(slow)], timeout_s=0.3)
    with pytest.raises(RunTimeout, match=r"within its timeout_seconds") as info:
        await runtime.run(RunRequest(query="wait"))
    spans = info.value.details["trace"]
    assert [s["name"] for s in spans] == ["run", "model_call", "tool_call"]
    assert spans[0]["status"] == "error" and spans[2]["status"] == "error"
    assert info.value.http_status == 504


async def test_stream_yields_tokens_tools_and_the_result() -> None:
    provider = ScriptedProvider(
        [ToolCall("1", "calculator", {"expression": "6*7"}), "The answer is 42."]
    )
    events = [e async for e in make_runtime(provider).stream(RunRequest(query="6*7?"))]
    types = [e.type for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert types.index("tool_call") < types.index("tool_result") < types.index("run_finished")
    step_kinds = [e.step.type for e in events if e.type == "step"]
    assert step_kinds == ["tool_call", "answer"]
    tokens = [e for e in events if isinstance(e, Token)]
    assert "".join(t.text for t in tokens) == "The answer is 42."
    assert {(t.channel, t.iteration, t.role) for t in tokens} == {("answer", 2, "reasoner")}
    last = events[-1]
    assert isinstance(last, RunFinished)
    assert last.result.answer == "The answer is 42." and last.result.usage.calls == 2


async def test_prompt_variables_templates_and_undefined() -> None:
    def check(req: CompletionRequest) -> str:
        assert req.messages[0].content == "Hi Ada.\nRules: be brief."
        return "ok"

    runtime = make_runtime(
        ScriptedProvider([check]),
        system="Hi {{ user }}.\n{% include 'rules' %}",
        templates={"rules": "Rules: be {{ context.style }}."},
    )
    result = await runtime.run(RunRequest(query="q", context={"user": "Ada", "style": "brief"}))
    assert result.answer == "ok"
    with pytest.raises(InvalidRequest, match="'user' is undefined") as info:
        await runtime.run(RunRequest(query="q", context={"style": "x"}))
    assert info.value.http_status == 422


async def test_prompt_sandbox_blocks_unsafe_access() -> None:
    # Through a request variable: refused when the request renders it...
    runtime = make_runtime(ScriptedProvider([]), system="{{ name.__class__.__mro__ }}")
    with pytest.raises(InvalidRequest, match="unsafe"):
        await runtime.run(RunRequest(query="q", context={"name": "x"}))
    # ...and a prompt that is unsafe whatever the request is refused when built.
    with pytest.raises(ConfigError, match="unsafe"):
        make_runtime(ScriptedProvider([]), system="{{ ''.__class__.__mro__[1].__subclasses__() }}")


def test_prompt_syntax_errors_are_config_errors() -> None:
    with pytest.raises(
        ConfigError, match=r"spec.prompts.templates.bad line 2: Jinja2 syntax error"
    ):
        PromptSet("ok", {"bad": "line one\n{% if %}"}, origin="a.agent.yaml")


def test_unknown_pattern_lists_the_supported_ones() -> None:
    from astromesh_ray.spec import OrchestrationSpec

    with pytest.raises(ConfigError, match="supported patterns: react, plan_and_execute"):
        pattern_for(OrchestrationSpec.model_construct(pattern="glyph"))


async def test_parallel_steps_are_reported_in_call_order() -> None:
    async def nap(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    calls = [ToolCall("slow", "nap", {"seconds": 0.2}), ToolCall("fast", "nap", {"seconds": 0.0})]
    provider = ScriptedProvider([calls, "done"])
    result = await make_runtime(provider, tools=[PythonTool(nap)]).run(RunRequest(query="q"))
    assert [(getattr(s, "id", None), getattr(s, "result", None)) for s in result.steps[:2]] == [
        ("slow", "slept 0.2"),
        ("fast", "slept 0.0"),
    ]


async def test_context_values_cannot_break_rendering() -> None:
    runtime = make_runtime(ScriptedProvider(["ok"]), system="Hi {{ name }}, {{ n + 1 }}")
    with pytest.raises(InvalidRequest, match="failed to render: TypeError") as info:
        await runtime.run(RunRequest(query="q", context={"name": "x", "n": "a"}))
    assert info.value.http_status == 422
    result = await runtime.run(RunRequest(query="q", context={"self": 1, "name": "x", "n": 1}))
    assert result.answer == "ok"


async def test_stream_timeout_ignores_a_slow_consumer_and_raises_run_timeout() -> None:
    async def slow(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return "done"

    # A consumer slower than the whole budget does not cause a timeout by itself...
    runtime = make_runtime(ScriptedProvider(["fine"]), timeout_s=0.2)
    seen = []
    async for event in runtime.stream(RunRequest(query="q")):
        seen.append(event.type)
        await asyncio.sleep(0.1)
    assert seen[-1] == "run_finished"
    # ...while the agent's own slowness raises RunTimeout, not a bare cancellation.
    provider = ScriptedProvider([ToolCall("1", "slow", {"seconds": 5})])
    runtime = make_runtime(provider, tools=[PythonTool(slow)], timeout_s=0.3)
    with pytest.raises(RunTimeout):
        async for _ in runtime.stream(RunRequest(query="q")):
            await asyncio.sleep(0.05)
