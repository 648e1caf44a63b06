"""`astromesh serve --address` on a running cluster, as a user runs it (a subprocess):
it serves the agents it loads ($ASTROMESH_AGENTS_DIR included) and, on Ctrl-C,
deletes only its own applications; Ray, Serve and other applications keep running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ray
from ray import serve
from starlette.requests import Request

ROOT = Path(__file__).resolve().parents[2]

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: joiner
spec:
  model:
    primary: {provider: openai_compat, model: m, endpoint: "http://127.0.0.1:9/v1"}
"""


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Bystander:
    """Someone else's application on the same cluster."""

    async def __call__(self, request: Request) -> str:
        return "still here"


def test_serve_on_a_joined_cluster_deletes_only_its_own_apps(
    serve_url: str, tmp_path: Path
) -> None:
    serve.run(Bystander.bind(), name="bystander", route_prefix="/bystander")  # type: ignore[attr-defined]
    config = tmp_path / "config"  # runtime and providers only: no agents/ here
    config.mkdir()
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "joiner.agent.yaml").write_text(AGENT)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "astromesh_ray.cli", "serve",
             "--address", ray.get_runtime_context().gcs_address,
             "--config", str(config), "--port", serve_url.rsplit(":", 1)[1]],
            cwd=ROOT, env={**os.environ, "ASTROMESH_AGENTS_DIR": str(agents)},
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C to stop." not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        # The agent came from $ASTROMESH_AGENTS_DIR, in the CLI and in the replicas.
        reply = httpx.get(f"{serve_url}/v1/agents/joiner", timeout=30)
        assert reply.status_code == 200, reply.text
        assert "agent-joiner" in serve.status().applications

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        apps = serve.status().applications
        assert "agent-joiner" not in apps and "gateway" not in apps
        assert not any(name.startswith("provider-") for name in apps)
        # Serve, its proxy and the other application are still there.
        assert apps["bystander"].status == "RUNNING"
        assert httpx.get(f"{serve_url}/bystander", timeout=30).text == "still here"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        serve.delete("bystander")
