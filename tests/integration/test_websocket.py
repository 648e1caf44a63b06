"""``WS /v1/ws/agent/{name}`` on real Serve, with the ``websockets`` client, against a
loopback OpenAI-compatible server that streams word by word.

- A turn streams real incremental tokens (one per word the model server sent), tool
  calls and results, then ``done``; several turns share a connection and a session.
- Cancelling a turn, or leaving mid-stream, stops the run end to end: the model
  server sees its streaming response's client go away (the agent replica cancelled
  its model call, which closed its HTTP stream).
- Bad messages get precise error frames and the connection keeps working; an unknown
  agent or a bad query string gets an error frame and close code 4000 + status.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from astromesh_ray.testing import ScriptedOpenAIServer
from astromesh_ray.testing.openai_chat import StreamRecord

from .conftest import agent_yaml, deployed

pytestmark = pytest.mark.integration

WAIT_S = 30.0  # a bounded wait for a frame
CLOSED_WAIT_S = 10.0  # a bounded wait for the model server to see its stream closed
LONG = " ".join(f"w{i}" for i in range(60))  # 60 chunks, 0.25 s apart: 15 s if not stopped
TOKEN_DELAY_S = 0.25


HELPER = """\
  prompts: {system: "You help."}
  tools:
    - {name: calculator, type: builtin}
    - name: search_parts
      type: client
      description: Search parts inventory
      parameters:
        part_type: {type: string}
  memory:
    conversational: {backend: in_memory}
"""


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("websocket")
    (root / "agents").mkdir()
    (root / "agents" / "helper.agent.yaml").write_text(agent_yaml("helper", llm.url, HELPER))
    with deployed(root) as apps:
        yield serve_url.replace("http://", "ws://")
        for name in apps:
            serve.delete(name, _blocking=False)


@asynccontextmanager
async def _ws(api: str, path: str = "/v1/ws/agent/helper") -> AsyncIterator[ClientConnection]:
    async with connect(f"{api}{path}", max_size=None, open_timeout=WAIT_S) as ws:
        yield ws


async def _frame(ws: ClientConnection) -> dict[str, Any]:
    """The next frame that is not a heartbeat."""
    while True:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        if frame["type"] != "heartbeat":
            return frame


def _ends(frame: dict[str, Any], kinds: tuple[str, ...]) -> bool:
    # A refused message's error frame (scope "message") ends nothing.
    return frame["type"] in kinds and frame.get("scope") != "message"


async def _until(ws: ClientConnection, *kinds: str) -> list[dict[str, Any]]:
    """Frames up to and with the first whose type is one of ``kinds`` (an ``error``
    only when it ends the turn)."""
    frames = [await _frame(ws)]
    while not _ends(frames[-1], kinds):
        frames.append(await _frame(ws))
    return frames


async def _send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def _ended(llm: ScriptedOpenAIServer, count: int) -> StreamRecord:
    """Stream number ``count`` of the model server, once it ended (bounded wait)."""
    deadline = time.monotonic() + CLOSED_WAIT_S
    while time.monotonic() < deadline:
        if len(llm.streams) >= count and llm.streams[count - 1].ended_at is not None:
            return llm.streams[count - 1]
        await asyncio.sleep(0.01)
    raise AssertionError(f"the model server's stream #{count} did not end: {llm.streams}")


async def _first_token(ws: ClientConnection) -> list[dict[str, Any]]:
    frames = await _until(ws, "token", "done", "error")
    assert frames[-1]["type"] == "token", frames
    return frames


async def test_a_turn_streams_tool_calls_and_tokens_then_done(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "(2+3)*4"}}]},
        "The answer is twenty exactly.",
    )
    async with _ws(api) as ws:
        await _send(ws, {"query": "What is (2+3)*4?", "session_id": "ws-1"})
        frames = await _until(ws, "done", "error")
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "run_started" and kinds[-1] == "done", kinds
    call = next(f for f in frames if f["type"] == "tool_call")
    result = next(f for f in frames if f["type"] == "tool_result")
    assert call["name"] == "calculator" and call["arguments"] == {"expression": "(2+3)*4"}
    assert result["id"] == call["id"] and result["content"] == "20" and not result["is_error"]
    assert "step" in kinds and "model_call" in kinds
    answer_tokens = [f["text"] for f in frames if f["type"] == "token" and f["channel"] == "answer"]
    # One token per word the model server streamed: real increments, not one blob.
    assert len(answer_tokens) >= 2 and answer_tokens[-1] != "The answer is twenty exactly."
    done = frames[-1]
    assert "".join(answer_tokens) == done["answer"] == "The answer is twenty exactly."
    assert done["run_id"] == frames[0]["run_id"] and done["session_id"] == "ws-1"
    assert done["status"] == "completed" and len(done["trace_id"]) == 32
    assert done["usage"]["calls"] == 2 and done["usage"]["output_tokens"] > 0
    assert llm.requests[-1]["stream"] is True
    assert "run_finished" not in kinds  # done is the WebSocket's run_finished
    llm.assert_consumed()


async def test_a_paused_turn_is_done_with_its_pending_calls(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "search_parts", "arguments": {"part_type": "brake"}}]},
        "Two options in stock.",
    )
    async with _ws(api) as ws:
        await _send(ws, {"query": "Brake pads?"})
        done = (await _until(ws, "done", "error"))[-1]
    assert done["type"] == "done" and done["status"] == "requires_action", done
    [pending] = done["pending"]
    assert (pending["name"], pending["kind"]) == ("search_parts", "client")
    assert pending["arguments"] == {"part_type": "brake"}
    # The run goes on over HTTP, as any paused run.
    http = api.replace("ws://", "http://")
    reply = httpx.post(
        f"{http}/v1/agents/helper/runs/{done['run_id']}/tool_results",
        json={"tool_results": [{"tool_call_id": pending["id"], "content": {"parts": ["P1"]}}]},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["answer"] == "Two options in stock."
    llm.assert_consumed()


async def test_two_turns_on_one_connection_share_the_session(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("Hello Ada.", "Your name is Ada.")
    async with _ws(api) as ws:
        await _send(ws, {"query": "I am Ada.", "session_id": "ws-two"})
        first = (await _until(ws, "done", "error"))[-1]
        await _send(ws, {"query": "Who am I?", "session_id": "ws-two"})
        second = (await _until(ws, "done", "error"))[-1]
    assert (first["type"], second["type"]) == ("done", "done")
    assert first["run_id"] != second["run_id"]
    assert second["answer"] == "Your name is Ada." and second["session_id"] == "ws-two"
    sent = [(m["role"], m.get("content")) for m in llm.requests[-1]["messages"]]
    assert ("user", "I am Ada.") in sent and ("assistant", "Hello Ada.") in sent
    assert sent[-1] == ("user", "Who am I?")
    llm.assert_consumed()


async def test_a_query_while_a_turn_runs_is_refused_and_the_turn_goes_on(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps({"content": "one two three four five six", "token_delay_s": 0.1})
    async with _ws(api) as ws:
        await _send(ws, {"query": "Count."})
        started = (await _first_token(ws))[0]
        await _send(ws, {"query": "Another?"})
        frames = await _until(ws, "done", "error")
    refusal = next(f for f in frames if f["type"] == "error")
    assert refusal["scope"] == "message" and refusal["error"]["reason"] == "turn_running"
    assert refusal["error"]["run_id"] == started["run_id"]
    done = frames[-1]
    assert done["type"] == "done" and done["run_id"] == started["run_id"]
    assert done["answer"] == "one two three four five six"
    llm.assert_consumed()


async def test_cancel_closes_the_model_servers_stream(
    api: str, llm: ScriptedOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    llm.add_steps({"content": LONG, "token_delay_s": TOKEN_DELAY_S}, "Still here.")
    async with _ws(api) as ws:
        await _send(ws, {"query": "Talk a lot.", "session_id": "ws-cancel"})
        started = (await _first_token(ws))[0]
        streams = len(llm.streams)
        sent_at = time.monotonic()
        await _send(ws, {"type": "cancel"})
        frames = await _until(ws, "cancelled", "done", "error")
        assert frames[-1] == {
            "type": "cancelled",
            "run_id": started["run_id"],
            "session_id": "ws-cancel",
        }
        record = await _ended(llm, streams)
        assert record.client_gone, record
        assert record.chunks_sent < len(LONG.split())
        with capsys.disabled():
            print(f"\n[websocket] cancel -> model stream closed: {record.ended_at - sent_at:.3f} s")
        # The connection goes on: the next turn runs.
        await _send(ws, {"query": "Still there?", "session_id": "ws-cancel"})
        done = (await _until(ws, "done", "error"))[-1]
    assert done["type"] == "done" and done["answer"] == "Still here."
    llm.assert_consumed()


async def test_leaving_mid_stream_closes_the_model_servers_stream(
    api: str, llm: ScriptedOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    llm.add_steps({"content": LONG, "token_delay_s": TOKEN_DELAY_S})
    async with _ws(api) as ws:
        await _send(ws, {"query": "Talk a lot."})
        await _first_token(ws)
        streams = len(llm.streams)
    left_at = time.monotonic()  # the client closed its connection
    record = await _ended(llm, streams)
    assert record.client_gone and record.chunks_sent < len(LONG.split()), record
    with capsys.disabled():
        print(f"\n[websocket] disconnect -> model stream closed: {record.ended_at - left_at:.3f} s")
    llm.assert_consumed()


async def test_bad_messages_get_error_frames_and_the_connection_keeps_working(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("Fine.")
    async with _ws(api) as ws:
        await ws.send("not json")
        await ws.send(b"\x00\x01\x02")
        await ws.send(json.dumps({"query": "x", "context": {"pad": "a" * (1024 * 1024)}}))
        await _send(ws, {"query": "hi", "sesion_id": "typo"})
        await _send(ws, {"query": ""})
        await _send(ws, {"type": "pause"})
        await _send(ws, {"type": "cancel"})
        refusals = [await _frame(ws) for _ in range(7)]
        await _send(ws, {"query": "Still fine?"})
        done = (await _until(ws, "done", "error"))[-1]
    assert {f["type"] for f in refusals} == {"error"} and {f["scope"] for f in refusals} == {
        "message"
    }
    errors = [f["error"] for f in refusals]
    assert [e.get("reason") for e in errors] == [
        "not_json",
        "binary_frame",
        None,
        "invalid_fields",
        "invalid_fields",
        "unknown_type",
        "no_turn",
    ]
    assert errors[2]["code"] == "request_too_large" and "1048576 bytes" in errors[2]["message"]
    assert errors[3]["fields"] == [
        {"field": "sesion_id", "message": "Extra inputs are not permitted"}
    ]
    assert errors[4]["fields"][0]["field"] == "query"
    assert all(e["message"] and e["hint"] for e in errors)
    assert done["type"] == "done" and done["answer"] == "Fine."
    llm.assert_consumed()


async def test_an_unknown_agent_gets_an_error_frame_and_close_code_4404(api: str) -> None:
    async with _ws(api, "/v1/ws/agent/nobody") as ws:
        frame = await _frame(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT_S)
    assert frame["type"] == "error" and frame["scope"] == "connection"
    assert frame["error"]["code"] == "agent_not_found"
    assert "helper" in frame["error"]["hint"]
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4404 and closed.value.rcvd.reason == "no agent named 'nobody'"


async def test_heartbeats_and_a_bad_heartbeat_parameter(api: str) -> None:
    async with _ws(api, "/v1/ws/agent/helper?heartbeat_s=1") as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    assert frame == {"type": "heartbeat"}
    async with _ws(api, "/v1/ws/agent/helper?heartbeat_s=0") as ws:
        frame = await _frame(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT_S)
    assert frame["scope"] == "connection" and frame["error"]["field"] == "heartbeat_s"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4422
