"""What ``throughput.py`` and ``scaling.py`` share: the load generator (a child
process, one connection per client, up to ``MAX_CLIENTS``), one variant's figures
(req/s, p50, p99, CPU time per turn by process), the order of the blocks, and the
CPU accounting by role.  Imports no Ray: the scripts set Ray's environment first."""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import httpx
from serve_load import ANSWER, QUERY

# Typed as Any: psutil ships no type stubs (and needs none installed for this).
psutil: Any = importlib.import_module("psutil")

T = TypeVar("T")

MAX_CLIENTS = 128  # the load generator's connection pool: one connection per client
REQUEST_TIMEOUT_S = 120.0  # 128 clients queued behind a 200 ms model take seconds each
# Before each block's warm-up, wait (at most SETTLE_MAX_S) until the cluster is quiet:
# under SETTLE_CORES of a core over SETTLE_PROBE_S (a redeployment winding down).
SETTLE_CORES = 0.3
SETTLE_PROBE_S = 0.5
SETTLE_MAX_S = 15.0


# -- the load generator, in a child process ---------------------------------------------


@dataclass
class Block:
    """One block as the load generator saw it: each request's latency, the block's
    wall time, what was wrong with any reply, and how many turns each agent replica
    ran (from the replies' traces; empty for replies without one)."""

    latencies: list[float]
    wall_s: float
    errors: list[str]
    replicas: dict[str, int]


def replica_of(reply: Mapping[str, Any]) -> str | None:
    """The agent replica that ran a turn: the first span of the reply's trace that
    ran in a deployment named ``agent``."""
    for span in reply.get("trace") or []:
        where = span.get("where") or {}
        if where.get("deployment") == "agent":
            return str(where.get("replica"))
    return None


async def _drive(client: httpx.AsyncClient, url: str, n: int, clients: int) -> Block:
    latencies: list[float] = []
    errors: list[str] = []
    replicas: Counter[str] = Counter()
    left = n

    async def one_client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            try:
                reply = await client.post(url, json={"query": QUERY})
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)
            if reply.status_code != 200:
                errors.append(f"HTTP {reply.status_code}: {reply.text[:300]}")
                continue
            body = reply.json()
            if body.get("answer") != ANSWER:
                errors.append(f"unexpected answer {body.get('answer')!r}")
            replica = replica_of(body)
            if replica is not None:
                replicas[replica] += 1

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return Block(latencies, time.perf_counter() - started, errors, dict(replicas))


def load_generator(conn: Connection) -> None:
    """The child: ``("block", url, n, clients)`` answers a ``Block``."""
    asyncio.run(_load_loop(conn))


async def _load_loop(conn: Connection) -> None:
    limits = httpx.Limits(max_connections=MAX_CLIENTS, max_keepalive_connections=MAX_CLIENTS)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        conn.send(os.getpid())
        while True:
            op, *args = conn.recv()  # blocking: nothing else runs between blocks
            if op == "stop":
                conn.send(None)
                return
            url, n, clients = args
            if clients > MAX_CLIENTS:
                raise ValueError(f"at most {MAX_CLIENTS} clients")
            gc.collect()
            gc.freeze()
            conn.send(await _drive(client, url, n, clients))


# -- the order of the blocks ------------------------------------------------------------


def schedule(names: list[T], rounds: int) -> list[list[T]]:
    """The variants in declared order, then reversed, and so on (ABC CBA ...): over
    each pair of rounds every variant runs as early on average as every other, so a
    drift in the machine's speed favours none (``serve_path.py`` explains why not a
    rotation)."""
    return [names if r % 2 == 0 else names[::-1] for r in range(rounds)]


# -- CPU time per process, by role ------------------------------------------------------

PROXY = "Serve proxy"
INGRESS = "ingress replica"  # the gateway, or the floor's HTTP deployment
AGENT = "agent replica"
PROVIDER = "provider replica"  # the deployment that calls the model server
MODEL_SERVER = "model server"
PEER = "LangGraph server"
LOAD = "load generator"
RAY = "Ray (controller, raylet, GCS, actors)"
DRIVER = "driver"
ROLES = (PROXY, INGRESS, AGENT, PROVIDER, MODEL_SERVER, PEER, LOAD, RAY, DRIVER)
SHORT = {
    PROXY: "proxy",
    INGRESS: "ingress",
    AGENT: "agent",
    PROVIDER: "provider",
    MODEL_SERVER: "model",
    PEER: "peer",
    LOAD: "clients",
    RAY: "Ray",
    DRIVER: "driver",
}
# Serve deployment names (ours, and the floors' in ``chains.py``) -> role.
DEPLOYMENT_ROLES = {
    "gateway": INGRESS,
    "agent": AGENT,
    "bare-agent": AGENT,
    "provider": PROVIDER,
}


def role_of(proc: Any, known: Mapping[int, str]) -> str:
    if proc.pid in known:
        return known[proc.pid]
    title = " ".join(proc.cmdline())
    if title.startswith("ray::ProxyActor"):
        return PROXY
    if title.startswith("ray::ServeReplica:"):
        # ray::ServeReplica:<application>:<deployment>
        parts = title.removeprefix("ray::ServeReplica:").split(":")
        if len(parts) > 1:
            return DEPLOYMENT_ROLES.get(parts[1].split()[0], RAY)
    return RAY


def cpu_times(known: Mapping[int, str]) -> dict[int, tuple[str, float]]:
    """User + system CPU seconds of this process and every descendant, by role."""
    me = psutil.Process()
    found: dict[int, tuple[str, float]] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            found[proc.pid] = (role_of(proc, known), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def cpu_used(
    before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per role between two ``cpu_times`` (a process started in between
    counts from zero; one that ended in between is lost)."""
    used: dict[str, float] = defaultdict(float)
    for pid, (role, seconds) in after.items():
        used[role] += seconds - before.get(pid, (role, 0.0))[1]
    return dict(used)


def settle(known: Mapping[int, str]) -> float:
    """Wait until this process and its descendants use under ``SETTLE_CORES`` of a
    core (at most ``SETTLE_MAX_S``); the share of a core they used last."""
    deadline = time.monotonic() + SETTLE_MAX_S
    while True:
        before = cpu_times(known)
        time.sleep(SETTLE_PROBE_S)
        busy = sum(cpu_used(before, cpu_times(known)).values()) / SETTLE_PROBE_S
        if busy < SETTLE_CORES or time.monotonic() > deadline:
            return busy


# -- one variant's figures --------------------------------------------------------------


@dataclass
class Figures:
    """One variant's timed blocks at one concurrency, added up."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    turns: int = 0
    block_rates: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))
    replicas: Counter[str] = field(default_factory=Counter)

    def add(self, block: Block, cpu: Mapping[str, float]) -> None:
        self.latencies += block.latencies
        self.wall_s += block.wall_s
        self.turns += len(block.latencies)
        self.block_rates.append(len(block.latencies) / block.wall_s)
        for role, seconds in cpu.items():
            self.cpu_s[role] = self.cpu_s.get(role, 0.0) + seconds
        self.replicas.update(block.replicas)

    @property
    def rate(self) -> float:
        return self.turns / self.wall_s if self.wall_s else 0.0

    def pct_ms(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1e3

    def cpu_ms(self, role: str) -> float:
        return self.cpu_s.get(role, 0.0) / self.turns * 1e3

    def total_cpu_ms(self) -> float:
        return sum(self.cpu_s.values()) / self.turns * 1e3

    def cores_busy(self) -> float:
        """CPU seconds of every process over the blocks' wall time."""
        return sum(self.cpu_s.values()) / self.wall_s if self.wall_s else 0.0


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"
