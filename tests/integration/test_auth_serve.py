"""API keys on real Serve (``serve/auth.py``), two gateway replicas:

- a table walks the running gateway's OpenAPI spec: every route but ``/health``
  refuses a missing key and an unknown one (401), and a key scoped to another agent
  (403); the WebSocket route too (an error frame, close code 4401/4403);
- a key's sessions, paused runs and traces are its own: another key sending the same
  session id gets another conversation, cannot read or resume its run, and its
  listings hold its own sessions only (without the stored prefix);
- a key's rate limit is counted across both gateway replicas (429, Retry-After);
- secrets (the API keys, the provider's API key) appear in no reply, trace,
  episodic record or Ray log file.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from ray import serve
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from astromesh_ray.core.auth import hash_key
from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import PROVIDER_KEY, PROVIDER_KEY_ENV, agent_yaml, deployed

pytestmark = pytest.mark.integration

TOKENS = {
    "alice": "am_alice-0123456789abcdefghijklmnopqrstuvwxyz",
    "bob": "am_bob-0123456789abcdefghijklmnopqrstuvwxyz0",
    "other": "am_other-0123456789abcdefghijklmnopqrstuvwx",
    "root": "am_root-0123456789abcdefghijklmnopqrstuvwxy",
    "carol": "am_carol-0123456789abcdefghijklmnopqrstuvwx",
}
LIMIT = 4
BODY = """\
  prompts: {system: "You help."}
  tools:
    - name: lookup
      type: client
      description: Look a part up
      parameters:
        part: {type: string}
  memory:
    conversational: {backend: sqlite}
    episodic: {backend: sqlite}
"""


def _runtime(root: Path) -> dict[str, Any]:
    keys = [
        {
            "id": "alice",
            "hash": hash_key(TOKENS["alice"]),
            "agents": ["helper"],
            "actions": ["run", "read_memory", "erase_memory"],
        },
        {
            "id": "bob",
            "hash": hash_key(TOKENS["bob"]),
            "agents": ["helper"],
            "actions": ["run", "read_memory"],
        },
        {
            "id": "carol",
            "hash": hash_key(TOKENS["carol"]),
            "agents": ["helper"],
            "rate_limit": {"requests": LIMIT, "window_s": 3600},
        },
        {"id": "other", "hash": hash_key(TOKENS["other"]), "agents": ["other"]},
        {"id": "root", "hash": hash_key(TOKENS["root"]), "actions": ["admin"]},
    ]
    return {
        "apiVersion": "astromesh/v1",
        "kind": "RuntimeConfig",
        "metadata": {"name": "auth"},
        "spec": {
            "memory": {"data_dir": str(root / "data")},
            "gateway": {"num_replicas": 2},
            "auth": {"keys": keys},
        },
    }


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    # The provider's own key must arrive (from the env var the cluster has).
    with ScriptedOpenAIServer(require_api_key=PROVIDER_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("auth")
    (root / "runtime.yaml").write_text(yaml.safe_dump(_runtime(root)))
    (root / "agents").mkdir()
    key_line = f'    primary: {{provider: openai_compat, model: m, endpoint: "{llm.url}", '
    key_line += f"api_key_env: {PROVIDER_KEY_ENV}}}\n"
    for name in ("helper", "other"):
        text = agent_yaml(name, llm.url, BODY)
        text = re.sub(r"    primary: \{.*\}\n", key_line, text)
        (root / "agents" / f"{name}.agent.yaml").write_text(text)
    with deployed(root) as apps:
        yield serve_url
        for name in apps:
            serve.delete(name, _blocking=False)


def _as(who: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}


# What each route needs beyond the path (a body that passes validation where the
# check is made on the run, as the OpenAI API's `model`).
_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/chat/completions"): {
        "model": "helper",
        "messages": [{"role": "user", "content": "hi"}],
    },
}
_PARAMS = {
    "name": "helper",
    "model": "helper",
    "run_id": "0" * 32,
    "session_id": "s1",
    "pipeline": "docs",
    "trace_id": "0" * 32,
    "channel": "whatsapp",
}


def _operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]


def test_every_route_refuses_missing_unknown_and_out_of_scope_keys(api: str) -> None:
    spec = httpx.get(f"{api}/openapi.json", headers=_as("root"), timeout=30).json()
    operations = _operations(spec)
    assert len(operations) > 30
    checked = 0
    for method, path in operations:
        url = api + path.format(**_PARAMS)
        body = _BODIES.get((method, path), {})
        kwargs: dict[str, Any] = {"json": body} if method in ("POST", "PUT") else {}
        if path == "/health":
            assert httpx.request(method, url, timeout=30).status_code == 200
            continue
        if path.startswith("/v1/channels/"):  # a platform's signature, not a key
            continue
        for headers in ({}, {"Authorization": "Bearer am_not-a-key"}):
            reply = httpx.request(method, url, headers=headers, timeout=30, **kwargs)
            assert reply.status_code == 401, (method, path, reply.text)
            assert reply.json()["error"]["code"] == "unauthenticated"
        # "other" may run agent "other" only.
        reply = httpx.request(method, url, headers=_as("other"), timeout=30, **kwargs)
        free = path in (
            "/openapi.json",
            "/v1/agents",
            "/v1/models",
            "/.well-known/agent-card.json",
            "/v1/traces/{trace_id}",
        )
        if free:
            assert reply.status_code not in (401, 403), (method, path, reply.text)
        else:
            assert reply.status_code == 403, (method, path, reply.text)
        checked += 1
    assert checked == len(operations) - 3  # all but /health and the two webhook routes


def test_listings_hold_only_the_agents_a_key_covers(api: str) -> None:
    agents = httpx.get(f"{api}/v1/agents", headers=_as("other"), timeout=30).json()
    assert [a["name"] for a in agents["agents"]] == ["other"]
    models = httpx.get(f"{api}/v1/models", headers=_as("root"), timeout=30).json()
    assert sorted(m["id"] for m in models["data"]) == ["helper", "other"]
    # The A2A card tells clients the key is a bearer token.
    card = httpx.get(f"{api}/a2a/other/.well-known/agent-card.json", headers=_as("other"))
    assert card.json()["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == (
        "Bearer"
    )


def test_websocket_needs_a_key_in_scope(api: str) -> None:
    async def first_frame(who: str | None, agent: str) -> tuple[dict[str, Any], int | None]:
        url = api.replace("http://", "ws://") + f"/v1/ws/agent/{agent}"
        async with connect(url, additional_headers=_as(who), open_timeout=30) as ws:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            try:
                await asyncio.wait_for(ws.recv(), 30)
            except ConnectionClosed as closed:
                return frame, closed.rcvd.code if closed.rcvd else None
            return frame, None

    frame, code = asyncio.run(first_frame(None, "helper"))
    assert (frame["error"]["code"], code) == ("unauthenticated", 4401)
    frame, code = asyncio.run(first_frame("other", "helper"))
    assert (frame["error"]["code"], code) == ("forbidden", 4403)


def _run(api: str, who: str, query: str, session: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{api}/v1/agents/helper/run",
        json={"query": query, "session_id": session},
        headers=_as(who),
        timeout=60,
    )


def test_sessions_runs_and_traces_belong_to_their_key(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps("Hello Alice.", "Hello Bob.")
    first = _run(api, "alice", "I am Alice", "s1")
    assert first.status_code == 200, first.text
    assert first.json()["session_id"] == "s1"  # as alice knows it
    assert _run(api, "bob", "I am Bob", "s1").status_code == 200
    # Bob's "s1" is not Alice's: the model saw no earlier turn for him.
    bob_request = llm.requests[-1]["messages"]
    assert not any("Alice" in str(m.get("content")) for m in bob_request)

    history = httpx.get(
        f"{api}/v1/memory/helper/sessions/s1/history", headers=_as("alice"), timeout=30
    ).json()
    assert [[m["content"] for m in t["messages"]] for t in history["turns"]] == [
        ["I am Alice", "Hello Alice."]
    ]
    mine = httpx.get(f"{api}/v1/memory/helper/sessions", headers=_as("alice"), timeout=30)
    assert [s["session_id"] for s in mine.json()["sessions"]] == ["s1"]
    every = httpx.get(f"{api}/v1/memory/helper/sessions", headers=_as("root"), timeout=30)
    assert {s["session_id"] for s in every.json()["sessions"]} >= {"alice@s1", "bob@s1"}
    episodes = httpx.get(f"{api}/v1/memory/helper/episodes", headers=_as("bob"), timeout=30)
    assert {e["session_id"] for e in episodes.json()["episodes"]} == {"s1"}
    # Bob may read memory but not erase it.
    erase = httpx.delete(f"{api}/v1/memory/helper/sessions/s1", headers=_as("bob"), timeout=30)
    assert erase.status_code == 403

    # A paused run is its key's: another key cannot see or resume it.
    llm.add_steps({"tool_calls": [{"name": "lookup", "arguments": {"part": "x"}}]})
    paused = _run(api, "alice", "look x up").json()
    assert paused["status"] == "requires_action"
    run_url = f"{api}/v1/agents/helper/runs/{paused['run_id']}"
    assert httpx.get(run_url, headers=_as("bob"), timeout=30).status_code == 404
    results = {"tool_results": [{"tool_call_id": paused["pending"][0]["id"], "content": "x1"}]}
    stolen = httpx.post(f"{run_url}/tool_results", json=results, headers=_as("bob"), timeout=30)
    assert stolen.status_code == 404
    assert httpx.get(run_url, headers=_as("alice"), timeout=30).status_code == 200

    # A trace is its key's too (admins read any).
    trace_id = first.json()["trace_id"]
    # Ask until the replica that served the run answers (two replicas keep their own).
    seen = {
        who: {
            httpx.get(f"{api}/v1/traces/{trace_id}", headers=_as(who), timeout=30).status_code
            for _ in range(12)
        }
        for who in ("alice", "bob")
    }
    assert 200 in seen["alice"] and seen["bob"] == {404}


def test_a_keys_rate_limit_holds_across_gateway_replicas(api: str) -> None:
    """Carol's limit is counted once for the cluster: with each replica counting
    apart, two replicas would admit up to twice as many."""
    replies = [
        httpx.get(f"{api}/v1/agents/helper", headers=_as("carol"), timeout=30)
        for _ in range(LIMIT + 3)
    ]
    assert [r.status_code for r in replies] == [200] * LIMIT + [429] * 3
    refused = replies[-1]
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert refused.json()["error"]["code"] == "rate_limited"
    # Other keys are not limited by carol's.
    assert httpx.get(f"{api}/v1/agents/helper", headers=_as("alice"), timeout=30).status_code == 200


def test_secrets_never_reach_replies_traces_episodes_or_logs(api: str) -> None:
    # Every reply of the tests above went through these routes; read back what is
    # stored about them.
    blobs = [
        httpx.get(f"{api}/v1/memory/helper/episodes", headers=_as("root"), timeout=30).text,
        httpx.get(f"{api}/v1/agents/helper", headers=_as("root"), timeout=30).text,
        httpx.get(f"{api}/v1/providers", headers=_as("root"), timeout=30).text,
        httpx.get(f"{api}/v1/agents/helper", headers=_as(None), timeout=30).text,
    ]
    for blob in blobs:
        for secret in (*TOKENS.values(), PROVIDER_KEY):
            assert secret not in blob
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in (*TOKENS.values(), PROVIDER_KEY):
            assert secret.encode() not in data, f"{secret[:6]}... in {path}"
    assert os.environ[PROVIDER_KEY_ENV] == PROVIDER_KEY  # the cluster had it to send
