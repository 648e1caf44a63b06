"""Router benchmark: what ``ModelRouter`` adds to a provider call, and LiteLLM's ``Router``.

Two ``ScriptedOpenAIServer`` instances on loopback play the primary and the fallback
deployment.  In one run of this script, with the same call counts for every variant:

1. baseline: ``OpenAIProvider.complete`` straight to the primary;
2. ``ModelRouter([primary, fallback])`` over a ``LocalBreakerStore`` (declared order),
   primary healthy: the latency it adds per call, and the ratio;
3. the same router with the primary answering HTTP 500 to every call: each call falls
   back until the breaker opens; calls/s before and after it opened;
4. LiteLLM's ``Router`` doing the same fallback routing (``openai/<model>`` deployments
   with ``api_base`` on the loopback servers, ``fallbacks``, ``num_retries=0``,
   ``acompletion``), plus ``litellm.acompletion`` without a router, so LiteLLM's routing
   layer can be told apart from its client stack;
5. the routing layers alone, without HTTP: ``ModelRouter`` over providers that answer at
   once, against calling such a provider directly, and LiteLLM's ``Router`` against
   ``litellm.acompletion``, both with ``mock_response``.  Over loopback HTTP our router's
   cost is smaller than the calls' jitter; here it can be seen.

Each variant is timed sequentially (after a warm-up) and at a fixed concurrency.  The
sequential calls of a baseline and what is compared with it (1 and 2, 4a and 4b, 5a and
5b, 5c and 5d) alternate call by call, and all are interleaved in blocks, so load from
other processes falls on all of them alike.  The servers run in a child process: in this one
they would share the GIL with the clients being timed, and at concurrency the figures
would mostly measure the interpreter's thread switching.

No network beyond loopback: an audit hook refuses any other connection or DNS lookup,
and the run fails if anything tried one.  LiteLLM is optional (``pip install litellm``);
without it the comparison is reported as skipped and the rest still runs.

    .venv/bin/python benchmarks/router.py
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import logging
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import harness

# LiteLLM reads these at import: the bundled model cost map instead of fetching it from
# GitHub, errors-only logging, no feedback banner.  LITELLM_TELEMETRY (and
# ``litellm.telemetry`` below) switch telemetry off in versions that have it (1.106 has
# none); the audit hook below is what actually keeps the run on loopback.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_TELEMETRY"] = "False"
os.environ["LITELLM_DONT_SHOW_FEEDBACK_BOX"] = "True"
os.environ.setdefault("LITELLM_LOG", "ERROR")

from astromesh_ray.core.breaker import BreakerPolicy, LocalBreakerStore
from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    Usage,
)
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.providers.openai import OpenAIProvider
from astromesh_ray.core.router import Candidate, ModelRouter
from astromesh_ray.testing.openai_server import ScriptedOpenAIServer

WARMUP = 20  # calls per variant before anything is timed
SEQ_CALLS = 300  # timed sequential calls per variant
SEQ_BLOCKS = 10  # ...interleaved across variants in this many blocks
CONCURRENCY = 16
CONC_CALLS = 600  # timed calls per variant at CONCURRENCY
CONC_BLOCKS = 4  # a multiple of 4: see balanced_orders
# Between blocks, wait (at most SETTLE_MAX_S) until this process used < 10% of a core
# over SETTLE_PROBE_S: see ``settle``.
SETTLE_PROBE_S = 0.02
SETTLE_MAX_S = 1.0
# The breaker's default threshold (3) would leave only 3 calls to time before it opens;
# this many consecutive failures gives the "before" phase enough calls to measure.
FAILOVER_THRESHOLD = 150
COOLDOWN_S = 60.0  # longer than the run: once open, the breaker stays open

PRIMARY_MODEL = "bench-primary"
FALLBACK_MODEL = "bench-fallback"
PRIMARY_TEXT = "answer from the primary"
FALLBACK_TEXT = "answer from the fallback"
FAILURE = {"status": 500, "error": "down"}
API_KEY = "sk-bench-loopback"  # a dummy: the servers check no key; LiteLLM wants one
MESSAGES = [{"role": "user", "content": "Say something short."}]

DIRECT = "1 OpenAIProvider (direct)"
OURS = "2 ModelRouter (primary healthy)"
OURS_DOWN = "3 ModelRouter (primary down)"
LITE_DIRECT = "4a litellm.acompletion (direct)"
LITE_ROUTER = "4b litellm.Router (primary healthy)"
LITE_DOWN = "4c litellm.Router (primary down)"
BARE = "5a instant provider (direct)"
BARE_OURS = "5b ModelRouter (instant providers)"
BARE_LITE = "5c litellm.acompletion (mock_response)"
BARE_LITE_ROUTER = "5d litellm.Router (mock_response)"

Call = Callable[[], Awaitable[None]]


# -- no network beyond loopback --------------------------------------------------------

_LOOPBACK_HOSTS = {"localhost", "::1", "ip6-localhost"}
blocked_network: list[str] = []


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return host is None  # getaddrinfo(None, ...) means the local host
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def _network_guard(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple):
            return  # a Unix socket path: local
        host: object = address[0]
    elif event == "socket.getaddrinfo":
        host = args[0]
    else:
        return
    if not _is_loopback(host):
        blocked_network.append(f"{event} {host!r}")
        raise PermissionError(f"benchmark: network access outside loopback refused ({host!r})")


# -- the servers, in a child process ---------------------------------------------------


class _TimedRequests(list[dict[str, Any]]):
    """``ScriptedOpenAIServer.requests`` that also notes when each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, body: dict[str, Any]) -> None:
        self.times.append(time.monotonic())  # CLOCK_MONOTONIC: the same in every process
        super().append(body)


def _serve(conn: Connection) -> None:
    """The child: start servers and report their request times, as the parent asks."""
    live: list[ScriptedOpenAIServer] = []
    timed: list[_TimedRequests] = []
    while True:
        op, *args = conn.recv()
        try:
            if op == "start":
                model, steps = args
                server = ScriptedOpenAIServer(steps, model=model)
                server.requests = requests = _TimedRequests()
                live.append(server.start())
                timed.append(requests)
                conn.send((len(live) - 1, server.url))
            elif op == "times":
                conn.send(list(timed[args[0]].times))
            elif op == "stop":
                for server in live:
                    server.stop()
                conn.send(None)
                return
            else:
                raise ValueError(f"unknown operation {op!r}")
        except Exception as exc:
            conn.send(exc)


class ServerHost:
    """A child process holding ``ScriptedOpenAIServer`` instances on loopback."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True)
        self._process.start()
        child.close()

    def ask(self, *message: Any) -> Any:
        self._conn.send(message)
        reply = self._conn.recv()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def start(self, model: str, steps: list[dict[str, Any]]) -> Remote:
        index, url = self.ask("start", model, steps)
        return Remote(self, index, model, url)

    def pair(self, primary_steps: list[dict[str, Any]], fallback_steps: int) -> Pair:
        return Pair(
            self.start(PRIMARY_MODEL, primary_steps),
            self.start(FALLBACK_MODEL, [{"content": FALLBACK_TEXT}] * fallback_steps),
        )

    def close(self) -> None:
        self.ask("stop")
        self._process.join(timeout=10)


@dataclass
class Remote:
    """One server in the child: its URL, and when it received each chat request."""

    host: ServerHost
    index: int
    model: str
    url: str

    def times(self) -> list[float]:
        times: list[float] = self.host.ask("times", self.index)
        return times


@dataclass
class Pair:
    primary: Remote
    fallback: Remote


# -- measurement -----------------------------------------------------------------------


@dataclass
class Samples:
    """Per-call latencies (seconds) and the wall time they took, over any number of runs."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def add(self, latencies: list[float], wall_s: float) -> None:
        self.latencies.extend(latencies)
        self.wall_s += wall_s

    @property
    def calls_per_s(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0

    def mean_us(self) -> float:
        return statistics.fmean(self.latencies) * 1e6

    def pct_us(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1e6


async def settle() -> None:
    """Between timed blocks: wait until this process is idle (LiteLLM finishes logging
    work in threads after its calls have returned; left running, that work would be
    timed as part of the next block), then collect garbage and freeze what survives:
    LiteLLM's heap makes a full collection take ~0.15 s here, and one landing inside a
    timed block would be charged to whichever variant was running."""
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline:
        cpu = time.process_time()  # all of this process's threads
        await asyncio.sleep(SETTLE_PROBE_S)
        if time.process_time() - cpu < SETTLE_PROBE_S / 10:
            break
    gc.collect()
    gc.freeze()


async def run_sequential(call: Call, n: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    begin = time.perf_counter()
    for _ in range(n):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return latencies, time.perf_counter() - begin


async def run_concurrent(call: Call, n: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - begin


async def measure(
    variants: dict[str, Call], *, concurrent: bool = True
) -> tuple[dict[str, Samples], dict[str, Samples]]:
    """Warm every variant up, then time them.  ``variants`` come in pairs, a baseline and
    what is compared with it.  Sequentially, the two of a pair alternate call by call,
    so a burst of load from elsewhere hits both alike; pairs take turns in blocks, in
    shuffled order, with a pause between blocks.  At concurrency, each variant runs
    alone in its block, in ``balanced_orders``."""
    names = list(variants)
    pairs = [names[i : i + 2] for i in range(0, len(names), 2)]
    seq = {name: Samples() for name in names}
    conc = {name: Samples() for name in names}
    for call in variants.values():
        await run_sequential(call, WARMUP)
    shuffle = random.Random(0).shuffle  # a fixed seed: the same schedule on every run
    for _ in range(SEQ_BLOCKS):
        shuffle(pairs)
        for pair in pairs:
            await settle()
            for i in range(SEQ_CALLS // SEQ_BLOCKS):
                for name in pair if i % 2 == 0 else pair[::-1]:
                    latencies, _ = await run_sequential(variants[name], 1)
                    seq[name].add(latencies, latencies[0])
    for order in balanced_orders(pairs, CONC_BLOCKS if concurrent else 0):
        for name in order:
            await settle()
            calls = CONC_CALLS // CONC_BLOCKS
            conc[name].add(*await run_concurrent(variants[name], calls, CONCURRENCY))
    return seq, conc


def balanced_orders(pairs: list[list[str]], blocks: int) -> list[list[str]]:
    """Block orders in which, over every 4 blocks, each variant comes first in its pair
    as often as second, and each pair first as often as last: a fixed order measurably
    favoured one slot (an A/A run, the same variant in both slots of a pair, differed by
    ~7% at concurrency 16)."""
    orders: list[list[str]] = []
    for k in range(blocks):
        ordered_pairs = pairs if k % 2 == 0 else pairs[::-1]
        flip = (k // 2) % 2 == 1
        orders.append([name for pair in ordered_pairs for name in (pair[::-1] if flip else pair)])
    return orders


@dataclass
class Failover:
    """A run with the primary failing: throughput before and after the router stopped
    calling it, judged from the requests the primary server actually received."""

    calls: int
    primary_requests: int
    before_calls: int
    before_s: float
    after_calls: int
    after_s: float

    @property
    def opened(self) -> bool:
        return self.primary_requests < self.calls and self.after_calls > 0

    @staticmethod
    def rate(calls: int, seconds: float) -> float:
        return calls / seconds if seconds > 0 else 0.0


async def failover_run(call: Call, primary: Remote, n: int, concurrency: int) -> Failover:
    """``n`` calls, ``concurrency`` at a time.  The router stopped calling the primary
    after its last request there: calls finished by the first completion after that
    request are "before", the rest "after".  Exact sequentially; at concurrency, the
    calls in flight at that moment (fewer than ``concurrency``) may land in either."""
    seen = len(primary.times())
    ends: list[float] = []
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()
            ends.append(time.monotonic())

    await settle()
    begin = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    end = time.monotonic()
    hits = primary.times()[seen:]
    last_hit = max(hits, default=begin)
    opened_at = min((t for t in ends if t >= last_hit), default=end)
    before = sum(1 for t in ends if t <= opened_at)
    return Failover(
        calls=n,
        primary_requests=len(hits),
        before_calls=before,
        before_s=opened_at - begin,
        after_calls=n - before,
        after_s=end - opened_at,
    )


# -- the variants ----------------------------------------------------------------------


def provider(name: str, server: Remote) -> OpenAIProvider:
    return OpenAIProvider(name=name, kind="openai_compat", model=server.model, endpoint=server.url)


def router_of(servers: Pair, policy: BreakerPolicy) -> ModelRouter:
    return ModelRouter(
        [
            Candidate("primary", provider("primary", servers.primary)),
            Candidate("fallback", provider("fallback", servers.fallback)),
        ],
        breakers=LocalBreakerStore(),
        policy=policy,
    )


class InstantProvider:
    """A provider that answers at once, without I/O: around it, only the router is timed."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text

    async def complete(self, request: CompletionRequest) -> Completion:
        return Completion(
            message=Message(role="assistant", content=self.text),
            usage=Usage(input_tokens=4, output_tokens=4, calls=1),
            model=self.name,
            provider=self.name,
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        yield CompletionChunk(text=self.text, usage=Usage(4, 4, 1), finish_reason="stop")

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def ours(target: Provider, expect: str) -> Call:
    request = CompletionRequest(messages=[Message(role="user", content=MESSAGES[0]["content"])])

    async def call() -> None:
        completion = await target.complete(request)
        if completion.message.content != expect:
            raise RuntimeError(f"unexpected answer {completion.message.content!r}")

    return call


def litellm_router(litellm: Any, servers: Pair) -> Any:
    """LiteLLM's Router set up like ours: fallbacks, no retries (router or SDK), and a
    deployment cooldown after FAILOVER_THRESHOLD failures, for COOLDOWN_S."""

    def deployment(group: str, server: Remote) -> dict[str, Any]:
        params = {"model": f"openai/{server.model}", "api_base": server.url, "api_key": API_KEY}
        return {"model_name": group, "litellm_params": {**params, "max_retries": 0}}

    return litellm.Router(
        model_list=[
            deployment("primary", servers.primary),
            deployment("fallback", servers.fallback),
        ],
        fallbacks=[{"primary": ["fallback"]}],
        num_retries=0,
        # LiteLLM cools a deployment down once its failures this minute exceed this.
        allowed_fails=FAILOVER_THRESHOLD - 1,
        cooldown_time=COOLDOWN_S,
    )


def via_litellm(send: Callable[..., Awaitable[Any]], expect: str, **kwargs: Any) -> Call:
    async def call() -> None:
        response = await send(messages=MESSAGES, **kwargs)
        content = response.choices[0].message.content
        if content != expect:
            raise RuntimeError(f"unexpected answer {content!r}")

    return call


def import_litellm() -> tuple[Any, str | None]:
    try:
        import litellm
    except ImportError as exc:
        return None, f"LiteLLM is not installed ({exc}); `.venv/bin/pip install litellm`"
    litellm.suppress_debug_info = True
    if hasattr(litellm, "telemetry"):
        litellm.telemetry = False
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return litellm, None


async def healthy_runs(
    host: ServerHost, litellm: Any
) -> tuple[dict[str, Samples], dict[str, Samples]]:
    """Variants 1, 2 (and 4a, 4b), against one healthy primary."""
    per_variant = WARMUP + SEQ_CALLS + CONC_CALLS
    n_variants = 4 if litellm is not None else 2
    servers = host.pair([{"content": PRIMARY_TEXT}] * (per_variant * n_variants), 0)
    direct = provider("primary", servers.primary)
    router = router_of(servers, BreakerPolicy())
    variants: dict[str, Call] = {
        DIRECT: ours(direct, PRIMARY_TEXT),
        OURS: ours(router, PRIMARY_TEXT),
    }
    if litellm is not None:
        variants[LITE_DIRECT] = via_litellm(
            litellm.acompletion,
            PRIMARY_TEXT,
            model=f"openai/{PRIMARY_MODEL}",
            api_base=servers.primary.url,
            api_key=API_KEY,
            max_retries=0,
        )
        lite_router = litellm_router(litellm, servers)
        variants[LITE_ROUTER] = via_litellm(lite_router.acompletion, PRIMARY_TEXT, model="primary")
    try:
        seq, conc = await measure(variants)
    finally:
        await direct.aclose()
        await router.aclose()
    if servers.fallback.times():
        raise RuntimeError("a healthy run reached the fallback")
    return seq, conc


async def bare_runs(host: ServerHost, litellm: Any) -> dict[str, Samples]:
    """Variant 5: the routing layers without HTTP (sequential only: nothing to wait on)."""
    direct = InstantProvider("primary", PRIMARY_TEXT)
    router = ModelRouter(
        [
            Candidate("primary", InstantProvider("primary", PRIMARY_TEXT)),
            Candidate("fallback", InstantProvider("fallback", FALLBACK_TEXT)),
        ],
        breakers=LocalBreakerStore(),
    )
    variants: dict[str, Call] = {
        BARE: ours(direct, PRIMARY_TEXT),
        BARE_OURS: ours(router, PRIMARY_TEXT),
    }
    if litellm is not None:
        # Servers with an empty script: a call that reached one would fail loudly.
        lite_router = litellm_router(litellm, host.pair([], 0))
        variants[BARE_LITE] = via_litellm(
            litellm.acompletion,
            PRIMARY_TEXT,
            model=f"openai/{PRIMARY_MODEL}",
            api_key=API_KEY,
            mock_response=PRIMARY_TEXT,
        )
        variants[BARE_LITE_ROUTER] = via_litellm(
            lite_router.acompletion, PRIMARY_TEXT, model="primary", mock_response=PRIMARY_TEXT
        )
    seq, _ = await measure(variants, concurrent=False)
    return seq


async def failing_runs(host: ServerHost, litellm: Any) -> dict[str, dict[str, Failover]]:
    """Variant 3 (and 4c): the primary answers 500 to every call.  A fresh breaker (or
    LiteLLM router) per run, its connection pools warmed on the fallback first."""
    modes = (("sequential", SEQ_CALLS, 1), ("concurrent", CONC_CALLS, CONCURRENCY))
    runs: dict[str, dict[str, Failover]] = {mode: {} for mode, _, _ in modes}
    failing = [FAILURE] * (SEQ_CALLS + CONC_CALLS)
    fallback_steps = 2 * WARMUP + SEQ_CALLS + CONC_CALLS
    policy = BreakerPolicy(failure_threshold=FAILOVER_THRESHOLD, cooldown_s=COOLDOWN_S)
    servers = host.pair(failing, fallback_steps)
    for mode, n, width in modes:
        router = router_of(servers, policy)
        await run_sequential(ours(router.candidates[1].provider, FALLBACK_TEXT), WARMUP)
        await router.candidates[0].provider.health()  # connects; uses no scripted step
        try:
            call = ours(router, FALLBACK_TEXT)
            runs[mode][OURS_DOWN] = await failover_run(call, servers.primary, n, width)
        finally:
            await router.aclose()
    if litellm is None:
        return runs
    servers = host.pair(failing, fallback_steps)
    for mode, n, width in modes:
        lite = litellm_router(litellm, servers)
        await run_sequential(via_litellm(lite.acompletion, FALLBACK_TEXT, model="fallback"), WARMUP)
        call = via_litellm(lite.acompletion, FALLBACK_TEXT, model="primary")
        runs[mode][LITE_DOWN] = await failover_run(call, servers.primary, n, width)
    return runs


# -- report ----------------------------------------------------------------------------


def machine() -> list[str]:
    return harness.machine()


def _us(value: float, width: int, sign: bool = False) -> str:
    """Microseconds, with a decimal while they are few."""
    return f"{value:{'+' if sign else ''}{width}.{1 if abs(value) < 100 else 0}f}"


def latency_table(title: str, samples: dict[str, Samples], baseline: str) -> None:
    base = samples[baseline]
    tag = baseline.split()[0]
    print(f"\n{title} (+ = added vs {tag}, in us)")
    print(
        f"  {'variant':<39}{'calls':>6}{'calls/s':>8}{'mean us':>9}{'p50 us':>8}{'p99 us':>8}"
        f"{'+mean':>8}{'+p50':>8}{'+p99':>8}{'x ' + tag:>8}"
    )
    for name, s in samples.items():
        added = (
            _us(s.mean_us() - base.mean_us(), 8, sign=True)
            + _us(s.pct_us(50) - base.pct_us(50), 8, sign=True)
            + _us(s.pct_us(99) - base.pct_us(99), 8, sign=True)
            if name != baseline
            else f"{'-':>8}{'-':>8}{'-':>8}"
        )
        x = s.mean_us() / base.mean_us()
        print(
            f"  {name:<39}{len(s.latencies):>6}{s.calls_per_s:>8.0f}{_us(s.mean_us(), 9)}"
            f"{_us(s.pct_us(50), 8)}{_us(s.pct_us(99), 8)}{added}"
            f"{x:>8.{2 if x < 100 else 0}f}"
        )


def failover_table(title: str, runs: dict[str, Failover]) -> None:
    print(f"\n{title}")
    print(
        f"  {'router':<36}{'calls':>6}{'to primary':>11}{'before':>8}{'calls/s':>8}"
        f"{'after':>8}{'calls/s':>8}{'after/before':>13}"
    )
    for name, r in runs.items():
        before = r.rate(r.before_calls, r.before_s)
        after = r.rate(r.after_calls, r.after_s)
        tail = (
            f"{r.after_calls:>8}{after:>8.0f}{after / before:>13.2f}"
            if r.opened
            else f"{'breaker never opened':>29}"
        )
        print(
            f"  {name:<36}{r.calls:>6}{r.primary_requests:>11}{r.before_calls:>8}"
            f"{before:>8.0f}{tail}"
        )


def ratio(ours_us: float, theirs_us: float) -> str:
    if theirs_us <= 0:
        return "n/a (LiteLLM's measured <= 0)"
    if ours_us <= 0:
        return "~0 (ours measured <= 0: within the noise)"
    return f"{ours_us / theirs_us:.3f}"


def print_ratios(label: str, samples: dict[str, Samples], names: tuple[str, str, str, str]) -> None:
    """``names``: our direct call, our router, LiteLLM's direct call, LiteLLM's router."""
    direct, router, lite_direct, lite_router = names

    def added(name: str, baseline: str) -> tuple[float, float]:
        a, b = samples[name], samples[baseline]
        return a.mean_us() - b.mean_us(), a.pct_us(50) - b.pct_us(50)

    def tag(name: str) -> str:
        return name.split()[0]

    mean, p50 = added(router, direct)
    x = samples[router].mean_us() / samples[direct].mean_us()
    print(f"  {label}:")
    print(
        f"    ModelRouter adds ({tag(router)} - {tag(direct)}): "
        f"{mean:+.1f} us mean, {p50:+.1f} us p50 per call (x{x:.3f})"
    )
    if lite_router not in samples:
        return
    layer_mean, layer_p50 = added(lite_router, lite_direct)
    print(
        f"    litellm.Router adds ({tag(lite_router)} - {tag(lite_direct)}): "
        f"{layer_mean:+.1f} us mean, {layer_p50:+.1f} us p50 per call"
    )
    print(
        f"    ratio, ours / LiteLLM's: mean {ratio(mean, layer_mean)}, p50 {ratio(p50, layer_p50)}"
    )
    if lite_direct == LITE_DIRECT:
        total_mean, total_p50 = added(lite_router, direct)
        print(
            f"    litellm.Router vs our direct call ({tag(lite_router)} - {tag(direct)}): "
            f"{total_mean:+.0f} us mean, {total_p50:+.0f} us p50; ratio, ours / that: "
            f"mean {ratio(mean, total_mean)}, p50 {ratio(p50, total_p50)}"
        )


async def main() -> int:
    started = time.perf_counter()
    litellm, skipped = import_litellm()
    for line in machine():
        print(line)
    if litellm is not None:
        print(f"LiteLLM: {importlib.metadata.version('litellm')}")
    else:
        print(f"LiteLLM: comparison skipped: {skipped}")
    print(
        f"workload: {WARMUP} warm-up calls, then {SEQ_CALLS} sequential calls per variant "
        f"(in {SEQ_BLOCKS} interleaved blocks) and {CONC_CALLS} calls at concurrency "
        f"{CONCURRENCY} ({CONC_BLOCKS} blocks); servers on loopback in a child process"
    )
    host = ServerHost()
    try:
        phases: list[str] = [f"setup {time.perf_counter() - started:.1f} s"]
        mark = time.perf_counter()
        seq, conc = await healthy_runs(host, litellm)
        phases.append(f"healthy {time.perf_counter() - mark:.1f} s")
        mark = time.perf_counter()
        failover = await failing_runs(host, litellm)
        phases.append(f"primary down {time.perf_counter() - mark:.1f} s")
        mark = time.perf_counter()
        bare = await bare_runs(host, litellm)
        phases.append(f"no HTTP {time.perf_counter() - mark:.1f} s")
    finally:
        host.close()

    latency_table(f"Sequential over loopback HTTP, {SEQ_CALLS} calls per variant", seq, DIRECT)
    latency_table(
        f"Concurrency {CONCURRENCY} over loopback HTTP, {CONC_CALLS} calls per variant",
        conc,
        DIRECT,
    )
    print(
        f"\nPrimary down (HTTP 500 on every call): calls fall back until the breaker opens "
        f"after {FAILOVER_THRESHOLD} failures (cooldown {COOLDOWN_S:g} s)"
    )
    failover_table(f"Sequential, {SEQ_CALLS} calls", failover["sequential"])
    failover_table(f"Concurrency {CONCURRENCY}, {CONC_CALLS} calls", failover["concurrent"])
    latency_table(f"Routing layer alone, no HTTP, sequential, {SEQ_CALLS} calls", bare, BARE)
    print("\nAdded latency per call, and ratios (primary healthy)")
    http = (DIRECT, OURS, LITE_DIRECT, LITE_ROUTER)
    print_ratios("over loopback HTTP, sequential", seq, http)
    print_ratios(f"over loopback HTTP, concurrency {CONCURRENCY}", conc, http)
    print_ratios("routing layer alone", bare, (BARE, BARE_OURS, BARE_LITE, BARE_LITE_ROUTER))
    bare_us = bare[BARE_OURS].pct_us(50) - bare[BARE].pct_us(50)
    print(
        f"  note: ModelRouter's own cost ({bare_us:.1f} us p50, routing layer alone) is far "
        "below the jitter of a loopback HTTP call, so its over-HTTP differences (2 - 1), "
        "and the ratios built on them, are mostly noise and change sign between runs"
    )
    if litellm is None:
        print(f"\nLiteLLM comparison skipped: {skipped}")
    if blocked_network:
        print(f"\nFAILED: network access outside loopback was attempted: {blocked_network}")
        return 1
    took = time.perf_counter() - started
    print(f"\nno network access outside loopback; run took {took:.1f} s ({', '.join(phases)})")
    return 0


if __name__ == "__main__":
    sys.addaudithook(_network_guard)
    sys.exit(asyncio.run(main()))
