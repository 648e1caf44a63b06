"""The runtime's two FastAPI apps (``serve/app.py``): the agents' app holds the agent
routes alone, declared on the gateway's too; under a Serve route prefix an app still
routes, gates and labels by full paths; and an agent's app runs only its own agent
(``serve/agent_link.py``'s ``LocalLink``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from astromesh_ray.core.auth import hash_key
from astromesh_ray.errors import AgentNotFound
from astromesh_ray.serve import auth as gate
from astromesh_ray.serve.agent_link import LocalLink
from astromesh_ray.serve.app import (
    AGENT_ROUTES,
    agent_api,
    agent_route_prefix,
    served_route,
    serving_app,
)
from astromesh_ray.serve.auth import RULES, _walk, current_key
from astromesh_ray.serve.gateway import api
from astromesh_ray.spec.auth import AuthSpec


def _routes(app: Any) -> set[tuple[str, str]]:
    return {(m, r.path) for r in _walk(app.router) for m in r.methods if m != "HEAD"}


def test_the_agents_app_holds_the_agent_routes_alone() -> None:
    mine = _routes(agent_api)
    assert mine == {r for r in _routes(api) if r[1].startswith(AGENT_ROUTES)}
    assert ("POST", "/v1/agents/{name}/run") in mine and len(mine) == 9
    assert mine <= set(RULES)  # the gateway's rules, the same table
    # No description of its own (the gateway's describes every route).
    assert agent_api.openapi_url is None and agent_api.docs_url is None
    assert agent_route_prefix("support") == "/v1/agents/support"


def _prefixed_app() -> Any:
    app = serving_app(mount=AGENT_ROUTES)

    @app.post("/v1/agents/{name}/run")
    async def run(name: str) -> dict[str, Any]:
        return {"name": name, "key": current_key().id, "route": served_route()}

    return app


@pytest.fixture
def keyed() -> Iterator[None]:
    keys = [
        {"id": "alice", "hash": hash_key("tok-alice"), "agents": ["ab"]},
        {"id": "other", "hash": hash_key("tok-other"), "agents": ["abc"]},
    ]
    gate.configure(AuthSpec.model_validate({"keys": keys}), {"ab": "default"})
    assert gate._CONFIG is not None
    gate._CONFIG.limiter = None  # no rate limits here (the actor is Ray's)
    yield
    gate._CONFIG = None


@pytest.mark.usefixtures("keyed")
@pytest.mark.parametrize("proxy_root", ["", "/behind"])
def test_under_a_route_prefix_the_app_sees_full_paths(proxy_root: str) -> None:
    # As Serve's proxy calls an app at route prefix /v1/agents/ab: root_path is its own
    # root path plus the prefix, path is whole.
    client = TestClient(_prefixed_app(), root_path=f"{proxy_root}/v1/agents/ab")
    url = f"{proxy_root}/v1/agents/ab/run"
    reply = client.post(url, headers={"Authorization": "Bearer tok-alice"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"name": "ab", "key": "alice", "route": "/v1/agents/{name}/run"}
    # The gate's rule for the full path applies: no key, another agent's key.
    assert client.post(url).status_code == 401
    refused = client.post(url, headers={"Authorization": "Bearer tok-other"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    # The error handlers too: an unknown sub-path is our 404 envelope.
    missing = client.get(
        f"{proxy_root}/v1/agents/ab/nothing", headers={"Authorization": "Bearer tok-alice"}
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_outside_a_request_there_is_no_route() -> None:
    assert served_route() is None


class _Replica:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    async def paused(self, run_id: str, caller: Any) -> dict[str, Any]:
        self.calls.append(("paused", run_id))
        return {"ok": {"run_id": run_id}}

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for n in range(3):
            yield {"ok": {"n": n, **body}}


async def test_a_local_link_calls_the_replicas_own_methods() -> None:
    replica = _Replica()
    link = LocalLink(replica, "ab")
    assert await link.call("ab", "health", patience_s=1) == {"status": "ok"}
    assert await link.call("ab", "paused", "r1", None, patience_s=1) == {"ok": {"run_id": "r1"}}
    first, rest = await link.open("ab", "stream", {"q": 1}, 1)
    assert first == {"ok": {"n": 0, "q": 1}}
    assert [item async for item in rest] == [{"ok": {"n": 1, "q": 1}}, {"ok": {"n": 2, "q": 1}}]


async def test_a_local_link_runs_no_other_agent() -> None:
    replica = _Replica()
    link = LocalLink(replica, "ab")
    with pytest.raises(AgentNotFound, match="'abc'"):
        await link.call("abc", "paused", "r1", None, patience_s=1)
    with pytest.raises(AgentNotFound):
        await link.open("abc", "stream", {}, 1)
    assert replica.calls == []
