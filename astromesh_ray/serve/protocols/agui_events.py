"""AG-UI (the protocol CopilotKit speaks) over our run events: ``AGUIRun`` turns the
event dicts of one run (``event_to_dict``) into ``ag_ui.core`` events, in the order
the protocol requires.  Pure: no Ray, no I/O; ``protocols/agui.py`` streams it.

    RUN_STARTED (the client's threadId / runId; ours in metadata) → STATE_SNAPSHOT
    token answer      → TEXT_MESSAGE_START / _CONTENT (one per token) / _END
    token reasoning   → REASONING_START / _MESSAGE_START / _MESSAGE_CONTENT /
                        _MESSAGE_END / REASONING_END
    tool_call         → TOOL_CALL_START / _ARGS (the arguments as JSON) / _END
    tool_result       → TOOL_CALL_RESULT
    task_started / _finished → STEP_STARTED / STEP_FINISHED ("plan_step s1", ...)
    plan              → ACTIVITY_SNAPSHOT (activity type "plan", replaced on re-plan)
    model_call, step, delegate, handoff, guardrail → RAW (source "astromesh")
    run_finished      → STATE_SNAPSHOT, RUN_FINISHED (outcome success, or interrupt:
                        the pending client / approval calls); error → RUN_ERROR

A streamed text message is one model call's answer text: it opens on its first
token and closes when anything but its own tokens ends it (its model call ended, a
tool call, another stream).  Tool calls carry ``parentMessageId``: the assistant
message of the model call that made them.  ``tool_args`` tokens are not mapped: a
token names its call by position in the answer, not by id, and the id (which
TOOL_CALL_START needs first) only comes with the ``tool_call`` event, which
carries the parsed arguments whole.

The state (STATE_SNAPSHOT) is the client's input ``state`` (an object) with one key
set, ``astromesh``: the run's facts (our run id, agent, session, trace id, status;
at the end also usage and model calls).  Our agents do not read or change the
rest: it comes back as it was sent.

A paused run's pending calls become interrupts whose id is
``<our run id>:<tool call id>``; the next input's ``resume`` entries answer them
(``protocols/agui.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ag_ui.core import (
    PROTOCOL_VERSION,
    ActivitySnapshotEvent,
    BaseEvent,
    Interrupt,
    RawEvent,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunErrorEvent,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    StateSnapshotEvent,
    StepFinishedEvent,
    StepStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)

STATE_KEY = "astromesh"
"""The key of the state (and of event metadata) that holds our run's facts."""

# Our events with no AG-UI counterpart, passed on verbatim as RAW events.
_RAW = frozenset({"model_call", "step", "delegate", "handoff", "guardrail"})
# Events that end the open text or reasoning message (their model call is over).
_ENDS_MESSAGE = frozenset({"model_call", "tool_call", "tool_result", "task_started"})
_ENDS_MESSAGE |= {"task_finished", "plan", "delegate", "handoff", "run_finished", "error"}
# What a run's result says of itself in RUN_FINISHED.result (not the transcript,
# steps or trace: the stream carried those).
_RESULT_FIELDS = (
    *("run_id", "agent", "answer", "status", "data", "usage", "iterations"),
    *("session_id", "trace_id", "pending", "handoff_to"),
)

APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approved": {"type": "boolean", "description": "Run the call (false: refuse it)."},
        "reason": {"type": "string", "description": "Why; the model reads it on a refusal."},
    },
    "required": ["approved"],
    "additionalProperties": False,
}
"""What a resume entry's ``payload`` is for an approval interrupt."""
CLIENT_SCHEMA: dict[str, Any] = {
    "description": "What the tool returned: text, or any JSON (the model reads it as text)."
}
"""What a resume entry's ``payload`` is for a client tool's interrupt."""

Key = tuple[str | None, int]  # (task, iteration): one model call's output


class AGUIRun:
    """The AG-UI events of one run: feed it every event dict (``translate``), the
    error of a failed stream (``translate(error_event(exc))``), and ``ended`` when
    the stream stopped without either; ``done`` once RUN_FINISHED / RUN_ERROR left."""

    def __init__(
        self,
        thread_id: str,
        run_id: str,
        *,
        state: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.thread_id = thread_id
        self.run_id = run_id  # the client's: ours is in `facts`
        self.parent_run_id = parent_run_id
        self.state = dict(state or {})
        self.facts: dict[str, Any] = {}
        self.done = False
        self._new_id = new_id
        self._open: tuple[Literal["text", "reasoning"], Key, str, str] | None = None
        self._assistant: dict[Key, str] = {}  # the assistant message of each model call
        self._steps: list[str] = []  # active STEP names
        self._plan_id: str | None = None
        self._usage: dict[tuple[str, str], list[int]] = {}  # (provider, model): in, out
        self._answer_streamed = False  # since the last tool call

    def translate(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        """The AG-UI events ``event`` becomes (none once the run is done)."""
        if self.done:
            return []
        kind = str(event.get("type"))
        out: list[BaseEvent] = []
        if kind == "token":
            return self._token(event)
        if kind in _ENDS_MESSAGE:
            out += self._close()
        handler = _HANDLERS.get(kind)
        if handler is not None:
            out += handler(self, event)
        elif kind in _RAW:
            out.append(RawEvent(event=dict(event), source=STATE_KEY))
        if kind == "model_call":
            usage = event.get("usage") or {}
            counts = self._usage.setdefault((event["provider"], event["model"]), [0, 0])
            counts[0] += int(usage.get("input_tokens") or 0)
            counts[1] += int(usage.get("output_tokens") or 0)
        return out

    def ended(self) -> list[BaseEvent]:
        """The stream stopped with neither a result nor an error."""
        if self.done:
            return []
        return self._failed({"code": "run_error", "message": "the run's stream ended early"})

    # -- the run -------------------------------------------------------------------

    def _started(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        self.facts = {
            "run_id": event["run_id"],
            "agent": event["agent"],
            "session_id": event.get("session_id"),
            "trace_id": event.get("trace_id"),
            "status": "running",
        }
        return [
            RunStartedEvent(
                thread_id=self.thread_id,
                run_id=self.run_id,
                parent_run_id=self.parent_run_id,
                protocol_version=PROTOCOL_VERSION,
                metadata={STATE_KEY: dict(self.facts)},
            ),
            self._snapshot(),
        ]

    def _finished(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        result: Mapping[str, Any] = event["result"]
        out: list[BaseEvent] = []
        answer = str(result.get("answer") or "")
        if result.get("status") != "requires_action" and answer and not self._answer_streamed:
            # Not streamed (a refusal, a provider that does not stream): sent whole.
            message_id = self._new_id()
            out += [
                TextMessageStartEvent(message_id=message_id, role="assistant"),
                TextMessageContentEvent(message_id=message_id, delta=answer),
                TextMessageEndEvent(message_id=message_id),
            ]
        out += [StepFinishedEvent(step_name=name) for name in self._steps]
        self._steps.clear()
        self.facts.update(
            status=result.get("status"),
            usage=result.get("usage"),
            iterations=result.get("iterations"),
        )
        pending = list(result.get("pending") or [])
        outcome: RunFinishedSuccessOutcome | RunFinishedInterruptOutcome
        if pending:
            outcome = RunFinishedInterruptOutcome(interrupts=[self._interrupt(p) for p in pending])
        else:
            outcome = RunFinishedSuccessOutcome()
        out.append(self._snapshot())
        out.append(
            RunFinishedEvent(
                thread_id=self.thread_id,
                run_id=self.run_id,
                result={k: result.get(k) for k in _RESULT_FIELDS},
                outcome=outcome,
                usage=self._token_usage(result.get("usage") or {}),
            )
        )
        self.done = True
        return out

    def _failed(self, error: Mapping[str, Any]) -> list[BaseEvent]:
        out = self._close()  # what was streamed held nothing wrong: it stays whole
        self.done = True
        facts = {"run_id": error.get("run_id") or self.facts.get("run_id")}
        facts["hint"] = error.get("hint")
        return [
            *out,
            RunErrorEvent(
                message=str(error.get("message") or "the run failed"),
                code=str(error.get("code") or "run_error"),
                metadata={STATE_KEY: facts},
            ),
        ]

    def _error(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        return self._failed(event.get("error") or {})

    def _snapshot(self) -> StateSnapshotEvent:
        return StateSnapshotEvent(snapshot={**self.state, STATE_KEY: dict(self.facts)})

    def _interrupt(self, call: Mapping[str, Any]) -> Interrupt:
        client = call["kind"] == "client"
        return Interrupt(
            id=interrupt_id(str(self.facts.get("run_id")), str(call["id"])),
            reason="client_tool" if client else "tool_approval",
            message=(
                f"run the client tool {call['name']!r} and answer with its result"
                if client
                else f"approve or refuse the call of {call['name']!r}"
            ),
            tool_call_id=str(call["id"]),
            response_schema=CLIENT_SCHEMA if client else APPROVAL_SCHEMA,
            metadata={"tool": call["name"], "arguments": call.get("arguments") or {}},
        )

    def _token_usage(self, total: Mapping[str, Any]) -> list[TokenUsage]:
        """One entry per provider and model when our model calls account for the whole
        run's usage, else (sub-runs' calls counted in the total) the total alone."""
        tokens_in = int(total.get("input_tokens") or 0)
        tokens_out = int(total.get("output_tokens") or 0)
        counts = self._usage.values()
        if self._usage and [sum(c[0] for c in counts), sum(c[1] for c in counts)] == [
            tokens_in,
            tokens_out,
        ]:
            return [
                TokenUsage(
                    provider=provider,
                    model=model,
                    input_tokens=c_in,
                    output_tokens=c_out,
                    total_tokens=c_in + c_out,
                )
                for (provider, model), (c_in, c_out) in self._usage.items()
            ]
        return [
            TokenUsage(
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                total_tokens=tokens_in + tokens_out,
            )
        ]

    # -- streamed text and reasoning -------------------------------------------------

    def _token(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        channel = event.get("channel")
        if channel not in ("answer", "reasoning"):
            return []  # tool_args: see the module's docstring
        kind: Literal["text", "reasoning"] = "text" if channel == "answer" else "reasoning"
        key: Key = (event.get("task"), int(event.get("iteration") or 0))
        out: list[BaseEvent] = []
        if self._open is None or self._open[:2] != (kind, key):
            out += self._close()
            out += self._open_message(kind, key, event.get("task"))
        assert self._open is not None
        message_id = self._open[2]
        text = str(event.get("text") or "")
        if kind == "text":
            self._answer_streamed = True
            out.append(TextMessageContentEvent(message_id=message_id, delta=text))
        else:
            out.append(ReasoningMessageContentEvent(message_id=message_id, delta=text))
        return out

    def _open_message(
        self, kind: Literal["text", "reasoning"], key: Key, name: str | None
    ) -> list[BaseEvent]:
        message_id = self._new_id()
        if kind == "text":
            # A model call's text again after its reasoning: a new message, which
            # the call's tool calls then belong to.
            self._assistant[key] = message_id
            self._open = (kind, key, message_id, "")
            return [TextMessageStartEvent(message_id=message_id, role="assistant", name=name)]
        span = self._new_id()
        self._open = (kind, key, message_id, span)
        return [
            ReasoningStartEvent(message_id=span),
            ReasoningMessageStartEvent(message_id=message_id),
        ]

    def _close(self) -> list[BaseEvent]:
        if self._open is None:
            return []
        kind, _, message_id, span = self._open
        self._open = None
        if kind == "text":
            return [TextMessageEndEvent(message_id=message_id)]
        return [ReasoningMessageEndEvent(message_id=message_id), ReasoningEndEvent(message_id=span)]

    # -- tools, tasks, plans ---------------------------------------------------------

    def _tool_call(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        key: Key = (event.get("task"), int(event.get("iteration") or 0))
        parent = self._assistant.get(key)
        if parent is None:  # no text: the call's assistant message has only calls
            parent = self._assistant[key] = self._new_id()
        call_id = str(event["id"])
        self._answer_streamed = False  # the answer, if any, comes after the results
        arguments = json.dumps(event.get("arguments") or {}, ensure_ascii=False)
        return [
            ToolCallStartEvent(
                tool_call_id=call_id, tool_call_name=str(event["name"]), parent_message_id=parent
            ),
            ToolCallArgsEvent(tool_call_id=call_id, delta=arguments),
            ToolCallEndEvent(tool_call_id=call_id),
        ]

    def _tool_result(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        return [
            ToolCallResultEvent(
                message_id=self._new_id(),
                tool_call_id=str(event["id"]),
                content=str(event.get("content") or ""),
                role="tool",
                metadata={STATE_KEY: {"is_error": bool(event.get("is_error"))}},
            )
        ]

    def _task_started(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        name = f"{event['kind']} {event['id']}"
        if name in self._steps:  # a re-plan's step of the same id, still open
            return []
        self._steps.append(name)
        return [StepStartedEvent(step_name=name, metadata={STATE_KEY: {"input": event["input"]}})]

    def _task_finished(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        name = f"{event['kind']} {event['id']}"
        if name not in self._steps:
            return []
        self._steps.remove(name)
        facts = {"is_error": bool(event.get("is_error")), "duration_ms": event.get("duration_ms")}
        return [StepFinishedEvent(step_name=name, metadata={STATE_KEY: facts})]

    def _plan(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        replace = self._plan_id is not None
        if self._plan_id is None:
            self._plan_id = self._new_id()
        content = {"attempt": event.get("attempt"), "steps": list(event.get("steps") or [])}
        return [
            ActivitySnapshotEvent(
                message_id=self._plan_id, activity_type="plan", content=content, replace=replace
            )
        ]


_HANDLERS: dict[str, Callable[[AGUIRun, Mapping[str, Any]], list[BaseEvent]]] = {
    "run_started": AGUIRun._started,
    "run_finished": AGUIRun._finished,
    "error": AGUIRun._error,
    "tool_call": AGUIRun._tool_call,
    "tool_result": AGUIRun._tool_result,
    "task_started": AGUIRun._task_started,
    "task_finished": AGUIRun._task_finished,
    "plan": AGUIRun._plan,
}


def interrupt_id(run_id: str, call_id: str) -> str:
    """The id of the interrupt of pending call ``call_id`` of our run ``run_id``."""
    return f"{run_id}:{call_id}"
