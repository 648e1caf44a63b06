"""The load of ``serve_path.py`` and what it costs: the model server and the load
generator, each in a child process (so their work never shares this process's GIL
with what is timed), and the CPU time of each process of the chain."""

from __future__ import annotations

import asyncio
import gc
import importlib
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import httpx

from astromesh_ray.testing.openai_server import ScriptedOpenAIServer

# Typed as Any: psutil ships no type stubs (and needs none installed for this).
psutil: Any = importlib.import_module("psutil")

CLIENTS = 32  # concurrent HTTP clients
REQUEST_TIMEOUT_S = 60.0
# Before each block's warm-up, wait (at most SETTLE_MAX_S) until the cluster is quiet:
# under SETTLE_CORES of a core over SETTLE_PROBE_S.  See ``settle``.
SETTLE_CORES = 0.3
SETTLE_PROBE_S = 0.5
SETTLE_MAX_S = 15.0

MODEL = "bench-model"
QUERY = "Say something short."
ANSWER = "A short answer."

# -- the model server, in a child process -----------------------------------------------


def _model_server(conn: Connection) -> None:
    """The child: one ``ScriptedOpenAIServer``; the parent adds exactly the answers a
    block needs (``add``: that many plain answers; ``steps``: these steps) and reads
    how many chat requests arrived."""
    server = ScriptedOpenAIServer(model=MODEL).start()
    conn.send((os.getpid(), server.url))
    while True:
        op, *args = conn.recv()
        if op == "add":
            server.add_steps(*([ANSWER] * args[0]))
            conn.send(None)
        elif op == "steps":
            server.add_steps(*args[0])
            conn.send(None)
        elif op == "take":
            # Between blocks: no request is in flight, so nothing appends meanwhile.
            taken = len(server.requests)
            del server.requests[:taken]
            del server.request_headers[:taken]
            conn.send((taken, server.remaining))
        elif op == "stop":
            server.stop()
            conn.send(None)
            return


# -- the load generator, in a child process ---------------------------------------------


@dataclass
class BlockResult:
    """One block as the load generator saw it: each request's latency, the block's
    wall time, and what was wrong with any reply."""

    latencies: list[float]
    wall_s: float
    errors: list[str]


async def _drive(client: httpx.AsyncClient, url: str, n: int, clients: int) -> BlockResult:
    latencies: list[float] = []
    errors: list[str] = []
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
            elif (answer := reply.json().get("answer")) != ANSWER:
                errors.append(f"unexpected answer {answer!r}")

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return BlockResult(latencies, time.perf_counter() - started, errors)


def _load_generator(conn: Connection) -> None:
    asyncio.run(_load_loop(conn))


async def _load_loop(conn: Connection) -> None:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        conn.send(os.getpid())
        while True:
            op, *args = conn.recv()  # blocking: nothing else runs between blocks
            if op == "stop":
                conn.send(None)
                return
            url, n, clients = args
            gc.collect()
            gc.freeze()
            conn.send(await _drive(client, url, n, clients))


class Child:
    """A child process (spawn) answering one message at a time over a pipe."""

    def __init__(self, target: Callable[[Connection], None]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def ask(self, *message: Any) -> Any:
        self._conn.send(message)
        return self.recv()

    def recv(self, timeout_s: float = 600.0) -> Any:
        if not self._conn.poll(timeout_s):
            raise RuntimeError(f"child process {self.process.pid} did not answer")
        return self._conn.recv()

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self._conn.send(("stop",))
                self.recv(timeout_s=10)
            except (OSError, EOFError, RuntimeError):
                pass
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)


# -- CPU time per process of the chain --------------------------------------------------

ROLES = (
    "breaker actor",
    "agent replica",
    "gateway replica",
    "provider replica",
    "Serve proxy",
    "Serve controller",
    "raylet",
    "GCS",
    "other Ray",
    "model server",
    "load generator",
    "driver",
)


def role_of(proc: Any, known: Mapping[int, str]) -> str:
    if proc.pid in known:
        return known[proc.pid]
    title = " ".join(proc.cmdline())
    for prefix, role in (
        ("ray::ServeReplica:agent-", "agent replica"),
        ("ray::ServeReplica:gateway:", "gateway replica"),
        ("ray::ServeReplica:provider-", "provider replica"),
        ("ray::ProxyActor", "Serve proxy"),
        ("ray::ServeController", "Serve controller"),
    ):
        if title.startswith(prefix):
            return role
    if "raylet/raylet" in title:
        return "raylet"
    if "gcs_server" in title:
        return "GCS"
    return "other Ray"


def cpu_times(known: Mapping[int, str]) -> dict[int, tuple[str, float]]:
    """User + system CPU seconds of this process and every descendant (the Ray
    cluster it started, the child processes), with each one's role."""
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
    """CPU seconds per role between two ``cpu_times`` (a process that started in
    between counts from zero; one that ended in between is lost: none should)."""
    used = dict.fromkeys(ROLES, 0.0)
    for pid, (role, seconds) in after.items():
        used[role] += seconds - before.get(pid, (role, 0.0))[1]
    return used


def settle(known: Mapping[int, str]) -> float:
    """Wait until this process and its descendants together use less than
    ``SETTLE_CORES`` of a core over ``SETTLE_PROBE_S`` (a redeployment, or the
    cluster's own start, winding down), at most ``SETTLE_MAX_S``.  Returns the share
    of a core they used in the last probe."""
    deadline = time.monotonic() + SETTLE_MAX_S
    while True:
        before = cpu_times(known)
        time.sleep(SETTLE_PROBE_S)
        busy = sum(cpu_used(before, cpu_times(known)).values()) / SETTLE_PROBE_S
        if busy < SETTLE_CORES or time.monotonic() > deadline:
            return busy
