"""Runs that pause for their caller: client tools and approvals, resumed with the
caller's answer (once, by the same caller), from a store that outlives the runtime
that paused them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import LocalAgents, build_runtime, check_buildable
from astromesh_ray.core.context import Caller, RunRequest
from astromesh_ray.core.events import RunFinished, ToolResultEvent, ToolStep
from astromesh_ray.core.memory.base import SessionKey
from astromesh_ray.core.memory.factory import default_memory_factory
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.runs import ToolDecision
from astromesh_ray.errors import ConfigError, InvalidRequest, ProviderError, RunError, RunNotFound
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import agent_yaml, load_agents

CALLS: list[dict[str, Any]] = []


def record_order(item: str, quantity: int = 1) -> str:
    """Place an order (a side effect the tests count).

    Args:
        item: What to order.
        quantity: How many.
    """
    CALLS.append({"item": item, "quantity": quantity})
    return f"ordered {quantity} x {item}"


LOOKUP = {
    "name": "lookup_company",
    "type": "client",
    "description": "Look up company information",
    "parameters": {"company_name": {"type": "string", "description": "Company name"}},
}
ORDER = {
    "name": "order",
    "function": "tests.unit.core.test_paused_runs:record_order",
    "requires_approval": True,
}


@pytest.fixture(autouse=True)
def _no_calls() -> None:
    CALLS.clear()


def _agents(tmp_path: Path, **spec: Any) -> LocalAgents:
    agents = load_agents(tmp_path, agent_yaml("sales", **spec))
    return LocalAgents(agents, memory=default_memory_factory(tmp_path / "data"))


async def _pause(
    local: LocalAgents, model: ScriptedProvider, query: str = "who is Acme?", **kw: Any
) -> Any:
    local.scripted["sales"] = model
    runtime = await local.runtime("sales")
    return await runtime.run(RunRequest(query=query, **kw))


async def test_a_client_tool_pauses_the_run_and_its_result_resumes_it(tmp_path: Path) -> None:
    def reads_result(req: CompletionRequest) -> str:
        tool = req.messages[-1]
        assert tool.role == "tool" and tool.tool_call_id == "c1"
        assert tool.content == '{"employees": 120}'
        return "Acme has 120 employees."

    model = ScriptedProvider(
        [ToolCall("c1", "lookup_company", {"company_name": "Acme"}), reads_result]
    )
    local = _agents(tmp_path, tools=[LOOKUP])
    try:
        paused = await _pause(local, model)
        assert paused.status == "requires_action"
        assert paused.answer == ""
        assert [(p.id, p.name, p.arguments, p.kind) for p in paused.pending] == [
            ("c1", "lookup_company", {"company_name": "Acme"}, "client")
        ]
        runtime = await local.runtime("sales")
        waiting = await runtime.paused_run(paused.run_id, Caller())
        assert [p.id for p in waiting.pending] == ["c1"]
        done = await runtime.resume(
            paused.run_id, [ToolDecision("c1", "result", '{"employees": 120}')], Caller()
        )
        assert done.status == "completed"
        assert done.run_id == paused.run_id and done.trace_id == paused.trace_id
        assert done.answer == "Acme has 120 employees."
        tool_steps = [s for s in done.steps if isinstance(s, ToolStep)]
        assert [(s.tool, s.result) for s in tool_steps] == [
            ("lookup_company", '{"employees": 120}')
        ]
        assert done.usage.calls == 2  # both model calls, across the pause
        with pytest.raises(RunNotFound, match="no paused run"):  # single use
            await runtime.resume(paused.run_id, [ToolDecision("c1", "result", "x")], Caller())
    finally:
        await local.aclose()


async def test_an_approved_call_runs_and_a_rejected_one_does_not(tmp_path: Path) -> None:
    def reads_order(req: CompletionRequest) -> str:
        assert req.messages[-1].content == "ordered 2 x brake pads"
        return "ordered"

    def reads_rejection(req: CompletionRequest) -> str:
        assert (req.messages[-1].content or "").startswith("error: the caller rejected")
        assert "too expensive" in (req.messages[-1].content or "")
        return "Not ordered."

    model = ScriptedProvider(
        [
            ToolCall("o1", "order", {"item": "brake pads", "quantity": 2}),
            reads_order,
            ToolCall("o2", "order", {"item": "engine"}),
            reads_rejection,
        ]
    )
    local = _agents(tmp_path, tools=[ORDER])
    try:
        paused = await _pause(local, model)
        assert [p.kind for p in paused.pending] == ["approval"]
        assert CALLS == []  # nothing runs before the approval
        runtime = await local.runtime("sales")
        done = await runtime.resume(paused.run_id, [ToolDecision("o1", "approve")], Caller())
        assert done.answer == "ordered"
        assert CALLS == [{"item": "brake pads", "quantity": 2}]

        paused = await runtime.run(RunRequest(query="order an engine"))
        done = await runtime.resume(
            paused.run_id, [ToolDecision("o2", "reject", "too expensive")], Caller()
        )
        assert done.answer == "Not ordered."
        assert len(CALLS) == 1  # the rejected call never ran
    finally:
        await local.aclose()


async def test_other_calls_of_the_answer_run_before_the_pause(tmp_path: Path) -> None:
    def reads_both(req: CompletionRequest) -> str:
        tools = {m.tool_call_id: m.content for m in req.messages if m.role == "tool"}
        assert tools == {"k": "5", "c1": "found"}
        return "done"

    local = _agents(tmp_path, tools=[LOOKUP, {"name": "calculator"}])
    try:
        paused = await _pause(
            local,
            ScriptedProvider(
                [
                    [
                        ToolCall("k", "calculator", {"expression": "2+3"}),
                        ToolCall("c1", "lookup_company", {"company_name": "Acme"}),
                    ],
                    reads_both,
                ]
            ),
        )
        assert [s.tool for s in paused.steps if isinstance(s, ToolStep)] == ["calculator"]
        assert [p.id for p in paused.pending] == ["c1"]
        runtime = await local.runtime("sales")
        events = [
            e
            async for e in runtime.resume_stream(
                paused.run_id, [ToolDecision("c1", "result", "found")], Caller()
            )
        ]
        results = [e for e in events if isinstance(e, ToolResultEvent)]
        assert [(e.id, e.content) for e in results] == [("c1", "found")]
        finished = events[-1]
        assert isinstance(finished, RunFinished) and finished.result.answer == "done"
    finally:
        await local.aclose()


async def test_answers_that_do_not_fit_change_nothing(tmp_path: Path) -> None:
    local = _agents(tmp_path, tools=[LOOKUP, ORDER])
    try:
        paused = await _pause(
            local,
            ScriptedProvider(
                [
                    [
                        ToolCall("c1", "lookup_company", {"company_name": "Acme"}),
                        ToolCall("o1", "order", {"item": "x"}),
                    ],
                    "ok",
                ]
            ),
            caller=Caller("alice"),
        )
        runtime = await local.runtime("sales")
        rid = paused.run_id
        both = [ToolDecision("c1", "result", "r"), ToolDecision("o1", "approve")]
        with pytest.raises(RunNotFound, match="no paused run"):  # not mallory's to see
            await runtime.resume(rid, both, Caller("mallory"))
        with pytest.raises(InvalidRequest, match="also waits on o1"):
            await runtime.resume(rid, both[:1], Caller("alice"))
        with pytest.raises(InvalidRequest, match="not waiting on tool call 'zz'"):
            await runtime.resume(rid, [*both, ToolDecision("zz", "approve")], Caller("alice"))
        with pytest.raises(InvalidRequest, match="is a client call"):
            await runtime.resume(rid, [ToolDecision("c1", "approve"), both[1]], Caller("alice"))
        with pytest.raises(InvalidRequest, match="answered twice"):
            await runtime.resume(rid, [*both, both[0]], Caller("alice"))
        with pytest.raises(RunNotFound):
            await runtime.paused_run(rid, Caller("mallory"))
        assert CALLS == []
        done = await runtime.resume(rid, both, Caller("alice"))  # still there, intact
        assert done.answer == "ok"
        assert CALLS == [{"item": "x", "quantity": 1}]
    finally:
        await local.aclose()


async def test_of_two_concurrent_answers_exactly_one_resumes(tmp_path: Path) -> None:
    local = _agents(tmp_path, tools=[ORDER])
    try:
        paused = await _pause(
            local, ScriptedProvider([ToolCall("o1", "order", {"item": "x"}), "ok"])
        )
        runtime = await local.runtime("sales")
        outcomes = await asyncio.gather(
            *(
                runtime.resume(paused.run_id, [ToolDecision("o1", "approve")], Caller())
                for _ in range(2)
            ),
            return_exceptions=True,
        )
        assert sorted(type(o).__name__ for o in outcomes) == ["RunNotFound", "RunResult"]
        assert len(CALLS) == 1
    finally:
        await local.aclose()


async def test_another_runtime_resumes_after_the_first_is_gone(tmp_path: Path) -> None:
    """The paused run lives in the SQLite file next to the history: a runtime built
    afresh (another replica, or the same one restarted) resumes it, and the turn is
    stored in the history once, when it answers."""
    agents = load_agents(
        tmp_path,
        agent_yaml(
            "sales",
            tools=[LOOKUP],
            memory={"conversational": {"backend": "sqlite", "strategy": "sliding_window"}},
        ),
    )
    spec = agents["sales"]
    first_memory = default_memory_factory(tmp_path / "data")
    first = build_runtime(
        spec,
        provider=ScriptedProvider([ToolCall("c1", "lookup_company", {"company_name": "A"})]),
        memory=first_memory,
    )
    paused = await first.run(RunRequest(query="who is A?", session_id="s1"))
    assert paused.status == "requires_action"
    await first.aclose()
    await first_memory.aclose()

    memory = default_memory_factory(tmp_path / "data")
    second = build_runtime(spec, provider=ScriptedProvider(["A is a company."]), memory=memory)
    try:
        store = memory.conversation(spec.spec.memory.conversational)  # type: ignore[union-attr]
        key = SessionKey("default", "sales", "s1")
        assert (await store.history(key)).turns == []  # nothing stored while paused
        done = await second.resume(paused.run_id, [ToolDecision("c1", "result", "a co")], Caller())
        assert done.answer == "A is a company."
        turns = (await store.history(key)).turns
        assert len(turns) == 1
        assert [m.role for m in turns[0].messages] == ["user", "assistant", "tool", "assistant"]
    finally:
        await second.aclose()
        await memory.aclose()


async def test_an_agent_without_pausing_tools_has_no_paused_runs(tmp_path: Path) -> None:
    local = _agents(tmp_path, tools=[{"name": "calculator"}])
    try:
        runtime = await local.runtime("sales")
        assert runtime.paused is None
        with pytest.raises(RunNotFound, match="none of its runs pauses"):
            await runtime.resume("r" * 32, [], Caller())
    finally:
        await local.aclose()


async def test_a_resume_that_fails_can_be_retried_without_running_the_call_again(
    tmp_path: Path,
) -> None:
    def reads_order(req: CompletionRequest) -> str:
        assert req.messages[-1].content == "ordered 1 x x"
        return "ordered"

    model = ScriptedProvider(
        [
            ToolCall("o1", "order", {"item": "x"}),
            ProviderError("the model is down", provider="scripted", retryable=True),
            reads_order,
        ]
    )
    local = _agents(tmp_path, tools=[ORDER])
    try:
        paused = await _pause(local, model)
        runtime = await local.runtime("sales")
        with pytest.raises(ProviderError) as failed:
            await runtime.resume(paused.run_id, [ToolDecision("o1", "approve")], Caller())
        assert failed.value.details["resumable"] is True
        assert f"/runs/{paused.run_id}/retry" in (failed.value.hint or "")
        assert CALLS == [{"item": "x", "quantity": 1}]
        waiting = await runtime.paused_run(paused.run_id, Caller())
        assert waiting.interrupted and waiting.error == "the model is down"
        with pytest.raises(InvalidRequest, match="not waiting on tool call 'o1'"):
            await runtime.resume(paused.run_id, [ToolDecision("o1", "approve")], Caller())
        done = await runtime.resume(paused.run_id, [], Caller())  # the retry
        assert done.answer == "ordered"
        assert CALLS == [{"item": "x", "quantity": 1}]  # the approved call ran once
        with pytest.raises(RunNotFound):  # the checkpoint went with the answer
            await runtime.paused_run(paused.run_id, Caller())
    finally:
        await local.aclose()


async def test_approve_some_calls_and_reject_others_at_once(tmp_path: Path) -> None:
    from astromesh_ray.core.runs.resume import decisions_for

    def reads(req: CompletionRequest) -> str:
        tools = {m.tool_call_id: m.content or "" for m in req.messages if m.role == "tool"}
        assert tools["a"] == "ordered 1 x a"
        assert tools["b"].startswith("error: the caller rejected") and "no b" in tools["b"]
        return "half done"

    local = _agents(tmp_path, tools=[ORDER])
    try:
        paused = await _pause(
            local,
            ScriptedProvider(
                [
                    [
                        ToolCall("a", "order", {"item": "a"}),
                        ToolCall("b", "order", {"item": "b"}),
                    ],
                    reads,
                ]
            ),
        )
        runtime = await local.runtime("sales")
        waiting = await runtime.paused_run(paused.run_id, Caller())
        decisions = decisions_for(waiting, "approve", each=[("b", "reject", "no b")])
        assert [(d.call_id, d.action) for d in decisions] == [("b", "reject"), ("a", "approve")]
        done = await runtime.resume(paused.run_id, decisions, Caller())
        assert done.answer == "half done"
        assert CALLS == [{"item": "a", "quantity": 1}]
    finally:
        await local.aclose()


async def test_the_resumed_run_keeps_the_spans_from_before_the_pause(tmp_path: Path) -> None:
    local = _agents(tmp_path, tools=[ORDER])
    try:
        paused = await _pause(
            local, ScriptedProvider([ToolCall("o1", "order", {"item": "x"}), "ok"])
        )
        runtime = await local.runtime("sales")
        done = await runtime.resume(paused.run_id, [ToolDecision("o1", "approve")], Caller())
        names = [s.name for s in done.trace]
        assert names.count("model_call") == 2 and names.count("run") == 2
        assert {s.trace_id for s in done.trace} == {paused.trace_id}
        assert done.trace[0].attributes["resumed"] is True
    finally:
        await local.aclose()


async def test_an_agent_that_pauses_cannot_be_a_sub_run(tmp_path: Path) -> None:
    agents = load_agents(
        tmp_path,
        agent_yaml("boss", tools=[{"name": "ask_sales", "type": "agent", "agent": "sales"}]),
        agent_yaml("sales", tools=[LOOKUP]),
    )
    with pytest.raises(ConfigError, match="a sub-run cannot pause"):
        check_buildable(agents.values())
    # Built anyway (no check), the sub-run refuses to pause instead of answering "".
    local = LocalAgents(
        agents,
        scripted={
            "boss": ScriptedProvider([ToolCall("c", "ask_sales", {"query": "who?"})]),
            "sales": ScriptedProvider([ToolCall("l", "lookup_company", {"company_name": "A"})]),
        },
        memory=default_memory_factory(tmp_path / "data"),
    )
    try:
        with pytest.raises(RunError, match="a sub-run cannot pause"):
            await (await local.runtime("boss")).run(RunRequest(query="go"))
    finally:
        await local.aclose()


async def test_under_dry_run_a_call_that_is_only_described_needs_no_approval(
    tmp_path: Path,
) -> None:
    local = _agents(
        tmp_path,
        tools=[{**ORDER, "side_effects": True}],
        permissions={"execution": {"dry_run": True}},
    )
    try:
        result = await _pause(
            local, ScriptedProvider([ToolCall("o1", "order", {"item": "x"}), "ok"])
        )
        assert result.status == "completed"
        assert CALLS == []
    finally:
        await local.aclose()


def test_a_client_tool_cannot_be_rate_limited_by_the_runtime(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="client tool runs in the caller") as refused:
        load_agents(tmp_path, agent_yaml("sales", tools=[{**LOOKUP, "rate_limit": {}}]))
    assert "sales.agent.yaml:11:5: spec.tools[0]" in refused.value.message
