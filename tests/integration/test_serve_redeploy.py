"""A redeploy on a real local Ray cluster deletes the applications of an earlier
deployment that the config dropped (``serve/local.py``), and nobody else's."""

from __future__ import annotations

from pathlib import Path

import httpx
from ray import serve
from starlette.requests import Request

from astromesh_ray.serve.local import deploy_apps
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedOpenAIServer

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
spec:
  model:
    primary:
      providerRef: llm
  prompts:
    system: "Be brief."
  tools:
    - name: calculator
      type: builtin
"""

PROVIDERS = """\
apiVersion: astromesh/v1
kind: ProviderConfig
metadata:
  name: providers
spec:
  providers:
    llm:
      type: openai_compat
      endpoint: "{url}"
      models: [scripted-model]
      deployment: {{mode: dedicated}}  # an application of its own, to be dropped
"""


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Foreign:
    """Someone else's application on the same Serve instance."""

    def __init__(self, answer: str) -> None:
        self.answer = answer

    async def __call__(self, request: Request) -> str:
        return self.answer


def _providers(apps: list[str]) -> list[str]:
    return [name for name in apps if name.startswith("provider-")]


def test_redeploy_deletes_only_our_apps_that_the_config_dropped(
    serve_url: str, tmp_path: Path
) -> None:
    (tmp_path / "agents").mkdir()
    for name in ("alpha", "beta"):
        (tmp_path / "agents" / f"{name}.agent.yaml").write_text(AGENT.format(name=name))
    created: list[str] = []
    with ScriptedOpenAIServer() as old, ScriptedOpenAIServer(["from the new endpoint"]) as new:
        (tmp_path / "providers.yaml").write_text(PROVIDERS.format(url=old.url))
        try:
            serve.run(Foreign.bind("foreign"), name="foreign", route_prefix="/foreign")  # type: ignore[attr-defined]
            # A name like ours, but not our deployment inside: not ours either.
            serve.run(Foreign.bind("imposter"), name="agent-imposter", route_prefix="/imposter")  # type: ignore[attr-defined]
            created += ["foreign", "agent-imposter"]
            first = deploy_apps(load_config(tmp_path), config_dir=tmp_path)
            created += first
            assert {"agent-alpha", "agent-beta", "gateway"} <= set(first)
            (old_provider,) = _providers(first)

            # beta leaves the config; alpha's provider moves to another endpoint.
            (tmp_path / "agents" / "beta.agent.yaml").unlink()
            (tmp_path / "providers.yaml").write_text(PROVIDERS.format(url=new.url))
            second = deploy_apps(load_config(tmp_path), config_dir=tmp_path)
            created += second
            (new_provider,) = _providers(second)
            assert new_provider != old_provider

            apps = serve.status().applications
            assert "agent-beta" not in apps and old_provider not in apps
            assert set(second) <= set(apps)
            for name in ("foreign", "agent-imposter"):
                assert apps[name].status == "RUNNING", name
            assert httpx.get(f"{serve_url}/foreign", timeout=30).text == "foreign"
            assert httpx.get(f"{serve_url}/imposter", timeout=30).text == "imposter"

            # What is left serves the new config.
            reply = httpx.post(f"{serve_url}/v1/agents/alpha/run", json={"query": "hi"}, timeout=60)
            assert reply.status_code == 200, reply.text
            assert reply.json()["answer"] == "from the new endpoint"
            assert old.requests == []
            new.assert_consumed()
            gone = httpx.post(f"{serve_url}/v1/agents/beta/run", json={"query": "hi"}, timeout=30)
            assert gone.status_code == 404, gone.text
        finally:
            running = serve.status().applications
            for name in reversed(list(dict.fromkeys(created))):
                if name in running:
                    serve.delete(name)
