"""Our run events → AG-UI events: scripted event sequences (built from the core's
own event types, as the agent streams them) translated, written with the AG-UI
encoder, read back through the ``ag_ui.core`` Event union, and checked against the
protocol's sequence rules."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

from ag_ui.core import (
    BaseEvent,
    Event,
    EventType,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunStartedEvent,
    StateSnapshotEvent,
)
from ag_ui.encoder import EventEncoder
from pydantic import TypeAdapter

from astromesh_ray.core.events import (
    ErrorEvent,
    GuardrailEvent,
    ModelCall,
    PendingToolCall,
    PlanEvent,
    PlannedTask,
    RunFinished,
    RunResult,
    RunStarted,
    TaskFinished,
    TaskKind,
    TaskStarted,
    Token,
    ToolCallEvent,
    ToolResultEvent,
    event_to_dict,
)
from astromesh_ray.core.messages import Usage
from astromesh_ray.errors import ProviderError
from astromesh_ray.serve.protocols.agui_events import STATE_KEY, AGUIRun, interrupt_id

RUN = "0123456789abcdef0123456789abcdef"
EVENTS: TypeAdapter[Any] = TypeAdapter(Event)
T = EventType


def started() -> dict[str, Any]:
    return event_to_dict(RunStarted(run_id=RUN, agent="calc", session_id="t-1", trace_id="f" * 32))


def token(text: str, iteration: int = 1, channel: Any = "answer", **kw: Any) -> dict[str, Any]:
    return event_to_dict(
        Token(text=text, channel=channel, iteration=iteration, role="reasoner", **kw)
    )


def model_call(iteration: int, tokens_in: int = 10, tokens_out: int = 5) -> dict[str, Any]:
    return event_to_dict(
        ModelCall(
            iteration=iteration,
            role="reasoner",
            provider="openai",
            model="m",
            usage=Usage(tokens_in, tokens_out, 1),
            finish_reason="stop",
            duration_ms=1.0,
            span_id="s" * 16,
            where={},
        )
    )


def finished(answer: str, usage: Usage, **fields: Any) -> dict[str, Any]:
    result = RunResult(
        run_id=RUN,
        agent="calc",
        answer=answer,
        steps=[],
        usage=usage,
        trace=[],
        trace_id="f" * 32,
        session_id="t-1",
        iterations=usage.calls,
        **fields,
    )
    return event_to_dict(RunFinished(result=result))


def translate(
    events: Iterable[dict[str, Any]], state: dict[str, Any] | None = None
) -> list[BaseEvent]:
    """The run's AG-UI events as a client reads them: encoded as SSE, parsed back."""
    counter = itertools.count(1)
    run = AGUIRun("t-1", "client-run-7", state=state, new_id=lambda: f"id{next(counter)}")
    out = [e for event in events for e in run.translate(event)]
    out += run.ended()
    encoder = EventEncoder()
    parsed = []
    for event in out:
        line = encoder.encode(event)
        assert line.startswith("data: ") and line.endswith("\n\n")
        parsed.append(EVENTS.validate_python(json.loads(line[len("data: ") :])))
    check_sequence(parsed)
    return parsed


def check_sequence(events: list[Any], calls_before: Iterable[str] = ()) -> None:
    """AG-UI's sequence rules: RUN_STARTED first, one terminal event last; text and
    reasoning messages START → CONTENT* → END with one id; tool calls START → ARGS →
    END with one id, results only for calls started (here or, ``calls_before``, in
    an earlier run of the thread); steps paired."""
    assert events[0].type == T.RUN_STARTED
    assert events[-1].type in (T.RUN_FINISHED, T.RUN_ERROR)
    assert [e.type for e in events].count(events[-1].type) == 1
    text: str | None = None
    reasoning: str | None = None
    seen_messages: set[str] = set()
    calls: set[str] = set()
    answered = set(calls_before)
    steps: set[str] = set()
    for index, e in enumerate(events):
        kind = e.type
        if kind in (T.TEXT_MESSAGE_START, T.REASONING_MESSAGE_START):
            assert text is None and reasoning is None, "one message open at a time"
            assert e.message_id not in seen_messages
            seen_messages.add(e.message_id)
            if kind == T.TEXT_MESSAGE_START:
                text = e.message_id
            else:
                reasoning = e.message_id
        elif kind in (T.TEXT_MESSAGE_CONTENT, T.TEXT_MESSAGE_END):
            assert text is not None and e.message_id == text
            if kind == T.TEXT_MESSAGE_END:
                text = None
        elif kind in (T.REASONING_MESSAGE_CONTENT, T.REASONING_MESSAGE_END):
            assert reasoning is not None and e.message_id == reasoning
            if kind == T.REASONING_MESSAGE_END:
                reasoning = None
        elif kind == T.TOOL_CALL_START:
            call = e.tool_call_id
            assert call not in calls
            calls.add(call)
            nxt, end = events[index + 1], events[index + 2]
            assert (nxt.type, nxt.tool_call_id) == (T.TOOL_CALL_ARGS, call)
            assert (end.type, end.tool_call_id) == (T.TOOL_CALL_END, call)
        elif kind == T.TOOL_CALL_RESULT:
            assert e.tool_call_id in calls | answered
        elif kind == T.STEP_STARTED:
            assert e.step_name not in steps
            steps.add(e.step_name)
        elif kind == T.STEP_FINISHED:
            steps.remove(e.step_name)
    if events[-1].type == T.RUN_FINISHED:
        assert text is None and reasoning is None and not steps


def of(events: list[BaseEvent], *kinds: EventType) -> list[Any]:
    return [e for e in events if e.type in kinds]


def test_a_streamed_answer_is_one_text_message_with_a_delta_per_token() -> None:
    out = translate(
        [
            started(),
            token("Hello"),
            token(" there,"),
            token(" friend."),
            model_call(1),
            finished("Hello there, friend.", Usage(10, 5, 1)),
        ]
    )
    kinds = [e.type for e in out]
    assert kinds == [
        T.RUN_STARTED,
        T.STATE_SNAPSHOT,
        T.TEXT_MESSAGE_START,
        T.TEXT_MESSAGE_CONTENT,
        T.TEXT_MESSAGE_CONTENT,
        T.TEXT_MESSAGE_CONTENT,
        T.TEXT_MESSAGE_END,
        T.RAW,
        T.STATE_SNAPSHOT,
        T.RUN_FINISHED,
    ]
    deltas = [e.delta for e in of(out, T.TEXT_MESSAGE_CONTENT)]
    assert deltas == ["Hello", " there,", " friend."]
    first = out[0]
    assert isinstance(first, RunStartedEvent)
    assert (first.thread_id, first.run_id, first.protocol_version) == ("t-1", "client-run-7", "1.0")
    assert first.metadata == {
        STATE_KEY: {
            "run_id": RUN,
            "agent": "calc",
            "session_id": "t-1",
            "trace_id": "f" * 32,
            "status": "running",
        }
    }
    assert of(out, T.TEXT_MESSAGE_START)[0].role == "assistant"
    assert out[7].source == "astromesh" and out[7].event["type"] == "model_call"
    last = out[-1]
    assert isinstance(last, RunFinishedEvent)
    assert (last.thread_id, last.run_id) == ("t-1", "client-run-7")
    assert last.result["run_id"] == RUN and last.result["answer"] == "Hello there, friend."
    assert last.outcome is not None and last.outcome.type == "success"
    # Our model calls account for the whole usage: one entry per provider and model.
    assert [u.model_dump() for u in last.usage or []] == [
        {
            "provider": "openai",
            "model": "m",
            "input_tokens": 10,
            "output_tokens": 5,
            "total_tokens": 15,
        }
    ]


def test_a_tool_call_is_start_args_end_then_its_result() -> None:
    out = translate(
        [
            started(),
            token("Let me compute."),
            model_call(1),
            event_to_dict(
                ToolCallEvent(
                    iteration=1, id="call_1", name="calculator", arguments={"expression": "6*7"}
                )
            ),
            event_to_dict(
                ToolResultEvent(
                    iteration=1,
                    id="call_1",
                    name="calculator",
                    content="42",
                    is_error=False,
                    duration_ms=1.0,
                )
            ),
            token("It is "),
            token("42."),
            model_call(2),
            finished("It is 42.", Usage(20, 10, 2)),
        ]
    )
    [start] = of(out, T.TOOL_CALL_START)
    [args] = of(out, T.TOOL_CALL_ARGS)
    [result] = of(out, T.TOOL_CALL_RESULT)
    texts = of(out, T.TEXT_MESSAGE_START)
    assert (start.tool_call_id, start.tool_call_name) == ("call_1", "calculator")
    # The call belongs to the assistant message of the model call that made it.
    assert start.parent_message_id == texts[0].message_id
    assert json.loads(args.delta) == {"expression": "6*7"}
    assert (result.tool_call_id, result.content, result.role) == ("call_1", "42", "tool")
    assert result.message_id not in {t.message_id for t in texts}
    assert len(texts) == 2 and texts[0].message_id != texts[1].message_id
    second = [e.delta for e in of(out, T.TEXT_MESSAGE_CONTENT)][1:]
    assert "".join(second) == "It is 42."
    assert of(out, T.RUN_FINISHED)[0].usage[0].input_tokens == 20


def test_tool_calls_without_text_share_one_minted_assistant_message() -> None:
    calls = [
        event_to_dict(ToolCallEvent(iteration=1, id=f"c{i}", name="calculator", arguments={}))
        for i in (1, 2)
    ]
    out = translate([started(), model_call(1), *calls, finished("", Usage(10, 5, 1))])
    starts = of(out, T.TOOL_CALL_START)
    assert [s.tool_call_id for s in starts] == ["c1", "c2"]
    assert starts[0].parent_message_id == starts[1].parent_message_id is not None
    assert [json.loads(a.delta) for a in of(out, T.TOOL_CALL_ARGS)] == [{}, {}]
    assert not of(out, T.TEXT_MESSAGE_START)  # no answer: no text message


def test_reasoning_tokens_are_a_reasoning_message_before_the_answer() -> None:
    out = translate(
        [
            started(),
            token("Think", channel="reasoning"),
            token("ing.", channel="reasoning"),
            token("Done."),
            model_call(1),
            finished("Done.", Usage(10, 5, 1)),
        ]
    )
    kinds = [e.type for e in out][2:8]
    assert kinds == [
        T.REASONING_START,
        T.REASONING_MESSAGE_START,
        T.REASONING_MESSAGE_CONTENT,
        T.REASONING_MESSAGE_CONTENT,
        T.REASONING_MESSAGE_END,
        T.REASONING_END,
    ]
    span = of(out, T.REASONING_START)[0].message_id
    assert of(out, T.REASONING_END)[0].message_id == span
    assert "".join(e.delta for e in of(out, T.REASONING_MESSAGE_CONTENT)) == "Thinking."
    assert [e.delta for e in of(out, T.TEXT_MESSAGE_CONTENT)] == ["Done."]


def test_tool_args_tokens_neither_show_nor_split_the_answer() -> None:
    out = translate(
        [
            started(),
            token("Wait"),
            token('{"a":', channel="tool_args", tool_index=0),
            token("ing."),
            model_call(1),
            finished("Waiting.", Usage(10, 5, 1)),
        ]
    )
    assert len(of(out, T.TEXT_MESSAGE_START)) == 1
    assert [e.delta for e in of(out, T.TEXT_MESSAGE_CONTENT)] == ["Wait", "ing."]


def test_an_answer_that_was_not_streamed_is_sent_whole() -> None:
    out = translate([started(), finished("I only talk about cars.", Usage())])
    [content] = of(out, T.TEXT_MESSAGE_CONTENT)
    assert content.delta == "I only talk about cars."
    assert of(out, T.TEXT_MESSAGE_END)[0].message_id == content.message_id
    # No model call: the usage is the (empty) total.
    assert [u.total_tokens for u in of(out, T.RUN_FINISHED)[0].usage] == [0]


def test_usage_is_the_total_when_model_calls_do_not_account_for_it() -> None:
    # A sub-run's calls are in the run's usage but not among its model_call events.
    out = translate([started(), token("ok"), model_call(1, 10, 5), finished("ok", Usage(30, 9, 3))])
    [usage] = of(out, T.RUN_FINISHED)[0].usage
    assert (usage.provider, usage.input_tokens, usage.output_tokens) == (None, 30, 9)


def test_a_paused_run_finishes_with_an_interrupt_per_pending_call() -> None:
    pending = [
        PendingToolCall(
            id="c1", name="search_parts", arguments={"make": "Fiat"}, kind="client", iteration=1
        ),
        PendingToolCall(
            id="c2", name="quote", arguments={"part": "P1"}, kind="approval", iteration=1
        ),
    ]
    calls = [
        event_to_dict(ToolCallEvent(iteration=1, id=p.id, name=p.name, arguments=p.arguments))
        for p in pending
    ]
    out = translate(
        [
            started(),
            model_call(1),
            *calls,
            finished("", Usage(10, 5, 1), status="requires_action", pending=pending),
        ]
    )
    last = out[-1]
    assert isinstance(last, RunFinishedEvent)
    assert isinstance(last.outcome, RunFinishedInterruptOutcome)
    client, approval = last.outcome.interrupts
    assert client.id == interrupt_id(RUN, "c1") == f"{RUN}:c1"
    assert (client.reason, client.tool_call_id) == ("client_tool", "c1")
    assert client.metadata == {"tool": "search_parts", "arguments": {"make": "Fiat"}}
    assert (approval.reason, approval.tool_call_id) == ("tool_approval", "c2")
    assert approval.response_schema["required"] == ["approved"]
    assert last.result["status"] == "requires_action"
    assert not of(out, T.TEXT_MESSAGE_START)  # an empty answer is not a message
    snapshot = out[-2]
    assert isinstance(snapshot, StateSnapshotEvent)
    assert snapshot.snapshot[STATE_KEY]["status"] == "requires_action"


def test_the_state_is_the_clients_with_the_runs_facts() -> None:
    state = {"cart": ["P1"], STATE_KEY: {"run_id": "an older run"}}
    out = translate([started(), token("ok"), finished("ok", Usage(10, 5, 1))], state=state)
    first, last = of(out, T.STATE_SNAPSHOT)
    assert first.snapshot["cart"] == last.snapshot["cart"] == ["P1"]
    assert first.snapshot[STATE_KEY]["status"] == "running"
    assert first.snapshot[STATE_KEY]["run_id"] == RUN
    assert last.snapshot[STATE_KEY]["status"] == "completed"
    assert last.snapshot[STATE_KEY]["iterations"] == 1
    assert last.snapshot[STATE_KEY]["usage"]["total_tokens"] == 15
    assert state[STATE_KEY] == {"run_id": "an older run"}  # the input is not changed


def test_a_failure_mid_stream_closes_the_message_and_ends_with_run_error() -> None:
    error = ProviderError("upstream 503", hint="try later", run_id=RUN)
    out = translate([started(), token("Half an"), event_to_dict(ErrorEvent.from_error(error))])
    assert [e.type for e in out][-2:] == [T.TEXT_MESSAGE_END, T.RUN_ERROR]
    last = out[-1]
    assert (last.message, last.code) == ("upstream 503", "provider_error")
    assert last.metadata == {STATE_KEY: {"run_id": RUN, "hint": "try later"}}


def test_nothing_follows_the_terminal_event() -> None:
    run = AGUIRun("t-1", "r")
    run.translate(started())
    assert run.translate(finished("ok", Usage()))[-1].type == T.RUN_FINISHED
    assert run.done
    assert run.translate(token("late")) == [] and run.ended() == []


def test_a_stream_that_stops_short_ends_with_run_error() -> None:
    out = translate([started(), token("Hel")])
    assert [e.type for e in out][-2:] == [T.TEXT_MESSAGE_END, T.RUN_ERROR]
    assert out[-1].message == "the run's stream ended early"


def test_tasks_are_steps_and_the_plan_an_activity() -> None:
    plan = [PlannedTask(id="s1", task="look up"), PlannedTask(id="s2", task="sum")]

    def task(kind: TaskKind, name: str) -> list[dict[str, Any]]:
        return [
            event_to_dict(TaskStarted(id=name, kind=kind, name=name, input="in")),
            event_to_dict(
                TaskFinished(
                    id=name,
                    kind=kind,
                    name=name,
                    is_error=False,
                    output="out",
                    where={},
                    duration_ms=2.0,
                )
            ),
        ]

    out = translate(
        [
            started(),
            event_to_dict(PlanEvent(iteration=1, attempt=1, steps=plan)),
            *task("plan_step", "s1"),
            event_to_dict(PlanEvent(iteration=2, attempt=2, steps=plan[1:])),
            event_to_dict(TaskStarted(id="s2", kind="plan_step", name="s2", input="in")),
            event_to_dict(
                GuardrailEvent(guardrail="pii", stage="output", action="warn", detail="1 EMAIL")
            ),
            finished("done", Usage()),
        ]
    )
    assert [(e.type, e.step_name) for e in of(out, T.STEP_STARTED, T.STEP_FINISHED)] == [
        (T.STEP_STARTED, "plan_step s1"),
        (T.STEP_FINISHED, "plan_step s1"),
        (T.STEP_STARTED, "plan_step s2"),
        (T.STEP_FINISHED, "plan_step s2"),  # closed before RUN_FINISHED
    ]
    assert of(out, T.STEP_STARTED)[0].metadata == {STATE_KEY: {"input": "in"}}
    first, second = of(out, T.ACTIVITY_SNAPSHOT)
    assert first.message_id == second.message_id and first.activity_type == "plan"
    assert (first.replace, second.replace) == (False, True)
    assert [s["id"] for s in second.content["steps"]] == ["s2"]
    [raw] = of(out, T.RAW)
    assert raw.event["type"] == "guardrail"
