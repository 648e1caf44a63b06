"""An agent's own routes (``/v1/agents/{name}/...``) answered by the agent's own
application, on real Serve over HTTP (``serve/agent_routes.py``, ``serve/app.py``):

- a run is answered in the agent's replica: every span of its trace, the edge span
  first, is the agent application's; no gateway replica is in between;
- SSE, the paused-run routes, the description and health answer there too;
- the same gate: no key 401, an out-of-scope key 403, and a key's rate limit counted
  once across the gateway's routes and the agent's (one cluster-wide actor);
- Serve's longest-prefix match never takes ``/v1/agents/abc`` for ``/v1/agents/ab``;
  unknown agents reach the gateway (404 agent_not_found, naming every agent);
- the gateway reads the traces of runs the agents' applications answered;
- the gateway still reaches the agents by handle (chat completions, memory);
- an agent whose application is gone: the gateway answers (503 agent_unavailable).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ray import serve

from astromesh_ray.core.auth import hash_key
from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import agent_yaml, deployed

pytestmark = pytest.mark.integration

TOKENS = {
    "alice": "am_alice-0123456789abcdefghijklmnopqrstuvwxyz",
    "bob": "am_bob-0123456789abcdefghijklmnopqrstuvwxyz0",
    "scoped": "am_scoped-0123456789abcdefghijklmnopqrstuvw",
    # Its own key id: rate-limit windows are counted per key id by one actor for the
    # whole test session (test_auth_serve.py limits "carol").
    "carla": "am_carla-0123456789abcdefghijklmnopqrstuvwx",
    "root": "am_root-0123456789abcdefghijklmnopqrstuvwxy",
}
LIMIT = 5
AGENTS = ("ab", "abc", "gone")
BODY = """\
  prompts: {system: "You help."}
  tools:
    - name: lookup
      type: client
      description: Look a part up
      parameters:
        part: {type: string}
    - name: quote
      type: internal
      function: "tests.integration.tool_functions:quote"
      requires_approval: true
  memory:
    conversational: {backend: sqlite}
"""


def _runtime(root: Path) -> dict[str, Any]:
    keys = [
        {
            "id": "alice",
            "hash": hash_key(TOKENS["alice"]),
            "agents": list(AGENTS),
            "actions": ["run", "read_memory"],
        },
        {"id": "bob", "hash": hash_key(TOKENS["bob"]), "agents": ["ab"]},
        {"id": "scoped", "hash": hash_key(TOKENS["scoped"]), "agents": ["abc"]},
        {
            "id": "carla",
            "hash": hash_key(TOKENS["carla"]),
            "agents": ["ab"],
            "rate_limit": {"requests": LIMIT, "window_s": 3600},
        },
        {"id": "root", "hash": hash_key(TOKENS["root"]), "actions": ["admin"]},
    ]
    return {
        "apiVersion": "astromesh/v1",
        "kind": "RuntimeConfig",
        "metadata": {"name": "agent-routes"},
        "spec": {"memory": {"data_dir": str(root / "data")}, "auth": {"keys": keys}},
    }


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("agent-routes")
    (root / "runtime.yaml").write_text(yaml.safe_dump(_runtime(root)))
    (root / "agents").mkdir()
    for name in AGENTS:
        (root / "agents" / f"{name}.agent.yaml").write_text(agent_yaml(name, llm.url, BODY))
    with deployed(root) as apps:
        assert "agent-ab" in apps and apps[-1] == "gateway"
        yield serve_url


def _as(who: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}


def _run(api: str, agent: str, query: str, who: str = "alice", **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{api}/v1/agents/{agent}/run",
        json={"query": query, **extra},
        headers=_as(who),
        timeout=60,
    )


def _apps(trace: list[dict[str, Any]]) -> set[str]:
    return {str(span["where"].get("app")) for span in trace}


def _sse(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], lines["data"]))
    return events


def test_a_run_is_answered_in_the_agents_own_replica(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps("hello from ab")
    reply = _run(api, "ab", "hi")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"] == "hello from ab"
    trace = body["trace"]
    edge, run = trace[0], next(s for s in trace if s["name"] == "run")
    # The edge span is first, the run's parent, and in the agent's replica: the same
    # process as the run (in process, no handle call), and no gateway span anywhere.
    assert edge["name"] == "gateway" and run["parent_id"] == edge["span_id"]
    assert edge["where"]["app"] == "agent-ab" and edge["where"]["deployment"] == "agent"
    assert edge["where"]["pid"] == run["where"]["pid"]
    assert edge["where"]["replica"] == run["where"]["replica"]
    assert _apps(trace) == {"agent-ab"}


def test_sse_from_the_agents_application(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps("streamed words here", "accepted too")
    with httpx.stream(
        "POST", f"{api}/v1/agents/ab/stream", json={"query": "hi"}, headers=_as("alice"), timeout=60
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = _sse(reply.read().decode())
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished" and "token" in kinds
    finished = json.loads(events[-1][1])["result"]
    assert finished["answer"] == "streamed words here"
    assert finished["trace"][0]["name"] == "gateway" and _apps(finished["trace"]) == {"agent-ab"}
    # `Accept: text/event-stream` on /run streams as well.
    accepted = httpx.post(
        f"{api}/v1/agents/ab/run",
        json={"query": "hi"},
        headers={**_as("alice"), "Accept": "text/event-stream"},
        timeout=60,
    )
    assert accepted.status_code == 200
    assert [kind for kind, _ in _sse(accepted.text)][-1] == "run_finished"


def test_paused_run_routes_on_the_agents_application(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "lookup", "arguments": {"part": "P1"}}]},
        "P1 is in stock.",
        {"tool_calls": [{"name": "quote", "arguments": {"part": "P2", "quantity": 1}}]},
        "No quote, then.",
    )
    paused = _run(api, "ab", "look P1 up").json()
    assert paused["status"] == "requires_action", paused
    run_id, [pending] = paused["run_id"], paused["pending"]
    run_url = f"{api}/v1/agents/ab/runs/{run_id}"
    seen = httpx.get(run_url, headers=_as("alice"), timeout=30)
    assert seen.status_code == 200 and [p["id"] for p in seen.json()["pending"]] == [pending["id"]]
    # Another key's run is not found.
    assert httpx.get(run_url, headers=_as("bob"), timeout=30).status_code == 404

    results = {"tool_results": [{"tool_call_id": pending["id"], "content": "in stock"}]}
    with httpx.stream(
        "POST",
        f"{run_url}/tool_results?stream=true",
        json=results,
        headers=_as("alice"),
        timeout=60,
    ) as reply:
        assert reply.status_code == 200
        events = _sse(reply.read().decode())
    done = json.loads(events[-1][1])["result"]
    assert done["answer"] == "P1 is in stock." and done["run_id"] == run_id
    # The resume joined the paused run's trace, in the agent's application.
    assert {s["trace_id"] for s in done["trace"]} == {paused["trace_id"]}
    assert _apps(done["trace"]) == {"agent-ab"}

    second = _run(api, "ab", "quote P2").json()
    assert second["status"] == "requires_action", second
    rejected = httpx.post(
        f"{api}/v1/agents/ab/runs/{second['run_id']}/reject",
        json={"reason": "not today"},
        headers=_as("alice"),
        timeout=60,
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["answer"] == "No quote, then."
    assert "not today" in str(llm.requests[-1]["messages"][-1]["content"])
    again = httpx.post(
        f"{api}/v1/agents/ab/runs/{second['run_id']}/retry", headers=_as("alice"), timeout=30
    )
    assert again.status_code == 404 and again.json()["error"]["code"] == "run_not_found"


def test_the_same_gate_on_the_agents_application(api: str) -> None:
    missing = httpx.post(f"{api}/v1/agents/ab/run", json={"query": "hi"}, timeout=30)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthenticated"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    unknown = httpx.get(
        f"{api}/v1/agents/ab", headers={"Authorization": "Bearer am_no"}, timeout=30
    )
    assert unknown.status_code == 401
    # "scoped" covers abc only.
    for method, path in (("GET", "/v1/agents/ab"), ("POST", "/v1/agents/ab/run")):
        reply = httpx.request(
            method, api + path, json={"query": "hi"}, headers=_as("scoped"), timeout=30
        )
        assert reply.status_code == 403, (path, reply.text)
        assert reply.json()["error"]["code"] == "forbidden"
    # Invalid bodies, unknown sub-paths and wrong methods: the same envelope.
    bad = httpx.post(
        f"{api}/v1/agents/ab/run", json={"query": ""}, headers=_as("alice"), timeout=30
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    nothing = httpx.get(f"{api}/v1/agents/ab/nothing", headers=_as("alice"), timeout=30)
    assert nothing.status_code == 404 and nothing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{api}/v1/agents/ab/run", headers=_as("alice"), timeout=30)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    big = httpx.post(
        f"{api}/v1/agents/ab/run",
        content=b'{"query": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        headers={**_as("alice"), "Content-Type": "application/json"},
        timeout=30,
    )
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


def test_a_rate_limit_counts_the_gateways_routes_and_the_agents_together(api: str) -> None:
    """Carla's requests alternate between a gateway route and an agent route: with
    each app counting apart, both would admit LIMIT."""
    paths = ["/v1/agents", "/v1/agents/ab"] * LIMIT
    codes = [httpx.get(api + path, headers=_as("carla"), timeout=30).status_code for path in paths]
    assert codes == [200] * LIMIT + [429] * LIMIT
    refused = httpx.get(f"{api}/v1/agents/ab/health", headers=_as("carla"), timeout=30)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"]["code"] == "rate_limited"


def test_a_prefix_is_matched_whole(api: str, llm: ScriptedOpenAIServer) -> None:
    described = {
        name: httpx.get(f"{api}/v1/agents/{name}", headers=_as("alice"), timeout=30).json()
        for name in ("ab", "abc")
    }
    assert {name: d["name"] for name, d in described.items()} == {"ab": "ab", "abc": "abc"}
    llm.add_steps("hello from abc")
    # The "scoped" key covers abc alone: had /v1/agents/ab taken the request, ab's
    # application would not run abc.
    reply = _run(api, "abc", "hi", who="scoped")
    assert reply.status_code == 200, reply.text
    assert _apps(reply.json()["trace"]) == {"agent-abc"}
    health = httpx.get(f"{api}/v1/agents/abc/health", headers=_as("scoped"), timeout=30).json()
    assert health["agent"] == "abc" and health["status"] == "ok"


def test_unknown_agents_reach_the_gateway(api: str) -> None:
    for path in ("/v1/agents/abz/run", "/v1/agents/a/run", "/v1/agents/AB/run"):
        reply = httpx.post(api + path, json={"query": "hi"}, headers=_as("root"), timeout=30)
        assert reply.status_code == 404, (path, reply.text)
        error = reply.json()["error"]
        # The gateway knows every agent (an agent's application, only its own).
        assert error["code"] == "agent_not_found" and error["hint"] == (
            "loaded agents: ab, abc, gone"
        )


def test_the_gateway_reads_the_traces_the_agents_applications_kept(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("traced")
    body = _run(api, "ab", "hi").json()
    trace_id = body["trace_id"]
    found = httpx.get(f"{api}/v1/traces/{trace_id}", headers=_as("alice"), timeout=30)
    assert found.status_code == 200, found.text
    tree = found.json()
    assert tree["span_count"] == len(body["trace"])
    [root] = tree["spans"]
    assert root["span_id"] == body["trace"][0]["span_id"]
    assert root["where"]["app"] == "agent-ab"
    assert root["children"][0]["name"] == "run"
    # Still the key's own: another key does not find it; an admin does.
    other = httpx.get(f"{api}/v1/traces/{trace_id}", headers=_as("scoped"), timeout=30)
    assert other.status_code == 404 and other.json()["error"]["code"] == "trace_not_found"
    assert "agent application" in other.json()["error"]["hint"]
    admin = httpx.get(f"{api}/v1/traces/{trace_id}", headers=_as("root"), timeout=30)
    assert admin.status_code == 200


def test_the_gateway_still_reaches_agents_by_handle(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps("from chat")
    chat = httpx.post(
        f"{api}/v1/chat/completions",
        json={"model": "ab", "messages": [{"role": "user", "content": "hi"}]},
        headers=_as("alice"),
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == "from chat"
    llm.add_steps("remembered")
    assert _run(api, "ab", "keep this", session_id="s1").status_code == 200
    sessions = httpx.get(f"{api}/v1/memory/ab/sessions", headers=_as("alice"), timeout=30)
    assert sessions.status_code == 200
    assert "s1" in [s["session_id"] for s in sessions.json()["sessions"]]


def test_an_agent_whose_application_is_gone_is_503_from_the_gateway(api: str) -> None:
    serve.delete("agent-gone")  # its route prefix goes with it: the gateway answers
    deadline = time.monotonic() + 60
    reply = _run(api, "gone", "hi")
    # Until every proxy has the new route table, Serve itself may answer (text).
    while not reply.headers["content-type"].startswith("application/json"):
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.5)
        reply = _run(api, "gone", "hi")
    assert reply.status_code == 503, reply.text
    error = reply.json()["error"]
    assert error["code"] == "agent_unavailable" and error["app"] == "agent-gone"
    described = httpx.get(f"{api}/v1/agents/gone", headers=_as("alice"), timeout=30)
    assert described.status_code == 200 and described.json()["name"] == "gone"
