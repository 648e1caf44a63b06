"""Guardrails from YAML through a whole turn, with the scripted model: input
guardrails before any model call (and before memory), output guardrails on the
answer, the transcript and streamed tokens, refusals without a model call, and
every action recorded (event, span, episodic log)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import GuardrailEvent, RunFinished, RunStarted, Token
from astromesh_ray.core.memory.factory import default_memory_factory
from astromesh_ray.core.messages import CompletionRequest, Message
from astromesh_ray.errors import ConfigError, GuardrailViolation
from astromesh_ray.spec import AgentSpec
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import agent_yaml, load_agents

EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"
SQLITE_MEMORY = {
    "conversational": {"backend": "sqlite", "strategy": "sliding_window", "max_turns": 10},
    "episodic": {"backend": "sqlite"},
}


def guarded_agent(tmp_path: Path, guardrails: dict[str, Any], **spec: Any) -> AgentSpec:
    agents = load_agents(tmp_path, agent_yaml("guarded", guardrails=guardrails, **spec))
    return agents["guarded"]


def user_text(request: CompletionRequest) -> str:
    return "\n".join(m.content or "" for m in request.messages if m.role == "user")


async def test_input_pii_is_redacted_before_the_model_and_memory_and_stays_consistent(
    tmp_path: Path,
) -> None:
    agent = guarded_agent(
        tmp_path, {"input": [{"type": "pii_detection", "action": "redact"}]}, memory=SQLITE_MEMORY
    )
    model = ScriptedProvider(["Noted.", "Still noted."])
    memory = default_memory_factory(tmp_path / "data")
    runtime = build_runtime(agent, provider=model, memory=memory)
    try:
        first = await runtime.run(RunRequest(query=f"My email is {EMAIL}.", session_id="s1"))
        second = await runtime.run(
            RunRequest(query=f"Again: {EMAIL}, and call {PHONE}", session_id="s1")
        )
        sent = [user_text(r) for r in model.requests]
        assert all(EMAIL not in text and "7946" not in text for text in sent)
        assert "My email is [EMAIL_1]." in sent[0]
        assert "Again: [EMAIL_1], and call [PHONE_1]" in sent[1]  # the same placeholder
        assert runtime.memory is not None
        stored = await runtime.memory.history("s1")
        assert len(stored.turns) == 2
        assert EMAIL not in str([m.to_dict() for m in stored.messages()])
        spans = [s for s in second.trace if s.name == "guardrail"]
        assert spans and spans[0].attributes["detail"] == "1 EMAIL_ADDRESS, 1 PHONE_NUMBER"
        assert first.answer == "Noted."
        episodes = await runtime.memory.episodes(session="s1", types=("guardrail",))
        assert [e.data["action"] for e in episodes] == ["redact", "redact"]
        assert EMAIL not in str([e.to_dict() for e in episodes])
    finally:
        await runtime.aclose()
        await memory.aclose()


async def test_history_the_caller_sends_is_checked_like_its_message(tmp_path: Path) -> None:
    # The OpenAI-compatible and AG-UI routes pass a client's earlier messages as the
    # run's history: the model must not see PII in them either.
    agent = guarded_agent(
        tmp_path,
        {"input": [{"type": "pii_detection", "action": "redact"}]},
    )
    model = ScriptedProvider(["Noted."])
    runtime = build_runtime(agent, provider=model)
    history = [
        Message(role="user", content=f"My email is {EMAIL}."),
        Message(role="assistant", content="Thanks."),
        Message(role="user", content=f"And my phone is {PHONE}."),
    ]
    try:
        result = await runtime.run(RunRequest(query=f"Use {EMAIL} please.", history=history))
        sent = " ".join(m.content or "" for m in model.requests[0].messages)
        assert EMAIL not in sent and "7946" not in sent
        assert "My email is [EMAIL_1]." in sent and "Use [EMAIL_1] please." in sent
        assert "And my phone is [PHONE_1]." in sent
        assert history[0].content == f"My email is {EMAIL}."  # the caller's list untouched
        details = [s.attributes["detail"] for s in result.trace if s.name == "guardrail"]
        assert details == ["1 EMAIL_ADDRESS", "1 PHONE_NUMBER", "1 EMAIL_ADDRESS"]
    finally:
        await runtime.aclose()


async def test_output_pii_is_redacted_in_the_answer_transcript_and_steps(tmp_path: Path) -> None:
    agent = guarded_agent(tmp_path, {"output": [{"type": "pii_detection"}]})
    model = ScriptedProvider([f"Write to {EMAIL} for help."])
    memory = default_memory_factory(tmp_path / "data")
    runtime = build_runtime(agent, provider=model, memory=memory)
    try:
        result = await runtime.run(RunRequest(query="who do I write to?"))
        assert result.answer == "Write to [EMAIL_1] for help."
        assert EMAIL not in str(result.to_dict())
    finally:
        await runtime.aclose()
        await memory.aclose()


async def test_restore_gives_the_caller_its_own_originals_back_only(tmp_path: Path) -> None:
    agent = guarded_agent(
        tmp_path,
        {
            "input": [{"type": "pii_detection"}],
            "output": [{"type": "pii_detection", "restore": True}],
        },
    )
    other = "ceo@competitor.example.org"

    def answer(request: CompletionRequest) -> str:
        assert EMAIL not in user_text(request)
        return f"I will write to [EMAIL_1], not to {other}."

    model = ScriptedProvider([answer])
    memory = default_memory_factory(tmp_path / "data")
    runtime = build_runtime(agent, provider=model, memory=memory)
    try:
        result = await runtime.run(RunRequest(query=f"Mail me at {EMAIL}", session_id="s2"))
        # The caller's own address comes back; the one the model produced stays hidden.
        assert result.answer == "I will write to jane.doe@example.com, not to [EMAIL_2]."
        assert EMAIL not in str([m.to_dict() for m in result.messages])  # what memory saves
    finally:
        await runtime.aclose()
        await memory.aclose()


async def test_streamed_pii_split_across_chunks_never_leaves(tmp_path: Path) -> None:
    agent = guarded_agent(tmp_path, {"output": [{"type": "pii_detection"}]})
    text = f"Sure. You can reach our team at {EMAIL} or by phone at {PHONE} any day."
    model = ScriptedProvider([text])
    memory = default_memory_factory(tmp_path / "data")
    runtime = build_runtime(agent, provider=model, memory=memory)
    try:
        events = [e async for e in runtime.stream(RunRequest(query="contact?"))]
        tokens = "".join(e.text for e in events if isinstance(e, Token))
        assert EMAIL not in tokens and "7946" not in tokens
        assert (
            tokens == "Sure. You can reach our team at [EMAIL_1] or by phone at [PHONE_1] any day."
        )
        finished = events[-1]
        assert isinstance(finished, RunFinished) and finished.result.answer == tokens
        noted = [e for e in events if isinstance(e, GuardrailEvent)]
        assert noted and {e.stage for e in noted} == {"output"}
    finally:
        await runtime.aclose()
        await memory.aclose()


async def test_blocked_topic_answers_with_the_refusal_and_never_calls_the_model(
    tmp_path: Path,
) -> None:
    agent = guarded_agent(
        tmp_path,
        {
            "input": [
                {
                    "type": "topic_filter",
                    "blocked_topics": ["elections"],
                    "method": "keywords",
                    "refusal": "I only talk about our products.",
                }
            ]
        },
    )
    model = ScriptedProvider([])  # any model call fails the test
    memory = default_memory_factory(tmp_path / "data")
    runtime = build_runtime(agent, provider=model, memory=memory)
    try:
        events = [e async for e in runtime.stream(RunRequest(query="Who wins the elections?"))]
        assert isinstance(events[0], RunStarted)
        assert isinstance(events[1], GuardrailEvent) and events[1].action == "block"
        finished = events[-1]
        assert isinstance(finished, RunFinished)
        assert finished.result.answer == "I only talk about our products."
        assert model.requests == []
    finally:
        await runtime.aclose()
        await memory.aclose()


async def test_max_length_blocks_or_truncates_input(tmp_path: Path) -> None:
    blocking = guarded_agent(tmp_path, {"input": [{"type": "max_length", "max_chars": 10}]})
    memory = default_memory_factory(tmp_path / "data")
    runtime = build_runtime(blocking, provider=ScriptedProvider([]), memory=memory)
    try:
        with pytest.raises(GuardrailViolation) as caught:
            await runtime.run(RunRequest(query="x" * 11))
        assert caught.value.http_status == 400
        assert caught.value.details["guardrail"] == "max_length"
        assert caught.value.details["direction"] == "input"
    finally:
        await runtime.aclose()
    (tmp_path / "t").mkdir()
    cutting = guarded_agent(
        tmp_path / "t",
        {"input": [{"type": "max_length", "max_chars": 5, "action": "truncate"}]},
    )
    model = ScriptedProvider(["ok"])
    runtime = build_runtime(cutting, provider=model, memory=memory)
    try:
        await runtime.run(RunRequest(query="abcdefghij"))
        assert user_text(model.requests[0]).endswith("abcde")
        assert "abcdef" not in user_text(model.requests[0])
    finally:
        await runtime.aclose()
        await memory.aclose()


def test_unknown_pii_entity_is_a_config_error_naming_the_guardrail(tmp_path: Path) -> None:
    from astromesh_ray.core.checks import check_buildable

    agent = guarded_agent(
        tmp_path, {"output": [{"type": "pii_detection", "entities": ["EMAIL_ADDRESS", "NOPE"]}]}
    )
    with pytest.raises(ConfigError) as caught:
        check_buildable([agent])
    assert "spec.guardrails.output[0]" in str(caught.value)
    assert "NOPE" in str(caught.value)


def test_bad_blocked_pattern_is_refused_at_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        guarded_agent(
            tmp_path,
            {"input": [{"type": "content_filter", "blocked_patterns": ["ok", "(unclosed"]}]},
        )
    issues = caught.value.details["issues"]
    assert [i["path"] for i in issues] == ["spec.guardrails.input[0].blocked_patterns[1]"]
    assert "not a regular expression" in issues[0]["message"]
