"""The model router and its cluster-wide circuit breaker on real Serve: two agent
replicas, a failing primary and a healthy fallback, both real HTTP servers.

Replicas keep a copy of the breakers, refreshed by a long poll: after a state change
the test waits until every subscribed replica has seen the breaker actor's new
version (``breaker_helpers.wait_caught_up``), never for a fixed time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from astromesh_ray.serve.local import deploy_apps
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedOpenAIServer
from tests.integration.breaker_helpers import breaker, model_route, wait_caught_up

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: guarded
spec:
  model:
    primary:
      {{provider: openai_compat, model: primary-model, endpoint: "{primary}", max_retries: 0}}
    fallback:
      {{provider: openai_compat, model: backup-model, endpoint: "{backup}", max_retries: 0}}
    routing:
      circuit_breaker: {{failure_threshold: 2, cooldown_s: 60}}
  orchestration: {{max_iterations: 2, timeout_seconds: 30}}
  deployment:
    num_replicas: 2
    ray_actor_options: {{num_cpus: 0}}
"""


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]]:
    with ScriptedOpenAIServer() as primary, ScriptedOpenAIServer() as backup:
        yield primary, backup


@pytest.fixture(scope="module")
def api(
    serve_url: str,
    servers: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("router")
    (root / "agents").mkdir()
    primary, backup = servers
    (root / "agents" / "guarded.agent.yaml").write_text(
        AGENT.format(primary=primary.url, backup=backup.url)
    )
    apps = deploy_apps(load_config(root), config_dir=root)
    try:
        yield serve_url
    finally:
        for name in reversed(apps):
            serve.delete(name)


def run(api: str) -> dict[str, object]:
    reply = httpx.post(f"{api}/v1/agents/guarded/run", json={"query": "hi"}, timeout=60)
    assert reply.status_code == 200, reply.text
    body: dict[str, object] = reply.json()
    return body


def test_breaker_is_shared_by_replicas_and_probes_after_cooldown(
    api: str, servers: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]
) -> None:
    primary, backup = servers
    primary.add_steps({"status": 500, "error": "boom"}, {"status": 503, "error": "overloaded"})
    backup.add_steps(*[f"backup answer {i}" for i in range(12)])

    # Two failures (whichever replicas served them) open the primary's circuit:
    # failures always reach the breaker actor.
    for i in range(2):
        body = run(api)
        assert body["answer"] == f"backup answer {i}"
    primary.assert_consumed()
    calls_to_primary = len(primary.requests)

    providers = httpx.get(f"{api}/v1/providers").json()["providers"]
    by_model = {p["model"]: p for p in providers}
    assert by_model["primary-model"]["breaker"]["state"] == "open"
    assert by_model["primary-model"]["breaker"]["trips"] == 1
    assert [b["state"] for b in by_model["primary-model"]["breakers"]] == ["open"]
    assert by_model["backup-model"]["breaker"]["state"] == "closed"
    assert by_model["backup-model"]["healthy"] is True

    # Every replica's copy shows the open circuit before the next turns (a replica
    # that has not subscribed yet fetches its first copy before its first call).
    wait_caught_up()

    # Open: no replica calls the primary any more; both replicas keep answering.
    replicas = set()
    for i in range(2, 12):
        body = run(api)
        assert body["answer"] == f"backup answer {i}"
        route = model_route(body)
        assert route[0]["outcome"] == "skipped: circuit open"
        replicas.add(body["where"]["replica"])  # type: ignore[index]
    assert len(replicas) == 2, "both agent replicas must have served while the circuit was open"
    assert len(primary.requests) == calls_to_primary
    backup.assert_consumed()

    # After the cooldown (the breaker actor's clock, not a 60 s sleep) one probe goes
    # to the primary; it succeeds and closes the circuit.
    ray.get(breaker().advance_clock.remote(61))
    wait_caught_up()
    primary.add_steps("primary is back")
    body = run(api)
    assert body["answer"] == "primary is back"
    route = model_route(body)
    assert route[0]["breaker"] == "closed" and route[0]["outcome"] == "ok"
    states = {
        p["model"]: p["breaker"]["state"]
        for p in httpx.get(f"{api}/v1/providers").json()["providers"]
    }
    assert states["primary-model"] == "closed"
