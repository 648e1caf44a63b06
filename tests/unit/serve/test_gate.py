"""The gateway's gate (``serve/auth.py``): every route of the real app has a rule,
and the middleware refuses missing, unknown and out-of-scope keys, counts rate
limits, answers open only to loopback, and does CORS only when configured."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from astromesh_ray.core.auth import hash_key
from astromesh_ray.core.rate_window import Admission, Windows
from astromesh_ray.errors import RateLimited
from astromesh_ray.serve import auth as gate
from astromesh_ray.serve.auth import RULES, Gate, _walk, current_key
from astromesh_ray.serve.gateway import api
from astromesh_ray.spec.auth import AuthSpec, RateLimitSpec


def test_every_route_of_the_gateway_has_a_rule() -> None:
    """Walks the OpenAPI spec (and the WebSocket routes, which it does not list): a
    new route without a rule would fall to admin-only, silently; this fails first."""
    wanted = {
        (method.upper(), path)
        for path, operations in api.openapi()["paths"].items()
        for method in operations
    }
    routes = list(_walk(api.router))  # what the gate matches requests against
    wanted |= {("WEBSOCKET", r.path) for r in routes if "WEBSOCKET" in r.methods}
    docs = {("GET", p) for p in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")}
    wanted |= docs
    assert {(m, r.path) for r in routes for m in r.methods if m != "HEAD"} == wanted
    assert wanted - set(RULES) == set()
    assert set(RULES) - wanted == set()  # no stale rules
    public = {k for k, rule in RULES.items() if rule.public}
    assert public == {("GET", "/health")}


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/agents/{name}")
    async def agent(name: str) -> dict[str, Any]:
        return {"name": name, "key": current_key().id}

    @app.post("/v1/agents/{name}/run")
    async def run(name: str) -> dict[str, Any]:
        return {"name": name, "key": current_key().id}

    @app.get("/v1/providers")
    async def providers() -> dict[str, Any]:
        return {"providers": []}

    @app.websocket("/v1/ws/agent/{name}")
    async def ws(websocket: WebSocket, name: str) -> None:
        await websocket.accept()
        await websocket.send_json({"key": current_key().id})
        await websocket.close()

    app.add_middleware(Gate, routes=app)
    return app


def _auth(**extra: Any) -> AuthSpec:
    return AuthSpec.model_validate(
        {
            "keys": [
                {"id": "alice", "hash": hash_key("tok-alice"), "agents": ["a"]},
                {"id": "sales", "hash": hash_key("tok-sales"), "namespaces": ["sales"]},
                {
                    "id": "bob",
                    "hash": hash_key("tok-bob"),
                    "agents": ["*"],
                    "rate_limit": {"requests": 2, "window_s": 60},
                },
                {"id": "root", "hash": hash_key("tok-root"), "actions": ["admin"]},
            ],
            **extra,
        }
    )


class _LocalLimiter:
    """The rate-limit actor's logic, in this process."""

    def __init__(self) -> None:
        self.windows = Windows()

    async def check(self, key_id: str, limit: RateLimitSpec) -> Admission:
        admission = self.windows.hit(key_id, limit.requests, limit.window_s)
        if not admission.allowed:
            raise RateLimited("over", retry_after_s=int(admission.retry_after_s) + 1)
        return admission


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.delenv("ASTROMESH_API_KEYS", raising=False)
    gate.configure(_auth(), {"a": "default", "quote": "sales"})
    assert gate._CONFIG is not None
    monkeypatch.setattr(gate._CONFIG, "limiter", _LocalLimiter())
    yield TestClient(_app())
    gate._CONFIG = None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_is_public_and_everything_else_needs_a_key(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    for headers in ({}, _bearer("nope"), {"Authorization": "Basic eDp5"}):
        reply = client.get("/v1/agents/a", headers=headers)
        assert reply.status_code == 401
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert reply.json()["error"]["code"] == "unauthenticated"
    # An unknown route needs a key as well (a 404 tells nothing to strangers).
    assert client.get("/v1/nothing-here").status_code == 401
    assert client.get("/v1/nothing-here", headers=_bearer("tok-alice")).status_code == 404


def test_scopes_by_agent_namespace_and_action(client: TestClient) -> None:
    ok = client.post("/v1/agents/a/run", headers=_bearer("tok-alice"))
    assert ok.status_code == 200 and ok.json() == {"name": "a", "key": "alice"}
    out = client.post("/v1/agents/b/run", headers=_bearer("tok-alice"))
    assert out.status_code == 403 and out.json()["error"]["code"] == "forbidden"
    assert "not scoped to agent 'b'" in out.json()["error"]["message"]
    assert client.get("/v1/agents/quote", headers=_bearer("tok-sales")).status_code == 200
    assert client.get("/v1/agents/a", headers=_bearer("tok-sales")).status_code == 403
    # Admin-only routes.
    assert client.get("/v1/providers", headers=_bearer("tok-alice")).status_code == 403
    assert client.get("/v1/providers", headers=_bearer("tok-root")).status_code == 200


def test_a_rate_limited_key_gets_429_with_retry_after(client: TestClient) -> None:
    codes = [client.post("/v1/agents/a/run", headers=_bearer("tok-bob")) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2].headers["Retry-After"]) >= 1
    assert codes[2].json()["error"]["code"] == "rate_limited"
    # Other keys are counted apart.
    assert client.post("/v1/agents/a/run", headers=_bearer("tok-alice")).status_code == 200


def test_websockets_are_refused_with_a_frame_and_close_code(client: TestClient) -> None:
    with client.websocket_connect("/v1/ws/agent/a") as ws:
        frame = ws.receive_json()
        assert frame["type"] == "error" and frame["error"]["code"] == "unauthenticated"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4401
    with client.websocket_connect("/v1/ws/agent/b", headers=_bearer("tok-alice")) as ws:
        assert ws.receive_json()["error"]["code"] == "forbidden"
    with client.websocket_connect("/v1/ws/agent/a", headers=_bearer("tok-alice")) as ws:
        assert ws.receive_json() == {"key": "alice"}


def test_an_open_server_answers_loopback_clients_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASTROMESH_API_KEYS", raising=False)
    monkeypatch.delenv(gate.INSECURE_ENV, raising=False)
    try:
        gate.configure(AuthSpec(), {"a": "default"})
        remote = TestClient(_app(), client=("10.1.2.3", 5000))
        reply = remote.get("/v1/agents/a")
        assert reply.status_code == 401 and "loopback" in reply.json()["error"]["message"]
        local = TestClient(_app(), client=("127.0.0.1", 5000))
        assert local.get("/v1/agents/a").json() == {"name": "a", "key": "anonymous"}
        monkeypatch.setenv(gate.INSECURE_ENV, "1")  # `astromesh serve --insecure`
        gate.configure(AuthSpec(), {"a": "default"})
        assert remote.get("/v1/agents/a").status_code == 200
    finally:
        gate._CONFIG = None


def test_cors_is_off_by_default_and_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASTROMESH_API_KEYS", raising=False)
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    try:
        gate.configure(_auth(), {"a": "default"})
        off = TestClient(_app()).options("/v1/agents/a/run", headers=preflight)
        assert "access-control-allow-origin" not in off.headers
        gate.configure(_auth(cors={"allow_origins": ["https://app.example.com"]}), {"a": None})
        client = TestClient(_app())
        on = client.options("/v1/agents/a/run", headers=preflight)
        assert on.status_code == 200  # answered before auth: preflights carry no key
        assert on.headers["access-control-allow-origin"] == "https://app.example.com"
        other = client.options(
            "/v1/agents/a/run", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
        # A real request still needs its key, and gets the CORS header.
        reply = client.post(
            "/v1/agents/a/run",
            headers={"Origin": "https://app.example.com", **_bearer("tok-alice")},
        )
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == "https://app.example.com"
    finally:
        gate._CONFIG = None
