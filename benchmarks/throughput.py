"""Throughput benchmark: agent turns per second and their p50/p99 latency through the
full stack, at 1, 8, 32 and 128 concurrent clients, against the bare Serve chain with
the same hops, the one-hop floor, and the same agent in LangGraph served by uvicorn;
and what the gateway hop costs, against the agent application's own route.

One run starts a local Ray cluster and Serve on a free loopback port and deploys one
agent (``react``, no tools, a system prompt, one model call per turn), its provider
application and the gateway, as ``serve/builders.py`` plans them.  The model is a
``ScriptedOpenAIServer`` in a child process; every answer waits a fixed latency first
(``--latency-ms``, 20 by default).  The clients are another child process (asyncio
``httpx``, one connection each, posting ``{"query"}``), so neither shares the GIL
with anything else.  Variants, each a URL the clients post to (``chains.py``):

1. full stack: ``POST /v1/agents/bench/run``: proxy -> gateway -> agent -> provider
   -> model server;
2. the agent's own route: the same agent replica answering HTTP itself (its
   application given a ``route_prefix``): proxy -> agent -> provider -> model
   server, what a ``route_prefix`` per agent would give;
3. tiny ingress: proxy -> an ingress deployment that only calls the agent's handle
   -> agent -> provider -> model server: the gateway's hops without its work;
4. bare chain (the floor): proxy -> ingress -> agent-like -> provider-like
   deployment, each forwarding, the last calling the same model server with a
   pooled ``httpx`` client (not sleeping: the floor holds the same model latency
   and the same HTTP call as ours, everything but our code);
5. one hop: proxy -> one deployment calling the model server;
6. LangGraph + uvicorn: ``create_react_agent`` over a chat model calling the same
   model server, behind a FastAPI route, one uvicorn worker, a child process of its
   own (``langgraph_server.py``).

Each floor's deployments take as many requests at once as their counterparts
(``max_ongoing_requests``: gateway 200, agent 100, provider 100).  Each concurrency
level runs every variant in blocks; the rounds take the variants in declared order,
then reversed (ABC CBA), so load from elsewhere and drift fall on all alike.  Before
a block the script waits until the cluster is quiet, then sends untimed (but checked)
warm-up turns.  Every reply is checked (HTTP 200, the scripted answer), and so is the
number of model calls: one per turn.  It prints req/s, p50 and p99 per variant and
level, the ratios against the bare chain and LangGraph, the gateway's cost, and the
CPU time each process used per turn (where the time goes).

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --requests 60 --rounds 2 --clients 1,32  # quick
"""

from __future__ import annotations

import os

import harness
import langgraph_server
from serve_load import ANSWER, MODEL, Child, _model_server
from stack_load import (
    DRIVER,
    LOAD,
    MODEL_SERVER,
    PEER,
    ROLES,
    SHORT,
    Block,
    Figures,
    cpu_times,
    cpu_used,
    load_generator,
    ratio,
    schedule,
    settle,
)

# Before Ray is imported: every listener on loopback, no usage stats (DESIGN.md §7).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import chains
import httpx
import ray
from ray import cloudpickle, serve

from astromesh_ray.spec import load_config

LEVELS = (1, 8, 32, 128)
LATENCY_MS = 20.0
REQUESTS = 150  # timed turns per block, at least (--requests); 6 per client if more
ROUNDS = 4  # blocks per variant and level (--rounds; even: see ``schedule``)
FIRST_WARMUP = 200  # untimed turns per variant before the first level, at 8 clients
AGENT = "bench"
THROUGHPUT_GOAL = 0.8  # x the bare chain's req/s, at least
P99_GOAL = 1.5  # x the bare chain's p99, at most
PEER_LEVEL = 32  # the LangGraph comparison's concurrency

GATEWAY = "full stack (gateway)"
DIRECT = "agent's own route"
TINY = "tiny ingress"
BARE = "bare chain"
ONE_HOP = "one hop"
LANGGRAPH = "LangGraph + uvicorn"

AGENT_YAML = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
spec:
  model:
    primary: {{provider: openai_compat, model: {model}, endpoint: "{url}", max_retries: 0}}
  prompts:
    system: "{system}"
  orchestration: {{pattern: react, max_iterations: 2, timeout_seconds: 60}}
"""


def timed_turns(base: int, clients: int) -> int:
    return max(base, 6 * clients)


def warm_turns(clients: int) -> int:
    return max(20, clients)


class Run:
    """The child processes, the variants' URLs, and their figures by level."""

    def __init__(self, urls: Mapping[str, str], model: Child, load: Child, latency_s: float):
        self.urls = urls
        self.model = model
        self.load = load
        self.step = {"content": ANSWER, "delay_s": latency_s}
        self.known: dict[int, str] = {
            os.getpid(): DRIVER,
            cast(int, model.process.pid): MODEL_SERVER,
            cast(int, load.process.pid): LOAD,
        }
        self.figures: dict[int, dict[str, Figures]] = {}

    def turns(self, name: str, n: int, clients: int) -> Block:
        """``n`` turns of variant ``name`` from ``clients`` clients, every reply and
        the number of model calls checked."""
        self.model.ask("steps", [self.step] * n)
        block: Block = self.load.ask("block", self.urls[name], n, clients)
        taken, left = self.model.ask("take")
        if block.errors:
            shown = "; ".join(sorted(set(block.errors))[:5])
            raise RuntimeError(f"{name}: {len(block.errors)} of {n} turns failed: {shown}")
        if taken != n or left:
            raise RuntimeError(f"{name}: {taken} model calls for {n} turns ({left} left)")
        return block

    def block(self, name: str, clients: int, n: int) -> None:
        busy = settle(self.known)
        self.turns(name, warm_turns(clients), clients)
        before = cpu_times(self.known)
        block = self.turns(name, n, clients)
        after = cpu_times(self.known)
        self.figures.setdefault(clients, {}).setdefault(name, Figures())
        self.figures[clients][name].add(block, cpu_used(before, after))
        lat = sorted(block.latencies)
        print(
            f"  {name:<22}{n / block.wall_s:>7.1f} req/s  p50 {lat[len(lat) // 2] * 1e3:7.1f} ms"
            f"  load {os.getloadavg()[0]:.2f} (settled at {busy:.2f} cores)",
            flush=True,
        )


def wait_until_up(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the LangGraph server at {url} did not come up")
        time.sleep(0.2)


# -- report ------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(figures: Mapping[int, Mapping[str, Figures]]) -> None:
    for clients, by_name in figures.items():
        base = by_name[BARE]
        f0 = next(iter(by_name.values()))
        print(
            f"\n{clients} client{'s' if clients > 1 else ''}: {f0.turns} timed turns per "
            f"variant ({len(f0.block_rates)} blocks); x bare = this / bare chain"
        )
        print(
            f"  {'variant':<22}{'req/s':>7}{'blocks':>10}{'p50':>9}{'p99':>9}"
            f"{'x bare: req/s':>15}{'p50':>6}{'p99':>6}{'CPU/turn':>10}{'cores':>6}"
        )
        for name, f in by_name.items():
            blocks = f"{min(f.block_rates):.0f}-{max(f.block_rates):.0f}"
            print(
                f"  {name:<22}{f.rate:>7.1f}{blocks:>10}{f.pct_ms(50):>7.1f}ms"
                f"{f.pct_ms(99):>7.1f}ms{ratio(f.rate, base.rate):>15}"
                f"{ratio(f.pct_ms(50), base.pct_ms(50)):>6}"
                f"{ratio(f.pct_ms(99), base.pct_ms(99)):>6}"
                f"{f.total_cpu_ms():>8.1f}ms{f.cores_busy():>6.2f}"
            )
        print("  CPU ms per turn by process (user + system):")
        print(f"    {'variant':<22}" + "".join(f"{SHORT[r]:>9}" for r in ROLES))
        for name, f in by_name.items():
            print(f"    {name:<22}" + "".join(f"{f.cpu_ms(r):>9.2f}" for r in ROLES))

    print("\nGoals (issue 13), from this run:")
    for clients, by_name in figures.items():
        f, base = by_name[GATEWAY], by_name[BARE]
        tput, p99 = f.rate / base.rate, f.pct_ms(99) / base.pct_ms(99)
        print(
            f"  {clients:>3} clients: full stack {tput:.2f}x the bare chain's req/s (goal >= "
            f"{THROUGHPUT_GOAL}: {verdict(tput >= THROUGHPUT_GOAL)}), {p99:.2f}x its p99 (goal "
            f"<= {P99_GOAL}: {verdict(p99 <= P99_GOAL)})"
        )
    peer = figures.get(PEER_LEVEL, {})
    if LANGGRAPH in peer:
        f, lg = peer[GATEWAY], peer[LANGGRAPH]
        print(
            f"  {PEER_LEVEL} clients: full stack {f.rate / lg.rate:.2f}x LangGraph + uvicorn's "
            f"req/s ({f.rate:.1f} against {lg.rate:.1f}: goal ahead, "
            f"{verdict(f.rate > lg.rate)}); p50 {ratio(f.pct_ms(50), lg.pct_ms(50))}x, "
            f"p99 {ratio(f.pct_ms(99), lg.pct_ms(99))}x"
        )
    if 1 in figures and ONE_HOP in figures[1]:
        f, hop = figures[1][GATEWAY], figures[1][ONE_HOP]
        print(
            f"  1 client: full stack p50 {f.pct_ms(50):.1f} ms, "
            f"{ratio(f.pct_ms(50), hop.pct_ms(50))}x the one-hop floor's {hop.pct_ms(50):.1f} "
            "ms (the hop budget's goal after the cuts: <= 1.5x)"
        )

    print("\nThe gateway hop: the same agent replica through the gateway, against its own")
    print("route (no gateway hop) and against a tiny ingress (the same hops, no gateway work)")
    for clients, by_name in figures.items():
        f, own, tiny = by_name[GATEWAY], by_name[DIRECT], by_name[TINY]
        print(
            f"  {clients:>3} clients: own route {own.rate / f.rate:.2f}x the gateway's req/s, "
            f"p50 {f.pct_ms(50) - own.pct_ms(50):+.1f} ms and CPU "
            f"{f.total_cpu_ms() - own.total_cpu_ms():+.1f} ms per turn through the gateway; "
            f"tiny ingress {tiny.rate / f.rate:.2f}x, p50 {f.pct_ms(50) - tiny.pct_ms(50):+.1f} "
            f"ms, CPU {f.total_cpu_ms() - tiny.total_cpu_ms():+.1f} ms"
        )


# -- main --------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="timed turns per block")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="blocks per variant (even)")
    parser.add_argument("--latency-ms", type=float, default=LATENCY_MS, help="model latency")
    parser.add_argument(
        "--clients", default=",".join(map(str, LEVELS)), help="concurrency levels, e.g. 1,32"
    )
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",")]
    if args.requests < 2 or args.rounds < 2 or args.rounds % 2 or not levels:
        parser.error("at least 2 requests per block, and an even number of rounds")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    started = time.perf_counter()
    for line in harness.machine(f", Ray {ray.__version__}", gpu_note=" (not used)"):
        print(line)
    missing = langgraph_server.available()
    names = [GATEWAY, DIRECT, TINY, BARE, ONE_HOP] + ([] if missing else [LANGGRAPH])
    if missing:
        print(f"{LANGGRAPH}: comparison skipped: {missing}")
    else:
        print(f"{LANGGRAPH}: {langgraph_server.versions()}")
    print(
        f"workload: model latency {args.latency_ms:g} ms per answer; per level and variant "
        f"{args.rounds} blocks of max({args.requests}, 6 x clients) timed turns, each after "
        f"max(20, clients) warm-up turns; rounds alternate the order of the variants"
    )
    model = Child(_model_server)
    load = Child(load_generator)
    peer: Child | None = None
    try:
        _, model_url = model.recv(timeout_s=60)
        load.recv(timeout_s=60)
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            (root / "agents").mkdir()
            (root / "agents" / f"{AGENT}.agent.yaml").write_text(
                AGENT_YAML.format(name=AGENT, model=MODEL, url=model_url, system=chains.SYSTEM)
            )
            loaded = load_config(root)
            url = harness.start_ray()
            if url is None:
                return 2
            try:
                cloudpickle.register_pickle_by_value(chains)  # type: ignore[no-untyped-call]
                direct = chains.agent_application(loaded, AGENT, body=chains.DirectAgent)
                planned = chains.deploy_stack(loaded, str(root), direct, chains.DIRECT_ROUTE)
                provider_hop = any(app.builder == "provider_app" for app in planned)
                chains.deploy_floors(model_url, AGENT, provider_hop)
                print(f"plan: {chains.hops(planned)}")
                print(
                    "max_ongoing_requests: "
                    + ", ".join(f"{k} {v}" for k, v in chains.limits().items())
                )
                urls = {
                    GATEWAY: f"{url}/v1/agents/{AGENT}/run",
                    DIRECT: f"{url}{chains.DIRECT_ROUTE}",
                    TINY: f"{url}{chains.TINY_ROUTE}",
                    BARE: f"{url}{chains.BARE_ROUTE}",
                    ONE_HOP: f"{url}{chains.ONE_HOP_ROUTE}",
                }
                run = Run(urls, model, load, args.latency_ms / 1e3)
                if not missing:
                    peer = langgraph_server.start(model_url, chains.SYSTEM)
                    peer_pid, peer_url = peer.recv(timeout_s=120)
                    wait_until_up(peer_url)
                    run.known[peer_pid] = PEER
                    urls[LANGGRAPH] = f"{peer_url}/run"
                print(f"warm-up: {FIRST_WARMUP} turns per variant at 8 clients", flush=True)
                for name in names:
                    run.turns(name, FIRST_WARMUP, 8)
                for clients in levels:
                    n = timed_turns(args.requests, clients)
                    for r, order in enumerate(schedule(names, args.rounds)):
                        print(f"{clients} clients, round {r + 1}/{args.rounds}", flush=True)
                        for name in order:
                            run.block(name, clients, n)
            finally:
                serve.shutdown()  # type: ignore[no-untyped-call]
                ray.shutdown()
    finally:
        model.close()
        load.close()
        if peer is not None:
            peer.close()
    report(run.figures)
    print(f"\nload average at the end: {harness.load_average()}")
    print(f"run took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
