"""Serve applications that go missing or fail, over real HTTP: a deleted provider
application is a provider failure the router falls back from, and a deleted or
failed agent application is a 503: in our error envelope from the gateway (a deleted
application's routes reach it), in Serve's words from the proxy for the routes of an
application that failed to deploy (it keeps its route prefix)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
from ray import serve
from ray.serve import Deployment

from astromesh_ray.serve.agents import AgentDeployment
from astromesh_ray.serve.builders import BUILDERS, plan, provider_endpoints
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedOpenAIServer

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
spec:
  model:
    primary: {{providerRef: primary-entry}}
    fallback: {{provider: openai_compat, model: backup-model, endpoint: "{backup}"}}
    routing:
      circuit_breaker: {{failure_threshold: 3, cooldown_s: 60}}
  orchestration: {{max_iterations: 2, timeout_seconds: 30}}
  tools:
    - name: calculator
      type: builtin
    - name: slow_echo
      type: internal
      function: "tests.integration.tool_functions:slow_echo"
  permissions:
    allowed_actions: [calculator]
"""

# Its model is a provider entry: deployed below without the entries, its replicas
# fail in their constructor, as a broken deploy would.
BROKEN = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: broken
spec:
  model:
    primary: {providerRef: backup-entry}
"""

PROVIDERS = """\
apiVersion: astromesh/v1
kind: ProviderConfig
metadata:
  name: providers
spec:
  providers:
    backup-entry:
      type: openai_compat
      endpoint: "{backup}"
      models: [backup-model]
    # Its own application (a remote API is otherwise called from the agent replicas),
    # so that deleting it is a provider failure to fall back from.
    primary-entry:
      type: openai_compat
      endpoint: "{primary}"
      models: [primary-model]
      deployment: {{mode: dedicated}}
"""

PRIMARY_MODEL = "primary-model"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]]:
    with ScriptedOpenAIServer() as primary, ScriptedOpenAIServer() as backup:
        yield primary, backup


@pytest.fixture(scope="module")
def deployed(
    serve_url: str,
    servers: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, str]]]:
    """The gateway URL and the primary provider's application name."""
    root: Path = tmp_path_factory.mktemp("failures")
    (root / "agents").mkdir()
    primary, backup = servers
    for name in ("resilient", "doomed"):
        text = AGENT.format(name=name, backup=backup.url)
        (root / "agents" / f"{name}.agent.yaml").write_text(text)
    (root / "agents" / "broken.agent.yaml").write_text(BROKEN)
    (root / "providers.yaml").write_text(PROVIDERS.format(backup=backup.url, primary=primary.url))
    loaded = load_config(root)
    apps: list[str] = []
    try:
        for app in plan(loaded, str(root)):
            apps.append(app.name)
            if app.name != "agent-broken":
                application = BUILDERS[app.builder](app.args)
                serve.run(application, name=app.name, route_prefix=app.route_prefix)
                continue
            broken = cast(Deployment, AgentDeployment).bind(loaded.agents["broken"], {})
            with pytest.raises(RuntimeError, match="Deploying application agent-broken failed"):
                serve.run(broken, name=app.name, route_prefix=app.route_prefix)
        assert serve.status().applications["agent-broken"].status == "DEPLOY_FAILED"
        primary_app = next(
            name
            for name, endpoint in provider_endpoints(loaded).items()
            if endpoint.model == PRIMARY_MODEL
        )
        yield serve_url, {"primary": primary_app}
    finally:
        for name in reversed(apps):
            serve.delete(name)


def test_deleted_primary_provider_app_falls_back_and_counts_a_failure(
    deployed: tuple[str, dict[str, str]],
    servers: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer],
) -> None:
    url, names = deployed
    primary, backup = servers
    # First through the primary, so the agent replica holds a handle to it.
    primary.add_steps("from the primary")
    reply = httpx.post(f"{url}/v1/agents/resilient/run", json={"query": "hi"}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["answer"] == "from the primary"

    serve.delete(names["primary"])
    backup.add_steps("from the backup")
    reply = httpx.post(f"{url}/v1/agents/resilient/run", json={"query": "hi"}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"] == "from the backup"
    model_call = next(s for s in body["trace"] if s["name"] == "model_call")
    first, second = model_call["attributes"]["route"]
    assert first["candidate"] == names["primary"]
    assert first["outcome"].startswith("failed: ")
    assert f"provider deployment {names['primary']!r} unavailable" in first["outcome"]
    assert second["outcome"] == "ok" and second["reason"] == "fallback"
    backup.assert_consumed()

    # The router counted it against the primary's (cluster-wide) breaker.
    providers = httpx.get(f"{url}/v1/providers", timeout=30).json()["providers"]
    by_name = {p["name"]: p for p in providers}
    assert by_name[names["primary"]]["breaker"]["consecutive_failures"] >= 1
    assert by_name[names["primary"]]["healthy"] is False


def test_deleted_agent_app_is_503_agent_unavailable(deployed: tuple[str, dict[str, str]]) -> None:
    url, _ = deployed
    assert httpx.get(f"{url}/v1/agents/doomed").status_code == 200
    serve.delete("agent-doomed")
    for path in ("run", "stream"):
        reply = httpx.post(f"{url}/v1/agents/doomed/{path}", json={"query": "hi"}, timeout=60)
        assert reply.status_code == 503, reply.text
        error = reply.json()["error"]
        assert error["code"] == "agent_unavailable"
        assert "agent-doomed" in error["message"] and "serve status" in error["hint"]
    # Describing the agent needs no replica.
    assert httpx.get(f"{url}/v1/agents/doomed").status_code == 200


def test_failed_agent_app_is_503_agent_unavailable(deployed: tuple[str, dict[str, str]]) -> None:
    """A failed agent application keeps its route prefix, so Serve's proxy answers the
    agent's own routes itself: 503 in Serve's words (no replica of ours runs to say
    more).  The gateway's routes to the agent answer in our envelope."""
    url, _ = deployed
    reply = httpx.post(f"{url}/v1/agents/broken/run", json={"query": "hi"}, timeout=60)
    assert reply.status_code == 503, reply.text
    assert "app='agent-broken'" in reply.text and "failed to deploy" in reply.text
    reply = httpx.get(f"{url}/v1/memory/broken/sessions", timeout=60)
    assert reply.status_code == 503, reply.text
    error = reply.json()["error"]
    assert error["code"] == "agent_unavailable"
    assert "DEPLOY_FAILED" in error["message"]


def test_agent_description_lists_only_permitted_tools_and_no_server_path(
    deployed: tuple[str, dict[str, str]],
) -> None:
    url, _ = deployed
    described = httpx.get(f"{url}/v1/agents/resilient").json()
    assert described["tools"] == ["calculator"]  # slow_echo is not in allowed_actions
    assert described["source"] == "resilient.agent.yaml"
