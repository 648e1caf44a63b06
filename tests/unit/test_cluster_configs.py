"""The `ray up` files in cluster/, checked offline with Ray's own schema check.

``prepare_config`` merges Ray's bundled defaults for the provider (AWS, GCP), or
builds the single node type of the ``local`` provider from ``worker_ips``; neither
calls a cloud (the unit tests' conftest refuses every socket connection, so a call
would fail the test).  ``validate_config`` then checks the result against Ray's
``ray-schema.json``.  The start commands run for real in bash, with stand-ins for
``ray`` and ``nvidia-smi``, and the pinned install is run through pip offline.
"""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

import astromesh_ray

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CONFIGS = sorted(CLUSTER.glob("*.yaml"))
# The files written for this repository's own deployments (gpu.yaml predates them).
MULTI_POOL = ["aws.yaml", "gcp.yaml", "onprem.yaml"]
SOURCE = "$HOME/astromesh"  # where file_mounts puts the repository ("~/astromesh: .")


def _raw(path: Path) -> dict[str, Any]:
    body = yaml.safe_load(path.read_text())
    assert isinstance(body, dict)
    return body


def _prepared(path: Path) -> dict[str, Any]:
    config = prepare_config(copy.deepcopy(_raw(path)))
    validate_config(config)  # raises on any schema violation (ints, unknown keys, ...)
    return config


def _pinned_install(commands: list[str], version: str) -> list[str] | None:
    """The arguments of the pip install among ``commands`` that installs the synced
    repository pinned at ``version``; None when there is none."""
    for command in commands:
        words = shlex.split(command)
        if words[:2] != ["pip", "install"]:
            continue
        sources = [w for w in words if w == SOURCE or w.startswith(SOURCE + "[")]
        if sources and f"astromesh-ray=={version}" in words:
            return words
    return None


def test_the_expected_files_are_there_and_the_readme_lists_them() -> None:
    names = [p.name for p in CONFIGS]
    assert set(MULTI_POOL) | {"gpu.yaml"} <= set(names)
    guide = (CLUSTER / "README.md").read_text()
    assert [n for n in names if f"`{n}`" not in guide] == []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_file_passes_rays_schema_check_offline(path: Path) -> None:
    config = _prepared(path)
    assert config["cluster_synced_files"] == []  # the defaults were merged in
    assert config["head_node_type"] in config["available_node_types"]
    assert config["provider"]["type"] in {"aws", "gcp", "local"}


def test_the_schema_check_is_real() -> None:
    raw = _raw(CLUSTER / "aws.yaml")
    raw["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(Exception, match=r"0\.5"):
        validate_config(prepare_config(raw))


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if _raw(p)["provider"]["type"] != "local"], ids=lambda p: p.name
)
def test_cloud_files_have_a_head_and_cpu_and_gpu_worker_types(path: Path) -> None:
    config = _prepared(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] >= 1 and "GPU" not in head["resources"]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    cpu = [t for t in workers.values() if "GPU" not in t["resources"]]
    gpu = [t for t in workers.values() if "GPU" in t["resources"]]
    assert cpu and gpu
    assert all(t["resources"]["CPU"] >= 1 for t in cpu)
    assert min(t["min_workers"] for t in cpu) >= 1  # agents always have somewhere to run
    for t in gpu:
        assert t["resources"]["GPU"] >= 1
        accelerators = [r for r in t["resources"] if r.startswith("accelerator_type:")]
        assert len(accelerators) == 1 and t["resources"][accelerators[0]] == 1
        assert t["labels"]["astromesh/pool"] == "gpu"
        assert t["docker"]["worker_image"].endswith("-gpu")
    for t in workers.values():
        assert 0 <= t["min_workers"] <= t["max_workers"]
        assert t.get("labels", {}).get("astromesh/pool", "cpu") in {"cpu", "gpu"}
    assert sum(t["min_workers"] for t in workers.values()) <= config["max_workers"]
    assert max(t["max_workers"] for t in workers.values()) <= config["max_workers"]


def test_onprem_uses_the_local_provider_with_a_list_of_hosts() -> None:
    raw = _raw(CLUSTER / "onprem.yaml")
    provider = raw["provider"]
    assert provider["type"] == "local" and isinstance(provider["head_ip"], str)
    hosts = provider["worker_ips"]
    assert len(hosts) >= 2 and provider["head_ip"] not in hosts
    # Ray refuses node types for on-premises clusters: it makes the one worker type.
    assert "available_node_types" not in raw
    config = _prepared(CLUSTER / "onprem.yaml")
    (node_type,) = config["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(hosts)
    assert config["max_workers"] == len(hosts)


def test_the_version_pins_agree() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == astromesh_ray.__version__
    assert f"ray[serve]=={ray.__version__}" in project["dependencies"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_node_installs_the_package_at_its_pinned_version(path: Path) -> None:
    raw = _raw(path)
    assert raw["file_mounts"]["~/astromesh"] == "."  # what SOURCE holds
    config = _prepared(path)
    # After prepare_config, setup_commands are merged into these two lists; a node
    # type may also replace worker_setup_commands with its own.
    lists = [config["head_setup_commands"], config["worker_setup_commands"]]
    lists += [
        t["worker_setup_commands"]
        for t in config["available_node_types"].values()
        if "worker_setup_commands" in t
    ]
    for commands in lists:
        words = _pinned_install(commands, astromesh_ray.__version__)
        assert words is not None, commands
        ray_pins = [w for w in words if w.startswith("ray[") or w.startswith("ray==")]
        assert ray_pins and all(w.endswith(f"=={ray.__version__}") for w in ray_pins)
    # Every node runs Ray's image of the same Ray, on Python 3.11.
    images = [v for k, v in config["docker"].items() if k.endswith("image")]
    for node_type in config["available_node_types"].values():
        images += [v for k, v in node_type.get("docker", {}).items() if k.endswith("image")]
    assert images
    for image in images:
        name, tag = image.split(":")
        assert name == "rayproject/ray" and tag.startswith(f"{ray.__version__}-py311-"), image


def test_the_pin_check_catches_a_stale_pin() -> None:
    text = (CLUSTER / "aws.yaml").read_text()
    stale = yaml.safe_load(
        text.replace(f"astromesh-ray=={astromesh_ray.__version__}", "astromesh-ray==0.0.0")
    )
    commands = prepare_config(stale)["worker_setup_commands"]
    assert _pinned_install(commands, astromesh_ray.__version__) is None
    assert _pinned_install(commands, "0.0.0") is not None


def _pip_dry_run(words: list[str], tree: Path) -> subprocess.CompletedProcess[str]:
    args = [w.replace(SOURCE, str(tree)) for w in words[2:] if w != "--quiet"]
    offline = ["--dry-run", "--no-deps", "--no-index", "--no-build-isolation"]
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", *offline, "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pip_installs_the_synced_tree_only_at_the_pinned_version(tmp_path: Path) -> None:
    # The synced repository, as far as pip reads it.
    tree = tmp_path / "astromesh"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "astromesh_ray", tree / "astromesh_ray", ignore=shutil.ignore_patterns("__pycache__")
    )
    config = _prepared(CLUSTER / "aws.yaml")
    words = _pinned_install(config["worker_setup_commands"], astromesh_ray.__version__)
    assert words is not None
    ok = _pip_dry_run(words, tree)
    assert ok.returncode == 0, ok.stderr
    assert f"Would install astromesh-ray-{astromesh_ray.__version__}" in ok.stdout
    stale = [w.replace(f"=={astromesh_ray.__version__}", "==0.0.0") for w in words]
    refused = _pip_dry_run(stale, tree)
    assert refused.returncode != 0
    assert "conflicting dependencies" in refused.stdout + refused.stderr


def _run_start(command: str, tmp_path: Path, *, gpu: bool) -> str:
    """Run a start command in bash with stand-ins for ray and nvidia-smi; what the
    stand-in ray was called with, and the environment it saw."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ray").write_text(
        '#!/bin/sh\necho "ray $* | keys=$ASTROMESH_API_KEYS | auth=$RAY_AUTH_MODE'
        ' | project=$ASTROMESH_PROJECT_DIR"\n'
    )
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexit {0 if gpu else 1}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    home = tmp_path / "home"
    (home / ".astromesh").mkdir(parents=True, exist_ok=True)
    (home / ".astromesh" / "api-keys.yaml").write_text("[]\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "RAY_HEAD_IP": "192.0.2.10"}
    proc = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("name", MULTI_POOL)
def test_start_commands_export_the_api_keys_and_token_auth(name: str, tmp_path: Path) -> None:
    raw = _raw(CLUSTER / name)
    assert raw["file_mounts"]["~/.astromesh/api-keys.yaml"] == "~/.astromesh/api-keys.yaml"
    for command in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]:
        out = _run_start(command, tmp_path, gpu=False)
        if command.startswith("ray stop"):
            continue
        assert "| keys=[] | auth=token |" in out
        assert out.strip().endswith(f"project={tmp_path / 'home'}/astromesh")


@pytest.mark.parametrize("gpu", [True, False])
def test_onprem_workers_label_themselves_by_what_they_have(gpu: bool, tmp_path: Path) -> None:
    raw = _raw(CLUSTER / "onprem.yaml")
    (start,) = [c for c in raw["worker_start_ray_commands"] if "ray start" in c]
    out = _run_start(start, tmp_path, gpu=gpu)
    assert "ray start --address=192.0.2.10:6379" in out
    # The same label values as the cloud files' node types.
    pool = "gpu" if gpu else "cpu"
    assert f"--labels=astromesh/pool={pool} " in out
    clouds = {
        t["labels"]["astromesh/pool"]
        for name in ("aws.yaml", "gcp.yaml")
        for t in _raw(CLUSTER / name)["available_node_types"].values()
        if "labels" in t
    }
    assert pool in clouds
