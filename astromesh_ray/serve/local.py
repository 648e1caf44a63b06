"""``astromesh serve``: start (or join) a Ray cluster and run every application."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray
from ray import serve

from astromesh_ray.core.build import check_buildable
from astromesh_ray.serve.builders import BUILDERS, plan
from astromesh_ray.spec import LoadedConfig


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
    """Run every application of ``plan`` on the running Serve instance, in order."""
    names = []
    resolved_config = str(config_dir.resolve()) if config_dir else None
    resolved_agents = str(agents_dir.resolve()) if agents_dir else None
    for app in plan(loaded, resolved_config, resolved_agents):
        serve.run(
            BUILDERS[app.builder](app.args),
            name=app.name,
            route_prefix=app.route_prefix,
            blocking=False,
        )
        names.append(app.name)
    return names


def serve_forever(
    loaded: LoadedConfig,
    *,
    config_dir: Path | None,
    agents_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
) -> None:
    """Run until interrupted.  Then, on the local cluster it started, shut Serve and
    the cluster down; on a cluster it joined, delete only its own applications."""
    # Only a cluster this process starts is its own: on a joined one, Serve and
    # Ray keep running other people's applications.
    owns_cluster = not ray.is_initialized() and cluster_address(loaded, address) in (
        None,
        "local",
    )
    apps = start(
        loaded, config_dir=config_dir, agents_dir=agents_dir, host=host, port=port, address=address
    )
    print(
        f"astromesh: {len(loaded.agents)} agent(s) on http://{host}:{port} "
        f"(apps: {', '.join(apps)})"
    )
    for name in sorted(loaded.agents):
        print(f"  POST http://{host}:{port}/v1/agents/{name}/run")
    print("Ctrl-C to stop.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if owns_cluster:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
        else:
            for name in reversed(apps):  # the gateway first: no new requests
                serve.delete(name)
            print(f"astromesh: deleted {', '.join(apps)}", flush=True)
