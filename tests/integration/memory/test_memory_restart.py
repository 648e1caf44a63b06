"""A session's memory survives a restart of the whole ``astromesh serve`` (its own Ray
cluster, stopped with Ctrl-C and started again, as a user runs it): the SQLite
history and the FAISS index (snapshot by its owner actor) are both still there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from astromesh_ray.testing import ScriptedOpenAIServer

from ..conftest import free_port

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as server:
        yield server


def write_config(root: Path, endpoint: str, port: int) -> None:
    (root / "agents").mkdir(parents=True)
    (root / "runtime.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "astromesh/v1",
                "kind": "RuntimeConfig",
                "metadata": {"name": "restart"},
                "spec": {
                    "api": {"host": "127.0.0.1", "port": port},
                    "ray": {"num_cpus": 2},
                    "memory": {"data_dir": "state"},  # relative: under the config dir
                },
            }
        )
    )
    agent = {
        "apiVersion": "astromesh/v1",
        "kind": "Agent",
        "metadata": {"name": "keeper"},
        "spec": {
            "model": {"primary": {"provider": "openai_compat", "model": "m", "endpoint": endpoint}},
            "memory": {
                "conversational": {"backend": "sqlite"},
                "semantic": {"backend": "faiss", "index_turns": True},
            },
        },
    }
    (root / "agents" / "keeper.agent.yaml").write_text(yaml.safe_dump(agent))


class Serving:
    """``astromesh serve`` in a subprocess, until ``stop``."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "astromesh_ray.cli", "serve", "--config", str(config)],
                cwd=ROOT,
                env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 240
        while "Ctrl-C to stop." not in log.read_text():
            assert self.proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                assert self.proc.wait(timeout=120) == 0, self.log.read_text()[-3000:]
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()


def test_history_and_semantic_memory_survive_a_restart_of_astromesh_serve(
    tmp_path: Path, llm: ScriptedOpenAIServer
) -> None:
    port = free_port()
    config = tmp_path / "config"
    write_config(config, llm.url, port)
    api = f"http://127.0.0.1:{port}"
    llm.add_steps("Noted: 7.", "It was 7.")

    first = Serving(config, tmp_path / "first.log")
    try:
        reply = httpx.post(
            f"{api}/v1/agents/keeper/run",
            json={"query": "My lucky number is 7.", "session_id": "s-restart"},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
    finally:
        first.stop()
    assert (config / "state" / "memory.sqlite3").is_file()

    second = Serving(config, tmp_path / "second.log")
    try:
        reply = httpx.post(
            f"{api}/v1/agents/keeper/run",
            json={"query": "What is my lucky number?", "session_id": "s-restart"},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        sent = [(m["role"], m["content"]) for m in llm.requests[-1]["messages"]]
        assert [m for m in sent if m[0] != "system"] == [
            ("user", "My lucky number is 7."),
            ("assistant", "Noted: 7."),
            ("user", "What is my lucky number?"),
        ]
        found = httpx.post(
            f"{api}/v1/memory/keeper/semantic/search",
            json={"query": "lucky number", "session_id": "s-restart", "threshold": 0.1},
            timeout=60,
        )
        assert found.status_code == 200, found.text
        texts = [h["text"] for h in found.json()["hits"]]
        assert any("My lucky number is 7." in t for t in texts), texts
    finally:
        second.stop()
