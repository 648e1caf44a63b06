"""A Ray cluster of its own for the `serve deploy` tests, as a user runs one: `ray
start --head` with the dashboard (which `serve deploy` and `serve status` talk to)
in a private temp dir, with its own token, stopped afterwards by killing exactly
that cluster's processes (`ray stop` would stop every Ray on the machine, the test
session's too)."""

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
# The `ray`, `serve` and `astromesh` commands of the interpreter running the tests
# (make test calls .venv/bin/python without activating the venv).
BIN = Path(sys.executable).parent
WAIT_S = 180.0


def tool(name: str) -> str:
    """The path of command ``name``: the test interpreter's, else the PATH's."""
    return shutil.which(name, path=str(BIN)) or shutil.which(name) or name


def cluster_env(token: str) -> dict[str, str]:
    """The environment of a cluster's processes and of the commands that talk to it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "RAY_ADDRESS")}
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        # Ray's token auth, with this cluster's own token for `ray start` and `serve`.
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # No network here: an ONNX fallback must fail fast and say so, without trying
        # to reach the Hugging Face Hub.
        HF_HUB_OFFLINE="1",
    )
    return env


def stop_cluster(temp_dir: Path) -> None:
    """Kill the processes started under ``temp_dir`` (one cluster's), and no other."""
    out = subprocess.run(["pgrep", "-f", str(temp_dir)], capture_output=True, text=True).stdout
    for pid in (int(p) for p in out.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class DeployCluster:
    """A running cluster: its dashboard (for `serve`) and Serve's HTTP port."""

    dashboard: str
    http_port: int
    token: str

    @property
    def url(self) -> str:
        """Base URL of Serve's HTTP proxy (once something is deployed)."""
        return f"http://127.0.0.1:{self.http_port}"

    def serve(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`serve <args> -a <dashboard>`, as a user runs it."""
        return subprocess.run(
            [tool("serve"), *args, "-a", self.dashboard],
            cwd=ROOT, env=cluster_env(self.token), capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    def deploy(self, config_file: Path) -> None:
        """`serve deploy config_file`; it returns once the controller has the config."""
        # The dashboard's job API comes up a little after `ray start` returns.
        deadline = time.monotonic() + WAIT_S
        while (deploy := self.serve("deploy", str(config_file))).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"serve deploy failed:\n{deploy.stderr[-3000:]}")
            time.sleep(2)

    def status(self) -> str:
        """What `serve status` prints."""
        done = self.serve("status")
        return done.stdout + done.stderr

    def applications(self) -> dict[str, Any]:
        """Serve's details of every application (the dashboard's REST API that `serve
        status` reads): status, last_deployed_time_s, deployments and their replicas."""
        reply = httpx.get(
            f"{self.dashboard}/api/serve/applications/",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60,
        )
        reply.raise_for_status()
        apps: dict[str, Any] = reply.json().get("applications") or {}
        return apps

    def wait_for(self, check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
        """Poll ``check`` until true; past ``timeout_s``, fail saying ``what`` with
        `serve status` (an HTTP error while Serve starts counts as not yet)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if check():
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"not within {timeout_s:.0f} s: {what}\n{self.status()}")
            time.sleep(1)


@contextlib.contextmanager
def deploy_cluster(num_cpus: int = 2) -> Iterator[DeployCluster]:
    """A head node with the dashboard, in a private temp dir; stopped afterwards."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rdt", dir="/tmp"))  # short: Ray's socket paths
    token = secrets.token_hex(32)
    dashboard = free_port()
    try:
        subprocess.run(
            [tool("ray"), "start", "--head", "--port=0", f"--num-cpus={num_cpus}",
             "--include-dashboard=true", f"--dashboard-port={dashboard}",
             f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            cwd=ROOT, env=cluster_env(token), check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        yield DeployCluster(f"http://127.0.0.1:{dashboard}", free_port(), token)
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
