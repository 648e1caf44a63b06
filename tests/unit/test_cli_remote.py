"""The client side of ``--url``: SSE parsing, the OpenAI-compatible chunks turned
back into run events, and the server's error envelope raised as its error."""

from __future__ import annotations

import json

import httpx

from astromesh_ray.cli_remote import _chunk_events, _server_error, _sse
from astromesh_ray.errors import AgentNotFound, AstromeshError


async def test_sse_events_are_split_on_blank_lines() -> None:
    body = (
        'event: run_started\ndata: {"type": "run_started"}\n\n'
        "data: [DONE]\n\n"
        "event: x\ndata: line one\ndata: line two\n"
    )
    response = httpx.Response(200, content=body.encode())
    seen = [item async for item in _sse(response)]
    assert seen == [
        ("run_started", '{"type": "run_started"}'),
        ("message", "[DONE]"),
        ("x", "line one\nline two"),
    ]


def chunk(
    content: str | None = None, astromesh: dict[str, object] | None = None
) -> dict[str, object]:
    delta = {} if content is None else {"content": content}
    body: dict[str, object] = {"choices": [{"index": 0, "delta": delta}]}
    if astromesh is not None:
        body["astromesh"] = astromesh
    return body


def test_openai_chunks_become_run_events() -> None:
    answer: list[str] = []
    events = []
    for c in (
        chunk(""),  # the role chunk: no text
        chunk(None, {"type": "tool_call", "id": "c1", "name": "calc", "arguments": {}}),
        chunk("Hel"),
        chunk("lo"),
        chunk(
            None,
            {
                "type": "run_finished",
                "run_id": "r1",
                "session_id": "s",
                "status": "completed",
                "pending": [],
            },
        ),
    ):
        events += _chunk_events(c, answer)
    assert [e["type"] for e in events] == ["tool_call", "token", "token", "run_finished"]
    assert [e["text"] for e in events if e["type"] == "token"] == ["Hel", "lo"]
    assert events[1]["channel"] == "answer"
    result = events[-1]["result"]
    assert (
        result["answer"] == "Hello" and result["run_id"] == "r1" and result["status"] == "completed"
    )


def test_server_errors_are_raised_as_their_class() -> None:
    body = {"error": {"code": "agent_not_found", "message": "no agent named 'x'", "hint": "h"}}
    error = _server_error(404, json.dumps(body).encode())
    assert isinstance(error, AgentNotFound) and error.hint == "h"
    other = _server_error(502, b"<html>Bad Gateway</html>")
    assert type(other) is AstromeshError
    assert other.message == "the server answered HTTP 502: <html>Bad Gateway</html>"
