"""Per-agent autoscaling from YAML, on the session's cluster.

- Under a bounded load (threads, each with one turn in flight, against a loopback
  model that takes ``DELAY_S`` per answer), an agent with ``min_replicas: 1,
  max_replicas: 3, target_ongoing_requests: 1`` grows past one replica, and shrinks
  back to one after the load stops.
- An agent with ``min_replicas: 0`` starts with no replica, answers its first turn
  after a cold start, and goes back to none when idle.

Every assertion is on the replica counts ``serve.status()`` reports (and the
answers), never on how long anything took; the waits are bounded only so that a
broken autoscaler fails the test instead of hanging it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve

from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import agent_yaml, deployed

pytestmark = pytest.mark.integration

DELAY_S = 2.0
CLIENTS = 6
WAIT_S = 120.0
ELASTIC = """  deployment:
    autoscaling_config:
      min_replicas: 1
      max_replicas: 3
      target_ongoing_requests: 1
      upscale_delay_s: 1
      downscale_delay_s: 2
"""
SLEEPY = """  deployment:
    autoscaling_config:
      min_replicas: 0
      max_replicas: 1
      upscale_delay_s: 0
      downscale_delay_s: 1
      downscale_to_zero_delay_s: 1
"""


def running(app: str) -> int:
    """Replicas of ``app``'s agent deployment that Serve reports RUNNING."""
    deployment = serve.status().applications[app].deployments["agent"]
    return int(deployment.replica_states.get("RUNNING", 0))  # type: ignore[call-overload]


def replicas(app: str) -> int:
    """Every replica of ``app``'s agent deployment, whatever its state."""
    deployment = serve.status().applications[app].deployments["agent"]
    return sum(deployment.replica_states.values())


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT_S:.0f} s: {what}"
        time.sleep(1)


@pytest.fixture(scope="module")
def apps(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ScriptedOpenAIServer() as llm:
        root: Path = tmp_path_factory.mktemp("autoscaling")
        (root / "agents").mkdir()
        for name, body in (("elastic", ELASTIC), ("sleepy", SLEEPY)):
            text = agent_yaml(name, llm.url, body)
            (root / "agents" / f"{name}.agent.yaml").write_text(text)
        # More answers than the load can use: what is left is discarded at the end.
        llm.add_steps(*[{"content": "ok", "delay_s": DELAY_S} for _ in range(400)])
        with deployed(root):
            yield serve_url
        llm.discard_remaining()


def test_an_agent_scales_out_under_load_and_back_in(apps: str) -> None:
    app = "agent-elastic"
    assert running(app) == 1
    stop = threading.Event()
    answers: list[int] = []

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                reply = http.post(f"{apps}/v1/agents/elastic/run", json={"query": "hi"})
                answers.append(reply.status_code)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    most = 1
    try:

        def scaled_out() -> bool:
            nonlocal most
            most = max(most, running(app))
            return most > 1

        wait_until(scaled_out, "more than one RUNNING replica under load")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert 1 < most <= 3
    assert answers and set(answers) == {200}  # every turn of the load was answered
    # Idle again: back to the minimum, and nothing else left starting or stopping.
    wait_until(lambda: replicas(app) == running(app) == 1, "back to one replica")


def test_an_agent_scales_to_zero_and_back(apps: str) -> None:
    app = "agent-sleepy"
    wait_until(lambda: replicas(app) == 0, "no replica before any traffic")
    # The cold start: the turn waits while Serve starts a replica for it.
    reply = httpx.post(f"{apps}/v1/agents/sleepy/run", json={"query": "hi"}, timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"] == "ok"
    assert {span["where"].get("app") for span in body["trace"]} >= {app}  # a replica of it
    wait_until(lambda: replicas(app) == 0, "scaled back to zero when idle")
