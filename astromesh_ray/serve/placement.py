"""Where replicas run: the label selectors the builders give them, colocation of an
agent with its model, and the accelerator types Ray knows.

Selectors (``astromesh_ray.spec.deployment``): a deployment asking for no accelerator
gets ``{astromesh/pool: "!gpu"}`` unless its YAML names ``placement.node_labels``; a
GPU deployment is placed by Ray on nodes with GPUs (``num_gpus``) and no selector is
added, so nothing here can keep it off them.

Colocation (``placement: {colocate_with: model}`` of an agent): when the agent's
application is built, the nodes that run its primary model's replicas are looked up
in the Serve controller (waiting, up to ``COLOCATE_WAIT_S``, for the model's first
replica to be placed: under ``serve deploy`` the applications are built side by
side).  The agent's replicas then select those nodes by Ray's own ``ray.io/node-id``
label, with a ``fallback_strategy`` of the selector they would have had otherwise:
a replica that cannot go there (the node is gone) still starts.  The nodes are the
model's at deploy time; a redeploy (``astromesh apply``, ``serve deploy``) looks
again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from astromesh_ray.errors import ConfigError
from astromesh_ray.serve.providers import provider_app_name
from astromesh_ray.spec import AgentSpec, ModelEndpoint, ProviderEntrySpec, resolve_models
from astromesh_ray.spec.deployment import NODE_ID_LABEL, DeploymentSpec, replica_selector
from astromesh_ray.spec.diagnostics import did_you_mean

__all__ = [
    "COLOCATE_WAIT_S",
    "check_accelerator_type",
    "colocated",
    "colocation_target",
    "placed_actor_options",
    "replica_nodes",
    "wait_for_replica_nodes",
]

COLOCATE_WAIT_S = 600.0
"""How long building a colocated agent waits for its model's first replica to be
placed (a GPU node the autoscaler adds takes minutes)."""
_POLL_S = 1.0
# Replica states in which the replica's actor has a node (STOPPING ones are leaving).
_PLACED = ("STARTING", "UPDATING", "RECOVERING", "RUNNING")


def check_accelerator_type(where: str, value: str | None, *, llm: bool = False) -> None:
    """Refuse an ``accelerator_type`` that is not one of Ray's (a replica asking for
    an unknown type would wait for a node that never comes).  ``llm``: for Ray's
    ``LLMConfig``, which also takes A10 for A10G (a plain replica does not)."""
    if value is None:
        return
    # The list Ray's LLMConfig checks against (a public module, importable without vLLM).
    from ray.util.accelerators import accelerators

    known = [v for k, v in vars(accelerators).items() if k.isupper() and isinstance(v, str)]
    if value not in known and not (llm and value == "A10"):
        raise ConfigError(
            f"{where}.accelerator_type: {value!r} is not a Ray accelerator type",
            hint=did_you_mean(value, known)
            or "valid types: "
            + ", ".join(known)
            + " (for another type a node declares, ask for its resource instead: "
            "resources: {'accelerator_type:<TYPE>': 0.001})",
        )


def placed_actor_options(
    defaults: Mapping[str, Any],
    spec: DeploymentSpec | None,
    near: Sequence[str] = (),
) -> dict[str, Any]:
    """``ray_actor_options`` of a deployment: the YAML's over the decorator's
    ``defaults``, with its label selector (``replica_selector``), and, when ``near``
    lists node ids, those nodes preferred (``colocated``)."""
    yaml = spec.to_serve_options().get("ray_actor_options", {}) if spec is not None else {}
    actor: dict[str, Any] = {**defaults, **yaml}
    selector = replica_selector(spec, actor)
    actor.pop("label_selector", None)
    if near:
        # Asking for the model's nodes replaces the default (a GPU model's nodes are in
        # the GPU pool); node_labels the YAML names still apply.
        asked = spec.placement.node_labels if spec is not None and spec.placement else None
        actor.update(colocated(asked or {}, near, otherwise=selector))
    elif selector:
        actor["label_selector"] = selector
    return actor


def colocated(
    asked: Mapping[str, str], nodes: Sequence[str], *, otherwise: Mapping[str, str]
) -> dict[str, Any]:
    """Actor options for replicas on one of ``nodes`` (ids) that also match ``asked``,
    else (those nodes cannot take them) on nodes matching ``otherwise``."""
    if not nodes:
        raise ValueError("colocated() needs at least one node id")
    # No space after the commas: Ray reads each value of this label as a node id.
    return {
        "label_selector": {**asked, NODE_ID_LABEL: f"in({','.join(sorted(nodes))})"},
        "fallback_strategy": [{"label_selector": dict(otherwise)}],
    }


def colocation_target(
    agent: AgentSpec,
    providers: Mapping[str, ProviderEntrySpec],
    endpoints: Mapping[str, ModelEndpoint],
) -> str:
    """The application ``agent`` runs next to (``colocate_with: model``): its primary
    model's provider deployment, among the planned ``endpoints``; a ``ConfigError``
    when that model has no deployment, or one that may have no replica."""
    where = f"{agent.source or agent.name}: spec.deployment.placement.colocate_with"
    resolved = resolve_models(agent, providers)
    if not resolved:
        raise ConfigError(f"{where}: the agent has no model to run next to")
    primary = resolved[0]
    app = provider_app_name(primary)
    hosted = endpoints.get(app)
    if hosted is None or not hosted.dedicated:
        raise ConfigError(
            f"{where}: the primary model {primary.provider}:{primary.model} runs in no "
            "deployment of its own (a remote API is called from the agent's replicas), "
            "so there is no node to run next to",
            hint="remove colocate_with, serve the model in the cluster, or give its "
            "provider entry `deployment: {mode: dedicated}`",
        )
    scaling = hosted.deployment.autoscaling_config if hosted.deployment else None
    if scaling is not None and scaling.min_replicas == 0:
        raise ConfigError(
            f"{where}: the model's deployment ({app}) scales to zero (min_replicas: 0): "
            "while it has no replica there is no node to run next to",
            hint="give the model's autoscaling_config min_replicas of at least 1, or "
            "remove colocate_with",
        )
    return app


def replica_nodes(app: str) -> list[str]:
    """Ids of the nodes running placed replicas of Serve application ``app`` (none
    when it is not deployed yet)."""
    # The controller's details (what `serve status -v` and the dashboard show) are the
    # one place that knows each replica's node; `serve.status()` leaves them out.
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    details: dict[str, Any] = client.get_serve_details()  # type: ignore[union-attr]
    found = details.get("applications", {}).get(app)
    if not found:
        return []
    return sorted(
        {
            replica["node_id"]
            for deployment in found.get("deployments", {}).values()
            for replica in deployment.get("replicas", [])
            if replica.get("node_id") and replica.get("state") in _PLACED
        }
    )


def wait_for_replica_nodes(
    app: str,
    *,
    why: str,
    timeout_s: float = COLOCATE_WAIT_S,
    lookup: Callable[[str], list[str]] = replica_nodes,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """The nodes of ``app``'s replicas, waiting up to ``timeout_s`` for the first one
    to be placed; a ``ConfigError`` (naming ``why``) when none is."""
    deadline = clock() + timeout_s
    while True:
        nodes = lookup(app)
        if nodes:
            return nodes
        if clock() >= deadline:
            raise ConfigError(
                f"{why}: no replica of application {app!r} was placed on a node within "
                f"{timeout_s:.0f} s, so there is no node to run next to",
                hint="check `serve status` for the model's application (a GPU it waits "
                "for, a failed start), or remove placement.colocate_with",
            )
        sleep(_POLL_S)
