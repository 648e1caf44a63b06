"""The WebSocket protocol without sockets: message parsing and validation, frames,
and one connection's turns over a fake transport and fake runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import pytest

from astromesh_ray.errors import AgentUnavailable, AstromeshError, InvalidRequest, ProviderError
from astromesh_ray.serve.http import MAX_QUERY_CHARS, RunBody
from astromesh_ray.serve.protocols.ws_connection import ClientGone, WsConnection
from astromesh_ray.serve.protocols.ws_session import (
    HEARTBEAT_S,
    MAX_MESSAGE_BYTES,
    CancelMessage,
    Refused,
    RunMessage,
    close_code,
    close_reason,
    done_frame,
    encode,
    error_frame,
    event_frame,
    heartbeat_interval,
    parse_message,
)

WAIT_S = 5.0  # a bounded wait for something that should happen at once


# -- parsing ---------------------------------------------------------------------------


def _refusal(data: str | bytes) -> dict[str, Any]:
    parsed = parse_message(data)
    assert isinstance(parsed, Refused), parsed
    return parsed.error


def test_a_run_message_is_the_run_body_without_stream() -> None:
    parsed = parse_message(json.dumps({"query": "hi", "session_id": "s-1", "context": {"a": 1}}))
    assert isinstance(parsed, RunMessage)
    assert parsed.request() == {"query": "hi", "session_id": "s-1", "context": {"a": 1}}
    typed = parse_message('{"type": "run", "query": "hi"}')
    assert isinstance(typed, RunMessage)
    assert typed.request() == {"query": "hi", "session_id": None, "context": {}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": "x" * (MAX_QUERY_CHARS + 1)}, "query"),
        ({"query": "hi", "session_id": "bad id"}, "session_id"),
        ({"query": "hi", "session_id": "x" * 129}, "session_id"),
        ({"query": "hi", "context": []}, "context"),
        ({"query": "hi", "stream": True}, "stream"),
        ({"query": "hi", "sesion_id": "s"}, "sesion_id"),
    ],
)
def test_run_messages_are_validated_like_run_bodies(body: dict[str, Any], field: str) -> None:
    error = _refusal(json.dumps(body))
    assert error["code"] == "invalid_request" and error["reason"] == "invalid_fields"
    assert [p["field"] for p in error["fields"]] == [field]
    assert error["message"].startswith(f"invalid run message: {field}: ")
    # The HTTP API refuses the same bodies (but `stream`, which is one of its fields).
    if field != "stream":
        with pytest.raises(ValueError):
            RunBody.model_validate(body)


def test_the_run_message_fields_are_the_run_bodys() -> None:
    ours = RunMessage.model_json_schema()["properties"]
    theirs = RunBody.model_json_schema()["properties"]
    assert set(ours) == {"type", "query", "session_id", "context"}
    for name in ("query", "session_id", "context"):
        assert ours[name] == theirs[name]


def test_cancel_is_exactly_its_type() -> None:
    assert isinstance(parse_message('{"type": "cancel"}'), CancelMessage)
    error = _refusal('{"type": "cancel", "run_id": "x"}')
    assert error["reason"] == "invalid_fields" and error["fields"][0]["field"] == "run_id"
    assert error["hint"] == 'send exactly {"type": "cancel"}'


@pytest.mark.parametrize(
    ("data", "reason", "needle"),
    [
        ("not json", "not_json", "message is not JSON: Expecting value"),
        ('{"query": "hi"', "not_json", "message is not JSON"),
        ("[1, 2]", "not_object", "a message is a JSON object, not list"),
        ('"hi"', "not_object", "not str"),
        ('{"type": "stop"}', "unknown_type", "unknown message type 'stop'"),
        ('{"type": null, "query": "hi"}', "unknown_type", "unknown message type None"),
        (b"\x00\x01", "binary_frame", "binary frames are not accepted (got 2 bytes)"),
    ],
)
def test_frames_that_are_not_messages_get_precise_errors(
    data: str | bytes, reason: str, needle: str
) -> None:
    error = _refusal(data)
    assert error["code"] == "invalid_request"
    assert error["reason"] == reason
    assert needle in error["message"]
    assert error["hint"]


def test_the_size_limit_counts_utf8_bytes() -> None:
    def message(size: int, fill: str) -> str:
        empty = json.dumps({"query": "hi", "context": {"pad": ""}}, ensure_ascii=False)
        pad = fill * ((size - len(empty.encode())) // len(fill.encode()))
        return json.dumps({"query": "hi", "context": {"pad": pad}}, ensure_ascii=False)

    at_limit = message(MAX_MESSAGE_BYTES, "a")
    assert len(at_limit.encode()) == MAX_MESSAGE_BYTES
    assert isinstance(parse_message(at_limit), RunMessage)
    error = _refusal(message(MAX_MESSAGE_BYTES + 1, "a"))
    assert error["code"] == "request_too_large"
    assert (
        f"larger than {MAX_MESSAGE_BYTES} bytes ({MAX_MESSAGE_BYTES + 1} bytes)"
        in (error["message"])
    )
    # Fewer characters than the limit, more bytes: refused.
    wide = message(MAX_MESSAGE_BYTES + 2, "é")
    assert len(wide) < MAX_MESSAGE_BYTES < len(wide.encode())
    assert _refusal(wide)["code"] == "request_too_large"


def test_heartbeat_interval_from_the_query_string() -> None:
    assert heartbeat_interval({}) == HEARTBEAT_S == 15.0
    assert heartbeat_interval({"heartbeat_s": "2.5"}) == 2.5
    for bad in ("0.5", "301", "nan", "soon", ""):
        with pytest.raises(InvalidRequest, match="heartbeat_s must be a number of seconds"):
            heartbeat_interval({"heartbeat_s": bad})
    with pytest.raises(InvalidRequest, match="unknown query parameter\\(s\\) 'token'") as info:
        heartbeat_interval({"token": "x"})
    assert info.value.http_status == 422


# -- frames ----------------------------------------------------------------------------

RESULT: dict[str, Any] = {
    "run_id": "r" * 32,
    "agent": "a",
    "answer": "forty-two",
    "steps": [{"type": "answer"}],
    "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4, "calls": 1},
    "trace": [{"name": "gateway"}],
    "trace_id": "t" * 32,
    "session_id": "s-1",
    "messages": [{"role": "user", "content": "q"}],
    "status": "completed",
    "pending": [],
    "data": None,
}


def test_run_finished_becomes_done_and_other_events_pass_unchanged() -> None:
    token = {"type": "token", "text": "hi", "channel": "answer", "iteration": 1, "role": "x"}
    assert event_frame(token) is token
    done = event_frame({"type": "run_finished", "result": RESULT})
    assert done == {
        "type": "done",
        "run_id": "r" * 32,
        "session_id": "s-1",
        "trace_id": "t" * 32,
        "answer": "forty-two",
        "usage": RESULT["usage"],
        "status": "completed",
        "pending": [],
        "data": None,
    }
    assert done_frame({**RESULT, "status": "requires_action", "pending": [{"id": "c"}]})[
        "pending"
    ] == [{"id": "c"}]


def test_error_frames_say_their_scope() -> None:
    error = AgentUnavailable("down", hint="redeploy").to_dict()
    assert error_frame(error, "message") == {"type": "error", "scope": "message", "error": error}
    assert error_frame(error, "turn", run_id="r", session_id=None) == {
        "type": "error",
        "scope": "turn",
        "error": error,
        "run_id": "r",
        "session_id": None,
    }
    assert error["code"] == "agent_unavailable" and error["hint"] == "redeploy"


def test_encoding_close_codes_and_reasons() -> None:
    assert encode({"type": "token", "text": "é"}) == '{"type":"token","text":"é"}'
    assert close_code(404) == 4404 and close_code(422) == 4422
    reason = close_reason("é" * 100)
    assert len(reason.encode()) <= 123 and reason == "é" * 61
    assert close_reason("no agent named 'x'") == "no agent named 'x'"


# -- a connection ----------------------------------------------------------------------


class FakeSocket:
    """A transport fed by the test: ``incoming`` frames (None: the client leaves);
    what the session sent lands in ``frames``.  ``blocked`` holds every send."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.blocked = asyncio.Event()
        self.blocked.set()
        self.gone = False

    async def receive(self) -> str | bytes | None:
        return await self.incoming.get()

    async def send(self, text: str) -> None:
        await self.blocked.wait()
        if self.gone:
            raise ClientGone
        await self.frames.put(json.loads(text))

    def say(self, message: dict[str, Any] | str | bytes | None) -> None:
        self.incoming.put_nowait(json.dumps(message) if isinstance(message, dict) else message)

    async def next(self, *, skip_heartbeats: bool = True) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.frames.get(), WAIT_S)
            if not (skip_heartbeats and frame["type"] == "heartbeat"):
                return frame

    async def until(self, kind: str) -> list[dict[str, Any]]:
        """Frames up to and with the first of type ``kind``."""
        seen = [await self.next()]
        while seen[-1]["type"] != kind:
            seen.append(await self.next())
        return seen


class FakeRun:
    """A run's events: ``tokens`` tokens, each released by ``gate`` when set, then
    run_finished (or ``fail``); records how far it was pulled and whether it was closed."""

    def __init__(self, run_id: str, request: dict[str, Any], tokens: int = 3) -> None:
        self.run_id = run_id
        self.request = request
        self.tokens = tokens
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.pulled = 0
        self.closed = asyncio.Event()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.closed.set()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        yield self._pulled({"type": "run_started", "run_id": self.run_id})
        for i in range(self.tokens):
            if self.gate is not None:
                await self.gate.wait()
            yield self._pulled({"type": "token", "text": f"t{i} ", "channel": "answer"})
        if self.fail is not None:
            raise self.fail
        result = {**RESULT, "run_id": self.run_id, "session_id": self.request["session_id"]}
        yield self._pulled({"type": "run_finished", "result": result})

    def _pulled(self, event: dict[str, Any]) -> dict[str, Any]:
        self.pulled += 1
        return event


class Runs:
    """``OpenRun`` handing out FakeRuns (configured by ``prepare``), or raising ``refuse``."""

    def __init__(self) -> None:
        self.runs: list[FakeRun] = []
        self.refuse: AstromeshError | None = None
        self.tokens = 3
        self.gated = False

    async def __call__(self, request: dict[str, Any]) -> FakeRun:
        if self.refuse is not None:
            raise self.refuse
        run = FakeRun(f"run-{len(self.runs) + 1}", request, self.tokens)
        if self.gated:
            run.gate = asyncio.Event()
        self.runs.append(run)
        return run


async def _connect(heartbeat_s: float = 60.0) -> tuple[FakeSocket, Runs, asyncio.Task[None]]:
    socket, runs = FakeSocket(), Runs()
    session = WsConnection(socket, runs, heartbeat_s)
    return socket, runs, asyncio.create_task(session.serve())


async def _leave(socket: FakeSocket, task: asyncio.Task[None]) -> None:
    socket.say(None)
    await asyncio.wait_for(task, WAIT_S)


async def test_a_turn_streams_its_events_then_done() -> None:
    socket, runs, task = await _connect()
    socket.say({"query": "hi", "session_id": "s-1"})
    frames = await socket.until("done")
    assert [f["type"] for f in frames] == ["run_started", "token", "token", "token", "done"]
    assert "".join(f["text"] for f in frames if f["type"] == "token") == "t0 t1 t2 "
    assert frames[-1]["answer"] == "forty-two" and frames[-1]["session_id"] == "s-1"
    assert frames[-1]["run_id"] == "run-1"
    assert runs.runs[0].request == {"query": "hi", "session_id": "s-1", "context": {}}
    assert runs.runs[0].closed.is_set()
    await _leave(socket, task)


async def test_several_turns_one_at_a_time() -> None:
    socket, runs, task = await _connect()
    for n in (1, 2):
        socket.say({"query": f"q{n}", "session_id": "s-1"})
        assert (await socket.until("done"))[-1]["run_id"] == f"run-{n}"
    assert [r.request["query"] for r in runs.runs] == ["q1", "q2"]
    await _leave(socket, task)


async def test_a_query_while_a_turn_runs_is_refused_and_the_turn_goes_on() -> None:
    socket, runs, task = await _connect()
    runs.gated = True
    socket.say({"query": "first"})
    assert (await socket.next())["type"] == "run_started"
    socket.say({"query": "second"})
    refusal = await socket.next()
    assert refusal["type"] == "error" and refusal["scope"] == "message"
    assert refusal["error"]["reason"] == "turn_running"
    assert refusal["error"]["run_id"] == "run-1"
    socket.say("{oops")  # an invalid message mid-turn: refused, the turn goes on
    assert (await socket.next())["error"]["reason"] == "not_json"
    gate = runs.runs[0].gate
    assert gate is not None
    gate.set()
    frames = await socket.until("done")
    assert frames[-1]["run_id"] == "run-1" and len(runs.runs) == 1
    await _leave(socket, task)


async def test_cancel_stops_the_run_and_the_connection_goes_on() -> None:
    socket, runs, task = await _connect()
    runs.gated = True
    socket.say({"query": "long", "session_id": "s-9"})
    assert (await socket.next())["type"] == "run_started"
    socket.say({"type": "cancel"})
    assert await socket.next() == {"type": "cancelled", "run_id": "run-1", "session_id": "s-9"}
    run = runs.runs[0]
    assert run.closed.is_set() and run.pulled == 1  # stopped while waiting for a token
    runs.gated = False
    socket.say({"query": "again"})
    assert (await socket.until("done"))[-1]["run_id"] == "run-2"
    await _leave(socket, task)


async def test_cancel_without_a_turn_is_refused() -> None:
    socket, _, task = await _connect()
    socket.say({"type": "cancel"})
    frame = await socket.next()
    assert frame["scope"] == "message" and frame["error"]["reason"] == "no_turn"
    await _leave(socket, task)


async def test_the_client_leaving_stops_the_run() -> None:
    socket, runs, task = await _connect()
    runs.gated = True
    socket.say({"query": "long"})
    assert (await socket.next())["type"] == "run_started"
    await _leave(socket, task)
    assert runs.runs[0].closed.is_set()


async def test_a_send_finding_the_client_gone_stops_the_run() -> None:
    socket, runs, task = await _connect()
    runs.gated = True
    socket.say({"query": "long"})
    assert (await socket.next())["type"] == "run_started"
    socket.gone = True
    gate = runs.runs[0].gate
    assert gate is not None
    gate.set()  # the next token's send raises ClientGone
    await asyncio.wait_for(runs.runs[0].closed.wait(), WAIT_S)
    await _leave(socket, task)  # and serve() ends quietly


async def test_an_error_before_the_first_event_ends_the_turn_not_the_connection() -> None:
    socket, runs, task = await _connect()
    runs.refuse = AgentUnavailable("agent 'a' is unavailable", hint="check `serve status`")
    socket.say({"query": "hi", "session_id": "s-1"})
    frame = await socket.next()
    assert frame == {
        "type": "error",
        "scope": "turn",
        "error": runs.refuse.to_dict(),
        "run_id": None,
        "session_id": "s-1",
    }
    runs.refuse = None
    socket.say({"query": "hi"})
    assert (await socket.until("done"))[-1]["type"] == "done"
    await _leave(socket, task)


async def test_an_error_mid_run_ends_the_turn_with_its_run_id() -> None:
    socket, runs = FakeSocket(), []

    async def failing(request: dict[str, Any]) -> FakeRun:
        run = FakeRun("run-x", request, tokens=1)
        run.fail = ProviderError("every provider failed", hint="start the model server")
        runs.append(run)
        return run

    task = asyncio.create_task(WsConnection(socket, failing, 60.0).serve())
    socket.say({"query": "hi"})
    frames = await socket.until("error")
    assert [f["type"] for f in frames] == ["run_started", "token", "error"]
    assert frames[-1]["scope"] == "turn" and frames[-1]["run_id"] == "run-x"
    assert frames[-1]["error"]["code"] == "provider_error"
    assert runs[0].closed.is_set()
    await _leave(socket, task)


async def test_a_bug_in_a_turn_is_an_internal_error_frame() -> None:
    socket = FakeSocket()

    async def broken(request: dict[str, Any]) -> FakeRun:
        run = FakeRun("run-b", request, tokens=0)
        run.fail = KeyError("oops")
        return run

    task = asyncio.create_task(WsConnection(socket, broken, 60.0).serve())
    socket.say({"query": "hi"})
    frame = (await socket.until("error"))[-1]
    assert frame["error"]["code"] == "run_error"
    assert frame["error"]["message"] == "internal error: KeyError: 'oops'"
    socket.say({"type": "cancel"})  # the turn is over
    assert (await socket.next())["error"]["reason"] == "no_turn"
    await _leave(socket, task)


async def test_heartbeats_come_while_idle_and_while_a_turn_waits() -> None:
    socket, runs, task = await _connect(heartbeat_s=0.02)
    assert (await socket.next(skip_heartbeats=False)) == {"type": "heartbeat"}
    runs.gated = True
    socket.say({"query": "slow"})
    frames = [await socket.next(skip_heartbeats=False) for _ in range(4)]
    assert frames[0]["type"] in ("run_started", "heartbeat")
    assert [f for f in frames if f["type"] == "heartbeat"]
    assert [f for f in frames if f["type"] == "run_started"]
    await _leave(socket, task)


async def test_the_run_is_pulled_only_as_fast_as_frames_are_sent() -> None:
    socket, runs, task = await _connect()
    runs.tokens = 50
    socket.blocked.clear()  # a client that reads nothing
    socket.say({"query": "hi"})
    await asyncio.sleep(0.05)
    run = runs.runs[0]
    assert run.pulled == 1  # run_started, waiting to be sent: nothing more was pulled
    socket.blocked.set()
    frames = await socket.until("done")
    assert len(frames) == 52 and run.pulled == 52
    await _leave(socket, task)
