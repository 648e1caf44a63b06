"""``astromesh apply [CONFIG_DIR]``: update a running cluster to a configuration
directory: its added and changed applications deployed, removed ones deleted,
unchanged ones left running (``serve/reload.py``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from astromesh_ray.errors import AstromeshError


def add_parser(sub: Any) -> None:
    """The ``apply`` command."""
    p = sub.add_parser(
        "apply",
        help="update a running server to a configuration directory (hot reload)",
        description="Check CONFIG_DIR as `astromesh validate` does, then update the "
        "applications of the astromesh served on a running Ray cluster: deploy the "
        "agents, providers, embedders and gateway that are new or changed, delete those "
        "no longer configured, and leave the unchanged ones running (their replicas "
        "and in-flight requests untouched).  A configuration with errors is refused "
        "(exit 2) and nothing changes.",
    )
    p.add_argument(
        "config_dir",
        nargs="?",
        help="configuration directory (default: --config, $ASTROMESH_CONFIG_DIR, ./config, "
        "/etc/astromesh)",
    )
    p.add_argument("--config", help="configuration directory (the same as CONFIG_DIR)")
    p.add_argument(
        "--agents", help="agents directory (default: $ASTROMESH_AGENTS_DIR, <config>/agents)"
    )
    p.add_argument(
        "--address",
        help="the Ray cluster (default: runtime.yaml spec.ray.address, else auto: the "
        "cluster of this machine, or $RAY_ADDRESS)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the deployed applications to run (default 300; 0: do not wait)",
    )
    p.set_defaults(handler=apply_command)


def apply_command(args: argparse.Namespace) -> int:
    """Exit 0 when applied, 1 when an application did not come up (or no server
    runs there), 2 when the configuration is refused."""
    from astromesh_ray.serve.reload import Refusal, check_config, reload, render
    from astromesh_ray.spec.directory import resolve_dirs

    if args.config_dir and args.config and args.config_dir != args.config:
        print("error: give CONFIG_DIR or --config, not both", file=sys.stderr)
        return 2
    config_dir, agents_dir = resolve_dirs(args.config_dir or args.config, args.agents)
    checked = check_config(config_dir, agents_dir)  # before joining: a refusal needs no cluster
    if isinstance(checked, Refusal):
        print(render(checked), file=sys.stderr)
        print("astromesh: configuration refused; nothing was changed", file=sys.stderr)
        return 2
    _connect(checked.runtime.spec.ray.address, checked.runtime.spec.ray.namespace, args.address)
    result = reload(config_dir, agents_dir, timeout_s=args.timeout)
    if isinstance(result, Refusal):  # the files changed since the check
        print(render(result), file=sys.stderr)
        print("astromesh: configuration refused; nothing was changed", file=sys.stderr)
        return 2
    print(render(result))
    for change in result.failed:
        print(f"error: {change.name} is {change.status}", file=sys.stderr)
    late = result.pending if args.timeout > 0 else []
    for change in late:
        print(f"error: {change.name} still deploying after {args.timeout:g} s", file=sys.stderr)
    return 1 if result.failed or late else 0


def _connect(configured: str | None, namespace: str, address: str | None) -> None:
    """Join the cluster (``--address``, else runtime.yaml's, else ``auto``) and check
    that Serve runs there."""
    import ray
    from ray.serve.context import _get_global_client

    chosen = address or configured
    if chosen in (None, "local"):  # `serve` would start one; apply joins the running one
        chosen = "auto"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        # The replicas' logs stay in the cluster: this prints only what it did.
        ray.init(address=chosen, namespace=namespace, log_to_driver=False)
    except ConnectionError as exc:
        raise AstromeshError(
            f"no Ray cluster at {chosen}: {exc}",
            hint="pass --address of the cluster `astromesh serve` runs on",
        ) from None
    # (serve.status() answers "nothing" without Serve, and serve.run would start a
    # Serve of its own, on the default port.)
    if _get_global_client(raise_if_no_controller_running=False) is None:
        raise AstromeshError(
            f"no Serve instance runs on the Ray cluster at {chosen}",
            hint="start the server with `astromesh serve` first",
        )
