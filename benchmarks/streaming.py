"""Streaming benchmark: time to first token and tokens per second through each client
protocol, against the provider's own stream measured in the same run.

One run of this script starts a local Ray cluster and Serve on a free loopback port
(as ``patterns.py`` does) and deploys one ``react`` agent whose model is a
``ScriptedOpenAIServer`` in a child process.  Every answer is ``--words`` words,
streamed one chunk per word with ``--token-delay`` seconds between chunks, so a
stream's pace is the model server's, and what a protocol adds shows in its time to
first token and in any tokens per second it loses.  The same answer is then read:

- ``provider``: straight from the model server (``POST /v1/chat/completions``,
  ``stream: true``): the baseline;
- ``sse``: ``POST /v1/agents/{name}/stream`` (``token`` events);
- ``websocket``: ``WS /v1/ws/agent/{name}`` (``token`` frames);
- ``openai``: ``POST /v1/chat/completions`` with the agent as the model
  (``delta.content`` chunks);
- ``a2a``: ``message/stream`` on ``POST /a2a/{name}`` (``artifact-update`` events);
- ``agui``: ``POST /v1/agui/{name}`` (``TEXT_MESSAGE_CONTENT`` events).

Each read is checked: the pieces join to the scripted answer (A2A's last artifact
chunk repeats the whole answer; it is not counted).  Reads go one at a time, the
protocols in a rotating order, after a warm-up.  It prints, per protocol, the median
time to first token (from sending the request) and tokens per second (first to last
token), and each against the provider's own stream: the extra milliseconds to the
first token and the ratio of the token rates.

    .venv/bin/python benchmarks/streaming.py
    .venv/bin/python benchmarks/streaming.py --reads 3   # quicker
"""

from __future__ import annotations

import os

import harness
from serve_load import MODEL, Child, _model_server

# Before Ray is imported: every listener on loopback, no usage stats (DESIGN.md §7).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import ray
from websockets.sync.client import connect

AGENT = "streamer"
QUERY = "Tell me a story."
WORDS = 120  # words in the answer (--words)
TOKEN_DELAY_S = 0.004  # between the model server's chunks (--token-delay)
READS = 8  # timed reads per protocol (--reads)
WARMUP = 2  # untimed (but checked) reads per protocol
TIMEOUT_S = 60.0

AGENT_YAML = f"""\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {AGENT}
spec:
  model:
    primary: {{provider: openai_compat, model: {MODEL}, endpoint: "{{url}}", max_retries: 0}}
  prompts: {{system: "You tell stories."}}
  orchestration: {{pattern: react, max_iterations: 2, timeout_seconds: 60}}
"""


@dataclass
class Read:
    """One stream: when its request left, and when each piece of the answer came."""

    sent: float
    stamps: list[float] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        if text:
            self.stamps.append(time.perf_counter())
            self.pieces.append(text)

    @property
    def ttft_ms(self) -> float:
        return (self.stamps[0] - self.sent) * 1e3

    @property
    def tokens_per_s(self) -> float:
        span = self.stamps[-1] - self.stamps[0]
        return (len(self.stamps) - 1) / span if span > 0 else float("inf")


def sse_data(lines: Iterator[str]) -> Iterator[dict[str, object]]:
    for line in lines:
        if line.startswith("data:"):
            payload = line[5:].strip()
            if payload and payload != "[DONE]":
                yield json.loads(payload)


# -- one reader per protocol -------------------------------------------------------------


def read_provider(client: httpx.Client, base: str, model_url: str) -> Read:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": QUERY}]}
    read = Read(time.perf_counter())
    with client.stream("POST", f"{model_url}/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for event in sse_data(reply.iter_lines()):
            for choice in event.get("choices") or []:  # type: ignore[attr-defined]
                read.add(str((choice.get("delta") or {}).get("content") or ""))
    return read


def read_sse(client: httpx.Client, base: str, model_url: str) -> Read:
    read = Read(time.perf_counter())
    with client.stream("POST", f"{base}/v1/agents/{AGENT}/stream", json={"query": QUERY}) as r:
        r.raise_for_status()
        for event in sse_data(r.iter_lines()):
            if event.get("type") == "token" and event.get("channel") == "answer":
                read.add(str(event["text"]))
            elif event.get("type") == "error":
                raise RuntimeError(f"sse: {event}")
    return read


def read_websocket(client: httpx.Client, base: str, model_url: str) -> Read:
    url = base.replace("http://", "ws://") + f"/v1/ws/agent/{AGENT}"
    with connect(url, open_timeout=TIMEOUT_S, close_timeout=5) as ws:
        read = Read(time.perf_counter())
        ws.send(json.dumps({"query": QUERY}))
        while True:
            frame = json.loads(ws.recv(timeout=TIMEOUT_S))
            kind = frame.get("type")
            if kind == "token" and frame.get("channel") == "answer":
                read.add(str(frame["text"]))
            elif kind == "done":
                return read
            elif kind == "error":
                raise RuntimeError(f"websocket: {frame}")


def read_openai(client: httpx.Client, base: str, model_url: str) -> Read:
    body = {"model": AGENT, "stream": True, "messages": [{"role": "user", "content": QUERY}]}
    read = Read(time.perf_counter())
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for event in sse_data(reply.iter_lines()):
            if "error" in event:
                raise RuntimeError(f"openai: {event}")
            for choice in event.get("choices") or []:  # type: ignore[attr-defined]
                read.add(str((choice.get("delta") or {}).get("content") or ""))
    return read


def read_a2a(client: httpx.Client, base: str, model_url: str) -> Read:
    message = {
        "role": "user",
        "messageId": uuid.uuid4().hex,
        "parts": [{"kind": "text", "text": QUERY}],
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "message/stream", "params": {"message": message}}
    read = Read(time.perf_counter())
    with client.stream("POST", f"{base}/a2a/{AGENT}", json=body) as reply:
        reply.raise_for_status()
        for event in sse_data(reply.iter_lines()):
            if "error" in event:
                raise RuntimeError(f"a2a: {event}")
            result = event.get("result") or {}
            if result.get("kind") != "artifact-update":  # type: ignore[attr-defined]
                continue
            artifact = result["artifact"]  # type: ignore[index]
            if result.get("lastChunk"):  # type: ignore[attr-defined]
                continue  # the whole answer again, as the artifact's last chunk
            read.add("".join(str(p.get("text") or "") for p in artifact.get("parts") or []))
    return read


def read_agui(client: httpx.Client, base: str, model_url: str) -> Read:
    body = {
        "threadId": f"t-{uuid.uuid4().hex}",
        "runId": uuid.uuid4().hex,
        "state": {},
        "messages": [{"id": "m1", "role": "user", "content": QUERY}],
        "tools": [],
        "context": [],
        "forwardedProps": {},
    }
    read = Read(time.perf_counter())
    with client.stream("POST", f"{base}/v1/agui/{AGENT}", json=body) as reply:
        reply.raise_for_status()
        for event in sse_data(reply.iter_lines()):
            if event.get("type") == "TEXT_MESSAGE_CONTENT":
                read.add(str(event["delta"]))
            elif event.get("type") == "RUN_ERROR":
                raise RuntimeError(f"agui: {event}")
    return read


Reader = Callable[[httpx.Client, str, str], Read]
READERS: dict[str, Reader] = {
    "provider": read_provider,
    "sse": read_sse,
    "websocket": read_websocket,
    "openai": read_openai,
    "a2a": read_a2a,
    "agui": read_agui,
}


def one_read(
    name: str,
    client: httpx.Client,
    base: str,
    model_url: str,
    model: Child,
    args: argparse.Namespace,
) -> Read:
    answer = " ".join(f"word{i}" for i in range(args.words))
    model.ask("steps", [{"content": answer, "token_delay_s": args.token_delay}])
    read = READERS[name](client, base, model_url)
    taken, left = model.ask("take")
    if "".join(read.pieces).strip() != answer or taken != 1 or left:
        raise RuntimeError(
            f"{name}: the stream joined to {''.join(read.pieces)[:80]!r}... "
            f"({taken} model requests, {left} answers left)"
        )
    return read


def report(reads: dict[str, list[Read]]) -> None:
    base_ttft = statistics.median(r.ttft_ms for r in reads["provider"])
    base_rate = statistics.median(r.tokens_per_s for r in reads["provider"])
    print(
        f"\n{'protocol':<11}{'first token':>13}{'vs provider':>13}"
        f"{'tokens/s':>10}{'vs provider':>13}{'pieces':>8}"
    )
    for name, rs in reads.items():
        ttft = statistics.median(r.ttft_ms for r in rs)
        rate = statistics.median(r.tokens_per_s for r in rs)
        pieces = statistics.median(len(r.stamps) for r in rs)
        extra = "(baseline)" if name == "provider" else f"+{ttft - base_ttft:.1f} ms"
        ratio = "(baseline)" if name == "provider" else f"{rate / base_rate:.2f}x"
        print(f"{name:<11}{ttft:>10.1f} ms{extra:>13}{rate:>10.0f}{ratio:>13}{pieces:>8.0f}")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--reads", type=int, default=READS, help="timed reads per protocol")
    parser.add_argument("--words", type=int, default=WORDS, help="words in the answer")
    parser.add_argument(
        "--token-delay", type=float, default=TOKEN_DELAY_S, help="seconds between chunks"
    )
    args = parser.parse_args(argv)
    if args.reads < 1 or args.words < 2:
        parser.error("at least 1 read and 2 words")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    started = time.perf_counter()
    for line in harness.machine(f", Ray {ray.__version__}", gpu_note=" (not used)"):
        print(line)
    print(
        f"workload: one react agent, an answer of {args.words} words streamed one chunk per "
        f"word, {args.token_delay * 1e3:.1f} ms apart (ScriptedOpenAIServer in a child "
        f"process); {WARMUP} warm-up and {args.reads} timed reads per protocol, one at a "
        "time, rotating the order"
    )
    model = Child(_model_server)
    reads: dict[str, list[Read]] = {name: [] for name in READERS}
    try:
        _, model_url = model.recv(timeout_s=60)
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            (root / "agents").mkdir()
            (root / "agents" / f"{AGENT}.agent.yaml").write_text(
                AGENT_YAML.replace("{url}", model_url)
            )
            with harness.served(root) as base:
                if base is None:
                    return 2
                names = list(READERS)
                with httpx.Client(timeout=TIMEOUT_S) as client:
                    for name in names:
                        for _ in range(WARMUP):
                            one_read(name, client, base, model_url, model, args)
                    for i in range(args.reads):
                        for name in names[i % len(names) :] + names[: i % len(names)]:
                            reads[name].append(one_read(name, client, base, model_url, model, args))
    finally:
        model.close()
    report(reads)
    print(f"\nload average at the end: {harness.load_average()}")
    print(f"run took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
