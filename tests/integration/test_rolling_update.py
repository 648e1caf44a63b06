"""Rolling updates: `serve deploy` of a Serve config regenerated after one agent's YAML
changed rolls that agent's application alone, and drops no request, of it or of the
others.

A cluster of its own (``deploy_cluster.py``, as `serve deploy` needs the dashboard)
serves two agents, alpha and beta, on one loopback model server that answers after
a fixed delay with the system prompt it was sent, so each answer says which version
of its agent gave it.  Under a steady stream of turns to both agents through the
gateway, alpha's prompt changes, `astromesh deploy-config` writes the file again
(only alpha's revision differs: ``serve/revisions.py``) and `serve deploy` applies
it.  Every turn must be answered, alpha's new prompt must answer, and beta's replica
(and the gateway's) must be the one that served before.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.requests import Request
from starlette.responses import Response

from astromesh_ray.testing import ScriptedOpenAIServer

from .deploy_cluster import ROOT, DeployCluster, cluster_env, deploy_cluster, tool

pytestmark = pytest.mark.integration

# Each model call takes this long: turns are in flight on every replica at any time.
DELAY_S = 0.5
CLIENTS = {"alpha": 2, "beta": 3}
# Answers each agent gives under load before its YAML changes.
WARM_ANSWERS = 3

PROVIDERS = """\
apiVersion: astromesh/v1
kind: ProviderConfig
metadata: {{name: providers}}
spec:
  providers:
    llm: {{type: openai_compat, endpoint: "{url}", models: [m]}}
"""

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: {name}}}
spec:
  identity: {{description: "The {name} agent."}}
  model:
    primary: {{providerRef: llm}}
  prompts:
    system: "{prompt}"
"""

ALPHA_V1, ALPHA_V2, BETA = "You are Alpha, version 1.", "You are Alpha, version 2.", "You are Beta."

_SYSTEM: ContextVar[str] = ContextVar("system", default="")


class EchoingServer(ScriptedOpenAIServer):
    """An OpenAI-compatible server answering every chat call, after ``DELAY_S``, with
    the system prompt it was sent (no script to run out of)."""

    async def _chat(self, request: Request) -> Response:
        try:
            messages = json.loads(await request.body()).get("messages") or []
        except (ValueError, AttributeError):
            messages = []  # the base class answers what OpenAI would
        system = [str(m.get("content")) for m in messages if m.get("role") == "system"]
        _SYSTEM.set(" ".join(system))  # read by _await_step, in this request's task
        return await super()._chat(request)  # Starlette keeps the body for it

    async def _await_step(self) -> dict[str, Any] | None:
        with self._lock:
            self._served += 1
        await asyncio.sleep(DELAY_S)
        return {"content": f"system: {_SYSTEM.get()}"}


@dataclass
class Load:
    """Turns sent to one agent by concurrent clients until ``stop`` is set."""

    url: str
    agent: str
    stop: threading.Event = field(default_factory=threading.Event)
    results: list[tuple[int, str]] = field(default_factory=list)  # (status, answer or body)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> None:
        with httpx.Client(timeout=120) as http:
            while not self.stop.is_set():
                try:
                    reply = http.post(
                        f"{self.url}/v1/agents/{self.agent}/run", json={"query": "hi"}
                    )
                    status = reply.status_code
                    text = reply.json()["answer"] if status == 200 else reply.text
                except httpx.HTTPError as exc:  # a dropped connection is a failed turn
                    status, text = 0, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.results.append((status, text))

    def answers(self) -> list[str]:
        with self._lock:
            return [text for status, text in self.results if status == 200]

    def failures(self) -> list[tuple[int, str]]:
        with self._lock:
            return [(status, text[:300]) for status, text in self.results if status != 200]


def _write_config(conf: Path, url: str, alpha_prompt: str) -> None:
    (conf / "agents").mkdir(parents=True, exist_ok=True)
    (conf / "providers.yaml").write_text(PROVIDERS.format(url=url))
    for name, prompt in (("alpha", alpha_prompt), ("beta", BETA)):
        (conf / "agents" / f"{name}.agent.yaml").write_text(AGENT.format(name=name, prompt=prompt))


def _deploy_config(conf: Path, cluster: DeployCluster, out: Path) -> dict[str, Any]:
    """`astromesh deploy-config` of ``conf`` written to ``out``, and what it wrote."""
    proc = subprocess.run(
        [tool("astromesh"), "deploy-config", "--config", str(conf),
         "--port", str(cluster.http_port)],
        cwd=ROOT, env=cluster_env(cluster.token), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out.write_text(proc.stdout)
    body: dict[str, Any] = yaml.safe_load(proc.stdout)
    return body


def _status(apps: dict[str, Any], app: str) -> str | None:
    status = apps.get(app, {}).get("status")
    return None if status is None else str(status)


def _replicas(apps: dict[str, Any], app: str) -> set[tuple[str, ...]]:
    """``app``'s RUNNING replicas, of every deployment of it: deployment, replica id,
    actor id, process id and start time (a replica restarted has others)."""
    return {
        (
            name,
            *(str(replica.get(key)) for key in ("replica_id", "actor_id", "pid", "start_time_s")),
        )
        for name, deployment in apps[app]["deployments"].items()
        for replica in deployment.get("replicas", [])
        if replica.get("state") == "RUNNING"
    }


def _all_replicas(apps: dict[str, Any], app: str) -> list[dict[str, Any]]:
    return [
        replica
        for deployment in apps[app]["deployments"].values()
        for replica in deployment.get("replicas", [])
    ]


def _answer(url: str, agent: str) -> str | None:
    reply = httpx.post(f"{url}/v1/agents/{agent}/run", json={"query": "hi"}, timeout=30)
    return str(reply.json()["answer"]) if reply.status_code == 200 else None


@pytest.fixture(scope="module")
def cluster() -> Iterator[DeployCluster]:
    with deploy_cluster(num_cpus=2) as running:
        yield running


def test_serve_deploy_rolls_only_the_changed_agent_and_drops_nothing(
    cluster: DeployCluster, tmp_path: Path
) -> None:
    conf = tmp_path / "conf"
    with EchoingServer() as llm:
        _write_config(conf, llm.url, ALPHA_V1)
        first = _deploy_config(conf, cluster, tmp_path / "serve-1.yaml")
        cluster.deploy(tmp_path / "serve-1.yaml")
        url = cluster.url
        cluster.wait_for(
            lambda: (
                _answer(url, "alpha") == f"system: {ALPHA_V1}"
                and _answer(url, "beta") == f"system: {BETA}"
            ),
            "both agents answering after the first serve deploy",
        )
        names = [app["name"] for app in first["applications"]]
        cluster.wait_for(
            lambda: all(_status(cluster.applications(), n) == "RUNNING" for n in names),
            f"every application RUNNING: {names}",
        )
        before = cluster.applications()

        loads = {agent: Load(url, agent) for agent in CLIENTS}
        threads = [
            threading.Thread(target=loads[agent].client, daemon=True, name=f"load-{agent}")
            for agent, count in CLIENTS.items()
            for _ in range(count)
        ]
        for thread in threads:
            thread.start()
        try:
            cluster.wait_for(
                lambda: all(len(load.answers()) >= WARM_ANSWERS for load in loads.values()),
                f"{WARM_ANSWERS} answers from each agent under load",
            )

            # alpha's YAML changes; the regenerated file differs in alpha's revision only.
            _write_config(conf, llm.url, ALPHA_V2)
            second = _deploy_config(conf, cluster, tmp_path / "serve-2.yaml")
            old = {app["name"]: app for app in first["applications"]}
            new = {app["name"]: app for app in second["applications"]}
            assert list(new) == list(old)
            differ = [name for name in new if new[name] != old[name]]
            assert differ == ["agent-alpha"], differ
            alpha_old, alpha_new = dict(old["agent-alpha"]), dict(new["agent-alpha"])
            args_old, args_new = dict(alpha_old.pop("args")), dict(alpha_new.pop("args"))
            assert args_old.pop("revision") != args_new.pop("revision")
            assert (args_old, alpha_old) == (args_new, alpha_new)
            assert {k: v for k, v in second.items() if k != "applications"} == {
                k: v for k, v in first.items() if k != "applications"
            }

            cluster.deploy(tmp_path / "serve-2.yaml")
            old_alpha = _replicas(before, "agent-alpha")

            def rolled() -> bool:
                apps = cluster.applications()
                alpha = _all_replicas(apps, "agent-alpha")
                return (
                    f"system: {ALPHA_V2}" in loads["alpha"].answers()
                    and _status(apps, "agent-alpha") == "RUNNING"
                    and bool(alpha)
                    and all(r.get("state") == "RUNNING" for r in alpha)
                    and not _replicas(apps, "agent-alpha") & old_alpha
                )

            cluster.wait_for(rolled, "alpha's new version answering, its old replica gone")
        finally:
            for load in loads.values():
                load.stop.set()
            for thread in threads:
                thread.join(timeout=120)
        after = cluster.applications()

    for agent, load in loads.items():
        assert load.results, f"no turns to {agent}"
        assert load.failures() == [], f"{agent}: turns not answered during the rollout"
    alpha, beta = loads["alpha"].answers(), loads["beta"].answers()
    assert set(alpha) == {f"system: {ALPHA_V1}", f"system: {ALPHA_V2}"}
    assert set(beta) == {f"system: {BETA}"}

    # beta and the gateway kept their replicas; alpha's were replaced.  (Not
    # last_deployed_time_s: `serve deploy` stamps every application of the file with
    # its time, restarted or not.)
    for app in ("agent-beta", "gateway"):
        assert _replicas(before, app), app
        assert _replicas(after, app) == _replicas(before, app), app
    assert _replicas(after, "agent-alpha").isdisjoint(_replicas(before, "agent-alpha"))
