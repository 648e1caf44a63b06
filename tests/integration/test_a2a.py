"""A2A on real Serve over HTTP, with the official ``a2a-sdk`` client, against a
loopback OpenAI-compatible server: agent cards, SendMessage (blocking and
streaming), GetTask, ListTasks, CancelTask of a running task (the run really
stops), contextId as the session, input-required for an approval and the answer
that resumes it, the v0.3 method names, and JSON-RPC errors for bad requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.client.card_resolver import A2ACardResolver
from a2a.client.client import Client
from a2a.helpers.proto_helpers import new_data_part
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from ray import serve

from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import deployed

pytestmark = pytest.mark.integration

S = TaskState
HELPER = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: helper, version: "1.2.0"}}
spec:
  identity: {{display_name: Parts Helper, description: Quotes spare parts.}}
  model:
    primary: {{provider: openai_compat, model: m, endpoint: "{endpoint}"}}
  prompts: {{system: "You help."}}
  orchestration: {{max_iterations: 4, timeout_seconds: 30}}
  tools:
    - name: quote
      type: internal
      description: Quote a part
      function: "tests.integration.tool_functions:quote"
      requires_approval: true
"""
PLAIN = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: plain}}
spec:
  model:
    primary: {{provider: openai_compat, model: m, endpoint: "{endpoint}"}}
  prompts: {{system: "You chat."}}
  orchestration: {{timeout_seconds: 30}}
  memory:
    conversational: {{backend: in_memory}}
"""


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("a2a")
    (root / "agents").mkdir()
    (root / "agents" / "helper.agent.yaml").write_text(HELPER.format(endpoint=llm.url))
    (root / "agents" / "plain.agent.yaml").write_text(PLAIN.format(endpoint=llm.url))
    with deployed(root) as apps:
        yield serve_url
        for name in apps:
            serve.delete(name, _blocking=False)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


async def a2a(http: httpx.AsyncClient, url: str, **config: Any) -> Client:
    """The SDK's client for the agent at base URL ``url`` (its card fetched first)."""
    return await create_client(url, client_config=ClientConfig(httpx_client=http, **config))


def user(*parts: Part, context_id: str = "", task_id: str = "") -> Message:
    return Message(
        message_id=f"m-{time.monotonic_ns()}",
        role=Role.ROLE_USER,
        parts=list(parts),
        context_id=context_id,
        task_id=task_id,
    )


async def send(client: Client, message: Message, **config: Any) -> list[StreamResponse]:
    request = SendMessageRequest(message=message)
    for key, value in config.items():
        setattr(request.configuration, key, value)
    return [r async for r in client.send_message(request)]


def answer_of(task: Task) -> str:
    [artifact] = task.artifacts
    return "".join(p.text for p in artifact.parts)


async def test_cards_name_the_skills_streaming_and_an_absolute_url(
    api: str, http: httpx.AsyncClient
) -> None:
    card = await A2ACardResolver(http, f"{api}/a2a/helper").get_agent_card()
    assert (card.name, card.description, card.version) == (
        "Parts Helper",
        "Quotes spare parts.",
        "1.2.0",
    )
    assert [s.id for s in card.skills] == ["quote"] and card.capabilities.streaming
    assert {(i.url, i.protocol_version) for i in card.supported_interfaces} == {
        (f"{api}/a2a/helper", "1.0"),
        (f"{api}/a2a/helper", "0.3"),
    }
    plain = await A2ACardResolver(http, f"{api}/a2a/plain").get_agent_card()
    assert [s.id for s in plain.skills] == ["plain"]
    # The root card: with two agents there is no one card; the error names both.
    root = await http.get(f"{api}/.well-known/agent-card.json")
    assert root.status_code == 404
    assert root.json()["error"]["cards"] == [
        "/a2a/helper/.well-known/agent-card.json",
        "/a2a/plain/.well-known/agent-card.json",
    ]
    missing = await http.get(f"{api}/a2a/nobody/.well-known/agent-card.json")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "agent_not_found"


async def test_a_message_completes_with_the_answer_and_is_listed_by_context(
    api: str, http: httpx.AsyncClient, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("Hello from plain.", "Second answer.")
    client = await a2a(http, f"{api}/a2a/plain", streaming=False)
    [reply] = await send(client, user(Part(text="hi")))
    task = reply.task
    assert task.status.state == S.TASK_STATE_COMPLETED
    assert answer_of(task) == "Hello from plain."
    run_id = task.metadata["astromesh"]["run_id"]
    assert len(run_id) == 32 and len(task.context_id) == 32
    [again] = await send(client, user(Part(text="more"), context_id=task.context_id))
    assert again.task.context_id == task.context_id and again.task.id != task.id

    fetched = await client.get_task(GetTaskRequest(id=task.id))
    assert fetched.status.state == S.TASK_STATE_COMPLETED and answer_of(fetched) == answer_of(task)
    page = await client.list_tasks(
        ListTasksRequest(context_id=task.context_id, include_artifacts=True)
    )
    assert {t.id for t in page.tasks} == {task.id, again.task.id}
    assert {answer_of(t) for t in page.tasks} == {"Hello from plain.", "Second answer."}
    llm.assert_consumed()


async def test_a_streamed_task_goes_working_then_completed(
    api: str, http: httpx.AsyncClient, llm: ScriptedOpenAIServer
) -> None:
    answer = "The quick brown fox jumps over the lazy dog."
    llm.add_steps(answer)  # streamed by the server one word per chunk
    client = await a2a(http, f"{api}/a2a/plain")
    replies = await send(client, user(Part(text="tell me")))
    states = [r.status_update.status.state for r in replies if r.HasField("status_update")]
    assert states[0] == S.TASK_STATE_WORKING and states[-1] == S.TASK_STATE_COMPLETED
    chunks = [r.artifact_update for r in replies if r.HasField("artifact_update")]
    assert len(chunks) > 3  # tokens arrived as they were made
    draft: list[str] = []
    for chunk in chunks:  # append: add to the artifact; else: replace it
        texts = [p.text for p in chunk.artifact.parts]
        draft = [*draft, *texts] if chunk.append else texts
    assert "".join(draft) == answer and chunks[-1].last_chunk
    task_id = chunks[-1].task_id
    fetched = await client.get_task(GetTaskRequest(id=task_id))
    assert answer_of(fetched) == answer
    llm.assert_consumed()


async def test_contexts_are_sessions_of_the_agents_memory(
    api: str, http: httpx.AsyncClient, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("Noted, Ada.", "You are Ada.")
    client = await a2a(http, f"{api}/a2a/plain", streaming=False)
    context = f"a2a-ctx-{time.monotonic_ns()}"
    await send(client, user(Part(text="My name is Ada."), context_id=context))
    [reply] = await send(client, user(Part(text="Who am I?"), context_id=context))
    assert answer_of(reply.task) == "You are Ada."
    contents = [m.get("content") for m in llm.requests[-1]["messages"]]
    assert "My name is Ada." in contents and "Noted, Ada." in contents
    history = await http.get(f"{api}/v1/memory/plain/sessions/{context}/history")
    assert history.status_code == 200 and len(history.json()["turns"]) == 2


async def test_cancel_stops_a_running_task(
    api: str, http: httpx.AsyncClient, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps({"content": "Too late.", "delay_s": 4})
    client = await a2a(http, f"{api}/a2a/plain", streaming=False, polling=True)
    context = f"a2a-cancel-{time.monotonic_ns()}"
    [reply] = await send(client, user(Part(text="slow please"), context_id=context))
    task_id = reply.task.id
    deadline = time.monotonic() + 30
    while True:  # until the run works and its model call is under way (its step taken)
        task = await client.get_task(GetTaskRequest(id=task_id))
        if task.status.state == S.TASK_STATE_WORKING and llm.remaining == 0:
            break
        assert time.monotonic() < deadline, (task, llm.remaining)
        await asyncio.sleep(0.1)

    canceled = await client.cancel_task(CancelTaskRequest(id=task_id))
    assert canceled.status.state == S.TASK_STATE_CANCELED
    await asyncio.sleep(6)  # past the model's delay: a run still going would finish now
    task = await client.get_task(GetTaskRequest(id=task_id))
    assert task.status.state == S.TASK_STATE_CANCELED and not task.artifacts
    history = await http.get(f"{api}/v1/memory/plain/sessions/{context}/history")
    # The run never finished: the session has no turn stored.
    assert history.status_code == 404 and history.json()["error"]["code"] == "memory_not_found"


async def test_an_approval_is_input_required_and_the_answer_resumes_the_task(
    api: str, http: httpx.AsyncClient, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "quote", "arguments": {"part": "P1", "quantity": 2}}]},
        "P1 costs 84.00 for two.",
    )
    client = await a2a(http, f"{api}/a2a/helper", streaming=False)
    [reply] = await send(client, user(Part(text="quote two P1")))
    task = reply.task
    assert task.status.state == S.TASK_STATE_INPUT_REQUIRED
    text, data = task.status.message.parts
    assert "approve or reject `quote`" in text.text
    [pending] = data.data.struct_value["pending"]
    assert pending["name"] == "quote" and pending["kind"] == "approval"

    approve = new_data_part({"action": "approve"})
    [done] = await send(client, user(approve, task_id=task.id, context_id=task.context_id))
    assert done.task.status.state == S.TASK_STATE_COMPLETED
    assert answer_of(done.task) == "P1 costs 84.00 for two."
    assert llm.requests[-1]["messages"][-1]["content"] == "P1 x2: 84.00"
    assert done.task.metadata["astromesh"]["run_id"] == task.metadata["astromesh"]["run_id"]
    llm.assert_consumed()


def rpc(method: str, params: dict[str, Any], version: str | None = "1.0") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}


async def post(
    http: httpx.AsyncClient, url: str, body: Any, version: str | None = "1.0"
) -> dict[str, Any]:
    headers = {"A2A-Version": version} if version else {}
    reply = await http.post(url, json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data


async def test_v03_method_names_are_answered(
    api: str, http: httpx.AsyncClient, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("Old clients welcome.")
    url = f"{api}/a2a/plain"
    message = {"role": "user", "messageId": "m-03", "parts": [{"kind": "text", "text": "hi"}]}
    sent = await post(http, url, rpc("message/send", {"message": message}), version=None)
    task = sent["result"]
    assert task["kind"] == "task" and task["status"]["state"] == "completed"
    assert task["artifacts"][0]["parts"][0]["text"] == "Old clients welcome."
    got = await post(http, url, rpc("tasks/get", {"id": task["id"]}), version=None)
    assert got["result"]["id"] == task["id"]
    missing = await post(http, url, rpc("tasks/get", {"id": "nope"}), version=None)
    assert missing["error"]["code"] == -32001  # TaskNotFoundError
    done = await post(http, url, rpc("tasks/cancel", {"id": task["id"]}), version=None)
    assert done["error"]["code"] == -32002  # TaskNotCancelableError: it is completed

    llm.add_steps("Streamed the old way.")
    streamed = {**message, "messageId": "m-03s"}
    results = []
    async with http.stream("POST", url, json=rpc("message/stream", {"message": streamed})) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                results.append(json.loads(line.removeprefix("data:"))["result"])
    kinds = [e["kind"] for e in results]
    assert kinds[0] == "task" and kinds[-1] == "status-update"
    assert results[-1]["status"]["state"] == "completed" and results[-1]["final"] is True
    chunks = [e for e in results if e["kind"] == "artifact-update"]
    assert chunks[-1]["artifact"]["parts"][0]["text"] == "Streamed the old way."
    llm.assert_consumed()


async def test_bad_requests_get_json_rpc_errors(api: str, http: httpx.AsyncClient) -> None:
    url = f"{api}/a2a/plain"
    text = {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "hi"}]}
    image = {"role": "ROLE_USER", "messageId": "m2", "parts": [{"url": "https://x.test/a.png"}]}

    reply = await http.post(url, content=b"{not json", headers={"A2A-Version": "1.0"})
    assert reply.json()["error"]["code"] == -32700
    unknown = await post(http, url, rpc("Nope", {}))
    assert unknown["error"]["code"] == -32601
    refused = await post(http, url, rpc("SendMessage", {"message": image}))
    assert refused["error"]["code"] == -32602 and "part 0 is url" in refused["error"]["message"]
    bad_context = await post(
        http, url, rpc("SendMessage", {"message": {**text, "contextId": "a b"}})
    )
    assert bad_context["error"]["code"] == -32602 and "contextId" in bad_context["error"]["message"]
    missing = await post(http, url, rpc("GetTask", {"id": "no-such-task"}))
    assert missing["error"]["code"] == -32001
    unversioned = await post(http, url, rpc("SendMessage", {"message": text}), version=None)
    assert unversioned["error"]["code"] == -32009  # VersionNotSupportedError
    done = await post(http, url, rpc("ListTasks", {"pageSize": 1000}))
    assert done["error"]["code"] == -32602
    nobody = await http.post(f"{api}/a2a/nobody", json=rpc("GetTask", {"id": "x"}))
    assert nobody.status_code == 404
