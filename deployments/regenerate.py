"""Regenerate the committed Serve configs from their configuration directories, as
the tests that keep them in sync expect (``make deployments``, from the repository
root): ``deployments/local.yaml`` (from ``config/``), ``gpu-mixed.yaml`` and
``gpu-vllm.yaml`` (their comment headers kept) and the KubeRay RayService's
``serveConfigV2`` (``kubernetes/sync_serve_config.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from astromesh_ray.serve.builders import deploy_config
from astromesh_ray.spec import load_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def header(path: Path) -> str:
    """The comment lines a committed file starts with."""
    lines = path.read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return "".join(lines[:first])


def main() -> None:
    local = subprocess.run(
        [str(BIN / "astromesh"), "deploy-config", "--config", "config"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (ROOT / "deployments" / "local.yaml").write_text(local)
    for name in ("gpu-mixed", "gpu-vllm"):
        path = ROOT / "deployments" / f"{name}.yaml"
        loaded = load_config(ROOT / "deployments" / name)
        body = deploy_config(loaded, f"deployments/{name}", host="0.0.0.0")
        path.write_text(header(path) + yaml.safe_dump(body, sort_keys=False))
    sync = ROOT / "deployments" / "kubernetes" / "sync_serve_config.py"
    subprocess.run([sys.executable, str(sync)], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
