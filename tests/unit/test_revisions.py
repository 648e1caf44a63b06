"""Revisions (serve/revisions.py) in the Serve config that `astromesh deploy-config`
writes: the same for the same configuration wherever it lives, another exactly for
the applications whose builder would bind something else (checked against the
fingerprint of what the builders bind), and a stale one refused by the builder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.errors import ConfigError
from astromesh_ray.serve.builders import BUILDERS, deploy_config, provider_endpoints
from astromesh_ray.serve.fingerprint import fingerprint
from astromesh_ray.serve.revisions import provider_revision
from astromesh_ray.spec import load_config
from tests.unit.serve.test_reload import PROVIDERS, _agent  # the same two agents


@pytest.fixture
def root(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    (conf / "agents").mkdir(parents=True)
    (conf / "providers.yaml").write_text(PROVIDERS)
    _agent(conf, "alpha", "llm_a", prompt="You are Alpha, version 1.")
    _agent(conf, "beta", "llm_b", prompt="You are Beta.")
    return conf


def applications(root: Path) -> list[dict[str, Any]]:
    """The applications of the Serve config `astromesh deploy-config` writes for root."""
    body = deploy_config(load_config(root), str(root))
    apps: list[dict[str, Any]] = body["applications"]
    return apps


def revisions(root: Path) -> dict[str, str]:
    return {app["name"]: app["args"]["revision"] for app in applications(root)}


def changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}


def built_fingerprints(root: Path) -> dict[str, str | None]:
    """What each application's builder binds (serve/fingerprint.py), built from the
    args of the generated file: the builder accepts its own revision."""
    return {
        app["name"]: fingerprint(BUILDERS[app["import_path"].split(":")[1]](app["args"]))
        for app in applications(root)
    }


def test_each_application_has_a_short_content_hash() -> None:
    apps = applications(Path(__file__).resolve().parents[2] / "config")
    assert apps and all(re.fullmatch(r"[0-9a-f]{16}", a["args"]["revision"]) for a in apps)
    assert len({a["args"]["revision"] for a in apps}) == len(apps)


def test_the_same_configuration_has_the_same_revisions_wherever_it_lives(
    root: Path, tmp_path: Path
) -> None:
    first = revisions(root)
    assert {"agent-alpha", "agent-beta", "gateway"} <= set(first)
    assert revisions(root) == first
    # Another directory (a container, another checkout): the embedded stores' absolute
    # data_dir moves with it, the revisions do not.
    elsewhere = shutil.copytree(root, tmp_path / "elsewhere")
    assert revisions(elsewhere) == first


def test_a_changed_prompt_changes_only_its_agents_revision(root: Path) -> None:
    loaded = load_config(root)
    endpoints = {n: provider_revision(e) for n, e in provider_endpoints(loaded).items()}
    before = revisions(root)
    _agent(root, "alpha", "llm_a", prompt="You are Alpha, version 2.")
    after = revisions(root)
    # Not b's, not the gateway's (it shows no prompt), not any provider application's.
    assert changed(before, after) == {"agent-alpha"}
    moved = {n: provider_revision(e) for n, e in provider_endpoints(load_config(root)).items()}
    assert moved == endpoints and len(endpoints) == 2


def test_a_value_written_at_its_default_is_the_same_revision(root: Path) -> None:
    before = revisions(root)
    path = root / "agents" / "beta.agent.yaml"
    # react is the default pattern: saying so binds the same agent.
    path.write_text(path.read_text() + "  orchestration: {pattern: react}\n")
    assert revisions(root) == before


# The applications an edit must change, and those it may change too: the gateway lists
# the providers, and what it binds of them is not this module's to fix.
@pytest.mark.parametrize(
    ("edit", "must", "may"),
    [
        ("prompt", {"agent-alpha"}, set()),
        ("description", {"agent-alpha", "gateway"}, set()),
        ("replicas", {"agent-alpha"}, set()),
        ("parameters", {"agent-alpha"}, {"gateway"}),
        ("endpoint", {"agent-alpha", "gateway"}, set()),
        ("gateway replicas", {"gateway"}, set()),
        # What the agents' own routes and the gateway share (auth, telemetry).
        ("telemetry", {"gateway"}, {"agent-alpha", "agent-beta"}),
    ],
)
def test_revisions_change_exactly_where_what_the_builders_bind_changes(
    root: Path, edit: str, must: set[str], may: set[str]
) -> None:
    before, bound_before = revisions(root), built_fingerprints(root)
    path = root / "agents" / "alpha.agent.yaml"
    providers = root / "providers.yaml"
    if edit == "prompt":
        _agent(root, "alpha", "llm_a", prompt="You are Alpha, version 2.")
    elif edit == "description":
        _agent(root, "alpha", "llm_a", prompt="You are Alpha, version 1.", description="other")
    elif edit == "replicas":
        path.write_text(path.read_text() + "  deployment: {num_replicas: 2}\n")
    elif edit == "parameters":
        text = providers.read_text().replace("[m]}", "[m], parameters: {top_p: 1}}", 1)
        providers.write_text(text)
    elif edit == "endpoint":
        providers.write_text(providers.read_text().replace("127.0.0.1:9/", "127.0.0.1:11/"))
    else:
        body = (
            "gateway: {num_replicas: 2}"
            if edit == "gateway replicas"
            else ("telemetry: {service_name: other}")
        )
        (root / "runtime.yaml").write_text(
            "apiVersion: astromesh/v1\nkind: RuntimeConfig\nmetadata: {name: runtime}\n"
            f"spec:\n  {body}\n"
        )
    after, bound_after = revisions(root), built_fingerprints(root)
    # The revisions move with what the builders bind, whatever applications the plan
    # has (provider applications or not) ...
    moved = changed(before, after)
    assert moved == changed(bound_before, bound_after)
    # ... and never for an agent the edit is not about.
    assert must <= moved <= must | may | {n for n in moved if n.startswith("provider-")}


def test_a_stale_revision_is_refused_naming_the_app_and_the_command(root: Path) -> None:
    apps = {app["name"]: app for app in applications(root)}
    _agent(root, "alpha", "llm_a", prompt="You are Alpha, version 2.")  # after the file was written
    agent = apps["agent-alpha"]
    with pytest.raises(ConfigError) as refused:
        BUILDERS["agent_app"](agent["args"])
    message = str(refused.value)
    assert "application agent-alpha" in message and "stale Serve config" in message
    assert agent["args"]["revision"] in message
    assert f"astromesh deploy-config --config {root}" in message
    assert refused.value.details["app"] == "agent-alpha"

    # b's application and the gateway are still current: they build.
    BUILDERS["agent_app"](apps["agent-beta"]["args"])
    BUILDERS["gateway_app"](apps["gateway"]["args"])
    # A changed description makes the gateway's revision stale too.
    _agent(root, "alpha", "llm_a", prompt="You are Alpha, version 2.", description="another")
    with pytest.raises(ConfigError, match="application gateway: stale Serve config"):
        BUILDERS["gateway_app"](apps["gateway"]["args"])


def test_a_config_without_revisions_is_not_checked(root: Path) -> None:
    agent = {app["name"]: app for app in applications(root)}["agent-alpha"]
    _agent(root, "alpha", "llm_a", prompt="You are Alpha, version 2.")
    args = {k: v for k, v in agent["args"].items() if k != "revision"}
    BUILDERS["agent_app"](args)  # as astromesh serve and apply build it: no revision
