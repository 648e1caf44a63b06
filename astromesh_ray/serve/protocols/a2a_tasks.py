"""A2A tasks as runs: what a message asks (``turn_of``), the checks made before a
task exists (``TurnContextBuilder``), the run's events as task events
(``RunTranslator``) and the a2a-sdk ``AgentExecutor`` that runs them
(``RunExecutor``).

The mapping:

    contextId  -> the run's session_id (a new context gets a new id); turns of one
                  context share the agent's conversational memory
    taskId     -> one run: the task's metadata ``astromesh.run_id`` names it (the
                  SDK names the task before the run exists)
    text parts -> the query (joined by newlines); other parts: invalid params
    run_started                     -> working (metadata: run_id, trace_id, ...)
    token (answer channel)          -> chunks of the ``answer`` artifact: a new model
                                       call's text replaces the draft (append false)
    tool_call / delegate / handoff  -> working, with a status message saying so
    run_finished completed          -> the ``answer`` artifact, whole (last chunk),
                                       then completed (metadata: usage)
    run_finished requires_action    -> input-required; the status message names the
                                       pending calls (text, and the calls as data)
    AstromeshError                  -> failed; the status message carries the error
    CancelTask                      -> canceled; the run is stopped

A task in input-required goes on when the client sends, in the same task, one data
part answering its calls: ``{"action": "tool_results", "tool_results": [...]}``, or
``{"action": "approve" | "reject", ...}`` with the fields of the REST routes'
bodies (``ToolResultsBody``, ``DecisionBody``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from a2a.helpers.proto_helpers import get_data_parts, new_data_part
from a2a.server.agent_execution import AgentExecutor, RequestContext, SimpleRequestContextBuilder
from a2a.server.cluster import VersionedTaskStore
from a2a.server.context import ServerCallContext
from a2a.server.events import Event, EventQueue
from a2a.server.id_generator import IDGenerator, IDGeneratorContext
from a2a.types.a2a_pb2 import (
    Artifact,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import (
    ContentTypeNotSupportedError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    UnsupportedOperationError,
)

# No types-protobuf here: the SDK's messages are typed, protobuf's own helpers are not.
from google.protobuf import json_format  # type: ignore[import-untyped]
from pydantic import ValidationError

from astromesh_ray.core.context import SESSION_ID
from astromesh_ray.errors import AstromeshError
from astromesh_ray.serve.gateway_spans import decision_of, results_of
from astromesh_ray.serve.http import MAX_QUERY_CHARS, DecisionBody, ToolResultsBody

ANSWER = "answer"
"""The id (and name) of the artifact a task's answer is streamed into."""
META = "astromesh"
"""The task metadata key under which the run is named (run_id, trace_id, ...)."""
TEXT_MODES = frozenset({"text", "text/plain", "text/*", "*/*"})


class RunStream(Protocol):
    """One run's events (``RunEvents``): iterate inside ``async with``; leaving it
    early stops the run."""

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...
    async def __aenter__(self) -> Any: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class OpenRun(Protocol):
    """``GatewayCore.open_run`` for one agent."""

    def __call__(
        self, body: dict[str, Any], traceparent: str | None, *, method: str, trace_id: str | None
    ) -> Awaitable[RunStream]: ...


# -- what a message asks -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    """A run to start (``stream``, body: ``RunRequest`` fields) or a paused run to go
    on with (``resume_stream``, body: the answer to its pending calls)."""

    method: str
    body: dict[str, Any]
    trace_id: str | None = None


def turn_of(message: Message, task: Task | None) -> Turn:
    """What ``message`` asks of the task ``task`` (``None``: a new task); raises the
    protocol's invalid-params error for what cannot be run."""
    if task is not None and task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED:
        return _resume(message, task)
    texts = []
    for index, part in enumerate(message.parts):
        kind = part.WhichOneof("content")
        if kind != "text":
            raise InvalidParamsError(
                message=f"message part {index} is {kind or 'empty'}: the agent takes text parts",
                data={"part": index, "kind": kind},
            )
        texts.append(part.text)
    query = "\n".join(texts)
    if not query.strip():
        raise InvalidParamsError(message="the message has no text: send the query as text parts")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidParamsError(
            message=f"the message's text is {len(query)} characters: at most {MAX_QUERY_CHARS}"
        )
    return Turn("stream", {"query": query, "session_id": message.context_id, "context": {}})


def _resume(message: Message, task: Task) -> Turn:
    run = run_meta(task)
    how = (
        f"task {task.id} waits on its pending calls: answer them with one data part, "
        '{"action": "tool_results", "tool_results": [...]} or {"action": "approve"} / '
        '{"action": "reject", "reason": "..."}'
    )
    if len(message.parts) != 1 or message.parts[0].WhichOneof("content") != "data":
        raise InvalidParamsError(message=how, data={"pending": run.get("pending", [])})
    [value] = get_data_parts(message.parts)
    action = value.pop("action", None) if isinstance(value, dict) else None
    try:
        if action == "tool_results":
            answer = {
                "action": "result",
                "results": results_of(ToolResultsBody.model_validate(value).tool_results),
            }
        elif action in ("approve", "reject"):
            answer = decision_of(str(action), DecisionBody.model_validate(value))
        else:
            raise InvalidParamsError(message=how, data={"pending": run.get("pending", [])})
    except ValidationError as exc:
        fields = [
            {"field": ".".join(map(str, e["loc"])) or "(part)", "message": e["msg"]}
            for e in exc.errors()
        ]
        text = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        raise InvalidParamsError(
            message=f"invalid answer: {text}", data={"fields": fields}
        ) from None
    answer["run_id"] = str(run.get("run_id") or "")
    return Turn("resume_stream", answer, str(run.get("trace_id") or "") or None)


def run_meta(task: Task) -> dict[str, Any]:
    """What the task's metadata says of its run (``{}`` before it started)."""
    meta = json_format.MessageToDict(task.metadata).get(META)
    return dict(meta) if isinstance(meta, dict) else {}


class SessionIds(IDGenerator):
    """New context ids: session ids (32 hex digits)."""

    def generate(self, context: IDGeneratorContext) -> str:
        return uuid.uuid4().hex


class TurnContextBuilder(SimpleRequestContextBuilder):
    """Refuses what cannot run before a task exists (a JSON-RPC error, no failed
    task left behind): a context id that is not a session id, non-text parts, push
    notifications, output modes without text, a message to a task that does not
    wait for input."""

    def __init__(self, store: VersionedTaskStore) -> None:
        super().__init__(context_id_generator=SessionIds())
        self._store = store

    async def build(
        self,
        context: ServerCallContext,
        params: SendMessageRequest | None = None,
        task_id: str | None = None,
        context_id: str | None = None,
        task: Task | None = None,
    ) -> RequestContext:
        if params is not None:
            await self._check(params, context)
        return await super().build(context, params, task_id, context_id, task)

    async def _check(self, params: SendMessageRequest, context: ServerCallContext) -> None:
        message, config = params.message, params.configuration
        if message.context_id and not SESSION_ID.fullmatch(message.context_id):
            raise InvalidParamsError(
                message=f"invalid contextId {message.context_id[:40]!r}: 1 to 128 characters, "
                "letters, digits and . _ : @ -, starting with a letter or digit"
            )
        if config.HasField("task_push_notification_config"):
            raise PushNotificationNotSupportedError(
                message="this agent sends no push notifications: stream, or poll GetTask"
            )
        accepted = set(config.accepted_output_modes)
        if accepted and not accepted & TEXT_MODES:
            raise ContentTypeNotSupportedError(
                message="the agent answers text/plain, which acceptedOutputModes leaves out"
            )
        current = None
        if message.task_id:
            stored = await self._store.get(message.task_id, context)
            current = stored.task if stored is not None else None
            state = current.status.state if current is not None else None
            if state is not None and state != TaskState.TASK_STATE_INPUT_REQUIRED:
                raise UnsupportedOperationError(
                    message=f"task {message.task_id} is {TaskState.Name(state)}: only a task "
                    "in input-required takes another message; send a new message with the "
                    "same contextId (no taskId) to go on with the conversation"
                )
        turn_of(message, current)


# -- a run's events as task events --------------------------------------------------------


def _stamped(state: TaskState) -> TaskStatus:
    status = TaskStatus(state=state)
    status.timestamp.FromDatetime(datetime.now(UTC))
    return status


def _data(value: Any) -> Part:
    return new_data_part(value, media_type="application/json")


class RunTranslator:
    """Turns one run's events (``event_to_dict`` dicts) into task events."""

    def __init__(self, agent: str, task_id: str, context_id: str, meta: Mapping[str, Any]) -> None:
        self.task_id = task_id
        self.context_id = context_id
        self.meta: dict[str, Any] = {**meta, "agent": agent}
        self._draft: tuple[Any, ...] | None = None  # the model call the draft is from

    def message(self, *parts: Part) -> Message:
        return Message(
            message_id=uuid.uuid4().hex,
            role=Role.ROLE_AGENT,
            task_id=self.task_id,
            context_id=self.context_id,
            parts=list(parts),
        )

    def status(self, state: TaskState, *parts: Part) -> TaskStatusUpdateEvent:
        status = _stamped(state)
        if parts:
            status.message.CopyFrom(self.message(*parts))
        return TaskStatusUpdateEvent(
            task_id=self.task_id,
            context_id=self.context_id,
            status=status,
            metadata={META: self.meta},
        )

    def on_event(self, event: Mapping[str, Any]) -> list[Event]:
        kind = event["type"]
        if kind == "run_started":
            for key in ("run_id", "trace_id", "session_id"):
                self.meta[key] = event.get(key)
            self.meta.pop("pending", None)
            return [self.status(TaskState.TASK_STATE_WORKING)]
        if kind == "token" and event["channel"] == "answer":
            return [self._chunk(event)]
        note = _notes.get(kind)
        if note is not None:
            return [self.status(TaskState.TASK_STATE_WORKING, Part(text=note(event)))]
        if kind == "run_finished":
            return self.finished(event["result"])
        return []

    def _chunk(self, token: Mapping[str, Any]) -> TaskArtifactUpdateEvent:
        key = (token.get("task"), token.get("iteration"), token.get("role"))
        append, self._draft = key == self._draft, key
        return TaskArtifactUpdateEvent(
            task_id=self.task_id,
            context_id=self.context_id,
            artifact=Artifact(artifact_id=ANSWER, name=ANSWER, parts=[Part(text=token["text"])]),
            append=append,
            last_chunk=False,
        )

    def finished(self, result: Mapping[str, Any]) -> list[Event]:
        self.meta["usage"] = result.get("usage")
        if result.get("status") == "requires_action":
            pending = list(result.get("pending") or [])
            self.meta["pending"] = pending
            return [
                self.status(
                    TaskState.TASK_STATE_INPUT_REQUIRED,
                    Part(text=pending_text(pending)),
                    _data({"run_id": result.get("run_id"), "pending": pending}),
                )
            ]
        parts = [Part(text=str(result.get("answer") or ""))]
        if result.get("data") is not None:  # the structured answer (output_schema)
            parts.append(_data(result["data"]))
        answer = Artifact(artifact_id=ANSWER, name=ANSWER, parts=parts)
        return [
            TaskArtifactUpdateEvent(
                task_id=self.task_id,
                context_id=self.context_id,
                artifact=answer,
                append=False,
                last_chunk=True,
            ),
            self.status(TaskState.TASK_STATE_COMPLETED),
        ]

    def failed(self, exc: AstromeshError) -> list[Event]:
        error = {k: v for k, v in exc.to_dict().items() if k != "trace"}
        text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        return [self.status(TaskState.TASK_STATE_FAILED, Part(text=text), _data({"error": error}))]

    def canceled(self) -> TaskStatusUpdateEvent:
        return self.status(TaskState.TASK_STATE_CANCELED, Part(text="Canceled by the client."))


_notes = {
    "tool_call": lambda e: f"Calling tool `{e['name']}`.",
    "delegate": lambda e: f"Asking agent `{e['peer']}`.",
    "handoff": lambda e: f"Handing the conversation to agent `{e['to_agent']}`.",
}


def pending_text(pending: list[dict[str, Any]]) -> str:
    """What a paused run waits on, for the input-required status message."""
    lines = []
    for call in pending:
        args = json.dumps(call.get("arguments") or {}, sort_keys=True)
        verb = (
            "approve or reject" if call.get("kind") == "approval" else "run and send the result of"
        )
        lines.append(f"- {verb} `{call.get('name')}` {args} (call {call.get('id')})")
    return (
        f"Waiting on {len(pending)} call(s):\n"
        + "\n".join(lines)
        + '\nAnswer in this task with one data part: {"action": "tool_results", '
        '"tool_results": [{"tool_call_id": ..., "content": ...}]}, or {"action": "approve"} / '
        '{"action": "reject", "reason": ...}.'
    )


# -- the executor ---------------------------------------------------------------------------


class RunExecutor(AgentExecutor):
    """Runs agent ``agent``'s tasks in this replica (the SDK calls ``execute`` in a
    task of its own: the run outlives the request that started it) and stops them
    on ``cancel`` (the SDK then cancels ``execute``, which leaves the run's
    ``async with``: the run ends in the agent replica, and its model call with it)."""

    def __init__(self, agent: str, open_run: OpenRun) -> None:
        self.agent = agent
        self._open_run = open_run
        self.running: set[str] = set()  # tasks whose run streams in this replica
        self._canceled: set[str] = set()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = str(context.task_id), str(context.context_id)
        message, task = context.message, context.current_task
        assert message is not None  # the SDK executes messages only
        turn = turn_of(message, task)  # checked already (TurnContextBuilder)
        if task is None:
            await event_queue.enqueue_event(
                Task(
                    id=task_id,
                    context_id=context_id,
                    status=_stamped(TaskState.TASK_STATE_SUBMITTED),
                    history=[message],
                )
            )
        meta = run_meta(task) if task is not None else {}
        translator = RunTranslator(self.agent, task_id, context_id, meta)
        headers = context.call_context.state.get("headers") or {}
        self.running.add(task_id)
        try:
            events = await self._open_run(
                turn.body, headers.get("traceparent"), method=turn.method, trace_id=turn.trace_id
            )
            async with events:
                async for event in events:
                    await self._send(event_queue, task_id, translator.on_event(event))
        except AstromeshError as exc:
            await self._send(event_queue, task_id, translator.failed(exc))
        finally:
            self.running.discard(task_id)
            self._canceled.discard(task_id)

    async def _send(self, queue: EventQueue, task_id: str, events: list[Event]) -> None:
        for event in events:
            if task_id in self._canceled:  # canceled: nothing after CANCELED
                return
            await queue.enqueue_event(event)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = str(context.task_id)
        if task_id in self.running:  # (a task waiting for input runs nothing)
            self._canceled.add(task_id)
        task = context.current_task
        meta = run_meta(task) if task is not None else {}
        translator = RunTranslator(self.agent, task_id, str(context.context_id), meta)
        await event_queue.enqueue_event(translator.canceled())
