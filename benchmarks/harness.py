"""What the benchmark scripts here share: the machine they ran on, for their reports,
and a local Ray cluster with Serve on a free loopback port (with a configuration
directory deployed on it: ``served``)."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def gpu() -> str:
    """The GPUs ``nvidia-smi`` lists, or why there are none."""
    if not shutil.which("nvidia-smi"):
        return "none"
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown (nvidia-smi failed: {exc})"
    return "; ".join(out.stdout.splitlines()[:4]) or "none (nvidia-smi lists no GPU)"


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(extra: str = "", gpu_note: str = "") -> list[str]:
    """The date, cores, platform, Python (plus ``extra``), load average and GPU."""
    return [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {os.cpu_count()} cores, {platform.machine()} {platform.system()}, "
        f"Python {platform.python_version()}{extra}, load average {load_average()}",
        f"GPU: {gpu()}{gpu_note}",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_ray() -> str | None:
    """A local cluster and Serve on a free loopback port (its base URL); None when Ray
    cannot start (the reason is printed).  The caller sets Ray's environment first."""
    import ray
    from ray import serve

    try:
        ray.init(
            address="local",  # never attach to a stale cluster
            # Every deployment and actor here asks for 0 CPUs (DESIGN.md §7): logical
            # CPUs only bound what asks for some.
            num_cpus=max(2, os.cpu_count() or 2),
            include_dashboard=False,
            object_store_memory=150 * 1024 * 1024,
            namespace="astromesh-bench",
            log_to_driver=False,  # replicas' logs stay in Ray's session directory
        )
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    except Exception as exc:  # whatever stops Ray or Serve starting: say it, exit non-zero
        print(f"FAILED: Ray could not start: {type(exc).__name__}: {exc}")
        return None
    return f"http://127.0.0.1:{port}"


@contextmanager
def served(root: Path) -> Iterator[str | None]:
    """The configuration directory ``root`` deployed, as ``serve/builders.py`` plans
    it, on a fresh local cluster (``start_ray``): its base URL, or None when Ray could
    not start.  Serve and Ray are shut down afterwards."""
    import ray
    from ray import serve

    from astromesh_ray.serve.builders import BUILDERS, plan
    from astromesh_ray.spec import load_config

    loaded = load_config(root)
    url = start_ray()
    if url is None:
        yield None
        return
    try:
        for app in plan(loaded, str(root)):
            serve.run(BUILDERS[app.builder](app.args), name=app.name, route_prefix=app.route_prefix)
        yield url
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
