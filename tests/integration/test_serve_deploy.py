"""`ray start` + `serve deploy deployments/local.yaml`, as a user deploys on a cluster.

It runs its own Ray cluster (with the dashboard, which `serve deploy` talks to) in
a private temp dir, and stops exactly that cluster's processes afterwards.  The
committed config serves the example agent; with no Ollama and no OPENAI_API_KEY
here, a turn must answer 502 with a hint naming what to start or set.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
# The `ray` and `serve` commands of the interpreter running the tests (make test
# calls .venv/bin/python without activating the venv).
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    return shutil.which(name, path=str(BIN)) or shutil.which(name) or name


_TOKEN = secrets.token_hex(32)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "RAY_ADDRESS")}
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        # Ray's token auth, with this cluster's own token for `ray start` and `serve`.
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=_TOKEN,
        # No network here: the example's ONNX fallback must fail fast and say so,
        # without trying to reach the Hugging Face Hub.
        HF_HUB_OFFLINE="1",
    )
    return env


def _stop_cluster(temp_dir: Path) -> None:
    # `ray stop` would stop every Ray on the machine (the test session's too):
    # kill only the processes started under this cluster's temp dir.
    out = subprocess.run(["pgrep", "-f", str(temp_dir)], capture_output=True, text=True).stdout
    for pid in (int(p) for p in out.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    temp_dir = Path(tempfile.mkdtemp(prefix="rdt", dir="/tmp"))  # short: Ray's socket paths
    dashboard, http = free_port(), free_port()
    config = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    config["http_options"]["port"] = http
    config_file = tmp_path_factory.mktemp("deploy") / "serve.yaml"
    config_file.write_text(yaml.safe_dump(config))
    try:
        subprocess.run(
            [_tool("ray"), "start", "--head", "--port=0", "--num-cpus=2",
             "--include-dashboard=true", f"--dashboard-port={dashboard}",
             f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        # The dashboard's job API comes up a little after `ray start` returns.
        for _ in range(30):
            deploy = subprocess.run(
                [_tool("serve"), "deploy", "-a", f"http://127.0.0.1:{dashboard}", str(config_file)],
                cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            if deploy.returncode == 0:
                break
            time.sleep(2)
        assert deploy.returncode == 0, deploy.stderr[-3000:]
        url = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/v1/agents/assistant", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                status = subprocess.run(
                    [_tool("serve"), "status", "-a", f"http://127.0.0.1:{dashboard}"],
                    env=_env(), capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                pytest.fail(f"serve deploy did not come up in 180 s:\n{status.stdout}")
            time.sleep(1)
        yield url
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_serve_deploy_serves_the_example_agent(deployed: str) -> None:
    listed = httpx.get(f"{deployed}/v1/agents").json()["agents"]
    assert [a["name"] for a in listed] == ["assistant"]
    assert listed[0]["tools"] == ["datetime_now", "calculator"]


def test_no_reachable_provider_is_502_naming_what_to_start_or_set(deployed: str) -> None:
    reply = httpx.post(
        f"{deployed}/v1/agents/assistant/run", json={"query": "What is 17 * 23?"}, timeout=120
    )
    assert reply.status_code == 502, reply.text
    error = reply.json()["error"]
    assert error["code"] == "provider_error"
    assert "ollama serve" in error["hint"] and "ollama pull llama3.1:8b" in error["hint"]
    assert "OPENAI_API_KEY" in error["hint"]
    assert "onnx-community/Qwen2.5-0.5B-Instruct" in error["message"]  # the third candidate
    assert [s["candidate"].split("-")[1] for s in error["route"]] == ["ollama", "openai", "onnx"]
