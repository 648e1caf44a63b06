"""Rewrite ``serveConfigV2`` of base/rayservice.yaml from config/: the Serve config
that ``astromesh deploy-config --config config --host 0.0.0.0`` prints.  Run it from
the repository root after editing config/ (tests/unit/test_kubernetes.py fails until
the two agree):

    .venv/bin/python deployments/kubernetes/sync_serve_config.py [MANIFEST]
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from astromesh_ray.serve.builders import deploy_config
from astromesh_ray.spec import load_config

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deployments" / "kubernetes" / "base" / "rayservice.yaml"
KEY = "  serveConfigV2: |\n"
INDENT = "    "


def serve_config() -> str:
    """The Serve config of config/, as `astromesh deploy-config` writes it."""
    body = deploy_config(load_config(ROOT / "config"), "config", host="0.0.0.0")
    return yaml.safe_dump(body, sort_keys=False)


def embed(manifest: str, config: str) -> str:
    """``manifest`` with the block under ``serveConfigV2: |`` replaced by ``config``."""
    head, key, rest = manifest.partition(KEY)
    if not key:
        raise SystemExit(f"no {KEY.strip()!r} line at two spaces of indent")
    lines = rest.splitlines(keepends=True)
    end = 0
    while end < len(lines) and lines[end].startswith(INDENT):
        end += 1
    block = "".join(INDENT + line for line in config.splitlines(keepends=True))
    return head + key + block + "".join(lines[end:])


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else MANIFEST
    text = path.read_text()
    synced = embed(text, serve_config())
    if synced != text:
        path.write_text(synced)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
