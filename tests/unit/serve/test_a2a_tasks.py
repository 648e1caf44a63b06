"""A2A tasks as runs, through the a2a-sdk's own request handler (no Ray, no HTTP):
our executor and context builder, the shared-store contract over an in-process
table, and a scripted run stream built from the core's event types."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from a2a.helpers.proto_helpers import new_data_part
from a2a.server.context import ServerCallContext
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import (
    InvalidParamsError,
    PushNotificationNotSupportedError,
    UnsupportedOperationError,
)

from astromesh_ray.core.events import (
    PendingToolCall,
    RunFinished,
    RunResult,
    RunStarted,
    Token,
    ToolCallEvent,
    event_to_dict,
)
from astromesh_ray.core.messages import Usage
from astromesh_ray.errors import ProviderError
from astromesh_ray.serve.protocols.a2a import RunRequestHandler
from astromesh_ray.serve.protocols.a2a_card import agent_card
from astromesh_ray.serve.protocols.a2a_store import LocalTable, TableTaskStore
from astromesh_ray.serve.protocols.a2a_tasks import RunExecutor, RunTranslator, run_meta

RUN = "0123456789abcdef0123456789abcdef"
TRACE = "f" * 32
S = TaskState
CALLER = ServerCallContext(
    state={"headers": {"traceparent": "00-" + TRACE + "-" + "a" * 16 + "-01"}}
)


def started(session: str | None = None) -> dict[str, Any]:
    return event_to_dict(RunStarted(run_id=RUN, agent="calc", session_id=session, trace_id=TRACE))


def token(text: str, iteration: int = 1) -> dict[str, Any]:
    return event_to_dict(Token(text=text, channel="answer", iteration=iteration, role="default"))


def finished(answer: str, **over: Any) -> dict[str, Any]:
    result = RunResult(
        run_id=RUN,
        agent="calc",
        answer=answer,
        steps=[],
        usage=Usage(input_tokens=3, output_tokens=2, calls=1),
        trace=[],
        trace_id=TRACE,
        **over,
    )
    return event_to_dict(RunFinished(result=result))


class ScriptedRun:
    """A run stream: yields its events; ``hold`` blocks after them (a slow model),
    ``error`` is raised after them (a run that failed); with ``gate``, the events
    ``after`` follow once the gate opens."""

    def __init__(
        self,
        events: list[dict[str, Any]],
        *,
        hold: bool = False,
        error: Any = None,
        gate: asyncio.Event | None = None,
        after: list[dict[str, Any]] | None = None,
    ):
        self.events, self.hold, self.error = events, hold, error
        self.gate, self.after = gate, after or []
        self.closed = False

    async def __aenter__(self) -> ScriptedRun:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        for event in self.events:
            yield event
        if self.gate is not None:
            await self.gate.wait()
            for event in self.after:
                yield event
        if self.hold:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error


class Agent:
    """The handler for agent ``calc`` and the runs it opened."""

    def __init__(self, *runs: ScriptedRun, table: LocalTable | None = None) -> None:
        self.runs = list(runs)
        self.opened: list[tuple[dict[str, Any], str | None, str, str | None]] = []
        self.store = TableTaskStore("calc", table if table is not None else LocalTable())
        self.executor = RunExecutor("calc", self.open_run)
        card = agent_card({"name": "calc", "tools": []}, "http://test")
        self.handler = RunRequestHandler(self.executor, self.store, card)

    async def open_run(
        self, body: dict[str, Any], traceparent: str | None, *, method: str, trace_id: str | None
    ) -> ScriptedRun:
        self.opened.append((body, traceparent, method, trace_id))
        return self.runs.pop(0)

    async def send(self, message: Message, **config: Any) -> Task:
        request = SendMessageRequest(
            message=message, configuration=SendMessageConfiguration(**config)
        )
        result = await self.handler.on_message_send(request, CALLER)
        assert isinstance(result, Task)
        return result

    async def get(self, task_id: str) -> Task:
        found = await self.handler.on_get_task(GetTaskRequest(id=task_id), CALLER)
        assert found is not None
        return found


def user(*parts: Part, context_id: str = "", task_id: str = "") -> Message:
    return Message(
        message_id="m1",
        role=Role.ROLE_USER,
        parts=list(parts),
        context_id=context_id,
        task_id=task_id,
    )


def answer_of(task: Task) -> str:
    [artifact] = task.artifacts
    return "".join(p.text for p in artifact.parts)


async def test_a_message_is_a_run_and_its_answer_the_tasks_artifact() -> None:
    agent = Agent(ScriptedRun([started(), token("4"), finished("4")]))
    task = await agent.send(user(Part(text="2 + 2?"), Part(text="(briefly)")))
    assert task.status.state == S.TASK_STATE_COMPLETED
    assert answer_of(task) == "4"
    [(body, traceparent, method, trace_id)] = agent.opened
    # contextId -> session_id: a new context gets a new session id.
    assert body == {"query": "2 + 2?\n(briefly)", "session_id": task.context_id, "context": {}}
    assert len(task.context_id) == 32 and method == "stream" and trace_id is None
    assert traceparent is not None and TRACE in traceparent
    meta = run_meta(task)
    assert (meta["run_id"], meta["trace_id"], meta["agent"]) == (RUN, TRACE, "calc")
    assert meta["usage"]["total_tokens"] == 5
    assert [m.role for m in task.history][:1] == [Role.ROLE_USER]
    assert agent.runs == [] and (await agent.get(task.id)).status.state == S.TASK_STATE_COMPLETED


async def test_a_given_context_is_the_session_and_bad_ones_are_invalid_params() -> None:
    agent = Agent(ScriptedRun([started("chat-7"), finished("hi")]))
    task = await agent.send(user(Part(text="hello"), context_id="chat-7"))
    assert task.context_id == "chat-7" and agent.opened[0][0]["session_id"] == "chat-7"
    with pytest.raises(InvalidParamsError, match="contextId"):
        await agent.send(user(Part(text="hello"), context_id="no spaces allowed"))


async def test_non_text_parts_are_refused_before_any_task_exists() -> None:
    agent = Agent()
    with pytest.raises(InvalidParamsError, match="part 1 is data"):
        await agent.send(user(Part(text="look:"), new_data_part({"x": 1})))
    with pytest.raises(InvalidParamsError, match="part 0 is url"):
        await agent.send(user(Part(url="https://example.com/a.png")))
    with pytest.raises(InvalidParamsError, match="no text"):
        await agent.send(user(Part(text="  ")))
    push = TaskPushNotificationConfig(url="https://example.com/hook")
    with pytest.raises(PushNotificationNotSupportedError):
        await agent.send(user(Part(text="hi")), task_push_notification_config=push)
    page = await agent.handler.on_list_tasks(ListTasksRequest(), CALLER)
    assert list(page.tasks) == [] and agent.opened == []


async def test_streaming_goes_working_then_completed_and_the_chunks_make_the_answer() -> None:
    run = ScriptedRun(
        [
            started(),
            token("Let me "),
            token("check."),
            event_to_dict(ToolCallEvent(iteration=1, id="c1", name="add", arguments={})),
            token("It is ", iteration=2),
            token("4.", iteration=2),
            finished("It is 4."),
        ]
    )
    agent = Agent(run)
    request = SendMessageRequest(message=user(Part(text="2 + 2?")))
    events = [e async for e in agent.handler.on_message_send_stream(request, CALLER)]
    assert isinstance(events[0], Task) and events[0].status.state == S.TASK_STATE_SUBMITTED
    statuses = [e for e in events if isinstance(e, TaskStatusUpdateEvent)]
    states = [e.status.state for e in statuses]
    assert states == [S.TASK_STATE_WORKING, S.TASK_STATE_WORKING, S.TASK_STATE_COMPLETED]
    notes = [e.status.message.parts[0].text for e in statuses if e.status.message.parts]
    assert notes == ["Calling tool `add`."]
    # A client applying the chunks (append: add to the artifact; else: replace it).
    draft: list[str] = []
    for e in events:
        if isinstance(e, TaskArtifactUpdateEvent):
            draft = (
                [*draft, *(p.text for p in e.artifact.parts)]
                if e.append
                else [p.text for p in e.artifact.parts]
            )
    assert "".join(draft) == "It is 4."
    assert [e.last_chunk for e in events if isinstance(e, TaskArtifactUpdateEvent)][-1]
    task = await agent.get(events[-1].task_id)
    assert answer_of(task) == "It is 4." and run.closed


async def test_a_failed_run_is_a_failed_task_with_the_error() -> None:
    error = ProviderError("the model server answered 500", hint="retry later", provider="openai")
    agent = Agent(ScriptedRun([started(), token("par")], error=error))
    task = await agent.send(user(Part(text="hi")))
    assert task.status.state == S.TASK_STATE_FAILED
    text, data = task.status.message.parts
    assert "answered 500" in text.text and "retry later" in text.text
    assert data.data.struct_value["error"]["code"] == "provider_error"


async def working(agent: Agent, task_id: str) -> Task:
    """The task once its run has streamed (it runs in a task of its own)."""
    for _ in range(200):
        task = await agent.get(task_id)
        if task.status.state == S.TASK_STATE_WORKING and task.artifacts:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} is not working: {task}")


async def test_cancel_stops_the_running_run() -> None:
    run = ScriptedRun([started(), token("thinking")], hold=True)
    agent = Agent(run)
    task = await agent.send(user(Part(text="slow one")), return_immediately=True)
    task = await working(agent, task.id)
    assert task.id in agent.executor.running
    canceled = await agent.handler.on_cancel_task(CancelTaskRequest(id=task.id), CALLER)
    assert canceled is not None and canceled.status.state == S.TASK_STATE_CANCELED
    assert run.closed and task.id not in agent.executor.running  # the run was left
    assert (await agent.get(task.id)).status.state == S.TASK_STATE_CANCELED
    with pytest.raises(UnsupportedOperationError):  # a finished task takes no message
        await agent.send(user(Part(text="again"), task_id=task.id))


async def test_a_cancel_on_another_replica_stops_the_run_at_its_next_event() -> None:
    """Two replicas (handlers) over one shared table: B cancels a task A runs."""
    gate = asyncio.Event()
    run = ScriptedRun([started(), token("a")], gate=gate, after=[token("b")], hold=True)
    table = LocalTable()
    a, b = Agent(run, table=table), Agent(table=table)
    task = await a.send(user(Part(text="slow one")), return_immediately=True)
    await working(a, task.id)
    canceled = await b.handler.on_cancel_task(CancelTaskRequest(id=task.id), CALLER)
    assert canceled is not None and canceled.status.state == S.TASK_STATE_CANCELED
    assert not run.closed  # A has not noticed yet: its run waits on the model
    gate.set()  # the next token: A's write is stale, it reloads the task and stops
    for _ in range(200):
        if run.closed:
            break
        await asyncio.sleep(0.01)
    assert run.closed and task.id not in a.executor.running
    final = await a.get(task.id)
    assert final.status.state == S.TASK_STATE_CANCELED and answer_of(final) == "a"


async def test_a_paused_run_is_input_required_and_goes_on_with_the_answer() -> None:
    pending = PendingToolCall(
        id="c1", name="quote", arguments={"n": 2}, kind="approval", iteration=1
    )
    paused = finished("", status="requires_action", pending=[pending])
    agent = Agent(ScriptedRun([started(), paused]), ScriptedRun([started(), finished("Quoted.")]))
    task = await agent.send(user(Part(text="quote 2")))
    assert task.status.state == S.TASK_STATE_INPUT_REQUIRED
    text, data = task.status.message.parts
    assert "approve or reject `quote`" in text.text and "c1" in text.text
    assert data.data.struct_value["pending"][0]["id"] == "c1"
    with pytest.raises(InvalidParamsError, match="waits on its pending calls"):
        await agent.send(user(Part(text="yes"), task_id=task.id, context_id=task.context_id))
    with pytest.raises(InvalidParamsError, match="invalid answer"):
        bad = new_data_part({"action": "tool_results", "tool_results": []})
        await agent.send(user(bad, task_id=task.id, context_id=task.context_id))
    assert (await agent.get(task.id)).status.state == S.TASK_STATE_INPUT_REQUIRED

    approve = new_data_part({"action": "approve", "reason": "fine"})
    done = await agent.send(user(approve, task_id=task.id, context_id=task.context_id))
    assert done.status.state == S.TASK_STATE_COMPLETED and answer_of(done) == "Quoted."
    body, _, method, trace_id = agent.opened[-1]
    assert method == "resume_stream" and trace_id == TRACE
    assert (body["action"], body["reason"], body["run_id"]) == ("approve", "fine", RUN)


def test_a_new_model_calls_text_replaces_the_draft() -> None:
    translator = RunTranslator("calc", "t1", "c1", {})
    [first] = translator.on_event(token("a"))
    [second] = translator.on_event(token("b"))
    [third] = translator.on_event(token("c", iteration=2))
    assert [e.append for e in (first, second, third)] == [False, True, False]
    [chunk, done] = translator.on_event(finished("c", data={"sum": 4}))
    assert chunk.last_chunk and not chunk.append
    text, data = chunk.artifact.parts
    assert text.text == "c" and data.data.struct_value["sum"] == 4
    assert done.status.state == S.TASK_STATE_COMPLETED
