"""Patterns benchmark: a ``parallel_fan_out`` turn of 8 branches against one of a
single branch, each model call taking 200 ms, through real Serve.

One run of this script starts a local Ray cluster and Serve on a free loopback port
(as ``serve_path.py`` does) and deploys, as ``serve/builders.py`` plans them, two
agents and the gateway:

- ``fanout-1``: ``parallel_fan_out`` with 1 YAML branch (the baseline);
- ``fanout-8``: the same agent with 8 YAML branches.

Both have 2 replicas (``deployment: {num_replicas: 2}``) and one ``openai_compat``
model, a ``ScriptedOpenAIServer`` in a child process whose every answer waits
``delay_s: 0.2`` first.  A turn of either is the branches (one model call each, at
the same time) and then the synthesizer (one call): about 400 ms of model time for
both, if the branches really run at once.  The turns are sent one at a time over
HTTP (client -> Serve proxy -> gateway -> agent replica), alternating the two
agents, after a warm-up; every reply must be HTTP 200 with the scripted answer, and
the model server must have received one request per branch and one for the
synthesizer.

It prints the machine, each agent's median and p90 turn time, the ratio of the
medians (the goal: at most 1.25), and from each reply's ``task`` steps how long the
branches took as a whole (first start to last end) against the one branch, and on
how many agent replicas the branches ran.

    .venv/bin/python benchmarks/patterns.py
    .venv/bin/python benchmarks/patterns.py --turns 10   # quicker
"""

from __future__ import annotations

import os

import harness
from serve_load import MODEL, Child, _model_server

# Before Ray is imported: every listener on loopback, no usage stats (DESIGN.md §7).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray

QUERY = "Review the options."
BRANCH_ANSWER = "One branch's findings."
ANSWER = "The merged answer."
DELAY_S = 0.2  # every model call (--delay)
BRANCHES = 8  # of the fan-out measured (--branches)
TURNS = 20  # timed turns per agent (--turns)
WARMUP = 3  # untimed (but checked) turns per agent
REQUEST_TIMEOUT_S = 60.0
GOAL = 1.25

AGENT_YAML = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
spec:
  model:
    primary: {{provider: openai_compat, model: {model}, endpoint: "{url}", max_retries: 0}}
  orchestration:
    pattern: parallel_fan_out
    max_iterations: {max_iterations}
    timeout_seconds: 30
    branches:
{branches}
  deployment:
    num_replicas: 2
"""


def agent_yaml(name: str, branches: int, url: str) -> str:
    listed = "\n".join(
        f"      - {{name: part-{i}, task: 'Part {i} of {{{{ query }}}}'}}"
        for i in range(1, branches + 1)
    )
    return AGENT_YAML.format(
        name=name, model=MODEL, url=url, max_iterations=branches + 1, branches=listed
    )


# -- the measurement ---------------------------------------------------------------------


@dataclass
class Figures:
    """One agent's timed turns."""

    branches: int
    turn_s: list[float] = field(default_factory=list)
    branches_s: list[float] = field(default_factory=list)  # first branch start to last end
    replicas: set[str] = field(default_factory=set)  # agent replicas its branches ran on
    split_turns: int = 0  # turns whose branches ran on more than one replica

    def median_ms(self, values: list[float] | None = None) -> float:
        return statistics.median(values if values is not None else self.turn_s) * 1e3

    def p90_ms(self) -> float:
        return statistics.quantiles(self.turn_s, n=10, method="inclusive")[8] * 1e3


def one_turn(
    client: httpx.Client, url: str, model: Child, figures: Figures, delay_s: float
) -> None:
    """Script, send and check one turn; record its times in ``figures``."""
    branch = {"content": BRANCH_ANSWER, "delay_s": delay_s}
    model.ask("steps", [branch] * figures.branches + [{"content": ANSWER, "delay_s": delay_s}])
    started = time.perf_counter()
    reply = client.post(url, json={"query": QUERY})
    elapsed = time.perf_counter() - started
    if reply.status_code != 200:
        raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:500]}")
    body: dict[str, Any] = reply.json()
    if body.get("answer") != ANSWER:
        raise RuntimeError(f"unexpected answer {body.get('answer')!r}")
    taken, left = model.ask("take")
    if taken != figures.branches + 1 or left:
        raise RuntimeError(
            f"the model server got {taken} requests ({left} scripted answers left); "
            f"expected {figures.branches + 1}"
        )
    tasks = [s for s in body["steps"] if s.get("type") == "task"]
    if len(tasks) != figures.branches or any(s["is_error"] for s in tasks):
        raise RuntimeError(f"expected {figures.branches} branches that answered: {tasks}")
    start = min(s["start_time"] for s in tasks)
    end = max(s["start_time"] + s["duration_ms"] / 1e3 for s in tasks)
    replicas = {s["where"].get("replica", s["where"].get("pid", "?")) for s in tasks}
    figures.turn_s.append(elapsed)
    figures.branches_s.append(end - start)
    figures.replicas |= replicas
    figures.split_turns += len(replicas) > 1


def report(base: Figures, fan: Figures, delay_s: float) -> None:
    ratio = fan.median_ms() / base.median_ms()
    branch_ratio = fan.median_ms(fan.branches_s) / base.median_ms(base.branches_s)
    print(f"\nturn time, {len(base.turn_s)} timed turns per agent (one at a time):")
    print(f"{'agent':<34} {'median':>9} {'p90':>9} {'branches':>10} {'replicas':>9}")
    for name, f in (("fanout-1 (1 branch, baseline)", base), (f"fanout-{fan.branches}", fan)):
        print(
            f"{name:<34} {f.median_ms():7.1f}ms {f.p90_ms():7.1f}ms "
            f"{f.median_ms(f.branches_s):8.1f}ms {len(f.replicas):>9}"
        )
    print(
        f"\n{fan.branches} branches / 1 branch, median turn: {ratio:.2f}x "
        f"(goal <= {GOAL:.2f}x: {'met' if ratio <= GOAL else 'NOT met'})"
    )
    print(
        f"the branches alone (first start to last end): {branch_ratio:.2f}x; "
        f"model time per turn: {2 * delay_s * 1e3:.0f} ms for both if the branches overlap"
    )
    print(
        f"the {fan.branches} branches of a turn ran on {len(fan.replicas)} agent replica(s) "
        f"over the run ({fan.split_turns} of {len(fan.turn_s)} turns spread over more than one)"
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--turns", type=int, default=TURNS, help="timed turns per agent")
    parser.add_argument("--branches", type=int, default=BRANCHES, help="branches of the fan-out")
    parser.add_argument("--delay", type=float, default=DELAY_S, help="seconds per model call")
    args = parser.parse_args(argv)
    if args.turns < 2 or args.branches < 2:
        parser.error("at least 2 turns and 2 branches")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    started = time.perf_counter()
    for line in harness.machine(f", Ray {ray.__version__}", gpu_note=" (not used)"):
        print(line)
    print(
        f"workload: parallel_fan_out of {args.branches} branches against 1 branch, every "
        f"model call {args.delay * 1e3:.0f} ms (ScriptedOpenAIServer in a child process), "
        f"2 agent replicas each; {WARMUP} warm-up and {args.turns} timed turns per agent, "
        "one at a time, alternating; HTTP through the Serve proxy and the gateway"
    )
    model = Child(_model_server)
    base, fan = Figures(1), Figures(args.branches)
    try:
        _, model_url = model.recv(timeout_s=60)
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            (root / "agents").mkdir()
            for f in (base, fan):
                (root / "agents" / f"fanout-{f.branches}.agent.yaml").write_text(
                    agent_yaml(f"fanout-{f.branches}", f.branches, model_url)
                )
            with harness.served(root) as url:
                if url is None:
                    return 2
                with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
                    for f in (base, fan):
                        for _ in range(WARMUP):
                            one_turn(
                                client,
                                f"{url}/v1/agents/fanout-{f.branches}/run",
                                model,
                                Figures(f.branches),
                                args.delay,
                            )
                    for i in range(args.turns):
                        # ABBA: neither agent always goes first.
                        order = (base, fan) if i % 2 == 0 else (fan, base)
                        for f in order:
                            one_turn(
                                client,
                                f"{url}/v1/agents/fanout-{f.branches}/run",
                                model,
                                f,
                                args.delay,
                            )
    finally:
        model.close()
    report(base, fan, args.delay)
    print(f"\nload average at the end: {harness.load_average()}")
    print(f"run took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
