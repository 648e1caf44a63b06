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


def start(
    loaded: LoadedConfig,
    *,
    config_dir: Path,
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
    address = address or (ray_spec.address if ray_spec else None)
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
    check_buildable(loaded.agents.values())  # fail here, not in a replica
    serve.start(http_options={"host": host, "port": port})
    return deploy_apps(loaded, config_dir=config_dir, agents_dir=agents_dir)


def deploy_apps(
    loaded: LoadedConfig, *, config_dir: Path, agents_dir: Path | None = None
) -> list[str]:
    """Run every application of ``plan`` on the running Serve instance, in order."""
    names = []
    resolved_agents = str(agents_dir.resolve()) if agents_dir else None
    for app in plan(loaded, str(config_dir.resolve()), resolved_agents):
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
    config_dir: Path,
    agents_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
) -> None:
    """Run until interrupted, then shut Serve and the local cluster down."""
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
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
