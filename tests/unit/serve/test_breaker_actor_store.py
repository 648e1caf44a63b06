"""``ActorBreakerStore`` (every call to the actor; the baseline) over an in-process
board, and failing open when the actor is gone."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from astromesh_ray.core.breaker import BreakerPolicy
from astromesh_ray.serve.breaker import ActorBreakerStore, agent_probes
from astromesh_ray.serve.providers import provider_app_name
from astromesh_ray.spec import load_config, resolve_models
from tests.unit.serve.test_breaker_cache import FakeActor

POLICY = BreakerPolicy(failure_threshold=1, cooldown_s=60)


async def test_every_call_reaches_the_actor() -> None:
    actor = FakeActor()
    store = ActorBreakerStore(actor)
    assert await store.allow("p", POLICY) == (True, "closed")
    assert await store.success("p", POLICY) == "closed"
    assert await store.failure("p", POLICY, "boom") == "open"
    assert await store.allow("p", POLICY) == (False, "open")
    await store.release("p", POLICY)
    assert (await store.snapshot())["p"][0]["state"] == "open"
    assert await actor.board.calls() == {
        "allow": 2,
        "success": 1,
        "failure": 1,
        "release": 1,
        "snapshot": 1,
    }


async def test_a_dead_actor_fails_open_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    actor = FakeActor()
    store = ActorBreakerStore(actor)
    await store.failure("p", POLICY)
    actor.kill()
    caplog.set_level(logging.WARNING, logger="astromesh.breaker")
    for _ in range(3):
        assert await store.allow("p", POLICY) == (True, "closed")  # open, but unknowable
        assert await store.failure("p", POLICY) == "closed"
        assert await store.success("p", POLICY) == "closed"
        await store.release("p", POLICY)
    assert await store.snapshot() == {}
    assert len([r for r in caplog.records if "fail open" in r.getMessage()]) == 1
    actor.recreate()
    assert await store.allow("p", POLICY) == (True, "closed")
    assert any("reachable again" in r.getMessage() for r in caplog.records)


AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: probed
spec:
  model:
    primary: {provider: openai_compat, model: a-model, endpoint: "http://127.0.0.1:9/v1"}
    fallback: {provider: openai_compat, model: b-model, endpoint: "http://127.0.0.1:9/v1"}
    routing:
      circuit_breaker: {failure_threshold: 4, cooldown_s: 30}
      health_check_interval: 15
"""


def test_agent_probes_name_each_provider_app_with_the_routers_policy(tmp_path: Path) -> None:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "probed.agent.yaml").write_text(AGENT)
    loaded = load_config(tmp_path)
    agent = loaded.agents["probed"]
    probes = agent_probes(agent, loaded.providers, loaded.routing)
    endpoints = resolve_models(agent, loaded.providers)
    assert sorted(p.app for p in probes) == sorted(provider_app_name(e) for e in endpoints)
    assert {(p.policy, p.interval_s) for p in probes} == {(BreakerPolicy(4, 30.0), 15.0)}
    # Remote APIs called from the agent's replicas: the prober asks the API itself.
    assert {p.endpoint for p in probes if p.endpoint} == set(endpoints)
    # Without a health_check_interval nothing is probed.
    quiet = AGENT.replace("      health_check_interval: 15\n", "")
    (tmp_path / "agents" / "probed.agent.yaml").write_text(quiet)
    loaded = load_config(tmp_path)
    assert agent_probes(loaded.agents["probed"], loaded.providers, loaded.routing) == []
