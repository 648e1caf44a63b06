"""The shared steps: model step (roles, streaming channels, iterations), tool step
(permissions, validation, timeout, size cap, bugs) and the deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import ModelCall, RunFinished, Token, ToolStep
from astromesh_ray.core.messages import (
    CompletionChunk,
    CompletionRequest,
    ToolArgsDelta,
    ToolCall,
    Usage,
)
from astromesh_ray.core.tools import PythonTool, ToolContext
from astromesh_ray.errors import RunError, RunTimeout
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import runtime


async def nap(seconds: float) -> str:
    """Sleep, then say so."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


def long_text(n: int) -> str:
    """A long result."""
    return "x" * n


async def test_a_tool_that_is_not_permitted_is_neither_offered_nor_run() -> None:
    def check(req: CompletionRequest) -> ToolCall:
        assert [t.name for t in req.tools] == ["nap"]  # long_text is not offered
        return ToolCall("1", "long_text", {"n": 3})

    def read(req: CompletionRequest) -> str:
        assert "not permitted for this agent" in (req.messages[-1].content or "")
        return "ok"

    provider = ScriptedProvider([check, read])
    rt = runtime(provider, tools=[PythonTool(nap), PythonTool(long_text)], allowed_tools=["nap"])
    result = await rt.run(RunRequest(query="q"))
    step = result.steps[0]
    assert isinstance(step, ToolStep) and step.is_error and step.tool == "long_text"


async def test_results_over_the_cap_are_cut_and_say_so() -> None:
    from astromesh_ray.core.tools.function import FunctionToolset, ToolLimits

    def check(req: CompletionRequest) -> str:
        content = req.messages[-1].content or ""
        assert content.startswith("x" * 100) and content.endswith(
            "[truncated: 900 more characters]"
        )
        return "done"

    provider = ScriptedProvider([ToolCall("1", "long_text", {"n": 1000}), check])
    rt = runtime(provider, tools=[])
    rt.toolsets = [
        FunctionToolset([PythonTool(long_text)], {"long_text": ToolLimits(max_result_chars=100)})
    ]
    result = await rt.run(RunRequest(query="q"))
    assert result.answer == "done"
    span = next(s for s in result.trace if s.name == "tool_call")
    assert span.attributes["truncated_chars"] == 900


async def test_a_tool_past_its_own_timeout_is_an_error_the_model_reads() -> None:
    from astromesh_ray.core.tools.function import FunctionToolset, ToolLimits

    def check(req: CompletionRequest) -> str:
        assert "did not answer within 0.05 s" in (req.messages[-1].content or "")
        return "gave up"

    provider = ScriptedProvider([ToolCall("1", "nap", {"seconds": 5}), check])
    rt = runtime(provider, tools=[])
    rt.toolsets = [FunctionToolset([PythonTool(nap)], {"nap": ToolLimits(timeout_s=0.05)})]
    result = await rt.run(RunRequest(query="q"))
    assert result.answer == "gave up"
    span = next(s for s in result.trace if s.name == "tool_call")
    assert span.status == "error"


async def test_a_bug_in_a_toolset_is_a_run_error_not_a_message_to_the_model() -> None:
    from astromesh_ray.core.tools.base import ToolDef
    from astromesh_ray.core.tools.function import FunctionToolset

    class Broken:
        name = "broken"

        async def list_tools(self) -> list[ToolDef]:
            return list(await FunctionToolset([PythonTool(nap)]).list_tools())

        async def call(self, name: str, arguments: dict[str, object], ctx: ToolContext) -> None:
            raise KeyError("our own bug")

        async def aclose(self) -> None:
            return None

    provider = ScriptedProvider([ToolCall("1", "nap", {"seconds": 0})])
    rt = runtime(provider, tools=[])
    rt.toolsets = [Broken()]  # type: ignore[list-item]
    with pytest.raises(RunError, match="internal error in agent 't': KeyError") as info:
        await rt.run(RunRequest(query="q"))
    assert [s["name"] for s in info.value.details["trace"]] == ["run", "model_call", "tool_call"]


async def test_max_iterations_is_counted_by_the_model_step() -> None:
    # A pattern cannot make more model calls than max_iterations, whatever it does.
    provider = ScriptedProvider([ToolCall("1", "calculator", {"expression": "1"})])
    with pytest.raises(RunError) as info:
        await runtime(provider, max_iterations=1).run(RunRequest(query="q"))
    assert info.value.details["reason"] == "max_iterations"


class ReasoningProvider:
    """Streams reasoning, answer text and tool-argument fragments like a real backend."""

    name = "reasoning"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: CompletionRequest) -> object:
        raise AssertionError("stream only")

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        self.calls += 1
        if self.calls == 1:
            yield CompletionChunk(reasoning="I should add. ")
            yield CompletionChunk(tool_args=[ToolArgsDelta(0, '{"expr', "c1", "calculator")])
            yield CompletionChunk(tool_args=[ToolArgsDelta(0, 'ession": "1+1"}')])
            yield CompletionChunk(
                tool_calls=[ToolCall("c1", "calculator", {"expression": "1+1"})],
                usage=Usage(3, 4, 1),
                finish_reason="tool_calls",
            )
        else:
            yield CompletionChunk(text="It is ")
            yield CompletionChunk(text="2.")
            yield CompletionChunk(usage=Usage(5, 2, 1), finish_reason="stop")

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


async def test_tokens_carry_their_channel() -> None:
    events = [e async for e in runtime(ReasoningProvider()).stream(RunRequest(query="1+1?"))]  # type: ignore[arg-type]
    tokens = [(e.channel, e.text, e.iteration) for e in events if isinstance(e, Token)]
    assert tokens == [
        ("reasoning", "I should add. ", 1),
        ("tool_args", '{"expr', 1),
        ("tool_args", 'ession": "1+1"}', 1),
        ("answer", "It is ", 2),
        ("answer", "2.", 2),
    ]
    calls = [e for e in events if isinstance(e, ModelCall)]
    assert [(c.iteration, c.usage.total_tokens) for c in calls] == [(1, 7), (2, 7)]
    last = events[-1]
    assert isinstance(last, RunFinished) and last.result.answer == "It is 2."
    assert last.result.usage.total_tokens == 14


async def test_the_deadline_is_the_run_not_the_reader() -> None:
    # A slow reader of the stream is not the agent's fault...
    rt = runtime(ScriptedProvider(["fine"]), timeout_s=0.2)
    seen = []
    async for event in rt.stream(RunRequest(query="q")):
        seen.append(event.type)
        await asyncio.sleep(0.1)
    assert seen[-1] == "run_finished"
    # ...a sub-run gets what is left of its caller's deadline, not its own timeout.
    provider = ScriptedProvider([ToolCall("1", "nap", {"seconds": 5})])
    rt = runtime(provider, tools=[PythonTool(nap)], timeout_s=60)
    request = RunRequest(query="q", deadline_s=0.2, parent_run_id="parent")
    with pytest.raises(RunTimeout, match=r"within the 0\.2 s its caller had left"):
        await rt.run(request)


async def test_reserved_context_keys_are_refused() -> None:
    from astromesh_ray.errors import InvalidRequest

    rt = runtime(ScriptedProvider([]))
    for key in ("query", "memory", "knowledge", "context"):
        with pytest.raises(InvalidRequest, match=f"'{key}' are reserved") as info:
            await rt.run(RunRequest(query="q", context={key: "x"}))
        assert info.value.http_status == 422 and info.value.details["field"] == f"context.{key}"


async def test_a_timeout_error_raised_by_a_toolset_itself_is_not_mistaken_for_its_limit() -> None:
    from astromesh_ray.core.tools.base import ToolDef
    from astromesh_ray.core.tools.function import FunctionToolset, ToolLimits

    class TimesOutItself:
        """A toolset whose own code raises TimeoutError: a bug, not the tool's limit."""

        name = "broken"

        async def list_tools(self) -> list[ToolDef]:
            toolset = FunctionToolset([PythonTool(nap)], {"nap": ToolLimits(timeout_s=5)})
            return list(await toolset.list_tools())

        async def call(self, name: str, arguments: dict[str, object], ctx: ToolContext) -> None:
            raise TimeoutError("its own wait_for")

        async def aclose(self) -> None:
            return None

    provider = ScriptedProvider([ToolCall("1", "nap", {"seconds": 0})])
    rt = runtime(provider, tools=[])
    rt.toolsets = [TimesOutItself()]  # type: ignore[list-item]
    with pytest.raises(RunError, match="internal error in agent 't': TimeoutError: its own"):
        await rt.run(RunRequest(query="q"))
