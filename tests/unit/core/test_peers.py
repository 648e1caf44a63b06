"""Peers: other agents as sub-runs (agent tools, delegation, handoff), one trace,
usage summed, self-calls and cycles refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from astromesh_ray.core.build import build_runtime, check_buildable
from astromesh_ray.core.context import RunContext, RunRequest, TurnState
from astromesh_ray.core.events import (
    DelegateStep,
    Event,
    Handoff,
    HandoffStep,
    RunFinished,
    ToolStep,
)
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.peers import check_peer_graph
from astromesh_ray.core.steps import Delegation
from astromesh_ray.errors import ConfigError, RunError
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import agent_yaml, load_agents, local_agents


def boss_and_helper(tmp_path: Path, helper_calls: str | None = None) -> dict[str, object]:
    helper_tools = (
        [{"name": "ask_boss", "type": "agent", "agent": helper_calls}] if helper_calls else []
    )
    return load_agents(  # type: ignore[return-value]
        tmp_path,
        agent_yaml(
            "boss",
            tools=[
                {"name": "ask_helper", "type": "agent", "agent": "helper", "description": "Ask."}
            ],
        ),
        agent_yaml("helper", tools=helper_tools),
    )


async def test_an_agent_tool_runs_a_sub_run_in_the_same_trace(tmp_path: Path) -> None:
    agents = boss_and_helper(tmp_path)

    def helper_answers(req: CompletionRequest) -> str:
        assert req.messages[-1].content == "what is 6*7?"
        return "42"

    def boss_reads(req: CompletionRequest) -> str:
        assert req.messages[-1].role == "tool" and req.messages[-1].content == "42"
        return "The helper says 42."

    boss = ScriptedProvider(
        [ToolCall("c1", "ask_helper", {"query": "what is 6*7?"}), boss_reads], name="boss-model"
    )
    helper = ScriptedProvider([helper_answers], name="helper-model")
    local = local_agents(agents, {"boss": boss, "helper": helper})  # type: ignore[arg-type]
    rt = await local.runtime("boss")
    assert rt.tools is not None
    schema = next(s for s in rt.tools.schemas if s.name == "ask_helper")
    assert schema.parameters["required"] == ["query"]

    result = await rt.run(RunRequest(query="ask the helper"))
    assert result.answer == "The helper says 42."
    step = result.steps[0]
    assert isinstance(step, ToolStep) and step.sub_run_id is not None
    # One trace: boss run → tool_call → helper run → helper model call.
    spans = {s.span_id: s for s in result.trace}
    assert {s.trace_id for s in result.trace} == {result.trace_id}
    helper_run = next(
        s for s in result.trace if s.name == "run" and s.attributes["agent"] == "helper"
    )
    tool_span = spans[helper_run.parent_id]  # type: ignore[index]
    assert tool_span.name == "tool_call" and tool_span.attributes["tool"] == "ask_helper"
    assert spans[tool_span.parent_id].attributes["agent"] == "boss"  # type: ignore[index]
    helper_model = next(
        s for s in result.trace if s.name == "model_call" and s.parent_id == helper_run.span_id
    )
    assert helper_model.attributes["provider"] == "helper-model"
    assert helper_run.attributes["run_id"] == step.sub_run_id
    # The sub-run's model call counts toward the caller's usage.
    assert result.usage.calls == 3


async def test_a_failed_sub_run_is_a_tool_error_with_its_partial_trace(tmp_path: Path) -> None:
    from astromesh_ray.errors import ProviderError

    agents = boss_and_helper(tmp_path)

    def boss_reads(req: CompletionRequest) -> str:
        assert "agent 'helper' failed: helper down" in (req.messages[-1].content or "")
        return "the helper is down"

    boss = ScriptedProvider([ToolCall("c1", "ask_helper", {"query": "hi"}), boss_reads])
    helper = ScriptedProvider([ProviderError("helper down", provider="x", status=500)])
    local = local_agents(agents, {"boss": boss, "helper": helper})  # type: ignore[arg-type]
    result = await (await local.runtime("boss")).run(RunRequest(query="q"))
    assert result.answer == "the helper is down"
    assert any(s.name == "run" and s.attributes["agent"] == "helper" for s in result.trace)


async def test_a_cycle_only_a_running_system_sees_is_refused(tmp_path: Path) -> None:
    agents = boss_and_helper(tmp_path, helper_calls="boss")
    boss = ScriptedProvider([ToolCall("c1", "ask_helper", {"query": "hi"})])
    helper = ScriptedProvider([ToolCall("c2", "ask_boss", {"query": "and you?"})])
    local = local_agents(agents, {"boss": boss, "helper": helper})  # type: ignore[arg-type]
    with pytest.raises(RunError, match=r"close a cycle \(boss → helper → boss\)") as info:
        await (await local.runtime("boss")).run(RunRequest(query="q"))
    details = info.value.details
    assert details["reason"] == "cycle"
    # The error is the boss's run (what the client asked for), with the helper's
    # sub-run in the same trace, not the other way round.
    runs = {s["attributes"]["agent"]: s for s in details["trace"] if s["name"] == "run"}
    assert details["trace"][0] is not None and details["trace"][0]["attributes"]["agent"] == "boss"
    assert details["run_id"] == runs["boss"]["attributes"]["run_id"]
    assert details["sub_run_id"] == runs["helper"]["attributes"]["run_id"]
    assert {s["trace_id"] for s in details["trace"]} == {details["trace_id"]}
    assert [s["name"] for s in details["trace"]].count("model_call") == 2


def test_self_calls_cycles_and_unknown_peers_are_refused_at_build(tmp_path: Path) -> None:
    agents = boss_and_helper(tmp_path, helper_calls="boss")
    with pytest.raises(
        ConfigError, match="agents call each other in a cycle: boss → helper → boss"
    ):
        check_buildable(agents.values())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="agent 'a' calls itself"):
        check_peer_graph({"a": {"a"}})
    with pytest.raises(ConfigError, match="calls agent 'ghost', which is not loaded"):
        check_peer_graph({"a": {"ghost"}})
    check_peer_graph({"a": {"b"}, "b": {"c"}, "c": set()})  # a chain is fine
    only_boss = {"boss": agents["boss"]}
    with pytest.raises(ConfigError, match="calls agent 'helper', which is not loaded"):
        check_buildable(only_boss.values())  # type: ignore[arg-type]


class HandOver:
    """A test pattern: hands the conversation to ``helper``."""

    name = "handover"
    roles: tuple[str, ...] = ()

    async def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]:
        delegated = Delegation(ctx, state, "helper", "summarise the question", parent=None)
        async for event in delegated:
            yield event
        handoff = Delegation(ctx, state, "helper", "take over", handoff=True, reason="expert")
        async for event in handoff:
            yield event


async def test_delegation_and_handoff(tmp_path: Path) -> None:
    agents = boss_and_helper(tmp_path)

    def delegated(req: CompletionRequest) -> str:
        assert [m.role for m in req.messages] == ["user"]  # a fresh conversation
        return "a summary"

    def handed_over(req: CompletionRequest) -> str:
        # The conversation so far (no system prompt), then the handoff's query.
        assert [(m.role, m.content) for m in req.messages] == [
            ("user", "the user's question"),
            ("user", "take over"),
        ]
        return "the expert answer"

    helper = ScriptedProvider([delegated, handed_over])
    local = local_agents(agents, {"helper": helper, "boss": ScriptedProvider([])})  # type: ignore[arg-type]
    boss = build_runtime(agents["boss"], provider=ScriptedProvider([]), make_peer=local.peer)  # type: ignore[arg-type]
    boss.pattern = HandOver()
    events = [e async for e in boss.stream(RunRequest(query="the user's question", session_id="s"))]
    last = events[-1]
    assert isinstance(last, RunFinished)
    result = last.result
    assert result.answer == "the expert answer"
    assert isinstance(result.steps[0], DelegateStep) and result.steps[0].answer == "a summary"
    assert isinstance(result.steps[1], HandoffStep) and result.steps[1].to_agent == "helper"
    handoffs = [e for e in events if isinstance(e, Handoff)]
    assert [(h.from_agent, h.to_agent, h.reason) for h in handoffs] == [
        ("boss", "helper", "expert")
    ]
    assert result.messages[-1].content == "the expert answer"
    assert [s.name for s in result.trace if s.parent_id == result.trace[0].span_id] == [
        "delegate",
        "handoff",
    ]


async def test_a_sub_agent_that_cannot_run_fails_the_run_not_the_tool_call(tmp_path: Path) -> None:
    from astromesh_ray.errors import InvalidRequest

    agents = load_agents(
        tmp_path,
        agent_yaml("boss", tools=[{"name": "ask_helper", "type": "agent", "agent": "helper"}]),
        # The helper's prompt needs a variable an agent tool never passes.
        agent_yaml("helper", prompts={"system": "You help {{ customer }}."}),
    )
    boss = ScriptedProvider([ToolCall("c1", "ask_helper", {"query": "hi"})])
    local = local_agents(agents, {"boss": boss, "helper": ScriptedProvider([])})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="'customer' is undefined") as info:
        await (await local.runtime("boss")).run(RunRequest(query="q"))
    assert info.value.details["stage"] == "prompts"
    runs = [s["attributes"]["agent"] for s in info.value.details["trace"] if s["name"] == "run"]
    assert runs == ["boss", "helper"]
