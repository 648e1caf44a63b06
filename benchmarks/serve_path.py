"""Serve path benchmark: what the circuit breaker adds to each model call under Serve,
with every breaker call going to the breaker actor (before) and from the replica's
cached copy (after), against the same chain with no breaker at all.

One run of this script starts a local Ray cluster and Serve on a free loopback port,
and deploys one agent (no tools; its model answers at once) with its provider
application and the gateway, as ``serve/builders.py`` plans them.  The agent's
application (``agent-bench``) is deployed three times in turn, differing only in the
breaker store its replica builds (``AgentDeployment.make_breakers``, overridden by a
subclass defined here):

1. bare chain: a store that allows everything and records nothing.  Per turn:
   proxy -> gateway -> agent -> provider, 3 Ray calls;
2. before: ``ActorBreakerStore``, every ``allow`` and ``success`` a call to the
   breaker actor, as agent replicas did before the breaker moved off the hot path
   (today's store and actor: each call bounded by a timeout, answered with the
   breaker's new status);
3. after: ``ServeBreakerStore``, what ``AgentDeployment`` builds now: a copy in the
   replica, fed by a long poll; the actor hears only of outcomes that change state.

The model is a ``ScriptedOpenAIServer`` in a child process, and the clients are
another child process (32 concurrent asyncio ``httpx`` clients posting to
``/v1/agents/bench/run``), so neither shares the GIL with anything else.  Each
variant runs in blocks, each on a new agent replica after a warm-up; the rounds take
the variants in declared order, then reversed (ABC CBA ...), so load from elsewhere
and any drift during the run fall on all of them alike.  Every reply is checked (HTTP
200 and the scripted answer), and so is the number of model calls.  ``--aa`` runs the
bare chain again in place of "after": what two identical variants differ by here.

Per variant it prints req/s, median and p90 latency, Ray calls per turn (counted: see
``benchmarks/README.md``), the CPU time each process of the chain used per turn (the
breaker actor's in particular), and the ratios against the bare chain.

    .venv/bin/python benchmarks/serve_path.py
    .venv/bin/python benchmarks/serve_path.py --requests 200 --rounds 2   # quicker
    .venv/bin/python benchmarks/serve_path.py --aa                        # A/A check
"""

from __future__ import annotations

import os

import harness
from serve_load import (
    CLIENTS,
    MODEL,
    ROLES,
    BlockResult,
    Child,
    _load_generator,
    _model_server,
    cpu_times,
    cpu_used,
    settle,
)

# Before Ray is imported: every listener on loopback, no usage stats (DESIGN.md §7).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import importlib
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import ray
from ray import serve
from ray.serve import Application, Deployment

from astromesh_ray.core.breaker import BreakerPolicy, BreakerStore, State
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE
from astromesh_ray.serve.agents import AgentDeployment, agent_app_name
from astromesh_ray.serve.breaker import (
    ACTOR_NAME,
    ActorBreakerStore,
    agent_probes,
    ensure_breaker_actor,
)
from astromesh_ray.serve.builders import BUILDERS, plan, serve_options
from astromesh_ray.serve.gateway import Gateway
from astromesh_ray.serve.providers import ProviderDeployment
from astromesh_ray.spec import AgentSpec, LoadedConfig, load_config
from astromesh_ray.spec.config import ProviderEntrySpec, ProviderRoutingSpec

# psutil ships no type stubs (and needs none installed for this).
psutil: Any = importlib.import_module("psutil")

REQUESTS = 400  # timed requests per block (--requests)
ROUNDS = 6  # blocks per variant, one per round (--rounds; even: see ``schedule``)
WARMUP = 96  # untimed (but checked) requests after each deployment
FIRST_WARMUP = 480  # ...and after the first one, when every replica is new
REPLICA_GONE_S = 60.0  # how long a replaced agent replica may take to exit
AGENT = "bench"

BARE = "bare chain"
BEFORE = "before: ActorBreakerStore"
AFTER = "after: ServeBreakerStore"
HOT_METHODS = ("allow", "success", "failure", "release")

AGENT_YAML = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
spec:
  model:
    primary: {{provider: openai_compat, model: {model}, endpoint: "{url}", max_retries: 0}}
  orchestration: {{max_iterations: 2, timeout_seconds: 30}}
"""


# -- the three agent replicas ------------------------------------------------------------

if TYPE_CHECKING:
    AgentBody = AgentDeployment  # what mypy sees: the stubs type the decorated class as itself
else:
    # The class under Serve's Deployment: subclasses of it are deployed with the
    # decorator's options (AgentDeployment.options(func_or_class=...)).
    AgentBody = cast(Deployment, AgentDeployment).func_or_class


class NoBreakers:
    """A ``BreakerStore`` that allows everything and records nothing: no breaker."""

    async def allow(self, key: str, policy: BreakerPolicy) -> tuple[bool, State]:
        return True, "closed"

    async def success(self, key: str, policy: BreakerPolicy) -> State:
        return "closed"

    async def failure(self, key: str, policy: BreakerPolicy, error: str = "") -> State:
        return "closed"

    async def release(self, key: str, policy: BreakerPolicy) -> None:
        return None

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return {}


class BenchAgent(AgentBody):
    """``AgentDeployment`` that also counts its turns (the gateway -> agent calls) and
    tells its process id.  Defined in ``__main__``: Ray ships it by value."""

    _bench_runs = 0

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        self._bench_runs += 1
        return await super().run(request)

    async def bench_stats(self) -> dict[str, int]:
        return {"pid": os.getpid(), "runs": self._bench_runs}


class BareAgent(BenchAgent):
    async def make_breakers(
        self,
        agent: AgentSpec,
        providers: Mapping[str, ProviderEntrySpec],
        routing: ProviderRoutingSpec | None,
    ) -> BreakerStore:
        return NoBreakers()


class BeforeAgent(BenchAgent):
    async def make_breakers(
        self,
        agent: AgentSpec,
        providers: Mapping[str, ProviderEntrySpec],
        routing: ProviderRoutingSpec | None,
    ) -> BreakerStore:
        return ActorBreakerStore()  # every call to the actor, as before the change


class AfterAgent(BenchAgent):
    async def make_breakers(
        self,
        agent: AgentSpec,
        providers: Mapping[str, ProviderEntrySpec],
        routing: ProviderRoutingSpec | None,
    ) -> BreakerStore:
        # AgentDeployment's own: a started ServeBreakerStore.
        return await super().make_breakers(agent, providers, routing)


VARIANTS: dict[str, type[BenchAgent]] = {BARE: BareAgent, BEFORE: BeforeAgent, AFTER: AfterAgent}
# --aa: "after" replaced by the bare chain again, to see what identical variants differ by.
AA = "A/A: bare chain again"
AA_VARIANTS: dict[str, type[BenchAgent]] = {BARE: BareAgent, BEFORE: BeforeAgent, AA: BareAgent}


# -- one variant's figures --------------------------------------------------------------


@dataclass
class Figures:
    """One variant's blocks, added up."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    block_rates: list[float] = field(default_factory=list)
    turns: int = 0
    gateway_to_agent: int = 0  # the agent replica's run calls
    agent_to_provider: int = 0  # chat requests the model server received
    breaker: dict[str, int] = field(default_factory=dict)  # breaker actor calls by method
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))

    @property
    def rate(self) -> float:
        return self.turns / self.wall_s

    def pct_ms(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1e3

    def per_turn(self, count: int) -> float:
        return count / self.turns

    @property
    def hot(self) -> int:
        return sum(self.breaker.get(m, 0) for m in HOT_METHODS)

    @property
    def other_breaker(self) -> int:
        return sum(v for m, v in self.breaker.items() if m not in HOT_METHODS)

    def ray_calls(self) -> float:
        """proxy -> gateway (one per request), gateway -> agent, agent -> provider, and
        every call the breaker actor answered (hot path and polls)."""
        total = self.turns + self.gateway_to_agent + self.agent_to_provider
        return (total + self.hot + self.other_breaker) / self.turns

    def cpu_ms(self, role: str) -> float:
        return self.cpu_s[role] / self.turns * 1e3

    def total_cpu_ms(self) -> float:
        return sum(self.cpu_s.values()) / self.turns * 1e3


# -- the cluster -------------------------------------------------------------------------


def breaker_handle() -> Any:
    return ray.get_actor(ACTOR_NAME, namespace=ACTOR_NAMESPACE)


def breaker_calls() -> dict[str, int]:
    calls: dict[str, int] = ray.get(breaker_handle().calls.remote(), timeout=30)
    return calls


def breaker_pid() -> int:
    """The breaker actor's process id, as the actor itself reports it."""
    pid: int = ray.get(breaker_handle().__ray_call__.remote(lambda _self: os.getpid()), timeout=30)
    return pid


def agent_stats() -> dict[str, int]:
    handle = serve.get_app_handle(agent_app_name(AGENT))
    stats: dict[str, int] = handle.bench_stats.remote().result(timeout_s=30)
    return stats


def agent_replica_pids() -> set[int]:
    """Every agent replica process, a replaced one still shutting down included."""
    prefix = f"ray::ServeReplica:{agent_app_name(AGENT)}:"
    pids = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith(prefix):
                pids.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


def agent_application(variant: type[BenchAgent], loaded: LoadedConfig, block: int) -> Application:
    """What ``builders.agent_app`` builds, with ``variant`` as the replica's class:
    the same options (the decorator's, under the YAML's ``deployment`` block).

    The class is a fresh subclass of ``variant`` for each ``block``, so that Serve
    replaces the replica even when the variant is the one it runs already (it
    versions a deployment by its code; ``Deployment.options`` takes no version)."""
    agent = loaded.agents[AGENT]
    ensure_breaker_actor(agent_probes(agent, loaded.providers, loaded.routing))
    options = serve_options(AgentDeployment, agent.spec.deployment)
    fresh = type(variant.__name__, (variant,), {"bench_block": block})
    deployment = cast(Deployment, AgentDeployment).options(func_or_class=fresh, **options)
    return deployment.bind(agent, loaded.providers, loaded.routing)


def deploy_agent(variant: type[BenchAgent], loaded: LoadedConfig, block: int) -> int:
    """(Re)deploy ``agent-bench`` with a new replica of ``variant``; wait until the
    replaced one has exited.  Returns the new replica's process id."""
    previous = agent_replica_pids()
    serve.run(
        agent_application(variant, loaded, block), name=agent_app_name(AGENT), route_prefix=None
    )
    pid = agent_stats()["pid"]
    if pid in previous:
        raise RuntimeError(f"Serve kept the agent replica (process {pid}): not a new one")
    deadline = time.monotonic() + REPLICA_GONE_S
    while agent_replica_pids() - {pid}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replaced agent replica did not exit: {agent_replica_pids()}")
        time.sleep(0.1)
    return pid


def deploy_all(loaded: LoadedConfig, root: Path, first: type[BenchAgent]) -> None:
    """Every application ``plan`` lists, in its order, as ``serve/local.py`` runs them,
    except that the agent's application gets ``first`` as its replica class."""
    for app in plan(loaded, str(root)):
        if app.builder == "agent_app":
            deploy_agent(first, loaded, 1)
        else:
            serve.run(BUILDERS[app.builder](app.args), name=app.name, route_prefix=app.route_prefix)


def concurrency_limits(loaded: LoadedConfig) -> dict[str, int]:
    """Each deployment's ``max_ongoing_requests``: the decorators' own, as no YAML
    here sets one (Serve's default, 5, would queue 32 clients in the proxy)."""
    declared = [loaded.runtime.spec.gateway, loaded.agents[AGENT].spec.deployment]
    declared += [p.deployment for p in loaded.providers.values()]
    if any(spec is not None and spec.max_ongoing_requests for spec in declared):
        raise RuntimeError("the benchmark's YAML should leave max_ongoing_requests alone")
    return {
        name: int(cast(Deployment, deployment).max_ongoing_requests)
        for name, deployment in (
            ("gateway", Gateway),
            ("agent", AgentDeployment),
            ("provider", ProviderDeployment),
        )
    }


# -- the measurement ---------------------------------------------------------------------


class Run:
    """The cluster, the two child processes, and the figures of each variant."""

    def __init__(
        self,
        variants: Mapping[str, type[BenchAgent]],
        loaded: LoadedConfig,
        root: Path,
        url: str,
        model: Child,
        load: Child,
    ):
        self.variants = variants
        self.loaded = loaded
        self.root = root
        self.url = f"{url}/v1/agents/{AGENT}/run"
        self.model = model
        self.load = load
        self.blocks = 0
        self.known: dict[int, str] = {
            os.getpid(): "driver",
            cast(int, model.process.pid): "model server",
            cast(int, load.process.pid): "load generator",
        }
        self.figures = {name: Figures() for name in variants}

    def deploy(self, variant: type[BenchAgent]) -> None:
        """A new agent replica for every block, of ``variant``'s class (the first
        time, every application)."""
        self.blocks += 1
        if self.blocks > 1:
            deploy_agent(variant, self.loaded, self.blocks)
        else:
            deploy_all(self.loaded, self.root, variant)
            # Created by the builders at deploy time (ensure_breaker_actor).
            pid = breaker_pid()
            title = " ".join(psutil.Process(pid).cmdline())
            if not title.startswith("ray::BreakerActor"):
                raise RuntimeError(f"the breaker actor says it is process {pid}: {title!r}")
            self.known[pid] = "breaker actor"

    def requests(self, n: int) -> BlockResult:
        """``n`` requests from the clients, the model scripted for exactly ``n`` calls;
        every reply checked."""
        self.model.ask("add", n)
        result: BlockResult = self.load.ask("block", self.url, n, CLIENTS)
        if result.errors:
            shown = "; ".join(sorted(set(result.errors))[:5])
            raise RuntimeError(f"{len(result.errors)} of {n} requests failed: {shown}")
        return result

    def block(self, name: str, n: int) -> None:
        """One timed block of ``n`` turns of variant ``name``, on a new replica, with
        its counters and CPU times."""
        # The first block's warm-up is longer: only then are the proxy, the gateway
        # and the provider replica new too (later blocks redeploy the agent only).
        warmup = WARMUP if self.blocks else FIRST_WARMUP
        self.deploy(self.variants[name])
        busy = settle(self.known)
        self.requests(warmup)
        taken, _ = self.model.ask("take")
        if taken != warmup:
            raise RuntimeError(f"warm-up: {taken} model calls for {warmup} turns")
        runs, calls = agent_stats()["runs"], breaker_calls()
        cpu_before = cpu_times(self.known)
        result = self.requests(n)
        cpu_after = cpu_times(self.known)
        runs_after, calls_after = agent_stats()["runs"], breaker_calls()
        provider_calls, left = self.model.ask("take")
        if left or provider_calls != n:
            raise RuntimeError(f"{provider_calls} model calls for {n} turns ({left} left)")
        f = self.figures[name]
        f.latencies += result.latencies
        f.wall_s += result.wall_s
        f.block_rates.append(n / result.wall_s)
        f.turns += n
        f.gateway_to_agent += runs_after - runs
        f.agent_to_provider += provider_calls
        for method in set(calls) | set(calls_after):
            f.breaker[method] = f.breaker.get(method, 0) + calls_after.get(method, 0)
            f.breaker[method] -= calls.get(method, 0)
        for role, seconds in cpu_used(cpu_before, cpu_after).items():
            f.cpu_s[role] += seconds
        hot = sum(calls_after.get(m, 0) - calls.get(m, 0) for m in HOT_METHODS)
        print(
            f"  {name:<26}{n / result.wall_s:>7.1f} req/s  median "
            f"{statistics.median(result.latencies) * 1e3:6.1f} ms  breaker calls/turn "
            f"{hot / n:4.2f}  load {os.getloadavg()[0]:.2f} (settled at {busy:.2f} cores)",
            flush=True,
        )


def schedule(names: list[str], rounds: int) -> list[list[str]]:
    """The order of the blocks: the variants in declared order, then reversed, and so
    on.  Over each pair of rounds every variant runs as early on average as every
    other, and each one before each other as often as after it, so a drift in the
    machine's speed during the run (other jobs starting, ending) favours none.  (A
    rotation, ABC BCA CAB, does not: there C runs just before A in two rounds of three,
    and an A/A check drifted 1.2x apart that way.)"""
    return [names if r % 2 == 0 else names[::-1] for r in range(rounds)]


# -- report ------------------------------------------------------------------------------


def machine() -> list[str]:
    return harness.machine(f", Ray {ray.__version__}", gpu_note=" (not used)")


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def report(figures: Mapping[str, Figures]) -> None:
    base = figures[BARE]
    print(
        f"\nThroughput and latency, {CLIENTS} clients (x bare = this / bare chain; "
        "blocks: the slowest and fastest block)"
    )
    print(
        f"  {'variant':<26}{'turns':>6}{'req/s':>7}{'blocks':>8}{'median':>9}{'p90':>9}"
        f"{'x bare: req/s':>15}{'median':>7}{'p90':>6}"
    )
    for name, f in figures.items():
        blocks = f"{min(f.block_rates):.0f}-{max(f.block_rates):.0f}"
        print(
            f"  {name:<26}{f.turns:>6}{f.rate:>7.1f}{blocks:>8}{f.pct_ms(50):>7.1f}ms"
            f"{f.pct_ms(90):>7.1f}ms{ratio(f.rate, base.rate):>15}"
            f"{ratio(f.pct_ms(50), base.pct_ms(50)):>7}{ratio(f.pct_ms(90), base.pct_ms(90)):>6}"
        )
    # The three blocks of a round ran minutes apart at most: their ratios show how
    # much of the overall one is load from elsewhere.
    print("  req/s x bare, round by round (rounds alternate the order of the variants):")
    for name, f in figures.items():
        if f is not base:
            rounds = [a / b for a, b in zip(f.block_rates, base.block_rates, strict=True)]
            print(
                f"    {name:<26}"
                + " ".join(f"{x:.2f}" for x in rounds)
                + f"  (median {statistics.median(rounds):.2f})"
            )

    print("\nRay calls per turn (counted; see benchmarks/README.md)")
    print(
        f"  {'variant':<26}{'proxy>gw':>9}{'gw>agent':>9}{'agent>prov':>11}{'allow':>7}"
        f"{'success':>8}{'fail+rel':>9}{'poll etc':>9}{'total':>7}{'x bare':>7}"
    )
    for name, f in figures.items():
        other = f.breaker.get("failure", 0) + f.breaker.get("release", 0)
        print(
            f"  {name:<26}{1.0:>9.2f}{f.per_turn(f.gateway_to_agent):>9.2f}"
            f"{f.per_turn(f.agent_to_provider):>11.2f}{f.per_turn(f.breaker.get('allow', 0)):>7.2f}"
            f"{f.per_turn(f.breaker.get('success', 0)):>8.2f}{f.per_turn(other):>9.2f}"
            f"{f.per_turn(f.other_breaker):>9.3f}{f.ray_calls():>7.2f}"
            f"{ratio(f.ray_calls(), base.ray_calls()):>7}"
        )

    print("\nCPU time per turn, ms, by process (user + system; in brackets: - bare chain)")
    print(f"  {'process':<18}" + "".join(f"{name.split(':')[0]:>17}" for name in figures))

    def cell(value: float, baseline: float, is_base: bool) -> str:
        return f"{value:>17.2f}" if is_base else f"{value:>8.2f} ({value - baseline:+6.2f})"

    for role in ROLES:
        cells = [cell(f.cpu_ms(role), base.cpu_ms(role), f is base) for f in figures.values()]
        print(f"  {role:<18}{''.join(cells)}")
    cells = [cell(f.total_cpu_ms(), base.total_cpu_ms(), f is base) for f in figures.values()]
    print(f"  {'all':<18}{''.join(cells)}")

    print("\nThe Serve path's extra cost per model call, against the bare chain")
    for name, f in figures.items():
        if f is base:
            continue
        # The processes that make and answer the breaker's calls.  The others' CPU per
        # turn moves by about a millisecond between identical runs (--aa).
        extra = sum(f.cpu_ms(r) - base.cpu_ms(r) for r in ("breaker actor", "agent replica"))
        bound = base.total_cpu_ms() / (base.total_cpu_ms() + extra)
        print(
            f"  {name}: {f.ray_calls():.2f} Ray calls per turn (bare {base.ray_calls():.2f}); "
            f"breaker actor {f.cpu_ms('breaker actor'):.2f} ms CPU per turn; breaker actor "
            f"and agent replica {extra:+.2f} ms CPU per turn (all processes "
            f"{f.total_cpu_ms() - base.total_cpu_ms():+.2f}); {ratio(f.rate, base.rate)}x the "
            f"bare chain's req/s (CPU-bound estimate from the breaker actor's and agent "
            f"replica's extra CPU: {bound:.2f}x); median {f.pct_ms(50) - base.pct_ms(50):+.1f} ms"
        )


# -- main --------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="timed requests per block")
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help="blocks per variant (an even number)"
    )
    parser.add_argument(
        "--aa", action="store_true", help="A/A check: the bare chain again instead of 'after'"
    )
    args = parser.parse_args(argv)
    if args.requests < 2 or args.rounds < 2 or args.rounds % 2:
        parser.error("at least 2 requests per block, and an even number of rounds")
    variants = AA_VARIANTS if args.aa else VARIANTS
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    started = time.perf_counter()
    for line in machine():
        print(line)
    print(
        f"workload: {CLIENTS} concurrent HTTP clients (asyncio httpx, a child process); per "
        f"variant {args.rounds} blocks of {args.requests} timed requests, each after "
        f"{WARMUP} warm-up requests ({FIRST_WARMUP} before the first) on a new agent replica; "
        "rounds alternate the order of the variants; model server in a child process"
    )
    model = Child(_model_server)
    load = Child(_load_generator)
    try:
        _, model_url = model.recv(timeout_s=60)
        load.recv(timeout_s=60)
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            (root / "agents").mkdir()
            (root / "agents" / f"{AGENT}.agent.yaml").write_text(
                AGENT_YAML.format(name=AGENT, model=MODEL, url=model_url)
            )
            loaded = load_config(root)
            limits = concurrency_limits(loaded)
            print("max_ongoing_requests: " + ", ".join(f"{k} {v}" for k, v in limits.items()))
            if min(limits.values()) < CLIENTS:
                raise RuntimeError(f"a deployment takes fewer than {CLIENTS} requests at once")
            url = harness.start_ray()
            if url is None:
                return 2
            try:
                run = Run(variants, loaded, root, url, model, load)
                for r, order in enumerate(schedule(list(variants), args.rounds)):
                    print(f"round {r + 1}/{args.rounds}: {', '.join(order)}", flush=True)
                    for name in order:
                        run.block(name, args.requests)
            finally:
                serve.shutdown()  # type: ignore[no-untyped-call]
                ray.shutdown()
    finally:
        model.close()
        load.close()
    report(run.figures)
    print(f"\nload average at the end: {harness.load_average()}")
    print(f"run took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
