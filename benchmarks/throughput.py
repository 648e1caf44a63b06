"""Throughput benchmark: agent turns per second and their p50/p99 latency through the
full stack, at 1, 8, 32 and 128 concurrent clients, against the bare Serve chain with
the same hops (the one-hop floor), the path a turn took before issue 13's hop cuts,
and the same agent in LangGraph served by uvicorn; and what the gateway hop costs.

One run starts a local Ray cluster and Serve on a free loopback port and deploys
three copies of one agent (``react``, no tools, a system prompt, one model call per
turn) and the gateway, as ``serve/builders.py`` plans them.  The model is a
``ScriptedOpenAIServer`` in a child process; every answer waits a fixed latency first
(``--latency-ms``, 20 by default).  The clients are another child process (asyncio
``httpx``, one connection each, posting ``{"query"}``), so neither shares the GIL
with anything else.  Variants, each a URL the clients post to (``chains.py``):

1. full stack: ``POST /v1/agents/bench/run``, as deployed: the agent's application
   answers its own routes (its ``route_prefix``) and calls the remote API from its
   replica: proxy -> agent -> model server;
2. through the gateway: agent ``bench-gw``, the same but its application deployed
   without a route, so the gateway answers and calls it by handle: proxy -> gateway
   -> agent -> model server (what the gateway hop costs);
3. before: agent ``bench-old``, reached through the gateway, its model a provider
   entry with ``deployment: {mode: dedicated}``: proxy -> gateway -> agent ->
   provider -> model server, the path every turn took before (the ``>= 2x`` goal's
   baseline, measured in the same run);
4. bare chain (the floor): proxy -> one deployment calling the same model server with
   a pooled ``httpx`` client: the full stack's hops, forwarding only;
5. LangGraph + uvicorn: ``create_react_agent`` over a chat model calling the same
   model server, behind a FastAPI route, one uvicorn worker, a child process of its
   own (``langgraph_server.py``).

``--serve-env`` runs the whole cluster under one of Ray Serve's own settings for
lower per-hop cost, set before Ray starts: ``default``; ``throughput``
(``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: user code on the replica's event loop, gRPC
between deployments, direct ingress); ``haproxy`` (that plus
``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy in front of the ingress replicas instead of
the Python proxy; needs the ``haproxy`` binary).

The floor's deployment takes as many requests at once as an agent replica
(``max_ongoing_requests`` 100).  Each concurrency level runs every variant in
blocks; the rounds take the variants in declared order, then reversed (ABC CBA), so
load from elsewhere and drift fall on all alike.  Before a block the script waits
until the cluster is quiet, then sends untimed (but checked) warm-up turns.  Every
reply is checked (HTTP 200, the scripted answer), and so is the number of model
calls: one per turn.  It prints req/s, p50 and p99 per variant and level, the ratios
against the bare chain, the goals, the gateway's cost, and the CPU time each process
used per turn (where the time goes).

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --requests 60 --rounds 2 --clients 1,32  # quick
    .venv/bin/python benchmarks/throughput.py --serve-env throughput
"""

from __future__ import annotations

import os
import sys

# Before Ray is imported: every listener on loopback, no usage stats (DESIGN.md §7).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import chains
import harness
import httpx
import langgraph_server
import ray
import serve_env  # before Ray: --serve-env's settings
from ray import cloudpickle, serve
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

from astromesh_ray.spec import load_config

LEVELS = (1, 8, 32, 128)
LATENCY_MS = 20.0
REQUESTS = 150  # timed turns per block, at least (--requests); 6 per client if more
ROUNDS = 4  # blocks per variant and level (--rounds; even: see ``schedule``)
FIRST_WARMUP = 200  # untimed turns per variant before the first level, at 8 clients
AGENT = "bench"
VIA_GATEWAY = "bench-gw"
OLD = "bench-old"
THROUGHPUT_GOAL = 0.8  # x the bare chain's req/s, at least
P99_GOAL = 1.5  # x the bare chain's p99, at most
BEFORE_GOAL = 2.0  # x the old path's req/s at GOAL_LEVEL clients, at least
P50_GOAL = 1.5  # x the one-hop floor's p50 at 1 client, at most
GOAL_LEVEL = 32  # the old path's and LangGraph's comparisons' concurrency

FULL = "full stack"
GATEWAY = "through the gateway"
BEFORE = "before (4 hops)"
BARE = "bare chain"
LANGGRAPH = "LangGraph + uvicorn"

AGENT_YAML = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
spec:
  model:
    primary: {model}
  prompts:
    system: "{system}"
  orchestration: {{pattern: react, max_iterations: 2, timeout_seconds: 60}}
"""
INLINE_MODEL = '{{provider: openai_compat, model: {model}, endpoint: "{url}", max_retries: 0}}'
PROVIDERS_YAML = """\
apiVersion: astromesh/v1
kind: ProviderConfig
metadata: {{name: bench}}
spec:
  providers:
    old-path:
      type: openai_compat
      endpoint: "{url}"
      models: [{model}]
      max_retries: 0
      deployment: {{mode: dedicated}}
"""


def write_config(root: Path, model_url: str, max_ongoing: int | None = None) -> None:
    """The three agents (``FULL``'s, ``GATEWAY``'s, ``BEFORE``'s), with
    ``max_ongoing`` requests per replica when given, and the old path's provider
    entry."""
    (root / "agents").mkdir()
    inline = INLINE_MODEL.format(model=MODEL, url=model_url)
    for name, model in ((AGENT, inline), (VIA_GATEWAY, inline), (OLD, "{providerRef: old-path}")):
        text = AGENT_YAML.format(name=name, model=model, system=chains.SYSTEM)
        if max_ongoing is not None:
            text += f"  deployment: {{max_ongoing_requests: {max_ongoing}}}\n"
        (root / "agents" / f"{name}.agent.yaml").write_text(text)
    (root / "providers.yaml").write_text(PROVIDERS_YAML.format(url=model_url, model=MODEL))


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
        f, base = by_name[FULL], by_name[BARE]
        tput, p99 = f.rate / base.rate, f.pct_ms(99) / base.pct_ms(99)
        print(
            f"  {clients:>3} clients: full stack {tput:.2f}x the bare chain's req/s (goal >= "
            f"{THROUGHPUT_GOAL}: {verdict(tput >= THROUGHPUT_GOAL)}), {p99:.2f}x its p99 (goal "
            f"<= {P99_GOAL}: {verdict(p99 <= P99_GOAL)})"
        )
    at = figures.get(GOAL_LEVEL, {})
    if at:
        f, old = at[FULL], at[BEFORE]
        gain = f.rate / old.rate
        print(
            f"  {GOAL_LEVEL} clients: full stack {gain:.2f}x the 4-hop path's req/s "
            f"({f.rate:.1f} against {old.rate:.1f}: goal >= {BEFORE_GOAL}: "
            f"{verdict(gain >= BEFORE_GOAL)})"
        )
    if LANGGRAPH in at:
        f, lg = at[FULL], at[LANGGRAPH]
        print(
            f"  {GOAL_LEVEL} clients: full stack {f.rate / lg.rate:.2f}x LangGraph + uvicorn's "
            f"req/s ({f.rate:.1f} against {lg.rate:.1f}: goal ahead, "
            f"{verdict(f.rate > lg.rate)}); p50 {ratio(f.pct_ms(50), lg.pct_ms(50))}x, "
            f"p99 {ratio(f.pct_ms(99), lg.pct_ms(99))}x"
        )
    if 1 in figures:
        f, hop = figures[1][FULL], figures[1][BARE]
        p50 = f.pct_ms(50) / hop.pct_ms(50)
        print(
            f"  1 client: full stack p50 {f.pct_ms(50):.1f} ms, {p50:.2f}x the one-hop "
            f"floor's {hop.pct_ms(50):.1f} ms (goal <= {P50_GOAL}: {verdict(p50 <= P50_GOAL)})"
        )

    print("\nThe gateway hop: the same agent through the gateway (a route-less agent")
    print("application, called by handle), against the agent's own route")
    for clients, by_name in figures.items():
        f, gw = by_name[FULL], by_name[GATEWAY]
        print(
            f"  {clients:>3} clients: through the gateway {gw.rate / f.rate:.2f}x the own "
            f"route's req/s, p50 {gw.pct_ms(50) - f.pct_ms(50):+.1f} ms, p99 "
            f"{gw.pct_ms(99) - f.pct_ms(99):+.1f} ms and CPU "
            f"{gw.total_cpu_ms() - f.total_cpu_ms():+.1f} ms per turn"
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
    parser.add_argument(
        "--agent-max-ongoing",
        type=int,
        default=None,
        help="max_ongoing_requests of the agents' replicas and the bare chain's "
        "(default: the agent deployment's own)",
    )
    parser.add_argument(
        "--serve-env", choices=sorted(serve_env.SERVE_ENVS), default="default", help="settings"
    )
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",")]
    if args.requests < 2 or args.rounds < 2 or args.rounds % 2 or not levels:
        parser.error("at least 2 requests per block, and an even number of rounds")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    started = time.perf_counter()
    for line in harness.machine(f", Ray {ray.__version__}", gpu_note=" (not used)"):
        print(line)
    print(f"serve settings: {args.serve_env} {serve_env.SERVE_ENVS[args.serve_env] or ''}".rstrip())
    missing = langgraph_server.available()
    names = [FULL, GATEWAY, BEFORE, BARE] + ([] if missing else [LANGGRAPH])
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
            write_config(root, model_url, args.agent_max_ongoing)
            loaded = load_config(root)
            url = harness.start_ray()
            if url is None:
                return 2
            try:
                cloudpickle.register_pickle_by_value(chains)  # type: ignore[no-untyped-call]
                # The gateway's and the old path's agents: no route of their own.
                gateway_only = {f"agent-{VIA_GATEWAY}": None, f"agent-{OLD}": None}
                planned = chains.deploy_stack(loaded, str(root), routes=gateway_only)
                chains.deploy_floor(model_url, args.agent_max_ongoing)
                print(f"plan: {chains.hops(planned)}")
                print(
                    "max_ongoing_requests: "
                    + ", ".join(f"{k} {v}" for k, v in chains.limits().items())
                )
                urls = {
                    FULL: f"{url}/v1/agents/{AGENT}/run",
                    GATEWAY: f"{url}/v1/agents/{VIA_GATEWAY}/run",
                    BEFORE: f"{url}/v1/agents/{OLD}/run",
                    BARE: f"{url}{chains.BARE_ROUTE}",
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
