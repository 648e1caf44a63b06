"""The A2A task table (the body of the shared task-store actor) and the SDK's
versioned-store contract over it: stale writes refused, a cancel that needs no
version, artifact chunks applied as events, tasks scoped by agent and caller,
bounded by age and count."""

from __future__ import annotations

import pytest
from a2a.server.cluster import ConcurrentTaskModificationError
from a2a.server.cluster.version import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.server.tasks.task_manager import append_artifact_to_task
from a2a.types.a2a_pb2 import (
    Artifact,
    ListTasksRequest,
    Part,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
)

from astromesh_ray.serve.protocols.a2a_store import (
    LocalTable,
    TableTaskStore,
    TableVersion,
    TaskTable,
)

CALLER = ServerCallContext()
S = TaskState


def task(task_id: str, state: int = S.TASK_STATE_WORKING, context: str = "c1") -> Task:
    return Task(id=task_id, context_id=context, status=TaskStatus(state=state))


def chunk(task_id: str, text: str, *, append: bool) -> TaskArtifactUpdateEvent:
    artifact = Artifact(artifact_id="answer", parts=[Part(text=text)])
    return TaskArtifactUpdateEvent(
        task_id=task_id, context_id="c1", artifact=artifact, append=append
    )


async def save(
    store: TableTaskStore, t: Task, prev: TaskVersion, event: object = None
) -> TaskVersion:
    return await store.save(t, event=event, prev=None, prev_version=prev, context=CALLER)  # type: ignore[arg-type]


async def test_a_stale_write_is_refused_and_versions_advance() -> None:
    store = TableTaskStore("support", LocalTable())
    first = await save(store, task("t1", S.TASK_STATE_SUBMITTED), TaskVersion.MISSING)
    second = await save(store, task("t1"), first)
    assert second.is_after(first)
    with pytest.raises(ConcurrentTaskModificationError):
        await save(store, task("t1", S.TASK_STATE_COMPLETED), first)  # read before `second`
    with pytest.raises(ConcurrentTaskModificationError):
        await save(store, task("t1"), TaskVersion.MISSING)  # a "first" write of a stored task
    stored = await store.get("t1", CALLER)
    assert stored is not None
    assert (stored.task.status.state, stored.version) == (S.TASK_STATE_WORKING, second)


async def test_a_cancel_needs_no_version_but_a_live_task() -> None:
    """How a replica that does not run a task cancels it: the runner's next write is
    then stale, and it stops."""
    store = TableTaskStore("support", LocalTable())
    runner = await save(store, task("t1"), TaskVersion.MISSING)
    canceled = await save(store, task("t1", S.TASK_STATE_CANCELED), TaskVersion.MISSING)
    with pytest.raises(ConcurrentTaskModificationError):
        await save(store, task("t1", S.TASK_STATE_COMPLETED), runner)
    with pytest.raises(ConcurrentTaskModificationError):  # already terminal
        await save(store, task("t1", S.TASK_STATE_CANCELED), canceled)
    with pytest.raises(ConcurrentTaskModificationError):  # absent
        await save(store, task("nope", S.TASK_STATE_CANCELED), TaskVersion.MISSING)


async def test_artifact_chunks_are_applied_by_the_table() -> None:
    """An appended chunk travels as the event alone: the task passed along with it
    (here one without the artifact) is not what the table stores."""
    store = TableTaskStore("support", LocalTable())
    version = await save(store, task("t1"), TaskVersion.MISSING)
    first = chunk("t1", "Hel", append=False)
    whole = task("t1")
    append_artifact_to_task(whole, first)  # what the SDK's task manager saves
    version = await save(store, whole, version, first)
    for text in ("lo", "!"):
        version = await save(store, task("t1"), version, chunk("t1", text, append=True))
    stored = await store.get("t1", CALLER)
    assert stored is not None and stored.version == version
    [artifact] = stored.task.artifacts
    assert [p.text for p in artifact.parts] == ["Hel", "lo", "!"]
    with pytest.raises(ConcurrentTaskModificationError):  # a chunk on a stale read
        await save(store, whole, TableVersion(1), chunk("t1", "?", append=True))


async def test_tasks_are_scoped_by_agent_and_listed_by_context() -> None:
    table = LocalTable()
    support, billing = TableTaskStore("support", table), TableTaskStore("billing", table)
    await save(support, task("t1", context="c1"), TaskVersion.MISSING)
    await save(support, task("t2", context="c2"), TaskVersion.MISSING)
    await save(billing, task("t3", context="c1"), TaskVersion.MISSING)
    assert await billing.get("t1", CALLER) is None
    page = await support.list(ListTasksRequest(), CALLER)
    assert sorted(t.id for t in page.tasks) == ["t1", "t2"]
    page = await support.list(ListTasksRequest(context_id="c1"), CALLER)
    assert [t.id for t in page.tasks] == ["t1"]
    await support.delete("t1", CALLER)
    assert await support.get("t1", CALLER) is None


async def test_the_table_is_bounded_by_age_and_count() -> None:
    now = [0.0]
    table = TaskTable(ttl_s=100, max_tasks=2, clock=lambda: now[0])
    store = TableTaskStore("support", table)
    await save(store, task("old"), TaskVersion.MISSING)
    now[0] = 50
    await save(store, task("mid"), TaskVersion.MISSING)
    await save(store, task("new"), TaskVersion.MISSING)  # over the count: "old" goes
    assert len(table) == 2 and await store.get("old", CALLER) is None
    now[0] = 151  # "mid" and "new" were written at 50: past the TTL
    assert await store.get("mid", CALLER) is None
    page = await store.list(ListTasksRequest(), CALLER)
    assert list(page.tasks) == [] and len(table) == 0
