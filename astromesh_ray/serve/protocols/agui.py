"""AG-UI, the front-end protocol CopilotKit speaks: ``POST /v1/agui/{name}`` takes a
``RunAgentInput`` and answers with the run's AG-UI events as Server-Sent Events
(``agui_events.py`` translates them; ``ag_ui.encoder.EventEncoder`` writes them).

What the input becomes:

- ``threadId``: the session id (it must be one: 422 naming ``threadId``);
  ``runId`` and ``parentRunId`` are the client's: echoed in RUN_STARTED /
  RUN_FINISHED (our own run id is in their ``metadata`` / ``result`` and in the
  state);
- the last message, a user message (text parts only), is the query; the earlier
  ones are the conversation so far (``RunRequest.history``), unless the agent keeps
  conversational memory: then the session's stored history is the conversation,
  and the earlier messages are not sent again.  Activity and reasoning messages are
  UI records, not sent to the model;
- ``context`` (``[{description, value}]``): one system message before the
  conversation, listing them;
- ``forwardedProps`` (an object): the prompt templates' variables (the ``context``
  of our REST API);
- ``state`` (an object): sent back in STATE_SNAPSHOT with our run's facts under
  ``astromesh``; the agent does not read it;
- ``tools``: refused (422) when not empty: an agent calls the tools its YAML
  declares; its ``type: client`` tools are the ones the front end runs;
- ``resume``: answers the interrupts of a paused run's RUN_FINISHED (its client
  tools' results, its approvals) and continues that run; the paused run has its
  prompt and conversation, so ``messages`` are not read again then, and
  ``context`` and ``forwardedProps`` are refused;
- ``protocolVersion``: the client's; RUN_STARTED declares ours (the protocol has
  each side go on whatever the other speaks).  Unknown top-level fields: 422.

Errors before the stream starts get the gateway's error envelope and status (404
unknown agent, 422 invalid input); after it started, a RUN_ERROR event ends it.
"""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from ag_ui.core import (
    ActivityMessage,
    AssistantMessage,
    ReasoningMessage,
    ResumeEntry,
    RunAgentInput,
    TextPart,
    ToolMessage,
    UserMessage,
)
from ag_ui.encoder import EventEncoder
from fastapi import Header, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from astromesh_ray.core.context import RESERVED_CONTEXT_KEYS, check_session_id
from astromesh_ray.core.messages import Message, ToolCall
from astromesh_ray.errors import AstromeshError, InvalidRequest
from astromesh_ray.serve.app import api
from astromesh_ray.serve.gateway_core import MEMORY_PATIENCE_S, GatewayCore
from astromesh_ray.serve.http import MAX_QUERY_CHARS, RUN_ID
from astromesh_ray.serve.outcome import unwrap
from astromesh_ray.serve.protocols.agui_events import AGUIRun, interrupt_id
from astromesh_ray.serve.run_events import RunEvents, error_event

CANCELLED = "the user cancelled this call"
"""The result (client tool) or refusal reason (approval) of a cancelled interrupt."""

_FIELDS = frozenset(
    name for key, info in RunAgentInput.model_fields.items() for name in (key, info.alias or key)
)


# The body is read and judged here (parse_input), not by FastAPI: its errors then name
# AG-UI's fields in the gateway's envelope.  What OpenAPI shows of it:
_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "description": "An AG-UI RunAgentInput (ag_ui.core.RunAgentInput).",
                "required": ["threadId", "runId", "messages"],
                "properties": {f.alias: {} for f in RunAgentInput.model_fields.values() if f.alias},
            }
        }
    },
}


class AGUIRoutes(GatewayCore):
    """``POST /v1/agui/{name}``: one run of agent ``name`` as an AG-UI event stream."""

    @api.post("/v1/agui/{name}", openapi_extra={"requestBody": _BODY})
    async def agui_run(
        self, name: str, request: Request, traceparent: str | None = Header(default=None)
    ) -> StreamingResponse:
        """Body: an AG-UI ``RunAgentInput``; reply: its events as SSE (``data:`` lines)."""
        self._app(name)  # 404 for unknown names, before the body is judged
        given = parse_input(await request.body())
        if given.tools:
            raise InvalidRequest(
                f"tools: agent {name!r} calls only the tools its YAML declares",
                hint="declare front-end tools in the agent's YAML as `type: client`; "
                "their calls end the run with an interrupt that `resume` answers",
                field="tools",
            )
        check_session_id(given.thread_id, "threadId", client=True)
        state = given.state if given.state is not None else {}
        if not isinstance(state, dict):
            raise InvalidRequest("state must be an object", field="state")
        if given.resume:
            events = await self._agui_resume(name, given, traceparent)
        else:
            memory = self._agents[name].get("memory") or {}
            body = run_body(given, replay="conversational" not in memory)
            events = await self.open_run(name, body, traceparent)
        run = AGUIRun(given.thread_id, given.run_id, state=state, parent_run_id=given.parent_run_id)
        encoder = EventEncoder()
        return StreamingResponse(
            agui_stream(events, run, encoder), media_type=encoder.get_content_type()
        )

    async def _agui_resume(
        self, name: str, given: RunAgentInput, traceparent: str | None
    ) -> RunEvents:
        """Continue the paused run that ``given.resume`` answers."""
        for field, value in (("context", given.context), ("forwardedProps", given.forwarded_props)):
            if value:
                raise InvalidRequest(
                    f"{field} cannot change a paused run: it goes on with the prompt it "
                    "started with",
                    hint=f"send {field} on the input that starts a run, not with `resume`",
                    field=field,
                )
        run_id = resumed_run(given.resume or [])
        self._app(name)  # 404 for unknown names
        outcome = await self._link.call(name, "paused", run_id, None, patience_s=MEMORY_PATIENCE_S)
        paused: dict[str, Any] = unwrap(outcome)  # 404 run_not_found: gone or answered
        if paused.get("session_id") != given.thread_id:
            raise InvalidRequest(f"run {run_id} belongs to another thread", field="threadId")
        if paused.get("status") != "requires_action":
            raise InvalidRequest(
                f"run {run_id} has no interrupt left: its calls were answered, then it failed",
                hint=f"POST /v1/agents/{name}/runs/{run_id}/retry goes on with it",
                field="resume",
            )
        answer = resume_answer(run_id, given.resume or [], paused.get("pending") or [])
        trace_id = str(paused.get("trace_id") or "") or None
        body = {**answer, "run_id": run_id}
        return await self.open_run(
            name, body, traceparent, method="resume_stream", trace_id=trace_id
        )


async def agui_stream(events: RunEvents, run: AGUIRun, encoder: EventEncoder) -> AsyncIterator[str]:
    """The run's events as AG-UI SSE; a failure after the first event (or a stream
    that stops short) ends it with RUN_ERROR."""
    async with events:
        try:
            async for event in events:
                for out in run.translate(event):
                    yield encoder.encode(out)
                if run.done:
                    break
        except AstromeshError as exc:
            for out in run.translate(error_event(exc)):
                yield encoder.encode(out)
        for out in run.ended():
            yield encoder.encode(out)


# -- the input ----------------------------------------------------------------------


def parse_input(raw: bytes) -> RunAgentInput:
    """The body as a ``RunAgentInput``; 422 naming the fields that are wrong (or
    unknown: the protocol's model keeps them, we would not use them)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}", field="(body)") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a RunAgentInput object", field="(body)")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InvalidRequest(
            "unknown RunAgentInput field(s): " + ", ".join(unknown),
            hint="fields: threadId, runId, parentRunId, state, messages, tools, context, "
            "forwardedProps, resume, protocolVersion",
            field=unknown[0],
        )
    try:
        return RunAgentInput.model_validate(data)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]}
            for err in exc.errors()
        ]
        raise InvalidRequest(
            "invalid RunAgentInput: "
            + "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5]),
            hint="send threadId, runId and messages (AG-UI RunAgentInput)",
            field=problems[0]["field"] if problems else "(body)",
            fields=problems,
        ) from None


def run_body(given: RunAgentInput, *, replay: bool) -> dict[str, Any]:
    """The ``RunRequest`` fields of a run ``given`` starts; ``replay``: send the
    earlier messages as the conversation (the agent keeps no conversational memory)."""
    messages = list(given.messages)
    if not messages or not isinstance(messages[-1], UserMessage):
        raise InvalidRequest(
            "the last message must be the user's (the query)",
            hint="to answer a paused run's interrupts, send `resume`",
            field="messages",
        )
    where = f"messages[{len(messages) - 1}]"
    query = _text(messages[-1].content, where)
    if not query.strip() or len(query) > MAX_QUERY_CHARS:
        raise InvalidRequest(
            f"{where}.content must have 1 to {MAX_QUERY_CHARS} characters",
            field=f"{where}.content",
        )
    history: list[Message] = []
    if replay:
        history = [ours for i, m in enumerate(messages[:-1]) for ours in _ours(m, i)]
    if given.context:
        listed = "\n\n".join(f"{c.description}:\n{c.value}" for c in given.context)
        history.insert(
            0, Message(role="system", content="Context from the application:\n\n" + listed)
        )
    props = given.forwarded_props if given.forwarded_props is not None else {}
    if not isinstance(props, dict):
        raise InvalidRequest(
            "forwardedProps must be an object: the prompt templates' variables",
            field="forwardedProps",
        )
    shadowed = [k for k in RESERVED_CONTEXT_KEYS if k in props]
    if shadowed:
        raise InvalidRequest(
            f"forwardedProps.{shadowed[0]} is reserved: prompts get it from the runtime",
            hint="reserved: " + ", ".join(RESERVED_CONTEXT_KEYS),
            field=f"forwardedProps.{shadowed[0]}",
        )
    return {
        "query": query,
        "session_id": given.thread_id,
        "context": props,
        "history": [m.to_dict() for m in history],
    }


def _ours(message: Any, index: int) -> list[Message]:
    """An earlier AG-UI message as ours (none for UI-only records)."""
    where = f"messages[{index}]"
    if isinstance(message, (ActivityMessage, ReasoningMessage)):
        return []
    if isinstance(message, UserMessage):
        return [Message(role="user", content=_text(message.content, where))]
    if isinstance(message, AssistantMessage):
        calls = [
            ToolCall.parse(c.id, c.function.name, c.function.arguments)
            for c in message.tool_calls or []
        ]
        return [Message(role="assistant", content=message.content, tool_calls=calls)]
    if isinstance(message, ToolMessage):
        text = _text(message.content, where)
        if message.error:
            text = f"error: {message.error}" + (f"\n{text}" if text else "")
        return [Message(role="tool", content=text, tool_call_id=message.tool_call_id)]
    # system and developer messages: instructions from the application
    return [Message(role="system", content=str(message.content))]


def _text(content: str | Sequence[Any], where: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, TextPart):
            raise InvalidRequest(
                f"{where}.content[{index}] is a {part.type} part: only text is supported",
                field=f"{where}.content[{index}]",
            )
        texts.append(part.text)
    return "\n".join(texts)


# -- resuming a paused run ----------------------------------------------------------


def resumed_run(entries: Sequence[ResumeEntry]) -> str:
    """Our run id the ``resume`` entries answer (one run: an input continues one)."""
    runs = set()
    for index, entry in enumerate(entries):
        run_id, _, call_id = entry.interrupt_id.partition(":")
        if not re.fullmatch(RUN_ID, run_id) or not call_id:
            raise InvalidRequest(
                f"resume[{index}].interruptId {entry.interrupt_id[:80]!r} is not one of ours",
                hint="answer the interrupts of the last RUN_FINISHED by their id",
                field=f"resume[{index}].interruptId",
            )
        runs.add(run_id)
    if len(runs) != 1:
        raise InvalidRequest(
            "resume answers interrupts of several runs: " + ", ".join(sorted(runs)),
            hint="an input continues one run: answer the last run's interrupts",
            field="resume",
        )
    return runs.pop()


def resume_answer(
    run_id: str, entries: Sequence[ResumeEntry], pending: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """What ``resume_stream`` takes for the ``resume`` entries answering paused run
    ``run_id``'s ``pending`` calls.  A client call: ``resolved`` with its result as
    ``payload`` (text or JSON), ``cancelled``: an error result saying so.  An
    approval: ``resolved`` with ``{"approved": bool, "reason"?}``, ``cancelled``:
    refused.  Every pending call is answered, once."""
    calls = {interrupt_id(run_id, str(p["id"])): p for p in pending}
    results: list[tuple[str, str, bool]] = []
    each: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"resume[{index}]"
        call = calls.get(entry.interrupt_id)
        if call is None or entry.interrupt_id in seen:
            raise InvalidRequest(
                f"{where}.interruptId {entry.interrupt_id[:80]!r} is "
                + ("answered twice" if call is not None else "not pending"),
                hint="pending: " + (", ".join(calls) or "(none)"),
                field=f"{where}.interruptId",
            )
        seen.add(entry.interrupt_id)
        call_id, payload = str(call["id"]), entry.payload
        cancelled = payload if isinstance(payload, str) else CANCELLED
        if call["kind"] == "client":
            if entry.status == "cancelled":
                results.append((call_id, cancelled, True))
            elif payload is None:
                raise InvalidRequest(
                    f"{where}.payload is missing: the result of {call['name']!r}",
                    field=f"{where}.payload",
                )
            else:
                results.append((call_id, _payload_text(payload), False))
        elif entry.status == "cancelled":
            each.append((call_id, "reject", cancelled))
        else:
            approved, reason = _approval(payload, f"{where}.payload")
            each.append((call_id, "approve" if approved else "reject", reason))
    missing = [i for i in calls if i not in seen]
    if missing:
        raise InvalidRequest(
            "resume leaves interrupts unanswered: " + ", ".join(missing),
            hint="answer every interrupt of the run at once",
            field="resume",
        )
    action = "approve" if each else "result"
    return {"action": action, "results": results, "each": each, "call_ids": [], "reason": None}


def _payload_text(payload: Any) -> str:
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _approval(payload: Any, field: str) -> tuple[bool, str]:
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("approved"), bool)
        or set(payload) - {"approved", "reason"}
        or not isinstance(payload.get("reason", ""), str)
    ):
        raise InvalidRequest(
            f"{field} must be {{'approved': true | false, 'reason'?: string}}",
            hint="the interrupt's responseSchema describes it",
            field=field,
        )
    return bool(payload["approved"]), str(payload.get("reason") or "")
