"""The cluster-wide circuit breaker off the hot path, on real Serve: two agent
replicas, a primary and a fallback provider (real HTTP servers on loopback).

- The breaker actor exists, with this agent's health probes registered, as soon as
  the applications are deployed; it probes each remote API itself (the agents call
  them from their replicas: no provider application).
- While breakers are closed a model call makes no Ray round trip: the breaker actor
  answers no call on the hot path.
- Killing the breaker actor fails no turn, not even one whose primary fails and falls
  back; a new actor is created.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from astromesh_ray.serve.local import deploy_apps
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedOpenAIServer
from tests.integration.breaker_helpers import (
    breaker,
    hot_calls,
    model_route,
    subscribers,
    wait_caught_up,
)

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: steady
spec:
  model:
    primary:
      {{provider: openai_compat, model: steady-primary, endpoint: "{primary}", max_retries: 0}}
    fallback:
      {{provider: openai_compat, model: steady-backup, endpoint: "{backup}", max_retries: 0}}
    routing:
      circuit_breaker: {{failure_threshold: 3, cooldown_s: 60}}
      health_check_interval: 1
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
def deployed(
    serve_url: str,
    servers: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, list[str]]]:
    root: Path = tmp_path_factory.mktemp("breaker")
    (root / "agents").mkdir()
    primary, backup = servers
    (root / "agents" / "steady.agent.yaml").write_text(
        AGENT.format(primary=primary.url, backup=backup.url)
    )
    apps = deploy_apps(load_config(root), config_dir=root)
    try:
        yield serve_url, apps
    finally:
        for name in reversed(apps):
            serve.delete(name)


def run(api: str) -> dict[str, Any]:
    reply = httpx.post(
        f"{api}/v1/agents/steady/run",
        json={"query": "hi", "session_id": "breaker-session"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def wait_for(condition: Any, what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def test_the_breaker_actor_is_ready_at_deploy_time_and_probes_providers(
    deployed: tuple[str, list[str]],
) -> None:
    _, apps = deployed
    # Remote APIs: called from the agent's replicas, no provider application.
    assert [a for a in apps if a.startswith("provider-")] == []
    # No request has been made: the builders created the actor and registered the
    # agent's probes (health_check_interval: 1) while deploying.
    probes = ray.get(breaker().probes.remote(), timeout=30)
    probed = sorted(a for a in probes if "steady" in a)
    assert len(probed) == 2, probes
    for name in probed:
        assert probes[name]["interval_s"] == 1.0
        assert probes[name]["breakers"][0]["failure_threshold"] == 3

    def probed_healthy() -> bool:
        seen = ray.get(breaker().probes.remote(), timeout=30)
        return all(seen[a]["probes"] >= 1 and seen[a]["healthy"] is True for a in probed)

    # The actor itself probes each remote API, with a client of its own.
    wait_for(probed_healthy, "the breaker actor probed both remote APIs")


def test_closed_breakers_add_no_ray_round_trip(
    deployed: tuple[str, list[str]], servers: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]
) -> None:
    api, _ = deployed
    primary, backup = servers
    before_calls, before_requests = hot_calls(), len(primary.requests)
    replicas: dict[str, int] = {}
    turns = 0
    # Several turns, until both agent replicas served at least two (bounded).
    while (len(replicas) < 2 or min(replicas.values()) < 2) and turns < 40:
        primary.add_steps(f"answer {turns}")
        body = run(api)
        assert body["answer"] == f"answer {turns}"
        route = model_route(body)
        assert (route[0]["outcome"], route[0]["breaker"]) == ("ok", "closed")
        replica = body["where"]["replica"]
        replicas[replica] = replicas.get(replica, 0) + 1
        turns += 1
    assert len(replicas) == 2, f"only {replicas} served in {turns} turns"
    primary.assert_consumed()
    # Each turn made exactly one model call, which reached the provider once ...
    assert len(primary.requests) - before_requests == turns
    assert backup.requests == []
    # ... and cost no call to the breaker actor (no allow, no success): a model call
    # makes no Ray round trip at all (the API's client is in the agent replica).
    assert hot_calls() == before_calls
    # Both replicas hold a copy, kept fresh by their pending poll.
    wait_caught_up(at_least=2)


def test_a_killed_breaker_actor_fails_no_turn_and_is_recreated(
    deployed: tuple[str, list[str]], servers: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]
) -> None:
    api, _ = deployed
    primary, backup = servers
    primary.add_steps("before the kill")
    assert run(api)["answer"] == "before the kill"

    old = breaker()
    old_epoch = subscribers()["epoch"]
    ray.kill(old)  # no restart: the actor is gone for good

    # The primary fails: the router reports it to the (dead) breaker actor, which
    # fails open, and the turn falls back to the backup instead of failing.
    primary.add_steps({"status": 500, "error": "boom"})
    backup.add_steps("the backup answers")
    body = run(api)
    assert body["answer"] == "the backup answers"
    route = model_route(body)
    assert route[0]["outcome"].startswith("failed:") and route[1]["outcome"] == "ok"
    primary.assert_consumed()
    backup.assert_consumed()

    # The replicas' subscriptions create a new actor (a new epoch) and follow it.
    def recreated() -> bool:
        try:
            return bool(subscribers()["epoch"] != old_epoch)
        except (ValueError, ray.exceptions.RayActorError):
            return False  # not there yet, or the dead one still answering to the name

    wait_for(recreated, "a new breaker actor exists")
    wait_caught_up(at_least=1)
    primary.add_steps("after the kill")
    assert run(api)["answer"] == "after the kill"
