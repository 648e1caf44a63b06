"""``astromesh keys create`` and the check ``serve`` makes before it listens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from astromesh_ray.cli import main
from astromesh_ray.cli_keys import check_exposure
from astromesh_ray.core.auth import KeyRing, hash_key
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec.auth import ApiKeySpec


def test_keys_create_prints_the_key_once_and_an_entry_holding_its_hash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = "keys create ci-bot --agents a,b --actions run,read_memory --rate-limit 60/30"
    code = main(args.split())
    out, err = capsys.readouterr()
    assert code == 0
    token = out.strip()
    (entry,) = yaml.safe_load(err[err.index("- id:") :])
    assert entry["hash"] == hash_key(token) and token not in err
    assert entry["agents"] == ["a", "b"] and entry["actions"] == ["run", "read_memory"]
    assert entry["rate_limit"] == {"requests": 60, "window_s": 30.0}
    # The entry is one the server takes, and the key opens it.
    ring = KeyRing([ApiKeySpec.model_validate(entry)])
    assert ring.authenticate(f"Bearer {token}").id == "ci-bot"


def test_keys_create_as_json_and_its_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "root", "--actions", "admin", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["entry"]["hash"] == hash_key(made["key"])
    assert main(["keys", "create", "k", "--agents", "*", "--actions", "delete"]) == 2
    assert "actions" in capsys.readouterr().err
    assert main(["keys", "create", "k"]) == 2  # no agents, not admin: could do nothing
    assert "names no agents or namespaces" in capsys.readouterr().err
    assert main(["keys", "create", "bad id!", "--agents", "*"]) == 2


def test_an_open_server_binds_loopback_only_unless_insecure() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, keys=0, insecure=False)
    check_exposure("0.0.0.0", keys=1, insecure=False)
    check_exposure("0.0.0.0", keys=0, insecure=True)
    with pytest.raises(ConfigError, match="no API keys are configured"):
        check_exposure("0.0.0.0", keys=0, insecure=False)


def test_serve_refuses_a_public_bind_without_keys_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "agents").mkdir()
    code = main(["serve", "--config", str(tmp_path), "--host", "0.0.0.0"])
    assert code == 2
    assert "would open every agent to the network" in capsys.readouterr().err
