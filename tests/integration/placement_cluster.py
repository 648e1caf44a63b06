"""Deploy a configuration on a three-node Ray cluster on this machine and print, as
JSON, where every replica runs (``tests/integration/test_placement.py``).

Ray's ``cluster_utils.Cluster`` starts three raylets here: the head (1 CPU, no
label), a CPU worker (1 CPU, ``astromesh/pool: cpu``) and a "GPU" worker (1 CPU, 1
logical GPU, ``astromesh/pool: gpu``, an H100 accelerator resource).  The
configuration is deployed as ``astromesh serve`` deploys it (``deploy_apps``); then
each ``query`` of ``--turn AGENT=QUERY`` runs one turn through the gateway, and the
answer's trace says where each part ran; with ``--lose-gpu-node APP``, the GPU node is
then removed and the script waits for APP's agent replicas to run elsewhere.

Run in its own process: the pytest session already runs a Ray cluster in-process,
and ``ray.init`` cannot be called twice.

    python tests/integration/placement_cluster.py CONFIG_DIR [--turn near=hi ...]
        [--lose-gpu-node agent-near]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# Before Ray starts: loopback listeners, no usage stats, test helpers importable.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)
GPU_NODE = {
    "num_cpus": 1,
    "num_gpus": 1,
    "labels": {"astromesh/pool": "gpu"},
    "resources": {"accelerator_type:H100": 1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def replica_nodes() -> dict[str, dict[str, list[str]]]:
    """Application -> deployment -> the node ids of its running replicas."""
    from ray.serve.context import _get_global_client

    details: dict[str, Any] = _get_global_client().get_serve_details()
    return {
        app: {
            name: sorted(r["node_id"] for r in d.get("replicas", []) if r["state"] == "RUNNING")
            for name, d in body.get("deployments", {}).items()
        }
        for app, body in details.get("applications", {}).items()
    }


def actor_nodes(prefix: str) -> dict[str, str]:
    """Name -> node id of the live named actors whose name starts with ``prefix``."""
    import ray

    # ray.util.state needs the dashboard, which this cluster does not run; the GCS
    # actor table has the same facts.
    table: dict[str, Any] = ray._private.state.actors()
    return {
        info["Name"]: info["Address"]["NodeID"]
        for info in table.values()
        if info.get("Name", "").startswith(prefix) and info.get("State") == "ALIVE"
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config_dir", type=Path)
    parser.add_argument("--turn", action="append", default=[], help="AGENT=QUERY")
    parser.add_argument(
        "--lose-gpu-node",
        action="append",
        default=[],
        metavar="APP",
        help="then remove the GPU node and wait for APP's agent replicas to run elsewhere",
    )
    args = parser.parse_args()

    import httpx
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from astromesh_ray.serve.local import deploy_apps
    from astromesh_ray.spec import load_config

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    cpu = cluster.add_node(num_cpus=1, labels={"astromesh/pool": "cpu"})
    gpu = cluster.add_node(**GPU_NODE)
    try:
        ray.init(address=cluster.address, namespace="astromesh-placement")
        port = free_port()
        # One proxy: three on one machine would want the same port.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        apps = deploy_apps(load_config(args.config_dir), config_dir=args.config_dir)
        turns: dict[str, Any] = {}
        for turn in args.turn:
            agent, _, query = turn.partition("=")
            reply = httpx.post(
                f"http://127.0.0.1:{port}/v1/agents/{agent}/run",
                json={"query": query},
                timeout=60,
            )
            body = reply.json()
            turns[agent] = {
                "status": reply.status_code,
                "answer": body.get("answer"),
                "error": body.get("error"),
                "where": [
                    {"span": s["name"], **{k: s["where"].get(k) for k in ("app", "node_id")}}
                    for s in body.get("trace", [])
                ],
            }
        placed = replica_nodes()
        # What colocation reads, asked from a Ray task as `serve deploy`'s build tasks do.
        from astromesh_ray.serve.placement import replica_nodes as model_nodes

        lookup = ray.remote(num_cpus=0)(model_nodes)
        seen = {app: ray.get(lookup.remote(app)) for app in apps if app.startswith("provider-")}
        mcp = actor_nodes("astromesh-mcp-")
        after: dict[str, list[str]] = {}
        if args.lose_gpu_node:
            # The model's node goes: the agents placed next to it start elsewhere.
            cluster.remove_node(gpu)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                after = {a: replica_nodes().get(a, {}).get("agent", []) for a in args.lose_gpu_node}
                if all(nodes and gpu.node_id not in nodes for nodes in after.values()):
                    break
                time.sleep(1)
        result = {
            "nodes": {
                "head": cluster.head_node.node_id,
                "cpu": cpu.node_id,
                "gpu": gpu.node_id,
            },
            "apps": apps,
            "replicas": placed,
            "seen_from_a_task": seen,
            "mcp": mcp,
            "turns": turns,
            "after_gpu_node_loss": after,
        }
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
