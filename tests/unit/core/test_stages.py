"""Lifecycle stages: prepare before the pattern, transformers around its events,
finish after it; a failing stage is named; the registry picks stages from YAML."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from astromesh_ray.core.context import RunContext, RunRequest, TurnState
from astromesh_ray.core.events import (
    Event,
    GuardrailEvent,
    RunFinished,
    StepEvent,
    Token,
    event_json_schema,
    event_to_dict,
)
from astromesh_ray.core.messages import CompletionChunk, Message
from astromesh_ray.core.stages import STAGES, stage_factory, stages_for
from astromesh_ray.errors import AstromeshError, ConfigError, GuardrailViolation, RunError
from astromesh_ray.testing import ScriptedProvider

from .engine_helpers import agent_yaml, load_agents, runtime


class Shout:
    """A transformer: upper-cases answer tokens and the answer, and says so."""

    name = "shout"

    async def transform(
        self, ctx: RunContext, state: TurnState, events: AsyncIterator[Event]
    ) -> AsyncIterator[Event]:
        async for event in events:
            if isinstance(event, Token):
                yield Token(
                    text=event.text.upper(),
                    channel=event.channel,
                    iteration=event.iteration,
                    role=event.role,
                )
            else:
                yield event
        state.answer = (state.answer or "").upper()
        yield GuardrailEvent(guardrail="shout", stage="output", action="redact", detail="upper")


class Remember:
    """A prepare and finish stage: adds a message before, records the outcome after."""

    name = "remember"

    def __init__(self) -> None:
        self.finished: list[tuple[str | None, str | None]] = []

    async def prepare(self, ctx: RunContext, state: TurnState) -> None:
        state.messages.append(Message(role="system", content="earlier: the user likes brevity"))

    async def finish(self, ctx: RunContext, state: TurnState, error: AstromeshError | None) -> None:
        self.finished.append((state.answer, error.code if error else None))


class Block:
    name = "input_guard"

    async def prepare(self, ctx: RunContext, state: TurnState) -> None:
        raise GuardrailViolation("blocked topic")


class Buggy:
    name = "buggy"

    async def prepare(self, ctx: RunContext, state: TurnState) -> None:
        raise ZeroDivisionError("oops")


async def test_stages_run_in_order_around_the_pattern() -> None:
    def check(req: object) -> str:
        messages = req.messages  # type: ignore[attr-defined]
        assert [m.content for m in messages] == ["earlier: the user likes brevity", "hi"]
        return "hello there"

    remember = Remember()
    rt = runtime(
        ScriptedProvider([check]), prepare=(remember,), transformers=(Shout(),), finish=(remember,)
    )
    events = [e async for e in rt.stream(RunRequest(query="hi"))]
    assert "".join(e.text for e in events if isinstance(e, Token)) == "HELLO THERE"
    assert any(isinstance(e, GuardrailEvent) for e in events)
    last = events[-1]
    assert isinstance(last, RunFinished) and last.result.answer == "HELLO THERE"
    assert remember.finished == [("HELLO THERE", None)]


async def test_finish_stages_see_the_error_and_the_error_wins() -> None:
    remember = Remember()
    rt = runtime(ScriptedProvider([]), prepare=(Block(),), finish=(remember,))
    with pytest.raises(GuardrailViolation) as info:
        await rt.run(RunRequest(query="hi"))
    assert info.value.details["stage"] == "input_guard"
    assert info.value.http_status == 400
    assert remember.finished == [(None, "guardrail_violation")]


async def test_a_bug_in_a_stage_is_a_run_error_naming_it() -> None:
    rt = runtime(ScriptedProvider([]), prepare=(Buggy(),))
    with pytest.raises(RunError, match="stage 'buggy' failed: ZeroDivisionError: oops") as info:
        await rt.run(RunRequest(query="hi"))
    assert info.value.details["stage"] == "buggy"


async def test_prompt_errors_name_the_prompts_stage() -> None:
    from astromesh_ray.errors import InvalidRequest

    rt = runtime(ScriptedProvider([]), system="Hi {{ user }}")
    with pytest.raises(InvalidRequest, match="'user' is undefined") as info:
        await rt.run(RunRequest(query="hi"))
    assert info.value.details["stage"] == "prompts"


def test_stages_come_from_the_registry(tmp_path: Path) -> None:
    agents = load_agents(tmp_path, agent_yaml("brief", prompts={"system": "Be brief."}))
    stages = stages_for(agents["brief"])
    assert stages.names == ["prompts"]  # no memory, no guardrails declared: only prompts
    order = ["guardrails_input", "memory", "prompts", "guardrails_output", "episodic"]
    assert list(STAGES) == order
    with pytest.raises(ConfigError, match="stages: " + ", ".join(order)):
        stage_factory("memory_typo")


def test_event_schema_is_the_contract_for_every_event() -> None:
    import jsonschema

    schema = event_json_schema()
    assert set(schema["discriminator"]["mapping"]) == {
        "run_started",
        "token",
        "model_call",
        "tool_call",
        "tool_result",
        "step",
        "delegate",
        "handoff",
        "plan",
        "task_started",
        "task_finished",
        "guardrail",
        "error",
        "run_finished",
    }
    # What the runtime streams validates against it, and every field is present.
    token = event_to_dict(Token(text="a", channel="answer", iteration=1, role="reasoner"))
    jsonschema.validate(token, schema)
    assert token == {
        "text": "a",
        "channel": "answer",
        "iteration": 1,
        "role": "reasoner",
        "tool_index": None,
        "task": None,
        "type": "token",
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**token, "channel": "shouting"}, schema)
    assert "tool_index" in schema["$defs"]["Token"]["required"]


async def test_every_event_of_a_run_validates_against_the_schema() -> None:
    import jsonschema

    from astromesh_ray.core.messages import ToolCall

    schema = event_json_schema()
    provider = ScriptedProvider([ToolCall("1", "calculator", {"expression": "2*3"}), "six"])
    events = [e async for e in runtime(provider).stream(RunRequest(query="2*3?"))]
    kinds = set()
    for event in events:
        data = event_to_dict(event)
        jsonschema.validate(data, schema)
        kinds.add(data["type"])
    assert kinds >= {"run_started", "token", "model_call", "tool_call", "tool_result", "step"}
    assert any(isinstance(e, StepEvent) and e.step.type == "answer" for e in events)


class ClosingProvider:
    """Streams forever (one word per chunk) and records when its stream is closed."""

    name = "closing"

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def complete(self, request: object) -> object:
        raise AssertionError("stream only")

    async def stream(self, request: object) -> AsyncIterator[CompletionChunk]:
        try:
            while True:
                yield CompletionChunk(text="word ")
                await asyncio.sleep(0)
        finally:
            self.closed.set()

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


class BlockFirstToken:
    name = "output_guard"

    async def transform(
        self, ctx: RunContext, state: TurnState, events: AsyncIterator[Event]
    ) -> AsyncIterator[Event]:
        async for event in events:
            if isinstance(event, Token):
                raise GuardrailViolation("blocked output")
            yield event


async def test_a_failed_run_closes_the_stream_it_was_reading() -> None:
    provider = ClosingProvider()
    rt = runtime(provider, transformers=(BlockFirstToken(),))  # type: ignore[arg-type]
    with pytest.raises(GuardrailViolation) as info:
        async for _ in rt.stream(RunRequest(query="hi")):
            pass
    # Closed before the error reached us, not whenever the garbage collector runs.
    assert provider.closed.is_set()
    assert info.value.details["stage"] == "output_guard"
    spans = info.value.details["trace"]
    assert all(s["duration_ms"] is not None for s in spans)
    assert [s["name"] for s in spans] == ["run", "model_call"]


async def test_a_reader_that_stops_closes_the_run_and_its_stream() -> None:
    provider = ClosingProvider()
    events = runtime(provider).stream(RunRequest(query="hi"))  # type: ignore[arg-type]
    async for event in events:
        if isinstance(event, Token):
            break
    await events.aclose()  # type: ignore[attr-defined]
    assert provider.closed.is_set()


class Explode:
    name = "exploding"

    async def transform(
        self, ctx: RunContext, state: TurnState, events: AsyncIterator[Event]
    ) -> AsyncIterator[Event]:
        async for event in events:
            yield event
        raise ZeroDivisionError("in the transformer")


async def test_a_bug_in_a_transformer_names_it_and_pattern_errors_are_not_its() -> None:
    from astromesh_ray.errors import ProviderError

    rt = runtime(ScriptedProvider(["fine"]), transformers=(Explode(),))
    with pytest.raises(RunError, match="stage 'exploding' failed: ZeroDivisionError") as info:
        await rt.run(RunRequest(query="hi"))
    assert info.value.details["stage"] == "exploding"
    # An error of the pattern passes through the transformer unnamed by it.
    down = ProviderError("down", provider="p", status=500)
    rt = runtime(ScriptedProvider([down]), transformers=(Shout(),))
    with pytest.raises(ProviderError) as failed:
        await rt.run(RunRequest(query="hi"))
    assert "stage" not in failed.value.details


class SlowSave:
    name = "slow_save"

    def __init__(self) -> None:
        self.calls = 0

    async def finish(self, ctx: RunContext, state: TurnState, error: AstromeshError | None) -> None:
        self.calls += 1
        await asyncio.sleep(0.3)


async def test_finish_stages_run_once_and_outside_the_turn_timeout() -> None:
    save = SlowSave()
    rt = runtime(ScriptedProvider(["answered in time"]), finish=(save,), timeout_s=0.1)
    result = await rt.run(RunRequest(query="hi"))
    assert result.answer == "answered in time" and save.calls == 1


class SlowPrepare:
    name = "slow_load"

    async def prepare(self, ctx: RunContext, state: TurnState) -> None:
        await asyncio.sleep(5)


async def test_prepare_stages_are_bounded_by_the_deadline_when_streaming_too() -> None:
    from astromesh_ray.errors import RunTimeout

    rt = runtime(ScriptedProvider([]), prepare=(SlowPrepare(),), timeout_s=0.1)
    with pytest.raises(RunTimeout) as info:
        async for _ in rt.stream(RunRequest(query="hi")):
            pass
    assert info.value.details["stage"] == "slow_load"
    with pytest.raises(RunTimeout):
        await rt.run(RunRequest(query="hi"))
