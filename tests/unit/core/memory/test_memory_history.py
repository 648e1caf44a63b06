"""Conversational memory in the run path, from YAML, with the scripted model: history
replayed, turns stored whole, and the sliding_window, token_budget and summary
strategies (in_memory and SQLite; the servers are integration tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import LocalAgents, check_buildable
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.memory.api import memory_op
from astromesh_ray.core.messages import Message, ToolCall
from astromesh_ray.errors import (
    ProviderError,
)
from astromesh_ray.testing import ScriptedProvider
from tests.unit.core.engine_helpers import agent_yaml, load_agents
from tests.unit.core.memory.memory_helpers import (
    agent_with,
    factory,
    roles_and_texts,
    turn,
)


@pytest.mark.parametrize("backend", ["in_memory", "sqlite"])
async def test_the_second_turn_sees_the_first_and_another_session_does_not(
    tmp_path: Path, backend: str
) -> None:
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": backend}},
        prompts={"system": "Be brief."},
    )
    model = ScriptedProvider(["Hello Ada.", "Your name is Ada.", "I don't know."])
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        await turn(agents, "I am Ada.")
        await turn(agents, "What is my name?")
        await turn(agents, "What is my name?", session="other")
    finally:
        await agents.aclose()
    assert roles_and_texts(model.requests[1].messages) == [
        ("system", "Be brief."),
        ("user", "I am Ada."),
        ("assistant", "Hello Ada."),
        ("user", "What is my name?"),
    ]
    assert roles_and_texts(model.requests[2].messages) == [
        ("system", "Be brief."),
        ("user", "What is my name?"),
    ]


async def test_sqlite_history_survives_a_new_runtime(tmp_path: Path) -> None:
    agent = agent_with(tmp_path, {"conversational": {"backend": "sqlite"}})
    first = LocalAgents(
        {"mem": agent}, scripted={"mem": ScriptedProvider(["noted"])}, memory=factory(tmp_path)
    )
    await turn(first, "remember 42")
    await first.aclose()
    model = ScriptedProvider(["42"])
    second = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    await turn(second, "what number?")
    await second.aclose()
    assert (tmp_path / "data" / "memory.sqlite3").is_file()
    assert [m.content for m in model.requests[0].messages] == [
        "remember 42",
        "noted",
        "what number?",
    ]


async def test_a_tool_turn_is_stored_whole_and_replays_as_a_valid_message_list(
    tmp_path: Path,
) -> None:
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "in_memory"}},
        tools=[{"name": "calculator", "type": "builtin"}],
    )
    model = ScriptedProvider(
        [ToolCall(id="c1", name="calculator", arguments={"expression": "6*7"}), "42.", "yes"]
    )
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        await turn(agents, "6 times 7?")
        await turn(agents, "sure?")
        runtime = await agents.runtime("mem")
        history = await memory_op(runtime.memory, "mem", "history", {"session_id": "s1"})
    finally:
        await agents.aclose()
    replayed = model.requests[2].messages
    assert [m.role for m in replayed] == ["user", "assistant", "tool", "assistant", "user"]
    assert replayed[1].tool_calls[0].name == "calculator"
    assert replayed[2].tool_call_id == "c1" and replayed[2].content == "42"
    assert [t["seq"] for t in history["turns"]] == [1, 2]
    assert [len(t["messages"]) for t in history["turns"]] == [4, 2]
    assert history["turns"][0]["meta"]["usage"]["calls"] == 2


async def test_a_failed_turn_stores_nothing(tmp_path: Path) -> None:
    agent = agent_with(tmp_path, {"conversational": {"backend": "in_memory"}})
    boom = ProviderError("down", provider="scripted", status=503, retryable=False)
    model = ScriptedProvider(["first answer", boom, "third"])
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        await turn(agents, "one")
        with pytest.raises(ProviderError):
            await turn(agents, "two")
        await turn(agents, "three")
    finally:
        await agents.aclose()
    assert [m.content for m in model.requests[2].messages] == ["one", "first answer", "three"]


async def test_without_a_session_nothing_is_loaded_or_stored(tmp_path: Path) -> None:
    agent = agent_with(tmp_path, {"conversational": {"backend": "in_memory"}})
    model = ScriptedProvider(["a", "b"])
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        await turn(agents, "one", session=None)
        await turn(agents, "two", session=None)
        runtime = await agents.runtime("mem")
        listed = await memory_op(runtime.memory, "mem", "sessions", {})
    finally:
        await agents.aclose()
    assert [m.content for m in model.requests[1].messages] == ["two"]
    assert listed["sessions"] == []


async def test_sliding_window_replays_the_last_max_turns(tmp_path: Path) -> None:
    agent = agent_with(tmp_path, {"conversational": {"backend": "in_memory", "max_turns": 2}})
    model = ScriptedProvider(["a1", "a2", "a3", "a4"])
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        for q in ("q1", "q2", "q3", "q4"):
            await turn(agents, q)
    finally:
        await agents.aclose()
    assert [m.content for m in model.requests[3].messages] == ["q2", "a2", "q3", "a3", "q4"]


async def test_max_messages_drops_whole_turns(tmp_path: Path) -> None:
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "in_memory", "max_turns": 10, "max_messages": 3}},
    )
    model = ScriptedProvider(["a1", "a2", "a3"])
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        for q in ("q1", "q2", "q3"):
            await turn(agents, q)
    finally:
        await agents.aclose()
    # 3 messages at most: one whole turn (2 messages), never half of one.
    assert [m.content for m in model.requests[2].messages] == ["q2", "a2", "q3"]


async def test_token_budget_keeps_the_newest_turns_that_fit(tmp_path: Path) -> None:
    # The scripted model has no tokenizer: the estimate counts ceil(bytes / 4) per
    # message plus 4 for the chat template.  Each turn here: 2 messages of 40 bytes
    # = 2 * (10 + 4) = 28 tokens; a 60-token budget holds two of them.
    text = "x" * 40
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "in_memory", "strategy": "token_budget", "max_tokens": 60}},
    )
    model = ScriptedProvider([text, text, text, "done"])
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        for q in ("1" * 40, "2" * 40, "3" * 40, "last"):
            await turn(agents, q)
        runtime = await agents.runtime("mem")
        history = await memory_op(runtime.memory, "mem", "history", {"session_id": "s1"})
    finally:
        await agents.aclose()
    assert [m.content for m in model.requests[3].messages] == [
        "2" * 40,
        text,
        "3" * 40,
        text,
        "last",
    ]
    assert history["turns"][0]["meta"]["tokens"] == 28


async def test_summary_folds_old_turns_incrementally(tmp_path: Path) -> None:
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "in_memory", "strategy": "summary", "max_turns": 2}},
        prompts={"system": "Sys."},
    )
    prompts: list[str] = []

    def summarize(text: str) -> Any:
        def answer(request: Any) -> str:
            prompts.append(request.messages[-1].content)
            return text

        return answer

    # Turn 3 leaves 3 unsummarised turns (> max_turns 2): turns 1-2 are folded,
    # keeping 1 verbatim.  Turn 5 folds turns 3-4 into the first summary.
    model = ScriptedProvider(
        ["a1", "a2", "a3", summarize("S1: q1 q2"), "a4", "a5", summarize("S2: q1-q4")]
    )
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        for q in ("q1", "q2", "q3", "q4", "q5"):
            await turn(agents, q)
        runtime = await agents.runtime("mem")
        history = await memory_op(runtime.memory, "mem", "history", {"session_id": "s1"})
    finally:
        await agents.aclose()
    # Turn 4's request: the summary in the system prompt, then turn 3 verbatim.
    turn4 = model.requests[4].messages
    assert turn4[0].content == "Sys.\n\nSummary of the earlier conversation:\nS1: q1 q2"
    assert [m.content for m in turn4[1:]] == ["q3", "a3", "q4"]
    # Incremental: the second fold sees the first summary and only turns 3-4.
    assert "(none yet)" in prompts[0] and "User: q1" in prompts[0] and "q3" not in prompts[0]
    assert "S1: q1 q2" in prompts[1] and "User: q3" in prompts[1] and "User: q4" in prompts[1]
    assert "q1\n" not in prompts[1] and "User: q2" not in prompts[1]
    assert history["summary"]["upto_seq"] == 4
    assert history["summary"]["text"] == "S2: q1-q4"


async def test_summary_with_its_own_model_role(tmp_path: Path) -> None:
    doc = agent_yaml(
        "mem",
        model={
            "default": {"candidates": [{"provider": "ollama", "model": "big"}]},
            "roles": {"summarizer": {"candidates": [{"provider": "ollama", "model": "small"}]}},
        },
        memory={"conversational": {"backend": "in_memory", "strategy": "summary"}},
    )
    agent = load_agents(tmp_path, doc)["mem"]
    check_buildable([agent])  # the summarizer role is one the agent uses


async def test_a_role_nobody_uses_is_still_refused(tmp_path: Path) -> None:
    from astromesh_ray.errors import ConfigError

    doc = agent_yaml(
        "mem",
        model={
            "default": {"candidates": [{"provider": "ollama", "model": "big"}]},
            "roles": {"summarizer": {"candidates": [{"provider": "ollama", "model": "small"}]}},
        },
        memory={"conversational": {"backend": "in_memory", "strategy": "sliding_window"}},
    )
    agent = load_agents(tmp_path, doc)["mem"]
    with pytest.raises(ConfigError, match="'summarizer' are not used"):
        check_buildable([agent])


async def test_the_summarizer_role_writes_the_summary(tmp_path: Path) -> None:
    from astromesh_ray.core.build import build_runtime

    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "in_memory", "strategy": "summary", "max_turns": 2}},
    )
    reasoner = ScriptedProvider(["a1", "a2", "a3"])
    summarizer = ScriptedProvider(["the summary"])
    memory = factory(tmp_path)
    runtime = build_runtime(
        agent, models={"reasoner": reasoner, "summarizer": summarizer}, memory=memory
    )
    try:
        for q in ("q1", "q2", "q3"):
            result = await runtime.run(RunRequest(query=q, session_id="s1"))
    finally:
        await runtime.aclose()
        await memory.aclose()
    assert len(reasoner.requests) == 3 and len(summarizer.requests) == 1
    assert str(summarizer.requests[0].messages[0].content).startswith("You keep a running")
    # The fold's model call is part of the turn that made it: usage and trace.
    assert result.usage.calls == 2
    assert [s.name for s in result.trace].count("memory.summarize") == 1


async def test_a_failed_summary_fold_keeps_the_stored_turn(tmp_path: Path) -> None:
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "in_memory", "strategy": "summary", "max_turns": 2}},
    )
    down = ProviderError("summariser down", provider="scripted", status=503, retryable=False)
    model = ScriptedProvider(["a1", "a2", "a3", down, "a4", "caught up"])
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        await turn(agents, "q1")
        await turn(agents, "q2")
        third = await turn(agents, "q3")  # answered and stored; its fold failed
        await turn(agents, "q4")  # the next fold catches up
        runtime = await agents.runtime("mem")
        history = await memory_op(runtime.memory, "mem", "history", {"session_id": "s1"})
    finally:
        await agents.aclose()
    assert third.answer == "a3"
    warnings = third.trace[0].attributes["memory_warnings"]
    assert len(warnings) == 1 and "summariser down" in warnings[0]
    assert [t["seq"] for t in history["turns"]] == [1, 2, 3, 4]
    assert history["summary"]["text"] == "caught up" and history["summary"]["upto_seq"] == 3


async def test_concurrent_turns_fold_a_session_once(tmp_path: Path) -> None:
    import asyncio

    from astromesh_ray.core.memory.base import NewTurn, SessionKey
    from astromesh_ray.core.memory.conversational.memory import InMemoryConversationStore
    from astromesh_ray.core.memory.strategies import RunningSummary, Summarizer
    from astromesh_ray.core.trace import Trace

    store = InMemoryConversationStore()
    key = SessionKey("ns", "mem", "s1")
    for i in range(5):
        await store.append(key, NewTurn(f"r{i}", [Message(role="user", content=f"q{i}")]))
    gate = asyncio.Event()

    def slow_summary(request: Any) -> str:
        return "folded"

    model = ScriptedProvider([slow_summary])
    strategy = RunningSummary(max_turns=2)
    summarizer = Summarizer(model=model, trace=Trace("0" * 32, None), parent_span=None)

    async def fold() -> Any:
        await gate.wait()
        return await strategy.after_append(store, key, summarizer)

    tasks = [asyncio.create_task(fold()) for _ in range(6)]
    gate.set()
    usages = await asyncio.gather(*tasks)
    assert len(model.requests) == 1  # one fold; the others saw it under way
    assert sum(u.calls for u in usages) == 1
    assert (await store.history(key)).summary is not None


async def test_a_prompt_placing_only_knowledge_still_gets_the_summary(tmp_path: Path) -> None:
    agent = agent_with(
        tmp_path,
        {"conversational": {"backend": "in_memory", "strategy": "summary", "max_turns": 2}},
        prompts={"system": "Facts: {{ knowledge }}"},
    )
    model = ScriptedProvider(["a1", "a2", "a3", "S.", "a4"])
    agents = LocalAgents({"mem": agent}, scripted={"mem": model}, memory=factory(tmp_path))
    try:
        for q in ("q1", "q2", "q3", "q4"):
            await turn(agents, q)
    finally:
        await agents.aclose()
    assert model.requests[4].messages[0].content == (
        "Facts:\n\nSummary of the earlier conversation:\nS."
    )


async def test_a_summary_of_an_erased_session_is_never_replayed(tmp_path: Path) -> None:
    from astromesh_ray.core.memory.base import NewTurn, SessionKey, Summary
    from astromesh_ray.core.memory.conversational.memory import InMemoryConversationStore
    from astromesh_ray.core.memory.strategies import RunningSummary

    store = InMemoryConversationStore()
    key = SessionKey("ns", "mem", "s1")
    for i in range(3):
        await store.append(key, NewTurn(f"r{i}", [Message(role="user", content=f"q{i}")]))
    strategy = RunningSummary(max_turns=2)
    assert await store.set_summary(key, Summary("about q0-q2", upto_seq=3))
    assert (await strategy.load(store, key)).summary == "about q0-q2"
    await store.delete(key)  # erased; then the id is used again
    await store.append(key, NewTurn("new", [Message(role="user", content="fresh")]))
    # Even if a summariser of the old session stored its summary now, it would not be
    # replayed: it claims turns this session does not have.
    await store.set_summary(key, Summary("ERASED TEXT", upto_seq=3))
    replay = await strategy.load(store, key)
    assert replay.summary is None and [m.content for m in replay.messages] == ["fresh"]
