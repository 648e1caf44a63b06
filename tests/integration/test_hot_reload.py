"""Hot reload on a real local Ray cluster (``serve/reload.py``): one agent's prompt
changed under load from a loop of requests to another agent.  The other agent's
requests all succeed and its replica is the same one; the changed agent answers with
the new prompt; a configuration that does not validate is refused and the running
version stays; a removed agent's application is deleted.  Then the same through
`astromesh apply` (a subprocess joining the cluster) and the `serve --watch` loop."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from astromesh_ray.serve.local import deploy_apps
from astromesh_ray.serve.reload import Refusal, Reloaded, Watcher, reload, wait_for
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedOpenAIServer

ROOT = Path(__file__).resolve().parents[2]

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: {name}}}
spec:
  model:
    primary: {{provider: openai_compat, model: m, endpoint: "{endpoint}"}}
  prompts:
    system: "{prompt}"
  orchestration: {{pattern: react, max_iterations: 2, timeout_seconds: 60}}
"""


def write_agent(root: Path, name: str, endpoint: str, prompt: str) -> Path:
    path = root / "agents" / f"{name}.agent.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(AGENT.format(name=name, endpoint=endpoint, prompt=prompt))
    return path


def replicas(app: str) -> set[str]:
    """The names of the replica actors of ``app`` (a replica's id is in its name)."""
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{app}#")
    }


def replaced(app: str, old: set[str]) -> set[str]:
    """The replicas of ``app`` once those of ``old`` stopped (after a rolling update
    they shut down gracefully, after the new ones run)."""
    deadline = time.monotonic() + 120
    while (now := replicas(app)) & old:
        assert time.monotonic() < deadline, f"{app}: {old} still running"
        time.sleep(0.2)
    assert now, f"{app} has no replica"
    return now


def actions(result: Reloaded | Refusal) -> dict[str, str]:
    assert isinstance(result, Reloaded), result
    return {change.name: change.action for change in result.changes}


def ask(url: str, agent: str, llm: ScriptedOpenAIServer, answer: str) -> str:
    """Run one turn of ``agent``; the system prompt its model call was sent."""
    llm.add_steps(answer)
    reply = httpx.post(f"{url}/v1/agents/{agent}/run", json={"query": "hi"}, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["answer"] == answer
    messages = llm.requests[-1]["messages"]
    assert messages[0]["role"] == "system"
    return str(messages[0]["content"])


@dataclass
class Reply:
    started: float
    ended: float
    status: int
    text: str


class Load:
    """Threads posting turns to one agent until stopped; every reply is kept."""

    def __init__(self, url: str, agent: str, threads: int = 3) -> None:
        self.url, self.agent = url, agent
        self.replies: list[Reply] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = client.post(
                        f"{self.url}/v1/agents/{self.agent}/run", json={"query": "ping"}
                    )
                except httpx.HTTPError as exc:  # a dropped request: recorded, not hidden
                    with self._lock:
                        self.errors.append(repr(exc))
                    continue
                with self._lock:
                    self.replies.append(Reply(started, time.monotonic(), r.status_code, r.text))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)

    def count(self) -> int:
        with self._lock:
            return len(self.replies) + len(self.errors)

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + 120
        while self.count() < n:
            assert time.monotonic() < deadline, "the load loop stalled"
            time.sleep(0.1)


@pytest.fixture
def servers() -> Iterator[tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]]:
    # beta answers every turn after a short delay: turns are in flight while alpha reloads.
    with (
        ScriptedOpenAIServer() as alpha,
        ScriptedOpenAIServer([{"content": "pong", "delay_s": 0.2}] * 5000) as beta,
    ):
        yield alpha, beta
        beta.discard_remaining()


def _cleanup(names: set[str]) -> None:
    running = serve.status().applications
    # The gateway first, then agents, then providers: no new requests to what goes.
    for name in sorted(names & set(running), key=lambda n: (n != "gateway", n.startswith("p"))):
        serve.delete(name)


def test_one_agent_reloads_under_load_on_another(
    serve_url: str,
    tmp_path: Path,
    servers: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer],
) -> None:
    llm_a, llm_b = servers
    alpha = write_agent(tmp_path, "alpha", llm_a.url, "You are alpha, version one.")
    write_agent(tmp_path, "beta", llm_b.url, "You are beta.")
    created = set(deploy_apps(load_config(tmp_path), config_dir=tmp_path))
    try:
        assert set(wait_for(created, 180).values()) == {"RUNNING"}
        assert ask(serve_url, "alpha", llm_a, "a1") == "You are alpha, version one."
        beta_replicas, gateway_replicas = replicas("agent-beta"), replicas("gateway")
        alpha_replicas = replicas("agent-alpha")
        assert beta_replicas and gateway_replicas and alpha_replicas

        with Load(serve_url, "beta") as load:
            load.wait_for(6)
            reload_started = time.monotonic()
            alpha.write_text(alpha.read_text().replace("version one", "version two"))
            result = reload(tmp_path)
            reload_ended = time.monotonic()
            done = load.count()
            load.wait_for(done + 6)  # and beta goes on answering after it

        changes = actions(result)
        assert isinstance(result, Reloaded) and changes["agent-alpha"] == "changed"
        unchanged = {name for name, action in changes.items() if action == "unchanged"}
        assert unchanged == set(changes) - {"agent-alpha"}
        assert {"agent-beta", "gateway"} <= unchanged
        assert all(c.status == "RUNNING" for c in result.changes), result.changes

        # Every turn to beta succeeded, some of them in flight across the reload.
        assert load.errors == []
        assert load.replies and all(r.status == 200 for r in load.replies), [
            r.text for r in load.replies if r.status != 200
        ][:3]
        assert all(json.loads(r.text)["answer"] == "pong" for r in load.replies)
        assert any(r.started < reload_started and r.ended > reload_started for r in load.replies)
        assert any(r.started > reload_ended for r in load.replies)
        # beta and the gateway kept their replicas; alpha got a new one.
        assert replicas("agent-beta") == beta_replicas
        assert replicas("gateway") == gateway_replicas
        alpha_now = replaced("agent-alpha", alpha_replicas)  # a new replica
        assert ask(serve_url, "alpha", llm_a, "a2") == "You are alpha, version two."

        # A file that does not validate: refused with its errors; alpha runs on as it was.
        good = alpha.read_text()
        alpha.write_text(good.replace("version two", "version three") + "  bogus: 1\n")
        refused = reload(tmp_path)
        assert isinstance(refused, Refusal)
        assert any("alpha.agent.yaml" in line and "bogus" in line for line in refused.lines)
        assert refused.lines[-1] == "1 error(s)"
        # A build error too (an unknown builtin tool: check_buildable).
        alpha.write_text(good + "  tools:\n    - {name: no_such_tool, type: builtin}\n")
        refused = reload(tmp_path)
        assert isinstance(refused, Refusal) and refused.lines[0].startswith("error: ")
        assert replicas("agent-alpha") == alpha_now
        assert ask(serve_url, "alpha", llm_a, "a3") == "You are alpha, version two."

        # An agent added under load: the gateway, which lists agents, is redeployed
        # too; beta's turns (through the gateway) still all succeed.
        alpha.write_text(good)
        write_agent(tmp_path, "gamma", llm_a.url, "You are gamma.")
        with Load(serve_url, "beta") as load:
            load.wait_for(6)
            result = reload(tmp_path)
            load.wait_for(load.count() + 6)
        changes = actions(result)
        assert changes["agent-gamma"] == "added" and changes["gateway"] == "changed"
        assert changes["agent-beta"] == changes["agent-alpha"] == "unchanged"
        assert load.errors == []
        assert [r.text for r in load.replies if r.status != 200] == []
        assert replicas("agent-beta") == beta_replicas
        assert ask(serve_url, "gamma", llm_a, "g1") == "You are gamma."
        created |= set(changes)

        # beta removed: its application is deleted; alpha stays as it is.
        (tmp_path / "agents" / "beta.agent.yaml").unlink()
        result = reload(tmp_path)
        changes = actions(result)
        assert changes["agent-beta"] == "removed"
        assert changes["gateway"] == "changed"  # it no longer lists beta
        assert changes["agent-alpha"] == "unchanged"
        apps = serve.status().applications
        assert "agent-beta" not in apps
        assert not [n for n, a in changes.items() if a == "removed" and n in apps]
        assert replicas("agent-alpha") == alpha_now
        gone = httpx.post(f"{serve_url}/v1/agents/beta/run", json={"query": "hi"}, timeout=30)
        assert gone.status_code == 404, gone.text
        assert ask(serve_url, "alpha", llm_a, "a4") == "You are alpha, version two."
        created |= set(changes)
    finally:
        _cleanup(created)


def apply_cli(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "astromesh_ray.cli", "apply", str(root),
         "--address", ray.get_runtime_context().gcs_address],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def table(output: str) -> dict[str, str]:
    """APPLICATION -> CHANGE of `apply`'s table."""
    lines = output.rstrip("\n").splitlines()
    assert lines[0].split() == ["APPLICATION", "CHANGE", "STATUS", "NOTE"], output
    return {row[0]: row[1] for row in map(str.split, lines[1:-1])}  # the last: a summary


def test_apply_from_another_process_and_the_watch_loop(
    serve_url: str,
    tmp_path: Path,
    servers: tuple[ScriptedOpenAIServer, ScriptedOpenAIServer],
) -> None:
    llm_a, llm_b = servers
    alpha = write_agent(tmp_path, "alpha", llm_a.url, "Alpha one.")
    write_agent(tmp_path, "beta", llm_b.url, "Beta one.")
    created = set(deploy_apps(load_config(tmp_path), config_dir=tmp_path))
    try:
        assert set(wait_for(created, 180).values()) == {"RUNNING"}
        beta_replicas, alpha_replicas = replicas("agent-beta"), replicas("agent-alpha")
        # Nothing changed: another process sees the same fingerprints.
        done = apply_cli(tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert set(table(done.stdout).values()) == {"unchanged"}, done.stdout
        assert set(table(done.stdout)) == created
        assert replicas("agent-alpha") == alpha_replicas
        assert done.stdout.rstrip().endswith(
            f"0 added, 0 changed, 0 removed, {len(created)} unchanged"
        )

        alpha.write_text(alpha.read_text().replace("Alpha one.", "Alpha two."))
        done = apply_cli(tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        rows = table(done.stdout)
        assert rows["agent-alpha"] == "changed"
        assert {a for n, a in rows.items() if n != "agent-alpha"} == {"unchanged"}, done.stdout
        assert ask(serve_url, "alpha", llm_a, "a1") == "Alpha two."
        alpha_replicas = replaced("agent-alpha", alpha_replicas)

        # Refused: the errors as `validate` prints them, exit 2, nothing changed.
        good = alpha.read_text()
        alpha.write_text(good.replace("Alpha two.", "Alpha three.") + "  bogus: 1\n")
        done = apply_cli(tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "alpha.agent.yaml" in done.stderr and "1 error(s)" in done.stderr
        assert "nothing was changed" in done.stderr
        assert replicas("agent-alpha") == alpha_replicas
        assert ask(serve_url, "alpha", llm_a, "a2") == "Alpha two."

        # `serve --watch`: the loop reloads a changed file (once it settled).
        alpha.write_text(good)
        out, err = io.StringIO(), io.StringIO()
        watcher = Watcher(tmp_path, out=out, err=err)
        assert watcher.poll() is None
        alpha.write_text(good.replace("Alpha two.", "Alpha four."))
        result = None
        for _ in range(20):
            result = watcher.poll()
            if result is not None:
                break
            time.sleep(0.2)
        assert result is not None and actions(result)["agent-alpha"] == "changed", out.getvalue()
        assert actions(result)["agent-beta"] == "unchanged"
        assert "agent-alpha" in out.getvalue() and err.getvalue() == ""
        assert watcher.apps is not None and set(watcher.apps) == created
        assert ask(serve_url, "alpha", llm_a, "a3") == "Alpha four."

        # The loop itself, in a thread: a broken file is refused and the loop goes on.
        stop = threading.Event()
        thread = threading.Thread(target=watcher.run, kwargs={"interval_s": 0.2, "stop": stop})
        thread.start()
        try:
            alpha.write_text("apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: alpha\n")
            deadline = time.monotonic() + 60
            while "the running version stays" not in err.getvalue():
                assert time.monotonic() < deadline, err.getvalue()
                time.sleep(0.2)
        finally:
            stop.set()
            thread.join(timeout=120)
        assert not thread.is_alive()
        assert replicas("agent-beta") == beta_replicas
        assert ask(serve_url, "alpha", llm_a, "a4") == "Alpha four."
    finally:
        _cleanup(created)
