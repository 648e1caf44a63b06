"""Ray Serve's own settings for lower per-hop cost, chosen with ``--serve-env NAME``
on a benchmark's command line and applied when this module is imported: Serve reads
them into its constants when each Ray process imports it, so a script imports this
before Ray, and every process of the cluster it starts inherits them.

- ``default``: Serve as installed;
- ``throughput``: ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (Ray 2.60: user code on the
  replica's event loop instead of a separate thread, the router on the caller's loop,
  gRPC between deployments, direct ingress on the ingress replicas, buffered access
  logs);
- ``haproxy``: that plus ``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy (the ``haproxy``
  binary on the PATH) in front of the ingress replicas instead of the Python proxy.
"""

from __future__ import annotations

import os
import sys

SERVE_ENVS: dict[str, dict[str, str]] = {
    "default": {},
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}


def chosen(argv: list[str]) -> str:
    """The ``--serve-env`` value on ``argv`` (``default`` without one)."""
    name = "default"
    for i, arg in enumerate(argv):
        if arg == "--serve-env" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--serve-env="):
            name = arg.split("=", 1)[1]
    return name


NAME = chosen(sys.argv[1:])
os.environ.update(SERVE_ENVS.get(NAME, {}))  # an unknown name: the script's argparse says so
