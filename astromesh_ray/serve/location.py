"""Where a piece of work ran inside the cluster, for the run trace."""

from __future__ import annotations

import contextlib

import ray
from ray import serve

from astromesh_ray.core.trace import local_location


def replica_location() -> dict[str, str]:
    """Host, pid, node id, actor id, and the Serve application/deployment/replica of the caller."""
    where = local_location()
    with contextlib.suppress(Exception):
        runtime = ray.get_runtime_context()
        where["node_id"] = runtime.get_node_id()
        actor = runtime.get_actor_id()  # the replica's actor (None outside one)
        if actor:
            where["actor_id"] = actor
    try:
        ctx = serve.get_replica_context()
    except Exception:
        return where
    where["app"] = ctx.app_name
    where["deployment"] = ctx.deployment
    where["replica"] = ctx.replica_tag if hasattr(ctx, "replica_tag") else str(ctx.replica_id)
    return where
