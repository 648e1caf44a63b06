"""A real local Ray cluster and Ray Serve, started once per test session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from astromesh_ray.testing import ScriptedOpenAIServer

ROOT = Path(__file__).resolve().parents[2]
# Before Ray starts: listeners on loopback, no usage stats, and workers that can
# import the test helpers (tools referenced by `function:` in test agents).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)


# A provider API key every replica of the session's cluster has in its environment
# (set before Ray starts): a test checks it reaches the model server and no log.
PROVIDER_KEY_ENV = "ASTROMESH_TEST_PROVIDER_KEY"
PROVIDER_KEY = "sk-test-provider-secret-8c1f0e2a9b7d4c63"
os.environ.setdefault(PROVIDER_KEY_ENV, PROVIDER_KEY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def serve_url() -> Iterator[str]:
    """Base URL of Serve's HTTP proxy on a local Ray cluster."""
    import ray
    from ray import serve

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=150 * 1024 * 1024,
        namespace="astromesh-tests",
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    """A scripted OpenAI-compatible model server on loopback, for one test module (a
    module may define its own ``llm`` instead)."""
    with ScriptedOpenAIServer() as server:
        yield server


@contextmanager
def deployed(root: Path) -> Iterator[list[str]]:
    """The configuration directory ``root`` deployed on the session's Serve (as
    ``astromesh serve`` deploys it), its applications deleted afterwards."""
    from ray import serve

    from astromesh_ray.serve.local import deploy_apps
    from astromesh_ray.spec import load_config

    apps = deploy_apps(load_config(root), config_dir=root)
    try:
        yield apps
    finally:
        for name in reversed(apps):
            serve.delete(name)


REACT = "  orchestration: {pattern: react, max_iterations: 4, timeout_seconds: 60}\n"


def agent_yaml(name: str, endpoint: str, body: str, orchestration: str = REACT) -> str:
    """An agent file: ``name``, one ``openai_compat`` model ``m`` at ``endpoint``,
    ``orchestration`` (default: react, 4 calls, 60 s), then ``body`` (more ``spec``
    keys, indented two spaces)."""
    return (
        "apiVersion: astromesh/v1\nkind: Agent\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        "  model:\n"
        f'    primary: {{provider: openai_compat, model: m, endpoint: "{endpoint}"}}\n'
        + orchestration
        + body
    )
