from __future__ import annotations

import asyncio

import pytest

from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.patterns import ReActPattern, pattern_for
from astromesh_ray.core.prompts import PromptSet
from astromesh_ray.core.runtime import AgentRuntime, RunRequest
from astromesh_ray.core.tools import PythonTool, ToolRegistry
from astromesh_ray.core.tools.python import resolve_python_tool
from astromesh_ray.errors import ConfigError, InvalidRequest, RunError, RunTimeout
from astromesh_ray.testing import ScriptedProvider


def make_runtime(
    provider: object,
    *,
    tools: list[object] | None = None,
    system: str = "You are terse.",
    templates: dict[str, str] | None = None,
    max_iterations: int = 5,
    timeout_s: float = 10.0,
) -> AgentRuntime:
    registry = ToolRegistry(
        tools if tools is not None else [resolve_python_tool("calculator", None)]
    )
    return AgentRuntime(
        name="t",
        provider=provider,  # type: ignore[arg-type]
        tools=registry,
        prompts=PromptSet(system, templates, origin="t.agent.yaml"),
        pattern=ReActPattern(),
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
    assert [s["type"] for s in result.steps] == ["tool_call", "answer"]
    assert result.steps[0]["result"] == "20" and result.steps[0]["is_error"] is False
    assert (
        result.usage.calls == 2 and result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    )
    names = [s["name"] for s in result.trace]
    assert names == ["model_call", "tool_call", "model_call"]
    assert all(s["duration_ms"] is not None and "pid" in s["where"] for s in result.trace)
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
    assert [s.get("is_error") for s in result.steps] == [True, False, None]


async def test_malformed_tool_arguments_are_reported_to_the_model() -> None:
    def check(req: CompletionRequest) -> str:
        assert req.messages[-1].content is not None
        assert "were not a JSON object: '{\"expression\": 1+'" in req.messages[-1].content
        return "sorry"

    bad = ToolCall("1", "calculator", {}, invalid_arguments='{"expression": 1+')
    result = await make_runtime(ScriptedProvider([bad, check])).run(RunRequest(query="q"))
    assert result.answer == "sorry" and result.steps[0]["is_error"] is True


async def test_max_iterations_bounds_the_loop() -> None:
    loop = [ToolCall(str(i), "calculator", {"expression": "1"}) for i in range(3)]
    provider = ScriptedProvider(loop)
    with pytest.raises(RunError) as info:
        await make_runtime(provider, max_iterations=3).run(RunRequest(query="loop"))
    provider.assert_consumed()
    assert info.value.details["reason"] == "max_iterations"
    # 3 model calls + the 2 tool rounds whose results a model call read; the last
    # round's tools are not run: nothing would read their results.
    assert [s["name"] for s in info.value.details["trace"]] == ["model_call", "tool_call"] * 2 + [
        "model_call"
    ]


async def test_timeout_bounds_the_run_and_keeps_the_partial_trace() -> None:
    async def slow(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return "done"

    provider = ScriptedProvider([ToolCall("1", "slow", {"seconds": 30})])
    runtime = make_runtime(provider, tools=[PythonTool(slow)], timeout_s=0.3)
    with pytest.raises(RunTimeout, match=r"timeout_seconds=0\.3") as info:
        await runtime.run(RunRequest(query="wait"))
    spans = info.value.details["trace"]
    assert [s["name"] for s in spans] == ["model_call", "tool_call"]
    assert spans[1]["status"] == "error"
    assert info.value.http_status == 504


async def test_stream_yields_tokens_tools_and_the_result() -> None:
    provider = ScriptedProvider(
        [ToolCall("1", "calculator", {"expression": "6*7"}), "The answer is 42."]
    )
    events = [e async for e in make_runtime(provider).stream(RunRequest(query="6*7?"))]
    types = [e.type for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert types.index("tool_call") < types.index("tool_result") < types.index("answer")
    tokens = "".join(e.data["text"] for e in events if e.type == "token")
    assert tokens == "The answer is 42."
    result = events[-1].data["result"]
    assert result["answer"] == "The answer is 42." and result["usage"]["calls"] == 2


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
    runtime = make_runtime(
        ScriptedProvider([]), system="{{ ''.__class__.__mro__[1].__subclasses__() }}"
    )
    with pytest.raises(InvalidRequest, match="unsafe"):
        await runtime.run(RunRequest(query="q"))


def test_prompt_syntax_errors_are_config_errors() -> None:
    with pytest.raises(
        ConfigError, match=r"spec.prompts.templates.bad line 2: Jinja2 syntax error"
    ):
        PromptSet("ok", {"bad": "line one\n{% if %}"}, origin="a.agent.yaml")


def test_unknown_pattern_lists_the_supported_ones() -> None:
    with pytest.raises(ConfigError, match="supported patterns: react"):
        pattern_for("swarm")


async def test_parallel_steps_are_reported_in_call_order() -> None:
    async def nap(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    calls = [ToolCall("slow", "nap", {"seconds": 0.2}), ToolCall("fast", "nap", {"seconds": 0.0})]
    provider = ScriptedProvider([calls, "done"])
    result = await make_runtime(provider, tools=[PythonTool(nap)]).run(RunRequest(query="q"))
    assert [(s["id"], s["result"]) for s in result.steps[:2]] == [
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
