"""``astromesh serve``: start (or join) a Ray cluster and run every application.

A redeploy (``deploy_apps`` again, on the same Serve instance) also deletes the
applications an earlier deployment of this runtime left that the new plan no longer
has: an agent removed from the config, a provider no agent uses any more (an
in-cluster vLLM one included, which holds GPUs).  Serve has no labels on
applications, so ours are recognised by name *and* by the deployments inside them,
as ``serve/builders.py`` makes them (``is_runtime_app``):

- ``gateway`` holding exactly the ``gateway`` deployment;
- ``agent-<name>`` holding exactly the ``agent`` deployment (``AgentDeployment``);
- ``embedder-<...>`` holding exactly the ``embedder`` deployment
  (``EmbedderDeployment``);
- ``provider-<...>`` holding exactly one deployment, ``provider``
  (``ProviderDeployment``) or ``AstromeshLLMServer:<model id>`` (Ray's ``LLMServer``
  as ``serve/vllm.py`` builds it).

Any other application on a joined cluster is left alone, even one whose name looks
like ours.  One Serve instance runs one astromesh configuration (the gateway owns
``/``), so every application of that shape is this runtime's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import ray
from ray import serve

from astromesh_ray.core.build import check_buildable
from astromesh_ray.serve.builders import BUILDERS, GATEWAY_APP, plan
from astromesh_ray.serve.fingerprint import fingerprint, forget_deployed, record_deployed
from astromesh_ray.spec import LoadedConfig

logger = logging.getLogger(__name__)

# The deployment names inside our applications (see the module docstring); keep in
# step with the @serve.deployment names in serve/agents.py, providers.py, gateway.py,
# embedders.py
# and the server class name in serve/vllm.py.
_AGENT_DEPLOYMENT = "agent"
_PROVIDER_DEPLOYMENT = "provider"
_GATEWAY_DEPLOYMENT = "gateway"
_EMBEDDER_DEPLOYMENT = "embedder"
_VLLM_DEPLOYMENT_PREFIX = "AstromeshLLMServer:"


def cluster_address(loaded: LoadedConfig, address: str | None = None) -> str | None:
    """The cluster to join: ``address``, else ``spec.ray.address`` of runtime.yaml;
    None (or ``local``) starts a local one."""
    ray_spec = loaded.runtime.spec.ray
    return address or (ray_spec.address if ray_spec else None)


def start(
    loaded: LoadedConfig,
    *,
    config_dir: Path | None,
    agents_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
) -> list[str]:
    """Deploy ``loaded`` on Serve; returns the application names, gateway last.

    Joins the cluster at ``address`` (or ``spec.ray.address`` of runtime.yaml),
    else starts a local one.
    """
    ray_spec = loaded.runtime.spec.ray
    address = cluster_address(loaded, address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, namespace=ray_spec.namespace if ray_spec else "astromesh")
        else:
            ray.init(
                address="local",
                namespace=ray_spec.namespace if ray_spec else "astromesh",
                num_cpus=ray_spec.num_cpus if ray_spec else None,
                num_gpus=ray_spec.num_gpus if ray_spec else None,
                include_dashboard=False,
            )
    check_buildable(loaded.agents.values(), loaded.providers)  # fail here, not in a replica
    serve.start(http_options={"host": host, "port": port})
    return deploy_apps(loaded, config_dir=config_dir, agents_dir=agents_dir)


def deploy_apps(
    loaded: LoadedConfig, *, config_dir: Path | None, agents_dir: Path | None = None
) -> list[str]:
    """Run every application of ``plan`` on the running Serve instance, in order;
    then delete the applications of an earlier deployment that the plan no longer
    has (``delete_stale_apps``).  Returns the names of the applications run."""
    fingerprints: dict[str, str | None] = {}
    resolved_config = str(config_dir.resolve()) if config_dir else None
    resolved_agents = str(agents_dir.resolve()) if agents_dir else None
    for app in plan(loaded, resolved_config, resolved_agents):
        application = BUILDERS[app.builder](app.args)
        # Before serve.run, as serve/reload.py hashes it: what Serve is given.
        fingerprints[app.name] = fingerprint(application)
        serve.run(application, name=app.name, route_prefix=app.route_prefix, blocking=False)
    # What runs now, for a later `astromesh apply` (serve/reload.py) to compare with.
    record_deployed(fingerprints)
    # After the new gateway is up: it no longer routes to what is deleted here.
    delete_stale_apps(keep=list(fingerprints))
    return list(fingerprints)


def is_runtime_app(name: str, deployments: Iterable[str]) -> bool:
    """Whether the Serve application ``name``, holding ``deployments``, is one this
    runtime deploys (the module docstring says how they are recognised)."""
    inside = set(deployments)
    if name == GATEWAY_APP:
        return inside == {_GATEWAY_DEPLOYMENT}
    if name.startswith("agent-"):
        return inside == {_AGENT_DEPLOYMENT}
    if name.startswith("embedder-"):
        return inside == {_EMBEDDER_DEPLOYMENT}
    if name.startswith("provider-") and len(inside) == 1:
        (only,) = inside
        return only == _PROVIDER_DEPLOYMENT or only.startswith(_VLLM_DEPLOYMENT_PREFIX)
    return False


def stale_apps(keep: Collection[str], running: Mapping[str, Iterable[str]]) -> list[str]:
    """The applications of ``running`` (name → deployment names) that are this
    runtime's and not in ``keep``, in the order to delete them: the gateway, then
    agents (the callers), then what they call (providers, embedders)."""
    stale = [n for n, inside in running.items() if n not in keep and is_runtime_app(n, inside)]
    called = ("provider-", "embedder-")
    return sorted(stale, key=lambda n: (n != GATEWAY_APP, n.startswith(called), n))


def delete_stale_apps(keep: Collection[str]) -> list[str]:
    """Delete this runtime's applications that are not in ``keep`` from the running
    Serve instance; returns their names.  Other applications are left alone.

    Call from the driver's sync code: ``serve.status`` and ``serve.delete`` block."""
    status = serve.status()
    running = {name: list(app.deployments) for name, app in status.applications.items()}
    stale = stale_apps(keep, running)
    for name in stale:
        serve.delete(name)
    forget_deployed(stale)
    if stale:  # a warning: seen without logging set up, as it changes the cluster
        logger.warning("astromesh: deleted applications no longer configured: %s", ", ".join(stale))
    return stale


def serve_forever(
    loaded: LoadedConfig,
    *,
    config_dir: Path | None,
    agents_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    watch: bool = False,
) -> None:
    """Run until interrupted.  Then, on the local cluster it started, shut Serve and
    the cluster down; on a cluster it joined, delete only its own applications.

    ``watch``: reload the configuration when its YAML files change
    (``serve/reload.py``'s ``Watcher``)."""
    # Only a cluster this process starts is its own: on a joined one, Serve and
    # Ray keep running other people's applications.
    owns_cluster = not ray.is_initialized() and cluster_address(loaded, address) in (
        None,
        "local",
    )
    watcher = None
    if watch:
        from astromesh_ray.serve.reload import Watcher  # it imports this module

        watcher = Watcher(config_dir, agents_dir)  # before start: changes while it starts count
    apps = start(
        loaded, config_dir=config_dir, agents_dir=agents_dir, host=host, port=port, address=address
    )
    print(
        f"astromesh: {len(loaded.agents)} agent(s) on http://{host}:{port} "
        f"(apps: {', '.join(apps)})"
    )
    for name in sorted(loaded.agents):
        print(f"  POST http://{host}:{port}/v1/agents/{name}/run")
    if watcher is not None:
        watched = ", ".join(str(d) for d in (config_dir, agents_dir) if d is not None)
        print(f"Watching {watched} for changes.")
    print("Ctrl-C to stop.", flush=True)
    try:
        if watcher is not None:
            watcher.run()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if watcher is not None and watcher.apps is not None:
            apps = watcher.apps  # what the last reload left running
        if owns_cluster:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
        else:
            for name in reversed(apps):  # the gateway first: no new requests
                serve.delete(name)
            print(f"astromesh: deleted {', '.join(apps)}", flush=True)
